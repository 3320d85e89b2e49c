"""Output quality against the reference: perplexity on real text, token agreement, first divergence.

Perplexity is teacher-forced over fixed windows of the packaged text (workload.perplexity_windows), so runs
compare: in each window every token after the first is predicted from the ones before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

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
