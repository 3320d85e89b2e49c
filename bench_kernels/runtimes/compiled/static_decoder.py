"""The shared decoder rebuilt for speed: fused projections, a preallocated static KV cache, per-layer
functions under torch.compile, and on CUDA the prefill and the whole decode step captured once per
shape as CUDA graphs.

Numbers follow decoder.Decoder exactly (same RoPE, norms, Qwen3's q/k norms and GQA head grouping); only
the kernels and the cache layout change. Prompts of a batch are equally long (workload.make_prompts), so
every row shares one position and no padding mask is needed.

With a Shard (tensor parallelism, sharding.py) each process holds its part of every projection and of
the KV cache; the all-reduces after o and down and the LM head's all-gather sit inside the compiled
functions, so they are part of the captured CUDA graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench_kernels.decoder import Decoder, DecoderArgs, apply_rope, rope_cos_sin
from bench_kernels.quantization import quantize_int4
from bench_kernels.runtimes.compiled.decode_attention import decode_attention, masked_attention
from bench_kernels.runtimes.compiled.linear_ops import (add_norm_linear, int4_words, linear, quantize_fp8, rms_norm,
                                                        swiglu_linear)
from bench_kernels.runtimes.compiled.sharding import Shard, all_gather_columns, all_reduce_sum, check_split

log = logging.getLogger(__name__)

WEIGHT_FORMATS = ("native", "fp8", "int4")


@dataclass
class LayerWeights:
    """One block's weights; a projection is (weight, scales): (weight [N, K], None), fp8 (weight [N, K], per-channel
    scales [N]) or int4 (int32 words [N, K / 8], linear_ops.int4_words; group scales [N, K / group])."""

    input_norm: torch.Tensor
    qkv: tuple[torch.Tensor, torch.Tensor | None]
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None  # [Dh], Qwen3's RMSNorm over each query head
    k_norm: torch.Tensor | None
    o: tuple[torch.Tensor, torch.Tensor | None]
    post_norm: torch.Tensor
    gate_up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]

    def tensors(self) -> list[torch.Tensor | None]:
        return [self.input_norm, *self.qkv, self.qkv_bias, self.q_norm, self.k_norm, *self.o, self.post_norm,
                *self.gate_up, *self.down]


def _project(weight: torch.Tensor, weight_format: str, own: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stored form of a projection weight. own: copy even a contiguous view (a shard of a larger weight), so
    the full weight can be freed."""
    # detach(): a new tensor on the same storage, so moving the source module to "meta" later keeps it alive.
    if weight_format == "fp8":
        return quantize_fp8(weight)
    if weight_format == "int4":
        quantized = quantize_int4(weight)
        return int4_words(quantized.packed, quantized.group_size), quantized.scales
    return (weight.detach().clone() if own else weight.detach().contiguous()), None


def _takes_prologues(x: torch.Tensor) -> bool:
    """Whether the projections take the residual adds, the norms and SwiGLU into their kernels (linear_ops' Prologue):
    on a GPU, for one row (a batch-1 decode step), where the weight reads leave the kernel's few activations free
    and each launch saved is a few microseconds of a step of a few milliseconds."""
    return x.is_cuda and x.shape[0] * x.shape[1] == 1


def _add_norm_linear(x: torch.Tensor, delta: torch.Tensor | None, norm: torch.Tensor, eps: float, w: torch.Tensor,
                     s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(h)), h) for h = x + delta: in the projection's kernel (_takes_prologues), else traced."""
    if _takes_prologues(x):
        return add_norm_linear(x, delta, norm, eps, w, s)
    if delta is not None:
        x = x + delta
    return linear(rms_norm(x, norm, eps), w, s), x


def _qkv_rope(x: torch.Tensor, delta: torch.Tensor | None, norm: torch.Tensor, w: torch.Tensor,
              s: torch.Tensor | None, bias: torch.Tensor | None, q_norm: torch.Tensor | None,
              k_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, eps: float, heads: int, kv_heads: int,
              head_dim: int):
    """Residual add (delta: the previous layer's last product, or None), norm, fused q/k/v projection, per-head q/k
    norms (Qwen3) and RoPE: q [B, H, S, Dh], k and v [B, KVH, S, Dh], and the residual stream x + delta."""
    B, S, _ = x.shape
    qkv, x = _add_norm_linear(x, delta, norm, eps, w, s)
    if bias is not None:
        qkv = qkv + bias
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(B, S, heads, head_dim)
    k = k.view(B, S, kv_heads, head_dim)
    if q_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = v.view(B, S, kv_heads, head_dim).transpose(1, 2)
    rotary_dim = cos.shape[-1] if cos.shape[-1] < head_dim else None
    return apply_rope(q, cos, sin, rotary_dim), apply_rope(k, cos, sin, rotary_dim), v, x


