"""Measured load runs on the CPU with a tiny random-weight Llama: the reference served with transformers'
continuous batching and with static batching; rows, per-request samples, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench_kernels.config import ConfigError, parse_config
from bench_kernels.results import load_results
from bench_kernels.traffic.latency import REQUESTS_FILE, read_requests
from bench_kernels.traffic.load import run_load_stage


def _params(tmp_path: Path, model: str, **traffic: object) -> dict:
    return {"run_name": "load", "model": model, "runtimes": ["reference"], "batch_sizes": [1, 4],
            "input_lens": [16, 32], "output_len": 4, "device": "cpu", "reports_dir": str(tmp_path),
            "slo": {"ttft_ms": 60_000.0, "tpot_ms": 10_000.0},
            "traffic": {"rate_per_s": [4.0, 8.0], "duration_s": 2.0, "requests": 6, "output_len": 4,
                        "lengths": {"kind": "uniform", "min_len": 8, "max_len": 32, "seed": 1},
                        "batching": {"max_batch": 4, "max_wait_ms": 20}, **traffic}}


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_load_runs_write_rows_and_requests_and_resume(tmp_path: Path, tiny_local_model: Path, policy: str) -> None:
    cfg = parse_config(_params(tmp_path, f"local:{tiny_local_model}", policies={"reference": policy}))
    run_load_stage(cfg)
    rows = load_results(cfg.run_dir / "results.csv")
    assert list(rows["stage"]) == ["load", "load"] and set(rows["status"]) == {"ok"}, rows["error"].tolist()
    assert list(rows["arrivals"]) == ["poisson 4/s", "poisson 8/s"]
    assert set(rows["policy"]) == {f"{policy} max_batch=4" + (" max_wait_ms=20" if policy == "static" else "")}
    requests = read_requests(cfg.run_dir)
    for row in rows.itertuples():
        mine = [r for r in requests if r["key"]["arrivals"] == row.arrivals]
        assert len(mine) == row.requests >= 1
        assert all(r["first_token_s"] >= r["arrival_s"] and r["last_token_s"] >= r["first_token_s"] for r in mine)
        assert all(r["output_len"] == 4 and 8 <= r["input_len"] <= 32 for r in mine)
        assert 0 < row.ttft_ms_p50 <= row.ttft_ms_p99 and row.latency_ms_p99 >= row.ttft_ms_p99
        assert row.slo_attainment == 1.0 and row.goodput_per_s == pytest.approx(row.achieved_rate_per_s)
    before = (cfg.run_dir / REQUESTS_FILE).read_text()
    run_load_stage(cfg)  # finished rows are kept: nothing is served again
    assert (cfg.run_dir / REQUESTS_FILE).read_text() == before


def test_an_unservable_policy_is_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="traffic.policies.reference: reference does not serve 'shape_limited'; "
                                          "allowed: continuous, static"):
        parse_config(_params(tmp_path, "embedded", policies={"reference": "shape_limited"}))
