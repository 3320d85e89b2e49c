"""pandas aggregation: inference and build tables, speedups, break-even, the decision matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

INFERENCE_COLUMNS = [
    "runtime", "precision", "batch_size", "input_len", "output_len", "status", "tokens_per_s",
    "prefill_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "latency_ms_p50",
    "latency_ms_p99", "peak_mem_gb", "token_agreement", "max_logit_diff", "efficiency", "error",
]
BUILD_COLUMNS = ["runtime", "precision", "status", "build_s", "artifact_mb", "cache_hit", "trt_flavor",
                 "trt_version", "error", "notes"]
WINNER_MARK = "★ "


def inference_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["stage"] == "inference"].sort_values(["runtime", "precision", "batch_size", "input_len"])


def build_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["stage"] == "build"].sort_values(["runtime", "precision"])


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return inference_rows(df)[lambda d: d["status"] == "ok"]


def speedup_table(df: pd.DataFrame, runtime: str, baseline: str = "reference") -> pd.DataFrame:
    """tokens/s of `runtime` over `baseline` per (precision, batch, input length), both measured ok."""
    ok = ok_rows(df)
    keys = ["precision", "batch_size", "input_len"]
    merged = ok[ok["runtime"] == runtime][keys + ["tokens_per_s"]].merge(
        ok[ok["runtime"] == baseline][keys + ["tokens_per_s"]], on=keys, suffixes=("", "_baseline"))
    merged["speedup"] = merged["tokens_per_s"] / merged["tokens_per_s_baseline"]
    return merged


def break_even_tokens(build_s: float, tokens_per_s: float, baseline_tokens_per_s: float) -> float:
    """Generated tokens after which a build pays for itself against the baseline (inf: never)."""
    saved_s_per_token = 1 / baseline_tokens_per_s - 1 / tokens_per_s
    if saved_s_per_token <= 0:
        return math.inf
    return build_s / saved_s_per_token


@dataclass
class Criterion:
    """One row of the decision matrix."""

    label: str
    better: str  # "higher", "lower" or "" (not ranked)
    value: Callable[[pd.DataFrame, str], Any]  # (results, runtime) -> float, or str for "not measured: why"
    fmt: str = "{:.1f}"


def _why_not(df: pd.DataFrame, runtime: str, stage: str, **shape: Any) -> str:
    """'not measured: <why>' from the runtime's rows (their status and error)."""
    rows = df[(df["runtime"] == runtime) & (df["stage"] == stage)]
    for column, value in shape.items():
        rows = rows[rows[column] == value]
    if rows.empty:
        return "not measured: not in this sweep"
    failed = rows[rows["status"] != "ok"]
    if failed.empty:
        return "not measured"
    first = failed.iloc[0]
    return f"not measured: {first['status']}: {first['error'] or first['notes']}"


def _pick(df: pd.DataFrame, runtime: str, column: str, precision: str, **shape: Any) -> Any:
    rows = ok_rows(df)
    rows = rows[(rows["runtime"] == runtime) & (rows["precision"] == precision)]
    for key, value in shape.items():
        rows = rows[rows[key] == value]
    if rows.empty or pd.isna(rows.iloc[0][column]):
        return _why_not(df, runtime, "inference", precision=precision, **shape)
    return float(rows.iloc[0][column])


