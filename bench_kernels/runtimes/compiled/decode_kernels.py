"""Weight-streaming Triton kernels for decode-sized products (1-64 activation rows): int4 weights in
bench_kernels.quantization's layout and fp8 e4m3 weights with per-channel scales, each read once as stored.

Both kernels put the weight tile first in a tensor-core dot (out^T = W x^T: BLOCK_N weight rows against at least
16 activation rows, the rows past M masked to zero), so one kernel serves 1 to 64 rows with the dot's cost hidden
under the weight reads. When a shape has too few output tiles to keep every multiprocessor streaming, K is split
over SPLIT_K programs: each writes its fp32 partial to a workspace and the last of them to finish (counted on a
per-device semaphore, reset after use) adds the partials in a fixed order and writes the output, so a split
product is deterministic and needs no second launch.

int4 codes become dot operands in two 16-bit lanes per instruction (PTX: each nibble ORed into the mantissa of
128 (bf16) or 1024 (fp16), exact, then one fused multiply-add subtracts the offset): 1.5 instructions per weight,
where a conversion through fp32 costs four and bounded the earlier kernel. Group scales multiply each group's fp32
dot, so the math is the dequantized weight's: codes times scales in fp32. Triton's interpreter (the CPU tests)
runs the same kernels with the nibbles converted through fp32 instead of the PTX. This module needs triton: the
runtime imports it only where triton is there.
"""

from __future__ import annotations

import os
from functools import cache

import torch
import triton
import triton.language as tl

MAX_ROWS = 64  # beyond this many activation rows a product is compute-bound (cuBLAS / _scaled_mm)
SEMAPHORE_SLOTS = 1 << 16  # output tiles a split launch may count at once (57,344 / 16 = 3,584 at the largest)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@cache
def _semaphores(device: torch.device) -> torch.Tensor:
    """Per-device int32 counters, zero between launches: each split launch's last program resets its tiles'."""
    return torch.zeros(SEMAPHORE_SLOTS, dtype=torch.int32, device=device)


