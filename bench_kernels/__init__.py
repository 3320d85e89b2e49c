"""bench_kernels: measure TensorRT against the reference PyTorch path for one model and workload."""

__version__ = "0.1.0"

import warnings

# tqdm's notebook fallback warns in every kernel without ipywidgets; the warning reaches reports.
warnings.filterwarnings("ignore", message="IProgress not found")
