"""A discrete-event simulator of each batching policy, driven by the per-step costs the offline sweep measured:
prefill (TTFT rows: prefill and the first token, by batch size and prompt length) and a decode step (ITL rows, by
batch size and context length). Pure (numpy and pandas, no torch): the report half runs it.

Costs between measured shapes are interpolated linearly (prompt length first, then batch size); outside them they
are extrapolated linearly from the two nearest measured shapes and every prediction that needed it says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from bench_kernels.traffic.arrivals import Request
from bench_kernels.traffic.latency import RequestTiming, keeps_up, summarize
from bench_kernels.traffic.policies import Arrivals, ContinuousBatching, Policy, StaticBatching

log = logging.getLogger(__name__)


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> tuple[float, bool]:
    """y at x on the piecewise-linear curve through (xs, ys), extended linearly past its ends; True if x is
    outside [xs[0], xs[-1]]."""
    if len(xs) == 1:
        return float(ys[0]), x != xs[0]
    if xs[0] <= x <= xs[-1]:
        return float(np.interp(x, xs, ys)), False
    i = 0 if x < xs[0] else len(xs) - 2
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return max(float(ys[i] + slope * (x - xs[i])), 0.0), True


def _curves(table: dict[tuple[int, int], float]) -> tuple[list[int], list[tuple[list[int], list[float]]]]:
    """The measured batch sizes, and for each its (lengths, values) sorted by length."""
    batches = sorted({b for b, _ in table})
    curves = []
    for b in batches:
        points = sorted((n, v) for (bb, n), v in table.items() if bb == b)
        curves.append(([p[0] for p in points], [p[1] for p in points]))
    return batches, curves


@dataclass
class StepCosts:
    """One configuration's measured step costs in ms: prefill[(batch, prompt)] and decode[(batch, context)]."""

    prefill_ms: dict[tuple[int, int], float]
    decode_ms: dict[tuple[int, int], float]
    rebuild_s: float = 0.0  # what a shape outside the built ones costs (TensorRT: the measured engine build)
    # (cost, axis, measured range) -> the lowest and highest value asked for outside that range
    beyond: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._curves = {what: _curves(table) for what, table in (("prefill", self.prefill_ms),
                                                                  ("decode", self.decode_ms))}
        self._memo: dict[tuple[str, int, int], float] = {}  # by whole tokens: a lookup's value, noted once

    def _lookup(self, what: str, batch_size: int, length: float) -> float:
        key = (what, batch_size, round(length))
        if key not in self._memo:
            batches, curves = self._curves[what]
            by_batch = []
            for b, (lengths, values) in zip(batches, curves):
                value, out = _interp(length, lengths, values)
                if out:
                    self._beyond(what, "length", f"{lengths[0]}-{lengths[-1]} at batch {b}", length)
                by_batch.append(value)
            value, out = _interp(batch_size, batches, by_batch)
            if out:
                self._beyond(what, "batch", f"{batches[0]}-{batches[-1]}", batch_size)
            self._memo[key] = value
        return self._memo[key]

    def _beyond(self, what: str, axis: str, measured: str, asked: float) -> None:
        low, high = self.beyond.get((what, axis, measured), (asked, asked))
        self.beyond[(what, axis, measured)] = (min(low, asked), max(high, asked))

    @property
    def extrapolated(self) -> list[str]:
        """What the predictions so far extrapolated, e.g. 'decode length 513-640 beyond measured 192-192 at batch
        32'."""
        return [f"{what} {axis} {low:.0f}{f'-{high:.0f}' if high != low else ''} beyond measured {measured}"
                for (what, axis, measured), (low, high) in sorted(self.beyond.items())]

    def prefill(self, batch_size: int, input_len: int) -> float:
        return self._lookup("prefill", batch_size, input_len)

    def decode(self, batch_size: int, context_len: float) -> float:
        return self._lookup("decode", batch_size, context_len)

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, rebuild_s: float = 0.0) -> StepCosts:
        """From one configuration's ok inference rows: TTFT p50 as the prefill, ITL p50 as a decode step at the
        run's mean context (prompt + half the output)."""
        if rows.empty:
            raise ValueError("no measured inference rows to take step costs from")
        prefill = {(int(r.batch_size), int(r.input_len)): float(r.ttft_ms_p50) for r in rows.itertuples()}
        decode = {(int(r.batch_size), int(r.input_len + r.output_len / 2)): float(r.itl_ms_p50)
                  for r in rows.itertuples()}
        return cls(prefill, decode, rebuild_s)


def simulate(arrivals: Arrivals, policy: Policy, costs: StepCosts) -> list[RequestTiming]:
    """Every request's timing under policy, on one server (one deployment: one GPU or one tensor-parallel group)."""
    if isinstance(policy, ContinuousBatching):
        return _continuous(arrivals, policy, costs)
    return _static(arrivals, policy, costs)


