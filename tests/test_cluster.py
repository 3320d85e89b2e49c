"""Sweeps on Ray: the tiny sweep split over two Ray workers on the CPU gives the serial run's rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from bench_kernels.cluster import run_sweeps_on_ray
from bench_kernels.config import parse_config
from bench_kernels.results import ResultsStore, row_key
from bench_kernels.sweep import run_build_stage, run_sweeps


def _tiny(tmp_path: Path, model: Path, run_name: str) -> dict:
    # Three deployments: the reference, and the compiled runtime on one and on two ranks (eager: compiling
    # on this CPU would dominate the test's time; tests/runtimes/compiled/test_tensor_parallel.py compiles).
    return dict(run_name=run_name, model=f"local:{model}", runtimes=["reference", "compiled"], precisions=["fp32"],
                batch_sizes=[1, 2], input_lens=[8], output_len=4, warmup=0, repeats=1, device="cpu",
                reports_dir=str(tmp_path), perplexity_windows=1,
                runtime_options={"compiled": {"compile": False, "tensor_parallel": [1, 2]}})


def test_ray_sweep_gives_the_serial_rows_and_resumes(tmp_path: Path, tiny_local_model: Path) -> None:
    serial_cfg = parse_config(_tiny(tmp_path, tiny_local_model, "serial"))
    run_build_stage(serial_cfg)
    serial = run_sweeps(serial_cfg)
    ray_cfg = parse_config(_tiny(tmp_path, tiny_local_model, "ray"))
    lines: list[str] = []
    # A local Ray instance of two CPUs (two workers at a time; the two-rank deployment takes both), started here
    # once for both runs below: run_sweeps_on_ray uses the instance it finds and leaves it running.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_sweeps_on_ray(ray_cfg, progress=lines.append)
        assert ray.is_initialized()
        # A second run finds every row finished and measures nothing again.
        before = {row_key(r): r["timestamp"] for r in ResultsStore(ray_cfg.run_dir).rows()}
        run_sweeps_on_ray(ray_cfg, progress=lines.append)
        assert {row_key(r): r["timestamp"] for r in ResultsStore(ray_cfg.run_dir).rows()} == before
    finally:
        ray.shutdown()
    assert "3 deployments submitted" in lines[0]

    serial_rows, ray_rows = ResultsStore(serial_cfg.run_dir).rows(), ResultsStore(ray_cfg.run_dir).rows()
    assert len(serial_rows) == len(serial) == 12  # builds, shapes, and a perplexity row per deployment
    perplexity = {(r["runtime"], r["gpu_count"]): float(r["perplexity"])
                  for r in serial_rows if r["stage"] == "quality"}
    # Two ranks score through the sharded decoder and its gathered vocabulary: the same perplexity as one.
    assert perplexity[("compiled", "2")] == pytest.approx(perplexity[("compiled", "1")], rel=1e-4)
    assert sorted(map(row_key, ray_rows)) == sorted(map(row_key, serial_rows))
    assert {r["status"] for r in serial_rows} == {r["status"] for r in ray_rows} == {"ok", "skipped"}
    compiled = on_ray[(on_ray.stage == "inference") & (on_ray.runtime == "compiled")]
    # The compiled tasks waited for the reference task: their quality columns are measured.
    assert (compiled.token_agreement == 1.0).all()
    assert set(compiled.gpu_count) == {1, 2}
