"""The roofline's physics, pure (no torch): the bytes one decode step reads, a prefill's FLOPs, which bandwidth.

One byte model for every section (sweep rows, claims, kernel_bench): a decode step reads each stored matrix once
(scales and zero points as stored), only the batch's rows of the input embedding (a tied embedding is read whole as
the LM head), and the batch's KV cache at its mean length over the measured steps (input_len .. input_len +
output_len - 1 tokens); a model split over devices counts the busiest device's share, plus what it sends per step
at the measured link bandwidth.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from bench_kernels.architecture import ParameterCounts, parameter_counts, preset_fields, preset_names
from bench_kernels.gpu_specs import mbu
from bench_kernels.precisions import precision as precision_entry

ROOFLINE_NOT_APPLICABLE = "roofline not applicable: model fits in cache"
# The mark a row recomputed from the whole-embedding byte model carries in its notes (recompute_rows skips it).
RECOMPUTED_NOTE = "roofline recomputed: the embedding's batch rows read, not its whole table"
ROOFLINE_COLUMNS = ("roofline_tokens_per_s", "efficiency", "decode_gbps", "mbu")


def streaming_gbps(copy_gbps: float | None, read_gbps: float | None) -> float:
    """The decode roofline's bandwidth: the faster of the measured copy and read rates (NaN when neither was)."""
    rates = [r for r in (copy_gbps, read_gbps) if r is not None and not math.isnan(r)]
    return max(rates) if rates else math.nan


def streaming_gbps_of(rows: pd.DataFrame) -> pd.Series:
    """streaming_gbps of every row of a results frame (rows written before read_gbps existed: their copy rate)."""
    return rows[[c for c in ("copy_gbps", "read_gbps") if c in rows]].max(axis=1)


def embedding_row_bytes(config: Any, element_bytes: int) -> int:
    """Bytes of one input-embedding row a decode step gathers per sequence; 0 for an embedding tied to the LM head,
    which the head reads whole."""
    return 0 if getattr(config, "tie_word_embeddings", False) else config.hidden_size * element_bytes


def decode_weight_bytes(stored_weight_bytes: float, row_bytes: int, vocab_size: int, batch_size: int) -> float:
    """Weight bytes one decode step reads: everything stored, less the embedding rows no sequence of the batch
    looks up (row_bytes from embedding_row_bytes)."""
    return stored_weight_bytes - max(vocab_size - batch_size, 0) * row_bytes


def mean_kv_len(input_len: int, output_len: int) -> float:
    """Tokens in the cache averaged over the measured decode steps: input_len .. input_len + output_len - 1."""
    return input_len + (output_len - 1) / 2


def decode_step_bytes(weight_bytes: float, kv_token_bytes: int, batch_size: int, input_len: int,
                      output_len: int) -> float:
    """Bytes one decode step reads, averaged over the steps: the weights it reads and the batch's KV cache once."""
    return weight_bytes + batch_size * mean_kv_len(input_len, output_len) * kv_token_bytes


def decode_roofline_tokens_per_s(step_bytes: float, batch_size: int, bandwidth_gbps: float, link_bytes: float = 0,
                                 link_gbps: float | None = None) -> float:
    """Upper bound on decode tokens/s: step_bytes read at bandwidth_gbps, and link_bytes sent to the other devices
    at link_gbps, per step of batch_size tokens."""
    step_s = step_bytes / (bandwidth_gbps * 1e9) + (link_bytes / (link_gbps * 1e9) if link_bytes else 0.0)
    return batch_size / step_s


def decode_columns(step_bytes: float, batch_size: int, itl_ms_p50: float, bandwidth_gbps: float, gpu_name: str,
                   link_bytes: float = 0, link_gbps: float | None = None) -> dict[str, Any]:
    """A row's roofline columns: the bound, measured decode tokens/s over it, the bytes read per second and their
    share of the card's specified bandwidth."""
    bound = decode_roofline_tokens_per_s(step_bytes, batch_size, bandwidth_gbps, link_bytes, link_gbps)
    step_s = itl_ms_p50 / 1e3 if itl_ms_p50 > 0 else math.nan
    decode_gbps = step_bytes / step_s / 1e9
    return {"roofline_tokens_per_s": bound, "efficiency": batch_size / step_s / bound, "decode_gbps": decode_gbps,
            "mbu": mbu(decode_gbps, gpu_name)}


