"""The rates the rooflines divide by (copy and read bandwidth, matmul rates), the CPU's cache size, and the
all-reduce rates a tensor-parallel runtime measures; each measured, below the runtimes."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench_kernels.method import MATMUL_SIZE_CPU, MATMUL_SIZE_GPU
from bench_kernels.precisions import MATMUL_PRECISIONS
from bench_kernels.roofline import streaming_gbps
from bench_kernels.timing import cuda_graph_of

log = logging.getLogger(__name__)

def _best_time_s(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest of `repeats` timed calls after one untimed: CUDA events on a GPU, perf_counter on a CPU."""
    best_s = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            elapsed_s = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            work()
            elapsed_s = time.perf_counter() - t0
        best_s = min(best_s, elapsed_s)
    return best_s


def _stream_bytes(device_type: str) -> int:
    """Buffer size for the bandwidth measurements: 1 GiB on a GPU (an H100 copies 256 MiB about 5% slower,
    and a decode step streams tens of GB), 256 MiB on a CPU."""
    return 2**30 if device_type == "cuda" else 256 * 2**20


def copy_bandwidth_gbps(device_type: str, repeats: int = 5) -> float:
    """Measured copy bandwidth in GB/s, counting bytes read plus bytes written (best of repeats)."""
    device, nbytes = torch.device(device_type), _stream_bytes(device_type)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_time_s(lambda: dst.copy_(src), device, repeats) / 1e9


def read_bandwidth_gbps(device_type: str, repeats: int = 5) -> float:
    """Measured read bandwidth in GB/s: a sum over a buffer, which reads every byte and writes almost nothing
    (a decode step mostly reads; on some cards reading alone may be faster than copying)."""
    device, nbytes = torch.device(device_type), _stream_bytes(device_type)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    return nbytes / _best_time_s(lambda: src.sum(), device, repeats) / 1e9


@dataclass(frozen=True)
class DeviceRates:
    """What the rooflines divide by, measured on one kind of device."""

    copy_gbps: float
    read_gbps: float
    matmul_tflops: dict[str, float]  # per compute precision that runs there

    @property
    def streaming_gbps(self) -> float:
        """The decode roofline's bandwidth (roofline.streaming_gbps: the faster of the copy and read rates)."""
        return streaming_gbps(self.copy_gbps, self.read_gbps)


def _measure_rates(device_type: str, cpu_threads: int) -> DeviceRates:
    torch.set_num_threads(cpu_threads)
    return DeviceRates(copy_bandwidth_gbps(device_type), read_bandwidth_gbps(device_type),
                       matmul_rates_tflops(device_type))


def _measured_apart(work: Callable[..., Any], device_type: str) -> Any:
    """work(device_type, this process's CPU threads): on a GPU in a child process of its own (why: device_rates),
    on a CPU here, where a measurement holds nothing after it returns and a child would cost a second start of
    torch (about 3 s on a 2-core machine)."""
    threads = torch.get_num_threads()
    if device_type == "cpu":
        return work(device_type, threads)
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(work, device_type, threads).result()


# The rates of each device type this process measured: every row of a sweep divides by the same ones.
_MEASURED: dict[str, DeviceRates] = {}


def device_rates(device_type: str) -> DeviceRates:
    """The rates, measured once per process (at the caller's CPU thread count), a GPU's in a child process.

    The CUDA context and cuBLAS kernels a measurement loads hold about 1.7 GB of the GPU until their process
    exits, and no empty_cache returns it; in the sweep's own process that was GPU 0's memory that rank 0 of a
    tensor-parallel deployment lacked (a 70B bf16 half at batch 32, input 1024, ran out by 0.2 GB)."""
    if device_type not in _MEASURED:
        rates = _measured_apart(_measure_rates, device_type)
        log.info("measured %s rates: copy %.1f GB/s, read %.1f GB/s, matmul %s", device_type, rates.copy_gbps,
                 rates.read_gbps, ", ".join(f"{p} {t:.1f} TFLOP/s" for p, t in rates.matmul_tflops.items()))
        _MEASURED[device_type] = rates
    return _MEASURED[device_type]


def _measure_bandwidths(device_type: str, cpu_threads: int) -> tuple[float, float]:
    torch.set_num_threads(cpu_threads)
    return copy_bandwidth_gbps(device_type), read_bandwidth_gbps(device_type)


