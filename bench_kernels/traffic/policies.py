"""The batching policies a runtime declares, as pure scheduling decisions the load driver and the simulator share.

static: collect up to max_batch requests or wait at most max_wait_ms after the oldest, pad to the longest prompt,
run the batch to completion. shape_limited: the same, but only in shapes the runtime was built for: the compiled
runtime pads a batch up to a captured (batch, length); a TensorRT engine runs anything inside its profiles, and a
request outside them costs a rebuild. continuous: requests join at any decode step while fewer than max_batch are
in flight, and leave when their last token is out (transformers' ContinuousBatchingManager for the reference).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from typing import Sequence

from bench_kernels.traffic.arrivals import Request
from bench_kernels.traffic.spec import Batching


@dataclass(frozen=True)
class BatchShape:
    """The shape a batch runs in: its (padded) batch size and prompt length, and whether it needs a rebuild first."""

    batch_size: int
    input_len: int
    rebuild: bool = False


class StaticBatching:
    """Collect up to max_batch requests or wait max_wait_ms after the oldest; pad to the longest; run to completion."""

    name = "static"

    def __init__(self, batching: Batching):
        self.max_batch = batching.max_batch
        self.max_wait_s = batching.max_wait_ms / 1e3

    def launch_at(self, queue: Sequence[Request], now_s: float) -> float:
        """When an idle server launches the next batch, given the requests waiting now (queue non-empty): at once
        when the batch is full, else when the oldest has waited max_wait_ms (an arrival before then may fill it)."""
        if len(queue) >= self.batch_limit:
            return now_s
        return max(now_s, queue[0].arrival_s + self.max_wait_s)

    @property
    def batch_limit(self) -> int:
        return self.max_batch

    def take(self, queue: list[Request]) -> list[Request]:
        """The requests of the next batch, oldest first (removed from queue)."""
        batch = queue[:self.batch_limit]
        del queue[:self.batch_limit]
        return batch

    def shape(self, batch: Sequence[Request]) -> BatchShape:
        return BatchShape(len(batch), max(r.input_len for r in batch))


class ShapeLimitedBatching(StaticBatching):
    """Static batching inside the shapes a runtime was built for.

    pads=True (compiled: one CUDA graph per captured shape): a batch is padded up to the smallest captured batch
    size and prompt length that hold it. pads=False (TensorRT: profiles are ranges): any shape up to the largest
    built one runs as it is. A prompt longer than every built length needs a rebuild, after which that length is
    built too.
    """

    name = "shape_limited"

    def __init__(self, batching: Batching, built_batch_sizes: Sequence[int], built_input_lens: Sequence[int],
                 *, pads: bool):
        super().__init__(batching)
        if not built_batch_sizes or not built_input_lens:
            raise ValueError("shape_limited batching needs the built batch sizes and input lengths")
        self.built_batch_sizes = sorted(set(built_batch_sizes))
        self.built_input_lens = sorted(set(built_input_lens))
        self.pads = pads

    @property
    def batch_limit(self) -> int:
        return min(self.max_batch, self.built_batch_sizes[-1])

    def shape(self, batch: Sequence[Request]) -> BatchShape:
        longest = max(r.input_len for r in batch)
        rebuild = longest > self.built_input_lens[-1]
        if rebuild:
            bisect.insort(self.built_input_lens, longest)
        if not self.pads:
            return BatchShape(len(batch), longest, rebuild)
        batch_size = self.built_batch_sizes[bisect.bisect_left(self.built_batch_sizes, len(batch))]
        input_len = self.built_input_lens[bisect.bisect_left(self.built_input_lens, longest)]
        return BatchShape(batch_size, input_len, rebuild)


class ContinuousBatching:
    """Requests join at every decode step while fewer than max_batch are in flight; each leaves after its last
    token."""

    name = "continuous"

    def __init__(self, batching: Batching):
        self.max_batch = batching.max_batch

    def admit(self, waiting: list[Request], in_flight: int) -> list[Request]:
        """The waiting requests that join at this step (removed from waiting), oldest first."""
        room = max(self.max_batch - in_flight, 0)
        joined = waiting[:room]
        del waiting[:room]
        return joined


Policy = StaticBatching | ShapeLimitedBatching | ContinuousBatching


def make_policy(name: str, batching: Batching, *, built_batch_sizes: Sequence[int] = (),
                built_input_lens: Sequence[int] = (), pads: bool = True) -> Policy:
    """The policy called name, with the spec's limits (and, shape_limited, the built shapes)."""
    if name == "static":
        return StaticBatching(batching)
    if name == "shape_limited":
        return ShapeLimitedBatching(batching, built_batch_sizes, built_input_lens, pads=pads)
    if name == "continuous":
        return ContinuousBatching(batching)
    raise ValueError(f"unknown batching policy {name!r}; allowed: static, shape_limited, continuous")


@dataclass
class Arrivals:
    """Where requests come from: open loop (each at its arrival time) or closed loop (concurrency clients, each
    issuing its next request when its previous one finishes)."""

    requests: list[Request]
    concurrency: int | None = None
    _pending: list[tuple[float, int]] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        first = self.requests if self.concurrency is None else self.requests[:self.concurrency]
        self._pending = [(r.arrival_s, r.index) for r in first]
        heapq.heapify(self._pending)
        self._next = len(first)
        self._by_index = {r.index: r for r in self.requests}

    def next_arrival_s(self) -> float | None:
        """When the next request arrives (None: no more, unless a closed-loop request finishes)."""
        return self._pending[0][0] if self._pending else None

    def arrived(self, now_s: float) -> list[Request]:
        """Every request that has arrived by now_s, in arrival order, each with its actual arrival time."""
        out = []
        while self._pending and self._pending[0][0] <= now_s:
            arrival_s, index = heapq.heappop(self._pending)
            request = self._by_index[index]
            out.append(Request(request.index, arrival_s, request.input_len, request.output_len))
        return out

    def finished(self, count: int, now_s: float) -> None:
        """count requests finished at now_s: closed loop, as many clients issue their next request then."""
        if self.concurrency is None:
            return
        for _ in range(count):
            if self._next < len(self.requests):
                heapq.heappush(self._pending, (now_s, self.requests[self._next].index))
                self._next += 1

    @property
    def exhausted(self) -> bool:
        return not self._pending and (self.concurrency is None or self._next >= len(self.requests))
