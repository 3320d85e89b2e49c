"""Claims check: published figures set beside this run's measurements and the physical limit on its GPU.

A claims file (params/claims/<name>.yaml) lists what was claimed and maps it onto this project's terms
(preset, runtime, precision, batch, GPU). Every limit and verdict here is computed from the presets and the
run's rows; the file holds only the claims.
"""

from __future__ import annotations

import html
import math
from types import SimpleNamespace
from typing import Any

import pandas as pd

from bench_kernels.architecture import (ParameterCounts, kv_bytes_per_token, parameter_counts, preset_fields)
from bench_kernels.claims_file import (DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN, MEASUREMENTS, PRECISIONS, UNITS, Claim)
from bench_kernels.precisions import PRECISIONS as PRECISION_TABLE
from bench_kernels.roofline import (architecture_decode_weight_bytes, decode_roofline_tokens_per_s, decode_step_bytes,
                                    stored_weight_bytes, streaming_gbps_of)

# Bytes per projection weight (attention and MLP matrices, group scales included), per embedding, LM head and norm
# weight (they stay 16-bit when projections are quantized), and per cached key/value element: the precision table's.
PROJECTION_BYTES = {p: PRECISION_TABLE[p].projection_bytes for p in PRECISIONS}
UNQUANTIZED_BYTES = {p: PRECISION_TABLE[p].unquantized_bytes for p in PRECISIONS}
KV_ELEMENT_BYTES = {p: PRECISION_TABLE[p].kv_cache_bytes for p in PRECISIONS}
# Measurement spread allowed before a claim is called beyond a limit or not reproduced.
TOLERANCE = 0.05

BEYOND = "beyond the hardware's limit"
BELOW_WEIGHTS = "less than its weights occupy"
CONSISTENT = "consistent"
NOT_REPRODUCED = "not reproduced"
NOT_MEASURED = "not measured here"
VERDICTS = (BEYOND, BELOW_WEIGHTS, CONSISTENT, NOT_REPRODUCED, NOT_MEASURED)
VERDICT_STYLES = {BEYOND: "color: #b00020; font-weight: bold", BELOW_WEIGHTS: "color: #b00020; font-weight: bold",
                  CONSISTENT: "color: #1b6e2e; font-weight: bold", NOT_REPRODUCED: "color: #8a5a00; font-weight: bold",
                  NOT_MEASURED: "color: #555555; font-style: italic"}

CHECK_COLUMNS = ["claim", "statement", "source", "claimed_configuration", "metric", "unit", "claimed", "measured",
                 "measured_configuration", "physical_limit", "physical_limit_basis", "claimed_over_limit", "verdict",
                 "detail"]


# ---- physical limits --------------------------------------------------------------------------------------------

def preset_parameter_counts(preset: str) -> ParameterCounts:
    """Parameter counts of an architecture preset, read without transformers or torch."""
    return parameter_counts(SimpleNamespace(**preset_fields(preset)))


def _throughput_limit(claim: Claim, on_gpu: pd.DataFrame) -> tuple[float, str]:
    """The decode roofline for the claim at the best streaming bandwidth this run measured on the claim's GPU."""
    if on_gpu.empty:
        return math.nan, f"none: this run has no rows on a GPU named {claim.gpu!r}"
    bandwidth = streaming_gbps_of(on_gpu)
    if bandwidth.isna().all():
        return math.nan, f"none: this run recorded no copy bandwidth on {on_gpu['gpu_name'].iloc[0]}"
    # The highest measurement (each already the best of several): the limit is as generous as the run allows.
    best = on_gpu.loc[bandwidth.idxmax()]
    best_gbps = float(bandwidth.max())
    config = SimpleNamespace(**preset_fields(claim.preset))
    assert claim.batch_size is not None  # load_claims requires it for tokens_per_s
    weight_bytes = architecture_decode_weight_bytes(config, claim.precision, claim.batch_size)
    kv_token_bytes = kv_bytes_per_token(config, KV_ELEMENT_BYTES[claim.precision])
    step_bytes = decode_step_bytes(weight_bytes, kv_token_bytes, claim.batch_size, claim.input_len, claim.output_len)
    # Ideal tensor parallelism: each GPU reads its share of the weights, so the bandwidths add.
    limit = decode_roofline_tokens_per_s(step_bytes, claim.batch_size, best_gbps * claim.gpu_count)
    gpus = f" x {claim.gpu_count} GPUs" if claim.gpu_count > 1 else ""
    return limit, (f"{weight_bytes / 1e9:.2f} GB of {claim.precision} weights read per decode step plus the KV cache "
                   f"of batch {claim.batch_size} at {claim.input_len} in / {claim.output_len} out, at "
                   f"{best_gbps:,.0f} GB/s{gpus} (the highest copy or read bandwidth this run measured on "
                   f"{best['gpu_name']})")


