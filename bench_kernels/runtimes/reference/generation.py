"""generate() with every new token marked on the timer and EOS unable to end a run early."""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from bench_kernels.timing import StepTimer


class _MarkEachToken(StoppingCriteria):
    """Called by generate() once per new token: marks the timer and never stops generation."""

    def __init__(self, timer: StepTimer):
        self.timer = timer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        self.timer.token()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate_fixed_length(hf_model: Any, ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
    """Greedy tokens [B, output_len] on the CPU for ids [B, S] already on the model's device."""
    mask = torch.ones_like(ids)
    timer.start()
    out = hf_model.generate(
        ids,
        attention_mask=mask,
        do_sample=False,
        min_new_tokens=output_len,  # min == max: EOS can never end a run early
        max_new_tokens=output_len,
        stopping_criteria=StoppingCriteriaList([_MarkEachToken(timer)]),
    )
    return out[:, ids.shape[1]:].cpu()  # new tokens: [B, output_len]
