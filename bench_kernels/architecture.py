"""Torch-free model arithmetic: presets as plain fields, parameter counts, KV bytes, decode roofline, prefill FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# The model families (config.json's model_type) the package's own decoder implements (bench_kernels.decoder): what
# the runtimes built on it (onnxruntime, tensorrt, compiled) run.
DECODER_MODEL_TYPES = ("llama", "mistral", "qwen2")


def presets_dir() -> Path:
    """The architecture presets shipped in the package (bench_kernels/presets/)."""
    return Path(str(resources.files("bench_kernels").joinpath("presets")))


def preset_names() -> list[str]:
    """Names of the architecture presets (model: preset:<name>)."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def preset_fields(name: str) -> dict[str, Any]:
    """A preset's architecture fields as written in its YAML file (callers check the name first)."""
    return yaml.safe_load((presets_dir() / f"{name}.yaml").read_text())


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a decoder-only transformer, split by the parts a runtime may store in different formats."""

    projections: int  # the attention and MLP matrices of every layer
    norms: int
    embedding: int
    lm_head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.projections + self.norms + self.embedding + self.lm_head


def parameter_counts(config: Any) -> ParameterCounts:
    """Parameter counts from the architecture fields alone (biases, where a model has them, are not counted)."""
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    attention = hidden * head_dim * (2 * config.num_attention_heads + 2 * kv_heads)
    mlp = 3 * hidden * config.intermediate_size
    tied = getattr(config, "tie_word_embeddings", False)
    return ParameterCounts(projections=layers * (attention + mlp), norms=(2 * layers + 1) * hidden,
                           embedding=vocab * hidden, lm_head=0 if tied else vocab * hidden)


def kv_bytes_per_token(config: Any, element_size: int) -> int:
    """Bytes of keys and values one token adds to the cache, across all layers."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_size


def decode_step_bytes(weight_bytes: int, kv_token_bytes: int, batch_size: int, input_len: int,
                      output_len: int) -> float:
    """Bytes one decode step reads, averaged over the steps: all weights and the batch's KV cache once."""
    mean_context = input_len + (output_len - 1) / 2  # tokens in the cache, averaged over the decode steps
    return weight_bytes + batch_size * mean_context * kv_token_bytes


def decode_roofline_tokens_per_s(weight_bytes: int, kv_token_bytes: int, batch_size: int, input_len: int,
                                 output_len: int, bandwidth_gbps: float, link_bytes: int = 0,
                                 link_gbps: float | None = None) -> float:
    """Upper bound on decode tokens/s: each step reads all weights and the batch's KV cache once (a device's
    share of them, when the model is split) and sends link_bytes to the other devices at link_gbps."""
    step_bytes = decode_step_bytes(weight_bytes, kv_token_bytes, batch_size, input_len, output_len)
    step_s = step_bytes / (bandwidth_gbps * 1e9) + (link_bytes / (link_gbps * 1e9) if link_bytes else 0.0)
    return batch_size / step_s


def prefill_flops(config: Any, batch_size: int, input_len: int, logits_every_position: bool = False) -> int:
    """Matmul FLOPs of one prefill of batch_size prompts of input_len tokens (multiply-add = 2 FLOPs).

    FLOPs = 2 * P * B * S                      projections: P = attention (q, k, v, o) and MLP matrices of every layer
          + 2 * V * D * B * H                  LM head: H = S where every position gets logits, else 1 (the last)
          + 2 * 2 * L * A * Dh * B * S(S+1)/2  causal attention: QK^T and PV, query i sees keys 0..i

    with B batch, S prompt tokens, V vocabulary, D hidden size, L layers, A query heads and Dh head dimension.
    Norms, RoPE, softmax and activations are left out (a fraction of a percent); the head is counted even when
    tied to the embedding (its matmul still runs), and attention counts only the causal half a mask keeps."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    tokens = batch_size * input_len
    projections = 2 * parameter_counts(config).projections * tokens
    head_positions = tokens if logits_every_position else batch_size
    head = 2 * config.vocab_size * config.hidden_size * head_positions
    attention = (2 * 2 * config.num_hidden_layers * config.num_attention_heads * head_dim
                 * batch_size * input_len * (input_len + 1) // 2)
    return projections + head + attention
