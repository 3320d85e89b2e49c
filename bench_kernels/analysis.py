"""pandas row helpers of the report half: which rows are which, speedups, break-even, scaling, what is missing.

Reads results rows only: what it needs to know about a runtime (its precisions, whether it builds, how it
copes with new shapes) comes from the runtime_* columns its rows carry.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace
from typing import Any

import pandas as pd

from bench_kernels.architecture import parameter_counts, preset_fields, preset_names, stored_weight_bytes
from bench_kernels.precisions import PRECISIONS
from bench_kernels.results import COLUMN, REGISTRY
from bench_kernels.roofline import streaming_gbps_of

# Two rows' measured bandwidths further apart than this: the card (or its load) differed between them.
BANDWIDTH_TOLERANCE = 0.02


def carried_by(stage: str) -> list[str]:
    """The registry's columns that rows of a stage carry, in CSV order."""
    return [c.name for c in REGISTRY if stage in c.stages]


# The report's tables: a configuration (and shape), then every column the stage's rows carry (carried_by(stage)).
def inference_columns() -> list[str]:
    return ["runtime", "precision", "gpu_count", "batch_size", "input_len", "output_len", "status",
            *carried_by("inference"), "error"]


def quality_columns() -> list[str]:
    return ["runtime", "precision", "status", *carried_by("quality"), "error", "notes"]


def build_columns() -> list[str]:
    return ["runtime", "precision", "gpu_count", "status", *carried_by("build"), "runtime_version", "error", "notes"]


def plain_number(value: float, digits: int = 4) -> str:
    """`digits` significant digits with thousands separators and never an exponent: '13,140', '248.1', '0.000123'."""
    if not math.isfinite(value) or value == 0:
        return "0" if value == 0 else str(value)
    decimals = max(digits - 1 - math.floor(math.log10(abs(value))), 0)
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if decimals else text


# torch's CUDA out-of-memory message: what it tried to allocate, the card's capacity, what was free.
CUDA_OUT_OF_MEMORY = re.compile(r"CUDA out of memory\. Tried to allocate (?P<need>[\d.]+ [KMG]iB)\. GPU \d+ has a "
                                r"total capacity of (?P<total>[\d.]+) GiB of which (?P<free>[\d.]+ [KMG]iB) is free"
                                r".*", re.DOTALL)


def stored_weights_gb(model: str, precision: str) -> float | None:
    """GB of a preset model's weights as stored at a precision; None for a model the presets do not describe."""
    if model not in preset_names() or precision not in PRECISIONS:
        return None
    counts = parameter_counts(SimpleNamespace(**preset_fields(model)))
    entry = PRECISIONS[precision]
    return stored_weight_bytes(counts, entry.projection_bytes, entry.unquantized_bytes) / 1e9


def plain_error(error: str, weights_gb: float | None = None, gpu_count: int = 1) -> str:
    """An error in plain words: a CUDA out-of-memory text becomes 'N GB of weights do not fit M GB' when the
    weights alone exceed the card, else what was asked for and what was free; other errors stay as they are."""
    match = CUDA_OUT_OF_MEMORY.search(error)
    if match is None:
        return error
    prefix = error[: match.start()]  # the stage and kind, e.g. 'prepare failed: out of memory: '
    capacity_gb = float(match["total"]) * 2**30 / 1e9
    if weights_gb is not None and weights_gb / gpu_count > capacity_gb:
        share = f" ({weights_gb / gpu_count:,.0f} GB on each of {gpu_count} GPUs)" if gpu_count > 1 else ""
        return f"{prefix}{weights_gb:,.0f} GB of weights{share} do not fit {capacity_gb:,.0f} GB"
    return f"{prefix}{match['need']} more were needed with {match['free']} of the card's {capacity_gb:,.0f} GB free"


def readable_errors(rows: pd.DataFrame) -> pd.Series:
    """plain_error of each row's error, from its model, precision and GPU count."""
    return pd.Series([plain_error(str(row["error"]), stored_weights_gb(row["model"], row["precision"]),
                                  int(row["gpu_count"]) if pd.notna(row["gpu_count"]) else 1)
                      for _, row in rows.iterrows()], index=rows.index, dtype=object)


def short_sha(sha: str) -> str:
    return sha[:7]


def code_versions(rows: pd.DataFrame) -> dict[str, int]:
    """Each git SHA the rows were measured at (shortened), with how many rows; the most rows first."""
    shas = rows["git_sha"].fillna("").map(short_sha).replace("", "unrecorded")
    return {str(sha): int(n) for sha, n in shas.value_counts().items()}


