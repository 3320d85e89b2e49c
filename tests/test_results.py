"""The results table: schema round trip, atomic append, torn samples, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bench_kernels.compare import compare_runs
from bench_kernels.decision import WINNER_MARK, decision_matrix
from bench_kernels.results import (COLUMN, COLUMNS, JSON_SCHEMA_VERSION, Column, ResultsStore, load_results,
                                   register, unregister)
from bench_kernels.verdicts import BETTER

ROOT = Path(__file__).resolve().parents[1]


def row(batch_size: int, status: str = "ok", **extra: object) -> dict:
    return {"run_name": "t", "stage": "inference", "runtime": "reference", "model": "m", "precision": "fp32",
            "batch_size": batch_size, "input_len": 8, "output_len": 4, "status": status, "tokens_per_s": 12.5,
            "latency_ms_p99": 0.1 + batch_size, **extra}


def test_round_trip_keeps_values_and_types(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append(row(1), {"ttft_ms": [1.0, 2.0], "itl_ms": [0.5], "latency_ms": [3.0]})
    store.append(row(2, status="error", error="out of memory: tried to allocate 2 GiB"))
    df = store.load()
    assert list(df.columns) == list(COLUMNS)
    assert df["batch_size"].tolist() == [1, 2] and df["tokens_per_s"].dtype.kind == "f"
    assert df.loc[0, "latency_ms_p99"] == 1.1 and pd.isna(df.loc[1, "ttft_ms_p50"])
    assert df.loc[1, "error"] == "out of memory: tried to allocate 2 GiB"
    assert store.load_samples()[0]["ttft_ms"] == [1.0, 2.0]


def test_same_key_replaces_and_finished_only_ok(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append(row(1, status="error", error="boom"))
    assert not store.is_finished(row(1))
    store.append(row(1))
    assert len(store.rows()) == 1 and store.is_finished(row(1))


def test_schema_enforced(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    with pytest.raises(KeyError, match="tokens_per_sec"):
        store.append(row(1, tokens_per_sec=3.0))
    with pytest.raises(ValueError, match="allowed: ok, error, skipped, unavailable"):
        store.append(row(1, status="fine"))


def test_torn_samples_line_is_skipped(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append(row(1), {"ttft_ms": [1.0], "itl_ms": [], "latency_ms": [2.0]})
    with store.samples_path.open("a") as handle:
        handle.write('{"key": {"stage": "infer')
    assert len(store.load_samples()) == 1


def test_kill_during_appends_never_corrupts(tmp_path: Path) -> None:
    """kill -9 a writer mid-stream: the CSV parses, every row is whole, and appends resume."""
    script = textwrap.dedent(f"""
        from bench_kernels.results import ResultsStore
        store = ResultsStore({str(tmp_path)!r})
        for i in range(1, 100000):
            store.append({{"run_name": "t", "stage": "inference", "runtime": "reference", "model": "m",
                          "precision": "fp32", "batch_size": i, "input_len": 8, "output_len": 4,
                          "status": "ok", "tokens_per_s": float(i), "notes": "x" * 200}},
                         {{"ttft_ms": [1.0] * 50, "itl_ms": [], "latency_ms": [2.0]}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and len(ResultsStore(tmp_path).rows()) < 30:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    df = load_results(tmp_path / "results.csv")
    assert len(df) >= 30
    assert (df["tokens_per_s"] == df["batch_size"]).all() and (df["notes"].str.len() == 200).all()
    store = ResultsStore(tmp_path)
    store.append(row(10**6))
    assert len(store.rows()) == len(df) + 1
    assert len(store.load_samples()) >= len(df)


def test_two_writers_at_once_lose_no_row(tmp_path: Path) -> None:
    """One sweep per GPU into one run folder: two processes appending 150 rows each keep all 300."""
    script = textwrap.dedent(f"""
        import sys
        from bench_kernels.results import ResultsStore
        store = ResultsStore({str(tmp_path)!r})
        for i in range(150):
            store.append({{"run_name": "t", "stage": "inference", "runtime": sys.argv[1], "model": "m",
                          "precision": "fp32", "batch_size": i + 1, "input_len": 8, "output_len": 4,
                          "status": "ok", "tokens_per_s": float(i)}},
                         {{"ttft_ms": [1.0], "itl_ms": [], "latency_ms": [2.0]}})
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, name], cwd=ROOT) for name in ("a", "b")]
    assert [w.wait(timeout=600) for w in writers] == [0, 0]
    df = load_results(tmp_path / "results.csv")
    assert len(df) == 300 and df.groupby("runtime").size().to_dict() == {"a": 150, "b": 150}
    assert len(ResultsStore(tmp_path).load_samples()) == 300


def test_results_are_readable_by_colleagues(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append(row(1), {"ttft_ms": [1.0], "itl_ms": [], "latency_ms": [2.0]})
    assert store.csv_path.stat().st_mode & 0o777 == 0o644
    assert store.samples_path.stat().st_mode & 0o777 == 0o644


def test_temporary_files_of_killed_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".results.csv.{dead.stdout.strip()}.tmp"
    mine = tmp_path / f".results.csv.{os.getpid()}.tmp"
    stale.write_text("half a row")
    mine.write_text("being written")
    ResultsStore(tmp_path)
    assert not stale.exists() and mine.exists()


def test_results_of_earlier_versions_load(tmp_path: Path) -> None:
    """Rows with trt_flavor / trt_version (before runtime_version) keep that version."""
    legacy = tmp_path / "results.csv"
    legacy.write_text("run_name,stage,runtime,model,precision,status,trt_flavor,trt_version,tokens_per_s\n"
                      "t,build,tensorrt,m,bf16,ok,tensorrt_rtx,1.7.1.116,\n"
                      "t,inference,reference,m,bf16,ok,,,12.5\n")
    df = load_results(legacy)
    assert list(df["runtime_version"]) == ["tensorrt_rtx 1.7.1.116", ""] and df["tokens_per_s"].iloc[1] == 12.5
    store = ResultsStore(tmp_path)
    store.append(row(1))
    assert store.rows()[0]["runtime_version"] == "tensorrt_rtx 1.7.1.116"


def test_rows_written_before_gpu_count_are_single_device_rows(tmp_path: Path) -> None:
    """A resumed sweep keeps rows (and samples) written before gpu_count joined the key: they are 1-device rows."""
    (tmp_path / "results.csv").write_text(
        "run_name,stage,runtime,model,precision,batch_size,input_len,output_len,status,tokens_per_s\n"
        "t,inference,reference,m,fp32,1,8,4,ok,12.5\n")
    (tmp_path / "samples.jsonl").write_text(
        '{"key": {"stage": "inference", "runtime": "reference", "model": "m", "precision": "fp32", "batch_size": "1",'
        ' "input_len": "8", "output_len": "4"}, "ttft_ms": [1.0]}\n')
    store = ResultsStore(tmp_path)
    assert store.is_finished(row(1, gpu_count=1)) and not store.is_finished(row(1, gpu_count=2))
    store.append(row(1, gpu_count=2), {"ttft_ms": [2.0]})
    df = store.load().set_index("gpu_count")
    assert df.loc[1, "tokens_per_s"] == 12.5 and len(df) == 2
    assert sorted(s["ttft_ms"][0] for s in store.load_samples()) == [1.0, 2.0]


def test_integers_are_written_as_integers_and_keys_match_whatever_the_type(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append(row(8.0, gpu_count=1.0))  # e.g. a value that went through a float column of a DataFrame
    store.append(row(2))
    first, second = store.csv_path.read_text().splitlines()[1:]
    assert first.startswith("t,inference,reference,m,,fp32,1,8,8,4,ok,") and second.startswith(
        "t,inference,reference,m,,fp32,,2,8,4,ok,")
    assert store.is_finished(row(8)) and store.is_finished({**row(8), "batch_size": "8.0"})
    store.append(row(8))  # the same measurement again: replaced, not added beside it
    assert len(store.rows()) == 2


@pytest.fixture
def energy_metric():
    """A metric registered at run time, as one new entry in results.REGISTRY would add it."""
    yield register(Column("energy_j_per_token", "float", unit="J/token", better="lower", label="energy per token",
                          stages=("inference",), fmt="{:.3f}", matrix=("min max",), compared=True,
                          samples="energy_j"))
    unregister("energy_j_per_token")


def test_a_metric_registered_in_one_place_reaches_the_csv_compare_and_the_matrix(tmp_path: Path,
                                                                                  energy_metric: Column) -> None:
    for folder, joules in (("a", {"reference": 0.50, "compiled": 0.20}), ("b", {"reference": 0.50, "compiled": 0.10})):
        store = ResultsStore(tmp_path / folder)
        for runtime, value in joules.items():
            store.append(row(1, runtime=runtime, energy_j_per_token=value),
                         {"energy_j": [value * f for f in (0.99, 1.0, 1.01)], "latency_ms": [10.0, 10.0, 10.0]})
    header = (tmp_path / "a" / "results.csv").read_text().splitlines()[0].split(",")
    assert "energy_j_per_token" in header and header.index("energy_j_per_token") < header.index("runtime_version")
    changes = compare_runs(tmp_path / "a", tmp_path / "b").changes.set_index(["runtime", "metric"])
    assert changes.loc[("compiled", "energy_j_per_token"), "ratio"] == pytest.approx(0.5)
    assert changes.loc[("compiled", "energy_j_per_token"), "verdict"] == BETTER  # lower, beyond the spread
    matrix = decision_matrix(load_results(tmp_path / "a" / "results.csv"))
    cells = matrix.loc["energy per token, batch 1, input 8 (J/token)"]
    assert cells["compiled"] == WINNER_MARK + "0.200" and cells["reference"] == "0.500"


def test_the_json_export_holds_every_row_typed_beside_the_run(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.append(row(1))
    store.append(row(8, status="error", error="out of memory"))
    document = json.loads(store.export_json({"run_name": "t", "model": "m"}).read_text())
    csv_rows = store.rows()
    assert document["schema_version"] == JSON_SCHEMA_VERSION and document["run"]["model"] == "m"
    assert len(document["rows"]) == len(csv_rows) == 2
    first, second = document["rows"]
    assert first["batch_size"] == 1 and type(first["batch_size"]) is int and second["batch_size"] == 8
    assert first["tokens_per_s"] == 12.5 and first["ttft_ms_p50"] is None
    assert second["error"] == "out of memory" and first["error"] is None
    assert document["columns"]["batch_size"] == "int" and set(first) == set(COLUMNS)


def test_a_percentile_says_what_it_is_over_its_samples() -> None:
    """A p99 needs 100 samples (a p50 two) to have one above it; over fewer it sits between the two largest."""
    p99, p50 = COLUMN["ttft_ms_p99"], COLUMN["ttft_ms_p50"]
    assert p99.percentile == 99 and COLUMN["tokens_per_s"].percentile is None
    assert p99.sample_words(5) == "≈ max of 5 runs" and p99.sample_words(100) == "n=100"
    assert p50.sample_words(5) == "n=5" and p50.sample_words(1) == "≈ max of 1 run"
    assert p99.statistic([3, 5, 5]) == "≈ max of 3 or 5 runs"
    assert p99.statistic([5, 1270]) == "p99, ≈ the max where under 100 runs"
    assert COLUMN["itl_ms_p99"].statistic([1270]) == "p99"
