"""The compiled runtime on the CPU: the static-cache decoder against the shared decoder, fp8 weights,
shape changes, the custom linear op, and whole sweeps with build, quality and roofline columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from tests.test_decoder import assert_runs_like_the_reference, compare_with_reference, tiny_loaded, tiny_model

from bench_kernels.config import parse_config
from bench_kernels.decoder import Decoder, greedy_generate
from bench_kernels.roofline import ROOFLINE_NOT_APPLICABLE
from bench_kernels.runtimes.compiled.linear_ops import FP8, FP8_MAX, linear, quantize_fp8
from bench_kernels.runtimes.compiled.runtime import CompiledOptions, CompiledRuntime
from bench_kernels.runtimes.compiled.sharding import Shard
from bench_kernels.runtimes.compiled.static_decoder import StaticDecoder
from bench_kernels.sweep import run_build_stage, run_inference_sweep


def _prompts(vocab_size: int, batch_size: int, length: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch_size, length), generator=torch.Generator().manual_seed(seed))


def _decoder_logits(decoder: Decoder, ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, V] of the shared decoder for unpadded prompts."""
    B, S = ids.shape
    a = decoder.args
    past = [(torch.zeros(B, a.num_kv_heads, 0, a.head_dim),) * 2 for _ in range(a.num_layers)]
    logits, _ = decoder(ids, torch.arange(S).expand(B, S), torch.ones_like(ids), past)
    return logits[:, -1]


@pytest.mark.parametrize("family", ["llama3", "qwen2", "mistral", "qwen3", "phi3"])
def test_static_decoder_matches_the_shared_decoder(family):
    """Same logits and the same 24 greedy tokens as decoder.Decoder (Llama-3 RoPE, q/k/v bias, head_dim 24, q/k
    norms, LongRoPE: Phi-3's 11 + 24 tokens cross its original context of 12)."""
    decoder = Decoder.from_hf(tiny_model(family))
    ids = _prompts(decoder.args.vocab_size, 3, 11)
    expected_tokens = greedy_generate(decoder, ids, torch.ones_like(ids), 24)
    with torch.inference_mode():
        expected_logits = _decoder_logits(decoder, ids)
    static = StaticDecoder.from_decoder(decoder, compile_mode=None)
    assert torch.equal(static.generate(ids, 24), expected_tokens)
    torch.testing.assert_close(static.prefill_logits(ids), expected_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "llama3", "qwen3", "phi3"])
def test_weight_bytes_match_the_loaded_model(family):
    """The roofline's numerator: the same bytes as the transformers model, a tied LM head counted once."""
    from bench_kernels.models import weight_bytes

    model = tiny_model(family)
    assert model.config.tie_word_embeddings == (family == "qwen2")
    assert StaticDecoder.from_decoder(Decoder.from_hf(model), compile_mode=None).weight_bytes() == weight_bytes(model)


@pytest.mark.parametrize("rank", [0, 1])
def test_phi3_fused_layers_shard_like_split_ones(rank):
    """Tensor parallel over 2: each rank packs from transformers' fused Phi-3 layers exactly the weights it packs
    from the shared decoder's split ones (packing only: the collectives run in the tensor-parallel tests)."""
    model = tiny_model("phi3")
    decoder = Decoder.from_hf(model)
    shard = Shard(rank, 2, "packing-only")
    fused = StaticDecoder.from_modules(decoder.args, model.model.embed_tokens.weight, lambda i: model.model.layers[i],
                                       model.model.norm.weight, model.lm_head.weight, compile_mode=None, shard=shard)
    split = StaticDecoder.from_decoder(decoder, compile_mode=None, shard=shard)
    assert fused.heads == split.heads == 2 and fused.kv_heads == 1
    for fused_layer, split_layer in zip(fused.layers, split.layers, strict=True):
        for a, b in zip(fused_layer.tensors(), split_layer.tensors(), strict=True):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("family", ["phi3", "qwen3"])
def test_compiled_runs_phi3_and_qwen3_like_the_reference(family):
    """The compiled runtime (eager: the same functions torch.compile gets) packing transformers' own Phi-3 layers
    (fused q/k/v and gate/up, LongRoPE past its original context) and Qwen3 layers (q/k norms): the reference's
    greedy tokens, logits and perplexity."""
    loaded = tiny_loaded(family)
    runtime = CompiledRuntime(loaded, "fp32", torch.device("cpu"), CompiledOptions(compile=False))
    assert_runs_like_the_reference(compare_with_reference(loaded, runtime))
    assert (runtime.static.layers[0].q_norm is not None) == (family == "qwen3")


