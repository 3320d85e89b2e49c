"""The compiled runtime's decode attention: the Triton kernel (run by Triton's interpreter) against the masked math, how
the slots are split, and the custom op the decoder calls."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from bench_kernels.runtimes.compiled.decode_attention import BLOCK_SLOTS, decode_attention, slot_splits

INTERPRETED_ATTENTION_CHECK = """
import torch
from bench_kernels.runtimes.compiled.decode_attention import masked_attention, triton_decode_attention
torch.manual_seed(0)
worst = {torch.float16: 0.0, torch.float32: 0.0}
for dtype in worst:
    # three query heads per KV head and a head of 24 (both padded inside the kernel); 150 slots, not a whole step
    for rows, kv_heads, group, head_dim, slots in ((2, 2, 3, 24, 150), (1, 2, 4, 64, 64)):
        q = torch.randn(rows, kv_heads * group, head_dim).to(dtype)
        k, v = (torch.randn(rows, kv_heads, slots, head_dim).to(dtype) for _ in range(2))
        # stale values past the position must not count: the masked math gives them weight zero
        for position in (0, slots // 2, slots - 1):
            pos = torch.tensor([position])
            expected = masked_attention(q.float(), k.float(), v.float(), pos)
            for splits in (1, 2, 4):  # four splits at position 0: three of them read nothing
                out = triton_decode_attention(q, k, v, pos, splits)
                assert out.shape == q.shape and out.dtype == dtype, (out.shape, out.dtype)
                worst[dtype] = max(worst[dtype], (out.float() - expected).abs().max().item())
assert worst[torch.float16] < 2e-2 and worst[torch.float32] < 1e-4, worst
print("ok", worst)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_decode_attention_matches_the_masked_math():
    """The kernel as written, under Triton's interpreter (set before triton is imported, hence a fresh process):
    grouped query heads, padded heads, slots split over programs (some past the position) and merged."""
    done = subprocess.run([sys.executable, "-c", INTERPRETED_ATTENTION_CHECK], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


@pytest.mark.parametrize(("pairs", "slots", "expected"), [
    (8, 256, 4),  # batch 1, 8 KV heads on 132 multiprocessors: one split per step of slots
    (8, 2176, 32),  # a long cache: 33 splits fill the GPU, rounded down to a power of two
    (512, 256, 1),  # batch 64: the pairs alone fill it
    (8, 40, 1),  # fewer slots than one step
])
def test_slots_are_split_only_to_fill_the_gpu(pairs: int, slots: int, expected: int):
    splits = slot_splits(pairs, slots, 132)
    assert splits == expected
    assert splits & (splits - 1) == 0 and splits <= max(1, -(-slots // BLOCK_SLOTS))


def test_the_custom_op_attends_only_to_written_slots():
    """On the CPU the op is the masked math; changing a slot past the position changes nothing, one before it does."""
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 6, 16), torch.randn(2, 3, 20, 16), torch.randn(2, 3, 20, 16)
    pos = torch.tensor([9])
    torch.library.opcheck(decode_attention, (q, k, v, pos))
    out = decode_attention(q, k, v, pos)
    later, earlier = v.clone(), v.clone()
    later[:, :, 10] += 5
    earlier[:, :, 9] += 5
    assert torch.equal(decode_attention(q, k, later, pos), out)
    assert not torch.allclose(decode_attention(q, k, earlier, pos), out)
    # head h reads KV head h // 2: one query head's answer uses only its own KV head's values
    own = v.clone()
    own[:, 1] += 5
    moved = decode_attention(q, k, own, pos)
    assert torch.equal(moved[:, :2], out[:, :2]) and not torch.allclose(moved[:, 2:4], out[:, 2:4])
