"""How the compiled decoder splits over a tensor-parallel group, and the two collectives it needs.

Megatron-style: q/k/v and gate/up are column-parallel (each rank computes its own heads and its part of
the MLP's intermediate features), o and down are row-parallel (each rank multiplies its part of the input
features, then one all-reduce sums the parts), the LM head is vocabulary-parallel (each rank computes its
rows of the vocabulary, then one all-gather joins them). The KV cache is split with the KV heads.

Heads split by KV-head groups: a rank takes a run of KV heads together with the query heads that read
them. Parts split as torch.tensor_split does, so they may be uneven (SmolLM2's 3 KV heads over 2 ranks:
2 + 1), which costs balance, not correctness; a rank without a KV head is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    """This process's place in a tensor-parallel group: its rank, the group size, and the group's name
    (what the functional collectives take, so torch.compile traces them)."""

    rank: int
    world: int
    group_name: str

    def span(self, total: int) -> tuple[int, int]:
        """(start, length) of this rank's part of `total` items, split as torch.tensor_split does."""
        base, extra = divmod(total, self.world)
        return self.rank * base + min(self.rank, extra), base + (1 if self.rank < extra else 0)

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """(first, count) of this rank's KV heads."""
        return self.span(num_kv_heads)

    def query_heads(self, num_heads: int, num_kv_heads: int) -> tuple[int, int]:
        """(first, count) of the query heads that read this rank's KV heads."""
        group = num_heads // num_kv_heads
        first, count = self.kv_heads(num_kv_heads)
        return first * group, count * group

    def padded_vocab(self, vocab_size: int) -> int:
        """Rows of the LM head per rank: the vocabulary padded up to a multiple of the group size."""
        return -(-vocab_size // self.world)


def check_split(num_heads: int, num_kv_heads: int, degree: int) -> None:
    """Raise when `degree` ranks cannot each hold at least one KV head."""
    if degree > num_kv_heads:
        raise ValueError(f"tensor_parallel {degree} needs at least one KV head per rank; this model has "
                         f"{num_kv_heads} KV heads ({num_heads} query heads), so at most {num_kv_heads} ranks")


def split_description(num_heads: int, num_kv_heads: int, intermediate_size: int, degree: int) -> str:
    """How the heads and the MLP split, for the rows' notes, e.g. 'query heads 6+3, KV heads 2+1 (uneven)'."""
    shards = [Shard(rank, degree, "") for rank in range(degree)]
    query = "+".join(str(s.query_heads(num_heads, num_kv_heads)[1]) for s in shards)
    kv = "+".join(str(s.kv_heads(num_kv_heads)[1]) for s in shards)
    mlp = "+".join(str(s.span(intermediate_size)[1]) for s in shards)
    uneven = num_kv_heads % degree or intermediate_size % degree
    return f"query heads {query}, KV heads {kv}, MLP features {mlp}{' (uneven)' if uneven else ''}"


def all_reduce_sum(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """Sum of x over the group (a functional collective: traceable by torch.compile, capturable on CUDA)."""
    reduced = torch.ops._c10d_functional.all_reduce(x, "sum", group_name)
    return torch.ops._c10d_functional.wait_tensor(reduced)


def all_gather_columns(x: torch.Tensor, world: int, group_name: str) -> torch.Tensor:
    """x: [B, N] on each rank -> [B, world * N], rank r's columns at r * N."""
    B, N = x.shape
    gathered = torch.ops._c10d_functional.all_gather_into_tensor(x.contiguous(), world, group_name)
    gathered = torch.ops._c10d_functional.wait_tensor(gathered)  # [world * B, N]
    return gathered.view(world, B, N).transpose(0, 1).reshape(B, world * N)
