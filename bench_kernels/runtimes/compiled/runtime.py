"""The compiled runtime: what a strong PyTorch user deploys instead of TensorRT.

The shared decoder with fused projections and a static KV cache; per-layer functions under
torch.compile (inductor); on CUDA the whole decode step is one CUDA graph per shape. Precisions:
fp32 / fp16 / bf16 weights as loaded, or fp8 e4m3 weights with per-channel scales (activations
stay bf16: a Triton weight-only GEMV for up to 64 rows, torch._scaled_mm beyond).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, ClassVar

from bench_kernels.runtimes.base import BuildInfo, Runtime, distribution_version

if TYPE_CHECKING:
    import torch

    from bench_kernels.measure import StepTimer

log = logging.getLogger(__name__)


class CompiledRuntime(Runtime):
    """Static-cache decoder under torch.compile, decode steps replayed from CUDA graphs."""

    name = "compiled"
    description = "the shared decoder with a static KV cache under torch.compile, CUDA graphs and Triton kernels"
    needs_build = True
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16", "fp8")
    dynamic_shapes = ("any batch and length; a new shape allocates its static cache and captures a graph "
                      "(under a second), compiled code is reused")

    @classmethod
    def version(cls, device: torch.device) -> str:
        return ", ".join(v for v in (distribution_version("torch"), distribution_version("triton")) if v)

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        from bench_kernels.runtimes.compiled.linear_ops import fp8_unavailable_reason, triton_unavailable_reason

        if precision == "fp8":
            return fp8_unavailable_reason(device)
        if device.type == "cuda":
            return triton_unavailable_reason()  # torch.compile's GPU backend generates Triton kernels
        return None

    def _decoder(self):
        """Pack the loaded weights (freeing each original layer once packed: no second copy in memory)."""
        from bench_kernels.decoder import Decoder
        from bench_kernels.models import eos_token_ids
        from bench_kernels.runtimes.compiled.static_decoder import StaticDecoder

        hf_model = self.loaded.hf_model
        decoder = Decoder.from_hf(hf_model)
        hf_layers = hf_model.model.layers

        def release(i: int) -> None:
            decoder.layers[i].to("meta")
            hf_layers[i].to("meta")

        return StaticDecoder.from_decoder(decoder, "fp8" if self.precision == "fp8" else "native",
                                          compile_mode="default", suppress_token_ids=eos_token_ids(self.loaded),
                                          release=release)

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        """Compile for every sweep shape: the decode step (warmed, then captured) and the prefill."""
        import torch
        from torch._dynamo.utils import counters

        from bench_kernels.runtimes.compiled.linear_ops import chosen_backends

        graphs_before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        self.static = self._decoder()
        pack_s = time.perf_counter() - start
        not_warmed = []
        for batch_size in batch_sizes:
            for input_len in input_lens:
                try:
                    self.static.state_for(batch_size, input_len, output_len)
                except torch.OutOfMemoryError:  # that shape's rows will say so; the others still run
                    self.static.release_state()
                    not_warmed.append(f"batch {batch_size} input {input_len}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        build_s = time.perf_counter() - start
        self.static.release_state()
        backends = sorted({f"{n}x{k}@{m}:{b}" for (_, dtype, n, k, m), b in chosen_backends().items()
                           if dtype == self.static.layers[0].qkv[0].dtype})
        notes = (f"torch.compile {torch.__version__} of 4 functions, {len(batch_sizes) * len(input_lens)} shapes "
                 f"warmed{' and captured as CUDA graphs' if self.device.type == 'cuda' else ''}; "
                 f"weights packed ({'fp8 e4m3, per-channel scales' if self.precision == 'fp8' else self.precision}) "
                 f"in {pack_s:.1f} s")
        if not_warmed:
            notes += f"; out of memory while warming {', '.join(not_warmed)}"
        if backends:
            notes += f"; GEMV backend per weight [N x K] @ rows, by measurement: {' '.join(backends)}"
        # No new graph compiled: this process had compiled the same code for these dtypes already.
        cache_hit = counters["stats"]["unique_graphs"] == graphs_before
        return BuildInfo(build_s=build_s, artifact_mb=0.0, cache_hit=cache_hit, notes=notes)

    def weight_bytes(self) -> int:
        return self.static.weight_bytes()

    def kv_element_size(self) -> int:
        return self.static.kv_element_size()

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        ids = input_ids.to(self.device)
        self.static.state_for(ids.shape[0], ids.shape[1], output_len)  # outside the timed region
        timer.start()
        return self.static.generate(ids, output_len, on_token=timer.token).cpu()

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.static.prefill_logits(input_ids.to(self.device)).cpu()

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.static.sequence_logits(input_ids.to(self.device))

    def close(self) -> None:
        if getattr(self, "static", None) is not None:
            self.static.release_state()
            self.static = None
