"""Rates the rooflines divide by, measured on this machine's CPU."""

from __future__ import annotations

import time

import torch

from bench_kernels.hardware import matmul_rates_tflops, provenance
from bench_kernels.results import MATMUL_COLUMNS


def test_cpu_matmul_rates_are_measured_for_fp32_and_bf16_and_recorded_in_provenance() -> None:
    start = time.perf_counter()
    rates = matmul_rates_tflops("cpu")
    assert time.perf_counter() - start < 10  # "a second or two" on a free CPU; shared cores are slower
    assert set(rates) == {"fp32", "bf16"}
    assert all(0 < tflops < 100 for tflops in rates.values()), rates  # no CPU core does 100 TFLOP/s
    block = provenance(torch.device("cpu"))
    assert float(block["matmul_tflops_fp32"]) == float(f"{rates['fp32']:.4g}")
    assert set(c for c in MATMUL_COLUMNS if c in block) == {"matmul_tflops_fp32", "matmul_tflops_bf16"}
