"""The compiled runtime's matrix kernels at one model's projection shapes, against the measured bandwidth and
matmul rates: `python -m bench_kernels.runtimes.compiled.kernel_bench [PRESET]` on a CUDA machine.

Decode rows (1-64 activation rows) are bound by reading the weights: each line gives the kernel's time (replayed
from a CUDA graph, each call on the next of enough copies of the weight that together they exceed twice the L2, so
every call reads its weight from device memory as a decode step does), the bytes it must read over that time, and
that rate's share of the measured copy bandwidth; then the time the model's projections take per decode step with
each kernel (its layers times the four projections), and decode attention over the KV cache, timed the same way.
Prefill rows (PREFILL_ROWS rows) are bound by tensor-core throughput: the fp8 path's activation quantization (eager
torch and the fused Triton kernel), its scaled GEMM, the runtime's whole fp8 path, and cuBLAS bf16 beside it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench_kernels.architecture import preset_fields
from bench_kernels.rates import device_rates
from bench_kernels.quantization import dequantize_int4, quantize_int4
from bench_kernels.runtimes.compiled.decode_attention import decode_attention, masked_attention
from bench_kernels.runtimes.compiled.linear_ops import (
    FP8_ROWS_PREFIX,
    chosen_backends,
    decode_candidates,
    decode_product,
    dequantize_int4_weight,
    int4_words,
    kernel_time_ms,
    l2_cache_bytes,
    quantize_fp8,
    quantize_rows_fp8,
    rotated_sets,
    rotating_time_ms,
    scaled_mm_rowwise,
    triton_gemv,
    triton_quantize_rows_fp8,
)

DECODE_ROWS = (1, 8, 32, 64)
ATTENTION_CACHE_LENGTHS = (256, 2176)  # input 128 and 2048 with 128 new tokens
PREFILL_ROWS = 8192


def projection_shapes(preset: str) -> dict[str, tuple[int, int]]:
    """The fused projections of one layer as the compiled runtime stores them: name -> (N, K)."""
    fields = preset_fields(preset)
    hidden, inter = fields["hidden_size"], fields["intermediate_size"]
    heads, kv_heads = fields["num_attention_heads"], fields["num_key_value_heads"]
    head_dim = fields.get("head_dim") or hidden // heads
    return {"qkv": ((heads + 2 * kv_heads) * head_dim, hidden), "o": (hidden, heads * head_dim),
            "gate_up": (2 * inter, hidden), "down": (hidden, inter)}


def decode_kernels(weight: torch.Tensor) -> dict[str, tuple[tuple, object]]:
    """kind -> (the tensors it reads, run(x, *tensors)) for one bf16 weight [N, K]; "runtime": the kernel the
    compiled runtime chooses for that shape (timed on first use; chosen_backends, printed at the end, names it)."""
    fp8, fp8_scale = quantize_fp8(weight)
    int4 = quantize_int4(weight)
    words = int4_words(int4.packed, int4.group_size)
    return {
        "bf16 cuBLAS": ((weight,), lambda x, w: F.linear(x, w)),
        "bf16 Triton": ((weight,), lambda x, w: triton_gemv(x, w, None)),
        "fp8 GEMV": ((fp8, fp8_scale), lambda x, w, s: triton_gemv(x, w, s)),
        "fp8 _scaled_mm": ((fp8, fp8_scale), lambda x, w, s: scaled_mm_rowwise(x, w, s)),
        "fp8 runtime": ((fp8, fp8_scale), lambda x, w, s: decode_product(x, w, s)),
        "int4 runtime": ((words, int4.scales), lambda x, w, s: decode_product(x, w, s)),
    }


def check_kernels(weight: torch.Tensor, name: str) -> None:
    """The runtime's int4 and fp8 kernels against the float math of their stored weights, at every decode row count
    (each candidate it may choose: the choice is timed, not checked)."""
    int4 = quantize_int4(weight)
    words = int4_words(int4.packed, int4.group_size)
    reference = dequantize_int4(int4, torch.float32)
    if not torch.equal(dequantize_int4_weight(words, int4.scales, torch.float32), reference):
        raise AssertionError(f"the int4 dequantization kernel differs from dequantize_int4 at {name}")
    fp8, fp8_scale = quantize_fp8(weight)
    for rows in DECODE_ROWS:
        x = torch.randn(rows, weight.shape[1], device="cuda", dtype=torch.bfloat16)
        x_fp8, x_scale = quantize_rows_fp8(x)
        fused, fused_scale = triton_quantize_rows_fp8(x)
        if not (torch.equal(fused.float(), x_fp8.float()) and torch.equal(fused_scale, x_scale)):
            raise AssertionError(f"fused fp8 row quantization differs from the eager one at {name} rows {rows}")
        rounded = (x_fp8.float() * x_scale) @ fp8.float().t() * fp8_scale  # the scaled GEMM's math
        for stored, scale, expected in ((words, int4.scales, x.float() @ reference.t()),
                                        (fp8, fp8_scale, x.float() @ fp8.float().t() * fp8_scale)):
            for kernel, run in decode_candidates(x, stored, scale).items():
                rounds = stored.dtype == fp8.dtype and (kernel == "library" or kernel.startswith(FP8_ROWS_PREFIX))
                math = rounded if rounds else expected  # these round the activations to fp8 too
                error = (run(x, stored, scale).float() - math).abs().max() / math.abs().max()
                if not error <= 1e-2:
                    raise AssertionError(f"{kernel} for {stored.dtype} off by {error:.3g} (relative) at {name} rows "
                                         f"{rows}")


def decode_table(shapes: dict[str, tuple[int, int]], copy_gbps: float, layers: int) -> None:
    l2_bytes = l2_cache_bytes(torch.device("cuda"))
    print(f"decode kernels (copy bandwidth {copy_gbps:,.0f} GB/s, L2 {l2_bytes / 1e6:.1f} MB; each timing cycles "
          "through copies of the weight totalling over twice the L2): kind  weight  N x K  rows  copies  us  GB/s  "
          "share")
    step_ms: dict[tuple[str, int], float] = {}
    for name, (n, k) in shapes.items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        check_kernels(weight, name)
        for kind, (tensors, run) in decode_kernels(weight).items():
            sets = rotated_sets(tensors, l2_bytes)
            stored = sum(t.numel() * t.element_size() for t in tensors)
            for rows in DECODE_ROWS:
                x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
                ms = rotating_time_ms(lambda *t: run(x, *t), sets)
                step_ms[kind, rows] = step_ms.get((kind, rows), 0.0) + layers * ms
                gbps = (stored + x.numel() * 2 + rows * n * 2) / ms / 1e6
                print(f"{kind:14} {name:8} {n:>6} x {k:<6} {rows:>3} {len(sets):>3} {ms * 1e3:8.1f} {gbps:8.0f} "
                      f"{gbps / copy_gbps:6.2f}", flush=True)
            del sets
    print(f"decode step time of the projections ({layers} layers x {', '.join(shapes)}), ms per step; rows: "
          + " ".join(f"{rows:>7}" for rows in DECODE_ROWS))
    for kind in dict.fromkeys(kind for kind, _ in step_ms):
        print(f"{kind:14} " + " ".join(f"{step_ms[kind, rows]:7.3f}" for rows in DECODE_ROWS), flush=True)
    print("the runtime's choices (device, dtype, N, K, rows -> kernel):", chosen_backends())


def attention_table(preset: str, copy_gbps: float) -> None:
    """Decode attention at the preset's heads, three quarters into each cache length (a decode step's position on
    average): the masked matmuls the CPU runs (every slot read) and the runtime's kernel (slots up to the position),
    each checked against the fp32 math first; the bytes are the written slots' keys and values."""
    fields = preset_fields(preset)
    heads, kv_heads = fields["num_attention_heads"], fields["num_key_value_heads"]
    head_dim = fields.get("head_dim") or fields["hidden_size"] // heads
    layers, l2_bytes = fields["num_hidden_layers"], l2_cache_bytes(torch.device("cuda"))
    print(f"decode attention ({heads} query heads, {kv_heads} KV heads of {head_dim}; {layers} layers): kind  rows  "
          "cache  position  us  GB/s  share  ms per step")
    for slots in ATTENTION_CACHE_LENGTHS:
        position = torch.tensor([slots * 3 // 4], device="cuda")
        for rows in DECODE_ROWS:
            q = torch.randn(rows, heads, head_dim, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(rows, kv_heads, slots, head_dim, device="cuda", dtype=torch.bfloat16)
                    for _ in range(2))
            expected = masked_attention(q.float(), k.float(), v.float(), position)
            # The masked matmuls round the probabilities to bf16 (1.3e-2 off at 64 rows of 2,176 slots on an H200);
            # the kernel keeps them in fp32 until the product with the values.
            for kind, run, bound in (("masked matmuls", masked_attention, 3e-2),
                                     ("runtime kernel", decode_attention, 1e-2)):
                error = (run(q, k, v, position).float() - expected).abs().max() / expected.abs().max()
                if not error <= bound:
                    raise AssertionError(f"decode attention ({kind}) off by {error:.3g} at {rows} rows, {slots} slots")
                ms = rotating_time_ms(lambda kc, vc: run(q, kc, vc, position), rotated_sets((k, v), l2_bytes))
                needed = 2 * k[:, :, :int(position) + 1].numel() * k.element_size() + 2 * q.numel() * q.element_size()
                gbps = needed / ms / 1e6
                print(f"{kind:14} {rows:>3} {slots:>5} {int(position):>5} {ms * 1e3:8.1f} {gbps:8.0f} "
                      f"{gbps / copy_gbps:6.2f} {layers * ms:7.3f}", flush=True)


def _scaled_mm(rows: torch.Tensor, row_scale: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch._scaled_mm(rows, weight.t(), scale_a=row_scale, scale_b=scale[None, :], out_dtype=torch.bfloat16)


def prefill_table(shapes: dict[str, tuple[int, int]], rates: dict[str, float]) -> None:
    print(f"prefill ({PREFILL_ROWS} rows; measured bf16 {rates.get('bf16', 0):.0f}, fp8 {rates.get('fp8', 0):.0f} "
             "TFLOP/s): weight  N x K  what  us  TFLOP/s")
    for name, (n, k) in shapes.items():
        weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        fp8, fp8_scale = quantize_fp8(weight)
        int4 = quantize_int4(weight)
        words = int4_words(int4.packed, int4.group_size)
        x = torch.randn(PREFILL_ROWS, k, device="cuda", dtype=torch.bfloat16)
        fused, fused_scale = triton_quantize_rows_fp8(x)
        eager, eager_scale = quantize_rows_fp8(x)
        differ = (fused.float() != eager.float()).float().mean().item()
        if differ > 1e-6 or not torch.equal(fused_scale, eager_scale):
            raise AssertionError(f"fused fp8 row quantization differs from the eager one at {name}: {differ:.2e} of "
                                 f"values, scales equal: {torch.equal(fused_scale, eager_scale)}")
        if not torch.equal(scaled_mm_rowwise(x, fp8, fp8_scale, chunk_rows=PREFILL_ROWS // 2),
                           _scaled_mm(fused, fused_scale, fp8, fp8_scale)):
            raise AssertionError(f"the runtime's chunked fp8 GEMM differs from one _scaled_mm at {name}")
        flops = 2 * PREFILL_ROWS * n * k
        for what, run in (
            ("bf16 cuBLAS", lambda: F.linear(x, weight)),
            ("fp8 quantize rows, eager", lambda: quantize_rows_fp8(x)),
            ("fp8 quantize rows, fused", lambda: triton_quantize_rows_fp8(x)),
            ("fp8 _scaled_mm alone", lambda: _scaled_mm(fused, fused_scale, fp8, fp8_scale)),
            ("fp8 fused + _scaled_mm", lambda: _scaled_mm(*triton_quantize_rows_fp8(x), fp8, fp8_scale)),
            ("fp8 runtime path", lambda: scaled_mm_rowwise(x, fp8, fp8_scale)),
            ("int4 dequantize + cuBLAS", lambda: F.linear(x, dequantize_int4_weight(words, int4.scales,
                                                                                     torch.bfloat16))),
        ):
            ms = kernel_time_ms(run, iters=5)
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
        decode_table(shapes, device_rates("cuda").streaming_gbps, preset_fields(args.preset)["num_hidden_layers"])
        attention_table(args.preset, device_rates("cuda").streaming_gbps)
    if not args.decode_only:
        prefill_table(shapes, device_rates("cuda").matmul_tflops)


if __name__ == "__main__":
    main()
