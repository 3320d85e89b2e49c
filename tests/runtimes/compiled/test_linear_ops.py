"""The decode-kernel chooser (speed never picks a candidate whose product is wrong) and the products that take the
work before them into their kernels (Prologue: the residual add and RMSNorm, SwiGLU)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bench_kernels.runtimes.compiled.linear_ops import (CANDIDATE_MAX_ERROR, FP8_ROWS_CONFIGS, FP8_ROWS_PREFIX,
                                                        accurate_candidates, add_norm_linear, decode_candidates, linear,
                                                        quantize_fp8, relative_error, rms_norm, swiglu_linear)


def test_a_candidate_far_from_the_library_path_is_left_out():
    torch.manual_seed(0)
    rows, weight = torch.randn(4, 64), torch.randn(32, 64)
    candidates = {
        "exact": lambda r, w, s: r @ w.t(),
        "slightly off": lambda r, w, s: (r @ w.t()) * (1 + CANDIDATE_MAX_ERROR / 2),
        "wrong": lambda r, w, s: (r @ w.t()).flip(-1),
    }
    kept = accurate_candidates(candidates, rows, weight, None)
    assert list(kept) == ["exact", "slightly off"]


def test_relative_error_is_over_the_whole_product():
    reference = torch.ones(2, 8)
    assert relative_error(reference, reference) == 0.0
    assert abs(relative_error(reference * 1.5, reference) - 0.5) < 1e-6
    assert relative_error(torch.zeros(2, 8), torch.zeros(2, 8)) == 0.0


def test_fp8_weights_at_several_rows_are_also_timed_with_fp8_activations():
    """From two rows on, the fp8-rows kernel (activations rounded to fp8 per row, as the scaled GEMM rounds them)
    is a candidate in each of its launch configurations; one row keeps the weight-only GEMV."""
    pytest.importorskip("triton")
    weight, scale = quantize_fp8(torch.randn(64, 256))
    several = [name for name in decode_candidates(torch.randn(8, 256), weight, scale)
               if name.startswith(FP8_ROWS_PREFIX)]
    assert len(several) == len(FP8_ROWS_CONFIGS) and "fp8 rows 64/128/4/4" in several
    assert not any(name.startswith(FP8_ROWS_PREFIX) for name in decode_candidates(torch.randn(1, 256), weight, scale))


INTERPRETED_PROLOGUE_CHECK = """
import torch
from bench_kernels.quantization import dequantize_int4, quantize_int4
from bench_kernels.runtimes.compiled import decode_kernels
from bench_kernels.runtimes.compiled.linear_ops import (ADD_NORM, SWIGLU, Prologue, apply_prologue, int4_words,
                                                        quantize_fp8)
torch.manual_seed(0)
dtype = torch.float16
N, K = 48, 512
int4 = quantize_int4(torch.randn(N, K))
words = int4_words(int4.packed, 128)
fp8, fp8_scale = quantize_fp8(torch.randn(N, K))
fp16 = torch.randn(N, K).to(dtype)


