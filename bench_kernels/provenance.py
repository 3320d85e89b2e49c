"""Provenance: the device a sweep runs on and the environment block every results row carries."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import os
import platform
import subprocess

import torch

from bench_kernels.paths import project_root
from bench_kernels.rates import device_rates

def pick_device(requested: str) -> torch.device:
    """'auto' means CUDA when a GPU is visible, else the CPU; 'cuda' without a GPU is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but torch sees no CUDA GPU; use 'cpu' or 'auto'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of the GPU, or of the machine for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    import psutil

    return psutil.virtual_memory().total


def package_version(dist: str) -> str:
    """The installed version of a distribution, '' when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.cache
def git_sha() -> str:
    """HEAD of the project checkout, '+dirty' when the tree has changes; '' outside git.

    $BENCH_KERNELS_GIT_SHA stands in where the tree was copied without .git (e.g. to a remote GPU machine).
    """
    if os.environ.get("BENCH_KERNELS_GIT_SHA"):
        return os.environ["BENCH_KERNELS_GIT_SHA"]
    root = project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("+dirty" if dirty else "")


@functools.cache
def driver_version() -> str:
    """The NVIDIA driver's version, '' without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


@functools.cache
def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict[str, str]:
    """The environment block every results row carries."""
    cuda = device.type == "cuda"
    rates = device_rates(device.type)
    block = {
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device) if cuda else "",
        "gpu_memory_gb": f"{device_memory_bytes(device) / 1e9:.1f}" if cuda else "",  # one card's capacity
        "driver_version": driver_version() if cuda else "",
        "cuda_version": (torch.version.cuda or "") if cuda else "",
        "cpu_name": cpu_name(),
        "torch_version": torch.__version__,
        "transformers_version": package_version("transformers"),
        "git_sha": git_sha(),
        # Measured once per process at the start of a sweep: the roofline's denominators.
        "copy_gbps": f"{rates.copy_gbps:.1f}",
        "read_gbps": f"{rates.read_gbps:.1f}",
        **{f"matmul_tflops_{precision}": f"{tflops:.4g}" for precision, tflops in rates.matmul_tflops.items()},
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return block
