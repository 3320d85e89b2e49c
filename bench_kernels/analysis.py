"""pandas aggregation: inference and build tables, speedups, break-even, the decision matrix.

Reads results rows only: what it needs to know about a runtime (its precisions, whether it builds, how it
copes with new shapes) comes from the runtime_* columns its rows carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from bench_kernels.gpu_specs import specified_bandwidth_gbps
from bench_kernels.roofline import ROOFLINE_NOT_APPLICABLE

INFERENCE_COLUMNS = [
    "runtime", "precision", "gpu_count", "batch_size", "input_len", "output_len", "status", "tokens_per_s",
    "prefill_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "latency_ms_p50",
    "latency_ms_p99", "peak_mem_gb", "peak_mem_gb_per_gpu", "token_agreement", "first_divergence_p50",
    "max_logit_diff", "roofline_tokens_per_s", "efficiency", "decode_gbps", "mbu", "prefill_precision",
    "prefill_tflops", "prefill_efficiency", "error",
]
QUALITY_COLUMNS = ["runtime", "precision", "status", "perplexity", "ppl_delta_pct", "error", "notes"]
BUILD_COLUMNS = ["runtime", "precision", "gpu_count", "status", "build_s", "artifact_mb", "cache_hit",
                 "runtime_version", "error", "notes"]
WINNER_MARK = "★ "
GATE_MARK = " ✗ over the accuracy gate"
NOT_MEANINGFUL = "not meaningful: random weights"


def shorten(text: str, limit: int = 90) -> str:
    """text cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def gpu_counts(rows: pd.DataFrame) -> pd.Series:
    """GPUs one deployment of each row uses (1 where the rows do not say)."""
    if "gpu_count" not in rows:
        return pd.Series(1.0, index=rows.index)
    return pd.to_numeric(rows["gpu_count"], errors="coerce").fillna(1.0).clip(lower=1.0)


def split_deployments(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose runtime ran on several GPU counts (e.g. one card and tensor parallel 2) relabelled
    'compiled (2 GPUs)', so each deployment is its own column and line; other rows keep their runtime's name."""
    if "gpu_count" not in df or df.empty:
        return df
    gpus = gpu_counts(df)
    several = df.assign(gpus=gpus).groupby("runtime")["gpus"].transform("nunique") > 1
    relabel = several & (gpus > 1)
    if not relabel.any():
        return df
    out = df.copy()
    out.loc[relabel, "runtime"] = out.loc[relabel, "runtime"] + gpus[relabel].map(lambda n: f" ({int(n)} GPUs)")
    return out


def inference_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["stage"] == "inference"].sort_values(["runtime", "precision", "batch_size", "input_len"])


def build_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["stage"] == "build"].sort_values(["runtime", "precision"])


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return inference_rows(df)[lambda d: d["status"] == "ok"]


def speedup_table(df: pd.DataFrame, runtime: str, baseline: str = "reference",
                  baseline_precision: str | None = None) -> pd.DataFrame:
    """tokens/s of `runtime` over `baseline` per (precision, batch, input length), both measured ok.

    With baseline_precision, every precision of `runtime` is compared with the baseline at that precision
    (e.g. fp8 weights against the bf16 reference)."""
    ok = ok_rows(df)
    keys = ["precision", "batch_size", "input_len"]
    mine = ok[ok["runtime"] == runtime][keys + ["tokens_per_s"]]
    theirs = ok[ok["runtime"] == baseline][keys + ["tokens_per_s"]]
    if baseline_precision is not None:
        theirs = theirs[theirs["precision"] == baseline_precision].drop(columns="precision")
        merged = mine.merge(theirs, on=keys[1:], suffixes=("", "_baseline"))
    else:
        merged = mine.merge(theirs, on=keys, suffixes=("", "_baseline"))
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
    value: Callable[[pd.DataFrame, str, str], Any]  # (results, runtime, precision) -> float or "not measured: why"
    fmt: str = "{:.1f}"
    suffix: Callable[[pd.DataFrame, str, str], str] | None = None  # words after a measured value


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
    # Shortened: the full reason is in the report's "not measured" list.
    return f"not measured: {first['status']}: {shorten(str(first['error'] or first['notes']), 60)}"


