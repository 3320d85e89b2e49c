"""The compiled runtime: the static-cache decoder under torch.compile, CUDA graphs and Triton kernels."""

from bench_kernels.runtimes.compiled.common import CompiledOptions
from bench_kernels.runtimes.compiled.runtime import CompiledRuntime

__all__ = ["CompiledOptions", "CompiledRuntime"]
