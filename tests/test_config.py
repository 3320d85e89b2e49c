"""Sweep spec validation: every kind of bad input gets one clear error naming the key and allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench_kernels.config import ConfigError, SweepConfig, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"run_name": "t", "model": "embedded", "runtimes": ["reference"], "precisions": ["fp32"],
        "batch_sizes": [1, 2], "input_lens": [8], "output_len": 4}


def write(tmp_path: Path, **changes: object) -> Path:
    data = {**GOOD, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(tmp_path: Path, **changes: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, **changes))
    return str(info.value)


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_params_file_is_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run_name and cfg.batch_sizes == sorted(cfg.batch_sizes)


def test_unknown_key_names_it_and_lists_allowed_keys(tmp_path: Path) -> None:
    message = error_of(tmp_path, batch_size=[1])
    assert "batch_size: unknown key" in message
    assert "batch_sizes" in message and "output_len" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = error_of(tmp_path, output_len="8")
    assert "output_len" in message and "integer" in message
    assert "batch_sizes" in error_of(tmp_path, batch_sizes=4)


def test_batch_size_below_one(tmp_path: Path) -> None:
    message = error_of(tmp_path, batch_sizes=[0, 2])
    assert "batch_sizes" in message and ">= 1" in message and "[0]" in message


def test_lengths_beyond_model_max_positions(tmp_path: Path) -> None:
    message = error_of(tmp_path, input_lens=[8, 8190])
    assert "input_lens" in message and "8192" in message and "[8190]" in message


def test_unknown_model_lists_allowed_forms(tmp_path: Path) -> None:
    message = error_of(tmp_path, model="gpt-9")
    assert "model" in message and "'embedded'" in message and "preset:<name>" in message


def test_unknown_preset_lists_presets(tmp_path: Path) -> None:
    message = error_of(tmp_path, model="preset:llama-9")
    assert "model" in message and "llama-3.1-8b" in message and "qwen2.5-7b" in message


def test_missing_local_folder(tmp_path: Path) -> None:
    message = error_of(tmp_path, model=f"local:{tmp_path / 'nope'}")
    assert "model" in message and "does not exist" in message
    (tmp_path / "empty").mkdir()
    assert "config.json" in error_of(tmp_path, model=f"local:{tmp_path / 'empty'}")


def test_unknown_runtime_lists_allowed(tmp_path: Path) -> None:
    message = error_of(tmp_path, runtimes=["reference", "vllm"])
    assert "runtimes: unknown runtime(s) ['vllm']" in message and "'onnxruntime'" in message and "'tensorrt'" in message


def test_unknown_precision_lists_allowed(tmp_path: Path) -> None:
    message = error_of(tmp_path, precisions=["int3"])
    assert "precisions: unknown precision(s) ['int3']" in message and "'bf16'" in message


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, "device": "tpu", "warmup": -1, "run_name": "a/b"})
    message = str(info.value)
    assert "device" in message and "warmup" in message and "run_name" in message


def test_duplicates_rejected() -> None:
    with pytest.raises(ConfigError, match="input_lens"):
        parse_config({**GOOD, "input_lens": [8, 8]})


def test_defaults_are_small_and_cpu_safe() -> None:
    cfg = SweepConfig()
    assert max(cfg.batch_sizes) <= 2 and max(cfg.input_lens) <= 64 and cfg.output_len <= 16
    assert cfg.device == "auto" and cfg.model == "embedded"


def test_cli_validate_reports_errors_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command's own entry point, in this process (tests/test_cli.py runs the installed command)."""
    from bench_kernels.cli import main

    assert main(["validate", str(write(tmp_path, runtimes=["nope"]))]) == 1
    err = capsys.readouterr().err
    assert "runtimes: unknown runtime(s) ['nope']" in err and "'reference'" in err
    assert main(["validate", str(write(tmp_path, batch_sizes=[1]))]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "; 1 shape per runtime;" in out


def test_precisions_by_runtime_name_the_bad_runtime_or_precision() -> None:
    spec = {**GOOD, "runtimes": ["reference", "compiled"], "precisions": ["fp32", "bf16"]}
    with pytest.raises(ConfigError, match=r"precisions_by_runtime\.referance: unknown runtime; allowed: reference"):
        parse_config({**spec, "precisions_by_runtime": {"referance": ["fp32"]}})
    with pytest.raises(ConfigError, match=r"precisions_by_runtime\.reference: unknown precision\(s\) \['bf61'\]; "
                                          r"allowed: fp32, "):
        parse_config({**spec, "precisions_by_runtime": {"reference": ["bf61"]}})
    with pytest.raises(ConfigError,
                       match=r"precisions_by_runtime\.reference: none of \['fp8'\] is in precisions \(fp32, bf16\)"):
        parse_config({**spec, "precisions_by_runtime": {"reference": ["fp8"]}})
    cfg = parse_config({**spec, "precisions_by_runtime": {"reference": ["bf16", "fp8"], "onnxruntime": ["fp8"]}})
    assert cfg.precisions_for("reference") == ["bf16"] and cfg.precisions_for("compiled") == ["fp32", "bf16"]


def test_every_problem_at_once_the_models_included(tmp_path: Path) -> None:
    """A bad key, a rule across keys and the model's maximum positions, all in the first round."""
    message = error_of(tmp_path, input_lens=[1_000_000_000], workload={"input_len": 64})
    assert "workload.input_len 64 is not measured; allowed: [1000000000]" in message
    assert "input_lens: [1000000000] plus output_len 4 exceed the model's maximum positions 8192" in message
    message = error_of(tmp_path, seed=-1, input_lens=[8, 8190], precisions_by_runtime={"referance": ["fp32"]})
    assert "seed: Input should be greater than or equal to 0 (got -1)" in message
    assert "input_lens: [8190] plus output_len 4 exceed" in message
    message = error_of(tmp_path, precisions_by_runtime={"referance": ["fp32"]}, workload={"input_len": 64})
    assert "precisions_by_runtime.referance: unknown runtime" in message and "workload.input_len 64" in message


def test_a_value_the_message_quotes_is_said_once() -> None:
    for given in ([0], "[0]"):  # from a YAML file, and from papermill's -p batch_sizes "[0]"
        with pytest.raises(ConfigError) as info:
            parse_config({**GOOD, "batch_sizes": given})
        assert "batch_sizes: every value must be >= 1, got [0]" in str(info.value)
        assert str(info.value).count("[0]") == 1, str(info.value)


def test_prompt_file_too_short_for_the_longest_input_is_refused(tmp_path: Path) -> None:
    """Counted with the model's own tokenizer (the packaged SmolLM2 one for a preset) before any weights load."""
    (tmp_path / "short.txt").write_text("Only a few words here, about twenty tokens in all, and no more than that.")
    message = error_of(tmp_path, model="preset:smollm2-135m", prompt_file="short.txt", input_lens=[8, 64])
    assert f"prompt_file: {tmp_path / 'short.txt'} has " in message
    assert "fewer than the longest input needs (64)" in message
    (tmp_path / "long.txt").write_text("Enough words to cut every prompt of the sweep from real text. " * 8)
    assert load_config(write(tmp_path, model="preset:smollm2-135m", prompt_file="long.txt", input_lens=[8, 64]))


def results_folder(folder: Path, weights: str) -> Path:
    """A run's results folder with one quality row of the reference (its perplexity delta: 0)."""
    from bench_kernels.results import ResultsStore

    ResultsStore(folder).append({"stage": "quality", "runtime": "reference", "model": "m", "weights": weights,
                                 "precision": "bf16", "status": "ok", "perplexity": 40.0, "ppl_delta_pct": 0.0})
    return folder


def test_quality_evidence_is_taken_from_the_spec_folder_one_folder_or_several(tmp_path: Path) -> None:
    results_folder(tmp_path / "reports" / "real", "real")
    (tmp_path / "params").mkdir()
    for given in ("../reports/real", ["../reports/real"]):
        spec = tmp_path / "params" / "spec.yaml"
        spec.write_text(yaml.safe_dump({**GOOD, "quality_evidence": given}))
        cfg = load_config(spec, check_model=False)
        assert cfg.evidence_dirs == ((tmp_path / "reports" / "real").resolve(),)


def test_bad_quality_evidence_names_the_key_and_each_folder_with_the_other_problems(tmp_path: Path) -> None:
    random_only = results_folder(tmp_path / "random", "random")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, "batch_sizes": [0], "quality_evidence": [str(tmp_path / "missing"),
                                                                      str(tmp_path / "empty"), str(random_only)]})
    message = str(info.value)
    assert "batch_sizes: every value must be >= 1" in message  # one round: every problem at once
    line = next(line for line in message.splitlines() if line.strip().startswith("quality_evidence:"))
    assert f"folder {tmp_path / 'missing'} does not exist" in line
    assert f"{tmp_path / 'empty'} holds no results.csv" in line
    assert f"{random_only / 'results.csv'} holds no real-weight perplexity" in line


def test_the_loads_maximum_utilisation_is_a_share_that_defaults_to_seventy_percent() -> None:
    from bench_kernels.report import ReportSpec

    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="load.max_utilization"):
            parse_config({**GOOD, "load": {"requests_per_day": 1000.0, "max_utilization": bad}})
    assert ReportSpec.of(parse_config({**GOOD, "load": {"requests_per_day": 1000.0}})).max_utilization == 0.7
    assert ReportSpec.of(parse_config({**GOOD, "load": {"requests_per_day": 1000.0, "max_utilization": 1}})
                         ).max_utilization == 1
