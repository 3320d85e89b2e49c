"""Optimization profiles of a decoder engine: the (min, opt, max) shapes it is built for, the two a sweep needs,
and the shape of each decoder input at one (batch, sequence, past)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench_kernels.runtimes.tensorrt.library import EngineBuildError

if TYPE_CHECKING:
    import tensorrt as trt

DECODER_INPUTS = "input_ids, position_ids, attention_mask, past_key_values.{i}.key / .value"


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile: (min, opt, max) of batch, new-token sequence and past (cached) length."""

    batch: tuple[int, int, int]
    sequence: tuple[int, int, int]
    past: tuple[int, int, int]

    def __post_init__(self) -> None:
        for name, (low, opt, high) in (("batch", self.batch), ("sequence", self.sequence), ("past", self.past)):
            if not 0 <= low <= opt <= high:
                raise ValueError(f"profile {name} needs 0 <= min <= opt <= max, got {(low, opt, high)}")

    def contains(self, batch: int, sequence: int, past: int) -> bool:
        return all(low <= value <= high for value, (low, _, high) in
                   ((batch, self.batch), (sequence, self.sequence), (past, self.past)))

    def describe(self) -> str:
        return ", ".join(f"{name} {low}..{high} (opt {opt})" for name, (low, opt, high) in
                         (("batch", self.batch), ("sequence", self.sequence), ("past", self.past)))


class ShapeOutsideProfiles(ValueError):
    """A (batch, sequence, past) shape that no optimization profile of the engine covers."""

    def __init__(self, batch: int, sequence: int, past: int, profiles: list[ShapeProfile]):
        built = "; ".join(f"#{i}: {p.describe()}" for i, p in enumerate(profiles))
        super().__init__(f"shape batch={batch}, sequence={sequence}, past={past} is outside every optimization "
                         f"profile of the engine ({built}); rebuild with profiles that cover it")


def profiles_for_sweep(batch_sizes: list[int], input_lens: list[int], output_len: int) -> list[ShapeProfile]:
    """A prefill profile (past 0) and a decode profile (sequence 1) covering exactly the sweep's shapes.

    Two profiles, not one: a single profile spanning sequence 1..S and past 0..S+N would tune kernels
    for one opt point that is wrong for one of the two phases (long prompts with no past, or one token
    against a long past), while each profile tunes its own phase. Switching profile costs one
    set_optimization_profile_async after the prefill. Opt batch is the largest: there the choice of
    kernels matters most, small-batch decode being bound by memory bandwidth.
    """
    if not batch_sizes or not input_lens or min(batch_sizes) < 1 or min(input_lens) < 1 or output_len < 1:
        raise ValueError(f"need batch sizes, input lengths and output_len >= 1, got "
                         f"{batch_sizes}, {input_lens}, {output_len}")
    batch = (min(batch_sizes), max(batch_sizes), max(batch_sizes))
    prefill = ShapeProfile(batch, (min(input_lens), max(input_lens), max(input_lens)), (0, 0, 0))
    if output_len == 1:
        return [prefill]
    # decode step t (1..output_len-1) feeds token t with past = input_len + t - 1
    low, high = min(input_lens), max(input_lens) + output_len - 2
    return [prefill, ShapeProfile(batch, (1, 1, 1), (low, (low + high) // 2, high))]


def profile_for(profiles: list[ShapeProfile], batch: int, sequence: int, past: int) -> int | None:
    """Index of the first profile that covers this shape, None when none does."""
    return next((i for i, p in enumerate(profiles) if p.contains(batch, sequence, past)), None)


def engine_profiles(engine: trt.ICudaEngine) -> list[ShapeProfile]:
    """The optimization profiles an engine was built with, read back from the engine."""
    profiles = []
    for i in range(engine.num_optimization_profiles):
        ids = engine.get_tensor_profile_shape("input_ids", i)  # [min, opt, max] of [B, S]
        past = engine.get_tensor_profile_shape("past_key_values.0.key", i)  # of [B, KVH, P, Dh]
        profiles.append(ShapeProfile((ids[0][0], ids[1][0], ids[2][0]), (ids[0][1], ids[1][1], ids[2][1]),
                                     (past[0][2], past[1][2], past[2][2])))
    return profiles


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (-1 where a dimension is dynamic)."""
    return tuple(dims[i] for i in range(len(dims)))


def input_shape(name: str, dims: tuple[int, ...], batch: int, sequence: int, past: int) -> tuple[int, ...]:
    """The shape of decoder input `name` (static dims `dims`, -1 where dynamic) at one (batch, sequence, past)."""
    if name in ("input_ids", "position_ids"):
        return batch, sequence
    if name == "attention_mask":
        return batch, past + sequence
    if name.startswith("past_key_values."):
        return batch, dims[1], past, dims[3]  # [B, KVH, P, Dh]
    raise EngineBuildError(f"input {name!r} is not in the decoder contract ({DECODER_INPUTS})")
