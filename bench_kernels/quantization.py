"""Weight quantization the runtimes share: int4 with group-wise scales, and AWQ's activation-aware scaling.

int4 is symmetric round-to-nearest over groups of INT4_GROUP_SIZE input channels: each group's scale is its
largest-magnitude weight over -8, so that weight lands exactly on -8 and every other one in [-8, 7].

AWQ (Lin et al., 2023, "Activation-aware Weight Quantization") multiplies each input channel of a layer by
s = mean|x|^alpha / mean|w|^(1 - alpha) (|w| relative to its group's largest, as AutoAWQ's default
"duo scaling") before quantizing, divides the layer's input by s (folded into the RMSNorm or the
layer before, so the model computes the same function in floating point), and searches alpha per layer
group to minimise the int4 error of the block's output (the attention block for q/k/v, the MLP for gate/up)
on calibration text; where no alpha beats plain round-to-nearest the group stays unscaled, so on the
calibration tokens AWQ is never worse. Not done here: AutoAWQ's weight
clipping search, and scaling o_proj when grouped-query attention makes v_proj narrower than it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

INT4_GROUP_SIZE = 128
AWQ_GRID = 20  # alphas 0, 0.05, ..., 0.95, as AutoAWQ searches
AWQ_METHOD = "duo-scaling, block output, symmetric int4 v1"  # part of the cache key: change it when the search changes
AWQ_CALIBRATION_TOKENS = 512  # after the perplexity windows of the packaged text, so AWQ never sees what is scored


@dataclass
class Int4Weight:
    """weight [N, K] ~= (packed nibbles - 8) * scales repeated over groups of group_size along K.

    packed: uint8 [N, K // 2]; byte j of group g holds input channel g * group_size + j in its low nibble and
    g * group_size + group_size / 2 + j in its high one, so a kernel multiplies each half of a group by a
    contiguous slice of the activations. scales: [N, K // group_size]."""

    packed: torch.Tensor
    scales: torch.Tensor
    group_size: int

    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + self.scales.numel() * self.scales.element_size()


def int4_group_size(in_features: int, group_size: int = INT4_GROUP_SIZE) -> int:
    """The group size for a layer: group_size when it divides in_features, else the largest power of two below it
    that does (SmolLM2's 576 features: 64), else the whole row."""
    if in_features % 2:
        raise ValueError(f"int4 packs two weights per byte; in_features {in_features} is odd")
    size = group_size
    while size >= 16:
        if in_features % size == 0:
            return size
        size //= 2
    return in_features


def int4_codes(weight: torch.Tensor, group_size: int,
               scale_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed codes in [-8, 7] (int8 [N, K]) and scales [N, K // group_size] in scale_dtype."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // group_size, group_size)
    extreme = groups.gather(2, groups.abs().argmax(dim=2, keepdim=True))  # signed largest magnitude: [N, G, 1]
    scales = (extreme / -8.0).to(scale_dtype)
    # A group of zeros gets scale 1 (codes 0); rounding the scale first keeps codes consistent with it.
    divisor = torch.where(scales == 0, torch.ones_like(scales), scales).float()
    codes = torch.round(groups / divisor).clamp(-8, 7).to(torch.int8).reshape(n, k)
    return codes, scales.reshape(n, k // group_size)


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE,
                  scale_dtype: torch.dtype = torch.bfloat16) -> Int4Weight:
    """Round-to-nearest int4 of weight [N, K] with one scale per group of input channels."""
    group_size = int4_group_size(weight.shape[1], group_size)
    codes, scales = int4_codes(weight, group_size, scale_dtype)
    n, k = weight.shape
    nibbles = (codes + 8).to(torch.uint8).reshape(n, k // group_size, 2, group_size // 2)
    packed = (nibbles[:, :, 0] | (nibbles[:, :, 1] << 4)).reshape(n, k // 2)
    return Int4Weight(packed.contiguous(), scales.contiguous(), group_size)


def unpack_int4(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """The signed codes int8 [N, K] of packed uint8 [N, K // 2] (Int4Weight's layout)."""
    n = packed.shape[0]
    halves = packed.reshape(n, -1, 1, group_size // 2)
    low = (halves & 0xF).to(torch.int8) - 8
    high = (halves >> 4).to(torch.int8) - 8
    return torch.cat((low, high), dim=2).reshape(n, -1)


def dequantize_int4(weight: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [N, K] the int4 codes and scales stand for."""
    codes = unpack_int4(weight.packed, weight.group_size).float()
    scales = weight.scales.float().repeat_interleave(weight.group_size, dim=1)
    return (codes * scales).to(dtype)


def int4_round_trip(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE) -> torch.Tensor:
    """weight quantized to int4 and back, in weight's dtype."""
    return dequantize_int4(quantize_int4(weight, group_size), weight.dtype)


@dataclass
class AwqScales:
    """AWQ's result for one model: the input-channel scales of each scaled layer group ('layers.3.mlp.gate_up'),
    the alpha chosen for it, and its block-output error on the calibration tokens against round-to-nearest's."""

    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    alphas: dict[str, float | None] = field(default_factory=dict)  # None: round-to-nearest was best
    error_awq: dict[str, float] = field(default_factory=dict)
    error_rtn: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        total_awq, total_rtn = sum(self.error_awq.values()), sum(self.error_rtn.values())
        ratio = total_awq / total_rtn if total_rtn else 1.0
        return (f"AWQ scaled {len(self.alphas)} layer groups; their int4 output error on the calibration tokens is "
                f"{ratio:.3f} of round-to-nearest's")


class _Probe:
    """A module's captured call (args, kwargs) on the calibration tokens and its output, to replay with other
    weights in the layers it contains."""

    def __init__(self, module: nn.Module, args: tuple, kwargs: dict):
        self.module, self.args, self.kwargs = module, args, kwargs
        self.target = self.run()

    def run(self) -> torch.Tensor:
        out = self.module(*self.args, **self.kwargs)
        return (out[0] if isinstance(out, tuple) else out).float()

    def error_with(self, layers: list[nn.Linear], scales: torch.Tensor) -> float:
        """Mean squared error of the module's output with the layers' weights int4-quantized after multiplying
        their input channels by scales (and dividing back, as folding the inverse into the input does)."""
        originals = [layer.weight.data for layer in layers]
        try:
            for layer in layers:
                scaled = layer.weight.float() * scales
                layer.weight.data = (int4_round_trip(scaled) / scales).to(layer.weight.dtype)
            return torch.mean((self.run() - self.target) ** 2).item()
        finally:
            for layer, original in zip(layers, originals):
                layer.weight.data = original


def _relative_weight_magnitude(layers: list[nn.Linear]) -> torch.Tensor:
    """Mean over output channels of |w| relative to its quantization group's largest |w|, per input channel."""
    weight = torch.cat([layer.weight.float() for layer in layers], dim=0)
    group = int4_group_size(weight.shape[1])
    grouped = weight.abs().reshape(weight.shape[0], -1, group)
    relative = grouped / grouped.amax(dim=2, keepdim=True).clamp(min=1e-12)
    return relative.reshape(weight.shape).mean(dim=0)


def search_awq_scales(x: torch.Tensor, layers: list[nn.Linear], probe: _Probe) -> tuple[torch.Tensor, float | None,
                                                                                        float, float]:
    """The per-input-channel scales (fp32 [K]) for layers sharing input x [T, K] that minimise the int4 error of
    the probed module's output (AutoAWQ's 'module to inspect': the attention block for q/k/v, the MLP for
    gate/up), with the chosen alpha (None: no scaling beat plain round-to-nearest), its error and round-to-
    nearest's."""
    channel_mean = x.float().abs().mean(dim=0)  # [K]
    weight_mean = _relative_weight_magnitude(layers)  # [K]
    ones = torch.ones_like(channel_mean)
    error_rtn = probe.error_with(layers, ones)
    best: tuple[float | None, float, torch.Tensor] = (None, error_rtn, ones)
    for step in range(AWQ_GRID):
        alpha = step / AWQ_GRID
        scales = (channel_mean.pow(alpha) / (weight_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
        scales = scales / (scales.max() * scales.min()).sqrt()  # centred around 1, as AutoAWQ does
        error = probe.error_with(layers, scales)
        if error < best[1]:
            best = (alpha, error, scales)
    return best[2], best[0], best[1], error_rtn


# Pre-norm decoders whose norms each feed exactly q/k/v or gate/up (Qwen3's q/k norms act on their outputs, after the
# scaled input channels); Phi-3 fuses them into qkv_proj and gate_up_proj, which these groups do not name.
AWQ_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _decoder_layers(hf_model: Any) -> nn.ModuleList:
    model_type = getattr(hf_model.config, "model_type", None)
    if model_type not in AWQ_MODEL_TYPES:
        raise ValueError(f"AWQ folds its scales into Llama-family norms; model_type {model_type!r} is not one of "
                         f"{', '.join(AWQ_MODEL_TYPES)}")
    return hf_model.model.layers


def _groups(layer: nn.Module) -> list[tuple[str, str, list[nn.Linear], nn.Module, bool]]:
    """A decoder layer's AWQ groups: (suffix, captured call, layers scaled, module the inverse folds into, whether
    it folds into that module's output rows (a linear layer) rather than an RMSNorm's weight)."""
    attention, mlp = layer.self_attn, layer.mlp
    groups = [("self_attn.qkv", "attention", [attention.q_proj, attention.k_proj, attention.v_proj],
               layer.input_layernorm, False),
              ("mlp.gate_up", "mlp", [mlp.gate_proj, mlp.up_proj], layer.post_attention_layernorm, False),
              ("mlp.down", "down", [mlp.down_proj], mlp.up_proj, True)]
    if attention.v_proj.weight.shape[0] == attention.o_proj.weight.shape[1]:
        groups.append(("self_attn.o", "o", [attention.o_proj], attention.v_proj, True))
    return groups


@torch.inference_mode()  # as the runtimes run models: random weights drawn under it refuse plain no_grad forwards
def search_awq(hf_model: Any, calibration_ids: torch.Tensor) -> AwqScales:
    """AWQ's scales for a Llama-family transformers model (see the module docstring), found one layer group at a
    time on the calibration tokens [B, S]; the model is left as it was."""
    layers = _decoder_layers(hf_model)
    calls: dict[str, tuple[nn.Module, tuple, dict]] = {}
    hooks = []

    def capture(name: str, module: nn.Module) -> None:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[name] = (module, args, dict(kwargs))
        hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    for index, layer in enumerate(layers):
        capture(f"{index}.attention", layer.self_attn)
        capture(f"{index}.mlp", layer.mlp)
        capture(f"{index}.down", layer.mlp.down_proj)
        capture(f"{index}.o", layer.self_attn.o_proj)
    device = next(hf_model.parameters()).device
    try:
        hf_model(input_ids=calibration_ids.to(device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()

    result = AwqScales()
    for index, layer in enumerate(layers):
        for suffix, call_name, scaled, _, _ in _groups(layer):
            module, args, kwargs = calls.pop(f"{index}.{call_name}")
            inputs = args[0] if args else kwargs["hidden_states"]
            name = f"layers.{index}.{suffix}"
            scales, alpha, error, error_rtn = search_awq_scales(inputs.reshape(-1, inputs.shape[-1]), scaled,
                                                                _Probe(module, args, kwargs))
            result.scales[name], result.alphas[name] = scales.cpu(), alpha
            result.error_awq[name], result.error_rtn[name] = error, error_rtn
    log.info(result.summary())
    return result


@torch.no_grad()
def fold_awq_scales(hf_model: Any, awq: AwqScales) -> None:
    """Multiply each group's input channels by its scales and divide them out of the module before, in place: the
    model computes the same function in floating point, with weights that quantize to int4 with less error.
    Parameters get new tensors of their own kind (a model built under inference mode holds inference tensors, which
    refuse in-place writes outside it)."""
    def rescale(param: torch.nn.Parameter, factor: torch.Tensor) -> None:
        with torch.inference_mode(param.is_inference()):
            param.data = (param.data.float() * factor).to(param.dtype)

    for index, layer in enumerate(_decoder_layers(hf_model)):
        for suffix, _, scaled, divide_into, divide_rows in _groups(layer):
            scales = awq.scales[f"layers.{index}.{suffix}"].to(layer.input_layernorm.weight.device)
            for linear in scaled:
                rescale(linear.weight, scales)
            if divide_rows:
                rescale(divide_into.weight, 1.0 / scales[:, None])
                if getattr(divide_into, "bias", None) is not None:
                    rescale(divide_into.bias, 1.0 / scales)
            else:
                rescale(divide_into.weight, 1.0 / scales)


def apply_awq(loaded: Any) -> AwqScales:
    """AWQ-scale a loaded model's weights in place (its transformers model, on whichever device it is), with the
    scales searched on the packaged calibration tokens, or read from the cache when this model's were found
    before (keyed by its weights, dtype, calibration tokens and the search itself)."""
    from bench_kernels.paths import cache_dir

    hf_model = loaded.hf_model
    dtype = str(next(hf_model.parameters()).dtype).removeprefix("torch.")
    calibration = awq_calibration_ids(loaded.tokenizer, loaded.config.max_position_embeddings)
    method = hashlib.sha256(calibration.numpy().tobytes()
                            + f"{AWQ_METHOD}/{AWQ_GRID}/{INT4_GROUP_SIZE}".encode()).hexdigest()
    path = cache_dir("awq") / f"{loaded.name}-{loaded.weights_id}-{dtype}-{method[:12]}.pt"
    if path.exists():
        awq = AwqScales(**torch.load(path, weights_only=True))
        log.info("AWQ scales from %s", path)
    else:
        awq = search_awq(hf_model, calibration)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(vars(awq), temporary)
        temporary.replace(path)
    fold_awq_scales(hf_model, awq)
    return awq


def awq_calibration_ids(tokenizer: Any, max_positions: int) -> torch.Tensor:
    """The calibration tokens [1, T]: the packaged text after the perplexity windows (never scored), or, for a
    context too short to leave any, the text's last AWQ_CALIBRATION_TOKENS tokens."""
    from bench_kernels.workload import packaged_text, perplexity_windows, text_token_ids

    token_ids = text_token_ids(tokenizer, packaged_text())
    scored = perplexity_windows(token_ids, max_positions).numel()
    remaining = token_ids[scored:]
    if len(remaining) < 64:
        remaining = token_ids[-AWQ_CALIBRATION_TOKENS:]
    return torch.tensor(list(remaining[:min(AWQ_CALIBRATION_TOKENS, max_positions)]), dtype=torch.long)[None]