def _pick(df: pd.DataFrame, runtime: str, column: str, precision: str, **shape: Any) -> Any:
    rows = ok_rows(df)
    rows = rows[(rows["runtime"] == runtime) & (rows["precision"] == precision)]
    for key, value in shape.items():
        rows = rows[rows[key] == value]
    value = pd.to_numeric(rows.iloc[0][column], errors="coerce") if not rows.empty else math.nan
    if pd.isna(value):
        return _why_not(df, runtime, "inference", precision=precision, **shape)
    return float(value)


def runtime_fact(df: pd.DataFrame, runtime: str, column: str) -> str:
    """A runtime_* column of the runtime's rows ('' when its rows predate the column)."""
    values = [v for v in df.loc[df["runtime"] == runtime, column] if isinstance(v, str) and v]
    return values[-1] if values else ""


def runs_precision(df: pd.DataFrame, runtime: str, precision: str) -> bool:
    """Whether the runtime implements the precision, as its rows say (rows that do not say: assume it does)."""
    declared = runtime_fact(df, runtime, "runtime_precisions")
    return not declared or precision in declared.split()


def matrix_columns(df: pd.DataFrame, precision: str | None = None) -> list[tuple[str, str]]:
    """(runtime, precision) pairs a decision matrix compares: each runtime at each sweep precision it runs
    (a precision a runtime does not implement is left out, not shown as a column of reasons)."""
    present = set(zip(df["runtime"], df["precision"]))
    return [(runtime, prec) for runtime in dict.fromkeys(df["runtime"]) for prec in dict.fromkeys(df["precision"])
            if (runtime, prec) in present and runs_precision(df, runtime, prec) and precision in (None, prec)]


def baseline_precision(df: pd.DataFrame, precision: str) -> str:
    """The reference precision to compare a precision with: the same if the reference measured it, else the
    first the reference measured (e.g. a compiled fp8 where the reference's fp8 was unavailable: compared with
    the bf16 one)."""
    measured = list(dict.fromkeys(ok_rows(df)[lambda d: d["runtime"] == "reference"]["precision"]))
    return precision if precision in measured or not measured else measured[0]


