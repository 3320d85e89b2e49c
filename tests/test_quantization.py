"""int4 quantization, AWQ, and the compiled runtime's int4 kernels (run by Triton's interpreter on the CPU)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from bench_kernels.quantization import (
    AwqScales,
    dequantize_int4,
    fold_awq_scales,
    int4_codes,
    int4_group_size,
    quantize_int4,
    search_awq,
    unpack_int4,
)

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_group_size_falls_back_to_a_dividing_power_of_two() -> None:
    assert int4_group_size(4096) == 128
    assert int4_group_size(14336) == 128
    assert int4_group_size(576) == 64  # SmolLM2's hidden size
    assert int4_group_size(30) == 30  # no power of two from 16 up divides it: one group per row
    with pytest.raises(ValueError, match="odd"):
        int4_group_size(33)


def test_int4_round_trip_is_exact_at_each_groups_extreme_and_close_elsewhere() -> None:
    torch.manual_seed(0)
    weight = torch.randn(24, 256)
    quantized = quantize_int4(weight)
    assert quantized.packed.dtype == torch.uint8 and quantized.packed.shape == (24, 128)
    assert quantized.scales.shape == (24, 2) and quantized.nbytes() == 24 * 128 + 24 * 2 * 2
    codes, _ = int4_codes(weight, 128)
    assert torch.equal(unpack_int4(quantized.packed, 128), codes)
    # Byte j of a group: channel j low, channel 64 + j high.
    assert int(quantized.packed[0, 0]) == int(codes[0, 0] + 8) | int(codes[0, 64] + 8) << 4
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7
    restored = dequantize_int4(quantized)
    groups, restored_groups = weight.view(24, 2, 128), restored.view(24, 2, 128)
    extreme = groups.abs().argmax(dim=2, keepdim=True)
    # The largest magnitude lands on code -8: exact up to the bf16 rounding of its scale.
    torch.testing.assert_close(restored_groups.gather(2, extreme), groups.gather(2, extreme), rtol=4e-3, atol=0)
    # Elsewhere the error is at most half a step (plus the scale's rounding), except where a weight of the
    # extreme's size but opposite sign is clamped from code 8 to 7: one step.
    step = (groups.abs().amax(dim=2, keepdim=True) / 8).expand_as(groups)
    error = (restored_groups - groups).abs()
    clamped = (groups / step * -groups.gather(2, extreme).sign()) > 7.5
    assert bool((error[~clamped] <= 0.5 * step[~clamped] * 1.01).all())
    assert bool((error <= step * 1.01).all())


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # uneven input channels, as trained models have, so scaling has something to find
        for layer in model.model.layers:
            layer.input_layernorm.weight.copy_(torch.rand(128) * 4 + 0.1)
            layer.post_attention_layernorm.weight.copy_(torch.rand(128) * 4 + 0.1)
    return model


def test_awq_folding_keeps_the_float_function_and_never_loses_to_round_to_nearest() -> None:
    model = _tiny_llama()
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    awq = search_awq(model, ids)
    # q/k/v, gate/up, down, and o (no grouped-query attention here) in each of the 2 layers.
    assert len(awq.scales) == 8 and all(s.shape in ((128,), (256,)) for s in awq.scales.values())
    assert all(awq.error_awq[name] <= awq.error_rtn[name] for name in awq.scales)
    assert any(alpha is not None for alpha in awq.alphas.values())
    assert sum(awq.error_awq.values()) < sum(awq.error_rtn.values())
    scaled = copy.deepcopy(model)
    fold_awq_scales(scaled, awq)
    with torch.no_grad():
        after = scaled(input_ids=ids).logits
        q_proj = scaled.model.layers[0].self_attn.q_proj.weight
        assert not torch.equal(q_proj, model.model.layers[0].self_attn.q_proj.weight)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_awq_folding_keeps_qwen3_the_same_function() -> None:
    """Qwen3's per-head q/k norms sit after the projections whose input channels AWQ scales: folding changes nothing."""
    from tests.test_decoder import tiny_model

    model = tiny_model("qwen3")
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    awq = search_awq(model, ids)
    assert len(awq.scales) == 6  # q/k/v, gate/up and down per layer; o is not folded into v with grouped KV heads
    scaled = copy.deepcopy(model)
    fold_awq_scales(scaled, awq)
    with torch.no_grad():
        torch.testing.assert_close(scaled(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)
    assert not torch.equal(scaled.model.layers[0].input_layernorm.weight, model.model.layers[0].input_layernorm.weight)


def test_awq_on_weights_drawn_under_inference_mode() -> None:
    """A model built under inference mode holds inference tensors; AWQ must search and fold them all the same."""
    with torch.inference_mode():
        model = _tiny_llama()
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    fold_awq_scales(model, search_awq(model, ids))
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-4, atol=1e-4)


def test_awq_refuses_architectures_whose_norms_it_cannot_fold_into() -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    with pytest.raises(ValueError, match="model_type 'gemma2'"):
        search_awq(model, torch.zeros(1, 8, dtype=torch.long))
    assert AwqScales().summary().startswith("AWQ scaled 0 layer groups")