def _static(arrivals: Arrivals, policy: StaticBatching, costs: StepCosts) -> list[RequestTiming]:
    now = 0.0
    queue: list[Request] = []
    done: list[RequestTiming] = []
    while True:
        queue += arrivals.arrived(now)
        if not queue:
            upcoming = arrivals.next_arrival_s()
            if upcoming is None:
                return done
            now = upcoming
            continue
        launch = policy.launch_at(queue, now)
        upcoming = arrivals.next_arrival_s()
        if upcoming is not None and upcoming < launch:
            now = upcoming  # an arrival before the launch may fill the batch
            continue
        now = launch
        batch = policy.take(queue)
        shape = policy.shape(batch)
        output_len = max(r.output_len for r in batch)
        start = now + (costs.rebuild_s if shape.rebuild else 0.0)
        first = start + costs.prefill(shape.batch_size, shape.input_len) / 1e3
        last = first + (output_len - 1) * costs.decode(shape.batch_size, shape.input_len + output_len / 2) / 1e3
        done += [RequestTiming(r.index, r.arrival_s, first, last, r.input_len, r.output_len, len(batch))
                 for r in batch]
        now = last
        arrivals.finished(len(batch), now)


def _continuous(arrivals: Arrivals, policy: ContinuousBatching, costs: StepCosts) -> list[RequestTiming]:
    """Each iteration: the requests that join are prefilled (one prefill of their batch at their longest prompt)
    in the same step as one decode step of those in flight; every request in the step gets a token at its end.

    Between events (an arrival, a request's last token) the steps are taken together: k steps of n requests cost
    k decode steps at the middle of their contexts, exact where the interpolated cost is linear in context."""
    now = 0.0
    waiting: list[Request] = []
    done: list[RequestTiming] = []
    in_flight: list[list] = []  # [request, first token time, tokens so far, batch size when it joined]
    while True:
        waiting += arrivals.arrived(now)
        if not waiting and not in_flight:
            upcoming = arrivals.next_arrival_s()
            if upcoming is None:
                return done
            now = upcoming
            continue
        joined = policy.admit(waiting, len(in_flight))
        steps = 1
        step_ms = costs.prefill(len(joined), max(r.input_len for r in joined)) if joined else 0.0
        if in_flight:
            context = sum(r.input_len + tokens for r, _, tokens, _ in in_flight) / len(in_flight)
            if not joined:
                steps = _steps_to_next_event(in_flight, arrivals, policy, now, costs.decode(len(in_flight), context))
            step_ms += steps * costs.decode(len(in_flight), context + (steps - 1) / 2)
        now += step_ms / 1e3
        for item in in_flight:
            item[2] += steps
        size = len(in_flight) + len(joined)
        in_flight += [[r, now, 1, size] for r in joined]
        finished = [item for item in in_flight if item[2] >= item[0].output_len]
        in_flight = [item for item in in_flight if item[2] < item[0].output_len]
        done += [RequestTiming(r.index, r.arrival_s, first, now, r.input_len, r.output_len, size)
                 for r, first, _, size in finished]
        arrivals.finished(len(finished), now)


def _steps_to_next_event(in_flight: list[list], arrivals: Arrivals, policy: ContinuousBatching, now: float,
                         step_ms: float) -> int:
    """Decode steps until a request in flight finishes or (with room in the batch) the next one arrives."""
    steps = min(item[0].output_len - item[2] for item in in_flight)
    upcoming = arrivals.next_arrival_s()
    if upcoming is not None and len(in_flight) < policy.max_batch and step_ms > 0:
        steps = min(steps, max(1, math.ceil((upcoming - now) * 1e3 / step_ms)))
    return max(steps, 1)


def highest_rate(predict: Callable[[float], dict[str, float]], *, ttft_ms: float | None, tpot_ms: float | None,
                 low_per_s: float = 1e-3, high_per_s: float = 1e4, iterations: int = 30) -> float:
    """The highest Poisson rate whose predicted p99 TTFT and TPOT meet the targets and whose served rate keeps up
    with the rate its requests arrived at (latency.keeps_up) (bisection in log rate; 0 when even low_per_s fails)."""
    def holds(rate: float) -> bool:
        summary = predict(rate)
        return ((ttft_ms is None or summary["ttft_ms_p99"] <= ttft_ms)
                and (tpot_ms is None or summary["tpot_ms_p99"] <= tpot_ms)
                and keeps_up(summary["completion_rate_per_s"], summary["offered_rate_per_s"]))

    if not holds(low_per_s):
        return 0.0
    if holds(high_per_s):
        return high_per_s
    lo, hi = math.log(low_per_s), math.log(high_per_s)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if holds(math.exp(mid)) else (lo, mid)
    return math.exp(lo)


def predict_rate(requests_for: Callable[[float], list[Request]], policy_for: Callable[[], Policy],
                 costs: StepCosts, rate_per_s: float, *, ttft_ms: float | None = None,
                 tpot_ms: float | None = None) -> dict[str, float]:
    """The summary of a simulated open-loop run at rate_per_s (a fresh policy: shape_limited remembers rebuilds)."""
    timings = simulate(Arrivals(requests_for(rate_per_s)), policy_for(), costs)
    return summarize(timings, ttft_ms=ttft_ms, tpot_ms=tpot_ms)