@triton.jit
def nibbles_ptx(packed, IS_BF16: tl.constexpr):
    # uint8 [..] -> (low nibble - 8, high nibble - 8) in bf16 or fp16, four bytes per asm instance.
    if IS_BF16:
        low, high = tl.inline_asm_elementwise(
            """{
            .reg .b32 z, a, b, c, d, one, off;
            mov.b32 z, 0;
            mov.b32 one, 0x3F803F80;
            mov.b32 off, 0xC308C308;
            prmt.b32 a, $4, z, 0x5140;
            prmt.b32 b, $4, z, 0x5342;
            shr.b32 c, a, 4;
            shr.b32 d, b, 4;
            lop3.b32 a, a, 0x000F000F, 0x43004300, 0xEA;
            lop3.b32 b, b, 0x000F000F, 0x43004300, 0xEA;
            lop3.b32 c, c, 0x000F000F, 0x43004300, 0xEA;
            lop3.b32 d, d, 0x000F000F, 0x43004300, 0xEA;
            fma.rn.bf16x2 $0, a, one, off;
            fma.rn.bf16x2 $1, b, one, off;
            fma.rn.bf16x2 $2, c, one, off;
            fma.rn.bf16x2 $3, d, one, off;
            }""",
            "=r,=r,=r,=r,r", [packed], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        low, high = tl.inline_asm_elementwise(
            """{
            .reg .b32 z, a, b, c, d, one, off;
            mov.b32 z, 0;
            mov.b32 one, 0x3C003C00;
            mov.b32 off, 0xE408E408;
            prmt.b32 a, $4, z, 0x5140;
            prmt.b32 b, $4, z, 0x5342;
            shr.b32 c, a, 4;
            shr.b32 d, b, 4;
            lop3.b32 a, a, 0x000F000F, 0x64006400, 0xEA;
            lop3.b32 b, b, 0x000F000F, 0x64006400, 0xEA;
            lop3.b32 c, c, 0x000F000F, 0x64006400, 0xEA;
            lop3.b32 d, d, 0x000F000F, 0x64006400, 0xEA;
            fma.rn.f16x2 $0, a, one, off;
            fma.rn.f16x2 $1, b, one, off;
            fma.rn.f16x2 $2, c, one, off;
            fma.rn.f16x2 $3, d, one, off;
            }""",
            "=r,=r,=r,=r,r", [packed], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    return low, high

@triton.jit
def nibbles(packed, dtype: tl.constexpr, PTX: tl.constexpr):
    if PTX:
        low, high = nibbles_ptx(packed, dtype == tl.bfloat16)
    else:
        p = packed.to(tl.int32)
        low = (((p & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0).to(dtype)
        high = (((p >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0).to(dtype)
    return low, high

@triton.jit
def store_tile(acc, y_ptr, work_ptr, count_ptr, offs_n, offs_m, M, N, SPLIT_K: tl.constexpr):
    # acc [BLOCK_N, BLOCK_M] fp32 -> y [M, N]; with SPLIT_K > 1 the last split program of the tile sums them.
    ok = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    where = offs_m[None, :] * N + offs_n[:, None]
    if SPLIT_K == 1:
        tl.store(y_ptr + where, acc.to(y_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(work_ptr + tl.program_id(2) * M * N + where, acc, mask=ok)
        tl.debug_barrier()  # every thread's partial is written before the count (acq_rel) releases them
        tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        if tl.atomic_add(count_ptr + tile, 1) == SPLIT_K - 1:
            total = tl.zeros(acc.shape, dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(work_ptr + s * M * N + where, mask=ok, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + where, total.to(y_ptr.dtype.element_ty), mask=ok)
            tl.atomic_xchg(count_ptr + tile, 0)

@triton.jit
def int4_matmul_kernel(x_ptr, packed_ptr, scale_ptr, y_ptr, work_ptr, count_ptr, M, N, K, GROUP: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, PTX: tl.constexpr):
    # y [M, N] = x [M, K] @ W^T, W [N, K] = (codes - 8) * scales: packed uint8 [N, K / 2] (byte j of a group:
    # channel j in the low nibble, GROUP / 2 + j in the high one), scales [N, K / GROUP].
    HALF: tl.constexpr = GROUP // 2
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, HALF)
    n_ok, m_ok = offs_n < N, offs_m < M
    groups = K // GROUP
    per_split = tl.cdiv(groups, SPLIT_K)
    g_start = tl.program_id(2) * per_split
    g_end = tl.minimum(g_start + per_split, groups)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for g in range(g_start, g_end):
        packed = tl.load(packed_ptr + offs_n[:, None] * (K // 2) + g * HALF + offs_j[None, :],
                         mask=n_ok[:, None], other=0x88)
        x_low = tl.load(x_ptr + offs_m[None, :] * K + g * GROUP + offs_j[:, None], mask=m_ok[None, :], other=0.0)
        x_high = tl.load(x_ptr + offs_m[None, :] * K + g * GROUP + HALF + offs_j[:, None], mask=m_ok[None, :],
                         other=0.0)
        low, high = nibbles(packed, x_ptr.dtype.element_ty, PTX)
        part = tl.dot(low, x_low) + tl.dot(high, x_high)
        acc += part * tl.load(scale_ptr + offs_n * groups + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    store_tile(acc, y_ptr, work_ptr, count_ptr, offs_n, offs_m, M, N, SPLIT_K)

@triton.jit
def fp8_matmul_kernel(x_ptr, w_ptr, scale_ptr, y_ptr, work_ptr, count_ptr, M, N, K, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    # y [M, N] = (x [M, K] @ w^T) * scale: w fp8 e4m3 [N, K] widened to x's dtype in registers, scale fp32 [N].
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
        acc += tl.dot(w.to(x_ptr.dtype.element_ty), x)
    acc = acc * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)[:, None]
    store_tile(acc, y_ptr, work_ptr, count_ptr, offs_n, offs_m, M, N, SPLIT_K)


def block_m(rows: int) -> int:
    """The dot's row tile for this many activation rows: a power of two from 16 (the smallest dot) to 64."""
    return max(16, min(MAX_ROWS, 1 << (rows - 1).bit_length()))


def _launch(kernel, rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, n: int, k: int,
            config: dict, **constants) -> torch.Tensor:
    m = rows.shape[0]
    rows = rows.contiguous()
    out = torch.empty((m, n), dtype=rows.dtype, device=rows.device)
    tile_m = block_m(m)
    split = config.get("SPLIT_K", 1)
    grid = (triton.cdiv(n, config["BLOCK_N"]), triton.cdiv(m, tile_m), split)
    if grid[0] * grid[1] > SEMAPHORE_SLOTS:
        raise ValueError(f"{grid[0] * grid[1]} output tiles exceed the split-K semaphore's {SEMAPHORE_SLOTS}")
    work = torch.empty(split * m * n if split > 1 else 1, dtype=torch.float32, device=rows.device)
    launch = {key: value for key, value in config.items() if key not in ("num_warps", "num_stages")}
    kernel[grid](rows, weight, scale, out, work, _semaphores(rows.device), m, n, k, BLOCK_M=tile_m, **launch,
                 **constants, num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 3))
    return out


def int4_matmul(rows: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, config: dict) -> torch.Tensor:
    """rows [M <= 64, K] (bf16/fp16) @ the int4 weight [N, K]^T with one launch configuration: BLOCK_N, SPLIT_K,
    num_warps, num_stages."""
    n, k = packed.shape[0], packed.shape[1] * 2
    return _launch(int4_matmul_kernel, rows, packed, scales, n, k, config, GROUP=k // scales.shape[1],
                   PTX=not interpreted())


def fp8_matmul(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, config: dict) -> torch.Tensor:
    """rows [M <= 64, K] (bf16/fp16) @ (fp8 weight [N, K] * scale [N, 1])^T with one launch configuration:
    BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages."""
    return _launch(fp8_matmul_kernel, rows, weight, scale, weight.shape[0], weight.shape[1], config)