def _memory_floor(claim: Claim) -> tuple[float, str]:
    """The bytes the claim's weights occupy at its precision, in GB."""
    counts = preset_parameter_counts(claim.preset)
    floor_gb = stored_weight_bytes(counts, claim.precision) / 1e9
    p = claim.precision
    return floor_gb, (f"{counts.total / 1e9:.2f} B parameters: {PROJECTION_BYTES[p]:.3g} bytes per projection "
                      f"parameter, {UNQUANTIZED_BYTES[p]:g} per embedding, LM head and norm parameter; weights alone, "
                      "no KV cache")


def _physical_limit(claim: Claim, on_gpu: pd.DataFrame) -> tuple[float, str]:
    if claim.metric == "tokens_per_s":
        return _throughput_limit(claim, on_gpu)
    if claim.metric == "memory_gb":
        return _memory_floor(claim)
    return math.nan, "none: a build's duration depends on the builder, not on a hardware rate"


# ---- the nearest measurement ------------------------------------------------------------------------------------

def _product(runtime_version: str) -> str:
    """The product a version string names ('TensorRT 10.2' -> 'tensorrt', 'tensorrt_rtx 1.7' -> 'tensorrt_rtx')."""
    return runtime_version.split(" ")[0].lower().replace("-", "_") if runtime_version.strip() else ""


def _precision_distance(measured: str, claimed: str) -> float:
    """0 for the claim's precision, 0.5 for another of the same width (bf16 for an fp16 claim), else 1."""
    if measured == claimed:
        return 0.0
    width = PROJECTION_BYTES.get(measured)
    return 0.5 if width is not None and width == PROJECTION_BYTES[claimed] else 1.0


def _candidates(claim: Claim, rows: pd.DataFrame) -> pd.DataFrame:
    """Rows that measured the claim's metric, with that measurement in `measured` and their distance from the claim."""
    ok = rows[rows["status"] == "ok"]
    if claim.metric == "tokens_per_s":
        ok = ok[(ok["stage"] == "inference") & (ok["itl_ms_p50"] > 0)]
        measured = ok["batch_size"] * 1e3 / ok["itl_ms_p50"]  # decode rate: the quantity the roofline bounds
    elif claim.metric == "memory_gb":
        ok = ok[(ok["stage"] == "inference") & (ok["peak_mem_gb"] > 0)]
        measured = ok["peak_mem_gb"]
    else:
        ok = ok[(ok["stage"] == "build") & (ok["build_s"] > 0)]
        measured = ok["build_s"] / 60
    product = _product(claim.runtime_version)
    shaped = claim.metric == "tokens_per_s"
    return ok.assign(
        measured=measured,
        other_runtime=ok["runtime"] != claim.runtime,
        other_product=ok["runtime_version"].map(lambda v: bool(product) and _product(v) != product),
        other_precision=ok["precision"].map(lambda p: _precision_distance(p, claim.precision)),
        other_gpu_count=ok["gpu_count"].fillna(1) != claim.gpu_count,
        batch_distance=(ok["batch_size"] / (claim.batch_size or 1)).map(lambda r: abs(math.log2(r))) if shaped else 0.0,
        input_distance=(ok["input_len"] - claim.input_len).abs() if shaped else 0.0,
        output_distance=(ok["output_len"] - claim.output_len).abs() if shaped else 0.0,
    )


def _nearest(claim: Claim, rows: pd.DataFrame) -> pd.Series | None:
    """The measurement nearest the claim: same runtime first, then product, precision (or one as wide), GPU count,
    batch, input and output length; for memory the smallest footprint (nearest a weights-only figure)."""
    candidates = _candidates(claim, rows)
    if candidates.empty:
        return None
    order = ["other_runtime", "other_product", "other_precision", "other_gpu_count", "batch_distance",
             "input_distance", "output_distance", "measured"]
    ascending = [True] * (len(order) - 1) + [claim.metric != "tokens_per_s"]
    return candidates.sort_values(order, ascending=ascending, kind="stable").iloc[0]


