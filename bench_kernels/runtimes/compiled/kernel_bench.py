"""The compiled runtime's matrix kernels at one model's projection shapes, against the measured bandwidth and
matmul rates: `python -m bench_kernels.runtimes.compiled.kernel_bench [PRESET]` on a CUDA machine.

Decode rows (1-64 activation rows) are bound by reading the weights: each line gives the kernel's time (replayed
from a CUDA graph), the bytes it must read over that time, and that rate's share of the measured copy bandwidth.
Prefill rows (PREFILL_ROWS rows) are bound by tensor-core throughput: the fp8 path's activation quantization
(eager torch and the fused Triton kernel), its scaled GEMM, the runtime's whole fp8 path, and cuBLAS bf16 beside
it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench_kernels.architecture import preset_fields
from bench_kernels.rates import device_rates
from bench_kernels.quantization import dequantize_int4, quantize_int4
from bench_kernels.runtimes.compiled.linear_ops import (
    _scaled_mm_rowwise,
    _time_ms,
    dequantize_int4_weight,
    quantize_fp8,
    quantize_rows_fp8,
    triton_gemv,
    triton_int4_linear,
    triton_quantize_rows_fp8,
)

DECODE_ROWS = (1, 8, 32, 64)
PREFILL_ROWS = 8192


def projection_shapes(preset: str) -> dict[str, tuple[int, int]]:
    """The fused projections of one layer as the compiled runtime stores them: name -> (N, K)."""
    fields = preset_fields(preset)
    hidden, inter = fields["hidden_size"], fields["intermediate_size"]
    heads, kv_heads = fields["num_attention_heads"], fields["num_key_value_heads"]
    head_dim = fields.get("head_dim") or hidden // heads
    return {"qkv": ((heads + 2 * kv_heads) * head_dim, hidden), "o": (hidden, heads * head_dim),
            "gate_up": (2 * inter, hidden), "down": (hidden, inter)}


def decode_table(shapes: dict[str, tuple[int, int]], copy_gbps: float) -> None:
    print(f"decode kernels (copy bandwidth {copy_gbps:,.0f} GB/s): weight  N x K  rows  us  GB/s  share")
    for name, (n, k) in shapes.items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        fp8, fp8_scale = quantize_fp8(weight)
        int4 = quantize_int4(weight)
        reference = dequantize_int4(int4, torch.float32)
        if not torch.equal(dequantize_int4_weight(int4.packed, int4.scales, torch.float32), reference):
            raise AssertionError(f"the int4 dequantization kernel differs from dequantize_int4 at {name}")
        for rows in DECODE_ROWS:
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            out = triton_int4_linear(x, int4.packed, int4.scales)
            error = ((out.float() - x.float() @ reference.t()).abs().max() / (x.float() @ reference.t()).abs().max())
            if error > 1e-2:
                raise AssertionError(f"int4 kernel off by {error:.3g} (relative) at {name} rows {rows}")
            activation_bytes = x.numel() * 2 + rows * n * 2
            for kind, stored, run in (
                ("bf16 cuBLAS", weight.numel() * 2, lambda: F.linear(x, weight)),
                ("bf16 Triton", weight.numel() * 2, lambda: triton_gemv(x, weight, None)),
                ("fp8", fp8.numel() + fp8_scale.numel() * 4, lambda: triton_gemv(x, fp8, fp8_scale)),
                ("int4", int4.nbytes(), lambda: triton_int4_linear(x, int4.packed, int4.scales)),
            ):
                ms = _time_ms(run)
                gbps = (stored + activation_bytes) / ms / 1e6
                print(f"{kind:11} {name:8} {n:>6} x {k:<6} {rows:>3} {ms * 1e3:8.1f} {gbps:8.0f} "
                             f"{gbps / copy_gbps:6.2f}", flush=True)


def _scaled_mm(rows: torch.Tensor, row_scale: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch._scaled_mm(rows, weight.t(), scale_a=row_scale, scale_b=scale[None, :], out_dtype=torch.bfloat16)


def prefill_table(shapes: dict[str, tuple[int, int]], rates: dict[str, float]) -> None:
    print(f"prefill ({PREFILL_ROWS} rows; measured bf16 {rates.get('bf16', 0):.0f}, fp8 {rates.get('fp8', 0):.0f} "
             "TFLOP/s): weight  N x K  what  us  TFLOP/s")
    for name, (n, k) in shapes.items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        fp8, fp8_scale = quantize_fp8(weight)
        int4 = quantize_int4(weight)
        x = torch.randn(PREFILL_ROWS, k, device="cuda", dtype=torch.bfloat16)
        fused, fused_scale = triton_quantize_rows_fp8(x)
        eager, eager_scale = quantize_rows_fp8(x)
        differ = (fused.float() != eager.float()).float().mean().item()
        if differ > 1e-6 or not torch.equal(fused_scale, eager_scale):
            raise AssertionError(f"fused fp8 row quantization differs from the eager one at {name}: {differ:.2e} of "
                                 f"values, scales equal: {torch.equal(fused_scale, eager_scale)}")
        if not torch.equal(_scaled_mm_rowwise(x, fp8, fp8_scale, chunk_rows=PREFILL_ROWS // 2),
                           _scaled_mm(fused, fused_scale, fp8, fp8_scale)):
            raise AssertionError(f"the runtime's chunked fp8 GEMM differs from one _scaled_mm at {name}")
        flops = 2 * PREFILL_ROWS * n * k
        for what, run in (
            ("bf16 cuBLAS", lambda: F.linear(x, weight)),
            ("fp8 quantize rows, eager", lambda: quantize_rows_fp8(x)),
            ("fp8 quantize rows, fused", lambda: triton_quantize_rows_fp8(x)),
            ("fp8 _scaled_mm alone", lambda: _scaled_mm(fused, fused_scale, fp8, fp8_scale)),
            ("fp8 fused + _scaled_mm", lambda: _scaled_mm(*triton_quantize_rows_fp8(x), fp8, fp8_scale)),
            ("fp8 runtime path", lambda: _scaled_mm_rowwise(x, fp8, fp8_scale)),
            ("int4 dequantize + cuBLAS", lambda: F.linear(x, dequantize_int4_weight(int4.packed, int4.scales,
                                                                                     torch.bfloat16))),
        ):
            ms = _time_ms(run, iters=5)
            print(f"{name:8} {n:>6} x {k:<6} {what:28} {ms * 1e3:9.1f} {flops / ms / 1e9:8.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="llama-3.1-8b")
    tables = parser.add_mutually_exclusive_group()
    tables.add_argument("--decode-only", action="store_true", help="skip the prefill table")
    tables.add_argument("--prefill-only", action="store_true", help="skip the decode table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_bench needs a CUDA GPU")
    shapes = projection_shapes(args.preset)
    print(torch.cuda.get_device_name(), args.preset, shapes)
    if not args.prefill_only:
        decode_table(shapes, device_rates("cuda").streaming_gbps)
    if not args.decode_only:
        prefill_table(shapes, device_rates("cuda").matmul_tflops)


if __name__ == "__main__":
    main()
