"""The package's decoder against transformers: the embedded SmolLM2 in fp32, and tiny random Llama-3, Qwen2, Mistral,
Qwen3 and Phi-3 models; the helpers that run a tiny Phi-3 or Qwen3 through a runtime against the reference runtime."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from bench_kernels.decoder import (
    Decoder,
    DecoderArgs,
    empty_past,
    greedy_generate,
    position_ids_from_mask,
    rope_attention_factor,
    rope_cos_sin,
    rope_inv_freq,
    unfuse_projections,
)
from bench_kernels.timing import StepTimer
from bench_kernels.models import LoadedModel, packaged_tokenizer
from bench_kernels.quality import perplexity, perplexity_windows
from bench_kernels.workload import make_prompts, packaged_text, text_token_ids
from tests.embedded import embedded_fp32_model

MAX_REL_ERR = 1e-4

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Water boils at",
    "Here is a short recipe for pancakes. First,",
    "The three primary colors of light are",
    "In machine learning, overfitting happens when a model learns",
    "My favourite thing about autumn in the mountains is the way the leaves",
    "Dear team, thank you all for the hard work this quarter. Before the holidays I would like to",
]

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# LongRoPE over the first 12 of 16 dims per head (partial rotary, as Phi-4-mini), distinct short and long factors;
# an original context of 12 positions (max_position_embeddings 48: attention factor sqrt(1 + ln 4 / ln 12)), so a
# few tokens reach the long regime.
PHI3_ORIGINAL_CONTEXT = 12
PHI3_ROPE = {
    "rope_type": "longrope",
    "rope_theta": 10_000.0,
    "partial_rotary_factor": 0.75,
    "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.0],
    "long_factor": [1.0, 1.6, 2.7, 4.4, 7.0, 11.0],
}


def embedded_reference():
    """The embedded SmolLM2-135M-Instruct in fp32 and its left-padding tokenizer, loaded once per test run."""
    loaded = embedded_fp32_model()
    return loaded.hf_model, loaded.tokenizer


def eos_ids(model) -> list[int]:
    """EOS ids that transformers' min_new_tokens suppresses."""
    eos = model.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def assert_stepwise_parity(hf_model, decoder: Decoder, input_ids, attention_mask, decode_steps: int) -> None:
    """Prefill then decode_steps teacher-forced steps: logits and KV cache agree at real tokens within MAX_REL_ERR."""
    B = input_ids.shape[0]
    position_ids = position_ids_from_mask(attention_mask)
    real = attention_mask.bool()
    with torch.inference_mode():
        ref = hf_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
        past = empty_past(decoder.args, B, torch.float32, "cpu")
        logits, past = decoder(input_ids, position_ids, attention_mask, past)
        assert logits.shape == ref.logits.shape
        assert rel_err(logits[real], ref.logits[real]) < MAX_REL_ERR, "prefill logits"
        cache, ref_logits = ref.cache, ref.logits
        for step in range(decode_steps):
            next_ids = ref_logits[:, -1].argmax(-1, keepdim=True)  # next_ids: [B, 1], fed to both
            attention_mask = torch.cat([attention_mask, torch.ones_like(next_ids)], dim=1)
            position_ids = position_ids[:, -1:] + 1
            ref = hf_model(input_ids=next_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
            logits, past = decoder(next_ids, position_ids, attention_mask, past)
            assert rel_err(logits, ref.logits) < MAX_REL_ERR, f"decode step {step}"
            cache, ref_logits = ref.cache, ref.logits
        real = attention_mask.bool()
        for i, (key, value) in enumerate(past):
            assert key.shape == (B, decoder.args.num_kv_heads, attention_mask.shape[1], decoder.args.head_dim)
            ref_key, ref_value = cache.layers[i].keys, cache.layers[i].values  # [B, KVH, T, Dh]
            assert rel_err(key.transpose(1, 2)[real], ref_key.transpose(1, 2)[real]) < MAX_REL_ERR, f"layer {i} key"
            assert rel_err(value.transpose(1, 2)[real], ref_value.transpose(1, 2)[real]) < MAX_REL_ERR


@pytest.fixture(scope="module")
def embedded():
    """(transformers model, tokenizer, our decoder sharing its weights) for the embedded model."""
    model, tokenizer = embedded_reference()
    return model, tokenizer, Decoder.from_hf(model)


def test_embedded_args(embedded):
    model, _, decoder = embedded
    args = decoder.args
    assert (args.num_layers, args.num_heads, args.num_kv_heads, args.head_dim) == (30, 9, 3, 64)
    assert args.tie_word_embeddings and decoder.lm_head.weight is decoder.embed_tokens.weight
    assert args.rope_theta == model.config.rope_parameters["rope_theta"] and args.rope_scaling is None


def test_embedded_prefill_and_32_decode_steps_match_transformers(embedded):
    model, tokenizer, decoder = embedded
    enc = tokenizer(PROMPTS[:3], return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any(), "the batch must exercise left padding"
    assert_stepwise_parity(model, decoder, enc.input_ids, enc.attention_mask, decode_steps=32)


def test_embedded_greedy_64_tokens_identical_to_transformers(embedded):
    model, tokenizer, decoder = embedded
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert len(set(enc.attention_mask.sum(1).tolist())) > 1, "prompt lengths must differ"
    with torch.inference_mode():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=64, min_new_tokens=64)[:, enc.input_ids.shape[1] :]
    ours = greedy_generate(decoder, enc.input_ids, enc.attention_mask, 64, suppress_token_ids=eos_ids(model))
    assert ours.shape == (len(PROMPTS), 64)
    mismatched = [tokenizer.decode(row) for row, same in zip(ours, (ours == ref).all(1)) if not same]
    assert not mismatched, f"greedy tokens differ from transformers for: {mismatched}"
    assert "Paris" in tokenizer.decode(ours[0])


def randomize_(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights everywhere, including the biases and norms transformers initialises to constants."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
)


def tiny_model(family: str, vocab_size: int = TINY["vocab_size"]):
    """A 2-layer random-weight transformers model of one family."""
    tiny = {**TINY, "vocab_size": vocab_size}
    if family == "phi3":  # fused qkv_proj and gate_up_proj, LongRoPE
        config = Phi3Config(**tiny, max_position_embeddings=4 * PHI3_ORIGINAL_CONTEXT,
                            original_max_position_embeddings=PHI3_ORIGINAL_CONTEXT, rope_parameters=dict(PHI3_ROPE),
                            bos_token_id=1, eos_token_id=2, pad_token_id=2)
        return randomize_(Phi3ForCausalLM(config))
    if family == "qwen3":  # RMSNorm on q and k per head; head_dim != hidden_size / heads
        config = Qwen3Config(**tiny, head_dim=24, max_position_embeddings=64,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        return randomize_(Qwen3ForCausalLM(config))
    if family == "llama3":
        config = LlamaConfig(**TINY, max_position_embeddings=131072, rope_parameters=dict(LLAMA3_ROPE))
        return randomize_(LlamaForCausalLM(config))
    if family == "qwen2":
        rope = {"rope_type": "default", "rope_theta": 1e6}
        config = Qwen2Config(**TINY, tie_word_embeddings=True, rope_parameters=rope)
        return randomize_(Qwen2ForCausalLM(config))
    config = MistralConfig(**TINY, head_dim=24, sliding_window=None)  # head_dim != hidden_size / heads
    return randomize_(MistralForCausalLM(config))


def tiny_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random prompts of 9 and 5 tokens, left-padded."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab_size, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("family", ["llama3", "qwen2", "mistral", "qwen3", "phi3"])
def test_tiny_random_models_match_transformers(family):
    """Prefill and 6 decode steps; Phi-3's steps cross its original context (9 + 6 > 12), so both regimes run."""
    model = tiny_model(family)
    decoder = Decoder.from_hf(model)
    assert decoder.args.attention_bias == (family == "qwen2")
    assert decoder.args.tie_word_embeddings == (family == "qwen2")
    assert (decoder.args.rope_scaling is not None) == (family in ("llama3", "phi3"))
    assert decoder.args.qk_norm == (family == "qwen3")
    assert_stepwise_parity(model, decoder, *tiny_batch(TINY["vocab_size"]), decode_steps=6)


def test_multi_token_append_to_a_cache_matches_one_prefill():
    model = tiny_model("llama3")
    decoder = Decoder.from_hf(model)
    input_ids, attention_mask = tiny_batch(TINY["vocab_size"])
    position_ids = position_ids_from_mask(attention_mask)
    with torch.inference_mode():
        ref = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        past = empty_past(decoder.args, 2, torch.float32, "cpu")
        _, past = decoder(input_ids[:, :5], position_ids[:, :5], attention_mask[:, :5], past)
        logits, _ = decoder(input_ids[:, 5:], position_ids[:, 5:], attention_mask, past)  # P=5, S=4
    assert rel_err(logits, ref[:, 5:]) < MAX_REL_ERR


def test_llama3_rope_parameters_and_legacy_rope_scaling_read_the_same():
    args = DecoderArgs.from_hf_config(tiny_model("llama3").config)
    legacy_rope = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    legacy = LlamaConfig(**TINY, max_position_embeddings=131072, rope_theta=500_000.0, rope_scaling=legacy_rope)
    assert DecoderArgs.from_hf_config(legacy) == args
    assert args.rope_theta == 500_000.0 and args.rope_scaling["factor"] == 8.0


def test_llama3_rope_scaling_matches_transformers_at_long_distances():
    model = tiny_model("llama3")
    args = DecoderArgs.from_hf_config(model.config)
    plain = dataclasses.replace(args, rope_scaling=None)
    scaled_freq, plain_freq = rope_inv_freq(args), rope_inv_freq(plain)
    assert scaled_freq[0] == plain_freq[0] and scaled_freq[-1] == plain_freq[-1] / 8  # high kept, low divided
    assert ((scaled_freq != plain_freq) & (scaled_freq != plain_freq / 8)).any(), "no frequency in the smooth band"

    # Tokens 1000 positions apart, so the rescaled low frequencies move the logits.
    input_ids, attention_mask = tiny_batch(TINY["vocab_size"])
    position_ids = position_ids_from_mask(attention_mask) * 1000
    state = {name.removeprefix("model."): t for name, t in model.state_dict().items()}
    real = attention_mask.bool()
    with torch.inference_mode():
        ref = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        for decoder_args, matches in ((args, True), (plain, False)):
            decoder = Decoder.from_state_dict(decoder_args, state)
            logits, _ = decoder(input_ids, position_ids, attention_mask, empty_past(args, 2, torch.float32, "cpu"))
            err = rel_err(logits[real], ref[real])
            assert err < MAX_REL_ERR if matches else err > 100 * MAX_REL_ERR, (decoder_args.rope_scaling, err)


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="rope_type"):
        DecoderArgs.from_hf_config(LlamaConfig(**TINY, rope_parameters={"rope_type": "linear", "factor": 2.0}))
    with pytest.raises(ValueError, match="SwiGLU"):
        DecoderArgs.from_hf_config(LlamaConfig(**TINY, mlp_bias=True))
    with pytest.raises(ValueError, match="attention_bias"):
        DecoderArgs.from_hf_config(Qwen3Config(**TINY, attention_bias=True))
    with pytest.raises(ValueError, match="partial rotary"):
        DecoderArgs.from_hf_config(LlamaConfig(**TINY, partial_rotary_factor=0.5))


def test_phi3_fused_projections_are_split_without_a_copy():
    model = tiny_model("phi3")
    decoder = Decoder.from_hf(model)
    fused = model.model.layers[1].self_attn.qkv_proj.weight
    attention = decoder.layers[1].self_attn
    assert attention.q_proj.weight.data_ptr() == fused.data_ptr()
    assert torch.equal(torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]), fused)
    mlp = decoder.layers[1].mlp
    gate_up = model.model.layers[1].mlp.gate_up_proj.weight
    assert torch.equal(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), gate_up)


