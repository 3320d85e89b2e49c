"""The one small interface every runtime implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench_kernels.measure import StepTimer
from bench_kernels.models import LoadedModel


@dataclass
class BuildInfo:
    """What preparing a runtime cost: export / engine build time, artifact size, cache use."""

    build_s: float
    artifact_mb: float
    cache_hit: bool
    notes: str = ""
    trt_flavor: str = ""
    trt_version: str = ""


class Runtime(ABC):
    """A way to generate tokens from a loaded model; one instance per (model, precision, device)."""

    name: ClassVar[str]
    needs_build: ClassVar[bool] = False
    dynamic_shapes: ClassVar[str] = ""  # how the runtime copes with a new batch size or length
    # False: generation runs outside torch (ONNX Runtime, TensorRT), so the transformers model stays on the
    # host (it is only exported) and GPU memory is measured device-wide, not from torch's allocator.
    runs_torch_model: ClassVar[bool] = True
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")

    def __init__(self, loaded: LoadedModel, precision: str, device: torch.device, options: dict | None = None):
        self.loaded = loaded
        self.precision = precision
        self.device = device
        self.options = options or {}

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        """None when this runtime can run here, else why not (in words a user can act on)."""
        return None

    @classmethod
    def build_unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        """None when this runtime can build here (even if it cannot run), else why not."""
        return None

    @classmethod
    def version_columns(cls, device: torch.device) -> dict[str, str]:
        """Runtime-specific version columns for every row (e.g. trt_flavor, trt_version)."""
        return {}

    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (the roofline's numerator); fp8 runtimes override."""
        from bench_kernels.models import weight_bytes

        return weight_bytes(self.loaded.hf_model)

    def kv_element_size(self) -> int:
        """Bytes per cached key/value element."""
        return torch.finfo(self.loaded.hf_model.dtype).bits // 8

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo | None:
        """Export / build / compile for these shapes; None when the runtime has no build step."""
        return None

    @abstractmethod
    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        """Greedy-generate exactly output_len tokens for input_ids [B, S]; returns [B, output_len] on CPU."""

    @abstractmethod
    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits for the token after the prompt, [B, V] float32 on CPU (quality check)."""

    def close(self) -> None:
        """Release device memory and handles."""