def _comparable(row: pd.Series) -> bool:
    """Whether the row measured the claim's configuration: runtime, product, precision, GPU count and batch."""
    return not (row["other_runtime"] or row["other_product"] or row["other_precision"] or row["other_gpu_count"]
                or row["batch_distance"])


def _row_configuration(row: pd.Series) -> str:
    version = f" ({row['runtime_version']})" if row["runtime_version"] else ""
    if row["stage"] == "build":
        shape = " build"
    else:
        shape = f", batch {row['batch_size']:.0f}, {row['input_len']:.0f} in / {row['output_len']:.0f} out"
    return f"{row['runtime']}{version} {row['precision']}{shape}, {row['gpu_name']}, run {row['run_name']}"


def _claimed_configuration(claim: Claim) -> str:
    version = f" ({claim.runtime_version})" if claim.runtime_version else ""
    batch = f", batch {claim.batch_size}" if claim.batch_size else ""
    return f"{claim.model} {claim.runtime}{version} {claim.precision}{batch}, {claim.gpu_count} x {claim.gpu}"


# ---- verdicts ---------------------------------------------------------------------------------------------------

def format_value(value: float, metric: str) -> str:
    """A figure with its unit, at the precision the metric deserves."""
    if pd.isna(value):
        return ""
    digits = 0 if metric == "tokens_per_s" else 1
    return f"{value:,.{digits}f} {UNITS[metric]}"


def _reproduces(claim: Claim, measured: float) -> bool:
    """Whether the measurement is at least as good as the claim, within the tolerance."""
    if claim.metric == "tokens_per_s":
        return measured >= claim.claimed * (1 - TOLERANCE)
    return measured <= claim.claimed * (1 + TOLERANCE)  # minutes and GB: less is better


def _verdict(claim: Claim, limit: float, nearest: pd.Series | None) -> str:
    # A missing limit (NaN) compares False, so only the measurement decides.
    if claim.metric == "tokens_per_s" and claim.claimed > limit * (1 + TOLERANCE):
        return BEYOND
    if claim.metric == "memory_gb" and claim.claimed < limit * (1 - TOLERANCE):
        return BELOW_WEIGHTS
    if nearest is None or not _comparable(nearest):
        return NOT_MEASURED
    return CONSISTENT if _reproduces(claim, nearest["measured"]) else NOT_REPRODUCED


def _limit_sentence(claim: Claim, limit: float, basis: str) -> str:
    if math.isnan(limit):
        return f"No physical limit: {basis.removeprefix('none: ')}."
    ratio = claim.claimed / limit
    if claim.metric == "memory_gb":
        return f"The claim is {ratio:.2f}x the {limit:,.1f} GB its weights occupy at {claim.precision}."
    sentence = f"The claim is {ratio:.2f}x the most this GPU's measured bandwidth allows"
    if ratio > 1 + TOLERANCE:
        # Bandwidths add at best linearly across GPUs, so this many would be needed even with perfect scaling.
        sentence += (f"; even ideal tensor parallelism would need at least {math.ceil(ratio * claim.gpu_count)} "
                     "such GPUs")
    return sentence + "."


def _measured_sentence(claim: Claim, nearest: pd.Series | None) -> str:
    what = MEASUREMENTS[claim.metric]
    if nearest is None:
        return f"This run has no {what} of {claim.preset} on {claim.gpu}."
    share = nearest["measured"] / claim.claimed
    figure = f"{format_value(nearest['measured'], claim.metric)} ({share:.0%} of the claim)"
    if _comparable(nearest):
        return f"This run measured {figure} for {_row_configuration(nearest)}."
    sentence = (f"This run has no {what} of {claim.runtime} {claim.precision}"
                + (f" at batch {claim.batch_size}" if claim.batch_size else "")
                + f"; nearest: {figure} for {_row_configuration(nearest)}")
    if not nearest["other_runtime"] and nearest["other_product"]:
        sentence += (f", and {nearest['runtime_version']} is not {claim.runtime_version}: "
                     "it neither confirms nor refutes the claim")
    return sentence + "."


