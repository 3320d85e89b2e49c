"""The reference runtime with device_map auto (the random weights it relies on are drawn by name: test_models)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench_kernels.config import parse_config
from bench_kernels.sweep import run_inference_sweep


def test_reference_with_device_map_auto_runs_on_the_cpu(tmp_path: Path, tiny_local_model: Path):
    """On a machine without GPUs accelerate maps everything to the CPU: one device, the plain reference's tokens."""
    params = dict(run_name="map", model=f"local:{tiny_local_model}", runtimes=["reference"], precisions=["fp32"],
                  batch_sizes=[2], input_lens=[8], output_len=6, warmup=0, repeats=1, device="cpu",
                  reports_dir=str(tmp_path))
    plain = run_inference_sweep(parse_config(params), "reference")
    mapped = run_inference_sweep(parse_config({**params, "run_name": "mapped",
                                               "runtime_options": {"reference": {"device_map": "auto"}}}), "reference")
    assert (mapped.status == "ok").all() and (mapped.gpu_count == 1).all()
    assert mapped.runtime_options.iloc[0] == "device_map=auto, gpus=0"
    plain_tokens = torch.load(next((tmp_path / "map" / "reference_outputs").glob("*.pt")))["tokens"]
    mapped_tokens = torch.load(next((tmp_path / "mapped" / "reference_outputs").glob("*.pt")))["tokens"]
    assert torch.equal(plain_tokens, mapped_tokens)
    assert plain[plain.stage == "inference"].tokens_per_s.notna().all()
