"""The package's own Llama-family decoder (Llama 2/3.x, SmolLM2, Mistral, Qwen2.5, Qwen3, Phi-3) with an explicit
KV cache.

Phi-3 checkpoints fuse q/k/v into qkv_proj and gate/up into gate_up_proj; the decoder keeps them apart (views of
the fused weights, no copy), so every family exports the same graph. LongRoPE (Phi-3's long-context RoPE) picks its
long factors for a whole call once the call's largest position reaches original_max_position_embeddings, as
transformers' model forward does; keys already in the cache keep the factors they were computed with, whereas
transformers' generate() recomputes the whole cache once at the step that crosses that length.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench_kernels.architecture import DECODER_MODEL_TYPES

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = DECODER_MODEL_TYPES
ROPE_TYPES = ("default", "llama3", "longrope")

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecoderArgs:
    """Architecture of a Llama-family decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)
    partial_rotary_factor: float = 1.0  # RoPE turns only the first int(head_dim * factor) dims of each head
    # None for plain RoPE, else {"rope_type": "llama3", "factor": ..., ...} or {"rope_type": "longrope",
    # "short_factor": [...], "long_factor": [...], "original_max_position_embeddings": ..., ...}
    rope_scaling: dict | None = None

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def long_rope(self) -> bool:
        return self.rope_scaling is not None and self.rope_scaling["rope_type"] == "longrope"

    @classmethod
    def from_hf_config(cls, config) -> DecoderArgs:
        """Read a transformers 5.x config (Llama, Mistral, Qwen2, Qwen3, Phi-3); raise on features this decoder
        lacks."""
        model_type = config.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}")
        if config.hidden_act != "silu" or getattr(config, "mlp_bias", False):
            raise ValueError(f"only bias-free SwiGLU MLPs are supported (hidden_act={config.hidden_act!r})")
        # Qwen2 configs have no attention_bias field: their q/k/v projections always carry a bias. Elsewhere
        # attention_bias also biases o_proj, which this decoder lacks.
        attention_bias = model_type == "qwen2"
        if model_type != "qwen2" and getattr(config, "attention_bias", False):
            raise ValueError(f"attention_bias=True (biases on q/k/v and o) is not supported for {model_type!r}")
        rope = dict(config.rope_parameters or {})  # transformers 5 folds rope_theta and rope_scaling into this
        rope_theta = rope.pop("rope_theta", 10_000.0)
        partial_rotary_factor = rope.pop("partial_rotary_factor", 1.0)
        if partial_rotary_factor != 1.0 and model_type != "phi3":  # only Phi-3's transformers code applies it
            raise ValueError(f"partial rotary embeddings are not supported for {model_type!r}")
        rope_type = rope.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {rope_type!r} is not supported (only {', '.join(map(repr, ROPE_TYPES))})")
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window:
            logger.warning("sliding_window=%d is ignored: outputs are exact only up to that many tokens", window)
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            rope_theta=float(rope_theta),
            rms_norm_eps=config.rms_norm_eps,
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=bool(config.tie_word_embeddings),
            attention_bias=attention_bias,
            qk_norm=model_type == "qwen3",
            partial_rotary_factor=float(partial_rotary_factor),
            rope_scaling=rope if rope_type != "default" else None,
        )


def rope_inv_freq(args: DecoderArgs, device: torch.device | None = None, long_context: bool = False) -> torch.Tensor:
    """Inverse RoPE frequencies [rotary_dim / 2] in fp32: with Llama-3 frequency scaling, or divided by LongRoPE's
    short factors (its long ones with long_context), when configured."""
    dim = args.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    if args.long_rope:
        factors = args.rope_scaling["long_factor" if long_context else "short_factor"]
        return 1.0 / (torch.tensor(factors, dtype=torch.float32, device=device) * args.rope_theta**exponents)
    inv_freq = 1.0 / (args.rope_theta**exponents)
    if args.rope_scaling is None:
        return inv_freq
    factor = args.rope_scaling["factor"]
    low_freq_factor = args.rope_scaling["low_freq_factor"]
    high_freq_factor = args.rope_scaling["high_freq_factor"]
    old_context_len = args.rope_scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by factor, short ones kept, the band between interpolated smoothly.
    scaled = torch.where(wavelen > old_context_len / low_freq_factor, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_context_len / high_freq_factor) & (wavelen <= old_context_len / low_freq_factor)
    return torch.where(is_medium, smoothed, scaled)