def prefill_columns(flops: int, ttft_ms_p50: float, rate_tflops: float | None, sharing: int = 1) -> dict[str, float]:
    """A row's prefill columns: its matmul FLOPs over TTFT p50, and that over the measured matmul rate of the
    precision it computes in times the GPUs that share each prefill (none without a measured rate)."""
    tflops = flops / (ttft_ms_p50 / 1e3) / 1e12
    if rate_tflops is None:
        return {"prefill_tflops": tflops}
    return {"prefill_tflops": tflops, "prefill_efficiency": tflops / (rate_tflops * sharing)}


# ---- from the architecture alone --------------------------------------------------------------------------------

def stored_weight_bytes(counts: ParameterCounts, precision: str) -> float:
    """Bytes the weights occupy at this precision (precisions.PRECISIONS): projections at their stored width with
    group scales, embedding, LM head and norms in the load dtype."""
    entry = precision_entry(precision)
    unquantized = counts.norms + counts.embedding + counts.lm_head
    return counts.projections * entry.projection_bytes + unquantized * entry.unquantized_bytes


def architecture_decode_weight_bytes(config: Any, precision: str, batch_size: int) -> float:
    """Weight bytes one decode step of batch_size sequences reads, from the architecture fields and the precision
    table (a runtime's own stored bytes may differ: the sweep reads those)."""
    entry = precision_entry(precision)
    return decode_weight_bytes(stored_weight_bytes(parameter_counts(config), precision),
                               embedding_row_bytes(config, entry.unquantized_bytes), config.vocab_size, batch_size)