def decision_matrix(df: pd.DataFrame, precision: str | None = None) -> pd.DataFrame:
    """Rows = criteria, columns = runtimes; each cell a measured value or 'not measured: why'.

    The best measured value of each ranked row is marked with a star (only when at least two
    runtimes were measured on it). Shapes are stated in the row labels.
    """
    inference = inference_rows(df)
    if inference.empty:
        return pd.DataFrame()
    precision = precision or str(inference["precision"].iloc[0])
    runtimes = list(dict.fromkeys(df["runtime"]))
    batches = sorted(inference["batch_size"].dropna().unique())
    lens = sorted(inference["input_len"].dropna().unique())
    b_min, b_max, l_min, l_max = int(batches[0]), int(batches[-1]), int(lens[0]), int(lens[-1])
    builds = build_rows(df)

    def build_time(_: pd.DataFrame, runtime: str) -> Any:
        row = builds[(builds["runtime"] == runtime) & (builds["precision"] == precision)]
        if row.empty:
            return "not measured: build stage not run"
        if row.iloc[0]["status"] == "skipped":
            return 0.0
        if row.iloc[0]["status"] != "ok":
            return f"not measured: {row.iloc[0]['status']}: {row.iloc[0]['error']}"
        return float(row.iloc[0]["build_s"])

    def break_even(frame: pd.DataFrame, runtime: str) -> Any:
        if runtime == "reference":
            return "baseline"
        build = build_time(frame, runtime)
        tps = _pick(frame, runtime, "tokens_per_s", precision, batch_size=b_max, input_len=l_max)
        ref = _pick(frame, "reference", "tokens_per_s", precision, batch_size=b_max, input_len=l_max)
        for value in (build, tps, ref):
            if isinstance(value, str):
                return value
        tokens = break_even_tokens(build, tps, ref)
        return "never (not faster than reference)" if math.isinf(tokens) else tokens

    def quality(frame: pd.DataFrame, runtime: str) -> Any:
        if runtime == "reference":
            return "is the reference"
        return _pick(frame, runtime, "token_agreement", precision, batch_size=b_min, input_len=l_min)

    def dynamic_shapes(frame: pd.DataFrame, runtime: str) -> str:
        from bench_kernels.runtimes import get_runtime

        return get_runtime(runtime).dynamic_shapes

    criteria = [
        Criterion(f"throughput, batch {b_min}, input {l_max} (tokens/s)", "higher",
                  lambda f, r: _pick(f, r, "tokens_per_s", precision, batch_size=b_min, input_len=l_max)),
        Criterion(f"throughput, batch {b_max}, input {l_max} (tokens/s)", "higher",
                  lambda f, r: _pick(f, r, "tokens_per_s", precision, batch_size=b_max, input_len=l_max)),
        Criterion(f"latency p99, batch {b_max}, input {l_max} (ms)", "lower",
                  lambda f, r: _pick(f, r, "latency_ms_p99", precision, batch_size=b_max, input_len=l_max)),
        Criterion(f"time to first token p50, batch {b_min}, input {l_max} (ms)", "lower",
                  lambda f, r: _pick(f, r, "ttft_ms_p50", precision, batch_size=b_min, input_len=l_max)),
        Criterion(f"per-token latency p50, batch {b_min}, input {l_max} (ms)", "lower",
                  lambda f, r: _pick(f, r, "itl_ms_p50", precision, batch_size=b_min, input_len=l_max), "{:.2f}"),
        Criterion(f"peak memory, batch {b_max}, input {l_max} (GB)", "lower",
                  lambda f, r: _pick(f, r, "peak_mem_gb", precision, batch_size=b_max, input_len=l_max), "{:.2f}"),
        Criterion("build / export time (s)", "lower", build_time, "{:.1f}"),
        Criterion(f"break-even vs reference, batch {b_max} (generated tokens)", "lower", break_even, "{:,.0f}"),
        Criterion("dynamic shapes", "", dynamic_shapes),
        Criterion(f"quality: token agreement with reference, batch {b_min}, input {l_min}", "higher", quality,
                  "{:.3f}"),
        Criterion(f"quality: max |logit difference| at the first token, batch {b_min}, input {l_min}", "lower",
                  lambda f, r: "is the reference" if r == "reference" else
                  _pick(f, r, "max_logit_diff", precision, batch_size=b_min, input_len=l_min), "{:.2e}"),
    ]
    table: dict[str, dict[str, str]] = {}
    winners: dict[str, str] = {}
    for criterion in criteria:
        values = {r: criterion.value(df, r) for r in runtimes}
        numeric = {r: v for r, v in values.items() if isinstance(v, float) and not math.isnan(v)}
        best = ""
        if criterion.better and len(numeric) >= 2:
            pick = max if criterion.better == "higher" else min
            best = pick(numeric, key=numeric.__getitem__)
        table[criterion.label] = {
            r: (WINNER_MARK if r == best else "") + (criterion.fmt.format(v) if r in numeric else str(v))
            for r, v in values.items()
        }
        winners[criterion.label] = best or "—"
    matrix = pd.DataFrame.from_dict(table, orient="index")[runtimes]
    matrix["winner"] = pd.Series(winners)
    matrix.index.name = f"criterion ({precision})"
    return matrix


def unmeasured_summary(df: pd.DataFrame) -> pd.DataFrame:
    """What was not measured and why: one line per (runtime, precision, status, reason)."""
    rows = df[df["status"].isin(["error", "unavailable"])]
    if rows.empty:
        return pd.DataFrame(columns=["stage", "runtime", "precision", "status", "rows", "reason"])
    return (rows.groupby(["stage", "runtime", "precision", "status", "error"], dropna=False).size()
            .reset_index(name="rows").rename(columns={"error": "reason"})
            [["stage", "runtime", "precision", "status", "rows", "reason"]])