def test_shape_changes_reuse_nothing_stale():
    """A new batch or length gets its own caches; going back gives the same tokens as the first time."""
    decoder = Decoder.from_hf(tiny_model("llama3"))
    static = StaticDecoder.from_decoder(decoder, compile_mode=None)
    a, b = _prompts(256, 2, 9), _prompts(256, 4, 5, seed=4)
    first = static.generate(a, 12)
    other = static.generate(b, 3)
    assert other.shape == (4, 3)
    assert torch.equal(other, greedy_generate(decoder, b, torch.ones_like(b), 3))
    assert torch.equal(static.generate(a, 12), first)
    assert torch.equal(static.generate(a[:, :6], 1), greedy_generate(decoder, a[:, :6], torch.ones_like(a[:, :6]), 1))


def test_suppressed_tokens_are_never_generated():
    decoder = Decoder.from_hf(tiny_model("llama3"))
    ids = _prompts(256, 2, 7)
    free = StaticDecoder.from_decoder(decoder, compile_mode=None).generate(ids, 16)
    banned = free.unique()[:3].tolist()
    constrained = StaticDecoder.from_decoder(decoder, compile_mode=None, suppress_token_ids=banned).generate(ids, 16)
    assert not torch.isin(constrained, torch.tensor(banned)).any()
    assert torch.equal(constrained, greedy_generate(decoder, ids, torch.ones_like(ids), 16, banned))


def test_kernel_timings_rotate_over_copies_larger_than_twice_the_l2():
    """kernel_bench and the runtime's kernel choice time each call on the next of enough copies of a weight that
    together they exceed twice the L2 (a 33.5 MB weight replayed alone stays in an H200's 60 MB L2): each copy has
    its own storage and the same values."""
    from bench_kernels.runtimes.compiled.linear_ops import rotated_sets, rotation_count

    packed, scales = torch.randint(0, 255, (48, 64), dtype=torch.uint8), torch.randn(48, 2)
    nbytes, l2_bytes = packed.numel() + scales.numel() * 4, 10_000
    sets = rotated_sets((packed, scales), l2_bytes)
    assert len(sets) * nbytes > 2 * l2_bytes >= (len(sets) - 1) * nbytes
    assert len({p.data_ptr() for p, _ in sets}) == len(sets) == len({s.data_ptr() for _, s in sets})
    assert all(torch.equal(p, packed) and torch.equal(s, scales) for p, s in sets)
    assert rotation_count(int(33.5e6), 60 * 2**20) == 4 and rotation_count(2**30, 60 * 2**20) == 2


def test_fp8_quantization_is_per_channel_and_within_e4m3_rounding():
    weight = torch.randn(48, 64) * torch.logspace(-3, 2, 48)[:, None]  # channels of very different magnitude
    q, scale = quantize_fp8(weight)
    assert q.dtype == FP8 and scale.shape == (48,)
    # Each channel's largest value lands on the format's largest, so no channel wastes its range.
    torch.testing.assert_close(q.float().abs().amax(dim=1), torch.full((48,), FP8_MAX))
    dequantized = q.float() * scale[:, None]
    # e4m3 keeps 3 mantissa bits: relative rounding <= 2**-4 for normal values; subnormals near zero
    # have an absolute floor of half the smallest step, 2**-10 of the scale.
    bound = torch.maximum(weight.abs() * 2**-4, scale[:, None] * 2**-10)
    assert ((dequantized - weight).abs() <= bound * 1.0001).all()
    # Rounded a few channels at a time (as a large projection is), the result is the same bit for bit.
    chunked_q, chunked_scale = quantize_fp8(weight, chunk_rows=5)
    assert torch.equal(chunked_q.view(torch.uint8), q.view(torch.uint8)) and torch.equal(chunked_scale, scale)


def test_linear_op_passes_opcheck_and_matches_dequantized_math():
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    weight = torch.randn(32, 64)
    q, scale = quantize_fp8(weight)
    torch.library.opcheck(linear, (x.float(), weight, None))
    # opcheck's schema test multiplies inputs, which fp8 tensors do not support on the CPU.
    torch.library.opcheck(linear, (x, q, scale), test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))
    expected = (x.float() @ (q.float() * scale[:, None]).t()).to(torch.bfloat16)
    torch.testing.assert_close(linear(x, q, scale), expected)
    with pytest.raises(ValueError, match="scale"):
        linear(x, q, None)


