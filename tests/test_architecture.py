"""Torch-free model arithmetic: prefill FLOPs against hand counts and the Llama-3.1-8B preset."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench_kernels.architecture import preset_fields
from bench_kernels.roofline import prefill_flops

# 2 layers, hidden 8, 2 query heads and 1 KV head of dimension 4, MLP 16, vocabulary 10.
SMALL = SimpleNamespace(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=16, vocab_size=10, tie_word_embeddings=True)


def test_prefill_flops_of_a_small_config_by_hand() -> None:
    # Per layer: q 8x8 + k 8x4 + v 8x4 + o 8x8 = 192 attention parameters, 3 x 8 x 16 = 384 MLP: 576; 2 layers 1152.
    batch, prompt = 3, 5
    projections = 2 * 1152 * batch * prompt  # 34,560
    head_last_only = 2 * 10 * 8 * batch  # 480: logits for the last position of each prompt
    attention = 4 * 2 * 2 * 4 * batch * (5 * 6 // 2)  # QK^T and PV: 4 x layers x heads x Dh x 15 causal pairs: 2,880
    assert prefill_flops(SMALL, batch, prompt) == projections + head_last_only + attention == 37_920
    head_every_position = 2 * 10 * 8 * batch * prompt  # the tied head still runs: 2,400
    assert prefill_flops(SMALL, batch, prompt, logits_every_position=True) == \
        projections + head_every_position + attention


def test_prefill_flops_of_llama_3_1_8b() -> None:
    """About 2 x 7.0e9 projection parameters per token, the 0.53e9-parameter head once per prompt (7.5e9 with the
    head on every position), plus attention: 4 x 32 layers x 32 heads x 128 x S(S+1)/2."""
    config = SimpleNamespace(**preset_fields("llama-3.1-8b"))
    tokens = 2048
    attention = 4 * 32 * 32 * 128 * tokens * (tokens + 1) / 2
    assert prefill_flops(config, 1, tokens) == pytest.approx(2 * 6.98e9 * tokens + attention, rel=1e-3)
    assert prefill_flops(config, 1, tokens, logits_every_position=True) == \
        pytest.approx(2 * 7.50e9 * tokens + attention, rel=1e-3)
    # Batched prompts are independent: the FLOPs scale with the batch.
    assert prefill_flops(config, 4, tokens) == 4 * prefill_flops(config, 1, tokens)


def test_qwen3_8b_preset_has_the_published_size() -> None:
    """Qwen3-8B's model card: 8.2B parameters, 6.95B of them outside the embeddings (its untied LM head included in
    the 8.2B); the per-head q/k norms (36 x 2 x 128) are the only weights these counts leave out."""
    from bench_kernels.architecture import parameter_counts

    counts = parameter_counts(SimpleNamespace(**preset_fields("qwen3-8b")))
    assert counts.projections + counts.norms == pytest.approx(6.95e9, rel=1e-3)
    assert counts.total == pytest.approx(8.19e9, rel=1e-3)
