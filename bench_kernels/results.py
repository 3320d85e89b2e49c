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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

from bench_kernels.paths import atomic_write, remove_stale_temporaries
from bench_kernels.precisions import MATMUL_PRECISIONS

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "skipped", "unavailable")
# Compute precisions whose matmul rate a sweep measures (rates.device_rates), one provenance column each.
MATMUL_COLUMNS = tuple(f"matmul_tflops_{precision}" for precision in MATMUL_PRECISIONS)
@dataclass(frozen=True)
class Column:
    """One results.csv column. A metric (group "metric") also says its unit, which way is better, its label for
    tables, charts and the decision matrix, and where the matrix and compare read it."""

    name: str
    dtype: str = "str"  # "int", "float" or "str"
    group: str = "metric"  # "key", "outcome", "metric", "runtime", "provenance", "device" or "meta"
    unit: str = ""
    better: str = ""  # "higher", "lower" or "" (not ranked)
    label: str = ""
    stages: tuple[str, ...] = ()  # the stages whose rows carry it
    fmt: str = "{:.1f}"  # how a value is written in the decision matrix; "significant": 3 digits, no exponent
    matrix: tuple[str, ...] = ()  # decision-matrix rows: "<batch> <input>" shapes ("min max": smallest batch,
    # longest input), or "once" for a value per configuration (build and quality stages)
    n: str = ""  # a percentile: what its samples are, "runs" or "decode steps" (see sample_count)
    compared: bool = False  # compare judges it run against run
    samples: str | None = None  # the raw-sample list in samples.jsonl its spread comes from; None: one value

    @property
    def numeric(self) -> bool:
        return self.dtype in ("int", "float")

    @property
    def percentile(self) -> float | None:
        """q of a percentile column with a sample count ('ttft_ms_p99' -> 99.0); None for any other column."""
        match = re.search(r"_p(\d+)$", self.name)
        return float(match[1]) if self.n and match else None

    def is_percentile_over(self, n: float) -> bool:
        """Whether n samples are enough for the percentile to be one: at least one sample above it (100 for a
        p99). Over fewer, linear interpolation puts it between the two largest, so it is close to their maximum."""
        q = self.percentile
        return q is None or pd.isna(n) or n >= 100 / (100 - q)

    def statistic(self, counts: Iterable[float]) -> str:
        """What the column's values are, given the sample count of each: the percentile ('p99') where every count
        is enough for one, else '≈ max of 5 runs' ('≈ max of 3 or 5 runs'; 'p99, ≈ the max where under 100 runs'
        when only some counts are too few)."""
        counts, name = list(counts), f"p{self.percentile:g}"
        few = sorted({int(n) for n in counts if not self.is_percentile_over(n)})
        if not few:
            return name
        if len(few) < len({int(n) for n in counts if pd.notna(n)}):
            return f"{name}, ≈ the max where under {100 / (100 - self.percentile):g} {self.n}"
        return f"≈ max of {' or '.join(f'{n:,}' for n in few)} {self.n if few[-1] > 1 else self.n.rstrip('s')}"

    def sample_words(self, n: float) -> str:
        """Beside one value of a percentile: 'n=1,270', or what it is over too few samples, '≈ max of 5 runs'."""
        return f"n={int(n):,}" if self.is_percentile_over(n) else self.statistic([n])

    @property
    def titled(self) -> str:
        """'throughput (tokens/s)': the label with its unit, for axes and headers."""
        return f"{self.label} ({self.unit})" if self.unit else self.label


def _metric(name: str, label: str, unit: str = "", better: str = "", stages: tuple[str, ...] = ("inference",),
            **more: Any) -> Column:
    return Column(name, "float", "metric", unit, better, label, stages, **more)


def _provenance(name: str, dtype: str = "str", group: str = "provenance") -> Column:
    return Column(name, dtype, group)


