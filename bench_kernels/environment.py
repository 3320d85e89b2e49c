"""What this machine offers the sweeps (the environment notebook's report), above the runtimes whose
availability it lists."""

from __future__ import annotations

import platform
from typing import Any

import torch

from bench_kernels.provenance import cpu_name, driver_version, package_version
from bench_kernels.runtimes import availability_report

def environment_report() -> dict[str, Any]:
    """What this machine offers the sweeps: used by 00_environment."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gb=round(props.total_memory / 1e9, 1), driver=driver_version(),
                    cuda=torch.version.cuda)
    for dist in ("torch", "transformers", "papermill", "pandas"):
        info[f"{dist} version"] = package_version(dist) or "not installed"
    info["runtimes"] = availability_report()
    return info
