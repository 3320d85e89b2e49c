"""Weight-streaming Triton kernels for decode-sized products (1-64 activation rows): int4 weights as
linear_ops.int4_words lays them out (int32 words of eight codes, group scales) and fp8 e4m3 weights with per-channel
scales, each read once as stored.

The tensor-core kernels put the weight tile first in a dot (out^T = W x^T: BLOCK_N weight rows against at least 16
activation rows, the rows past M masked to zero), so one kernel serves 1 to 64 rows with the dot's cost hidden under
the weight reads. For one row, the int4 GEMV multiplies on CUDA cores instead. When a shape has too few output tiles
to keep every multiprocessor streaming, K is split over SPLIT_K programs: each writes its fp32 partial to a
workspace and the last of them to finish (counted on a per-device semaphore, reset after use) adds the partials in a
fixed order and writes the output, so a split product is deterministic and needs no second launch.

int4: nibble p of each word in a group multiplies one contiguous slice of the activations, so the tensor-core
kernel makes one dot of K = GROUP / 8 per nibble position, its operand converted in registers straight from the
loaded words (PTX: two words' nibble p in the two 16-bit lanes of one register, each ORed into the mantissa of 128
(bf16) or 1024 (fp16), exact, then one fused multiply-add subtracts the offset; 1.5 instructions per weight and no
byte shuffles, where bench_kernels.quantization's byte layout cost about two more). Group scales multiply each
group's fp32 dot, so the math is the dequantized weight's: codes times scales in fp32. Triton's interpreter (the CPU
tests) runs the same kernels with the nibbles converted by integer ops instead of the PTX.

fp8: the weight-only kernel widens each weight tile to the activations' dtype; the fp8-rows kernel takes activations
already rounded to fp8 per row (the scaled GEMM's math, torch._scaled_mm with row scales) and multiplies both as
stored on fp8 tensor cores. This module needs triton: the runtime imports it only where triton is there.
"""

from __future__ import annotations

import os
from functools import cache

import torch
import triton
import triton.language as tl

from bench_kernels.runtimes.compiled import linear_ops
from bench_kernels.runtimes.compiled.linear_ops import Prologue

MAX_ROWS = 64  # beyond this many activation rows a product is compute-bound (cuBLAS / _scaled_mm)
SEMAPHORE_SLOTS = 1 << 16  # output tiles a split launch may count at once (57,344 / 16 = 3,584 at the largest)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@cache
def _semaphores(device: torch.device) -> torch.Tensor:
    """Per-device int32 counters, zero between launches: each split launch's last program resets its tiles'."""
    return torch.zeros(SEMAPHORE_SLOTS, dtype=torch.int32, device=device)


def _codes_asm(magic: str, one: str, offset: str, fma: str) -> str:
    # Bytes b of the two words side by side (prmt), the low and high nibble of each masked into the mantissa of
    # magic (lop3), then the offset subtracted (fma): output 2b is nibble 2b of both words, output 2b + 1 nibble 2b+1.
    lines = [".reg .b32 t<4>, u<4>, one, off;", f"mov.b32 one, {one};", f"mov.b32 off, {offset};"]
    for b in range(4):
        lines += [f"prmt.b32 t{b}, $8, $9, 0x{4 + b}{4 + b}{b}{b};", f"shr.b32 u{b}, t{b}, 4;",
                  f"lop3.b32 t{b}, t{b}, 0x000F000F, {magic}, 0xEA;",
                  f"lop3.b32 u{b}, u{b}, 0x000F000F, {magic}, 0xEA;",
                  f"{fma} ${2 * b}, t{b}, one, off;", f"{fma} ${2 * b + 1}, u{b}, one, off;"]
    return "{\n" + "\n".join(lines) + "\n}"


CODES_BF16_ASM = tl.constexpr(_codes_asm("0x43004300", "0x3F803F80", "0xC308C308", "fma.rn.bf16x2"))  # 128, 1, -136
CODES_FP16_ASM = tl.constexpr(_codes_asm("0x64006400", "0x3C003C00", "0xE408E408", "fma.rn.f16x2"))  # 1024, 1, -1032