# The schema in CSV order. A new metric is its computation (which writes the row's value) plus one entry here.
REGISTRY: list[Column] = [
    Column("run_name", group="key"), Column("stage", group="key"), Column("runtime", group="key"),
    Column("model", group="key"), Column("weights", group="key"), Column("precision", group="key"),
    # gpu_count: devices one deployment uses (tensor-parallel ranks, or the GPUs a device_map spreads layers
    # over; 1 for a single device, the CPU included); rows written before it existed read as 1.
    Column("gpu_count", "int", "key"), Column("batch_size", "int", "key"), Column("input_len", "int", "key"),
    Column("output_len", "int", "key"),
    Column("status", group="outcome"), Column("error", group="outcome"),
    Column("warmup", "int", "outcome"), Column("repeats", "int", "outcome"),
    _metric("tokens_per_s", "throughput", "tokens/s", "higher", matrix=("min max", "max max"), compared=True,
            samples="latency_ms"),
    _metric("prefill_tokens_per_s", "prefill throughput", "tokens/s", "higher"),
    _metric("ttft_ms_p50", "time to first token p50", "ms", "lower", matrix=("min max", "max max"), compared=True,
            samples="ttft_ms", n="runs"),
    _metric("ttft_ms_p99", "time to first token p99", "ms", "lower", n="runs"),
    _metric("itl_ms_p50", "per-token latency p50", "ms", "lower", fmt="{:.2f}", matrix=("min max",),
            compared=True, samples="itl_ms", n="decode steps"),
    _metric("itl_ms_p99", "per-token latency p99", "ms", "lower", n="decode steps"),
    _metric("latency_ms_p50", "end-to-end latency p50", "ms", "lower", compared=True, samples="latency_ms", n="runs"),
    _metric("latency_ms_p99", "end-to-end latency p99", "ms", "lower", matrix=("max max",), n="runs"),
    _metric("peak_mem_gb", "peak memory", "GB", "lower", fmt="{:.2f}", matrix=("max max",), compared=True),
    _metric("peak_mem_gb_per_gpu", "peak memory per GPU", "GB", "lower"),
    _metric("build_s", "build / export / compile time", "s", "lower", ("build",), matrix=("once",)),
    _metric("artifact_mb", "artifact size", "MB", "lower", ("build",)),
    Column("cache_hit", stages=("build",)),
    _metric("token_agreement", "quality: token agreement with reference", "", "higher", fmt="{:.3f}",
            matrix=("min min",)),
    _metric("first_divergence_p50", "quality: median first divergent token", "", "higher", fmt="{:.0f}",
            matrix=("min min",)),
    _metric("max_logit_diff", "quality: max |logit difference| at the first token", "", "lower", fmt="significant",
            matrix=("min min",)),
    _metric("perplexity", "quality: perplexity on the packaged text", "", "lower", ("quality",), fmt="{:.3f}",
            matrix=("once",), compared=True),
    _metric("ppl_delta_pct", "perplexity over the reference's", "%", "lower", ("quality",)),
    _metric("roofline_tokens_per_s", "decode roofline", "tokens/s"),
    _metric("efficiency", "decode efficiency vs roofline", "", "higher", fmt="{:.0%}", matrix=("min min",)),
    _metric("decode_gbps", "decode bytes read", "GB/s"),
    _metric("mbu", "MBU: decode bytes/s over the card's specified bandwidth", "", "higher", fmt="{:.0%}",
            matrix=("min min",)),
    Column("prefill_precision", stages=("inference",)),
    _metric("prefill_tflops", "prefill matmul rate", "TFLOP/s"),
    _metric("prefill_efficiency", "prefill efficiency vs compute roofline", "", "higher", fmt="{:.0%}",
            matrix=("max max",)),
    # Load rows (stage `load`, bench_kernels.traffic) are told apart by their batching policy and arrivals too.
    Column("policy", group="key"), Column("arrivals", group="key"),
    _metric("request_rate_per_s", "offered request rate (Poisson)", "requests/s", stages=("load",)),
    Column("requests", "int", "outcome", stages=("load",)),
    _metric("duration_s", "load run span", "s", stages=("load",)),
    _metric("tpot_ms_p50", "time per output token p50", "ms", "lower", ("load",)),  # its n: the row's requests
    _metric("tpot_ms_p99", "time per output token p99", "ms", "lower", ("load",)),
    _metric("achieved_rate_per_s", "served request rate", "requests/s", "higher", ("load",)),
    _metric("offered_rate_per_s", "rate the requests arrived at", "requests/s", stages=("load",)),
    _metric("completion_rate_per_s", "rate the requests completed at", "requests/s", "higher", ("load",)),
    _metric("goodput_per_s", "goodput: requests/s within the targets", "requests/s", "higher", ("load",)),
    _metric("slo_attainment", "share of requests within the targets", "", "higher", ("load",), fmt="{:.0%}"),
    Column("runtime_version", group="runtime"), Column("runtime_options", group="runtime"),
    Column("runtime_precisions", group="runtime"), Column("runtime_needs_build", group="runtime"),
    Column("runtime_dynamic_shapes", group="runtime"), Column("runtime_batching_policies", group="runtime"),
    _provenance("device"), _provenance("gpu_name"), _provenance("gpu_memory_gb", "float", "device"),
    _provenance("driver_version"), _provenance("cuda_version"), _provenance("cpu_name"),
    _provenance("torch_version"), _provenance("transformers_version"), _provenance("git_sha"),
    _provenance("copy_gbps", "float"), _provenance("read_gbps", "float"),
    *(_provenance(column, "float") for column in MATMUL_COLUMNS), _provenance("link_gbps", "float", "device"),
    Column("timestamp", group="meta"), Column("notes", group="meta"),
]
# Read from REGISTRY and rebuilt in place by register/unregister, so every module that imported them sees a change.
COLUMN: dict[str, Column] = {}
COLUMNS: list[str] = []
NUMERIC_COLUMNS: list[str] = []
INTEGER_COLUMNS: list[str] = []
METRICS: list[Column] = []
PROVENANCE_COLUMNS: list[str] = []  # the environment a row was measured in (provenance table, compare)


