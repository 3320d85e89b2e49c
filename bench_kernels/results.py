"""The tidy results table: schema, locked atomic append, resume, load."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from bench_kernels.paths import atomic_write, remove_stale_temporaries
from bench_kernels.precisions import MATMUL_PRECISIONS

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "skipped", "unavailable")
# Compute precisions whose matmul rate a sweep measures (rates.device_rates), one provenance column each.
MATMUL_COLUMNS = tuple(f"matmul_tflops_{precision}" for precision in MATMUL_PRECISIONS)
# gpu_count: devices one deployment uses (tensor-parallel ranks, or the GPUs a device_map spreads layers over;
# 1 for a single device, the CPU included); rows written before it existed read as 1.
KEY_COLUMNS = ("stage", "runtime", "model", "precision", "gpu_count", "batch_size", "input_len", "output_len")
KEY_DEFAULTS = {"gpu_count": "1"}
COLUMNS = (
    "run_name", "stage", "runtime", "model", "weights", "precision", "gpu_count", "batch_size", "input_len",
    "output_len", "status", "error", "warmup", "repeats",
    "tokens_per_s", "prefill_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99",
    "latency_ms_p50", "latency_ms_p99", "peak_mem_gb", "peak_mem_gb_per_gpu",
    "build_s", "artifact_mb", "cache_hit", "token_agreement", "first_divergence_p50", "max_logit_diff",
    "perplexity", "ppl_delta_pct", "roofline_tokens_per_s", "efficiency", "decode_gbps", "mbu",
    "prefill_precision", "prefill_tflops", "prefill_efficiency",
    "runtime_version", "runtime_options", "runtime_precisions", "runtime_needs_build", "runtime_dynamic_shapes",
    "device", "gpu_name", "gpu_memory_gb", "driver_version", "cuda_version", "cpu_name",
    "torch_version", "transformers_version", "git_sha", "copy_gbps", "read_gbps", *MATMUL_COLUMNS, "link_gbps",
    "timestamp", "notes",
)
NUMERIC_COLUMNS = (
    "gpu_count", "batch_size", "input_len", "output_len", "warmup", "repeats", "tokens_per_s",
    "prefill_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "latency_ms_p50",
    "latency_ms_p99", "peak_mem_gb", "peak_mem_gb_per_gpu", "build_s", "artifact_mb", "token_agreement",
    "first_divergence_p50", "max_logit_diff", "perplexity", "ppl_delta_pct", "roofline_tokens_per_s", "efficiency",
    "decode_gbps", "mbu", "prefill_tflops", "prefill_efficiency", "gpu_memory_gb", "copy_gbps", "read_gbps",
    *MATMUL_COLUMNS, "link_gbps",
)
# Rows with these statuses are finished: a rerun keeps them. Errors and unavailable rows are retried.
FINISHED = ("ok", "skipped")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The identity of a measurement; build rows leave the shape columns empty."""
    return tuple(_cell(row.get(c)) or KEY_DEFAULTS.get(c, "") for c in KEY_COLUMNS)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a results.csv as strings; rows written before runtime_version existed get it from
    their trt_flavor / trt_version, and rows from before the matmul rate was measured per precision get their one
    rate (bf16 8192^3 on a GPU, fp32 on a CPU) in that precision's column."""
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if "runtime_version" not in row and row.get("trt_version"):
            row["runtime_version"] = f"{row.get('trt_flavor', '')} {row['trt_version']}".strip()
        if row.get("matmul_tflops") and not any(row.get(c) for c in MATMUL_COLUMNS):
            row["matmul_tflops_bf16" if row.get("device") == "cuda" else "matmul_tflops_fp32"] = row["matmul_tflops"]
        for column, default in KEY_DEFAULTS.items():
            row[column] = row.get(column) or default
    return rows


class ResultsStore:
    """reports/<run_name>/results.csv (one row per measurement) and samples.jsonl (raw samples)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "results.csv"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.lock_path = self.run_dir / ".results.lock"
        remove_stale_temporaries(self.run_dir)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across processes (one sweep per GPU into one folder): read-modify-write loses no row."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def rows(self) -> list[dict[str, str]]:
        return read_rows(self.csv_path)

    def finished_keys(self) -> set[tuple[str, ...]]:
        return {row_key(r) for r in self.rows() if r.get("status") in FINISHED}

    def is_finished(self, key_fields: dict[str, Any]) -> bool:
        return row_key(key_fields) in self.finished_keys()

    def append(self, row: dict[str, Any], samples: dict[str, list[float]] | None = None) -> None:
        """Add or replace one row atomically; its raw samples go to samples.jsonl first."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"results row has unknown columns {sorted(unknown)}; schema: {', '.join(COLUMNS)}")
        if row.get("status") not in STATUSES:
            raise ValueError(f"results row status {row.get('status')!r}; allowed: {', '.join(STATUSES)}")
        key = row_key(row)
        if samples is not None:
            line = json.dumps({"key": dict(zip(KEY_COLUMNS, key)), **samples}) + "\n"
            # One write of one line with O_APPEND: a kill leaves at most a torn last line, which load skips.
            fd = os.open(self.samples_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        with self._locked():
            kept = [r for r in self.rows() if row_key(r) != key]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({c: r.get(c, "") for c in COLUMNS} for r in kept)
            writer.writerow({c: _cell(row.get(c)) for c in COLUMNS})
            atomic_write(self.csv_path, buffer.getvalue())

    def load(self) -> pd.DataFrame:
        return load_results(self.csv_path)

    def load_samples(self) -> list[dict[str, Any]]:
        """Raw samples, the last line per key winning; a torn final line is skipped."""
        if not self.samples_path.is_file():
            return []
        latest: dict[tuple[str, ...], dict[str, Any]] = {}
        for line in self.samples_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("skipping a torn line in %s", self.samples_path)
                continue
            record["key"] = {c: record["key"].get(c) or KEY_DEFAULTS.get(c, "") for c in KEY_COLUMNS}
            latest[tuple(record["key"].values())] = record
        return list(latest.values())


def load_results(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One or more results.csv files as a typed DataFrame with every schema column."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows = [row for p in paths for row in read_rows(Path(p))]
    df = pd.DataFrame(rows, columns=list(COLUMNS)).fillna("")
    for column in NUMERIC_COLUMNS:
        df[column] = pd.to_numeric(df[column].replace("", None), errors="coerce")
    return df[list(COLUMNS)]
