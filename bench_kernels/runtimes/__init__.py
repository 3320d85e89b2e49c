"""Runtime registry: name -> class. Each runtime module imports its heavy dependencies lazily."""

from __future__ import annotations

import torch

from bench_kernels.runtimes.base import BuildInfo, Runtime
from bench_kernels.runtimes.compiled import CompiledRuntime
from bench_kernels.runtimes.onnxruntime import OnnxRuntimeRuntime
from bench_kernels.runtimes.reference import ReferenceRuntime
from bench_kernels.runtimes.tensorrt import TensorRTRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls for cls in (ReferenceRuntime, OnnxRuntimeRuntime, TensorRTRuntime, CompiledRuntime)
}


def get_runtime(name: str) -> type[Runtime]:
    if name not in RUNTIMES:
        raise KeyError(f"unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def availability_report(device: torch.device | None = None) -> dict[str, str]:
    """For each runtime: 'available' or the reason it cannot run on this machine."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {}
    for name, cls in RUNTIMES.items():
        reason = cls.unavailable_reason(device, "fp32" if device.type == "cpu" else "fp16")
        out[name] = "available" if reason is None else f"unavailable: {reason}"
    return out


__all__ = ["BuildInfo", "Runtime", "RUNTIMES", "get_runtime", "availability_report"]
