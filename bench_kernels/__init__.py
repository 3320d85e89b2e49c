"""bench_kernels: measure how to serve an LLM (reference, compiled, ONNX Runtime, TensorRT) for one model and
workload."""

__version__ = "0.1.0"

import warnings

# tqdm's notebook fallback warns in every kernel without ipywidgets; the warning reaches reports.
warnings.filterwarnings("ignore", message="IProgress not found")
