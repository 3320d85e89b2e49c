"""The compiled runtime in one process: the whole model on one device, or one rank's part of a tensor-parallel
deployment (tensor_parallel.py starts a process per rank, each running this with its Shard)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench_kernels.runtimes.base import BuildInfo
from bench_kernels.runtimes.compiled.common import WEIGHT_FORMAT_OF, CompiledBase

if TYPE_CHECKING:
    import torch

    from bench_kernels.timing import StepTimer
    from bench_kernels.models import LoadedModel
    from bench_kernels.runtimes.compiled.sharding import Shard


class SingleProcessRuntime(CompiledBase):
    """This process packs the weights (its shard's part only, when it is a rank) and runs the static decoder."""

    def __init__(self, loaded: LoadedModel, precision: str, device: torch.device, options: Any = None, *,
                 shard: Shard | None = None):
        super().__init__(loaded, precision, device, options)
        self.shard = shard  # this process's part of a tensor-parallel deployment (set in its rank processes)
        self.static = None

    def pack(self) -> None:
        """Pack the loaded weights, this shard's part only, each layer freed once packed (no second copy)."""
        from bench_kernels.decoder import DecoderArgs
        from bench_kernels.models import eos_token_ids
        from bench_kernels.runtimes.compiled.static_decoder import StaticDecoder

        loaded, device = self.loaded, self.device
        args = DecoderArgs.from_hf_config(loaded.config)
        embed = loaded.materialize("model.embed_tokens", device).weight
        lm_head = embed if args.tie_word_embeddings else loaded.materialize("lm_head", device).weight
        self.static = StaticDecoder.from_modules(
            args, embed, lambda i: loaded.materialize(f"model.layers.{i}", device),
            loaded.materialize("model.norm", device).weight, lm_head,
            WEIGHT_FORMAT_OF.get(self.precision, "native"),
            compile_mode="default" if self.options.compile else None, suppress_token_ids=eos_token_ids(loaded),
            release=self._release_layer, shard=self.shard)
        if self.static.group and not args.tie_word_embeddings:
            loaded.hf_model.lm_head.to("meta")  # this rank keeps only its rows of the vocabulary

    def _release_layer(self, index: int) -> None:
        """Free layer `index` once packed, and hand its memory back: a streamed model that nearly fills the card
        (70B fp8 on 80 GB) otherwise ends up with GBs cached in blocks too small for the next layer."""
        import torch

        self.loaded.hf_model.model.layers[index].to("meta")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm(self, batch_size: int, input_len: int, output_len: int) -> None:
        """Allocate this shape's cache, compile for it and (on CUDA) capture its graphs; a shape that does not fit
        leaves no cache behind."""
        import torch

        try:
            self.static.state_for(batch_size, input_len, output_len)
        except torch.OutOfMemoryError:
            self.static.release_state()
            raise

    def out_of_memory(self, err: Exception) -> bool:
        import torch

        return isinstance(err, torch.OutOfMemoryError)

    def release_state(self) -> None:
        self.static.release_state()

    def backends(self) -> list[str]:
        """The GEMV backend measured fastest per weight shape of this precision, e.g. '8192x8192@1:triton', or
        '6144x4096@1+add-rmsnorm:triton' where the kernel takes the work before the product (a Prologue)."""
        from bench_kernels.runtimes.compiled.linear_ops import INT4, PROLOGUE_NAMES, chosen_backends

        stored = self.static.layers[0].qkv[0].dtype
        per_element = 8 if stored == INT4 else 1  # int4 packs eight input channels per stored int32 word
        return sorted({f"{n}x{k * per_element}@{m}{'+' + PROLOGUE_NAMES[kind] if kind else ''}:{b}"
                       for (_, dtype, n, k, m, kind), b in chosen_backends().items() if dtype == stored})

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        """Compile for every sweep shape: the decode step (warmed, then captured) and the prefill."""
        import torch
        from torch._dynamo.utils import counters

        graphs_before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        self.pack()
        pack_s = time.perf_counter() - start
        not_warmed = self.warm_every_shape(batch_sizes, input_lens, output_len)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        build_s = time.perf_counter() - start
        self.release_state()
        notes = self.build_notes(len(batch_sizes) * len(input_lens), pack_s, not_warmed, self.backends())
        # No new graph compiled: this process had compiled the same code for these dtypes already.
        cache_hit = counters["stats"]["unique_graphs"] == graphs_before
        return BuildInfo(build_s=build_s, artifact_mb=0.0, cache_hit=cache_hit, notes=notes)

    def weight_bytes(self) -> int:
        return self.static.weight_bytes()

    def kv_element_size(self) -> int:
        return self.static.kv_element_size()

    def kv_bytes_per_token(self) -> int:
        return self.static.kv_bytes_per_token()

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        ids = input_ids.to(self.device)
        self.static.state_for(ids.shape[0], ids.shape[1], output_len)  # outside the timed region
        timer.start()
        return self.static.generate(ids, output_len, on_token=timer.token).cpu()

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.static.prefill_logits(input_ids.to(self.device)).cpu()

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.static.sequence_logits(input_ids.to(self.device)).cpu()

    def close(self) -> None:
        if self.static is not None:
            self.static.release_state()
            self.static = None
