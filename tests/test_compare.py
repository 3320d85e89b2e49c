"""Comparing two runs: the flagging rule on rows with raw samples, the join, and `bench-kernels compare` on
committed runs."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench_kernels.compare import (BETTER, NOT_JUDGED, UNCHANGED, WORSE, compare_runs, judge, spread, summary_line,
                                   summary_table)
from bench_kernels.results import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
COMMAND = str(Path(sys.executable).with_name("bench-kernels"))
# Two committed runs of the same sweep (shapes, runtimes, repeats) on two models.
RUN_A, RUN_B = ROOT / "reports" / "h100-llama3.1-8b-trt", ROOT / "reports" / "h100-smollm2-trt"
ENVIRONMENT = {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "driver_version": "580.159.04",
               "torch_version": "2.11.0", "git_sha": "aaaaaaa", "runtime_version": "transformers 5.17.0"}


def shape(runtime: str, batch_size: int, latency_ms: list[float], **columns: Any) -> tuple[dict, dict | None]:
    """An inference row whose p50s come from its raw samples, as a sweep writes it."""
    samples = {"ttft_ms": [v / 10 for v in latency_ms], "itl_ms": [v / 8 for v in latency_ms],
               "latency_ms": latency_ms}
    p50 = {name: float(np.percentile(values, 50)) for name, values in samples.items()}
    row = {"run_name": "run", "stage": "inference", "runtime": runtime, "model": "tiny", "weights": "random",
           "precision": "bf16", "batch_size": batch_size, "input_len": 16, "output_len": 8, "status": "ok",
           "ttft_ms_p50": p50["ttft_ms"], "itl_ms_p50": p50["itl_ms"], "latency_ms_p50": p50["latency_ms"],
           "tokens_per_s": batch_size * 8 * 1e3 / p50["latency_ms"], "peak_mem_gb": 1.0, **ENVIRONMENT, **columns}
    return row, samples


def unmeasured(runtime: str, batch_size: int, **columns: Any) -> tuple[dict, dict | None]:
    return {"run_name": "run", "stage": "inference", "runtime": runtime, "model": "tiny", "precision": "bf16",
            "batch_size": batch_size, "input_len": 16, "output_len": 8, "status": "unavailable", **ENVIRONMENT,
            **columns}, None


def perplexity(runtime: str, value: float, **columns: Any) -> tuple[dict, dict | None]:
    return {"run_name": "run", "stage": "quality", "runtime": runtime, "model": "tiny", "precision": "bf16",
            "status": "ok", "perplexity": value, **ENVIRONMENT, **columns}, None


def write_run(folder: Path, *rows: tuple[dict, dict | None]) -> Path:
    store = ResultsStore(folder)
    for row, samples in rows:
        store.append(row, samples)
    return folder


def test_a_change_within_the_spread_is_unchanged_and_one_beyond_it_is_flagged(tmp_path: Path) -> None:
    around_100 = [98.0, 99.0, 100.0, 101.0, 102.0]  # interquartile range 2 ms
    run_a = write_run(tmp_path / "a", shape("reference", 1, around_100), shape("reference", 2, around_100),
                      shape("reference", 4, around_100))
    run_b = write_run(tmp_path / "b", shape("reference", 1, [v + 1 for v in around_100]),  # 1 ms: within
                      shape("reference", 2, [v + 20 for v in around_100], peak_mem_gb=2.0),  # 20 ms: beyond
                      shape("reference", 4, [v - 20 for v in around_100]))
    comparison = compare_runs(run_a, run_b)
    verdicts = comparison.changes.set_index(["batch_size", "metric"])["verdict"]
    assert verdicts[(1, "latency_ms_p50")] == verdicts[(1, "tokens_per_s")] == UNCHANGED
    assert verdicts[(2, "latency_ms_p50")] == verdicts[(2, "ttft_ms_p50")] == verdicts[(2, "tokens_per_s")] == WORSE
    assert verdicts[(4, "latency_ms_p50")] == verdicts[(4, "tokens_per_s")] == BETTER
    assert verdicts[(1, "peak_mem_gb")] == UNCHANGED  # equal: no spread needed
    assert verdicts[(2, "peak_mem_gb")] == NOT_JUDGED  # one value per run: no spread to judge by
    ratios = comparison.changes.set_index(["batch_size", "metric"])["ratio"]
    assert ratios[(2, "latency_ms_p50")] == pytest.approx(1.2) and ratios[(2, "peak_mem_gb")] == 2.0
    counts = summary_table(comparison).set_index(["runtime", "precision"]).loc[("reference", "bf16")]
    assert (counts["shapes"], counts["faster"], counts["slower"], counts["unchanged"]) == (3, 1, 1, 1)
    assert summary_line(comparison).startswith("b vs a, tokens/s beyond the runs' spread: reference bf16: "
                                               "1 faster, 1 slower, 1 unchanged")


def test_the_threshold_is_the_larger_spread_and_one_sample_has_none() -> None:
    assert spread([98.0, 99.0, 100.0, 101.0, 102.0]) == 2.0
    assert math.isnan(spread([100.0]))
    assert judge(100.0, 103.0, 2.0, 1.0, higher_is_better=False) == WORSE
    assert judge(100.0, 103.0, 1.0, 4.0, higher_is_better=False) == UNCHANGED
    assert judge(100.0, 103.0, 1.0, 2.0, higher_is_better=True) == BETTER
    assert judge(100.0, 103.0, math.nan, 4.0, higher_is_better=True) == NOT_JUDGED


def test_rows_are_joined_on_runtime_precision_and_shape_and_the_rest_listed(tmp_path: Path) -> None:
    samples = [98.0, 99.0, 100.0, 101.0, 102.0]
    run_a = write_run(tmp_path / "a", shape("reference", 1, samples), shape("reference", 2, samples),
                      unmeasured("tensorrt", 1), perplexity("reference", 10.0))
    elsewhere = {"gpu_name": "NVIDIA H200", "git_sha": "bbbbbbb"}
    run_b = write_run(tmp_path / "b", shape("reference", 1, samples, **elsewhere),
                      shape("reference", 4, samples, **elsewhere), unmeasured("tensorrt", 1, **elsewhere),
                      perplexity("reference", 10.5, **elsewhere),
                      perplexity("compiled", 11.0, runtime_version="torch 2.11.0", **elsewhere))
    comparison = compare_runs(run_a, run_b)
    inference = comparison.changes[comparison.changes["stage"] == "inference"]
    assert set(zip(inference["runtime"], inference["batch_size"])) == {("reference", 1)}
    assert len(inference) == 5  # tokens/s, TTFT, per-token latency, latency, memory
    quality = comparison.changes[comparison.changes["stage"] == "quality"].iloc[0]
    assert (quality["runtime"], quality["ratio"], quality["verdict"]) == ("reference", pytest.approx(1.05), NOT_JUDGED)
    listed = {(r.stage, r.runtime, None if math.isnan(r.batch_size) else int(r.batch_size), r.in_a, r.in_b)
              for r in comparison.unmatched.itertuples()}
    assert listed == {("inference", "reference", 2, "ok", "absent"), ("inference", "reference", 4, "absent", "ok"),
                      ("inference", "tensorrt", 1, "unavailable", "unavailable"),
                      ("quality", "compiled", None, "absent", "ok")}
    assert comparison.provenance.values.tolist() == [
        ["gpu_name", "NVIDIA H100 80GB HBM3", "NVIDIA H200"],
        ["git_sha", "aaaaaaa", "bbbbbbb"],
        ["runtime_version (compiled)", "—", "torch 2.11.0"],
    ]
    assert summary_line(comparison).endswith("(3 shapes not measured in both)")


def compare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, "compare", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_compare_command_on_two_committed_runs_from_another_folder(tmp_path: Path) -> None:
    done = compare(os.path.relpath(RUN_A, tmp_path), os.path.relpath(RUN_B, tmp_path), "--out", "out/cmp.html",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    html = (tmp_path / "out" / "cmp.html").read_text()
    assert "<script src=" not in html  # nothing to fetch: it must read offline
    assert "Ratios B / A per shape" in html and "per-token latency p50" in html and "<img alt=" in html
    assert "smollm2-135m" in html and "compare_runs(" not in html  # provenance shown, code not
    summary = summary_line(compare_runs(RUN_A, RUN_B))
    assert "reference bf16: " in summary and not done.stderr
    assert done.stdout.splitlines() == [summary, f"comparison: {tmp_path / 'out' / 'cmp.html'}"]


def test_compare_writes_into_run_b_by_default(tmp_path: Path) -> None:
    for run in (RUN_A, RUN_B):
        (tmp_path / run.name).mkdir()
        for name in ("results.csv", "samples.jsonl"):
            shutil.copy(run / name, tmp_path / run.name / name)
    done = compare(RUN_A.name, RUN_B.name, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    written = tmp_path / RUN_B.name / f"compare-vs-{RUN_A.name}.html"
    assert written.is_file() and done.stdout.splitlines()[-1] == f"comparison: {written}"


@pytest.mark.parametrize("bad, message", [
    ("empty", "not a run folder, it has no results.csv"),
    ("missing", "no such folder (give a run folder, e.g. reports/<run_name>)"),
])
def test_a_folder_that_is_not_a_run_is_named_in_one_line(tmp_path: Path, bad: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    done = compare(str(RUN_A), bad, cwd=tmp_path)
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.splitlines() == [f"{tmp_path / bad}: {message}"]  # one line, no traceback
