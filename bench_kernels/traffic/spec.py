"""The `traffic` sweep key: arrivals, request lengths, how long a load run lasts and each runtime's batching policy.

Pure pydantic (no torch, no runtimes): the config validates it and the report reads it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
POLICIES = ("static", "shape_limited", "continuous")
ARRIVALS = ("poisson", "concurrency", "day_profile")
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "file")
# MLPerf Inference's Server scenario runs at least 600 s; percentiles on fewer requests are said to be.
MLPERF_MIN_DURATION_S = 600.0
# Bounds of a load run: a typo (a million requests) must not keep a machine busy for a day.
MAX_REQUESTS = 100_000
MAX_DURATION_S = 3_600.0


class Lengths(BaseModel):
    """Input lengths in tokens: fixed, drawn (uniform or lognormal, clipped to [min_len, max_len], seeded) or read
    from a file of token counts (one integer a line)."""

    model_config = STRICT

    kind: Literal["fixed", "uniform", "lognormal", "file"] = "fixed"
    input_len: int | None = Field(None, ge=1)  # fixed: every request's length
    min_len: int = Field(1, ge=1)
    max_len: int | None = Field(None, ge=1)
    mean_len: float | None = Field(None, gt=0)  # lognormal: the lengths' mean
    sigma: float = Field(0.5, gt=0, le=5)  # lognormal: the spread of log length
    file: str = ""
    seed: int = 0

    @model_validator(mode="after")
    def _complete(self) -> Lengths:
        need = {"fixed": ("input_len",), "uniform": ("max_len",), "lognormal": ("mean_len", "max_len"),
                "file": ("file",)}[self.kind]
        missing = [name for name in need if not getattr(self, name)]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {', '.join(missing)}")
        if self.max_len is not None and self.max_len < self.min_len:
            raise ValueError(f"max_len {self.max_len} is below min_len {self.min_len}")
        return self


class Batching(BaseModel):
    """Batching limits every policy honours: at most max_batch requests at once; a static batch waits at most
    max_wait_ms for the batch to fill."""

    model_config = STRICT

    max_batch: int = Field(8, ge=1, le=4096)
    max_wait_ms: float = Field(10.0, ge=0, le=600_000)


class TrafficSpec(BaseModel):
    """Requests over time: Poisson at one or more rates, a fixed concurrency (closed loop), or a day profile of
    hourly rates (piecewise Poisson); a load run lasts duration_s or serves `requests`, whichever ends first."""

    model_config = STRICT

    arrivals: Literal["poisson", "concurrency", "day_profile"] = "poisson"
    rate_per_s: list[float] = Field(default_factory=list)  # the Poisson rates load runs sweep (any arrivals kind)
    concurrency: list[int] = Field(default_factory=list)  # concurrency: requests kept in flight
    requests_per_hour: list[float] = Field(default_factory=list)  # day_profile: one rate per hour
    lengths: Lengths = Field(default_factory=lambda: Lengths(kind="fixed", input_len=128))
    output_len: int | None = Field(None, ge=1)  # generated tokens per request (EOS ignored); None: the sweep's
    duration_s: float = Field(30.0, gt=0, le=MAX_DURATION_S)
    requests: int = Field(200, ge=1, le=MAX_REQUESTS)
    seed: int = 0
    batching: Batching = Field(default_factory=Batching)
    policies: dict[str, Literal["static", "shape_limited", "continuous"]] = Field(default_factory=dict)
    runtimes: list[str] = Field(default_factory=list)  # runtimes load-tested; empty: every runtime of the sweep
    measure: bool = True  # False: no load run, the report predicts from the offline sweep's step costs only

    @field_validator("rate_per_s", "requests_per_hour", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @field_validator("rate_per_s", "requests_per_hour", mode="before")
    @classmethod
    def _floats(cls, value: Any) -> Any:
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value] \
            if isinstance(value, list) else value

    @field_validator("concurrency", mode="before")
    @classmethod
    def _one_or_many_ints(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("rate_per_s", "requests_per_hour", "concurrency")
    @classmethod
    def _positive(cls, values: list[Any]) -> list[Any]:
        bad = [v for v in values if v <= 0]
        if bad:
            raise ValueError(f"every value must be > 0, got {bad}")
        return values

    @model_validator(mode="after")
    def _arrivals_complete(self) -> TrafficSpec:
        need = {"poisson": "rate_per_s", "concurrency": "concurrency", "day_profile": "requests_per_hour"}
        field = need[self.arrivals]
        if not getattr(self, field):
            raise ValueError(f"arrivals {self.arrivals!r} needs {field}")
        return self

    @property
    def load_rates_per_s(self) -> list[float]:
        """The Poisson rates load runs measure: rate_per_s, or without it a day profile's mean and peak hour."""
        if self.arrivals == "concurrency":
            return []
        if self.rate_per_s or self.arrivals == "poisson":
            return sorted(self.rate_per_s)
        return sorted({self.mean_rate_per_s, self.peak_rate_per_s})

    @property
    def mean_rate_per_s(self) -> float:
        return sum(self.requests_per_hour) / len(self.requests_per_hour) / 3600.0 if self.requests_per_hour \
            else (sum(self.rate_per_s) / len(self.rate_per_s) if self.rate_per_s else 0.0)

    @property
    def peak_rate_per_s(self) -> float:
        return max(self.requests_per_hour) / 3600.0 if self.requests_per_hour \
            else max(self.rate_per_s, default=0.0)


def parse_traffic(data: dict[str, Any]) -> TrafficSpec | None:
    """The traffic key validated (None when empty); errors name traffic.<key> and the allowed keys or values."""
    if not data:
        return None
    try:
        return TrafficSpec(**data)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            key = "traffic." + ".".join(str(p) for p in item["loc"]) if item["loc"] else "traffic"
            model: type[BaseModel] = TrafficSpec
            for part in item["loc"][:-1]:
                nested = model.model_fields.get(str(part))
                model = nested.annotation if nested is not None and isinstance(nested.annotation, type) \
                    and issubclass(nested.annotation, BaseModel) else model
            if item["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key (allowed keys: {', '.join(model.model_fields)})")
            else:
                problems.append(f"{key}: {str(item['msg']).removeprefix('Value error, ')}")
        raise ValueError("; ".join(problems)) from None


def check_runtimes(spec: TrafficSpec, sweep_runtimes: list[str], declared: dict[str, tuple[str, ...]]) -> list[str]:
    """Problems with the spec's runtimes and policies: each load-tested runtime is in the sweep, and each policy is
    one its runtime declares (declared: runtime name -> its batching policies, default first)."""
    problems = [f"traffic.runtimes: {name!r} is not in the sweep's runtimes; allowed: {', '.join(sweep_runtimes)}"
                for name in spec.runtimes if name not in sweep_runtimes]
    for name, policy in spec.policies.items():
        if name not in declared:
            problems.append(f"traffic.policies.{name}: unknown runtime; allowed: {', '.join(declared)}")
        elif policy not in declared[name]:
            problems.append(f"traffic.policies.{name}: {name} does not serve {policy!r}; allowed: "
                            f"{', '.join(declared[name])}")
    return problems
