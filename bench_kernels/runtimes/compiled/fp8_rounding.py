"""fp8's precision loss without its kernels: the compiled runtime's fp8 rounding applied to a transformers model in
place (used by the quality studies of BENCHMARKS.md and their test)."""

from __future__ import annotations

import torch

from bench_kernels.runtimes.compiled.linear_ops import GEMV_MAX_ROWS, quantize_fp8, quantize_rows_fp8


def fp8_round_trip_(model: torch.nn.Module, activations: bool = False) -> int:
    """Every nn.Linear weight (the LM head excepted, as the compiled runtime keeps it) rounded to fp8 e4m3 with
    a per-output-channel scale and back, in place: the precision's loss alone, with no fp8 kernel involved.

    activations: also round each such layer's input rows to fp8 per row, as the compiled runtime's scaled
    GEMM does beyond GEMV_MAX_ROWS rows (prefill). Returns how many layers were rounded."""
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
