"""Decode attention over the static KV cache: one new query per row against the slots written so far.

On CUDA it is one Triton kernel (flash-decoding): each program takes one batch row, one KV head and one span of cache
slots, loads the KV head's group of query heads once, and streams its keys and values through an online softmax, so
each cache is read once and only up to the current position (the masked matmul it replaces read every slot, written
or not, in three launches). When a batch has too few (row, KV head) pairs to fill the GPU, the slots are split over
several programs and a second small kernel merges their partial softmaxes. Elsewhere (the CPU) the same math runs as
masked matmuls.
"""

from __future__ import annotations

from functools import cache

import torch

from bench_kernels.runtimes.compiled.linear_ops import triton_unavailable_reason

BLOCK_SLOTS = 64  # cache slots per step of a program
PROGRAMS_PER_SM = 2  # the slot split aims at this many programs per multiprocessor


def masked_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor):
    """The reference math: scores over every slot, the slots after pos masked out."""
    B, H, Dh = q.shape
    kv_heads, slots = k_cache.shape[1], k_cache.shape[2]
    grouped = q.reshape(B, kv_heads, H // kv_heads, Dh)  # [B, KVH, G, Dh]
    scores = (grouped @ k_cache.transpose(2, 3)).float() * Dh**-0.5  # [B, KVH, G, L]
    valid = torch.arange(slots, device=q.device) <= pos
    probs = scores.masked_fill(~valid, float("-inf")).softmax(dim=-1).to(q.dtype)
    return (probs @ v_cache).reshape(B, H, Dh)


@cache
def _kernels():
    """The Triton kernels, compiled lazily so importing this module never needs triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def attend(q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, part_ptr, stats_ptr, kv_heads, slots, group, head_dim,
               scale, SLOTS_PER_SPLIT: tl.constexpr, SPLITS: tl.constexpr, BLOCK_G: tl.constexpr,
               BLOCK_SLOTS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
        # Program (row * KVH + kv head, split): q [B, H, Dh] (head kvh * G + g), caches [B, KVH, L, Dh], contiguous.
        pair, split = tl.program_id(0), tl.program_id(1)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        q = tl.load(q_ptr + (pair * group + g)[:, None] * head_dim + d[None, :],
                    mask=(g[:, None] < group) & (d[None, :] < head_dim), other=0.0)
        first = split * SLOTS_PER_SPLIT
        last = tl.minimum(first + SLOTS_PER_SPLIT, tl.load(pos_ptr) + 1)  # slots [first, last) are written
        best = tl.full([BLOCK_G], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        cache = pair * slots * head_dim
        for start in range(first, last, BLOCK_SLOTS):
            s = start + tl.arange(0, BLOCK_SLOTS)
            live = s < last
            at = cache + s[:, None] * head_dim + d[None, :]
            kv_mask = live[:, None] & (d[None, :] < head_dim)
            k = tl.load(k_ptr + at, mask=kv_mask, other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [G, slots] fp32
            scores = tl.where(live[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=1))  # finite: every step holds a written slot
            rescale = tl.exp(best - new_best)
            p = tl.exp(scores - new_best[:, None])
            total = total * rescale + tl.sum(p, axis=1)
            v = tl.load(v_ptr + at, mask=kv_mask, other=0.0)
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            best = new_best
        rows = pair * group + g
        if SPLITS == 1:
            out = acc / total[:, None]
            tl.store(out_ptr + rows[:, None] * head_dim + d[None, :], out.to(out_ptr.dtype.element_ty),
                     mask=(g[:, None] < group) & (d[None, :] < head_dim))
        else:
            # A split past the position read nothing: best -inf and total 0, which the merge weighs as zero.
            part = (rows * SPLITS + split)
            tl.store(part_ptr + part[:, None] * BLOCK_D + d[None, :], acc, mask=(g[:, None] < group))
            tl.store(stats_ptr + part * 2, best, mask=g < group)
            tl.store(stats_ptr + part * 2 + 1, total, mask=g < group)

    @triton.jit
    def merge(part_ptr, stats_ptr, out_ptr, head_dim, SPLITS: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program per query head: the splits' partial softmaxes, each rescaled to the largest maximum.
        row = tl.program_id(0)
        j = tl.arange(0, SPLITS)
        d = tl.arange(0, BLOCK_D)
        best = tl.load(stats_ptr + (row * SPLITS + j) * 2)
        total = tl.load(stats_ptr + (row * SPLITS + j) * 2 + 1)
        weight = tl.exp(best - tl.max(best, axis=0))  # split 0 always holds slot 0, so the maximum is finite
        acc = tl.load(part_ptr + (row * SPLITS + j)[:, None] * BLOCK_D + d[None, :])
        out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(total * weight, axis=0)
        tl.store(out_ptr + row * head_dim + d, out.to(out_ptr.dtype.element_ty), mask=d < head_dim)

    return triton, attend, merge


def slot_splits(pairs: int, slots: int, multiprocessors: int) -> int:
    """How many programs share one (row, KV head) pair's slots: enough for PROGRAMS_PER_SM programs on every
    multiprocessor, at most one per step of slots, rounded down to a power of two (the merge's arange)."""
    wanted = max(1, min(-(-PROGRAMS_PER_SM * multiprocessors // pairs), -(-slots // BLOCK_SLOTS)))
    return 1 << (wanted.bit_length() - 1)


def triton_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                            splits: int) -> torch.Tensor:
    """q [B, H, Dh] against the caches [B, KVH, L, Dh] up to slot pos (a [1] tensor on the device), the slots split
    over `splits` programs (a power of two); out [B, H, Dh] in q's dtype."""
    triton, attend, merge = _kernels()
    B, H, Dh = q.shape
    kv_heads, slots = k_cache.shape[1], k_cache.shape[2]
    group = H // kv_heads
    q, k_cache, v_cache = q.contiguous(), k_cache.contiguous(), v_cache.contiguous()
    out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(Dh))
    per_split = -(-slots // splits // BLOCK_SLOTS) * BLOCK_SLOTS
    partials = B * H * splits if splits > 1 else 1  # one split writes the output directly
    part = torch.empty((partials, block_d), dtype=torch.float32, device=q.device)
    stats = torch.empty((partials, 2), dtype=torch.float32, device=q.device)
    attend[(B * kv_heads, splits)](q, k_cache, v_cache, pos, out, part, stats, kv_heads, slots, group, Dh,
                                   Dh**-0.5, SLOTS_PER_SPLIT=per_split, SPLITS=splits,
                                   BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_SLOTS=BLOCK_SLOTS,
                                   BLOCK_D=block_d, PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    if splits > 1:
        merge[(B * H,)](part, stats, out, Dh, SPLITS=splits, BLOCK_D=block_d)
    return out


@torch.library.custom_op("bench_kernels::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """q [B, H, Dh] (H = KVH * G; head h reads KV head h // G) against the caches [B, KVH, L, Dh], slots 0..pos
    ([1] long); out [B, H, Dh] in q's dtype."""
    if not q.is_cuda or triton_unavailable_reason():
        return masked_attention(q, k_cache, v_cache, pos)
    pairs, slots = q.shape[0] * k_cache.shape[1], k_cache.shape[2]
    splits = slot_splits(pairs, slots, torch.cuda.get_device_properties(q.device).multi_processor_count)
    return triton_decode_attention(q, k_cache, v_cache, pos, splits)


@decode_attention.register_fake
def _decode_attention_fake(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           pos: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(q)