def decision_matrix(df: pd.DataFrame, precision: str | None = None, max_ppl_delta_pct: float | None = None,
                    workload: Any = None) -> pd.DataFrame:
    """Rows = criteria, columns = runtimes (runtime + precision when the sweep has several precisions);
    each cell a measured value or 'not measured: why'.

    The best measured value of each ranked row is marked with a star (only when at least two
    columns were measured on it). Shapes are stated in the row labels. With max_ppl_delta_pct, a
    configuration over the accuracy gate is marked in its column label and never starred. With a workload
    (batch_size, input_len), every shape-specific row is read at the user's shape: the workload's input
    length and the largest measured batch that its batch size fills; without one, at the sweep's extremes.
    """
    df = split_deployments(df)
    inference = inference_rows(df)
    if inference.empty:
        return pd.DataFrame()
    pairs = matrix_columns(df, precision)
    several = len({p for _, p in pairs}) > 1
    failing = set(gate_failures(df, max_ppl_delta_pct)) if max_ppl_delta_pct is not None else set()
    label = {pair: (f"{pair[0]} {pair[1]}" if several else pair[0]) + (GATE_MARK if pair in failing else "")
             for pair in pairs}
    batches = sorted(inference["batch_size"].dropna().unique())
    lens = sorted(inference["input_len"].dropna().unique())
    b_min, b_max, l_min, l_max = int(batches[0]), int(batches[-1]), int(lens[0]), int(lens[-1])
    if workload is not None:
        b_min = b_max = int(max([b for b in batches if b <= workload.batch_size], default=batches[0]))
        l_min = l_max = int(workload.input_len)
    output_len = pd.to_numeric(inference["output_len"], errors="coerce").max()
    generated = f" (of {int(output_len)})" if pd.notna(output_len) else ""
    builds = build_rows(df)

    def build_time(frame: pd.DataFrame, runtime: str, prec: str) -> Any:
        row = builds[(builds["runtime"] == runtime) & (builds["precision"] == prec)]
        if row.empty:
            return 0.0 if runtime_fact(frame, runtime, "runtime_needs_build") == "false" \
                else "not measured: build stage not run"
        if row.iloc[0]["status"] == "skipped":
            return 0.0
        if row.iloc[0]["status"] != "ok":
            return f"not measured: {row.iloc[0]['status']}: {row.iloc[0]['error']}"
        return float(row.iloc[0]["build_s"])

    def cached(frame: pd.DataFrame, runtime: str, prec: str) -> str:
        row = builds[(builds["runtime"] == runtime) & (builds["precision"] == prec) & (builds["status"] == "ok")]
        hit = not row.empty and row.iloc[0]["cache_hit"] == "true"
        return " (from cache: what the first build took)" if hit else ""

    def break_even(frame: pd.DataFrame, runtime: str, prec: str) -> Any:
        if runtime == "reference":
            return "baseline"
        build = build_time(frame, runtime, prec)
        tps = _pick(frame, runtime, "tokens_per_s", prec, batch_size=b_max, input_len=l_max)
        ref = _pick(frame, "reference", "tokens_per_s", baseline_precision(frame, prec), batch_size=b_max,
                    input_len=l_max)
        for value in (build, tps, ref):
            if isinstance(value, str):
                return value
        tokens = break_even_tokens(build, tps, ref)
        return "never (not faster than reference)" if math.isinf(tokens) else tokens

    def versus_reference(column: str) -> Callable[[pd.DataFrame, str, str], Any]:
        def value(frame: pd.DataFrame, runtime: str, prec: str) -> Any:
            if runtime == "reference" and prec == baseline_precision(frame, prec):
                return "is the reference"
            if random_weights(frame, runtime, prec):
                return NOT_MEANINGFUL
            return _pick(frame, runtime, column, prec, batch_size=b_min, input_len=l_min)
        return value

    def quality_row(frame: pd.DataFrame, runtime: str, prec: str) -> pd.Series | None:
        rows = quality_rows(frame)
        rows = rows[(rows["runtime"] == runtime) & (rows["precision"] == prec) & (rows["status"] == "ok")]
        return rows.iloc[0] if not rows.empty else None

    def ppl(frame: pd.DataFrame, runtime: str, prec: str) -> Any:
        if random_weights(frame, runtime, prec):
            return NOT_MEANINGFUL
        row = quality_row(frame, runtime, prec)
        return float(row["perplexity"]) if row is not None else _why_not(frame, runtime, "quality", precision=prec)

    def ppl_delta(frame: pd.DataFrame, runtime: str, prec: str) -> str:
        row = quality_row(frame, runtime, prec)
        return f" ({row['ppl_delta_pct']:+.2f}% vs reference)" if row is not None and pd.notna(
            row["ppl_delta_pct"]) else ""

    def gate(frame: pd.DataFrame, runtime: str, prec: str) -> str:
        value = ppl(frame, runtime, prec)
        row = quality_row(frame, runtime, prec)
        if isinstance(value, str) or row is None:
            return value if isinstance(value, str) else "not measured"
        if pd.isna(row["ppl_delta_pct"]):
            return "not judged: no reference perplexity"
        verdict = "FAIL" if (runtime, prec) in failing else "pass"
        return f"{verdict} ({row['ppl_delta_pct']:+.2f}%)"

    def dynamic_shapes(frame: pd.DataFrame, runtime: str, prec: str) -> str:
        return runtime_fact(frame, runtime, "runtime_dynamic_shapes") or "not recorded"

    def measured(column: str, batch_size: int, input_len: int) -> Callable[[pd.DataFrame, str, str], Any]:
        return lambda f, r, p: _pick(f, r, column, p, batch_size=batch_size, input_len=input_len)

    def efficiency(frame: pd.DataFrame, runtime: str, prec: str) -> Any:
        """A value above the bound is a measurement error: shown as invalid, never ranked."""
        value = _pick(frame, runtime, "efficiency", prec, batch_size=b_min, input_len=l_min)
        if isinstance(value, float) and value > 1.0:
            return f"invalid: {value:.0%} is above the roofline (a measurement error)"
        if isinstance(value, str):
            rows = ok_rows(frame)
            notes = rows[(rows["runtime"] == runtime) & (rows["precision"] == prec) & (rows["batch_size"] == b_min)
                         & (rows["input_len"] == l_min)]["notes"]
            if notes.str.contains(ROOFLINE_NOT_APPLICABLE, regex=False).any():
                return "roofline not applicable (model fits in the CPU cache)"
        return value

    def prefill_efficiency(frame: pd.DataFrame, runtime: str, prec: str) -> Any:
        """Above the measured matmul rate is a measurement error, as for decode; rows without one say why."""
        value = _pick(frame, runtime, "prefill_efficiency", prec, batch_size=b_max, input_len=l_max)
        if isinstance(value, float) and value > 1.0:
            return f"invalid: {value:.0%} is above the compute roofline (a measurement error)"
        if isinstance(value, str) and value == "not measured":
            return no_prefill_efficiency(frame, runtime, prec)
        return value

    def model_bandwidth_utilization(frame: pd.DataFrame, runtime: str, prec: str) -> Any:
        value = _pick(frame, runtime, "mbu", prec, batch_size=b_min, input_len=l_min)
        if isinstance(value, str) and value == "not measured":
            return no_mbu(frame, runtime, prec)
        return value

    criteria = [
        Criterion(f"throughput, batch {b_min}, input {l_max} (tokens/s)", "higher",
                  measured("tokens_per_s", b_min, l_max)),
        Criterion(f"throughput, batch {b_max}, input {l_max} (tokens/s)", "higher",
                  measured("tokens_per_s", b_max, l_max)),
        Criterion(f"latency p99, batch {b_max}, input {l_max} (ms)", "lower", measured("latency_ms_p99", b_max, l_max)),
        Criterion(f"time to first token p50, batch {b_min}, input {l_max} (ms)", "lower",
                  measured("ttft_ms_p50", b_min, l_max)),
        Criterion(f"time to first token p50, batch {b_max}, input {l_max} (ms)", "lower",
                  measured("ttft_ms_p50", b_max, l_max)),
        Criterion(f"per-token latency p50, batch {b_min}, input {l_max} (ms)", "lower",
                  measured("itl_ms_p50", b_min, l_max), "{:.2f}"),
        Criterion(f"decode efficiency vs roofline, batch {b_min}, input {l_min}", "higher",
                  efficiency, "{:.0%}"),
        Criterion(f"MBU: decode bytes/s over the card's specified bandwidth, batch {b_min}, input {l_min}", "higher",
                  model_bandwidth_utilization, "{:.0%}"),
        Criterion(f"prefill efficiency vs compute roofline, batch {b_max}, input {l_max}", "higher",
                  prefill_efficiency, "{:.0%}", prefill_precision(b_max, l_max)),
        Criterion(f"peak memory, batch {b_max}, input {l_max} (GB)", "lower",
                  measured("peak_mem_gb", b_max, l_max), "{:.2f}"),
        Criterion("build / export / compile time (s)", "lower", build_time, "{:.1f}", cached),
        Criterion(f"break-even vs reference, batch {b_max}, input {l_max} (generated tokens)", "lower", break_even,
                  "{:,.0f}"),
        Criterion("dynamic shapes", "", dynamic_shapes),
        Criterion("quality: perplexity on the packaged text", "lower", ppl, "{:.3f}", ppl_delta),
        Criterion(f"accuracy gate: perplexity at most +{max_ppl_delta_pct:g}% over the reference"
                  if max_ppl_delta_pct is not None else "accuracy gate: none set", "", gate),
        Criterion(f"quality: token agreement with reference, batch {b_min}, input {l_min}", "higher",
                  versus_reference("token_agreement"), "{:.3f}"),
        Criterion(f"quality: median first divergent token{generated}, batch {b_min}, input {l_min}", "higher",
                  versus_reference("first_divergence_p50"), "{:.0f}"),
        Criterion(f"quality: max |logit difference| at the first token, batch {b_min}, input {l_min}", "lower",
                  versus_reference("max_logit_diff"), "{:.2e}"),
    ]
    table: dict[str, dict[str, str]] = {}
    winners: dict[str, str] = {}
    for criterion in dict((c.label, c) for c in criteria).values():  # at one shape, two rows can coincide
        values = {label[pair]: criterion.value(df, *pair) for pair in pairs}
        numeric = {c: v for c, v in values.items() if isinstance(v, float) and not math.isnan(v)}
        ranked = {label[pair]: numeric[label[pair]] for pair in pairs if label[pair] in numeric and pair not in failing}
        best = ""
        if criterion.better and len(ranked) >= 2:
            pick = max if criterion.better == "higher" else min
            best = pick(ranked, key=ranked.__getitem__)
        table[criterion.label] = {
            label[pair]: (WINNER_MARK if label[pair] == best else "")
            + (criterion.fmt.format(values[label[pair]]) + (criterion.suffix(df, *pair) if criterion.suffix else "")
               if label[pair] in numeric else str(values[label[pair]]))
            for pair in pairs
        }
        winners[criterion.label] = best or "—"
    columns = [label[pair] for pair in pairs]
    matrix = pd.DataFrame.from_dict(table, orient="index")[columns]
    matrix["winner"] = pd.Series(winners)
    precisions = ", ".join(dict.fromkeys(p for _, p in pairs))
    matrix.index.name = f"criterion ({precisions})"
    return matrix