def _derive() -> None:
    COLUMN.clear()
    COLUMN.update((c.name, c) for c in REGISTRY)
    COLUMNS[:] = [c.name for c in REGISTRY]
    NUMERIC_COLUMNS[:] = [c.name for c in REGISTRY if c.numeric]
    INTEGER_COLUMNS[:] = [c.name for c in REGISTRY if c.dtype == "int"]
    METRICS[:] = [c for c in REGISTRY if c.group == "metric"]
    PROVENANCE_COLUMNS[:] = [c.name for c in REGISTRY if c.group == "provenance"]


def register(column: Column) -> Column:
    """Add a metric after the last one, as a new entry in REGISTRY would (for code that adds one at run time: a
    plugin, a test)."""
    if column.name in COLUMN:
        raise ValueError(f"results column {column.name!r} is registered already")
    last_metric = max(i for i, c in enumerate(REGISTRY) if c.group == "metric")
    REGISTRY.insert(last_metric + 1, column)
    _derive()
    return column


def unregister(name: str) -> None:
    REGISTRY[:] = [c for c in REGISTRY if c.name != name]
    _derive()


_derive()
SHAPE_COLUMNS = ("batch_size", "input_len", "output_len")
KEY_COLUMNS = ("stage", "runtime", "model", "precision", "gpu_count", *SHAPE_COLUMNS, "policy", "arrivals")
KEY_DEFAULTS = {"gpu_count": "1"}
# The columns of profiles/<name>.csv: a profile's top kernels by self time (written by the sweep's profiler).
PROFILE_COLUMNS = ("name", "calls", "self_time_us", "share_pct")
# torch's profiler's own span around each step ("ProfilerStep#3", averaged as "ProfilerStep*"): not a kernel.
PROFILER_STEP_PREFIX = "ProfilerStep"
# Rows with these statuses are finished: a rerun keeps them. Errors and unavailable rows are retried.
FINISHED = ("ok", "skipped")
# results.json's layout: raised whenever a reader of an older export would misread the new one.
JSON_SCHEMA_VERSION = 1


