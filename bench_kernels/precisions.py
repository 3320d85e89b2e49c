"""The one precision table: how each precision stores weights and KV cache, and what its prefill computes in."""

from __future__ import annotations

from dataclasses import dataclass

# Bytes per element of the float dtypes weights load in (torch dtype names, so this module needs no torch).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Precision:
    """One weight precision a sweep can ask for."""

    name: str
    torch_dtype: str  # the dtype weights load in; quantized precisions load bf16 and the runtime quantizes
    weight_bits: int  # stored bits per projection weight (attention and MLP matrices), before group scales
    group_size: int | None = None  # weights sharing one scale; None: per-tensor or per-channel scales (under 0.1%)
    group_scale_bytes: int = 0  # bytes of the scale stored per group (a bf16 or fp16 scale: 2)
    # Bytes per cached key/value element: the narrowest cache a runtime at this precision may keep (an fp8 model
    # may cache in fp8, the generous case for a bound; this project's runtimes cache fp8 models in bf16).
    kv_cache_bytes: int = 2
    quantized: bool = False  # projections stored narrower than the dtype they load in
    prefill_precision: str = "bf16"  # what the prefill's matmuls compute in when the weights are dequantized
    has_matmul_rate: bool = False  # the hardware runs matmuls in it: its rate is measured (matmul_tflops_<name>)

    @property
    def projection_bytes(self) -> float:
        """Stored bytes per projection weight, group scales included."""
        scales = self.group_scale_bytes / self.group_size if self.group_size else 0.0
        return self.weight_bits / 8 + scales

    @property
    def unquantized_bytes(self) -> int:
        """Bytes per embedding, LM head and norm weight: they stay in the load dtype when projections are quantized
        (the LM head sets every logit directly)."""
        return DTYPE_BYTES[self.torch_dtype]


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "float32", 32, kv_cache_bytes=4, prefill_precision="fp32", has_matmul_rate=True),
    Precision("fp16", "float16", 16, prefill_precision="fp16", has_matmul_rate=True),
    Precision("bf16", "bfloat16", 16, has_matmul_rate=True),
    Precision("fp8", "bfloat16", 8, kv_cache_bytes=1, quantized=True, has_matmul_rate=True),
    Precision("int8", "bfloat16", 8, quantized=True, has_matmul_rate=True),
    # Weight-only int4: round-to-nearest, and the same after AWQ's activation-aware scaling
    # (bench_kernels.quantization); one bf16 scale per group of 128 weights, as the compiled runtime packs it.
    Precision("int4", "bfloat16", 4, group_size=128, group_scale_bytes=2, quantized=True),
    Precision("int4-awq", "bfloat16", 4, group_size=128, group_scale_bytes=2, quantized=True),
)}

# Precisions whose matmul rate is measured (the prefill roofline's divisor); the weight-only int4 precisions.
MATMUL_PRECISIONS = tuple(p.name for p in PRECISIONS.values() if p.has_matmul_rate)
INT4_PRECISIONS = tuple(p.name for p in PRECISIONS.values() if p.weight_bits == 4)
QUANTIZED_PRECISIONS = tuple(p.name for p in PRECISIONS.values() if p.quantized)


def precision(name: str) -> Precision:
    """The table's entry for name; a KeyError naming the allowed precisions otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise KeyError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)}") from None