def prefill_precision(batch_size: int, input_len: int) -> Callable[[pd.DataFrame, str, str], str]:
    """Words after a prefill efficiency: the compute precision whose matmul rate bounds it."""
    def suffix(frame: pd.DataFrame, runtime: str, prec: str) -> str:
        rows = ok_rows(frame)
        rows = rows[(rows["runtime"] == runtime) & (rows["precision"] == prec) & (rows["batch_size"] == batch_size)
                    & (rows["input_len"] == input_len)]
        computed = [p for p in rows["prefill_precision"] if isinstance(p, str) and p]
        return f" (of the {computed[0]} matmul rate)" if computed else ""
    return suffix


def _rows_of(df: pd.DataFrame, runtime: str, precision: str) -> pd.DataFrame:
    rows = ok_rows(df)
    return rows[(rows["runtime"] == runtime) & (rows["precision"] == precision)]


def no_prefill_efficiency(df: pd.DataFrame, runtime: str, precision: str) -> str:
    """Why measured rows of a configuration carry no prefill efficiency."""
    rows = _rows_of(df, runtime, precision)
    computed = [p for p in rows["prefill_precision"] if isinstance(p, str) and p]
    if not computed:
        return "not recorded: rows written before prefill was set against the compute roofline"
    return f"no {computed[0]} matmul rate measured on this device"