def prefill_flops(config: Any, batch_size: int, input_len: int, logits_every_position: bool = False) -> int:
    """Matmul FLOPs of one prefill of batch_size prompts of input_len tokens (multiply-add = 2 FLOPs).

    FLOPs = 2 * P * B * S                      projections: P = attention (q, k, v, o) and MLP matrices of every layer
          + 2 * V * D * B * H                  LM head: H = S where every position gets logits, else 1 (the last)
          + 2 * 2 * L * A * Dh * B * S(S+1)/2  causal attention: QK^T and PV, query i sees keys 0..i

    with B batch, S prompt tokens, V vocabulary, D hidden size, L layers, A query heads and Dh head dimension.
    Norms, RoPE, softmax and activations are left out (a fraction of a percent); the head is counted even when
    tied to the embedding (its matmul still runs), and attention counts only the causal half a mask keeps."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    tokens = batch_size * input_len
    projections = 2 * parameter_counts(config).projections * tokens
    head_positions = tokens if logits_every_position else batch_size
    head = 2 * config.vocab_size * config.hidden_size * head_positions
    attention = (2 * 2 * config.num_hidden_layers * config.num_attention_heads * head_dim
                 * batch_size * input_len * (input_len + 1) // 2)
    return projections + head + attention


# ---- committed rows measured with the whole-embedding model -----------------------------------------------------

# Runtimes whose rows store the embedding in the precision's load dtype (precisions.Precision.torch_dtype), so a
# stored row says exactly how many embedding bytes its old roofline counted; ONNX Runtime and TensorRT export
# int4 models with fp32 or fp16 floats, which their rows do not record.
LOAD_DTYPE_EMBEDDING_RUNTIMES = ("reference", "compiled")


def _number(row: Mapping[str, str], column: str) -> float:
    text = row.get(column) or ""
    return float(text) if text else math.nan


def recompute_row(row: Mapping[str, str], config: Any) -> dict[str, float] | str:
    """The roofline columns of one ok inference row measured with the whole-embedding byte model, recomputed with
    the batch's rows only ({} where the two models agree: a tied embedding); or why it cannot be recomputed exactly
    from what the row stores.

    The old step's bytes come back from the row (decode_gbps x ITL p50, or, for rows without decode_gbps, the bound
    x bandwidth / batch, exact where no link time entered it); the link time is kept as the old bound implies it."""
    row_bytes = embedding_row_bytes(config, precision_entry(row["precision"]).unquantized_bytes)
    if not row_bytes:
        return {}  # a tied embedding is read whole as the LM head in both models
    if row.get("runtime") not in LOAD_DTYPE_EMBEDDING_RUNTIMES:
        return f"{row.get('runtime')} rows do not record the dtype their embedding was exported in"
    batch, bound = int(float(row["batch_size"])), _number(row, "roofline_tokens_per_s")
    itl_ms, decode_gbps = _number(row, "itl_ms_p50"), _number(row, "decode_gbps")
    bandwidth = streaming_gbps(_number(row, "copy_gbps"), _number(row, "read_gbps"))
    if math.isnan(bandwidth):
        return "no copy or read bandwidth recorded: the old bound's bytes cannot be recovered"
    step_s = itl_ms / 1e3
    if math.isnan(decode_gbps):
        if not math.isnan(_number(row, "link_gbps")):
            return "no decode_gbps and a link bandwidth: the old bound's link time cannot be separated"
        old_bytes, link_s = batch * bandwidth * 1e9 / bound, 0.0
    else:
        old_bytes = decode_gbps * 1e9 * step_s
        link_s = max(batch / bound - old_bytes / (bandwidth * 1e9), 0.0)
    new_bytes = old_bytes - max(config.vocab_size - batch, 0) * row_bytes
    new_bound = batch / (new_bytes / (bandwidth * 1e9) + link_s)
    columns = {"roofline_tokens_per_s": new_bound, "efficiency": batch / step_s / new_bound}
    if not math.isnan(decode_gbps):
        new_gbps = new_bytes / step_s / 1e9
        columns["decode_gbps"] = new_gbps
        specified = mbu(new_gbps, row.get("gpu_name") or "")
        if specified is not None and row.get("mbu"):
            columns["mbu"] = specified
    return columns


def recompute_rows(rows: list[dict[str, str]], config_of: Callable[[str], Any]) -> tuple[list[dict[str, str]],
                                                                                         list[str]]:
    """Every ok inference row with a roofline recomputed with the one byte model (rows already recomputed are
    kept); the rows, as strings, and one line per row that could not be recomputed exactly.

    config_of maps a row's model name to its architecture fields. Only the four roofline columns and the notes
    (which get RECOMPUTED_NOTE) change; every measured figure stays as written."""
    problems: list[str] = []
    out = []
    for row in rows:
        row = dict(row)
        if (row.get("stage") == "inference" and row.get("status") == "ok" and row.get("roofline_tokens_per_s")
                and RECOMPUTED_NOTE not in (row.get("notes") or "")):
            result = recompute_row(row, config_of(row["model"]))
            where = (f"{row['runtime']} {row['precision']} x{row.get('gpu_count') or 1} batch {row['batch_size']} "
                     f"input {row['input_len']}")
            if isinstance(result, str):
                problems.append(f"{where}: not recomputed: {result}")
            elif result:
                row.update({column: repr(float(value)) for column, value in result.items() if column in row})
                row["notes"] = "; ".join(part for part in (row.get("notes"), RECOMPUTED_NOTE) if part)
        out.append(row)
    return out, problems


def recompute_results_csv(path: Path, presets: Mapping[str, str] | None = None) -> list[str]:
    """Rewrite one results.csv with its roofline columns recomputed (recompute_rows); every other cell is kept as
    written. presets maps a row's model name to the architecture preset it was built from (default: the same name).
    Returns the lines about rows not recomputed."""
    presets = dict(presets or {})

    def config_of(model: str) -> Any:
        name = presets.get(model, model)
        if name not in preset_names():
            raise KeyError(f"model {model!r} of {path} has no architecture preset; name one with --preset "
                           f"{model}=<preset> (presets: {', '.join(preset_names())})")
        return SimpleNamespace(**preset_fields(name))

    with path.open(encoding="utf-8", newline="") as handle:
        text = handle.read()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fieldnames = list(reader.fieldnames or [])
    rows, problems = recompute_rows(list(reader), config_of)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\r\n" if "\r\n" in text else "\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return problems


def main(argv: list[str] | None = None) -> None:
    """`python -m bench_kernels.roofline RESULTS_CSV...`: recompute committed rows' roofline columns."""
    parser = argparse.ArgumentParser(description=recompute_results_csv.__doc__)
    parser.add_argument("results", nargs="+", type=Path, help="results.csv files to rewrite in place")
    parser.add_argument("--preset", action="append", default=[], metavar="MODEL=PRESET",
                        help="the architecture preset of a row's model name (e.g. smollm2-135m-instruct=smollm2-135m)")
    args = parser.parse_args(argv)
    presets = dict(item.split("=", 1) for item in args.preset)
    for path in args.results:
        for line in recompute_results_csv(path, presets):
            print(f"{path}: {line}")


if __name__ == "__main__":
    main()
