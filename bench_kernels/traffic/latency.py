"""Per-request timings of a load (measured or simulated) and their summary: TTFT with the queue, TPOT, end-to-end
latency at p50 / p99 with their n, throughput, and goodput at the latency targets. Pure numpy."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench_kernels.results import row_key
from bench_kernels.traffic.spec import MLPERF_MIN_DURATION_S

log = logging.getLogger(__name__)

# Per-request samples of the load rows, beside results.csv.
REQUESTS_FILE = "requests.jsonl"


@dataclass(frozen=True)
class RequestTiming:
    """When one request arrived, got its first token and its last one (seconds from the load's start)."""

    index: int
    arrival_s: float
    first_token_s: float
    last_token_s: float
    input_len: int
    output_len: int
    batch_size: int  # requests in the batch it ran in (continuous: in flight when it joined)

    @property
    def ttft_ms(self) -> float:
        return (self.first_token_s - self.arrival_s) * 1e3

    @property
    def tpot_ms(self) -> float:
        """Mean time per output token after the first (0 for a one-token output)."""
        return (self.last_token_s - self.first_token_s) * 1e3 / max(self.output_len - 1, 1)

    @property
    def latency_ms(self) -> float:
        return (self.last_token_s - self.arrival_s) * 1e3

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "latency_ms": self.latency_ms}


def meets(timing: RequestTiming, ttft_ms: float | None, tpot_ms: float | None) -> bool:
    return (ttft_ms is None or timing.ttft_ms <= ttft_ms) and (tpot_ms is None or timing.tpot_ms <= tpot_ms)


def summarize(timings: Sequence[RequestTiming], *, ttft_ms: float | None = None, tpot_ms: float | None = None,
              ) -> dict[str, float]:
    """The load's figures: p50 / p99 of TTFT, TPOT and latency over its n requests; requests/s and output tokens/s
    from the first arrival to the last token; goodput = requests/s meeting both targets (every request, without
    targets); the share of requests that meet them; the rate requests arrived at (offered) and the rate they
    completed at between the first completion and the last (a server that keeps up completes them as fast as they
    arrive; one past saturation at its capacity, while the queue grows; a short load's tail of service time, which
    lowers achieved_rate_per_s, does not enter it)."""
    if not timings:
        raise ValueError("summary of a load with no finished requests")
    ttft = np.array([t.ttft_ms for t in timings])
    tpot = np.array([t.tpot_ms for t in timings])
    latency = np.array([t.latency_ms for t in timings])
    span_s = max(t.last_token_s for t in timings) - min(t.arrival_s for t in timings)
    arrivals_s = max(t.arrival_s for t in timings) - min(t.arrival_s for t in timings)
    completions_s = max(t.last_token_s for t in timings) - min(t.last_token_s for t in timings)
    good = sum(meets(t, ttft_ms, tpot_ms) for t in timings)
    return {"requests": len(timings), "span_s": span_s,
            "ttft_ms_p50": float(np.percentile(ttft, 50)), "ttft_ms_p99": float(np.percentile(ttft, 99)),
            "tpot_ms_p50": float(np.percentile(tpot, 50)), "tpot_ms_p99": float(np.percentile(tpot, 99)),
            "latency_ms_p50": float(np.percentile(latency, 50)), "latency_ms_p99": float(np.percentile(latency, 99)),
            "achieved_rate_per_s": len(timings) / span_s if span_s > 0 else math.nan,
            "offered_rate_per_s": (len(timings) - 1) / arrivals_s if arrivals_s > 0 else math.nan,
            "completion_rate_per_s": (len(timings) - 1) / completions_s if completions_s > 0 else math.nan,
            "tokens_per_s": sum(t.output_len for t in timings) / span_s if span_s > 0 else math.nan,
            "goodput_per_s": good / span_s if span_s > 0 else math.nan, "slo_attainment": good / len(timings)}


def keeps_up(completion_rate_per_s: float, offered_rate_per_s: float) -> bool:
    """Whether a load's requests completed at 90% or more of the rate they arrived at (summarize's two rates)."""
    return completion_rate_per_s >= 0.9 * offered_rate_per_s


def percentile_note(requests: int, duration_s: float) -> str:
    """How far a p99 over `requests` requests in duration_s can be trusted, against MLPerf's minimum run."""
    tail = requests / 100
    short = f"{duration_s:,.0f} s of {MLPERF_MIN_DURATION_S:,.0f} s MLPerf's Server scenario runs at least"
    if tail < 1:
        return f"p99 of {requests} requests (fewer than 100) lies between their two slowest; {short}"
    return f"p99 rests on the {tail:,.0f} slowest of {requests} requests; {short}"


def read_requests(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-request records of a run, only the newest load of each row key (a rerun replaces a row); a torn
    line is skipped."""
    path = Path(run_dir) / REQUESTS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("skipping a torn line in %s", path)
    newest: dict[tuple[str, ...], int] = {}
    for record in records:
        key = row_key(record["key"])
        newest[key] = max(newest.get(key, 0), record["load_id"])
    return [r for r in records if r["load_id"] == newest[row_key(r["key"])]]
