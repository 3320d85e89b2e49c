"""Output quality against the reference: perplexity on real text, token agreement, first divergence.

Perplexity is teacher-forced over fixed windows of the packaged text, so runs compare: the text's
tokens are cut into consecutive, non-overlapping windows of PERPLEXITY_WINDOW tokens (fewer when the
model's context is shorter), the first PERPLEXITY_WINDOWS of them are scored, and in each window every
token after the first is predicted from the ones before it (8 x 511 = 4,088 predictions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bench_kernels.method import PERPLEXITY_WINDOW, PERPLEXITY_WINDOWS


def perplexity_windows(token_ids: Sequence[int], max_positions: int) -> torch.Tensor:
    """The scored windows [N, W] (see the module docstring); N < PERPLEXITY_WINDOWS only for a short text."""
    window = min(PERPLEXITY_WINDOW, max_positions)
    count = min(PERPLEXITY_WINDOWS, len(token_ids) // window)
    if count == 0:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than one window of {window}")
    return torch.tensor(list(token_ids[: count * window]), dtype=torch.long).view(count, window)


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


def fp8_round_trip_(model: torch.nn.Module, activations: bool = False) -> int:
    """Every nn.Linear weight (the LM head excepted, as the compiled runtime keeps it) rounded to fp8 e4m3 with
    a per-output-channel scale and back, in place: the precision's loss alone, with no fp8 kernel involved.

    activations: also round each such layer's input rows to fp8 per row, as the compiled runtime's scaled
    GEMM does beyond GEMV_MAX_ROWS rows (prefill). Returns how many layers were rounded."""
    from bench_kernels.runtimes.compiled.linear_ops import GEMV_MAX_ROWS, quantize_fp8, quantize_rows_fp8

    def round_rows(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= GEMV_MAX_ROWS:
            return inputs
        quantized, scale = quantize_rows_fp8(rows)
        return ((quantized.float() * scale).to(x.dtype).reshape(x.shape), *inputs[1:])

    head = model.get_output_embeddings()
    rounded = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                quantized, scale = quantize_fp8(module.weight)
                module.weight.copy_((quantized.float() * scale[:, None]).to(module.weight.dtype))
                if activations:
                    module.register_forward_pre_hook(round_rows)
                rounded += 1
    return rounded
