"""The installed `bench-kernels` command as a new user meets it: from a folder outside the project, with a
relative-path spec, a model family the shared decoder does not support, Ctrl-C, and typical mistakes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bench_kernels.cli import main
from bench_kernels.config import ConfigError, load_config, parse_config
from bench_kernels.models import packaged_tokenizer
from bench_kernels.results import ResultsStore, load_results

COMMAND = str(Path(sys.executable).with_name("bench-kernels"))


def bench_kernels(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own folder: a tiny random Gemma-2 (a family the shared decoder refuses) and a spec beside it."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    folder = tmp_path_factory.mktemp("user")
    config = Gemma2Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    torch.manual_seed(0)
    Gemma2ForCausalLM(config).save_pretrained(folder / "models" / "tiny-gemma2")
    packaged_tokenizer().save_pretrained(folder / "models" / "tiny-gemma2")
    (folder / "specs").mkdir()
    spec = {"run_name": "gemma", "model": "local:../models/tiny-gemma2", "batch_sizes": [1], "input_lens": [8],
            "output_len": 2, "warmup": 0, "repeats": 1, "device": "cpu", "reports_dir": "../reports"}
    (folder / "specs" / "gemma.yaml").write_text(yaml.safe_dump(spec))
    (folder / "specs" / "decoder-runtimes.yaml").write_text(yaml.safe_dump(
        {**spec, "run_name": "decoder-runtimes", "runtimes": ["onnxruntime", "tensorrt", "compiled"]}))
    return folder


def test_sweep_and_report_from_another_folder_with_an_unsupported_family(user_folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = user_folder / "specs" / "gemma.yaml"
    swept = bench_kernels("sweep", str(spec), cwd=elsewhere)
    assert swept.returncode == 0, swept.stdout[-2000:] + swept.stderr[-2000:]
    # A console that is not a terminal: result lines only, no bars, none of the libraries' expected chatter.
    console = swept.stdout + swept.stderr
    for chatter in ("%|", "Loading weights", "Failed to load", "register_constant()", "Int64 binding"):
        assert chatter not in console, console
    results = user_folder / "reports" / "gemma" / "results.csv"
    assert results.is_file() and not (elsewhere / "reports").exists()
    df = load_results(results)
    inference = df[df["stage"] == "inference"].set_index("runtime")["status"].to_dict()
    assert inference["reference"] == "ok"
    assert inference["onnxruntime"] == inference["compiled"] == inference["tensorrt"] == "unavailable"
    assert "compiled does not run model family 'gemma2' (it runs llama" in \
        df[df["runtime"] == "compiled"]["error"].iloc[0]
    render = next(line for line in swept.stdout.splitlines() if "render the report with" in line)
    command = render.split("render the report with: ")[1].split()
    assert command[0] == "bench-kernels"
    rendered = subprocess.run([COMMAND, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rendered.returncode == 0, rendered.stdout[-2000:] + rendered.stderr[-2000:]
    html = (user_folder / "reports" / "gemma" / "report.html").read_text()
    assert "Decision matrix" in html and "does not run model family" in html
    assert "Traceback" not in rendered.stdout + rendered.stderr
    assert len(rendered.stdout.splitlines()) < 10  # quiet: a line per notebook, where the report and results are
    assert "without encryption" not in rendered.stderr


def test_a_family_the_runtimes_cannot_run_is_warned_about_and_unavailable(user_folder: Path) -> None:
    """validate names each runtime and the family from config.json alone; the sweep's rows are all unavailable
    with that reason (TensorRT's too, on a machine that could not run its engines anyway), so it exits 0; its
    console is a pipe, so no progress bar is drawn."""
    spec = user_folder / "specs" / "decoder-runtimes.yaml"
    validated = bench_kernels("validate", str(spec), cwd=user_folder)
    assert validated.returncode == 0, validated.stderr
    for runtime in ("onnxruntime", "tensorrt", "compiled"):
        assert f"warning: {runtime} does not run model family 'gemma2' (it runs llama, " in validated.stderr
    swept = bench_kernels("sweep", str(spec), cwd=user_folder)
    assert swept.returncode == 0, swept.stdout[-2000:] + swept.stderr[-2000:]
    rows = ResultsStore(user_folder / "reports" / "decoder-runtimes").rows()
    assert {row["stage"] for row in rows} == {"build", "inference", "quality"}
    assert all(row["status"] == "unavailable" and row["error"].startswith(f"{row['runtime']} does not run model "
                                                                          "family 'gemma2'") for row in rows), rows
    assert "rows failed" not in swept.stderr
    assert "%|" not in swept.stdout + swept.stderr and "shape/s" not in swept.stdout + swept.stderr
    assert "unavailable: onnxruntime does not run model family 'gemma2'" in swept.stdout


def test_a_run_whose_rows_failed_exits_1_naming_them(tiny_local_model: Path, tmp_path: Path) -> None:
    """Weights that cannot be read fail every row of the reference: a real sweep, which exits 1 with one line."""
    broken = tmp_path / "broken-llama"
    shutil.copytree(tiny_local_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "run_name": "broken", "model": "local:broken-llama", "runtimes": ["reference"], "batch_sizes": [1],
        "input_lens": [8], "output_len": 2, "warmup": 0, "repeats": 1, "device": "cpu"}))
    swept = bench_kernels("sweep", "spec.yaml", "--skip-build", cwd=tmp_path)
    run_dir = tmp_path / "reports" / "broken"
    assert swept.returncode == 1, swept.stdout[-2000:] + swept.stderr[-2000:]
    assert swept.stderr.strip().splitlines()[-1] == (
        "2 rows failed (inference reference fp32 batch 1 input 8, quality reference fp32); their errors are in "
        f"results.csv, tracebacks in {run_dir / 'errors.log'}")
    assert "Traceback" in (run_dir / "errors.log").read_text()


def test_presets_and_validate_outside_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The command's entry point in this process, run from a folder outside the project (the tests above run the
    installed command itself)."""
    monkeypatch.chdir(tmp_path)
    assert main(["presets"]) == 0 and "preset:llama-3.1-8b" in capsys.readouterr().out
    (tmp_path / "spec.yaml").write_text("model: preset:llama-3.1-8b\ndevice: cpu\nbatch_sizes: [4096]\n"
                                        "input_lens: [8192]\noutput_len: 8\n")
    assert main(["validate", "spec.yaml", "-v"]) == 0  # -v after the subcommand works too
    valid = capsys.readouterr()
    assert f"results in {tmp_path / 'reports' / 'notebook'}" in valid.out
    assert "warning: " in valid.err and "GB for weights and KV cache" in valid.err
    assert main(["validate", "--show-defaults"]) == 0
    defaults = capsys.readouterr().out
    assert "runtime_options: {}" in defaults and "workspace_gb=4.0" in defaults
    assert "model families any that transformers loads" in defaults
    assert "model families llama, " in defaults


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_validate_refuses_cuda_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("device: cuda\n")
    assert main(["validate", "spec.yaml"]) == 1
    err = capsys.readouterr().err
    assert "device: 'cuda' was asked for but torch sees no CUDA GPU" in err and "Traceback" not in err


def test_relative_paths_follow_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "mine.txt").write_text("words " * 100)
    (tmp_path / "spec.yaml").write_text("prompt_file: texts/mine.txt\nreports_dir: out\n")
    cfg = load_config(tmp_path / "spec.yaml", check_model=False)
    assert cfg.prompt_file == str(tmp_path / "texts" / "mine.txt") and cfg.run_dir == tmp_path / "out" / "notebook"
    (tmp_path / "spec.yaml").write_text("prompt_file: texts/missing.txt\n")
    with pytest.raises(ConfigError, match=r"prompt_file: file .*texts/missing.txt does not exist"):
        load_config(tmp_path / "spec.yaml", check_model=False)


