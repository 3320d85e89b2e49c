"""The compiled runtime: what a strong PyTorch user deploys instead of TensorRT.

The shared decoder with fused projections and a static KV cache; per-layer functions under
torch.compile (inductor); on CUDA the whole decode step is one CUDA graph per shape. Precisions:
fp32 / fp16 / bf16 weights as loaded; fp8 e4m3 weights with per-channel scales (activations stay bf16 in a
Triton weight-only GEMV up to 64 rows, are rounded to fp8 per row for torch._scaled_mm beyond); int4 weights
with group scales, round-to-nearest or AWQ-scaled (bench_kernels.quantization), dequantized in registers by
Triton kernels (bf16 activations) or, where that measures faster for a prefill, into bf16 for cuBLAS.

With tensor_parallel > 1 the sweep's process only coordinates: the model is split over that many
ranks (one process per GPU, or per part of the CPU), started and stopped by the runtime itself
(tensor_parallel.py); sharding.py says how the weights and the KV cache split.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator

from bench_kernels.architecture import DECODER_MODEL_TYPES
from bench_kernels.runtimes.base import OPTIONS_CONFIG, BuildInfo, Runtime, distribution_version, options_dataclass

if TYPE_CHECKING:
    import torch

    from bench_kernels.measure import Measurement, StepTimer
    from bench_kernels.models import LoadedModel
    from bench_kernels.runtimes.compiled.sharding import Shard

log = logging.getLogger(__name__)

Degree = Literal[1, 2, 4, 8]
# How each quantized precision stores its projection weights (static_decoder.WEIGHT_FORMATS); others: as loaded.
WEIGHT_FORMAT_OF = {"fp8": "fp8", "int4": "int4", "int4-awq": "int4"}
PACKED_AS = {"fp8": "fp8 e4m3, per-channel scales", "int4": "int4, round-to-nearest, bf16 scales per group of 128",
             "int4-awq": "int4, AWQ-scaled, bf16 scales per group of 128"}


@options_dataclass(config=OPTIONS_CONFIG)
class CompiledOptions:
    """Compiled runtime settings (sweep spec: runtime_options: {compiled: {...}})."""

    # GPUs one deployment is split over (tensor parallelism); a list measures each degree as its own rows.
    tensor_parallel: Degree | Annotated[list[Degree], Field(min_length=1)] = 1
    compile: bool = True  # false: the same decoder run eagerly (no torch.compile), e.g. to debug
    worker_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 3600.0  # most one step of the ranks may take

    @field_validator("tensor_parallel")
    @classmethod
    def _unique_degrees(cls, value: Any) -> Any:
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"degrees must be unique, got {value}")
        return value


class CompiledRuntime(Runtime):
    """Static-cache decoder under torch.compile, decode steps replayed from CUDA graphs."""

    name = "compiled"
    model_types = DECODER_MODEL_TYPES  # the shared decoder's families
    description = ("the shared decoder with a static KV cache under torch.compile, CUDA graphs and Triton kernels; "
                   "tensor parallel over several GPUs")
    needs_build = True
    options_class = CompiledOptions
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16", "fp8", "int4", "int4-awq")
    dynamic_shapes = ("any batch and length; a new shape allocates its static cache and captures a graph "
                      "(under a second), compiled code is reused")
    splits_prefill_over_gpus = True  # tensor parallelism: every rank computes its share of each projection

    def __init__(self, loaded: LoadedModel, precision: str, device: torch.device, options: Any = None, *,
                 shard: Shard | None = None):
        super().__init__(loaded, precision, device, options)
        self.shard = shard  # this process's part of a tensor-parallel deployment (set in its rank processes)
        self.static = None
        self.group = None  # the ranks, when this process coordinates a tensor-parallel deployment
        self.rank_facts: list[dict[str, Any]] = []
        self.group_failure: str | None = None

    @property
    def coordinates_ranks(self) -> bool:
        return self.options.tensor_parallel > 1 and self.shard is None

    @classmethod
    def version(cls, device: torch.device) -> str:
        return ", ".join(v for v in (distribution_version("torch"), distribution_version("triton")) if v)

    @classmethod
    def prefill_compute_precision(cls, device: torch.device, precision: str) -> str:
        """fp8 prefills compute in fp8 on a GPU (rows rounded to e4m3, torch._scaled_mm beyond GEMV_MAX_ROWS rows),
        int4 ones in bf16; the CPU dequantizes quantized weights to fp32."""
        if precision in WEIGHT_FORMAT_OF and device.type == "cpu":
            return "fp32"
        if precision == "fp8":
            return "fp8"
        return super().prefill_compute_precision(device, precision)

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        from bench_kernels.runtimes.compiled.linear_ops import fp8_unavailable_reason, triton_unavailable_reason

        if precision == "fp8":
            return fp8_unavailable_reason(device)
        if device.type == "cuda":
            return triton_unavailable_reason()  # torch.compile's GPU backend generates Triton kernels
        return None

    @classmethod
    def shard_options(cls, options: CompiledOptions) -> list[CompiledOptions]:
        degrees = options.tensor_parallel if isinstance(options.tensor_parallel, list) else [options.tensor_parallel]
        return [dataclasses.replace(options, tensor_parallel=degree) for degree in degrees]

    @classmethod
    def gpu_count(cls, options: CompiledOptions, device: torch.device) -> int:
        return options.tensor_parallel

    @classmethod
    def options_unavailable_reason(cls, options: CompiledOptions, device: torch.device, config: Any) -> str | None:
        import torch

        from bench_kernels.decoder import DecoderArgs
        from bench_kernels.runtimes.compiled.sharding import check_split

        degree = options.tensor_parallel
        if device.type == "cuda" and degree > torch.cuda.device_count():
            return f"tensor_parallel {degree} needs {degree} GPUs; torch sees {torch.cuda.device_count()}"
        try:
            args = DecoderArgs.from_hf_config(config)
        except ValueError:
            return None  # a family the decoder does not support: preparing says so, in an error row
        try:
            check_split(args.num_heads, args.num_kv_heads, degree)
        except ValueError as err:
            return str(err)
        return None

    @classmethod
    def load_weights(cls, model: str, precision: str, device: torch.device, seed: int, options: Any) -> LoadedModel:
        """Random weights are drawn layer by layer as they are packed (a model whose bf16 weights exceed the
        device can still pack to fp8 on it); with tensor_parallel > 1 this process holds no weights at all."""
        from bench_kernels.models import ModelError, load_model

        if precision == "int4-awq":
            if options.tensor_parallel > 1:
                raise ModelError("int4-awq runs on one device here: AWQ's scale search needs the whole model in one "
                                 "process; use int4 with tensor_parallel, or tensor_parallel 1")
            # AWQ runs the whole model on calibration text first, so no layer can be packed before the others.
            return load_model(model, precision, device, seed, placement="device")
        if options.tensor_parallel > 1:
            return load_model(model, precision, device, seed, placement="none")
        return load_model(model, precision, device, seed,
                          placement="streamed" if model.startswith("preset:") else "device")

    # ---- this process's part of the model ------------------------------------------------------------------
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
        """Allocate this shape's cache, compile for it and (on CUDA) capture its graphs."""
        self.static.state_for(batch_size, input_len, output_len)

    def release_state(self) -> None:
        self.static.release_state()

    def backends(self) -> list[str]:
        """The GEMV backend measured fastest per weight shape of this precision, e.g. '8192x8192@1:triton'."""
        from bench_kernels.runtimes.compiled.linear_ops import INT4, chosen_backends

        stored = self.static.layers[0].qkv[0].dtype
        per_byte = 2 if stored == INT4 else 1  # int4 packs two input channels per stored byte
        return sorted({f"{n}x{k * per_byte}@{m}:{b}" for (_, dtype, n, k, m), b in chosen_backends().items()
                       if dtype == stored})

    # ---- the runtime interface -------------------------------------------------------------------------------
    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        """Compile for every sweep shape: the decode step (warmed, then captured) and the prefill."""
        import torch
        from torch._dynamo.utils import counters

        if self.coordinates_ranks:
            return self._prepare_ranks(batch_sizes, input_lens, output_len)
        graphs_before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        self.pack()
        pack_s = time.perf_counter() - start
        not_warmed = []
        for batch_size in batch_sizes:
            for input_len in input_lens:
                try:
                    self.warm(batch_size, input_len, output_len)
                except torch.OutOfMemoryError:  # that shape's rows will say so; the others still run
                    self.static.release_state()
                    not_warmed.append(f"batch {batch_size} input {input_len}")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        build_s = time.perf_counter() - start
        self.static.release_state()
        notes = self._build_notes(len(batch_sizes) * len(input_lens), pack_s, not_warmed, self.backends())
        # No new graph compiled: this process had compiled the same code for these dtypes already.
        cache_hit = counters["stats"]["unique_graphs"] == graphs_before
        return BuildInfo(build_s=build_s, artifact_mb=0.0, cache_hit=cache_hit, notes=notes)

    def _build_notes(self, shapes: int, pack_s: float, not_warmed: list[str], backends: list[str]) -> str:
        import torch

        what = ("eager (compile: false)" if not self.options.compile
                else f"torch.compile {torch.__version__} of 4 functions")
        notes = (f"{what}, {shapes} shapes warmed{' and captured as CUDA graphs' if self.device.type == 'cuda' else ''}; "
                 f"weights packed ({PACKED_AS.get(self.precision, self.precision)}) "
                 f"in {pack_s:.1f} s")
        if not_warmed:
            notes += f"; out of memory while warming {', '.join(not_warmed)}"
        if backends:
            notes += f"; GEMV backend per weight [N x K] @ rows, by measurement: {' '.join(backends)}"
        return notes

    def weight_bytes(self) -> int:
        if self.coordinates_ranks:
            return max(facts["weight_bytes"] for facts in self.rank_facts)
        return self.static.weight_bytes()

    def kv_element_size(self) -> int:
        return self.static.kv_element_size()

    def kv_bytes_per_token(self) -> int:
        if self.coordinates_ranks:
            return max(facts["kv_bytes_per_token"] for facts in self.rank_facts)
        return self.static.kv_bytes_per_token()

    def link_bytes_per_decode_step(self, batch_size: int) -> int:
        if self.coordinates_ranks:
            return batch_size * max(facts["link_bytes_per_token"] for facts in self.rank_facts)
        return 0

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        ids = input_ids.to(self.device)
        self.static.state_for(ids.shape[0], ids.shape[1], output_len)  # outside the timed region
        timer.start()
        return self.static.generate(ids, output_len, on_token=timer.token).cpu()

    def measure(self, input_ids: torch.Tensor, output_len: int, warmup: int, repeats: int) -> Measurement:
        if not self.coordinates_ranks:
            return super().measure(input_ids, output_len, warmup, repeats)
        # Every rank runs the same generations; rank 0's timer is the deployment's, memory is each rank's own.
        per_rank = self._call_ranks("measure", input_ids, output_len, warmup, repeats)
        measured = per_rank[0]
        measured.peak_mem_gb = sum(m.peak_mem_gb for m in per_rank)
        measured.peak_mem_gb_per_gpu = max(m.peak_mem_gb_per_gpu for m in per_rank)
        return measured

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.coordinates_ranks:
            return self._call_ranks("first_step_logits", input_ids)[0]
        return self.static.prefill_logits(input_ids.to(self.device)).cpu()

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.coordinates_ranks:
            return self._call_ranks("sequence_logits", input_ids)[0]
        return self.static.sequence_logits(input_ids.to(self.device)).cpu()

    def close(self) -> None:
        if self.group is not None:
            self.group.stop()
            self.group = None
        if self.static is not None:
            self.static.release_state()
            self.static = None

    # ---- coordinating the ranks --------------------------------------------------------------------------
    def _start_ranks(self) -> None:
        import torch

        from bench_kernels.runtimes.compiled.tensor_parallel import RankRequest, TensorParallelGroup

        degree = self.options.tensor_parallel
        request = RankRequest(self.loaded.source, self.loaded.seed, self.precision, self.device.type, self.options,
                              cpu_threads=max(1, torch.get_num_threads() // degree))
        self.group = TensorParallelGroup(request, degree, self.options.worker_timeout_s)
        self.rank_facts = self.group.start()
        self.link_gbps = self.rank_facts[0]["link_gbps"]

    def _call_ranks(self, method: str, *args: Any) -> list[Any]:
        """Every rank's answer. After an out-of-memory failure (one shape too large) the ranks are started again
        for the next call; after any other failure every later call repeats it."""
        from bench_kernels.runtimes.compiled.tensor_parallel import RankFailure

        if self.group_failure:
            raise RankFailure(f"the tensor-parallel ranks stopped earlier: {self.group_failure}")
        try:
            if not self.group.running:
                self._start_ranks()
            return self.group.call(method, *args)
        except RankFailure as err:
            if not err.out_of_memory:
                self.group_failure = str(err)
            raise

    def _prepare_ranks(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        """Start the ranks (each packs its part), then warm every shape on all of them."""
        from bench_kernels.decoder import DecoderArgs
        from bench_kernels.runtimes.compiled.sharding import split_description
        from bench_kernels.runtimes.compiled.tensor_parallel import RankFailure

        start = time.perf_counter()
        self._start_ranks()
        pack_s = max(facts["pack_s"] for facts in self.rank_facts)
        not_warmed = []
        for batch_size in batch_sizes:
            for input_len in input_lens:
                try:
                    self._call_ranks("warm", batch_size, input_len, output_len)
                except RankFailure as err:
                    if not err.out_of_memory:
                        raise
                    not_warmed.append(f"batch {batch_size} input {input_len}")
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
                 + self._build_notes(len(batch_sizes) * len(input_lens), pack_s, not_warmed, backends))
        # Fresh rank processes compile everything again (inductor's on-disk cache may still shorten it).
        return BuildInfo(build_s=build_s, artifact_mb=0.0, cache_hit=False, notes=notes)
