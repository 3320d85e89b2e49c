"""The runtime registry: the one list of runtimes. Importing it loads no torch.

A runtime is a package under runtimes/ (or any installed package) with a Runtime subclass, added
here with `register`. Packages installed elsewhere register through the entry-point group
`bench_kernels.runtimes` (name = runtime name, value = 'module:Class').
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import TYPE_CHECKING

from bench_kernels.runtimes.base import OPTIONS_CONFIG, BuildInfo, NoOptions, Runtime, options_dataclass
from bench_kernels.runtimes.compiled import CompiledRuntime
from bench_kernels.runtimes.onnxruntime import OnnxRuntimeRuntime
from bench_kernels.runtimes.reference import ReferenceRuntime
from bench_kernels.runtimes.tensorrt import TensorRTRuntime

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bench_kernels.runtimes"
RUNTIMES: dict[str, type[Runtime]] = {}


def register(cls: type[Runtime]) -> type[Runtime]:
    """Add a runtime class under cls.name (usable as a decorator); a second class of the same name replaces it."""
    if not (isinstance(cls, type) and issubclass(cls, Runtime)) or not getattr(cls, "name", ""):
        raise TypeError(f"{cls!r} is not a Runtime subclass with a name")
    RUNTIMES[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    RUNTIMES.pop(name, None)


for _builtin in (ReferenceRuntime, OnnxRuntimeRuntime, TensorRTRuntime, CompiledRuntime):
    register(_builtin)

for _entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
    try:
        register(_entry.load())
    except Exception as err:  # noqa: BLE001 - a broken plug-in must not take the built-in runtimes down
        log.warning("runtime plug-in %s (%s) not loaded: %s: %s", _entry.name, _entry.value, type(err).__name__, err)


def runtime_names() -> list[str]:
    return list(RUNTIMES)


def known_precisions() -> list[str]:
    """Every precision some registered runtime runs, in first-declared order."""
    return list(dict.fromkeys(p for cls in RUNTIMES.values() for p in cls.precisions))


def get_runtime(name: str) -> type[Runtime]:
    if name not in RUNTIMES:
        raise KeyError(f"unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def availability_report(device: torch.device | None = None) -> dict[str, str]:
    """For each runtime: 'available' or the reason it cannot run on this machine."""
    import torch

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {}
    for name, cls in RUNTIMES.items():
        precision = "fp32" if device.type == "cpu" else "bf16"
        reason = cls.unavailable_reason(device, precision if precision in cls.precisions else cls.precisions[0])
        out[name] = f"available ({cls.version(device) or 'version unknown'})" if reason is None \
            else f"unavailable: {reason}"
    return out


__all__ = ["OPTIONS_CONFIG", "BuildInfo", "NoOptions", "Runtime", "options_dataclass", "RUNTIMES",
           "availability_report", "get_runtime", "known_precisions", "register", "runtime_names", "unregister"]
