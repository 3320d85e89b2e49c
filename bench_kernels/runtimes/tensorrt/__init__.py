"""The tensorrt runtime: the shared ONNX decoder built into a TensorRT (or TensorRT-RTX) engine."""

from bench_kernels.runtimes.tensorrt.runtime import TensorRTRuntime

__all__ = ["TensorRTRuntime"]