def _cell(value: Any, column: str = "") -> str:
    """A value as results.csv writes it: blank for None and NaN, integer columns as whole numbers ('8', not '8.0')."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in INTEGER_COLUMNS and value != "":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return str(int(number)) if number.is_integer() else str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _json_value(value: Any, column: Column) -> Any:
    """A typed frame's value as results.json writes it: null for a blank, whole numbers for integer columns."""
    if value is None or value is pd.NA or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if column.dtype == "int":
        return int(value)
    return float(value) if column.dtype == "float" else str(value)


def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity of a measurement, from a row as written, as read back, or typed (a pandas row); build rows
    leave the shape columns empty. The one key of results.csv, samples.jsonl and the report's joins."""
    return tuple(_cell(row.get(c), c) or KEY_DEFAULTS.get(c, "") for c in KEY_COLUMNS)


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
        self.json_path = self.run_dir / "results.json"
        self.lock_path = self.run_dir / ".results.lock"
        self.profiles_dir = self.run_dir / "profiles"
        self._finished: tuple[Any, set[tuple[str, ...]]] | None = None  # (results.csv's stat, its finished keys)
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
        """The keys of the rows a rerun keeps. results.csv is read again only when it changed on disk (another
        process may append to it), so asking of every deployment costs one stat, not one read."""
        try:
            stat = self.csv_path.stat()
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            version = None
        if self._finished is None or self._finished[0] != version:
            self._finished = (version, {row_key(r) for r in self.rows() if r.get("status") in FINISHED})
        return self._finished[1]

    def is_finished(self, key_fields: Mapping[str, Any]) -> bool:
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
            writer.writerows({c: _cell(r.get(c, ""), c) for c in COLUMNS} for r in kept)
            writer.writerow({c: _cell(row.get(c), c) for c in COLUMNS})
            atomic_write(self.csv_path, buffer.getvalue())

    def load(self) -> pd.DataFrame:
        return load_results(self.csv_path)

    def export_json(self, run: Mapping[str, Any]) -> Path:
        """results.json beside results.csv, for tools that read JSON: the schema version, the run's metadata
        (`run`), each column's type, and every row with typed values (numbers as numbers, blanks as null)."""
        columns = [COLUMN[c] for c in COLUMNS]
        rows = [{c.name: _json_value(row[c.name], c) for c in columns} for row in self.load().to_dict("records")]
        document = {"schema_version": JSON_SCHEMA_VERSION, "run": dict(run),
                    "columns": {c.name: c.dtype for c in columns}, "rows": rows}
        atomic_write(self.json_path, json.dumps(document, indent=1) + "\n")
        return self.json_path

    def samples_by_key(self) -> dict[tuple[str, ...], dict[str, Any]]:
        """load_samples() by row_key: the raw samples of each row."""
        return {row_key(record["key"]): record for record in self.load_samples()}

    def profiles(self) -> dict[str, list[dict[str, str]]]:
        """Each recorded profile's top kernels (profiles/<name>.csv, PROFILE_COLUMNS), by profile name."""
        return {path.stem: list(csv.DictReader(path.open(encoding="utf-8")))
                for path in sorted(self.profiles_dir.glob("*.csv"))}

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
            key = row_key(record["key"])
            record["key"] = dict(zip(KEY_COLUMNS, key))
            latest[key] = record
        return list(latest.values())


def load_results(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One or more results.csv files as a typed DataFrame with every schema column."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    return typed_frame(row for p in paths for row in read_rows(Path(p)))


def typed_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (as read from results.csv, or written by hand in a test) as a DataFrame with every schema column:
    numeric columns as numbers (NaN where blank), the others as text ('' where absent)."""
    df = pd.DataFrame([{c: row.get(c, "") for c in COLUMNS} for row in rows], columns=list(COLUMNS)).fillna("")
    for column in NUMERIC_COLUMNS:
        df[column] = pd.to_numeric(df[column].replace("", None), errors="coerce")
    return df
