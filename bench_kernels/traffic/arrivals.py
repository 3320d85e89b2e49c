"""Seeded arrival times and request lengths: Poisson at a rate, a day profile as piecewise Poisson, and the input
lengths a spec draws. Pure numpy: the load driver and the simulator draw the same requests from the same seed."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench_kernels.traffic.spec import Lengths, TrafficSpec

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Request:
    """One request of a load: when it arrives (seconds from the start), its prompt and output lengths in tokens."""

    index: int
    arrival_s: float
    input_len: int
    output_len: int


def poisson_arrivals(rate_per_s: float, *, duration_s: float, max_requests: int, seed: int) -> np.ndarray:
    """Arrival times (s) of a Poisson process at rate_per_s: exponential gaps, every arrival before duration_s, at
    most max_requests of them."""
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    rng = np.random.default_rng(seed)
    expected = rate_per_s * duration_s + 6 * np.sqrt(rate_per_s * duration_s) + 10
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, size=int(min(expected, max_requests))))
    return times[times < duration_s][:max_requests]


def piecewise_poisson_arrivals(requests_per_hour: list[float], *, seed: int, hour_s: float = SECONDS_PER_HOUR,
                               max_requests: int | None = None) -> np.ndarray:
    """A day profile: hour h (lasting hour_s seconds; shorter to compress a day) is Poisson at requests_per_hour[h]
    per real hour, scaled to hour_s (the same number of requests in each hour)."""
    rng = np.random.default_rng(seed)
    pieces = []
    for hour, per_hour in enumerate(requests_per_hour):
        rate = per_hour / hour_s
        expected = int(rate * hour_s + 6 * np.sqrt(rate * hour_s) + 10)
        times = np.cumsum(rng.exponential(1.0 / rate, size=expected))
        pieces.append(hour * hour_s + times[times < hour_s])
    times = np.concatenate(pieces) if pieces else np.array([])
    return times[:max_requests] if max_requests is not None else times


def sample_lengths(lengths: Lengths, count: int) -> np.ndarray:
    """count input lengths (int) as the spec says: fixed, uniform or lognormal (clipped, seeded), or drawn with
    replacement from a file of token counts."""
    rng = np.random.default_rng(lengths.seed)
    if lengths.kind == "fixed":
        return np.full(count, lengths.input_len, dtype=np.int64)
    if lengths.kind == "uniform":
        assert lengths.max_len is not None  # Lengths checks each kind is complete
        return rng.integers(lengths.min_len, lengths.max_len + 1, size=count)
    if lengths.kind == "lognormal":
        assert lengths.mean_len is not None
        # mean of a lognormal is exp(mu + sigma^2 / 2): mu places the mean where the spec asks
        mu = np.log(lengths.mean_len) - lengths.sigma ** 2 / 2
        drawn = rng.lognormal(mu, lengths.sigma, size=count)
        return np.clip(np.rint(drawn), lengths.min_len, lengths.max_len).astype(np.int64)
    return rng.choice(read_lengths_file(lengths.file), size=count, replace=True)


def read_lengths_file(path: str) -> np.ndarray:
    """Token counts, one integer a line (blank lines and '#' comments skipped); an error names the bad line."""
    from bench_kernels.paths import resolve_project_path

    file = resolve_project_path(path)
    if not Path(file).is_file():
        raise ValueError(f"traffic.lengths.file: {file} does not exist")
    values = []
    for number, line in enumerate(Path(file).read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"traffic.lengths.file: {file} line {number}: {text!r} is not a token count >= 1")
        values.append(int(text))
    if not values:
        raise ValueError(f"traffic.lengths.file: {file} holds no token counts")
    return np.asarray(values, dtype=np.int64)


def requests_at_rate(spec: TrafficSpec, rate_per_s: float, output_len: int, *, max_input_len: int | None = None,
                     count: int | None = None) -> list[Request]:
    """The requests of one open-loop load run: Poisson arrivals at rate_per_s (seeded by spec.seed) for the spec's
    duration and request count (or exactly `count` requests, however long they take), lengths as the spec draws them
    (clipped to max_input_len, the longest prompt the model takes, when given)."""
    duration_s = spec.duration_s if count is None else math.inf
    times = poisson_arrivals(rate_per_s, duration_s=duration_s, max_requests=count or spec.requests, seed=spec.seed)
    return _requests(spec, times, output_len, max_input_len)


def requests_of_day(spec: TrafficSpec, output_len: int, *, hour_s: float = SECONDS_PER_HOUR,
                    max_input_len: int | None = None) -> list[Request]:
    """The requests of a day profile, each hour compressed to hour_s seconds."""
    times = piecewise_poisson_arrivals(spec.requests_per_hour, seed=spec.seed, hour_s=hour_s)
    return _requests(spec, times, output_len, max_input_len)


def closed_loop_requests(spec: TrafficSpec, output_len: int, *, max_input_len: int | None = None) -> list[Request]:
    """The requests of a closed-loop run (arrival 0: each is issued when a client's previous one finishes)."""
    return _requests(spec, np.zeros(spec.requests), output_len, max_input_len)


def _requests(spec: TrafficSpec, times: np.ndarray, output_len: int, max_input_len: int | None) -> list[Request]:
    lengths = sample_lengths(spec.lengths, len(times))
    if max_input_len is not None:
        clipped = int((lengths > max_input_len).sum())
        if clipped:
            log.warning("%d of %d request lengths clipped to the model's %d tokens", clipped, len(lengths),
                        max_input_len)
        lengths = np.minimum(lengths, max_input_len)
    return [Request(i, float(t), int(n), output_len) for i, (t, n) in enumerate(zip(times, lengths))]
