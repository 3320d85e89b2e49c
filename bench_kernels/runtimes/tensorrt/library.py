"""The TensorRT Python module this machine has (`tensorrt`, else `tensorrt_rtx`), its errors, and its one logger.

Works with NVIDIA TensorRT 10.1+/11.x (`tensorrt`) and TensorRT for RTX (`tensorrt_rtx`), which share the
builder/runtime API used here. The engine code is type-checked against tensorrt-stubs (mypy-tensorrt.ini):
each of its modules names the API `trt` for mypy, and at run time uses `trt` from here, which stands for
whichever module import_tensorrt() found. The few TensorRT-RTX-only members are reached through handles typed
`Any`, and the tests check that the installed tensorrt_rtx has them.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import tensorrt as trt
else:

    class _ImportedOnUse:
        """Stands for the module import_tensorrt() picks; imported on the first attribute access."""

        def __getattr__(self, name: str) -> Any:
            return getattr(import_tensorrt().module, name)

    trt = _ImportedOnUse()

log = logging.getLogger(__name__)

# What the TensorRT-RTX 1.7 runtime accepts, in its own words on an H200: "The engine cannot run on this GPU,
# which has compute capability 9.0. Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1 >12.0".
RTX_COMPUTE_CAPABILITIES = "8.0 8.6 8.9 12.0 12.1 >12.0"


class TensorRTUnavailable(ImportError):
    """Neither tensorrt nor tensorrt_rtx imports; `reason` holds both import errors."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EngineBuildError(RuntimeError):
    """The ONNX did not parse or the engine did not build; the message carries TensorRT's own errors."""


class TensorRTRuntimeError(RuntimeError):
    """An engine could not be loaded or run; the message carries TensorRT's own errors."""


@dataclass(frozen=True)
class TrtModule:
    """The imported TensorRT Python module and which flavor it is."""

    module: ModuleType
    flavor: str  # "tensorrt" | "tensorrt_rtx"
    version: str


@functools.cache
def import_tensorrt() -> TrtModule:
    """NVIDIA TensorRT if it imports, else TensorRT for RTX; TensorRTUnavailable with both errors otherwise."""
    errors = []
    for flavor in ("tensorrt", "tensorrt_rtx"):
        try:
            module = importlib.import_module(flavor)
        except Exception as err:  # noqa: BLE001 - a broken install raises OSError etc., not only ImportError
            errors.append(f"import {flavor}: {type(err).__name__}: {err}")
            continue
        if getattr(module, "__file__", None) is None:  # tensorrt-stubs alone leaves an empty namespace package
            errors.append(f"import {flavor}: only an empty namespace package (type stubs without the library?)")
            continue
        return TrtModule(module, flavor, module.__version__)
    raise TensorRTUnavailable("no TensorRT Python module imports (" + "; ".join(errors) + ")")


def rtx_runs_on(capability: tuple[int, int]) -> bool:
    """Whether TensorRT-RTX's runtime accepts a GPU of this compute capability (see RTX_COMPUTE_CAPABILITIES)."""
    return capability in ((8, 0), (8, 6), (8, 9)) or capability >= (12, 0)


def rtx_can_run_here() -> bool:
    """Whether TensorRT-RTX's runtime accepts this machine's (first) CUDA GPU."""
    return rtx_runs_on(torch.cuda.get_device_capability())


# What TensorRT logs to a logger passed to a new builder or runtime while another logger is registered.
LOGGER_SUPERSEDED = "differs from one already registered"
# Warnings every parse of the exported decoder gives, logged at debug: its token ids are int64 by design, and the
# runner binds them so.
EXPECTED_WARNINGS = ("has Int64 binding",)


@dataclass
class CapturedErrors:
    """What the process's TensorRT logger captured since the last clear."""

    messages: list[str] = field(default_factory=list)
    # TensorRT said, at the last builder or runtime created, that it keeps a logger registered earlier
    superseded: bool = False

    def describe(self, message: str) -> str:
        """message followed by TensorRT's errors, or by why there are none."""
        if self.messages:
            return message + ": " + " | ".join(self.messages)
        if self.superseded:
            return message + (" (no TensorRT error reached this project's logger: TensorRT said it keeps a logger "
                              "that other code in this process registered first)")
        return message + " (TensorRT logged no error)"


@functools.cache
def trt_logger() -> tuple[trt.ILogger, CapturedErrors]:
    """The process's one TensorRT logger, forwarding to `log`, and what it captures.

    One instance for every builder, parser and runtime: TensorRT registers the logger of the first one
    alive and answers any other logger with a LOGGER_SUPERSEDED warning, which is recorded.
    """
    captured = CapturedErrors()
    severity = trt.ILogger.Severity

    class Logger(trt.ILogger):
        def log(self, level: trt.ILogger.Severity, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                captured.messages.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                captured.superseded |= LOGGER_SUPERSEDED in msg
                (log.debug if any(m in msg for m in EXPECTED_WARNINGS) else log.warning)("TensorRT: %s", msg)
            elif level == severity.INFO:
                log.debug("TensorRT: %s", msg)

    return Logger(), captured


def logger_for_new_object() -> tuple[trt.ILogger, CapturedErrors]:
    """The logger to create a builder or runtime with, its captures cleared for what that creation logs."""
    logger, captured = trt_logger()
    captured.messages.clear()
    captured.superseded = False
    return logger, captured


def errors_of_next_call() -> CapturedErrors:
    """The logger's captures, cleared for what the next call on an existing object logs."""
    _, captured = trt_logger()
    captured.messages.clear()
    return captured
