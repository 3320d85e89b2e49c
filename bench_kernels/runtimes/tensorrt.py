"""TensorRT runtime (engine build from the shared ONNX decoder); interim: availability only."""

from __future__ import annotations

import torch

from bench_kernels.measure import StepTimer
from bench_kernels.runtimes.base import Runtime


def _import_reason() -> str | None:
    errors = []
    for module in ("tensorrt", "tensorrt_rtx"):
        try:
            __import__(module)
            return None
        except Exception as err:  # noqa: BLE001 - any import failure means unavailable
            errors.append(f"{module}: {type(err).__name__}: {err}")
    return "no TensorRT module imports (" + "; ".join(errors) + ")"


class TensorRTRuntime(Runtime):
    name = "tensorrt"
    needs_build = True

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        return _import_reason()

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        raise RuntimeError("TensorRT generation is not wired yet")

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("TensorRT generation is not wired yet")