def test_fp8_weights_stay_close_to_the_native_model():
    """Whole-model fp8 logits point the same way as bf16 ones, with a small relative error (3 mantissa bits)."""
    decoder = Decoder.from_hf(tiny_model("llama3")).cast(torch.bfloat16)
    ids = _prompts(256, 2, 10)
    native = StaticDecoder.from_decoder(decoder, compile_mode=None).prefill_logits(ids)
    fp8 = StaticDecoder.from_decoder(decoder, "fp8", compile_mode=None)
    assert fp8.layers[0].qkv[0].dtype == FP8 and fp8.lm_head[0].dtype == torch.bfloat16
    assert fp8.weight_bytes() < 0.75 * StaticDecoder.from_decoder(decoder, compile_mode=None).weight_bytes()
    quantized = fp8.prefill_logits(ids)
    relative_error = ((quantized - native).norm() / native.norm()).item()
    assert 0 < relative_error < 0.15
    assert (torch.nn.functional.cosine_similarity(quantized, native, dim=-1) > 0.99).all()


def _sweep_params(tmp_path: Path, model: str, **overrides) -> dict:
    params = dict(run_name="compiled", model=model, runtimes=["reference", "compiled"], precisions=["fp32", "fp8"],
                  batch_sizes=[1, 2], input_lens=[8, 16], output_len=6, warmup=1, repeats=2, device="cpu",
                  reports_dir=str(tmp_path))
    return {**params, **overrides}


def test_compiled_sweep_rows_on_cpu(tmp_path: Path, tiny_local_model: Path) -> None:
    """torch.compile on the CPU: build rows with compile time, ok inference rows with quality and roofline,
    and fp8 compared with the reference's own (torchao) fp8."""
    # One shape per precision: every shape is compiled afresh on this CPU (the end-to-end test compiles four).
    cfg = parse_config(_sweep_params(tmp_path, f"local:{tiny_local_model}", batch_sizes=[2], input_lens=[8]))
    run_build_stage(cfg)
    for runtime in cfg.runtimes:
        df = run_inference_sweep(cfg, runtime)
    build = df[(df.stage == "build") & (df.runtime == "compiled")].set_index("precision")
    assert (build.status == "ok").all() and (build.build_s > 0).all(), build
    assert build.loc["fp32", "cache_hit"] == "false"
    inference = df[df.stage == "inference"]
    compiled = inference[inference.runtime == "compiled"].set_index(["precision", "batch_size", "input_len"])
    assert len(compiled) == 2 and (compiled.status == "ok").all(), compiled[["status", "error"]]
    assert (compiled.loc["fp32", "token_agreement"] == 1.0).all()
    assert (compiled.loc["fp32", "max_logit_diff"] < 1e-4).all()
    assert compiled.loc["fp8", "max_logit_diff"].notna().all()
    # This model's 25 MB of weights stay in the CPU's caches: a DRAM roofline bounds nothing, so none is given
    # (the end-to-end test checks the roofline on the real model, which does not fit).
    assert compiled.efficiency.isna().all() and compiled.roofline_tokens_per_s.isna().all()
    assert compiled.notes.str.contains(ROOFLINE_NOT_APPLICABLE, regex=False).all()
    # fp8 weights are a quarter of fp32 ones: the bytes a step reads fall accordingly.
    step_mb = compiled.notes.str.extract(r"\(([0-9.]+) MB of weights")[0].astype(float)
    assert (step_mb.loc["fp8"].values < 0.5 * step_mb.loc["fp32"].values).all()
    # The reference's fp8 is torchao's; the compiled fp8 is compared with it, not with the fp32 reference.
    reference_fp8 = inference[(inference.runtime == "reference") & (inference.precision == "fp8")]
    assert (reference_fp8.status == "ok").all()
    assert not compiled.loc["fp8", "notes"].str.contains("quality vs the fp32 reference").any()
    assert pd.to_numeric(df.copy_gbps).gt(0).all() and pd.to_numeric(df.matmul_tflops_fp32).gt(0).all()
    # The CPU dequantizes fp8 weights: both precisions prefill in fp32, against the fp32 matmul rate.
    assert (compiled.prefill_precision == "fp32").all() and compiled.prefill_efficiency.gt(0).all()
