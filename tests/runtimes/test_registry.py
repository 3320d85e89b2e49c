"""The plug-in point: a runtime defined here, registered, swept and reported with no other file changed;
and the report's side of the line: it reads rows only and loads no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import torch
from pydantic import Field

from bench_kernels import plots
from bench_kernels.config import ConfigError, parse_config
from bench_kernels.decision import decision_matrix
from bench_kernels.decoder import Decoder, greedy_generate
from bench_kernels.timing import StepTimer
from bench_kernels.models import eos_token_ids
from bench_kernels.report import (ReportSpec, availability_notes, build_table, method_notes, provenance_table,
                                  results_table)
from bench_kernels.runtimes import RUNTIMES, BuildInfo, Runtime, options_dataclass, register, unregister
from bench_kernels.runtimes.base import OPTIONS_CONFIG
from bench_kernels.sweep import run_build_stage, run_sweeps

ROOT = Path(__file__).resolve().parents[2]


@options_dataclass(config=OPTIONS_CONFIG)
class EagerDecoderOptions:
    cast_to_half: bool = False
    threads: Annotated[int, Field(ge=1, le=64)] = 1


class EagerDecoderRuntime(Runtime):
    """The package's shared decoder run eagerly, token by token: a whole runtime in twenty lines."""

    name = "eager-decoder"
    description = "the shared decoder, eager, one token at a time"
    needs_build = True
    precisions = ("fp32", "bf16")
    dynamic_shapes = "any batch and length"
    options_class = EagerDecoderOptions

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        self.decoder = Decoder.from_hf(self.loaded.hf_model)
        return BuildInfo(build_s=0.01, artifact_mb=0.0, cache_hit=False, notes=f"threads={self.options.threads}")

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        timer.start()
        tokens = greedy_generate(self.decoder, input_ids, torch.ones_like(input_ids), output_len,
                                 suppress_token_ids=eos_token_ids(self.loaded))
        for _ in range(output_len):
            timer.token()
        return tokens

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            args = self.decoder.args
            past = [(torch.zeros(input_ids.shape[0], args.num_kv_heads, 0, args.head_dim),) * 2
                    for _ in range(self.decoder.args.num_layers)]
            logits, _ = self.decoder(input_ids, torch.arange(input_ids.shape[1]).expand_as(input_ids),
                                     torch.ones_like(input_ids), past)
        return logits[:, -1].float()


@pytest.fixture
def plugged_in():
    register(EagerDecoderRuntime)
    yield EagerDecoderRuntime
    unregister(EagerDecoderRuntime.name)


def test_a_runtime_defined_here_is_validated_swept_and_reported(plugged_in, tiny_local_model: Path,
                                                                tmp_path: Path) -> None:
    spec = {"run_name": "plugin", "model": f"local:{tiny_local_model}", "runtimes": ["reference", "eager-decoder"],
            "precisions": ["fp32", "fp16"], "batch_sizes": [1, 2], "input_lens": [8], "output_len": 3,
            "warmup": 0, "repeats": 1, "device": "cpu", "reports_dir": str(tmp_path),
            "runtime_options": {"eager-decoder": {"threads": 2}}}
    with pytest.raises(ConfigError, match=r"eager-decoder.threads: Input should be less than or equal to 64"):
        parse_config({**spec, "runtime_options": {"eager-decoder": {"threads": 100}}})
    cfg = parse_config(spec)
    assert cfg.options_for("eager-decoder").threads == 2

    run_build_stage(cfg)
    df = run_sweeps(cfg)
    mine = df[df["runtime"] == "eager-decoder"]
    inference = mine[mine["stage"] == "inference"]
    assert list(inference[inference["precision"] == "fp32"]["status"]) == ["ok", "ok"]
    assert (inference[inference["precision"] == "fp16"]["status"] == "unavailable").all()
    assert (mine["runtime_precisions"] == "fp32 bf16").all() and (mine["runtime_needs_build"] == "true").all()
    assert (mine["runtime_options"] == "cast_to_half=False, threads=2").all()
    build = mine[(mine["stage"] == "build") & (mine["precision"] == "fp32")].iloc[0]
    assert build["status"] == "ok" and "threads=2" in build["notes"]
    ok = inference[inference["status"] == "ok"]
    assert (ok["token_agreement"] == 1.0).all() and (ok["max_logit_diff"] < 1e-4).all()

    unregister("eager-decoder")  # the report needs no registry: everything it shows comes from the rows
    matrix = decision_matrix(df)
    assert "eager-decoder fp32" in matrix.columns and "eager-decoder fp16" not in matrix.columns
    assert matrix.loc["dynamic shapes", "eager-decoder fp32"] == "any batch and length"
    assert matrix.loc["build / export / compile time (s)", "reference fp32"].endswith("0.0")
    for chart in plots.ALL_CHARTS.values():
        figure = chart(df)
        assert figure is None or figure.axes
    assert "eager-decoder" in results_table(df)["runtime"].values
    assert "eager-decoder" in build_table(df)["runtime"].values
    assert "eager-decoder" in provenance_table(df).loc["runtimes"].iloc[0]
    spec = ReportSpec.of(cfg)
    assert "eager-decoder" in availability_notes(df, spec) and "Output length" in method_notes(spec, df)


def test_importing_the_report_loads_no_torch() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, bench_kernels.report, bench_kernels.plots, "
                           "bench_kernels.runtimes, bench_kernels.config, bench_kernels.claims, bench_kernels.compare, "
                           "bench_kernels.decision; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_registry_is_the_one_list() -> None:
    assert list(RUNTIMES) == ["reference", "onnxruntime", "tensorrt", "compiled"]
    with pytest.raises(TypeError):
        register(object)  # type: ignore[arg-type]
