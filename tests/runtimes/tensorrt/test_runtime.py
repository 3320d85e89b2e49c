"""The tensorrt runtime on this machine: real engines, rebuilds for shapes outside the profiles, and `unavailable`
rows where engines cannot run (the embedded model's engine is built by the pipeline test, its cache by
test_engine)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bench_kernels.config import parse_config
from bench_kernels.timing import StepTimer
from bench_kernels.models import load_model
from bench_kernels.runtimes.base import QUALITY_LOGIT_ROWS
from bench_kernels.runtimes.tensorrt.library import TensorRTRuntimeError
from bench_kernels.runtimes.tensorrt.profiles import ShapeOutsideProfiles, profile_for
from bench_kernels.runtimes.tensorrt.runtime import TensorRTOptions, TensorRTRuntime, tensorrt_status
from bench_kernels.sweep import run_build_stage, run_inference_sweep

CPU = torch.device("cpu")
FLAVOR, VERSION, REASON = tensorrt_status(CPU)


@pytest.fixture(autouse=True, scope="module")
def _needs_tensorrt() -> None:
    if not FLAVOR:
        if os.environ.get("CI"):
            pytest.fail(f"no TensorRT module imports on CI (make setup installs tensorrt-rtx): {REASON}")
        pytest.skip(f"no TensorRT module imports: {REASON}")


def test_shape_outside_profiles_rebuilds_or_refuses(tiny_local_model: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_KERNELS_CACHE", str(tmp_path))  # a cold engine cache: every build is real
    loaded = load_model(f"local:{tiny_local_model}", "fp32", CPU)
    runtime = TensorRTRuntime(loaded, "fp32", CPU, TensorRTOptions(allow_rebuild=True))
    info = runtime.prepare([1], [8], 4)
    assert info.build_s > 0 and runtime.engine.flavor == FLAVOR
    assert runtime.ensure_shape(1, 8, 4) == 0.0  # inside the profiles: nothing to do
    first_engine = runtime.engine.path
    rebuild_s = runtime.ensure_shape(2, 32, 4)
    assert rebuild_s > 0 and runtime.engine.path != first_engine and not runtime.engine.cache_hit
    assert runtime.ensure_shape(2, 32, 4) == 0.0 and runtime.ensure_shape(1, 8, 4) == 0.0

    strict = TensorRTRuntime(loaded, "fp32", CPU, TensorRTOptions(allow_rebuild=False))
    strict.prepare([1], [8], 4)
    with pytest.raises(ShapeOutsideProfiles, match="batch=4"):
        strict.ensure_shape(4, 8, 4)


@pytest.fixture(scope="module")
def strict_runtime(tiny_local_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TensorRTRuntime:
    """A real engine for a sweep of batch 8, input 8, output 4, that never rebuilds (built once: the tests using it
    only ask it about shapes and fail to load it)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("BENCH_KERNELS_CACHE", str(tmp_path_factory.mktemp("strict-cache")))
        runtime = TensorRTRuntime(load_model(f"local:{tiny_local_model}", "fp32", CPU), "fp32", CPU,
                                  TensorRTOptions(allow_rebuild=False))
        runtime.prepare([8], [8], 4)
    return runtime


def test_quality_check_prefill_is_inside_the_profiles(strict_runtime: TensorRTRuntime) -> None:
    """The quality check runs the first QUALITY_LOGIT_ROWS prompts: batch 4 of a sweep whose smallest batch is 8."""
    assert profile_for(strict_runtime.profiles, QUALITY_LOGIT_ROWS, 8, 0) == 0
    assert strict_runtime.ensure_shape(QUALITY_LOGIT_ROWS, 8, 1) == 0.0
    prompts = torch.ones(QUALITY_LOGIT_ROWS, 8, dtype=torch.int64)
    with pytest.raises(TensorRTRuntimeError, match="could not load"):  # past the profiles, stopped by the CPU
        strict_runtime.first_step_logits(prompts)
    with pytest.raises(ShapeOutsideProfiles, match="batch=4, sequence=16"):  # checked before the runner loads
        strict_runtime.first_step_logits(torch.ones(QUALITY_LOGIT_ROWS, 16, dtype=torch.int64))


def test_runner_is_created_before_the_timer_starts(strict_runtime: TensorRTRuntime) -> None:
    """Loading the engine is not part of TTFT: here loading fails (no GPU) and the timer was never started."""
    timer = StepTimer(CPU)
    with pytest.raises(TensorRTRuntimeError, match="could not load"):
        strict_runtime.generate(torch.ones(8, 8, dtype=torch.int64), 4, timer)
    with pytest.raises(RuntimeError, match=r"token\(\) called before start\(\)"):
        timer.token()


def test_inference_rows_are_unavailable_with_the_reason(tmp_path: Path, tiny_local_model: Path) -> None:
    cfg = parse_config({"run_name": "trt", "model": f"local:{tiny_local_model}", "runtimes": ["tensorrt"],
                        "batch_sizes": [1, 2], "input_lens": [8], "output_len": 2, "device": "cpu",
                        "reports_dir": str(tmp_path)})
    df = run_inference_sweep(cfg, "tensorrt")
    assert list(df["stage"]) == ["inference", "inference", "quality"]  # the perplexity row says why too
    assert (df["status"] == "unavailable").all()
    assert df["error"].str.contains("engines run only on a CUDA GPU").all()
    assert df["error"].str.contains(f"{FLAVOR} {VERSION}").all()
    assert (df["runtime_version"] == f"{FLAVOR} {VERSION}").all()
    assert df["runtime_options"].str.contains("kernel_specialization=eager").all()


def test_int4_precisions_build_rows_and_unavailable_inference(tmp_path: Path, tiny_local_model: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """int4 and int4-awq build real engines here, each from its own export; inference rows say why they cannot run.
    (This model's projections are too small for int4 to shrink its engine: test_engine checks the size.)"""
    monkeypatch.setenv("BENCH_KERNELS_CACHE", str(tmp_path / "cache"))  # every export and build is real
    cfg = parse_config({"run_name": "trt-int4", "model": f"local:{tiny_local_model}", "runtimes": ["tensorrt"],
                        "precisions": ["bf16", "int4", "int4-awq"], "batch_sizes": [1], "input_lens": [8],
                        "output_len": 2, "device": "cpu", "reports_dir": str(tmp_path)})
    builds = run_build_stage(cfg).set_index("precision")
    assert (builds["status"] == "ok").all() and (builds["build_s"] > 0).all()
    assert (builds["cache_hit"] == "false").all(), "int4-awq's weights differ from int4's: a build of its own"
    assert (builds["artifact_mb"] > 0).all()
    # Engines that cannot run here are kept only until their build row is written.
    assert builds["notes"].str.contains("MB engine cannot run on this machine and was deleted").all()
    assert not list((tmp_path / "cache" / "engines").glob("*.engine"))
    exports = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert [name.split("-torch")[0].split("-local-")[1].split("-", 1)[1] for name in exports] == [
        "bf16", "int4-DequantizeLinear-bf16", "int4-awq-DequantizeLinear-bf16"]

    df = run_inference_sweep(cfg, "tensorrt")
    inference = df[df["stage"] != "build"]
    assert set(inference["precision"]) == {"bf16", "int4", "int4-awq"}
    assert (inference["status"] == "unavailable").all()
    assert inference["error"].str.contains("engines run only on a CUDA GPU").all()
