"""The onnxruntime runtime: the shared decoder's ONNX export, generated step by step on ONNX Runtime."""

from bench_kernels.runtimes.onnxruntime.runtime import OnnxRuntimeRuntime

__all__ = ["OnnxRuntimeRuntime"]