def test_spec_dir_is_where_relative_parameters_start(tmp_path: Path) -> None:
    """papermill passes a spec's values only: -p spec_dir says where its relative paths start, and a reports_dir at
    its default means what a spec without one means (reports/ beside a spec outside a project)."""
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "mine.txt").write_text("words " * 100)
    cfg = parse_config({"prompt_file": "texts/mine.txt", "reports_dir": "reports", "spec_dir": str(tmp_path)})
    assert cfg.prompt_file == str(tmp_path / "texts" / "mine.txt") and cfg.run_dir == tmp_path / "reports" / "notebook"
    inside = parse_config({"reports_dir": "reports", "spec_dir": "params"})  # from the project root (the tests' cwd)
    assert cfg.spec_dir == str(tmp_path) and inside.run_dir == Path.cwd() / "reports" / "notebook"
    (tmp_path / "spec.yaml").write_text("reports_dir: out\n")
    assert load_config(tmp_path / "spec.yaml", check_model=False).spec_dir == str(tmp_path)  # recorded by the loader
    with pytest.raises(ConfigError, match=r"spec_dir: folder .*nowhere does not exist"):
        parse_config({"spec_dir": str(tmp_path / "nowhere")})


def test_plain_papermill_with_a_spec_resolves_its_paths_from_its_folder(tmp_path: Path) -> None:
    """The report notebook run by papermill itself, from another folder, with -f spec -p spec_dir: it reads the
    results under the spec's own out/ and writes nothing where papermill runs."""
    spec_folder = tmp_path / "two"
    run = spec_folder / "out" / "h100-smollm2-trt"
    run.mkdir(parents=True)
    for name in ("results.csv", "samples.jsonl"):
        shutil.copy(Path("reports") / "h100-smollm2-trt" / name, run / name)
    spec = yaml.safe_load(Path("params/h100-smollm2-trt.yaml").read_text())
    (spec_folder / "s1.yaml").write_text(yaml.safe_dump({**spec, "reports_dir": "out"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-m", "papermill", str(Path("notebooks/90_report.ipynb").resolve()),
                           str(tmp_path / "report.ipynb"), "-f", str(spec_folder / "s1.yaml"),
                           "-p", "spec_dir", str(spec_folder)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = json.loads((tmp_path / "report.ipynb").read_text())["cells"]
    outputs = json.dumps([cell.get("outputs", []) for cell in cells])
    assert "No results yet" not in outputs and "tensorrt_rtx 1.7" in outputs
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in spec_folder.iterdir()) == ["out", "s1.yaml"]


def test_papermill_style_string_lists_are_read_as_yaml() -> None:
    cfg = parse_config({"batch_sizes": "[1, 4]", "runtimes": "[reference]",
                        "runtime_options": "{tensorrt: {workspace_gb: 8.0}}"})
    assert cfg.batch_sizes == [1, 4] and cfg.runtimes == ["reference"]
    assert cfg.options_for("tensorrt").workspace_gb == 8.0


def test_bounds_and_moved_keys_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"warmup": 10**12, "repeats": 10**12, "batch_sizes": [1, 10**9], "trt_workspace_gb": 8.0,
                      "runtime_options": {"tensorrt": {"workspace_gb": "8", "speed": 1}, "onnxruntime": {"x": 1}}})
    message = str(info.value)
    for expected in ("warmup: Input should be less than or equal to 100",
                     "repeats: Input should be less than or equal to 1000",
                     "batch_sizes: every value must be <= 4096, got [1000000000]",
                     "trt_workspace_gb: this key has moved; use runtime_options: {tensorrt: {workspace_gb: ...}}",
                     "tensorrt.workspace_gb: Input should be a valid number",
                     "tensorrt.speed: unknown key; allowed keys: workspace_gb, optimization_level, allow_rebuild, "
                     "kernel_specialization",
                     "onnxruntime.x: unknown key; allowed keys: (none: this runtime takes no options)"):
        assert expected in message