def rope_attention_factor(args: DecoderArgs) -> float:
    """What LongRoPE multiplies cos and sin by, in both regimes (1 for other RoPE), as transformers computes it."""
    if not args.long_rope:
        return 1.0
    scaling = args.rope_scaling
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]
    original = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor")
    if factor is None:  # Phi-3 states the extension as max_position_embeddings over the original length
        factor = args.max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def rope_cos_sin(args: DecoderArgs, positions: torch.Tensor, dtype: torch.dtype,
                 long_context: bool | torch.Tensor = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [*positions.shape, rotary_dim] of RoPE at positions, computed in fp32 and then cast; long_context
    (a bool or a 0-d bool tensor, so a traced graph decides it at run time) picks LongRoPE's long factors."""
    inv_freq = rope_inv_freq(args, positions.device)
    if args.long_rope:
        long_inv_freq = rope_inv_freq(args, positions.device, long_context=True)
        if isinstance(long_context, torch.Tensor):
            inv_freq = torch.where(long_context, long_inv_freq, inv_freq)
        elif long_context:
            inv_freq = long_inv_freq
    freqs = positions[..., None].float() * inv_freq  # freqs: [..., rotary_dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if args.long_rope:
        factor = rope_attention_factor(args)
        cos, sin = cos * factor, sin * factor
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dim: (x1, x2) -> (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int | None = None) -> torch.Tensor:
    """RoPE on each head of x [..., Dh]; with rotary_dim (partial rotary), on its first rotary_dim dims only, the
    rest passed through."""
    if rotary_dim is None:
        return x * cos + rotate_half(x) * sin
    turned, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((turned * cos + rotate_half(turned) * sin, passed), dim=-1)


def unfuse_projections(args: DecoderArgs, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with Phi-3's fused qkv_proj and gate_up_proj weights split into q/k/v and gate/up (views)."""
    sizes = [args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim, args.num_kv_heads * args.head_dim]
    out = {}
    for name, tensor in state.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            prefix = name.removesuffix("qkv_proj.weight")
            out.update(zip((f"{prefix}{p}_proj.weight" for p in "qkv"), tensor.split(sizes)))
        elif name.endswith("mlp.gate_up_proj.weight"):
            prefix = name.removesuffix("gate_up_proj.weight")
            out[f"{prefix}gate_proj.weight"], out[f"{prefix}up_proj.weight"] = tensor.chunk(2)
        else:
            out[name] = tensor
    return out


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention over the past KV cache plus the new tokens."""

    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        self.rotary_dim = args.rotary_dim if args.rotary_dim < args.head_dim else None
        self.q_proj = nn.Linear(args.hidden_size, args.num_heads * args.head_dim, bias=args.attention_bias)
        self.k_proj = nn.Linear(args.hidden_size, args.num_kv_heads * args.head_dim, bias=args.attention_bias)
        self.v_proj = nn.Linear(args.hidden_size, args.num_kv_heads * args.head_dim, bias=args.attention_bias)
        self.o_proj = nn.Linear(args.num_heads * args.head_dim, args.hidden_size, bias=False)
        self.qk_norm = args.qk_norm
        if args.qk_norm:
            self.q_norm = RMSNorm(args.head_dim, args.rms_norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        allowed: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, S, _ = x.shape  # x: [B, S, D]; cos, sin: [B, 1, S, rotary_dim]; allowed: [B, 1, S, P+S]
        q = self.q_proj(x).view(B, S, -1, self.head_dim)  # q: [B, S, H, Dh]
        k = self.k_proj(x).view(B, S, -1, self.head_dim)  # k: [B, S, KVH, Dh]
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # q: [B, H, S, Dh]; k: [B, KVH, S, Dh]
        v = self.v_proj(x).view(B, S, -1, self.head_dim).transpose(1, 2)  # v: [B, KVH, S, Dh]
        q, k = apply_rope(q, cos, sin, self.rotary_dim), apply_rope(k, cos, sin, self.rotary_dim)
        k = torch.cat([past[0], k], dim=2)  # k: [B, KVH, P+S, Dh]
        v = torch.cat([past[1], v], dim=2)  # v: [B, KVH, P+S, Dh]
        n_rep = self.num_heads // self.num_kv_heads
        k_rep = k.repeat_interleave(n_rep, dim=1) if n_rep > 1 else k  # k_rep: [B, H, P+S, Dh]
        v_rep = v.repeat_interleave(n_rep, dim=1) if n_rep > 1 else v
        scores = (q @ k_rep.transpose(2, 3)) * self.head_dim**-0.5  # scores: [B, H, S, P+S]
        # A finite fill keeps fully masked rows (left-padding queries) uniform instead of NaN.
        scores = scores.float().masked_fill(~allowed, torch.finfo(torch.float32).min)
        probs = scores.softmax(dim=-1).to(q.dtype)
        out = (probs @ v_rep).transpose(1, 2).reshape(B, S, -1)  # out: [B, S, H*Dh]
        return self.o_proj(out), (k, v)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, allowed, past):
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, allowed, past)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), present


class Decoder(nn.Module):
    """Causal LM with explicit past_key_values in and present out; module names follow transformers' Llama."""

    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: KVCache,
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits [B, S, V] for the new tokens and the KV cache grown to P+S."""
        S, T = input_ids.shape[1], attention_mask.shape[1]  # input_ids: [B, S]; attention_mask: [B, T=P+S]
        x = self.embed_tokens(input_ids)  # x: [B, S, D]

        # RoPE from position ids, in fp32 (built here so casting the model never rounds it); LongRoPE's long
        # factors once this call reaches past the original context, as transformers decides per forward.
        long_context = self.args.long_rope and (
            position_ids.max() + 1 > self.args.rope_scaling["original_max_position_embeddings"])
        cos, sin = rope_cos_sin(self.args, position_ids, x.dtype, long_context)  # cos, sin: [B, S, rotary_dim]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, rotary_dim]

        # Query i sits at cache slot P+i and may see slots <= P+i that hold real tokens.
        q_slot = torch.arange(T - S, T, device=input_ids.device)  # q_slot: [S]
        k_slot = torch.arange(T, device=input_ids.device)  # k_slot: [T]
        causal = k_slot[None, :] <= q_slot[:, None]  # causal: [S, T]
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # allowed: [B, 1, S, T]

        present = []
        for layer, past in zip(self.layers, past_key_values):
            x, kv = layer(x, cos, sin, allowed, past)
            present.append(kv)
        return self.lm_head(self.norm(x)), present  # logits: [B, S, V]

    @classmethod
    def from_state_dict(cls, args: DecoderArgs, state: dict[str, torch.Tensor]) -> Decoder:
        """Build without random init, taking the given tensors as weights (no copy)."""
        if args.tie_word_embeddings:
            state = {**state, "lm_head.weight": state["embed_tokens.weight"]}
        with torch.device("meta"):
            decoder = cls(args)
        decoder.load_state_dict(state, strict=True, assign=True)
        if args.tie_word_embeddings:
            decoder.lm_head.weight = decoder.embed_tokens.weight
        return decoder.eval().requires_grad_(False)

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> Decoder:
        """Build from a transformers causal LM, sharing its weights (tied or untied lm_head; fused ones split)."""
        args = DecoderArgs.from_hf_config(hf_model.config)
        state = {name.removeprefix("model."): t for name, t in hf_model.state_dict().items()}
        return cls.from_state_dict(args, unfuse_projections(args, state))

    def cast(self, dtype: torch.dtype) -> Decoder:
        """A copy with weights in dtype; self is left untouched."""
        state = {name: t.to(dtype) for name, t in self.state_dict().items()}
        return Decoder.from_state_dict(self.args, state)


def empty_past(args: DecoderArgs, batch_size: int, dtype: torch.dtype, device: torch.device | str) -> KVCache:
    """A zero-length KV cache: num_layers pairs of [B, KVH, 0, Dh]."""
    shape = (batch_size, args.num_kv_heads, 0, args.head_dim)
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(args.num_layers)
    ]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded batch as transformers' generate() derives them; pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


@torch.inference_mode()
def greedy_generate(
    decoder: Decoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    suppress_token_ids: Sequence[int] = (),
) -> torch.Tensor:
    """Greedy decoding of a left-padded batch for exactly max_new_tokens tokens, never emitting suppress_token_ids."""
    B = input_ids.shape[0]  # input_ids, attention_mask: [B, S]
    past = empty_past(decoder.args, B, decoder.embed_tokens.weight.dtype, input_ids.device)
    position_ids = position_ids_from_mask(attention_mask)
    suppressed = torch.tensor(list(suppress_token_ids), dtype=torch.long, device=input_ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        logits, past = decoder(input_ids, position_ids, attention_mask, past)
        next_logits = logits[:, -1].index_fill(-1, suppressed, -math.inf)  # next_logits: [B, V]
        input_ids = next_logits.argmax(dim=-1, keepdim=True)  # input_ids: [B, 1]
        tokens.append(input_ids)
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return torch.cat(tokens, dim=1)  # [B, max_new_tokens]
