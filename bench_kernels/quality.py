"""Output quality against the reference: perplexity on real text, token agreement, first divergence.

Perplexity is teacher-forced over fixed windows of the packaged text (workload.perplexity_windows), so runs
compare: in each window every token after the first is predicted from the ones before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bench_kernels.config import SweepConfig
from bench_kernels.precisions import PRECISIONS
from bench_kernels.runtimes import Runtime, get_runtime
from bench_kernels.runtimes.base import QUALITY_LOGIT_ROWS
from bench_kernels.workload import packaged_text, perplexity_windows, text_token_ids

if TYPE_CHECKING:
    from bench_kernels.models import LoadedModel

def window_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ids[:, 1:] under logits[:, :-1], and how many tokens that is.

    logits: [B, S, V] (any float dtype); ids: [B, S].
    """
    predicted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    targets = ids[:, 1:].reshape(-1).to(predicted.device)
    return F.cross_entropy(predicted, targets, reduction="sum").item(), targets.numel()


def perplexity(score: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor) -> tuple[float, int]:
    """exp(mean NLL) over the windows, scoring one window at a time with score(ids [1, W]) -> logits [1, W, V]."""
    total_nll, total_tokens = 0.0, 0
    for window in windows:
        nll, tokens = window_nll(score(window[None]), window[None])
        total_nll += nll
        total_tokens += tokens
    return math.exp(total_nll / total_tokens), total_tokens


def ppl_delta_pct(value: float, baseline: float) -> float:
    """How much higher (worse) a perplexity is than the baseline's, in percent."""
    return 100.0 * (value / baseline - 1.0)


def first_divergence_p50(reference: torch.Tensor, tokens: torch.Tensor) -> float:
    """Median over the prompts of the first generated position that differs from the reference's
    (the output length when none does): 'diverges after 3 tokens' vs 'after 60'. Both [B, T]."""
    differs = reference.to(tokens.device) != tokens
    length = tokens.shape[1]
    first = torch.where(differs.any(dim=1), differs.float().argmax(dim=1), length)  # first: [B]
    return float(first.float().quantile(0.5).item())


# ---- against the reference runtime's saved outputs --------------------------------------------------------------

def reference_outputs_dir(run_dir: Path) -> Path:
    """Where the reference runtime saves its tokens and first-step logits, per shape, for the others to compare."""
    folder = run_dir / "reference_outputs"
    folder.mkdir(exist_ok=True)
    return folder


def _reference_path(folder: Path, model_name: str, precision: str, batch_size: int, input_len: int,
                    output_len: int) -> Path:
    return folder / f"{model_name}_{precision}_b{batch_size}_i{input_len}_o{output_len}.pt"


def agreement_columns(runtime: Runtime, precision: str, ids: torch.Tensor, tokens: torch.Tensor, folder: Path,
                      model_name: str, sweep_precisions: Sequence[str], output_len: int) -> dict[str, Any]:
    """Token agreement (every prompt) and first-step max logit difference (the first QUALITY_LOGIT_ROWS prompts)
    against saved reference outputs; the reference runtime saves its own instead. ids: [B, S], tokens: [B, T]."""
    batch_size, input_len = ids.shape
    ids = ids[:QUALITY_LOGIT_ROWS]
    if runtime.name == "reference":
        torch.save({"tokens": tokens, "logits": runtime.first_step_logits(ids)},
                   _reference_path(folder, model_name, precision, batch_size, input_len, output_len))
        return {}
    for ref_precision in dict.fromkeys([precision, "fp32", *sweep_precisions]):
        path = _reference_path(folder, model_name, ref_precision, batch_size, input_len, output_len)
        if path.is_file():
            ref = torch.load(path)
            agreement = (ref["tokens"] == tokens).float().mean().item()
            logit_diff = (ref["logits"][:QUALITY_LOGIT_ROWS] - runtime.first_step_logits(ids)).abs().max().item()
            note = "" if ref_precision == precision else f"quality vs the {ref_precision} reference"
            return {"token_agreement": agreement, "first_divergence_p50": first_divergence_p50(ref["tokens"], tokens),
                    "max_logit_diff": logit_diff, "notes": note}
    return {"notes": "quality not measured: no reference outputs for this shape (run the reference runtime)"}


# ---- perplexity against the reference's -------------------------------------------------------------------------

def baseline_precision(cfg: SweepConfig) -> str | None:
    """The reference precision perplexity deltas are taken against: the sweep's first unquantized one the reference
    runs (a quantized reference's perplexity is measured against it, not used as the yardstick)."""
    runs = get_runtime("reference").precisions
    return next((p for p in cfg.precisions_for("reference") if p in runs and not PRECISIONS[p].quantized), None)


def perplexity_columns(runtime: Runtime, precision: str, loaded: LoadedModel, baseline: str | None,
                       rows: Iterable[dict[str, str]], window_count: int) -> dict[str, Any]:
    """The quality row's columns: perplexity over the packaged text's first window_count windows, and its delta
    against the reference at the baseline precision when rows (the results so far) hold it; 'unavailable' for a
    runtime that does not score sequences."""
    windows = perplexity_windows(text_token_ids(loaded.tokenizer, packaged_text()),
                                 loaded.config.max_position_embeddings, window_count)
    try:
        value, tokens = perplexity(lambda ids: runtime.sequence_logits(ids), windows)
    except NotImplementedError as err:
        return {"status": "unavailable", "error": str(err)}
    notes = (f"teacher-forced over {windows.shape[0]} windows of {windows.shape[1]} tokens of the packaged text "
             f"({tokens} predictions)")
    columns: dict[str, Any] = {"status": "ok", "perplexity": value}
    if runtime.name == "reference" and precision == baseline:
        columns["ppl_delta_pct"] = 0.0
    else:
        reference = [r for r in rows if r["stage"] == "quality" and r["runtime"] == "reference"
                     and r["precision"] == baseline and r["status"] == "ok"]
        if reference:
            columns["ppl_delta_pct"] = ppl_delta_pct(value, float(reference[0]["perplexity"]))
            notes += f"; delta against the reference {baseline}"
        else:
            notes += f"; no reference {baseline or ''} perplexity to compare with".replace("  ", " ")
    return {**columns, "notes": notes}