@triton.jit
def codes_ptx(words, IS_BF16: tl.constexpr):
    # int32 words [..] -> the eight codes - 8 of each word in bf16 or fp16, two words per asm instance, so that output
    # p holds nibble p of both in one register, as a tensor-core operand takes them: each nibble ORed into the
    # mantissa of 128 (bf16) or 1024 (fp16), exact, then one fused multiply-add subtracts the offset (1.5
    # instructions per weight).
    if IS_BF16:
        return tl.inline_asm_elementwise(
            CODES_BF16_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [words],
            dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16,
                   tl.bfloat16), is_pure=True, pack=2)
    else:
        return tl.inline_asm_elementwise(
            CODES_FP16_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [words],
            dtype=(tl.float16, tl.float16, tl.float16, tl.float16, tl.float16, tl.float16, tl.float16, tl.float16),
            is_pure=True, pack=2)

@triton.jit
def codes_of(words, dtype: tl.constexpr, PTX: tl.constexpr):
    # The eight codes - 8 of each int32 word (nibble p: bits 4p..4p+3) in dtype.
    if PTX:
        c0, c1, c2, c3, c4, c5, c6, c7 = codes_ptx(words, dtype == tl.bfloat16)
    else:
        c0 = ((words & 0xF) - 8).to(dtype)
        c1 = (((words >> 4) & 0xF) - 8).to(dtype)
        c2 = (((words >> 8) & 0xF) - 8).to(dtype)
        c3 = (((words >> 12) & 0xF) - 8).to(dtype)
        c4 = (((words >> 16) & 0xF) - 8).to(dtype)
        c5 = (((words >> 20) & 0xF) - 8).to(dtype)
        c6 = (((words >> 24) & 0xF) - 8).to(dtype)
        c7 = (((words >> 28) & 0xF) - 8).to(dtype)
    return c0, c1, c2, c3, c4, c5, c6, c7

ADD_NORM = tl.constexpr(linear_ops.ADD_NORM)
SWIGLU = tl.constexpr(linear_ops.SWIGLU)