def no_mbu(df: pd.DataFrame, runtime: str, precision: str) -> str:
    """Why measured rows of a configuration carry no MBU: a CPU, a card whose specified bandwidth is not in
    gpu_specs, or rows from before MBU was recorded."""
    rows = _rows_of(df, runtime, precision)
    gpu = next((g for g in rows["gpu_name"] if isinstance(g, str) and g), "")
    if not gpu:
        return "no MBU on a CPU (no specified bandwidth)"
    if specified_bandwidth_gbps(gpu) is None:
        return f"no MBU: {gpu}'s specified bandwidth is not in the table"
    return "not recorded: rows written before MBU was"


def quality_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["stage"] == "quality"].sort_values(["runtime", "precision"])


def random_weights(df: pd.DataFrame, runtime: str, precision: str) -> bool:
    rows = df[(df["runtime"] == runtime) & (df["precision"] == precision)]
    return bool((rows["weights"] == "random").any())


def gate_failures(df: pd.DataFrame, max_ppl_delta_pct: float) -> dict[tuple[str, str], float]:
    """(runtime, precision) -> perplexity delta (%) of every configuration over the accuracy gate."""
    rows = quality_rows(df)
    over = rows[(rows["status"] == "ok") & (rows["ppl_delta_pct"] > max_ppl_delta_pct)]
    return {(r.runtime, r.precision): float(r.ppl_delta_pct) for r in over.itertuples()}


