"""The compiled runtime split over tensor-parallel ranks: the sweep's process only coordinates.

It holds no weights: it starts the ranks (tensor_parallel.py, one process per GPU or per part of the CPU, each a
SingleProcessRuntime with its Shard), sends each of them the same call, and answers with rank 0's result (its timer
sees every token only once all ranks have contributed to it) and each rank's own share of memory and bytes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench_kernels.precisions import PRECISIONS
from bench_kernels.roofline import embedding_row_bytes
from bench_kernels.runtimes.base import BuildInfo
from bench_kernels.runtimes.compiled.common import CompiledBase
from bench_kernels.runtimes.compiled.tensor_parallel import RankFailure, RankRequest, TensorParallelGroup

if TYPE_CHECKING:
    import torch

    from bench_kernels.timing import Measurement, StepTimer
    from bench_kernels.models import LoadedModel


class TensorParallelCoordinator(CompiledBase):
    """Starts, calls and stops the ranks of one tensor-parallel deployment (options.tensor_parallel > 1)."""

    def __init__(self, loaded: LoadedModel, precision: str, device: torch.device, options: Any = None):
        super().__init__(loaded, precision, device, options)
        self.group: TensorParallelGroup | None = None
        self.rank_facts: list[dict[str, Any]] = []  # what each rank measured and packed when it started
        self.group_failure: str | None = None

    def _start_ranks(self) -> None:
        import torch

        degree = self.options.tensor_parallel
        request = RankRequest(self.loaded.source, self.loaded.seed, self.precision, self.device.type, self.options,
                              cpu_threads=max(1, torch.get_num_threads() // degree))
        self.group = TensorParallelGroup(request, degree, self.options.worker_timeout_s)
        self.rank_facts = self.group.start()
        self.link_gbps = self.rank_facts[0]["link_gbps"]

    def _call_ranks(self, method: str, *args: Any) -> list[Any]:
        """Every rank's answer. After an out-of-memory failure (one shape too large) the ranks are started again
        for the next call; after any other failure every later call repeats it."""
        if self.group_failure:
            raise RankFailure(f"the tensor-parallel ranks stopped earlier: {self.group_failure}")
        try:
            if self.group is None or not self.group.running:
                self._start_ranks()
            return self.group.call(method, *args)
        except RankFailure as err:
            if not err.out_of_memory:
                self.group_failure = str(err)
            raise

    def warm(self, batch_size: int, input_len: int, output_len: int) -> None:
        self._call_ranks("warm", batch_size, input_len, output_len)

    def out_of_memory(self, err: Exception) -> bool:
        return isinstance(err, RankFailure) and err.out_of_memory

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        """Start the ranks (each packs its part), then warm every shape on all of them."""
        from bench_kernels.decoder import DecoderArgs
        from bench_kernels.runtimes.compiled.sharding import split_description

        start = time.perf_counter()
        self._start_ranks()
        pack_s = max(facts["pack_s"] for facts in self.rank_facts)
        not_warmed = self.warm_every_shape(batch_sizes, input_lens, output_len)
        backends = self._call_ranks("backends")[0]
        self._call_ranks("release_state")
        build_s = time.perf_counter() - start
        args = DecoderArgs.from_hf_config(self.loaded.config)
        degree = self.options.tensor_parallel
        split = split_description(args.num_heads, args.num_kv_heads, args.intermediate_size, degree)
        facts = self.rank_facts[0]
        calls, each_us = facts["step_all_reduces"], facts["all_reduce_us"]
        notes = (f"tensor parallel {degree} over {facts['backend']} ({split}), all-reduce bus bandwidth "
                 f"{self.link_gbps:.1f} GB/s; a batch-1 decode step's {calls} all-reduces take {each_us:.1f} us "
                 f"each, {calls * each_us / 1e3:.2f} ms per step; "
                 + self.build_notes(len(batch_sizes) * len(input_lens), pack_s, not_warmed, backends))
        # Fresh rank processes compile everything again (inductor's on-disk cache may still shorten it).
        return BuildInfo(build_s=build_s, artifact_mb=0.0, cache_hit=False, notes=notes)

    def weight_bytes(self) -> int:
        return max(facts["weight_bytes"] for facts in self.rank_facts)

    def embedding_row_bytes(self) -> int:
        """Every rank keeps the whole embedding, in the dtype the weights load in."""
        return embedding_row_bytes(self.loaded.config, PRECISIONS[self.precision].unquantized_bytes)

    def kv_bytes_per_token(self) -> int:
        return max(facts["kv_bytes_per_token"] for facts in self.rank_facts)

    def link_bytes_per_decode_step(self, batch_size: int) -> int:
        return batch_size * max(facts["link_bytes_per_token"] for facts in self.rank_facts)

    def measure(self, input_ids: torch.Tensor, output_len: int, warmup: int, repeats: int) -> Measurement:
        """Every rank runs the same generations; rank 0's timer is the deployment's, memory is each rank's own."""
        per_rank = self._call_ranks("measure", input_ids, output_len, warmup, repeats)
        measured = per_rank[0]
        measured.peak_mem_gb = sum(m.peak_mem_gb for m in per_rank)
        measured.peak_mem_gb_per_gpu = max(m.peak_mem_gb_per_gpu for m in per_rank)
        return measured

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        """Not in this process: the ranks generate, and time their tokens themselves (measure)."""
        raise NotImplementedError("a tensor-parallel deployment generates on its ranks, each timing its own tokens "
                                  "(measure); this process's timer would see none of them")

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._call_ranks("first_step_logits", input_ids)[0]

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._call_ranks("sequence_logits", input_ids)[0]

    def close(self) -> None:
        if self.group is not None:
            self.group.stop()
            self.group = None
