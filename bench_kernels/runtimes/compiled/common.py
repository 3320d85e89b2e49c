"""What both jobs of the compiled runtime share: its options, what the class says about itself (precisions,
availability, how a deployment loads), the one loop that warms every sweep shape, and the build notes."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from bench_kernels.architecture import DECODER_MODEL_TYPES
from bench_kernels.runtimes.base import OPTIONS_CONFIG, Runtime, distribution_version, options_dataclass

if TYPE_CHECKING:
    import torch

    from bench_kernels.models import LoadedModel

Degree = Literal[1, 2, 4, 8]
# How each quantized precision stores its projection weights (static_decoder.WEIGHT_FORMATS); others: as loaded.
WEIGHT_FORMAT_OF = {"fp8": "fp8", "int4": "int4", "int4-awq": "int4"}
PACKED_AS = {"fp8": "fp8 e4m3, per-channel scales", "int4": "int4, round-to-nearest, bf16 scales per group of 128",
             "int4-awq": "int4, AWQ-scaled, bf16 scales per group of 128"}


@options_dataclass(config=OPTIONS_CONFIG)
class CompiledOptions:
    """Compiled runtime settings (sweep spec: runtime_options: {compiled: {...}})."""

    # GPUs one deployment is split over (tensor parallelism); a list measures each degree as its own rows.
    tensor_parallel: Degree | Annotated[list[Degree], Field(min_length=1)] = 1
    compile: bool = True  # false: the same decoder run eagerly (no torch.compile), e.g. to debug
    worker_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 3600.0  # most one step of the ranks may take

    @field_validator("tensor_parallel")
    @classmethod
    def _unique_degrees(cls, value: Any) -> Any:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"degrees must be unique, got {value}")
        return value


class CompiledBase(Runtime):
    """Static-cache decoder under torch.compile, decode steps replayed from CUDA graphs: the class-level facts of
    the `compiled` runtime, whichever job (one process, or the coordinator of tensor-parallel ranks) runs it."""

    name = "compiled"
    model_types = DECODER_MODEL_TYPES  # the shared decoder's families
    description = ("the shared decoder with a static KV cache under torch.compile, CUDA graphs and Triton kernels; "
                   "tensor parallel over several GPUs")
    needs_build = True
    options_class = CompiledOptions
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16", "fp8", "int4", "int4-awq")
    batching_policies = ("shape_limited", "static")  # shape_limited: padded to the captured shapes
    dynamic_shapes = ("any batch and length; a new shape allocates its static cache and captures a graph "
                      "(under a second), compiled code is reused")
    splits_prefill_over_gpus = True  # tensor parallelism: every rank computes its share of each projection

    @classmethod
    def version(cls, device: torch.device) -> str:
        return ", ".join(v for v in (distribution_version("torch"), distribution_version("triton")) if v)

    @classmethod
    def prefill_compute_precision(cls, device: torch.device, precision: str) -> str:
        """fp8 prefills compute in fp8 on a GPU (rows rounded to e4m3, torch._scaled_mm beyond GEMV_MAX_ROWS rows),
        int4 ones in bf16; the CPU dequantizes quantized weights to fp32."""
        if precision in WEIGHT_FORMAT_OF and device.type == "cpu":
            return "fp32"
        if precision == "fp8":
            return "fp8"
        return super().prefill_compute_precision(device, precision)

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        from bench_kernels.runtimes.compiled.linear_ops import fp8_unavailable_reason, triton_unavailable_reason

        if precision == "fp8":
            return fp8_unavailable_reason(device)
        if device.type == "cuda":
            return triton_unavailable_reason()  # torch.compile's GPU backend generates Triton kernels
        return None

    @classmethod
    def shard_options(cls, options: CompiledOptions) -> list[CompiledOptions]:
        degrees = options.tensor_parallel if isinstance(options.tensor_parallel, list) else [options.tensor_parallel]
        return [dataclasses.replace(options, tensor_parallel=degree) for degree in degrees]

    @classmethod
    def gpu_count(cls, options: CompiledOptions, device: torch.device) -> int:
        return options.tensor_parallel

    @classmethod
    def options_unavailable_reason(cls, options: CompiledOptions, device: torch.device, config: Any) -> str | None:
        import torch

        from bench_kernels.decoder import DecoderArgs
        from bench_kernels.runtimes.compiled.sharding import check_split

        degree = options.tensor_parallel
        if device.type == "cuda" and degree > torch.cuda.device_count():
            return f"tensor_parallel {degree} needs {degree} GPUs; torch sees {torch.cuda.device_count()}"
        try:
            args = DecoderArgs.from_hf_config(config)
        except ValueError:
            return None  # a family the decoder does not support: preparing says so, in an error row
        try:
            check_split(args.num_heads, args.num_kv_heads, degree)
        except ValueError as err:
            return str(err)
        return None

    @classmethod
    def load_weights(cls, model: str, precision: str, device: torch.device, seed: int, options: Any) -> LoadedModel:
        """Random weights are drawn layer by layer as they are packed (a model whose bf16 weights exceed the
        device can still pack to fp8 on it); with tensor_parallel > 1 this process holds no weights at all."""
        from bench_kernels.models import ModelError, load_model

        if precision == "int4-awq":
            if options.tensor_parallel > 1:
                raise ModelError("int4-awq runs on one device here: AWQ's scale search needs the whole model in one "
                                 "process; use int4 with tensor_parallel, or tensor_parallel 1")
            # AWQ runs the whole model on calibration text first, so no layer can be packed before the others.
            return load_model(model, precision, device, seed, placement="device")
        if options.tensor_parallel > 1:
            return load_model(model, precision, device, seed, placement="none")
        return load_model(model, precision, device, seed,
                          placement="streamed" if model.startswith("preset:") else "device")

    @abstractmethod
    def warm(self, batch_size: int, input_len: int, output_len: int) -> None:
        """Allocate this shape's cache, compile for it and (on CUDA) capture its graphs."""

    @abstractmethod
    def out_of_memory(self, err: Exception) -> bool:
        """Whether err, raised by warm, says that one shape did not fit (the other shapes may still)."""

    def warm_every_shape(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> list[str]:
        """Warm every sweep shape; the shapes that ran out of memory (their rows will say so, the others still run)."""
        not_warmed = []
        for batch_size in batch_sizes:
            for input_len in input_lens:
                try:
                    self.warm(batch_size, input_len, output_len)
                except Exception as err:
                    if not self.out_of_memory(err):
                        raise
                    not_warmed.append(f"batch {batch_size} input {input_len}")
        return not_warmed

    def build_notes(self, shapes: int, pack_s: float, not_warmed: list[str], backends: list[str]) -> str:
        """What preparing did: compiled or eager, shapes warmed, how the weights packed, the GEMV backends chosen."""
        import torch

        what = ("eager (compile: false)" if not self.options.compile
                else f"torch.compile {torch.__version__} of 4 functions")
        captured = " and captured as CUDA graphs" if self.device.type == "cuda" else ""
        notes = (f"{what}, {shapes} shapes warmed{captured}; "
                 f"weights packed ({PACKED_AS.get(self.precision, self.precision)}) in {pack_s:.1f} s")
        if not_warmed:
            notes += f"; out of memory while warming {', '.join(not_warmed)}"
        if backends:
            notes += f"; GEMV backend per weight [N x K] @ rows, by measurement: {' '.join(backends)}"
        return notes