@triton.jit
def residual(x_ptr, d_ptr, at, mask, HAS_DELTA: tl.constexpr):
    # x + delta at `at`, rounded to the stream's dtype as torch's add rounds it
    hidden = tl.load(x_ptr + at, mask=mask, other=0.0)
    if HAS_DELTA:
        delta = tl.load(d_ptr + at, mask=mask, other=0.0)
        hidden = (hidden.to(tl.float32) + delta.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return hidden

@triton.jit
def load_input(x_ptr, d_ptr, g_ptr, h_ptr, row, k, mask, K, PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr):
    # The product's input at `row`, channels k, in fp32, and the squares the norm sums (zero without ADD_NORM). With
    # ADD_NORM the input is (x + delta) * norm weight, whose row's 1 / rms multiplies the finished product (one scalar
    # a row), so no pass over the row precedes the weights (store_hidden writes x + delta after them).
    if PROLOGUE == SWIGLU:
        gate = tl.load(x_ptr + row * 2 * K + k, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + row * 2 * K + K + k, mask=mask, other=0.0).to(tl.float32)
        # rounded once to the activations' dtype, as the traced silu(gate) * up is
        value = (gate * tl.sigmoid(gate) * up).to(x_ptr.dtype.element_ty).to(tl.float32)
        squares = tl.zeros_like(value)
    elif PROLOGUE == ADD_NORM:
        value = residual(x_ptr, d_ptr, row * K + k, mask, HAS_DELTA).to(tl.float32)
        squares = value * value
        value = value * tl.load(g_ptr + k, mask=mask, other=0.0).to(tl.float32)
    else:
        value = tl.load(x_ptr + row * K + k, mask=mask, other=0.0).to(tl.float32)
        squares = tl.zeros_like(value)
    return value, squares

@triton.jit
def store_hidden(x_ptr, d_ptr, h_ptr, rows, rows_ok, K, HAS_DELTA: tl.constexpr):
    # ADD_NORM's residual stream x + delta of `rows`, written by one program after its weights: a store inside the
    # weight loop would keep the compiler from running loads ahead of it.
    for k0 in range(0, K, 256):
        k = k0 + tl.arange(0, 256)
        at = rows[:, None] * K + k[None, :]
        mask = rows_ok[:, None] & (k < K)[None, :]
        tl.store(h_ptr + at, residual(x_ptr, d_ptr, at, mask, HAS_DELTA), mask=mask)

@triton.jit
def row_norm(squares, K, eps):
    # 1 / rms of rows whose squares sum to `squares`, as the traced RMSNorm computes it
    return 1.0 / tl.sqrt(squares / K + eps)

@triton.jit
def store_tile(acc, y_ptr, work_ptr, count_ptr, offs_n, offs_m, M, N, SPLIT_K: tl.constexpr, squares, K, eps,
               NORM: tl.constexpr):
    # acc [BLOCK_N, BLOCK_M] fp32 -> y [M, N]; with SPLIT_K > 1 the last split program of the tile sums them. NORM:
    # squares [BLOCK_M] are this program's part of each row's sum of squares; 1 / rms of the whole row scales it.
    ok = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    where = offs_m[None, :] * N + offs_n[:, None]
    if SPLIT_K == 1:
        if NORM:
            acc = acc * row_norm(squares, K, eps)[None, :]
        tl.store(y_ptr + where, acc.to(y_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(work_ptr + tl.program_id(2) * M * N + where, acc, mask=ok)
        if NORM:  # every tile's program of a split writes the same sums
            tl.store(work_ptr + SPLIT_K * M * N + tl.program_id(2) * M + offs_m, squares, mask=offs_m < M)
        tl.debug_barrier()  # every thread's partial is written before the count (acq_rel) releases them
        tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        if tl.atomic_add(count_ptr + tile, 1) == SPLIT_K - 1:
            total = tl.zeros(acc.shape, dtype=tl.float32)
            row_squares = tl.zeros(squares.shape, dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(work_ptr + s * M * N + where, mask=ok, other=0.0, cache_modifier=".cg")
                if NORM:
                    row_squares += tl.load(work_ptr + SPLIT_K * M * N + s * M + offs_m, mask=offs_m < M, other=0.0,
                                           cache_modifier=".cg")
            if NORM:
                total = total * row_norm(row_squares, K, eps)[None, :]
            tl.store(y_ptr + where, total.to(y_ptr.dtype.element_ty), mask=ok)
            tl.atomic_xchg(count_ptr + tile, 0)

@triton.jit
def nibble_dot(codes, p: tl.constexpr, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
               WORDS: tl.constexpr, PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr):
    # part += codes [BLOCK_N, WORDS] @ the slice of x [WORDS, BLOCK_M] nibble p multiplies (load_input); squares
    # [BLOCK_M] gathers the slice's squares.
    x, x_squares = load_input(x_ptr, d_ptr, g_ptr, h_ptr, offs_m[None, :], at + p * WORDS, m_ok[None, :], K,
                              PROLOGUE, HAS_DELTA)
    return tl.dot(codes, x.to(codes.dtype), part), squares + tl.sum(x_squares, axis=0)

@triton.jit
def int4_matmul_kernel(x_ptr, words_ptr, scale_ptr, y_ptr, work_ptr, count_ptr, M, N, K, d_ptr, g_ptr, h_ptr, eps,
                       GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       GROUPS_PER_STEP: tl.constexpr, SPLIT_K: tl.constexpr, PTX: tl.constexpr,
                       PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr):
    # y [M, N] = x [M, K] @ W^T, W [N, K] = (codes - 8) * scales: int32 words [N, K / 8] in linear_ops.int4_words'
    # layout (nibble p of word t in a group: channel p * GROUP / 8 + t), scales [N, K / GROUP]. Each nibble position
    # is one dot of K = GROUP / 8 against a contiguous slice of x (load_input: x as it is, or its prologue). A step
    # reads GROUPS_PER_STEP groups, adjacent in each row: 64 bytes a row per group alone read at half the bandwidth.
    WORDS: tl.constexpr = GROUP // 8
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_t = tl.arange(0, WORDS)
    n_ok, m_ok = offs_n < N, offs_m < M
    groups = K // GROUP
    steps = groups // GROUPS_PER_STEP
    per_split = tl.cdiv(steps, SPLIT_K)
    s_start = tl.program_id(2) * per_split
    s_end = tl.minimum(s_start + per_split, steps)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
    dtype = x_ptr.dtype.element_ty
    for s in range(s_start, s_end):
        for i in tl.static_range(GROUPS_PER_STEP):
            g = s * GROUPS_PER_STEP + i
            words = tl.load(words_ptr + offs_n[:, None] * (K // 8) + g * WORDS + offs_t[None, :],
                            mask=n_ok[:, None], other=0)
            c0, c1, c2, c3, c4, c5, c6, c7 = codes_of(words, dtype, PTX)
            at = g * GROUP + offs_t[:, None]  # [WORDS, 1]: nibble 0's channels
            part, squares = nibble_dot(c0, 0, tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), squares, x_ptr, d_ptr,
                                       g_ptr, h_ptr, offs_m, m_ok, at, K, WORDS, PROLOGUE, HAS_DELTA)
            part, squares = nibble_dot(c1, 1, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
                                       WORDS, PROLOGUE, HAS_DELTA)
            part, squares = nibble_dot(c2, 2, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
                                       WORDS, PROLOGUE, HAS_DELTA)
            part, squares = nibble_dot(c3, 3, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
                                       WORDS, PROLOGUE, HAS_DELTA)
            part, squares = nibble_dot(c4, 4, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
                                       WORDS, PROLOGUE, HAS_DELTA)
            part, squares = nibble_dot(c5, 5, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
                                       WORDS, PROLOGUE, HAS_DELTA)
            part, squares = nibble_dot(c6, 6, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
                                       WORDS, PROLOGUE, HAS_DELTA)
            part, squares = nibble_dot(c7, 7, part, squares, x_ptr, d_ptr, g_ptr, h_ptr, offs_m, m_ok, at, K,
                                       WORDS, PROLOGUE, HAS_DELTA)
            acc += part * tl.load(scale_ptr + offs_n * groups + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    if PROLOGUE == ADD_NORM:
        if (tl.program_id(0) == 0) & (tl.program_id(2) == 0):
            store_hidden(x_ptr, d_ptr, h_ptr, offs_m, m_ok, K, HAS_DELTA)
    store_tile(acc, y_ptr, work_ptr, count_ptr, offs_n, offs_m, M, N, SPLIT_K, squares, K, eps,
               PROLOGUE == ADD_NORM)

@triton.jit
def code_at(words, nibble, SHIFT: tl.constexpr):
    # int32 words -> (the 4-bit code at bit SHIFT) - 8 as fp32, for SHIFT <= 16: the code ORed into the mantissa of
    # 2^(23 - SHIFT), whose last place is then 1, and that power of two plus 8 subtracted (one LOP3, one FADD; exact).
    magic = ((words & (nibble << SHIFT)) | ((150 - SHIFT) << 23)).to(tl.float32, bitcast=True)
    return magic - (2.0 ** (23 - SHIFT) + 8.0)

@triton.jit
def group_gemv(words_ptr, x_ptr, scale_ptr, offs_n, n_ok, offs_t, row, g, nibble, K, d_ptr, g_ptr, h_ptr,
               GROUP: tl.constexpr, PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr):
    # One group of int4_gemv_kernel's rows: each code times its activation in fp32, the sum times the group's scale;
    # and the squares of the group's activations (load_input).
    WORDS: tl.constexpr = GROUP // 8
    words = tl.load(words_ptr + offs_n[:, None] * (K // 8) + g * WORDS + offs_t[None, :], mask=n_ok[:, None], other=0)
    high = words >> 12  # nibbles 5, 6, 7 (bits 20, 24, 28) moved to bits 8, 12, 16, where code_at reads them
    at = g * GROUP + offs_t  # [WORDS]: the slice of nibble 0
    ok = offs_t < WORDS
    x, squares = load_input(x_ptr, d_ptr, g_ptr, h_ptr, row, at, ok, K, PROLOGUE, HAS_DELTA)
    part = code_at(words, nibble, 0) * x[None, :]
    for p in tl.static_range(1, 8):
        x, x_squares = load_input(x_ptr, d_ptr, g_ptr, h_ptr, row, at + p * WORDS, ok, K, PROLOGUE,
                                  HAS_DELTA)
        squares += x_squares
        if p < 5:
            part += code_at(words, nibble, 4 * p) * x[None, :]
        else:
            part += code_at(high, nibble, 4 * p - 12) * x[None, :]
    scale = tl.load(scale_ptr + offs_n * (K // GROUP) + g, mask=n_ok, other=0.0).to(tl.float32)
    return part * scale[:, None], squares

@triton.jit
def int4_gemv_kernel(x_ptr, words_ptr, scale_ptr, y_ptr, work_ptr, count_ptr, M, N, K, nibble, d_ptr, g_ptr, h_ptr,
                     eps, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_STEP: tl.constexpr,
                     SPLIT_K: tl.constexpr, PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr):
    # int4_matmul_kernel's product on CUDA cores, one activation row per program (axis 1), with no dot and no shared
    # memory between load and FMA. nibble (0xF) comes as an argument, not a constant, so ptxas keeps the masks in
    # registers instead of rematerialising one before each LOP3 (0.8 instructions per weight of some four).
    WORDS: tl.constexpr = GROUP // 8
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row = tl.program_id(1)
    offs_t = tl.arange(0, WORDS)
    n_ok = offs_n < N
    steps = K // GROUP // GROUPS_PER_STEP
    per_split = tl.cdiv(steps, SPLIT_K)
    s_start = tl.program_id(2) * per_split
    s_end = tl.minimum(s_start + per_split, steps)
    acc = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
    squares = tl.zeros((WORDS,), dtype=tl.float32)
    for s in range(s_start, s_end):
        for i in tl.static_range(GROUPS_PER_STEP):
            part, part_squares = group_gemv(words_ptr, x_ptr, scale_ptr, offs_n, n_ok, offs_t, row,
                                            s * GROUPS_PER_STEP + i, nibble, K, d_ptr, g_ptr, h_ptr, GROUP,
                                            PROLOGUE, HAS_DELTA)
            acc += part
            squares += part_squares
    total = tl.sum(acc, axis=1)[:, None]  # [BLOCK_N, 1]
    if PROLOGUE == ADD_NORM:
        if (tl.program_id(0) == 0) & (tl.program_id(2) == 0):
            store_hidden(x_ptr, d_ptr, h_ptr, row + tl.arange(0, 1), row + tl.arange(0, 1) < M, K, HAS_DELTA)
    store_tile(total, y_ptr, work_ptr, count_ptr, offs_n, row + tl.arange(0, 1), M, N, SPLIT_K,
               tl.sum(squares[None, :], axis=1), K, eps, PROLOGUE == ADD_NORM)

@triton.autotune(configs=linear_ops.gemv_configs(triton, (8, 16, 32), (256, 512)),
                 key=["N", "K", "PROLOGUE", "HAS_DELTA"], **linear_ops._autotune_timing(triton))
@triton.jit
def gemv_one_row(x_ptr, w_ptr, scale_ptr, y_ptr, N, K, d_ptr, g_ptr, h_ptr, eps, HAS_SCALE: tl.constexpr,
                 PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # y[n] = scale[n] * sum_k w[n, k] * x[k] (x: the row, or its prologue: load_input); each
    # program owns BLOCK_N output channels. Products accumulate elementwise and are reduced across K once, after
    # the loop (no shuffles per block).
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        x, x_squares = load_input(x_ptr, d_ptr, g_ptr, h_ptr, 0, offs_k, k_ok, K, PROLOGUE, HAS_DELTA)
        acc += w.to(tl.float32) * x[None, :]
        squares += x_squares
    y = tl.sum(acc, axis=1)
    if PROLOGUE == ADD_NORM:
        y = y * row_norm(tl.sum(squares, axis=0), K, eps)
        if tl.program_id(0) == 0:
            store_hidden(x_ptr, d_ptr, h_ptr, tl.arange(0, 1), tl.arange(0, 1) < 1, K, HAS_DELTA)
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)

@triton.jit
def prologue_kernel(x_ptr, d_ptr, g_ptr, h_ptr, out_ptr, K, eps, PROLOGUE: tl.constexpr, HAS_DELTA: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    # A prologue alone, for the kernels that take none: out [M, K] is the product's input, as the traced torch ops
    # round it (silu(gate) * up, BLOCK_K channels a program; the RMSNorm of x + delta times the norm weight, a row a
    # program).
    row = tl.program_id(0)
    dtype = out_ptr.dtype.element_ty
    if PROLOGUE == SWIGLU:
        k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        value, _ = load_input(x_ptr, d_ptr, g_ptr, h_ptr, row, k, k < K, K, PROLOGUE, HAS_DELTA)
        tl.store(out_ptr + row * K + k, value.to(dtype), mask=k < K)
    else:
        squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            _, k_squares = load_input(x_ptr, d_ptr, g_ptr, h_ptr, row, k, k < K, K, PROLOGUE, HAS_DELTA)
            squares += k_squares
        scale = row_norm(tl.sum(squares, axis=0), K, eps)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            hidden = residual(x_ptr, d_ptr, row * K + k, k < K, HAS_DELTA)
            tl.store(h_ptr + row * K + k, hidden, mask=k < K)
            normed = (hidden.to(tl.float32) * scale).to(dtype).to(tl.float32)
            weight = tl.load(g_ptr + k, mask=k < K, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * K + k, (normed * weight).to(dtype), mask=k < K)

@triton.jit
def fp8_matmul_kernel(x_ptr, w_ptr, scale_ptr, y_ptr, work_ptr, count_ptr, M, N, K, x_scale_ptr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                      ROUNDED_ROWS: tl.constexpr, UPCAST: tl.constexpr):
    # y [M, N] = (x [M, K] @ w^T) * scale [N], w fp8 e4m3 [N, K]. Weight-only: the weight tile widened to x's dtype
    # in registers. ROUNDED_ROWS: x is fp8 e4m3 too (rounded per row, x_scale [M]), both multiplied as stored on fp8
    # tensor cores; UPCAST (Triton's interpreter, which has no fp8 dot) widens both to fp32 first, where the product
    # of two e4m3 values is exact, so the indexing, scales and split are the same.
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok, m_ok = offs_n < N, offs_m < M
    per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_start = tl.program_id(2) * per_split
    k_end = tl.minimum(k_start + per_split, K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k_ok = k0 + offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * K + k0 + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0)
        x = tl.load(x_ptr + offs_m[None, :] * K + k0 + offs_k[:, None], mask=m_ok[None, :] & k_ok[:, None],
                    other=0.0)
        if not ROUNDED_ROWS:
            acc += tl.dot(w.to(x_ptr.dtype.element_ty), x)
        elif UPCAST:
            acc += tl.dot(w.to(tl.float32), x.to(tl.float32))
        else:
            acc += tl.dot(w, x)
    acc = acc * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
    if ROUNDED_ROWS:
        acc = acc * tl.load(x_scale_ptr + offs_m, mask=m_ok, other=0.0)[None, :]
    store_tile(acc, y_ptr, work_ptr, count_ptr, offs_n, offs_m, M, N, SPLIT_K, tl.zeros((BLOCK_M,), tl.float32), K, 0.0,
               False)


def block_m(rows: int) -> int:
    """The dot's row tile for this many activation rows: a power of two from 16 (the smallest dot) to 64."""
    return max(16, min(MAX_ROWS, 1 << (rows - 1).bit_length()))


def _prologue_args(rows: torch.Tensor, prologue: Prologue | None) -> dict:
    """load_input's arguments for a prologue (None: the rows as they are; unused pointers point at the rows)."""
    if prologue is None:
        return {"d_ptr": rows, "g_ptr": rows, "h_ptr": rows, "eps": 0.0, "PROLOGUE": linear_ops.NO_PROLOGUE,
                "HAS_DELTA": False}
    return {"d_ptr": rows if prologue.delta is None else prologue.delta.contiguous(),
            "g_ptr": rows if prologue.norm_weight is None else prologue.norm_weight,
            "h_ptr": rows if prologue.hidden is None else prologue.hidden, "eps": prologue.eps,
            "PROLOGUE": prologue.kind, "HAS_DELTA": prologue.delta is not None}


def _launch(kernel, rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, n: int, k: int,
            config: dict, row_tile: int, out_dtype: torch.dtype | None = None, **constants) -> torch.Tensor:
    m = rows.shape[0]
    rows = rows.contiguous()
    out = torch.empty((m, n), dtype=out_dtype or rows.dtype, device=rows.device)
    split = config.get("SPLIT_K", 1)
    grid = (triton.cdiv(n, config["BLOCK_N"]), triton.cdiv(m, row_tile), split)
    if grid[0] * grid[1] > SEMAPHORE_SLOTS:
        raise ValueError(f"{grid[0] * grid[1]} output tiles exceed the split-K semaphore's {SEMAPHORE_SLOTS}")
    # split partials of the product, then (an RMSNorm prologue) of each row's sum of squares
    norm = constants.get("PROLOGUE") == linear_ops.ADD_NORM
    work = torch.empty(split * m * (n + norm) if split > 1 else 1, dtype=torch.float32, device=rows.device)
    launch = {key: value for key, value in config.items() if key not in ("num_warps", "num_stages")}
    kernel[grid](rows, weight, scale, out, work, _semaphores(rows.device), m, n, k, **launch, **constants,
                 num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3))
    return out


def _check_steps(group: int, groups: int, config: dict) -> None:
    if groups % config["GROUPS_PER_STEP"]:
        raise ValueError(f"GROUPS_PER_STEP {config['GROUPS_PER_STEP']} does not divide the {groups} groups of "
                         f"{group} channels")


def prologue_rows(rows: torch.Tensor, prologue: Prologue, k: int) -> torch.Tensor:
    """The product's input [M, k] that the prologue makes of rows ([M, k], or [M, 2k] for SWIGLU), in one launch
    (writing the residual stream for ADD_NORM): what a kernel without the prologue multiplies."""
    rows = rows.contiguous()
    out = torch.empty((rows.shape[0], k), dtype=rows.dtype, device=rows.device)
    block = 1024
    blocks = triton.cdiv(k, block) if prologue.kind == linear_ops.SWIGLU else 1
    prologue_kernel[(rows.shape[0], blocks)](rows, out_ptr=out, K=k, BLOCK_K=block, num_warps=4,
                                             **_prologue_args(rows, prologue))
    return out


def int4_matmul(rows: torch.Tensor, words: torch.Tensor, scales: torch.Tensor, config: dict,
                prologue: Prologue | None = None) -> torch.Tensor:
    """rows [M <= 64, K] (bf16/fp16; [M, 2K] for SWIGLU) @ the int4 weight [N, K]^T (int32 words,
    linear_ops.int4_words) on tensor cores, with one launch configuration: BLOCK_N, GROUPS_PER_STEP (dividing the
    groups of a row), SPLIT_K, num_warps, num_stages; the prologue (linear_ops.Prologue) applied to the rows as they
    are read. The group size is 128 or more (a dot's K, GROUP / 8, is at least 16)."""
    n, k = words.shape[0], words.shape[1] * 8
    _check_steps(k // scales.shape[1], scales.shape[1], config)
    tile_m = block_m(rows.shape[0])
    return _launch(int4_matmul_kernel, rows, words, scales, n, k, config, tile_m, BLOCK_M=tile_m,
                   GROUP=k // scales.shape[1], PTX=not interpreted(), **_prologue_args(rows, prologue))


def int4_gemv(rows: torch.Tensor, words: torch.Tensor, scales: torch.Tensor, config: dict,
              prologue: Prologue | None = None) -> torch.Tensor:
    """rows [M, K] (bf16/fp16; [M, 2K] for SWIGLU; meant for one row: each row reads the weight again) @ the int4
    weight [N, K]^T (int32 words, linear_ops.int4_words) on CUDA cores, with one launch configuration: BLOCK_N,
    GROUPS_PER_STEP (dividing the groups of a row), SPLIT_K, num_warps, num_stages; the prologue applied as the rows
    are read."""
    n, k = words.shape[0], words.shape[1] * 8
    _check_steps(k // scales.shape[1], scales.shape[1], config)
    return _launch(int4_gemv_kernel, rows, words, scales, n, k, config, 1, nibble=0xF, GROUP=k // scales.shape[1],
                   **_prologue_args(rows, prologue))


def fp8_matmul(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, config: dict) -> torch.Tensor:
    """rows [M <= 64, K] (bf16/fp16) @ (fp8 weight [N, K] * scale [N, 1])^T with one launch configuration:
    BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages."""
    tile_m = block_m(rows.shape[0])
    return _launch(fp8_matmul_kernel, rows, weight, scale, weight.shape[0], weight.shape[1], config, tile_m,
                   x_scale_ptr=scale, BLOCK_M=tile_m, ROUNDED_ROWS=False, UPCAST=False)  # x_scale: never read


def fp8_rows_matmul(rows_fp8: torch.Tensor, row_scale: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                    config: dict, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Activations rounded to fp8 per row (rows_fp8 [M <= 64, K] e4m3, row_scale [M, 1] fp32: linear_ops'
    quantize_rows_fp8) @ (fp8 weight [N, K] * scale [N])^T, out_dtype out: the math of the scaled GEMM
    (torch._scaled_mm with row scales) with one launch configuration: BLOCK_N, BLOCK_K, SPLIT_K, num_warps."""
    tile_m = block_m(rows_fp8.shape[0])
    return _launch(fp8_matmul_kernel, rows_fp8, weight, scale, weight.shape[0], weight.shape[1], config, tile_m,
                   out_dtype, x_scale_ptr=row_scale.contiguous(), BLOCK_M=tile_m, ROUNDED_ROWS=True,
                   UPCAST=interpreted())
