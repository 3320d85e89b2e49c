"""The reference runtime: transformers generate(), eager, dynamic cache."""

from bench_kernels.runtimes.reference.runtime import ReferenceRuntime

__all__ = ["ReferenceRuntime"]
