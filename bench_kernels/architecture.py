"""Torch-free model arithmetic: presets as plain fields, parameter counts, KV bytes (the roofline is roofline.py)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# The model families (config.json's model_type) the package's own decoder implements (bench_kernels.decoder): what
# the runtimes built on it (onnxruntime, tensorrt, compiled) run.
DECODER_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


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


def stored_weight_bytes(counts: ParameterCounts, projection_bytes: float, unquantized_bytes: int) -> int:
    """Bytes of the weights as stored: projections at their precision's bytes, the rest in the load dtype."""
    return int(counts.projections * projection_bytes) + (counts.total - counts.projections) * unquantized_bytes


def kv_bytes_per_token(config: Any, element_size: int) -> int:
    """Bytes of keys and values one token adds to the cache, across all layers."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_size
