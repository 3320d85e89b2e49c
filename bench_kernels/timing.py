"""The one generation timer for every runtime (warmup, device sync, events, percentiles, peak memory), and the
CUDA-graph helper that the kernel and all-reduce timers replay.

Two micro-benchmarks time single kernels instead, for other ends: rates._best_time_s measures the
roofline's copy bandwidth and matmul rate, and the compiled runtime's linear_ops.kernel_time_ms replays a kernel
from a CUDA graph to choose between Triton and cuBLAS. Neither times a generation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import psutil
import torch

from bench_kernels.method import MEMORY_SAMPLE_INTERVAL_S

log = logging.getLogger(__name__)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between samples (numpy's default)."""
    if not values:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class StepTimer:
    """Marks the start of a generation and each generated token.

    On CUDA it records events (no sync inside the loop) and reads them after one final sync;
    on the CPU it reads time.perf_counter.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[Any] = []

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        """Call right before the prompt goes in."""
        self._marks = [self._mark()]

    def token(self) -> None:
        """Call right after each new token (for the whole batch) is produced."""
        if not self._marks:
            raise RuntimeError("StepTimer.token() called before start()")
        self._marks.append(self._mark())

    @property
    def tokens(self) -> int:
        return max(len(self._marks) - 1, 0)

    def offsets_ms(self) -> list[float]:
        """Milliseconds from start to each token mark."""
        if self.cuda:
            torch.cuda.synchronize()
            first = self._marks[0]
            return [first.elapsed_time(m) for m in self._marks[1:]]
        first = self._marks[0]
        return [(m - first) * 1e3 for m in self._marks[1:]]


class PeakMemory:
    """Peak memory over a region, per device (a model split over several GPUs has one peak on each).

    CUDA: torch's max allocated, or with device_wide the device memory in use (total - free, sampled
    every 5 ms), which also sees what TensorRT or ONNX Runtime allocate outside torch. CPU: the
    process RSS sampled every 5 ms.
    """

    def __init__(self, device: torch.device | list[torch.device], device_wide: bool = False,
                 interval_s: float = MEMORY_SAMPLE_INTERVAL_S):
        self.devices = device if isinstance(device, list) else [device]
        self.cuda = [d for d in self.devices if d.type == "cuda"]
        self.sampled = not self.cuda or device_wide
        self.interval_s = interval_s
        self.peak_bytes_per_device = [0] * len(self.devices)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _in_use(self, device: torch.device) -> int:
        if device.type == "cuda":
            free, total = torch.cuda.mem_get_info(device)
            return total - free
        return psutil.Process().memory_info().rss

    def _record(self) -> None:
        self.peak_bytes_per_device = [max(peak, self._in_use(d))
                                      for peak, d in zip(self.peak_bytes_per_device, self.devices)]

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._record()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        for device in self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        if self.sampled:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for device in self.cuda:
            torch.cuda.synchronize(device)
        if self.sampled:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self._record()
        else:
            self.peak_bytes_per_device = [torch.cuda.max_memory_allocated(d) for d in self.devices]

    @property
    def peak_bytes(self) -> int:
        """The deployment's peak: the per-device peaks added up."""
        return sum(self.peak_bytes_per_device)

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 1e9

    @property
    def peak_gb_per_device(self) -> float:
        """The largest device's peak: what must fit one GPU."""
        return max(self.peak_bytes_per_device) / 1e9


@dataclass
class Measurement:
    """Raw samples of the measured runs (warmup excluded) and the figures derived from them."""

    batch_size: int
    input_len: int
    output_len: int
    warmup: int
    ttft_ms: list[float] = field(default_factory=list)
    itl_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    peak_mem_gb: float = float("nan")  # all devices together
    peak_mem_gb_per_gpu: float = float("nan")  # the largest device's peak
    last_output: Any = None  # what the last measured run returned (its tokens feed the quality check)

    def add_run(self, offsets_ms: list[float]) -> None:
        """One generation's token offsets: TTFT is the first, ITLs the gaps, E2E the last."""
        self.ttft_ms.append(offsets_ms[0])
        self.itl_ms.extend(float(b - a) for a, b in zip(offsets_ms, offsets_ms[1:]))
        self.latency_ms.append(offsets_ms[-1])

    def summary(self) -> dict[str, float]:
        """p50/p99 of each latency, generated tokens/s and prefill tokens/s (from the p50s)."""
        out: dict[str, float] = {}
        for name, samples in (("ttft_ms", self.ttft_ms), ("itl_ms", self.itl_ms), ("latency_ms", self.latency_ms)):
            out[f"{name}_p50"] = percentile(samples, 50) if samples else float("nan")
            out[f"{name}_p99"] = percentile(samples, 99) if samples else float("nan")
        out["tokens_per_s"] = self.batch_size * self.output_len / (out["latency_ms_p50"] / 1e3)
        out["prefill_tokens_per_s"] = self.batch_size * self.input_len / (out["ttft_ms_p50"] / 1e3)
        out["peak_mem_gb"] = self.peak_mem_gb
        out["peak_mem_gb_per_gpu"] = self.peak_mem_gb_per_gpu
        return out

    def samples(self) -> dict[str, list[float]]:
        return {"ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms, "latency_ms": self.latency_ms}


def measure_generation(
    generate: Callable[[StepTimer], Any],
    device: torch.device | list[torch.device],
    *,
    batch_size: int,
    input_len: int,
    output_len: int,
    warmup: int,
    repeats: int,
    device_wide_memory: bool = False,
) -> Measurement:
    """Run `generate(timer)` warmup + repeats times; only the repeats are kept. Several devices (a model split
    over GPUs): the first times the tokens, peak memory is taken on each.

    `generate` must call timer.start() before the prompt goes in and timer.token() once per
    generated token; a run that produces a different number of tokens is an error (speed runs use
    a fixed output length).
    """
    devices = device if isinstance(device, list) else [device]
    result = Measurement(batch_size, input_len, output_len, warmup)
    timer = StepTimer(devices[0])
    for _ in range(warmup):
        generate(timer)
        timer.offsets_ms()  # drains pending CUDA work so it cannot leak into the first measured run
    with PeakMemory(devices, device_wide_memory) as peak:
        for _ in range(repeats):
            result.last_output = generate(timer)
            if timer.tokens != output_len:
                raise RuntimeError(f"runtime produced {timer.tokens} tokens, expected exactly {output_len}")
            result.add_run(timer.offsets_ms())
    result.peak_mem_gb, result.peak_mem_gb_per_gpu = peak.peak_gb, peak.peak_gb_per_device
    return result


def cuda_graph_of(work: Callable[[], object], calls: int) -> torch.cuda.CUDAGraph:
    """`calls` back-to-back calls of work captured in one CUDA graph, after one call outside the capture (which
    compiles, autotunes or sets up a communicator), so that replaying it times the GPU without Python's launches."""
    work()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    # thread_local: under tensor parallelism the process group's watchdog thread queries events during a capture.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for _ in range(calls):
            work()
    return graph