def one_row(rows, weight, scale, prologue, block_k):  # the autotuned kernel's function, at one launch configuration
    out = torch.empty((1, N), dtype=rows.dtype)
    decode_kernels.gemv_one_row.fn[(N // 16,)](rows, weight, out if scale is None else scale, out, N, K,
                                              HAS_SCALE=scale is not None, BLOCK_N=16, BLOCK_K=block_k,
                                              **decode_kernels._prologue_args(rows, prologue))
    return out


def int4_config(split, groups_per_step):
    return {"BLOCK_N": 16, "GROUPS_PER_STEP": groups_per_step, "SPLIT_K": split}


kernels = {  # name: (run(rows, prologue, split), the dense weight, the row counts it takes)
    "int4 gemv": (lambda r, p, split: decode_kernels.int4_gemv(r, words, int4.scales, int4_config(split, 1), p),
                  dequantize_int4(int4), (1,)),
    "int4 tensor cores": (lambda r, p, split: decode_kernels.int4_matmul(r, words, int4.scales, int4_config(split, 2),
                                                                         p), dequantize_int4(int4), (1, 3)),
    # the one-row GEMV never splits K: two K blocks a program, then one
    "fp8 gemv": (lambda r, p, split: one_row(r, fp8, fp8_scale, p, 256 * split), fp8.float() * fp8_scale[:, None],
                 (1,)),
    "fp16 gemv": (lambda r, p, split: one_row(r, fp16, None, p, 256 * split), fp16.float(), (1,)),
}
worst = 0.0
for rows_count in (1, 3):
    x, delta = torch.randn(rows_count, K).to(dtype), torch.randn(rows_count, K).to(dtype)
    gate_up = torch.randn(rows_count, 2 * K).to(dtype)
    norm_weight = (torch.rand(K) + 0.5).to(dtype)
    for name, (run, dense, row_counts) in kernels.items():
        if rows_count not in row_counts:
            continue
        for split in (1, 2):
            for kind, delta_or_none in ((ADD_NORM, delta), (ADD_NORM, None), (SWIGLU, None)):
                rows = gate_up if kind == SWIGLU else x
                expected_prologue, prologue = (Prologue(kind, norm_weight, 1e-5, delta_or_none,
                                                        torch.full_like(x, float("nan"))) for _ in range(2))
                expected = apply_prologue(rows, expected_prologue).float() @ dense.t()
                out = run(rows, prologue, split)
                assert out.shape == (rows_count, N) and out.dtype == dtype, (name, out.shape, out.dtype)
                error = ((out.float() - expected).abs().max() / expected.abs().max()).item()
                assert error < 1e-2, (name, rows_count, split, kind, delta_or_none is None, error)
                worst = max(worst, error)
                if kind == ADD_NORM:  # the residual stream, written once, exactly as the torch add rounds it
                    assert torch.equal(prologue.hidden, expected_prologue.hidden), (name, rows_count, split)
                assert not decode_kernels._semaphores(x.device).any(), "a split launch left its counters set"
    # the prologue in its own launch, for the kernels timed without one: the traced ops' values, roundings included
    for kind, delta_or_none in ((ADD_NORM, delta), (ADD_NORM, None), (SWIGLU, None)):
        rows = gate_up if kind == SWIGLU else x
        expected_prologue, prologue = (Prologue(kind, norm_weight, 1e-5, delta_or_none,
                                                torch.full_like(x, float("nan"))) for _ in range(2))
        expected = apply_prologue(rows, expected_prologue)
        made = decode_kernels.prologue_rows(rows, prologue, K)
        torch.testing.assert_close(made, expected, rtol=2e-3, atol=2e-3)
        if kind == ADD_NORM:
            assert torch.equal(prologue.hidden, expected_prologue.hidden), ("prologue_rows", rows_count)
long_gate_up = torch.randn(2, 2 * 2600).to(dtype)  # SwiGLU's launch splits the channels: three blocks, the last short
torch.testing.assert_close(decode_kernels.prologue_rows(long_gate_up, Prologue(SWIGLU), 2600),
                           apply_prologue(long_gate_up, Prologue(SWIGLU)), rtol=2e-3, atol=2e-3)
print("ok", worst)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_kernels_with_a_prologue_match_the_torch_ops_they_replace():
    """Run by Triton's interpreter (a fresh process: TRITON_INTERPRET is read at import): the int4 CUDA-core GEMV,
    the int4 tensor-core kernel (one row and three), and the fp8 and fp16 one-row GEMVs, each with the residual add
    and RMSNorm (with and without a delta) and with SwiGLU before its weights, unsplit and with K split two ways
    (whose last program sums the rows' squares too), against the prologue in torch ops times the dense weight; the
    residual stream each writes equals torch's add; and the prologue's own launch (prologue_rows), which the kernels
    are also timed after, against the torch ops. fp16, as the interpreter's dot mishandles bf16 on the CPU."""
    done = subprocess.run([sys.executable, "-c", INTERPRETED_PROLOGUE_CHECK], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


def test_the_prologue_ops_are_the_torch_ops_they_replace_on_the_cpu():
    torch.manual_seed(0)
    x, delta = torch.randn(2, 1, 64), torch.randn(2, 1, 64)
    norm_weight, weight = torch.rand(64) + 0.5, torch.randn(32, 64)
    out, hidden = add_norm_linear(x, delta, norm_weight, 1e-5, weight, None)
    assert torch.equal(hidden, x + delta)
    torch.testing.assert_close(out, linear(rms_norm(x + delta, norm_weight, 1e-5), weight, None))
    alone, same = add_norm_linear(x, None, norm_weight, 1e-5, weight, None)
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()
    torch.testing.assert_close(alone, linear(rms_norm(x, norm_weight, 1e-5), weight, None))
    gate_up, down = torch.randn(2, 1, 128), torch.randn(16, 64)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(swiglu_linear(gate_up, down, None), linear(F.silu(gate) * up, down, None))
    torch.library.opcheck(add_norm_linear, (x, delta, norm_weight, 1e-5, weight, None))
    torch.library.opcheck(swiglu_linear, (gate_up, down, None))
