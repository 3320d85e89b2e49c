"""Sweeps on real models: a kill -9 mid-sweep resumes; a config that runs out of memory becomes an error row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


import pandas as pd
import pytest
import yaml

from bench_kernels.roofline import prefill_flops
from bench_kernels.config import parse_config
from bench_kernels.models import resolve_model_config
from bench_kernels.results import ResultsStore, load_results
from bench_kernels.sweep import run_inference_sweep

ROOT = Path(__file__).resolve().parents[1]


def sweep_script(params: dict) -> str:
    return textwrap.dedent(f"""
        from bench_kernels.config import parse_config
        from bench_kernels.sweep import run_inference_sweep
        run_inference_sweep(parse_config({params!r}), "reference", progress=print)
    """)


def test_kill_mid_sweep_then_rerun_keeps_finished_rows(tmp_path: Path) -> None:
    # The embedded model's shape with random weights: slow enough that the kill lands mid-sweep, and no perplexity.
    params = {"run_name": "killed", "model": "preset:smollm2-135m", "runtimes": ["reference"], "batch_sizes": [1, 2],
              "input_lens": [8, 16], "output_len": 4, "warmup": 0, "repeats": 1, "device": "cpu",
              "reports_dir": str(tmp_path)}
    store = ResultsStore(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "-c", sweep_script(params)], cwd=ROOT)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not any(r["status"] == "ok" for r in store.rows()):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {(r["batch_size"], r["input_len"]): r["timestamp"] for r in store.rows() if r["status"] == "ok"}
    assert 1 <= len(first) < 4, "the kill should land mid-sweep"
    lines = []
    df = run_inference_sweep(parse_config(params), "reference", progress=lines.append)
    assert f"{len(first)} of 4 shapes already done" in lines[0]
    df = df[df["stage"] == "inference"]
    assert len(df) == 4 and (df["status"] == "ok").all()
    for _, r in df.iterrows():
        key = (str(int(r["batch_size"])), str(int(r["input_len"])))
        if key in first:
            assert r["timestamp"] == first[key], "a finished row was measured again"


def test_out_of_memory_becomes_error_row_and_sweep_goes_on(tmp_path: Path, tiny_local_model: Path) -> None:
    """Under an address-space limit the largest batch cannot allocate its prefill activations (4096 x 1024
    tokens: 2 GB per MLP projection); the smaller one finishes."""
    params = {"run_name": "oom", "model": f"local:{tiny_local_model}", "runtimes": ["reference"],
              "batch_sizes": [1, 4096], "input_lens": [1024], "output_len": 2, "warmup": 0, "repeats": 1,
              "device": "cpu", "reports_dir": str(tmp_path)}
    limited = textwrap.dedent("""
        import resource, torch, transformers  # load the big libraries before capping the address space
        vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2**30, resource.RLIM_INFINITY))
    """) + sweep_script(params)
    done = subprocess.run([sys.executable, "-c", limited], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    df = load_results(tmp_path / "oom" / "results.csv").set_index("batch_size")
    assert df.loc[1, "status"] == "ok" and df.loc[1, "tokens_per_s"] > 0
    assert df.loc[4096, "status"] == "error"
    assert "memory" in df.loc[4096, "error"].lower() or "alloc" in df.loc[4096, "error"].lower()
    assert (tmp_path / "oom" / "errors.log").read_text().count("Traceback") >= 1


def test_a_tiny_spec_row_is_set_against_the_compute_roofline(tmp_path: Path) -> None:
    """The tiny spec's ONNX Runtime deployment (logits at every prompt position, fp32 on a CPU) at its first shape:
    the row carries its prefill FLOP rate and that rate's share of the fp32 matmul rate measured at the start."""
    spec = yaml.safe_load((ROOT / "params/tiny.yaml").read_text())
    cfg = parse_config({**spec, "runtimes": ["onnxruntime"], "batch_sizes": spec["batch_sizes"][:1],
                        "input_lens": spec["input_lens"][:1], "reports_dir": str(tmp_path)})
    df = run_inference_sweep(cfg, "onnxruntime")
    row = df[(df["stage"] == "inference") & (df["status"] == "ok")].iloc[0]
    assert row["prefill_precision"] == "fp32" and row["prefill_tflops"] > 0
    # TTFT p50 holds the prefill: its FLOPs (the head on every position) over TTFT give the achieved rate
    flops = prefill_flops(resolve_model_config(cfg.model), cfg.batch_sizes[0], cfg.input_lens[0],
                          logits_every_position=True)
    assert row["prefill_tflops"] == pytest.approx(flops / (row["ttft_ms_p50"] / 1e3) / 1e12, rel=1e-6)
    assert 0 < row["prefill_efficiency"] == pytest.approx(row["prefill_tflops"] / row["matmul_tflops_fp32"], rel=1e-3)
    assert pd.isna(row["mbu"])  # a CPU has no specified bandwidth


def test_precisions_by_runtime_limit_one_runtime_s_deployments() -> None:
    import torch

    from bench_kernels.sweep import deployments
    cfg = parse_config({"runtimes": ["reference", "compiled"], "precisions": ["fp32", "bf16"],
                        "precisions_by_runtime": {"reference": ["bf16"]}})
    assert [d.precision for d in deployments(cfg, "reference", torch.device("cpu"))] == ["bf16"]
    assert [d.precision for d in deployments(cfg, "compiled", torch.device("cpu"))] == ["fp32", "bf16"]