def _out_and_mlp(x: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, so: torch.Tensor | None,
                 post_norm: torch.Tensor, wgu: torch.Tensor, sgu: torch.Tensor | None, wd: torch.Tensor,
                 sd: torch.Tensor | None, eps: float, group: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output projection, residual, norm and SwiGLU MLP; attn: [B, S, H*Dh] (this rank's heads). Returns the
    residual stream and the MLP's product, whose sum is the layer's output: the next layer's norm adds them. With a
    tensor-parallel group, o and down give partial sums over this rank's features: one all-reduce each."""
    out = linear(attn, wo, so)
    gate_up, x = _add_norm_linear(x, all_reduce_sum(out, group) if group else out, post_norm, eps, wgu, sgu)
    if _takes_prologues(x):
        down = swiglu_linear(gate_up, wd, sd)
    else:
        gate, up = gate_up.chunk(2, dim=-1)
        down = linear(F.silu(gate) * up, wd, sd)
    return x, (all_reduce_sum(down, group) if group else down)


def _decode_layer(x, delta, k_cache, v_cache, pos, cos, sin, norm, w, s, bias, q_norm, k_norm, eps, heads, kv_heads,
                  head_dim, wo, so, post_norm, wgu, sgu, wd, sd, tail_eps, group):
    """One layer of a decode step in one compiled function; the layer's output is the sum of the two tensors it
    returns (delta: the previous layer's, zeros for the first), added by the next layer's norm. The new key and value
    are written into cache slot `pos` here, so inductor folds the write into the RoPE kernel (in place, no copy of
    the cache) instead of launching two index_copy kernels a layer; the one new query per row then attends over slots
    0..pos (decode_attention: the query heads grouped per KV head, so each cache is read once, never repeated)."""
    q, k, v, x = _qkv_rope(x, delta, norm, w, s, bias, q_norm, k_norm, cos, sin, eps, heads, kv_heads, head_dim)
    k_cache.index_copy_(2, pos, k)
    v_cache.index_copy_(2, pos, v)
    B, H, _, Dh = q.shape
    # The CPU's masked math stays traced, so inductor fuses it; the custom op would run it eagerly, op by op.
    attend = decode_attention if q.is_cuda else masked_attention
    attn = attend(q.reshape(B, H, Dh), k_cache, v_cache, pos).reshape(B, 1, H * Dh)
    return _out_and_mlp(x, attn, wo, so, post_norm, wgu, sgu, wd, sd, tail_eps, group)


def _prefill_layer_tail(x, q, k, v, wo, so, post_norm, wgu, sgu, wd, sd, eps, group):
    B, H, S, Dh = q.shape
    attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # [B, H, S, Dh]
    x, down = _out_and_mlp(x, attn.transpose(1, 2).reshape(B, S, H * Dh), wo, so, post_norm, wgu, sgu, wd, sd, eps,
                           group)
    return x + down


def _head(x: torch.Tensor, delta: torch.Tensor | None, norm: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None,
          eps: float, group: str | None, world: int, vocab_size: int) -> torch.Tensor:
    """Final norm and LM head for the last position of x + delta (the last layer's two outputs; delta None for a
    prefill's hidden states) only: logits [B, V] in fp32. With a group, each rank holds a slice of the (padded)
    vocabulary; the slices are gathered in the model's dtype, then cast."""
    last = x[:, -1:] if delta is None else x[:, -1:] + delta[:, -1:]
    logits = linear(rms_norm(last, norm, eps), w, s)[:, 0]  # [B, V / world, padded]
    if group:
        logits = all_gather_columns(logits, world, group)[:, :vocab_size]
    return logits.float()


@dataclass
class ShapeState:
    """Everything one (batch, prompt length, output length) needs: KV caches, static buffers, two graphs."""

    batch_size: int
    input_len: int
    cache_len: int
    k_caches: list[torch.Tensor]
    v_caches: list[torch.Tensor]
    prompt: torch.Tensor  # [B, S] the prompt ids the prefill reads
    token: torch.Tensor  # [B, 1] the token fed to the next decode step
    position: torch.Tensor  # [1] its position (and cache slot)
    generated: torch.Tensor  # [B, max(T, 2)] every token produced so far
    step: torch.Tensor  # [1] column of `generated` the next step writes
    no_delta: torch.Tensor  # [B, 1, D] zeros: the first layer's delta, so that every layer runs one compiled function
    prefill_graph: torch.cuda.CUDAGraph | None = None
    decode_graph: torch.cuda.CUDAGraph | None = None


class StaticDecoder:
    """Greedy generation with a static KV cache; build with `from_decoder`, then `generate` / `prefill_logits`."""

    def __init__(self, args: DecoderArgs, embed: torch.Tensor, layers: list[LayerWeights], final_norm: torch.Tensor,
                 lm_head: tuple[torch.Tensor, torch.Tensor | None], weight_format: str, compile_mode: str | None,
                 suppress_token_ids: Sequence[int] = (), shard: Shard | None = None):
        self.args, self.embed, self.layers, self.final_norm, self.lm_head = args, embed, layers, final_norm, lm_head
        self.weight_format = weight_format
        self.shard = shard
        # This rank's heads (all of them without a shard) and the collectives' group (None: no collectives).
        self.heads = shard.query_heads(args.num_heads, args.num_kv_heads)[1] if shard else args.num_heads
        self.kv_heads = shard.kv_heads(args.num_kv_heads)[1] if shard else args.num_kv_heads
        self.group = shard.group_name if shard and shard.world > 1 else None
        self.world = shard.world if shard else 1
        self.dtype, self.device = embed.dtype, embed.device
        # [P, rotary_dim] tables, fp32 like Decoder, then cast. A decode step at position p sees p + 1 positions: the
        # table holds LongRoPE's long factors from the original context length on; a prefill longer than that
        # uses the long factors at every position (_rope_rows).
        positions = torch.arange(args.max_position_embeddings, device=self.device)
        self.cos_table, self.sin_table = rope_cos_sin(args, positions, self.dtype)
        self.long_cos_table, self.long_sin_table = self.cos_table, self.sin_table
        if args.long_rope:
            original = args.rope_scaling["original_max_position_embeddings"]
            self.long_cos_table, self.long_sin_table = rope_cos_sin(args, positions, self.dtype, long_context=True)
            self.cos_table[original:] = self.long_cos_table[original:]
            self.sin_table[original:] = self.long_sin_table[original:]
        self.suppressed = torch.tensor(list(suppress_token_ids), dtype=torch.long, device=self.device)
        self.compile_mode = compile_mode
        if compile_mode:
            # Each per-layer function is compiled per dtype (bf16, fp8 weights...) and per shape until dynamo
            # turns the shape dynamic; a sweep exceeds dynamo's default of 8 versions per function.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

        def wrap(fn: Callable) -> Callable:
            return torch.compile(fn, mode=compile_mode, fullgraph=True) if compile_mode else fn

        self._qkv_rope, self._head = wrap(_qkv_rope), wrap(_head)
        self._decode_layer, self._prefill_tail = wrap(_decode_layer), wrap(_prefill_layer_tail)
        self._state: ShapeState | None = None
        self.use_cuda_graphs = self.device.type == "cuda"

    @classmethod
    def from_decoder(cls, decoder: Decoder, weight_format: str = "native", compile_mode: str | None = "default",
                     suppress_token_ids: Sequence[int] = (), release: Callable[[int], None] | None = None,
                     shard: Shard | None = None) -> StaticDecoder:
        """Pack a shared decoder's weights (see from_modules)."""
        return cls.from_modules(decoder.args, decoder.embed_tokens.weight, lambda i: decoder.layers[i],
                                decoder.norm.weight, decoder.lm_head.weight, weight_format, compile_mode,
                                suppress_token_ids, release, shard)

    @classmethod
    @torch.inference_mode()
    def from_modules(cls, args: DecoderArgs, embed: torch.Tensor, block: Callable[[int], torch.nn.Module],
                     final_norm: torch.Tensor, lm_head: torch.Tensor, weight_format: str = "native",
                     compile_mode: str | None = "default", suppress_token_ids: Sequence[int] = (),
                     release: Callable[[int], None] | None = None, shard: Shard | None = None) -> StaticDecoder:
        """Fuse q/k/v and gate/up (and quantize to fp8 or int4 if asked), keeping only this shard's part of each.

        block(i) gives layer i with the shared decoder's (and transformers' Llama) module names, or transformers'
        Phi-3 layer with its fused qkv_proj and gate_up_proj, its weights on the device the decoder will run on;
        `release(i)` is called once layer i is packed, so the caller can free it before the next one arrives (a
        model larger than the device's memory streams through)."""
        if weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format {weight_format!r} is not one of {WEIGHT_FORMATS}")
        a = args
        shard = shard or Shard(0, 1, "")
        check_split(a.num_heads, a.num_kv_heads, shard.world)
        own = shard.world > 1
        q_first, q_count = shard.query_heads(a.num_heads, a.num_kv_heads)
        kv_first, kv_count = shard.kv_heads(a.num_kv_heads)
        mlp_first, mlp_count = shard.span(a.intermediate_size)
        q_rows = (q_first * a.head_dim, q_count * a.head_dim)
        kv_rows = (kv_first * a.head_dim, kv_count * a.head_dim)

        def qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # This rank's query, key and value heads, fused along the output features: [q | k | v].
            return torch.cat([q.narrow(0, *q_rows), k.narrow(0, *kv_rows), v.narrow(0, *kv_rows)])

        def kept(norm: torch.nn.Module | None) -> torch.Tensor | None:
            return None if norm is None else (norm.weight.detach().clone() if own else norm.weight.detach())

        layers = []
        for i in range(a.num_layers):
            layer = block(i)
            attn, mlp = layer.self_attn, layer.mlp
            if hasattr(attn, "qkv_proj"):  # transformers' Phi-3 layer: q/k/v and gate/up fused in the checkpoint
                q_w, k_w, v_w = attn.qkv_proj.weight.split([a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim,
                                                           a.num_kv_heads * a.head_dim])
                gate_w, up_w = mlp.gate_up_proj.weight.chunk(2)
            else:
                q_w, k_w, v_w = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
                gate_w, up_w = mlp.gate_proj.weight, mlp.up_proj.weight
            q_proj = getattr(attn, "q_proj", None)
            bias = (qkv(q_proj.bias, attn.k_proj.bias, attn.v_proj.bias)
                    if q_proj is not None and q_proj.bias is not None else None)
            gate_up = torch.cat([gate_w.narrow(0, mlp_first, mlp_count), up_w.narrow(0, mlp_first, mlp_count)])
            layers.append(LayerWeights(
                input_norm=kept(layer.input_layernorm),
                qkv=_project(qkv(q_w, k_w, v_w), weight_format),
                qkv_bias=bias,
                q_norm=kept(getattr(attn, "q_norm", None)),
                k_norm=kept(getattr(attn, "k_norm", None)),
                o=_project(attn.o_proj.weight.narrow(1, *q_rows), weight_format, own),
                post_norm=kept(layer.post_attention_layernorm),
                gate_up=_project(gate_up, weight_format),
                down=_project(mlp.down_proj.weight.narrow(1, mlp_first, mlp_count), weight_format, own),
            ))
            if release is not None:
                release(i)
        # The LM head stays in the model's precision, as common fp8 and int4 recipes keep it: it sets every logit
        # directly.
        # Sharded, each rank keeps its rows of the vocabulary padded to a multiple of the group size (zero rows,
        # whose logits are cut off after the gather).
        head = lm_head.detach()
        if own:
            rows = shard.padded_vocab(a.vocab_size)
            head = F.pad(head, (0, 0, 0, rows * shard.world - a.vocab_size)).narrow(0, shard.rank * rows, rows).clone()
        return cls(a, embed.detach(), layers, final_norm.detach(), (head, None), weight_format, compile_mode,
                   suppress_token_ids, shard if own else None)

    # ---- sizes -------------------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        """Bytes of every weight this process stores (a tied embedding and LM head counted once)."""
        from bench_kernels.models import tensor_bytes

        kept = [t for layer in self.layers for t in layer.tensors()] + [self.embed, self.final_norm, *self.lm_head]
        return tensor_bytes(t for t in kept if t is not None)

    def kv_element_size(self) -> int:
        return self.embed.element_size()

    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token adds to this process's cache, across all layers."""
        return 2 * self.args.num_layers * self.kv_heads * self.args.head_dim * self.kv_element_size()

    def link_bytes_per_token(self) -> int:
        """Bytes this rank sends per decode step and batch row: two ring all-reduces of [D] per layer
        (2 (n-1)/n of the message each) and its part of the logits all-gather ((n-1)/n of [V padded])."""
        if self.world == 1:
            return 0
        n, element = self.world, self.embed.element_size()
        all_reduces = 2 * self.args.num_layers * 2 * (n - 1) / n * self.args.hidden_size * element
        gather = (n - 1) / n * self.lm_head[0].shape[0] * n * element
        return int(all_reduces + gather)

    # ---- the forward pieces --------------------------------------------------------------------------
    def _layer_args(self, layer: LayerWeights) -> tuple:
        a = self.args
        return (layer.input_norm, *layer.qkv, layer.qkv_bias, layer.q_norm, layer.k_norm, a.rms_norm_eps, self.heads,
                self.kv_heads, a.head_dim)

    def _tail_args(self, layer: LayerWeights) -> tuple:
        return (*layer.o, layer.post_norm, *layer.gate_up, *layer.down, self.args.rms_norm_eps, self.group)

    def _rope_rows(self, S: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [1, 1, S, rotary_dim] of a prefill of S tokens: LongRoPE's long factors throughout when S
        exceeds the original context (as transformers' forward picks them), else the table's rows."""
        long = self.args.long_rope and S > self.args.rope_scaling["original_max_position_embeddings"]
        cos, sin = (self.long_cos_table, self.long_sin_table) if long else (self.cos_table, self.sin_table)
        return cos[:S][None, None], sin[:S][None, None]

    def _logits(self, x: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        return self._head(x, delta, self.final_norm, *self.lm_head, self.args.rms_norm_eps, self.group, self.world,
                          self.args.vocab_size)

    def _prefill(self, ids: torch.Tensor, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor]) -> torch.Tensor:
        """Run the prompt [B, S], fill cache slots 0..S-1, return the next-token logits [B, V] fp32."""
        return self._logits(self._prefill_hidden(ids, k_caches, v_caches))

    def _prefill_hidden(self, ids: torch.Tensor, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor],
                        eager: bool = False) -> torch.Tensor:
        """Run the prompt [B, S] through every layer, filling cache slots 0..S-1; the hidden states [B, S, D].

        eager: the same functions uncompiled, so a one-off shape leaves the compiled ones' caches alone."""
        qkv_rope, prefill_tail = (_qkv_rope, _prefill_layer_tail) if eager else (self._qkv_rope, self._prefill_tail)
        S = ids.shape[1]
        x = F.embedding(ids, self.embed)
        cos, sin = self._rope_rows(S)
        for layer, k_cache, v_cache in zip(self.layers, k_caches, v_caches):
            norm, w, s, bias, q_norm, k_norm, eps, heads, kv_heads, head_dim = self._layer_args(layer)
            q, k, v, x = qkv_rope(x, None, norm, w, s, bias, q_norm, k_norm, cos, sin, eps, heads, kv_heads,
                                  head_dim)
            k_cache[:, :, :S].copy_(k)
            v_cache[:, :, :S].copy_(v)
            x = prefill_tail(x, q, k, v, *self._tail_args(layer))
        return x

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy choice [B, 1], never one of the suppressed ids (EOS: runs have a fixed length)."""
        if self.suppressed.numel():
            logits = logits.index_fill(-1, self.suppressed, float("-inf"))
        return logits.argmax(dim=-1, keepdim=True)

    def _decode_step(self, state: ShapeState) -> None:
        """Feed state.token at state.position; write the next token back. Only static buffers: capturable."""
        pos = state.position
        x = F.embedding(state.token, self.embed)  # [B, 1, D]
        cos = self.cos_table.index_select(0, pos)[None, None]  # [1, 1, 1, Dh]
        sin = self.sin_table.index_select(0, pos)[None, None]
        delta = state.no_delta
        for layer, k_cache, v_cache in zip(self.layers, state.k_caches, state.v_caches):
            x, delta = self._decode_layer(x, delta, k_cache, v_cache, pos, cos, sin, *self._layer_args(layer),
                                          *self._tail_args(layer))
        nxt = self._pick(self._logits(x, delta))
        state.token.copy_(nxt)
        state.generated.index_copy_(1, state.step, nxt)
        state.step.add_(1)
        state.position.add_(1)

    # ---- shapes ----------------------------------------------------------------------------------------
    def _new_caches(self, batch_size: int, cache_len: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        a = self.args
        shape = (batch_size, self.kv_heads, cache_len, a.head_dim)
        # Zeros, not empty: the CPU's masked slots still enter its matmul, and 0 * NaN from stale memory would be NaN.
        return ([torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(a.num_layers)],
                [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(a.num_layers)])

    def _prefill_step(self, state: ShapeState) -> None:
        """Prefill state.prompt and issue the first token. Only static buffers: capturable."""
        first = self._pick(self._prefill(state.prompt, state.k_caches, state.v_caches))
        state.token.copy_(first)
        state.generated[:, :1].copy_(first)
        state.position.fill_(state.input_len)
        state.step.fill_(1)

    @torch.inference_mode()
    def state_for(self, batch_size: int, input_len: int, max_new_tokens: int) -> ShapeState:
        """Caches and (on CUDA) the captured prefill and decode graphs for this shape; the previous shape's
        are freed first, so memory holds one shape at a time."""
        cache_len = input_len + max_new_tokens
        if cache_len > self.args.max_position_embeddings:
            raise ValueError(f"input_len + output_len = {cache_len} exceeds the model's "
                             f"max_position_embeddings {self.args.max_position_embeddings}")
        current = self._state
        if current is not None and (current.batch_size, current.input_len, current.cache_len) == (
                batch_size, input_len, cache_len):
            return current
        self.release_state()
        dev = self.device
        k_caches, v_caches = self._new_caches(batch_size, cache_len)
        state = ShapeState(
            batch_size, input_len, cache_len, k_caches, v_caches,
            prompt=torch.zeros((batch_size, input_len), dtype=torch.long, device=dev),
            token=torch.zeros((batch_size, 1), dtype=torch.long, device=dev),
            position=torch.full((1,), input_len, dtype=torch.long, device=dev),
            generated=torch.zeros((batch_size, max(max_new_tokens, 2)), dtype=torch.long, device=dev),
            step=torch.ones((1,), dtype=torch.long, device=dev),
            no_delta=torch.zeros((batch_size, 1, self.args.hidden_size), dtype=self.dtype, device=dev),
        )

        def warm() -> None:
            # Prefill resets position and step, so each decode step stays inside the cache and `generated`.
            self._prefill_step(state)
            self._decode_step(state)

        if self.use_cuda_graphs:
            # Warm up on a side stream (compiles, autotunes, picks GEMV backends), then capture; each graph
            # gets a private memory pool, freed with it.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    warm()
            torch.cuda.current_stream().wait_stream(side)
            # Sharded, the graphs hold NCCL collectives; the process group's watchdog thread queries the events
            # of earlier collectives, which a global-mode capture would count as an error of the capture.
            mode = "thread_local" if self.group else "global"
            torch.cuda.synchronize()
            state.prefill_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(state.prefill_graph, capture_error_mode=mode):
                self._prefill_step(state)
            state.decode_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(state.decode_graph, capture_error_mode=mode):
                self._decode_step(state)
        else:
            warm()  # compile now, not inside the first timed run
        self._state = state
        return state

    def release_state(self) -> None:
        if self._state is not None:
            self._state = None
            if self.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()

    # ---- public ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[], None] = lambda: None
                 ) -> torch.Tensor:
        """Greedy-generate exactly max_new_tokens for ids [B, S] (on this device); returns [B, T] on device.

        on_token() is called right after each token is issued (prefill, then every decode step)."""
        B, S = ids.shape
        state = self.state_for(B, S, max_new_tokens)
        state.prompt.copy_(ids)
        if state.prefill_graph is not None:
            state.prefill_graph.replay()
        else:
            self._prefill_step(state)
        on_token()
        for _ in range(max_new_tokens - 1):
            if state.decode_graph is not None:
                state.decode_graph.replay()
            else:
                self._decode_step(state)
            on_token()
        return state.generated[:, :max_new_tokens].clone()

    @torch.inference_mode()
    def prefill_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, V] fp32 after the prompt ids [B, S] (eager, no graph); reuses the current
        shape's caches when they fit."""
        B, S = ids.shape
        state = self._state
        if state is not None and state.batch_size == B and state.cache_len >= S:
            return self._prefill(ids, state.k_caches, state.v_caches)
        return self._prefill(ids, *self._new_caches(B, S))

    @torch.inference_mode()
    def sequence_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, S, V] at every position of ids [B, S] through the prefill path, uncompiled
        (scoring's long windows would otherwise make dynamo recompile the timed functions for dynamic shapes)."""
        B, S = ids.shape
        hidden = self._prefill_hidden(ids, *self._new_caches(B, S), eager=True)
        logits = linear(rms_norm(hidden, self.final_norm, self.args.rms_norm_eps), *self.lm_head)
        if self.group:  # each rank holds a slice of the (padded) vocabulary
            logits = all_gather_columns(logits.reshape(B * S, -1), self.world, self.group)[:, :self.args.vocab_size]
        return logits.reshape(B, S, -1)