def remeasured_rates(device_type: str) -> DeviceRates:
    """device_rates with the copy and read bandwidths measured again, each the faster of its two measurements;
    later calls of device_rates return these.

    For a row that decoded faster than its bound allows: on a machine shared with other work (a CI runner, two
    test workers on two cores) the first measurement may have run while something else held the memory bus."""
    first = device_rates(device_type)
    copy_gbps, read_gbps = _measured_apart(_measure_bandwidths, device_type)
    log.info("measured %s bandwidth again: copy %.1f GB/s, read %.1f GB/s (first %.1f and %.1f)", device_type,
             copy_gbps, read_gbps, first.copy_gbps, first.read_gbps)
    _MEASURED[device_type] = DeviceRates(max(first.copy_gbps, copy_gbps), max(first.read_gbps, read_gbps),
                                         first.matmul_tflops)
    return _MEASURED[device_type]


def all_reduce_bus_gbps(device: torch.device, world: int, repeats: int = 5) -> float:
    """Measured all-reduce bus bandwidth of the process group, in GB/s (best of repeats).

    Bus bandwidth as nccl-tests defines it: a ring all-reduce of S bytes sends 2 (n-1)/n * S per rank, so
    that traffic over this figure is the time it takes. Every rank must call it (it is a collective)."""
    import torch.distributed as dist

    nbytes = 256 * 2**20 if device.type == "cuda" else 16 * 2**20  # gloo on a CPU is slow; a smaller buffer
    data = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    seconds = _best_time_s(lambda: dist.all_reduce(data), device, repeats)
    gbps = 2 * (world - 1) / world * nbytes / seconds / 1e9
    log.info("measured all-reduce bus bandwidth over %d ranks: %.1f GB/s", world, gbps)
    return gbps


def all_reduce_latency_us(device: torch.device, numel: int, dtype: torch.dtype, calls: int, repeats: int = 5) -> float:
    """Measured microseconds per all-reduce (a sum of numel elements over the default group) when `calls` of them run
    back to back, as one decode step issues them: replayed from a CUDA graph on GPUs, as the compiled decode runs
    them, eager on the CPU. At a decode step's sizes this is latency, which the bandwidth above does not show.
    Every rank must call it."""
    import torch.distributed as dist

    group = dist.group.WORLD.group_name
    data = torch.ones(numel, dtype=dtype, device=device)
    functional = torch.ops._c10d_functional

    def reduce_once() -> None:
        functional.wait_tensor(functional.all_reduce(data, "sum", group))

    def reduce_all() -> None:
        for _ in range(calls):
            reduce_once()

    work = cuda_graph_of(reduce_once, calls).replay if device.type == "cuda" else reduce_all
    return _best_time_s(work, device, repeats) / calls * 1e6


def _matmul_work(precision: str, n: int, device: torch.device) -> Callable[[], object]:
    """One n x n x n matmul in a compute precision, as the runtimes' prefills issue it."""
    if precision == "fp8":
        if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
            raise RuntimeError("fp8 e4m3 matmuls need a CUDA GPU of compute capability 8.9 or newer")
        # What the compiled runtime's fp8 prefill runs: e4m3 rows and weights, fp32 per-row and per-column scales.
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants
        scale_a = torch.ones(n, 1, device=device)
        scale_b = torch.ones(1, n, device=device)
        return lambda: torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
    if precision == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device).t()
        return lambda: torch._int_mm(a, b)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: a @ b


def matmul_rates_tflops(device_type: str) -> dict[str, float]:
    """Measured dense matmul rate in TFLOP/s per compute precision (best of several after one untimed call).

    GPU: 8192^3 in every precision of MATMUL_PRECISIONS that runs there (fp32 as torch runs it by default, without
    TF32; fp8 through torch._scaled_mm with rowwise scales; int8 through torch._int_mm, in TOP/s). CPU: 2048^3 in
    fp32 and bf16 (under a second together)."""
    device = torch.device(device_type)
    n, precisions, repeats = ((MATMUL_SIZE_GPU, MATMUL_PRECISIONS, 10) if device.type == "cuda"
                              else (MATMUL_SIZE_CPU, ("fp32", "bf16"), 3))
    rates = {}
    for precision in precisions:
        try:
            work = _matmul_work(precision, n, device)
            rates[precision] = 2 * n**3 / _best_time_s(work, device, repeats) / 1e12
        except RuntimeError as err:  # this device or torch build cannot run it: no rate, and the reason logged
            log.info("%s %s matmul rate not measured: %s", device.type, precision, str(err).splitlines()[0])
            continue
    return rates


@functools.cache
def last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache level (Linux sysfs; 0 when unknown)."""
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes[level] = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return sizes[max(sizes)] if sizes else 0
