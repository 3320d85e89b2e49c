"""The timing routine: percentile math, derived figures, warmup exclusion, fixed output length."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bench_kernels.timing import Measurement, StepTimer, measure_generation, percentile

CPU = torch.device("cpu")


def test_percentile_interpolates_linearly() -> None:
    samples = [10.0, 20.0, 30.0, 40.0]
    assert percentile(samples, 50) == 25.0
    assert percentile(samples, 0) == 10.0 and percentile(samples, 100) == 40.0
    assert percentile(samples, 99) == pytest.approx(40.0 - 0.03 * 10)
    assert percentile([7.0], 99) == 7.0
    values = list(np.random.default_rng(0).exponential(size=101))
    assert percentile(values, 99) == pytest.approx(sorted(values)[99])  # index (101 - 1) * 0.99


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_derives_ttft_itl_throughput() -> None:
    m = Measurement(batch_size=4, input_len=100, output_len=3, warmup=0)
    m.add_run([50.0, 60.0, 70.0])
    m.add_run([70.0, 90.0, 110.0])
    s = m.summary()
    assert m.ttft_ms == [50.0, 70.0] and m.itl_ms == [10.0, 10.0, 20.0, 20.0] and m.latency_ms == [70.0, 110.0]
    assert s["ttft_ms_p50"] == 60.0 and s["latency_ms_p50"] == 90.0 and s["itl_ms_p50"] == 15.0
    assert s["tokens_per_s"] == pytest.approx(4 * 3 / 0.090)
    assert s["prefill_tokens_per_s"] == pytest.approx(4 * 100 / 0.060)


def test_measure_excludes_warmup_and_times_each_token() -> None:
    calls = []

    def fake_generate(timer: StepTimer) -> list[int]:
        calls.append(1)
        timer.start()
        time.sleep(0.08)  # "prefill": far longer than a token, so a busy CI machine's sleep overshoot cannot blur them
        timer.token()
        for _ in range(2):
            time.sleep(0.005)
            timer.token()
        return [1, 2, 3]

    m = measure_generation(fake_generate, CPU, batch_size=1, input_len=4, output_len=3, warmup=2, repeats=3)
    assert len(calls) == 5 and len(m.latency_ms) == 3 and len(m.itl_ms) == 6
    assert all(t >= 80.0 for t in m.ttft_ms) and all(d >= 4.0 for d in m.itl_ms)
    assert max(m.itl_ms) < min(m.ttft_ms)  # each token timed on its own, not with the prefill
    assert m.last_output == [1, 2, 3]
    assert m.peak_mem_gb > 0


def test_measure_rejects_wrong_token_count() -> None:
    def short(timer: StepTimer) -> None:
        timer.start()
        timer.token()

    with pytest.raises(RuntimeError, match="expected exactly 2"):
        measure_generation(short, CPU, batch_size=1, input_len=1, output_len=2, warmup=0, repeats=1)
