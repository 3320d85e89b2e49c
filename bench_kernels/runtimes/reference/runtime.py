"""The reference implementation: transformers generate(), eager, dynamic cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench_kernels.runtimes.base import Runtime, distribution_version

if TYPE_CHECKING:
    import torch

    from bench_kernels.measure import StepTimer


class ReferenceRuntime(Runtime):
    """Hugging Face generate() in eager mode with a fixed output length (EOS suppressed)."""

    name = "reference"
    description = "transformers generate(), eager, dynamic KV cache"
    dynamic_shapes = "any batch and length, no rebuild (dynamic KV cache)"

    @classmethod
    def version(cls, device: torch.device) -> str:
        return distribution_version("transformers")

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        from bench_kernels.runtimes.reference.generation import generate_fixed_length

        return generate_fixed_length(self.loaded.hf_model, input_ids.to(self.device), output_len, timer)

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch

        ids = input_ids.to(self.device)
        with torch.inference_mode():
            # logits_to_keep=1: only the last position's logits, not [B, S, vocab]
            out = self.loaded.hf_model(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch

        ids = input_ids.to(self.device)
        with torch.inference_mode():
            return self.loaded.hf_model(ids, attention_mask=torch.ones_like(ids)).logits
