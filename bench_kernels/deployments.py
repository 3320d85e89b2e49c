"""Deployments: each separately measured way to run a runtime of a sweep (precision, options, devices)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench_kernels.config import SweepConfig
from bench_kernels.runtimes import get_runtime

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Deployment:
    """One separately measured way to run a runtime: its precision and options (e.g. one tensor-parallel
    degree of several), and how many devices it uses."""

    runtime: str
    precision: str
    options: Any
    gpu_count: int

    @property
    def label(self) -> str:
        """'compiled fp8' for one device, 'compiled fp8 on 2 devices' for more."""
        devices = f" on {self.gpu_count} devices" if self.gpu_count > 1 else ""
        return f"{self.runtime} {self.precision}{devices}"


def deployments(cfg: SweepConfig, runtime_name: str, device: torch.device) -> list[Deployment]:
    """Every deployment of one runtime in the sweep, precisions outermost."""
    runtime_cls = get_runtime(runtime_name)
    shards = runtime_cls.shard_options(cfg.options_for(runtime_name))
    return [Deployment(runtime_name, precision, options, runtime_cls.gpu_count(options, device))
            for precision in cfg.precisions_for(runtime_name) for options in shards]


def memory_warnings(cfg: SweepConfig, hf_config: Any) -> list[str]:
    """Shapes whose estimated weights + KV cache exceed one device's memory, for each number of devices a
    deployment of the sweep splits the model over (a warning: estimates can be off)."""
    from bench_kernels.models import estimated_memory_bytes
    from bench_kernels.provenance import device_memory_bytes, pick_device

    device = pick_device(cfg.device)
    capacity = device_memory_bytes(device)
    splits = sorted({d.gpu_count for runtime in cfg.runtimes for d in deployments(cfg, runtime, device)})
    warnings = []
    for precision in cfg.precisions:
        need = estimated_memory_bytes(hf_config, precision, max(cfg.batch_sizes), cfg.max_total_len)
        for devices in splits:
            if need / devices > capacity:
                over = f" split over {devices} devices ({need / devices / 1e9:.1f} GB each)" if devices > 1 else ""
                warnings.append(f"{precision}: batch {max(cfg.batch_sizes)} at {cfg.max_total_len} tokens needs about "
                                f"{need / 1e9:.1f} GB for weights and KV cache{over}; this {device.type} has "
                                f"{capacity / 1e9:.1f} GB (those shapes will be error rows)")
    return warnings
