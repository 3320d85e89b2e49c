"""The reference's quantized precisions, as a transformers user applies torchao: quantize_() with a weight-only
config on the projection layers (the LM head and embeddings stay bf16, as the other runtimes keep them); int4-awq
is the same int4 after the package's AWQ scaling (bench_kernels.quantization).

Imported without torch (the registry reads TORCHAO_PRECISIONS); torch and torchao load inside the functions."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TORCHAO_PRECISIONS = ("fp8", "int8", "int4", "int4-awq")


def torchao_config(precision: str) -> Any:
    """torchao's weight-only config for a quantized precision.

    set_inductor_config=False: eager generate() compiles nothing, and the default would change torch._inductor's
    global settings for a compiled runtime measured later in the same process."""
    from torchao.quantization import Float8WeightOnlyConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig

    from bench_kernels.quantization import INT4_GROUP_SIZE

    if precision == "fp8":
        return Float8WeightOnlyConfig(set_inductor_config=False)  # e4m3, one scale per output channel
    if precision == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)  # one scale per output channel
    if precision in ("int4", "int4-awq"):
        # tile_packed_to_4d is tinygemm (in core torch); the default packing needs the separate mslk package.
        return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d",
                                    set_inductor_config=False)
    raise ValueError(f"torchao does not quantize the reference to {precision!r}; it does {TORCHAO_PRECISIONS}")


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether torchao replaced this weight with one of its tensor subclasses (Float8Tensor, Int8Tensor, ...)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return is_traceable_wrapper_subclass(weight)


def quantize_projections(hf_model: Any, precision: str) -> None:
    """Quantize every nn.Linear but the LM head in place. torchao leaves a layer as it is when its shape does not
    suit the config (int4: input features not a multiple of the group), and the log says how many it left."""
    import torch
    from torchao.quantization import quantize_

    from bench_kernels.quantization import INT4_GROUP_SIZE

    head = hf_model.get_output_embeddings()

    def is_projection(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module is not head

    projections = [m for name, m in hf_model.named_modules() if is_projection(m, name)]
    quantize_(hf_model, torchao_config(precision), filter_fn=is_projection)
    quantized = sum(is_quantized(m.weight) for m in projections)
    if quantized < len(projections):
        log.warning("torchao %s quantized %d of %d projection layers; the rest stay %s (shapes its config does "
                    "not take: for int4, input features not a multiple of %d)", precision, quantized,
                    len(projections), hf_model.dtype, INT4_GROUP_SIZE)


@functools.cache
def torchao_unavailable_reason(device: torch.device, precision: str) -> str | None:
    """None when torchao quantizes and runs a small bf16 layer in this precision on device, else torchao's own
    error: a probe of seconds, before any model is loaded."""
    import torch

    from bench_kernels.errors import readable_error

    try:
        from torchao.quantization import quantize_

        layer = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False)).to(device, torch.bfloat16)
        quantize_(layer, torchao_config(precision))
        with torch.inference_mode():
            layer(torch.randn(2, 3, 256, device=device, dtype=torch.bfloat16))  # x: [B, S, D]
    except Exception as err:  # noqa: BLE001 - whatever torchao raises is the reason the row shows
        return f"torchao {precision} on {device.type}: {readable_error(err)}"
    return None
