"""torch profiler traces of one generation per deployment at the workload's shape, bounded to its first decode
steps, and their top kernels: written next to the results (profiles/), read back by ResultsStore.profiles for the
report."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

from bench_kernels.results import PROFILE_COLUMNS, PROFILER_STEP_PREFIX

PROFILE_DECODE_STEPS = 4  # prefill, then this many decode steps: enough to see a step's kernels, a small trace
TOP_KERNELS = 12


def profile_name(runtime: str, precision: str, gpu_count: int, batch_size: int, input_len: int) -> str:
    return f"{runtime}-{precision}-{gpu_count}gpu-b{batch_size}-i{input_len}"


def record_profile(generate: Callable[[Any], Any], device_type: str, folder: Path, name: str, output_len: int
                   ) -> Path:
    """Run generate(timer) under torch.profiler, recording the prefill and the first PROFILE_DECODE_STEPS decode
    steps (fewer for a shorter output); write <name>.json (Chrome trace) and <name>.csv (the top kernels by self
    time). Returns the CSV."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from bench_kernels.timing import StepTimer

    class SteppingTimer(StepTimer):
        """Ends a profiler step at every generated token."""

        def __init__(self, device: torch.device, profiler: Any):
            super().__init__(device)
            self.profiler = profiler

        def token(self) -> None:
            super().token()
            self.profiler.step()

    folder.mkdir(parents=True, exist_ok=True)
    cuda = device_type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def save(profiler: Any) -> None:
        profiler.export_chrome_trace(str(folder / f"{name}.json"))
        events = [e for e in profiler.key_averages() if (e.self_device_time_total if cuda else e.self_cpu_time_total)
                  and not e.key.startswith(PROFILER_STEP_PREFIX)]
        total = sum(e.self_device_time_total if cuda else e.self_cpu_time_total for e in events) or 1.0
        top = sorted(events, key=lambda e: -(e.self_device_time_total if cuda else e.self_cpu_time_total))
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(PROFILE_COLUMNS)
            for event in top[:TOP_KERNELS]:
                time_us = event.self_device_time_total if cuda else event.self_cpu_time_total
                writer.writerow([event.key, event.count, f"{time_us:.1f}", f"{100 * time_us / total:.1f}"])

    steps = min(1 + PROFILE_DECODE_STEPS, output_len)  # the trace is saved when the last recorded step ends
    with profile(activities=activities, schedule=schedule(wait=0, warmup=0, active=steps, repeat=1),
                 on_trace_ready=save) as profiler:
        generate(SteppingTimer(torch.device(device_type), profiler))
    return folder / f"{name}.csv"