def break_even_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per built (runtime, precision) and shape: build seconds and the generated tokens after which the
    build has paid for itself against the reference (inf: never faster)."""
    df = split_deployments(df)
    builds = build_rows(df)
    builds = builds[(builds["status"] == "ok") & (builds["build_s"] > 0)]
    rows = []
    for _, build in builds.iterrows():
        speed = speedup_table(df, build["runtime"], baseline_precision=baseline_precision(df, build["precision"]))
        for _, shape in speed[speed["precision"] == build["precision"]].iterrows():
            rows.append({"runtime": build["runtime"], "precision": build["precision"], "build_s": build["build_s"],
                         "batch_size": shape["batch_size"], "input_len": shape["input_len"],
                         "speedup": shape["speedup"],
                         "break_even_tokens": break_even_tokens(build["build_s"], shape["tokens_per_s"],
                                                                shape["tokens_per_s_baseline"])})
    table = pd.DataFrame(rows, columns=["runtime", "precision", "build_s", "batch_size", "input_len", "speedup",
                                        "break_even_tokens"])
    return table.astype({c: float for c in ("build_s", "batch_size", "input_len", "speedup", "break_even_tokens")})


def on_gpus(gpu_count: Any) -> str:
    """' on 2 GPUs' for a deployment over several GPUs; '' for one, or where the count is not recorded."""
    return f" on {int(gpu_count)} GPUs" if pd.notna(gpu_count) and gpu_count > 1 else ""


SCALING_COLUMNS = ["runtime", "precision", "gpu_count", "batch_size", "input_len", "tokens_per_s",
                   "tokens_per_s_per_gpu", "peak_mem_gb_per_gpu", "tokens_per_s_1gpu", "peak_mem_gb_1gpu",
                   "scaling_efficiency", "one_gpu"]


def scaling_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each shape a deployment over several GPUs measured, beside the same runtime, precision and shape on one GPU:
    tokens/s of the deployment and per GPU, peak memory per GPU, and the scaling efficiency (tokens/s on N GPUs
    over N times one GPU's). one_gpu says what one GPU did: 'ok', the error (e.g. the model does not fit), or
    'not run'; the efficiency is blank unless it ran."""
    rows = inference_rows(df)
    if rows.empty or "gpu_count" not in rows:
        return pd.DataFrame(columns=SCALING_COLUMNS)
    rows = rows.assign(gpu_count=gpu_counts(rows).astype(int))
    several = rows[(rows["gpu_count"] > 1) & (rows["status"] == "ok")]
    shape = ["model", "runtime", "precision", "batch_size", "input_len", "output_len"]
    one = rows[rows["gpu_count"] == 1]
    one = one.assign(one_gpu=[status if status == "ok" else f"{status}: {shorten(str(error), 60)}"
                              for status, error in zip(one["status"], one["error"].fillna(""))])
    one = one[shape + ["tokens_per_s", "peak_mem_gb_per_gpu", "one_gpu"]].rename(
        columns={"tokens_per_s": "tokens_per_s_1gpu", "peak_mem_gb_per_gpu": "peak_mem_gb_1gpu"})
    table = several.merge(one, on=shape, how="left")
    table = table.assign(tokens_per_s_per_gpu=table["tokens_per_s"] / table["gpu_count"],
                         scaling_efficiency=table["tokens_per_s"] / (table["gpu_count"] * table["tokens_per_s_1gpu"]),
                         one_gpu=table["one_gpu"].fillna("not run"))
    return table[SCALING_COLUMNS].reset_index(drop=True).astype({c: "Int64" for c in ("batch_size", "input_len")})


def not_yet_run(df: pd.DataFrame, precisions_per_runtime: dict[str, list[str]], batch_sizes: list[int],
                input_lens: list[int]) -> pd.DataFrame:
    """The spec's (runtime, precision) inference shapes with no row at all yet (a sweep stopped or split over
    calls): runtime, precision, gpu_count, missing, shapes (how many missing of the spec's), build_missing. A
    runtime whose rows show several GPU counts (tensor-parallel degrees) is expected at each of them, in every
    precision; gpu_count is blank for a runtime with no row yet. A runtime with a build row in some precision is
    expected to have one in each (inference rows can be `unavailable` without one, e.g. engines built but not
    runnable on this GPU)."""
    wanted = [(b, i) for b in batch_sizes for i in input_lens]
    stages = df["stage"] if "stage" in df else pd.Series("", index=df.index)
    inference, builds = df[stages == "inference"], df[stages == "build"]
    lines = []
    for runtime, precisions in precisions_per_runtime.items():
        mine = inference[inference["runtime"] == runtime]
        built = set(builds.loc[builds["runtime"] == runtime, "precision"])
        counts = sorted({int(c) for c in mine["gpu_count"].dropna()}) if "gpu_count" in mine else []
        for precision in precisions:
            build_missing = bool(built) and precision not in built
            for count in counts or [None]:
                rows = mine[(mine["precision"] == precision) & ((mine["gpu_count"] == count) if count else True)]
                have = {(int(b), int(i)) for b, i in zip(rows["batch_size"], rows["input_len"])}
                missing = sum(shape not in have for shape in wanted)
                if missing or build_missing:
                    lines.append({"runtime": runtime, "precision": precision, "gpu_count": count, "missing": missing,
                                  "shapes": len(wanted), "build_missing": build_missing})
    return pd.DataFrame(lines, columns=["runtime", "precision", "gpu_count", "missing", "shapes", "build_missing"])


def unmeasured_summary(df: pd.DataFrame) -> pd.DataFrame:
    """What was not measured and why: one line per (runtime, precision, status, reason)."""
    rows = df[df["status"].isin(["error", "unavailable"])]
    if rows.empty:
        return pd.DataFrame(columns=["stage", "runtime", "precision", "status", "rows", "reason"])
    return (rows.groupby(["stage", "runtime", "precision", "status", "error"], dropna=False).size()
            .reset_index(name="rows").rename(columns={"error": "reason"})
            [["stage", "runtime", "precision", "status", "rows", "reason"]])