INTERPRETED_KERNEL_CHECK = """
import sys, torch
from bench_kernels.quantization import dequantize_int4, quantize_int4, unpack_int4
from bench_kernels.runtimes.compiled import decode_kernels
from bench_kernels.runtimes.compiled.linear_ops import _int4_kernels, int4_word_codes, int4_words, quantize_fp8
from bench_kernels.runtimes.compiled.linear_ops import quantize_rows_fp8
rows, dtype, split = int(sys.argv[1]), getattr(torch, sys.argv[2]), int(sys.argv[3])
torch.manual_seed(rows)
weight = quantize_int4(torch.randn(48, 512))
words = int4_words(weight.packed, 128)
assert torch.equal(int4_word_codes(words, 128), unpack_int4(weight.packed, 128)), "int4_words round trip"
assert (words[3, 16 + 5] >> 8 & 0xF) - 8 == unpack_int4(weight.packed, 128)[3, 128 + 2 * 16 + 5], "word layout"
x = torch.randn(rows, 512).to(dtype)
expected = x.float() @ dequantize_int4(weight).t()
config = {"BLOCK_N": 16, "GROUPS_PER_STEP": 2, "SPLIT_K": split}
for kernel in (decode_kernels.int4_matmul, decode_kernels.int4_gemv):
    out = kernel(x, words, weight.scales, config)
    assert out.shape == (rows, 48) and out.dtype == dtype, (kernel.__name__, out.shape, out.dtype)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=expected.abs().max().item() * 1e-2)
    assert not decode_kernels._semaphores(x.device).any(), "a split launch left its counters set"
fp8, scale = quantize_fp8(torch.randn(40, 320))
x8 = torch.randn(rows, 320).to(dtype)
expected8 = x8.float() @ fp8.float().t() * scale
out8 = decode_kernels.fp8_matmul(x8, fp8, scale, {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": split})
torch.testing.assert_close(out8.float(), expected8, rtol=1e-2, atol=expected8.abs().max().item() * 1e-2)
x8_fp8, x8_scale = quantize_rows_fp8(x8)
rounded8 = (x8_fp8.float() * x8_scale) @ fp8.float().t() * scale
out_rows = decode_kernels.fp8_rows_matmul(x8_fp8, x8_scale, fp8, scale,
                                          {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": split}, dtype)
assert out_rows.shape == (rows, 40) and out_rows.dtype == dtype
torch.testing.assert_close(out_rows.float(), rounded8, rtol=1e-2, atol=rounded8.abs().max().item() * 1e-2)
assert not decode_kernels._semaphores(x8.device).any(), "a split launch left its counters set"
_, dequantize = _int4_kernels()
restored = torch.empty(48, 512)
dequantize[(1, 4)](words, weight.scales, restored, 48, 512, GROUP=128, BLOCK_N=64)
assert torch.equal(restored, dequantize_int4(weight)), "the dequantization kernel"
print("ok", (out.float() - expected).abs().max().item(), (out8.float() - expected8).abs().max().item(),
      (out_rows.float() - rounded8).abs().max().item())
"""


@needs_triton
@pytest.mark.parametrize(("rows", "split"), [(1, 1), (5, 2)])
def test_triton_int4_and_fp8_decode_kernels_match_the_float_math(rows: int, split: int) -> None:
    """The kernels as written, run by Triton's interpreter (TRITON_INTERPRET must be set before triton is imported,
    hence a fresh process), against the dequantized weights in fp32: the int4 tensor-core and CUDA-core kernels on
    int4_words' layout, two groups a step, and both fp8 kernels (weight-only, and fp8 activations against the
    scaled GEMM's math); one row, and a few rows with K split two ways (the last split program sums the partials).
    The interpreter's tensor-core dot mishandles bf16 on the CPU, so activations are fp16 (the same code path on the
    GPU, where the PTX conversion of the nibbles replaces the integer one run here)."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", INTERPRETED_KERNEL_CHECK, str(rows), "float16", str(split)],
                          capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


def test_compiled_int4_and_awq_perplexity_on_the_embedded_model() -> None:
    """Real SmolLM2 weights through the compiled runtime's own forward pass (eager on the CPU): int4 costs
    perplexity, AWQ gets part of it back."""
    from bench_kernels.quality import perplexity
    from bench_kernels.workload import perplexity_windows
    from bench_kernels.runtimes import get_runtime
    from bench_kernels.workload import packaged_text, text_token_ids

    cls = get_runtime("compiled")
    options = cls.options_class(compile=False)
    device = torch.device("cpu")
    scores, stored = {}, {}
    for precision in ("bf16", "int4", "int4-awq"):
        runtime = cls(cls.load("embedded", precision, device, 0, options), precision, device, options)
        runtime.prepare([1], [8], 2)
        windows = perplexity_windows(text_token_ids(runtime.loaded.tokenizer, packaged_text()), 8192)[:2]
        scores[precision] = perplexity(runtime.sequence_logits, windows)[0]
        stored[precision] = runtime.weight_bytes()
        runtime.close()
    assert scores["bf16"] < scores["int4-awq"] < scores["int4"] < scores["bf16"] * 1.3
    # Projections in half a byte (plus scales); embeddings and the norms stay bf16.
    assert stored["int4"] == stored["int4-awq"] < 0.45 * stored["bf16"]