def measurement_differences(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """How the rows behind two compared figures were measured unlike each other, in words: other code versions, or
    streaming bandwidths (median over each side's rows) more than BANDWIDTH_TOLERANCE apart. Empty when alike."""
    notes = []
    shas_a, shas_b = (set(code_versions(rows)) - {"unrecorded"} for rows in (a, b))
    if shas_a and shas_b and shas_a != shas_b:
        notes.append(f"measured at different code versions ({', '.join(sorted(shas_a))} against "
                     f"{', '.join(sorted(shas_b))})")
    gbps_a, gbps_b = (float(streaming_gbps_of(rows).median()) for rows in (a, b))
    if math.isfinite(gbps_a) and math.isfinite(gbps_b) and abs(gbps_a / gbps_b - 1) > BANDWIDTH_TOLERANCE:
        notes.append(f"measured bandwidth {gbps_a:,.0f} against {gbps_b:,.0f} GB/s "
                     f"({100 * abs(gbps_a / gbps_b - 1):.1f}% apart, more than {BANDWIDTH_TOLERANCE:.0%})")
    return notes


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

    With baseline_precision, every precision of `runtime` is compared with the baseline measured in that one
    precision (e.g. fp8 weights against the bf16 reference)."""
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


def runtime_fact(df: pd.DataFrame, runtime: str, column: str) -> str:
    """A runtime_* column of the runtime's rows ('' when its rows predate the column)."""
    values = [v for v in df.loc[df["runtime"] == runtime, column] if isinstance(v, str) and v]
    return values[-1] if values else ""


def runs_precision(df: pd.DataFrame, runtime: str, precision: str) -> bool:
    """Whether the runtime implements the precision, as its rows say (rows that do not say: assume it does)."""
    declared = runtime_fact(df, runtime, "runtime_precisions")
    return not declared or precision in declared.split()


def reference_precision_for(df: pd.DataFrame, precision: str) -> str:
    """The reference precision to compare a precision with: the same if the reference measured it, else the
    first the reference measured (e.g. a compiled fp8 where the reference's fp8 was unavailable: compared with
    the bf16 one)."""
    measured = list(dict.fromkeys(ok_rows(df)[lambda d: d["runtime"] == "reference"]["precision"]))
    return precision if precision in measured or not measured else measured[0]


def unquantized_reference_precision(df: pd.DataFrame) -> str | None:
    """The reference's own baseline: the unquantized precision it measured, bf16 before fp16 before fp32 (a
    quantized reference can be much slower: its fp8, through torchao, runs 3.6x slower than its bf16 on an H100);
    None if it measured none."""
    measured = set(ok_rows(df)[lambda d: d["runtime"] == "reference"]["precision"])
    return next((p for p in ("bf16", "fp16", "fp32") if p in measured), None)


SAMPLE_COUNT_COLUMNS = {"runs": "n_runs", "decode steps": "n_decode_steps"}


def sample_count(row: Any, kind: str) -> float:
    """The samples a percentile of a row is over: its measured runs (TTFT, latency), or every decode step of every
    run (per-token latency); NaN where the row does not say."""
    runs = pd.to_numeric(row.get("repeats"), errors="coerce")
    if kind == "runs":
        return runs
    return runs * (pd.to_numeric(row.get("output_len"), errors="coerce") - 1)


def with_sample_counts(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The table (rows' columns, same index) with n_runs and n_decode_steps, each before the first percentile
    column it counts the samples of, and its percentiles named for what they are (named_percentiles)."""
    out = table.copy()
    for column in list(table.columns):
        metric = COLUMN.get(column)
        name = SAMPLE_COUNT_COLUMNS.get(metric.n) if metric is not None else None
        if name and name not in out:
            counts = [sample_count(row, metric.n) for _, row in rows.iterrows()]
            out.insert(list(out.columns).index(column), name, pd.array(counts, dtype="Int64"))
    return named_percentiles(out)


def named_percentiles(table: pd.DataFrame) -> pd.DataFrame:
    """The table with each percentile column whose sample count column it holds headed by what its values are
    over those counts: 'ttft_ms_p99 (≈ max of 5 runs)' where a p99 has too few samples (results.Column.statistic);
    unchanged where there are enough."""
    names = {}
    for column in table.columns:
        metric = COLUMN.get(column)
        counts = SAMPLE_COUNT_COLUMNS.get(metric.n) if metric is not None else None
        if counts in table and metric.percentile is not None:
            statistic = metric.statistic(table[counts].dropna())
            if statistic != f"p{metric.percentile:g}":
                names[column] = f"{column} ({statistic})"
    return table.rename(columns=names)


def rows_of(df: pd.DataFrame, runtime: str, precision: str) -> pd.DataFrame:
    """The ok inference rows of one runtime x precision."""
    rows = ok_rows(df)
    return rows[(rows["runtime"] == runtime) & (rows["precision"] == precision)]


def quality_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["stage"] == "quality"].sort_values(["runtime", "precision"])


def random_weights(df: pd.DataFrame, runtime: str, precision: str) -> bool:
    rows = df[(df["runtime"] == runtime) & (df["precision"] == precision)]
    return bool((rows["weights"] == "random").any())


def break_even_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per built (runtime, precision) and shape: build seconds and the generated tokens after which the
    build has paid for itself against the reference (inf: never faster)."""
    df = split_deployments(df)
    builds = build_rows(df)
    builds = builds[(builds["status"] == "ok") & (builds["build_s"] > 0)]
    rows = []
    for _, build in builds.iterrows():
        speed = speedup_table(df, build["runtime"], baseline_precision=reference_precision_for(df, build["precision"]))
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
    one = one.assign(one_gpu=[status if status == "ok" else f"{status}: {error}"
                              for status, error in zip(one["status"], readable_errors(one.fillna({"error": ""})))])
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
    """What was not measured and why, in plain words (plain_error): one line per (runtime, precision, status,
    reason)."""
    rows = df[df["status"].isin(["error", "unavailable"])]
    if rows.empty:
        return pd.DataFrame(columns=["stage", "runtime", "precision", "status", "rows", "reason"])
    rows = rows.assign(error=readable_errors(rows))
    return (rows.groupby(["stage", "runtime", "precision", "status", "error"], dropna=False).size()
            .reset_index(name="rows").rename(columns={"error": "reason"})
            [["stage", "runtime", "precision", "status", "rows", "reason"]])
