"""The report's traffic section over any mix of rows: none, offline rows only, load rows too, no traffic key."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench_kernels.config import parse_config
from bench_kernels.report import ReportSpec
from bench_kernels.results import ResultsStore
from bench_kernels.traffic.spec import parse_traffic
from bench_kernels.traffic_report import (configurations, gpus_for_traffic, measured_highest_rates, traffic_rates,
                                          traffic_section)

TRAFFIC = {"rate_per_s": [2.0, 8.0], "lengths": {"kind": "fixed", "input_len": 128}, "output_len": 16,
           "batching": {"max_batch": 4, "max_wait_ms": 10}}


def _cfg(tmp_path: Path, **extra: object) -> ReportSpec:
    return ReportSpec.of(parse_config({
        "run_name": "t", "reports_dir": str(tmp_path), "runtimes": ["reference", "compiled", "tensorrt"],
        "batch_sizes": [1, 4], "input_lens": [128, 512], "output_len": 16,
        "slo": {"ttft_ms": 500.0, "tpot_ms": 50.0}, "gpu_hour_usd": 2.0, **extra}))


def _offline_rows(store: ResultsStore) -> None:
    """Step costs of two runtimes (the compiled one twice as fast) and a TensorRT build that never ran."""
    for runtime, scale, policies in (("reference", 2.0, "continuous static"),
                                     ("compiled", 1.0, "shape_limited static")):
        for batch in (1, 4):
            for length in (128, 512):
                store.append({"stage": "inference", "runtime": runtime, "model": "m", "precision": "fp32",
                              "batch_size": batch, "input_len": length, "output_len": 16, "status": "ok",
                              "ttft_ms_p50": scale * (5 + 0.02 * batch * length), "itl_ms_p50": scale * (4 + batch),
                              "runtime_batching_policies": policies})
    store.append({"stage": "build", "runtime": "tensorrt", "model": "m", "precision": "fp32", "status": "ok",
                  "build_s": 42.0})


def _load_row(store: ResultsStore, rate: float, ttft_p99: float, tpot_p99: float) -> None:
    store.append({"stage": "load", "runtime": "reference", "model": "m", "precision": "fp32", "batch_size": 4,
                  "input_len": 128, "output_len": 16, "policy": "continuous max_batch=4",
                  "arrivals": f"poisson {rate:g}/s", "status": "ok", "request_rate_per_s": rate, "requests": 60,
                  "duration_s": 30.0, "ttft_ms_p50": ttft_p99 / 2, "ttft_ms_p99": ttft_p99, "tpot_ms_p50": tpot_p99,
                  "tpot_ms_p99": tpot_p99, "latency_ms_p99": ttft_p99 + 15 * tpot_p99, "achieved_rate_per_s": rate,
                  "offered_rate_per_s": rate, "completion_rate_per_s": rate, "goodput_per_s": rate,
                  "slo_attainment": 1.0})


def test_without_a_traffic_key_the_section_says_so(tmp_path: Path) -> None:
    text, figure = traffic_section(_cfg(tmp_path), pd.DataFrame())
    assert "No traffic given" in text and figure is None


def test_no_rows_at_all(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, traffic=TRAFFIC)
    text, figure = traffic_section(cfg, ResultsStore(cfg.run_dir).load())
    assert "No load run in this run's results" in text and "no step costs to simulate with" in text
    assert figure is None


def test_offline_rows_only_predict_and_size(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, traffic=TRAFFIC)
    store = ResultsStore(cfg.run_dir)
    _offline_rows(store)
    text, figure = traffic_section(cfg, store.load())
    assert "every figure below is predicted" in text and "Measured load runs" not in text
    assert "Not simulated: tensorrt fp32 (built in 42 s)" in text
    assert "<b>Fewest GPUs: compiled fp32" in text
    for label in ("reference fp32, continuous", "reference fp32, static", "compiled fp32, shape_limited"):
        assert label in text
    assert figure is not None and len(figure.axes) == 2
    assert [line.get_ydata()[0] for line in figure.axes[0].lines if "target" in str(line.get_label())] == [500.0]


def test_load_rows_are_shown_beside_the_prediction(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, traffic=TRAFFIC)
    store = ResultsStore(cfg.run_dir)
    _offline_rows(store)
    _load_row(store, 2.0, 40.0, 12.0)
    _load_row(store, 8.0, 90.0, 14.0)
    text, _ = traffic_section(cfg, store.load())
    assert "Measured load runs" in text and "Simulator against the measured load runs" in text
    assert "p99 of 60 requests (fewer than 100) lies between their two slowest; 30 s of 600 s MLPerf" in text
    assert text.count("continuous max_batch=4") >= 5  # both runs measured and checked, and the highest rate
    highest = measured_highest_rates(store.load(), cfg.targets)
    assert highest[["rates_tried", "highest_rate_holding_per_s"]].values.tolist() == [["2, 8", 8.0]]
    strict = measured_highest_rates(store.load(), _cfg(tmp_path, slo={"ttft_ms": 50.0}).targets)
    assert strict["highest_rate_holding_per_s"].tolist() == [2.0]


def test_load_rows_without_offline_rows(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, traffic=TRAFFIC)
    store = ResultsStore(cfg.run_dir)
    _load_row(store, 2.0, 40.0, 12.0)
    text, figure = traffic_section(cfg, store.load())
    assert "Measured load runs" in text and "no step costs to simulate with" in text
    assert figure is not None  # the measured points alone


def test_gpus_for_a_day_profile() -> None:
    """One deployment of 2 GPUs sustains 2 requests/s: a peak of 5/s needs 3 deployments (6 GPUs); hours of 1/s
    and 5/s need 1 and 3 deployments, a mean of 4 GPUs; at $2 an hour."""
    cfg = ReportSpec.of(parse_config({"traffic": {"arrivals": "day_profile",
                                                  "requests_per_hour": [3600.0, 18_000.0]}}))
    hourly, described = traffic_rates(cfg, parse_traffic(cfg.traffic))
    assert hourly == [1.0, 5.0] and described == "the day profile (peak 5.00 requests/s, mean 3.00)"
    rates = pd.DataFrame([{"configuration": "x", "runtime": "x", "precision": "bf16", "gpu_count": 2,
                           "policy": "static", "rate_per_s": 2.0, "rate_per_s_per_gpu": 1.0, "extrapolated": ""}])
    sized = gpus_for_traffic(rates, hourly, 2.0).iloc[0]
    assert (sized["gpus_at_peak"], sized["gpus_at_mean"]) == (6, 4.0)
    assert sized["usd_per_day_at_peak"] == pytest.approx(6 * 24 * 2.0)


def test_a_daily_load_sizes_the_fleet() -> None:
    cfg = ReportSpec.of(parse_config({"load": {"requests_per_day": 8_640_000}, "traffic": {"rate_per_s": [1.0, 4.0]}}))
    assert traffic_rates(cfg, parse_traffic(cfg.traffic)) == ([100.0], "8,640,000 requests a day (100.00/s)")


def test_configurations_take_the_nearest_output_length(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _offline_rows(store)
    configs = configurations(store.load(), 128)
    assert [c.label for c in configs] == ["compiled fp32, shape_limited", "compiled fp32, static",
                                          "reference fp32, continuous", "reference fp32, static"]
    assert configs[0].built_batch_sizes == [1, 4] and configs[0].built_input_lens == [128, 512]


def test_the_report_section_and_the_simulator_load_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, bench_kernels.traffic_report, bench_kernels.traffic.simulator; "
            "print(sorted(m for m in ('torch', 'transformers', 'bench_kernels.runtimes') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
