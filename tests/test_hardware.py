"""Rates the rooflines divide by, measured on this machine's CPU."""

from __future__ import annotations

import time

import torch

from bench_kernels.provenance import provenance
from bench_kernels.rates import device_rates, remeasured_rates
from bench_kernels.results import MATMUL_COLUMNS


def test_cpu_rates_are_measured_in_this_process_and_recorded_in_provenance() -> None:
    start = time.perf_counter()
    rates = device_rates("cpu")
    assert time.perf_counter() - start < 15  # no child process to start on a CPU
    assert set(rates.matmul_tflops) == {"fp32", "bf16"}
    assert all(0 < tflops < 100 for tflops in rates.matmul_tflops.values()), rates  # no CPU core does 100 TFLOP/s
    assert 0.1 < rates.copy_gbps < 2000 and 0.1 < rates.read_gbps < 2000, rates
    assert rates.streaming_gbps == max(rates.copy_gbps, rates.read_gbps)
    assert device_rates("cpu") is rates  # once per process: every row of a sweep divides by the same rates
    block = provenance(torch.device("cpu"))
    assert float(block["matmul_tflops_fp32"]) == float(f"{rates.matmul_tflops['fp32']:.4g}")
    assert float(block["copy_gbps"]) == round(rates.copy_gbps, 1)
    assert set(c for c in MATMUL_COLUMNS if c in block) == {"matmul_tflops_fp32", "matmul_tflops_bf16"}


def test_a_second_bandwidth_measurement_keeps_the_faster_and_every_later_row_gets_it() -> None:
    first = device_rates("cpu")
    again = remeasured_rates("cpu")
    assert again.copy_gbps >= first.copy_gbps and again.read_gbps >= first.read_gbps
    assert again.matmul_tflops == first.matmul_tflops  # only the bandwidths are measured again
    assert device_rates("cpu") is again
