"""The one small interface every runtime implements, and the facts the registry and the rows carry.

Imported without torch: the registry (and so config validation and the report) reads only class
attributes; a runtime imports its libraries inside its methods.
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as options_dataclass

from bench_kernels.precisions import PRECISIONS

if TYPE_CHECKING:
    import torch

    from bench_kernels.timing import Measurement, StepTimer
    from bench_kernels.models import LoadedModel


# Strict, frozen, no unknown keys: how every runtime's options class is declared.
OPTIONS_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True)

# The quality check compares first-step logits for this many prompts of a batch (a vocabulary row is 0.5 MB
# in fp32), so a runtime sees first_step_logits for batches of min(batch size, QUALITY_LOGIT_ROWS).
QUALITY_LOGIT_ROWS = 4


@options_dataclass(config=OPTIONS_CONFIG)
class NoOptions:
    """A runtime that takes no options."""


@dataclass
class BuildInfo:
    """What preparing a runtime cost: export / engine build time, artifact size, cache use."""

    build_s: float
    artifact_mb: float
    cache_hit: bool
    notes: str = ""


def distribution_version(*names: str) -> str:
    """'name version' of the first installed distribution among names, '' when none is."""
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


class Runtime(ABC):
    """A way to generate tokens from a loaded model; one instance per (model, precision, device)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""  # one line for `validate` and the environment notebook
    needs_build: ClassVar[bool] = False
    dynamic_shapes: ClassVar[str] = ""  # how the runtime copes with a new batch size or length
    # How it serves requests arriving over time (bench_kernels.traffic.policies), its default first.
    batching_policies: ClassVar[tuple[str, ...]] = ("static",)
    # False: generation runs outside torch (ONNX Runtime, TensorRT), so the transformers model stays on the
    # host (it is only exported) and GPU memory is measured device-wide, not from torch's allocator.
    runs_torch_model: ClassVar[bool] = True
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    # The model families (config.json's model_type) this runtime runs; None: every family transformers loads.
    model_types: ClassVar[tuple[str, ...] | None] = None
    options_class: ClassVar[type] = NoOptions
    # True: the prefill computes logits for every prompt position ([B, S, V]); False: for the last one only.
    prefill_logits_every_position: ClassVar[bool] = False
    # True: a deployment's GPUs share each prefill's matmuls (tensor parallelism); False: one device computes at a
    # time (a single device, or layers split over GPUs that take turns).
    splits_prefill_over_gpus: ClassVar[bool] = False

    def __init__(self, loaded: LoadedModel, precision: str, device: torch.device, options: Any = None):
        self.loaded = loaded
        self.precision = precision
        self.device = device
        self.options = options if options is not None else self.options_class()
        self.link_gbps: float | None = None  # measured bandwidth between the devices of a multi-device runtime

    @classmethod
    def load(cls, model: str, precision: str, device: torch.device, seed: int, options: Any) -> LoadedModel:
        """The model as this runtime runs it: its weights placed (load_weights), AWQ-scaled for int4-awq (then the
        runtime rounds them to int4 like int4), and moved to the host for runtimes that only export it (loaded on
        the device first: random weights initialize in seconds on a GPU, minutes on a CPU)."""
        import torch

        loaded = cls.load_weights(model, precision, device, seed, options)
        if precision == "int4-awq":
            from bench_kernels.quantization import apply_awq

            apply_awq(loaded)
        if not cls.runs_torch_model and device.type != "cpu":
            loaded.hf_model.to("cpu")
            torch.cuda.empty_cache()
        return loaded

    @classmethod
    def load_weights(cls, model: str, precision: str, device: torch.device, seed: int, options: Any) -> LoadedModel:
        """The model's weights where this runtime wants them: all on the device by default."""
        from bench_kernels.models import load_model

        return load_model(model, precision, device, seed)

    @classmethod
    def shard_options(cls, options: Any) -> list[Any]:
        """The options of each separately measured deployment an options value asks for (one by default; the
        compiled runtime's tensor_parallel list gives one per degree)."""
        return [options]

    @classmethod
    def gpu_count(cls, options: Any, device: torch.device) -> int:
        """How many devices one deployment with these options uses (a row's gpu_count)."""
        return 1

    @classmethod
    def model_unavailable_reason(cls, config: Any) -> str | None:
        """None when this runtime runs the model's family (read from its config, no weights), else why not."""
        if cls.model_types is None or config.model_type in cls.model_types:
            return None
        return f"{cls.name} does not run model family {config.model_type!r} (it runs {', '.join(cls.model_types)})"

    @classmethod
    def options_unavailable_reason(cls, options: Any, device: torch.device, config: Any) -> str | None:
        """None when these options can run this model here, else why not (e.g. more GPUs than there are)."""
        return None

    @classmethod
    def version(cls, device: torch.device) -> str:
        """The library that does the work and its version, for every row (e.g. 'onnxruntime 1.23.2')."""
        return distribution_version("torch")

    @classmethod
    def facts(cls) -> dict[str, str]:
        """What the report needs to know about this runtime, written into each of its rows."""
        return {"runtime_precisions": " ".join(cls.precisions), "runtime_needs_build": str(cls.needs_build).lower(),
                "runtime_dynamic_shapes": cls.dynamic_shapes,
                "runtime_batching_policies": " ".join(cls.batching_policies)}

    @classmethod
    def prefill_compute_precision(cls, device: torch.device, precision: str) -> str:
        """The precision the prefill's matmuls compute in at this weight precision (whose measured matmul rate
        bounds it): the precision itself for fp32 / fp16 / bf16; bf16 for weight-only quantized precisions, whose
        weights are dequantized to the bf16 activations."""
        return PRECISIONS[precision].prefill_precision

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        """None when this runtime can run here, else why not (in words a user can act on)."""
        return None

    @classmethod
    def build_unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        """None when this runtime can build here (even if it cannot run), else why not."""
        return None

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (the roofline's numerator); quantizing runtimes override."""
        from bench_kernels.models import weight_bytes

        return weight_bytes(self.loaded.hf_model)

    def embedding_row_bytes(self) -> int:
        """Bytes of the input-embedding row a decode step gathers per sequence (0 when tied to the LM head): the
        embedding is stored in the float dtype of the KV cache."""
        from bench_kernels.roofline import embedding_row_bytes

        return embedding_row_bytes(self.loaded.config, self.kv_element_size())

    def kv_element_size(self) -> int:
        """Bytes per cached key/value element."""
        import torch

        return torch.finfo(self.loaded.hf_model.dtype).bits // 8

    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token adds to the cache (on the busiest device of a split model)."""
        from bench_kernels.architecture import kv_bytes_per_token

        return kv_bytes_per_token(self.loaded.config, self.kv_element_size())

    def link_bytes_per_decode_step(self, batch_size: int) -> int:
        """Bytes one device sends to the others per decode step (collectives of a tensor-parallel runtime)."""
        return 0

    def devices(self) -> list[torch.device]:
        """Every device the model runs on; the first one times the tokens."""
        return [self.device]

    def measure(self, input_ids: torch.Tensor, output_len: int, warmup: int, repeats: int) -> Measurement:
        """Time warmup + repeats generations of input_ids [B, S] with the one timer (bench_kernels.timing)."""
        from bench_kernels.timing import measure_generation

        return measure_generation(lambda timer: self.generate(input_ids, output_len, timer), self.devices(),
                                  batch_size=input_ids.shape[0], input_len=input_ids.shape[1],
                                  output_len=output_len, warmup=warmup, repeats=repeats,
                                  device_wide_memory=not self.runs_torch_model)

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo | None:
        """Export / build / compile for these shapes; None when the runtime has no build step."""
        return None

    def discard_build(self) -> str:
        """Delete what prepare built, on a machine where this runtime cannot run it: built there only for the build
        row's figures, which are written. Returns a note for that row ('' when nothing was deleted)."""
        return ""

    @abstractmethod
    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        """Greedy-generate exactly output_len tokens for input_ids [B, S]; returns [B, output_len] on CPU."""

    @abstractmethod
    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits for the token after the prompt, [B, V] float32 on CPU (quality check)."""

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits at every position of input_ids [B, S]: [B, S, V] (perplexity), through this
        runtime's own forward pass."""
        raise NotImplementedError(f"{self.name} does not score sequences (no perplexity)")

    def close(self) -> None:  # noqa: B027 - a runtime with nothing to release keeps this default
        """Release device memory and handles."""
