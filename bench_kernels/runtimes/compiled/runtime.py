"""The compiled runtime: what a strong PyTorch user deploys instead of TensorRT.

The shared decoder with fused projections and a static KV cache; per-layer functions under
torch.compile (inductor); on CUDA the whole decode step is one CUDA graph per shape. Precisions:
fp32 / fp16 / bf16 weights as loaded; fp8 e4m3 weights with per-channel scales (activations stay bf16 in a
Triton weight-only GEMV up to 64 rows, are rounded to fp8 per row for torch._scaled_mm beyond); int4 weights
with group scales, round-to-nearest or AWQ-scaled (bench_kernels.quantization), dequantized in registers by
Triton kernels (bf16 activations) or, where that measures faster for a prefill, into bf16 for cuBLAS.

One registry entry, two jobs: with tensor_parallel 1 the model runs in this process (single_process.py); with
tensor_parallel > 1 this process only coordinates (coordinator.py) the ranks that tensor_parallel.py starts and
stops, one process per GPU (or per part of the CPU); sharding.py says how the weights and the KV cache split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench_kernels.runtimes.compiled.common import CompiledBase, CompiledOptions
from bench_kernels.runtimes.compiled.coordinator import TensorParallelCoordinator
from bench_kernels.runtimes.compiled.single_process import SingleProcessRuntime

if TYPE_CHECKING:
    import torch

    from bench_kernels.models import LoadedModel


class CompiledRuntime(CompiledBase):
    """The `compiled` runtime as the registry lists it. Constructing one gives the job its options ask for: a
    SingleProcessRuntime or a TensorParallelCoordinator, which share this class's facts through CompiledBase."""

    def __new__(cls, loaded: LoadedModel, precision: str, device: torch.device,
                options: Any = None) -> SingleProcessRuntime | TensorParallelCoordinator:
        options = options if options is not None else CompiledOptions()
        job = TensorParallelCoordinator if options.tensor_parallel > 1 else SingleProcessRuntime
        return job(loaded, precision, device, options)