def test_longrope_matches_transformers_in_both_regimes():
    """Frequencies, attention factor and cos/sin equal transformers' own, bit for bit, below and past the original
    context; the long factors differ from the short ones."""
    model = tiny_model("phi3")
    args = DecoderArgs.from_hf_config(model.config)
    assert args.rotary_dim == 12 and args.long_rope
    for long_context, seq_len in ((False, None), (True, PHI3_ORIGINAL_CONTEXT + 1)):
        expected, attention_factor = ROPE_INIT_FUNCTIONS["longrope"](model.config, seq_len=seq_len)
        assert torch.equal(rope_inv_freq(args, long_context=long_context), expected)
        assert rope_attention_factor(args) == attention_factor == pytest.approx((1 + math.log(4) / math.log(12)) ** 0.5)
    assert not torch.equal(rope_inv_freq(args), rope_inv_freq(args, long_context=True))
    x = torch.zeros(1, 1, TINY["hidden_size"])
    for length in (PHI3_ORIGINAL_CONTEXT, PHI3_ORIGINAL_CONTEXT + 1):  # the last short length and the first long one
        positions = torch.arange(length)[None]
        with torch.inference_mode():
            expected_cos, expected_sin = model.model.rotary_emb(x, positions)
        cos, sin = rope_cos_sin(args, positions, torch.float32, long_context=length > PHI3_ORIGINAL_CONTEXT)
        assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin), length


