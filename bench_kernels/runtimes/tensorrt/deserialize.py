"""Loading a built engine: the engine file verified against its checksum, deserialized by a TensorRT runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench_kernels.runtimes.tensorrt.build import checksum_ok
from bench_kernels.runtimes.tensorrt.library import TensorRTRuntimeError, import_tensorrt, logger_for_new_object

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from bench_kernels.runtimes.tensorrt.library import trt


def deserialize_engine(engine_path: str | Path) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """The runtime and engine for a checksum-verified engine file (keep the runtime alive with the engine)."""
    engine_path = Path(engine_path)
    found = import_tensorrt()
    if not checksum_ok(engine_path):
        raise TensorRTRuntimeError(f"{engine_path} is missing or does not match its checksum; rebuild it")
    logger, captured = logger_for_new_object()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise TensorRTRuntimeError(captured.describe(f"{found.flavor} {found.version} could not load {engine_path}"))
    return runtime, engine
