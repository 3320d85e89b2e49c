"""The reference implementation: transformers generate(), eager, dynamic cache."""

from __future__ import annotations

import logging

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from bench_kernels.measure import StepTimer
from bench_kernels.runtimes.base import Runtime

log = logging.getLogger(__name__)


class _MarkEachToken(StoppingCriteria):
    """Called by generate() once per new token: marks the timer and never stops generation."""

    def __init__(self, timer: StepTimer):
        self.timer = timer

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        self.timer.token()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class ReferenceRuntime(Runtime):
    """Hugging Face generate() in eager mode with a fixed output length (EOS suppressed)."""

    name = "reference"
    dynamic_shapes = "any batch and length, no rebuild (dynamic KV cache)"

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        ids = input_ids.to(self.device)  # ids: [B, S]
        mask = torch.ones_like(ids)
        timer.start()
        out = self.loaded.hf_model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            min_new_tokens=output_len,  # min == max: EOS can never end a run early
            max_new_tokens=output_len,
            stopping_criteria=StoppingCriteriaList([_MarkEachToken(timer)]),
        )
        return out[:, ids.shape[1]:].cpu()  # new tokens: [B, output_len]

    @torch.inference_mode()
    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to(self.device)
        # logits_to_keep=1: only the last position's logits, not [B, S, vocab]
        out = self.loaded.hf_model(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
        return out.logits[:, -1].float().cpu()