def test_longrope_long_factors_decide_prompts_past_the_original_context():
    """A decoder given the short factors for both regimes still matches on a short prompt, but not on a long one:
    the parity tests would see long factors that were wrong or unused."""
    model = tiny_model("phi3")
    args = DecoderArgs.from_hf_config(model.config)
    short_only = dataclasses.replace(args, rope_scaling={**args.rope_scaling,
                                                         "long_factor": args.rope_scaling["short_factor"]})
    state = {name.removeprefix("model."): t for name, t in model.state_dict().items()}
    for length, matches in ((PHI3_ORIGINAL_CONTEXT, True), (PHI3_ORIGINAL_CONTEXT + 4, False)):
        ids = torch.randint(0, TINY["vocab_size"], (1, length), generator=torch.Generator().manual_seed(2))
        mask, positions = torch.ones_like(ids), torch.arange(length)[None]
        with torch.inference_mode():
            expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            decoder = Decoder.from_state_dict(short_only, unfuse_projections(short_only, state))
            logits, _ = decoder(ids, positions, mask, empty_past(args, 1, torch.float32, "cpu"))
        err = rel_err(logits, expected)
        assert err < MAX_REL_ERR if matches else err > 100 * MAX_REL_ERR, (length, err)


@pytest.mark.parametrize("family", ["phi3", "qwen3"])
def test_phi3_and_qwen3_greedy_tokens_equal_transformers_generate(family):
    """A left-padded batch inside Phi-3's original context (9 + 3 tokens) and one past it from the start (20 + 6)."""
    model = tiny_model(family)
    decoder = Decoder.from_hf(model)
    short_ids, short_mask = tiny_batch(TINY["vocab_size"])
    long_ids = torch.randint(0, TINY["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(5))
    for ids, mask, new_tokens in ((short_ids, short_mask, 3), (long_ids, torch.ones_like(long_ids), 6)):
        with torch.inference_mode():
            expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens)[:, ids.shape[1]:]
        assert torch.equal(greedy_generate(decoder, ids, mask, new_tokens, eos_ids(model)), expected)


# ---- a tiny Phi-3 or Qwen3 through a runtime, against the reference runtime ------------------------------------------

RUNTIME_PROMPT_LENS = (4, 16)  # 4 + 6 new tokens stay inside Phi-3's original context; 16 is past it from the start
RUNTIME_NEW_TOKENS = 6


def tiny_loaded(family: str) -> LoadedModel:
    """A tiny random model of the family as a runtime gets it, with the packaged tokenizer (vocabulary 49152)."""
    tokenizer = packaged_tokenizer()
    model = tiny_model(family, vocab_size=len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    return LoadedModel(f"tiny-{family}", "real", model, tokenizer, 0.0, f"tiny-{family}-randomized")


def compare_with_reference(loaded: LoadedModel, runtime) -> dict[str, float]:
    """Greedy tokens, last-position logits and perplexity of `runtime` (fp32, CPU) against the reference runtime on
    the same model; the reference runs first: preparing the compiled runtime moves the model's layers to "meta"."""
    from bench_kernels.runtimes.reference.runtime import ReferenceRuntime

    cpu = torch.device("cpu")
    token_ids = text_token_ids(loaded.tokenizer, packaged_text())
    prompts = [make_prompts(token_ids, 2, length) for length in RUNTIME_PROMPT_LENS]
    windows = perplexity_windows(token_ids, loaded.config.max_position_embeddings)[:4]
    reference = ReferenceRuntime(loaded, "fp32", cpu)
    expected_tokens = [reference.generate(ids, RUNTIME_NEW_TOKENS, StepTimer(cpu)) for ids in prompts]
    expected_logits = [reference.first_step_logits(ids) for ids in prompts]
    expected_ppl, _ = perplexity(reference.sequence_logits, windows)
    runtime.prepare([2], list(RUNTIME_PROMPT_LENS), RUNTIME_NEW_TOKENS)
    tokens = [runtime.generate(ids, RUNTIME_NEW_TOKENS, StepTimer(cpu)) for ids in prompts]
    logits = [runtime.first_step_logits(ids) for ids in prompts]
    ppl, _ = perplexity(runtime.sequence_logits, windows)
    same = torch.cat([(a == b).flatten() for a, b in zip(tokens, expected_tokens)])
    figures = {
        "token_agreement": same.float().mean().item(),
        "logits_max_rel_err": max(rel_err(a, b) for a, b in zip(logits, expected_logits)),
        "ppl_delta_pct": 100 * (ppl / expected_ppl - 1),
        "ppl_reference": expected_ppl,
    }
    print(f"\n{loaded.name} on {runtime.name}: {figures} (2 x {RUNTIME_NEW_TOKENS} tokens per prompt length "
          f"{RUNTIME_PROMPT_LENS}, {windows.numel()} scored tokens)")
    return figures


def assert_runs_like_the_reference(figures: dict[str, float]) -> None:
    """fp32 on the CPU: every greedy token the reference's, logits within MAX_REL_ERR, perplexity within 0.1%."""
    assert figures["token_agreement"] == 1.0, figures
    assert figures["logits_max_rel_err"] < MAX_REL_ERR, figures
    assert abs(figures["ppl_delta_pct"]) < 0.1, figures