def test_ctrl_c_prints_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    # The embedded model, not the tiny one: a sweep of the tiny one can end before the signal arrives.
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "run_name": "interrupted", "runtimes": ["reference"], "batch_sizes": [1, 2, 3], "input_lens": [8, 16],
        "output_len": 4, "warmup": 0, "repeats": 1, "device": "cpu", "perplexity_windows": 1}))
    store = ResultsStore(tmp_path / "reports" / "interrupted")
    # The signal goes the moment the first shape's line is printed (unbuffered), with five shapes and the perplexity
    # still to run: polling results.csv instead could notice that row only after the sweep had ended, on a busy CPU.
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([COMMAND, "sweep", "spec.yaml", "--skip-build"], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        printed = []
        for line in proc.stdout:
            printed.append(line)
            if "tokens/s" in line:
                break
        os.kill(proc.pid, signal.SIGINT)
        stdout = "".join(printed) + proc.communicate(timeout=120)[0]
        err.seek(0)
        stderr = err.read()
    kept = sum(r["status"] == "ok" for r in store.rows())  # shapes, and the perplexity row if it was reached
    assert proc.returncode == 130 and "Traceback" not in stderr, (stdout[-2000:], stderr)
    assert stderr.strip().splitlines()[-1] == (f"interrupted: {kept} finished rows kept in {store.csv_path}; "
                                                "run the same command again to resume")
    again = bench_kernels("sweep", "spec.yaml", "--skip-build", cwd=tmp_path)
    assert again.returncode == 0 and f"{kept} of 6 shapes already done" in again.stdout, again.stdout
    assert sum(r["status"] == "ok" and r["stage"] == "inference" for r in store.rows()) == 6
    assert [r["status"] for r in store.rows() if r["stage"] == "quality"] == ["ok"]