def _check(claim: Claim, results: pd.DataFrame) -> dict[str, Any]:
    on_gpu = results[results["gpu_name"].str.contains(claim.gpu, case=False, regex=False)]
    limit, basis = _physical_limit(claim, on_gpu)
    nearest = _nearest(claim, on_gpu[on_gpu["model"] == claim.preset])
    return {
        "claim": claim.id, "statement": claim.statement, "source": claim.source,
        "claimed_configuration": _claimed_configuration(claim), "metric": claim.metric,
        "unit": UNITS[claim.metric], "claimed": claim.claimed,
        "measured": math.nan if nearest is None else nearest["measured"],
        "measured_configuration": "" if nearest is None else _row_configuration(nearest),
        "physical_limit": limit, "physical_limit_basis": basis, "claimed_over_limit": claim.claimed / limit,
        "verdict": _verdict(claim, limit, nearest),
        "detail": f"{_limit_sentence(claim, limit, basis)} {_measured_sentence(claim, nearest)}",
    }


def check_claims(claims: list[Claim], results: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: the claim, this run's nearest measurement, the physical limit on its GPU, the verdict."""
    return pd.DataFrame([_check(claim, results) for claim in claims], columns=CHECK_COLUMNS)


# ---- the report section -----------------------------------------------------------------------------------------

def verdict_rule_html() -> str:
    """How limits and verdicts are computed (HTML), with the constants this module uses."""
    tolerance, e = f"{TOLERANCE:.0%}", html.escape
    return (
        "<p>Each claim is set beside the physical limit for it on the GPU this run measured and beside what this "
        "run measured for the nearest configuration (same runtime first, then product, precision or one as wide, "
        "GPU count, batch, lengths). <b>Throughput limit</b>: a decode step reads every weight "
        "matrix once (projections at the claim's precision; LM head and norms 16-bit, as the compiled runtime and "
        "common fp8 and AWQ recipes keep them; of the embedding table only the batch's rows, not counted) and the "
        "batch's KV cache (fp8 for fp8 claims) at the claim's context, "
        f"{DEFAULT_INPUT_LEN} in / {DEFAULT_OUTPUT_LEN} out where it states none; tokens/s &le; batch &times; "
        "bandwidth / bytes per step, with the highest streaming bandwidth (the faster of copy and read) this run "
        "measured on that GPU, times the claim's GPU count (ideal tensor parallelism). Measured tokens/s is the "
        "decode rate (batch / per-token latency p50), the quantity that limit bounds. <b>Memory limit</b>: a "
        "floor, the claim's weights alone at its precision (claimed / limit below 1 claims less than they occupy). "
        "Build times have no physical limit.</p>"
        f"<p>Verdicts: <b>{e(BEYOND)}</b>: a throughput more than {tolerance} above its limit; "
        f"<b>{e(BELOW_WEIGHTS)}</b>: a memory figure more than {tolerance} below its weights' bytes; "
        f"<b>{e(CONSISTENT)}</b>: within the limit, and this run measured the same runtime (same product), "
        f"precision, GPU count and batch at least as well as the claim, within {tolerance}; "
        f"<b>{e(NOT_REPRODUCED)}</b>: "
        f"within the limit, but this run's same configuration fell short of it by more than {tolerance}; "
        f"<b>{e(NOT_MEASURED)}</b>: within the limit (or none applies), and nothing comparable ran here; the "
        "nearest measurement is still shown.</p>"
    )


def claims_section_html(checked: pd.DataFrame) -> str:
    """The claims section (HTML): how verdicts are reached, then one table row per checked claim."""
    if checked.empty:
        return verdict_rule_html() + "<p>No claims to check.</p>"
    e = html.escape
    rows = []
    for _, row in checked.iterrows():
        limit = format_value(row["physical_limit"], row["metric"]) or "none"
        ratio = "" if pd.isna(row["claimed_over_limit"]) else f"{row['claimed_over_limit']:.2f}"
        rows.append(
            f"<tr><td>{e(row['statement'])}<br><small>{e(row['source'])}; checked as "
            f"{e(row['claimed_configuration'])}</small></td>"
            f"<td>{e(format_value(row['claimed'], row['metric']))}</td>"
            f"<td>{e(format_value(row['measured'], row['metric']) or 'nothing')}<br>"
            f"<small>{e(row['measured_configuration'])}</small></td>"
            f"<td>{e(limit)}<br><small>{e(row['physical_limit_basis'])}</small></td>"
            f"<td>{ratio}</td>"
            f"<td><span style=\"{VERDICT_STYLES[row['verdict']]}\">{e(row['verdict'])}</span><br>"
            f"<small>{e(row['detail'])}</small></td></tr>")
    header = "".join(f"<th>{h}</th>" for h in ("claim", "claimed", "this run measured (nearest configuration)",
                                               "physical limit", "claimed / limit", "verdict"))
    return (verdict_rule_html() + "<table class=\"claims\"><thead><tr>" + header + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
