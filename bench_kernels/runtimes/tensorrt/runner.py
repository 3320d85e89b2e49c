"""Greedy generation with a decoder engine: execution contexts per optimization profile, each call's shapes and
addresses, TensorRT-RTX's runtime cache; and whether engines can run on this machine at all."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from bench_kernels.paths import atomic_write
from bench_kernels.runtimes.tensorrt.buffers import DecodeBuffers, DecoderLayout, decode_steps, greedy_loop, on_stream
from bench_kernels.runtimes.tensorrt.deserialize import deserialize_engine
from bench_kernels.runtimes.tensorrt.library import (RTX_COMPUTE_CAPABILITIES, TensorRTRuntimeError,
                                                     errors_of_next_call, import_tensorrt, rtx_can_run_here)
from bench_kernels.runtimes.tensorrt.profiles import (ShapeOutsideProfiles, dims_tuple, engine_profiles, input_shape,
                                                      profile_for)

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from bench_kernels.runtimes.tensorrt.library import trt

log = logging.getLogger(__name__)


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
             trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32}
    if dtype not in table:
        raise TensorRTRuntimeError(f"engine I/O dtype {dtype} is not supported here")
    return table[dtype]


# TensorRT-RTX's dynamic_shapes_kernel_specialization_strategy, by its member names in lower case.
KERNEL_SPECIALIZATIONS = ("lazy", "eager", "none")


class TrtDecoderRunner:
    """Greedy generation with a decoder engine on a stream of its own; the KV cache stays on the GPU.

    One execution context per optimization profile, each set to its profile once: switching a context's
    profile makes TensorRT update layer resources on the next enqueue, which would land inside the
    prefill or the first decode step of every generation. The contexts run one after the other on the
    runner's stream, so they share one block of device memory (USER_MANAGED) sized for the larger profile.
    """

    def __init__(self, engine_path: str | Path, *, cuda_graphs: bool = False, kernel_specialization: str = "eager"):
        """kernel_specialization: TensorRT-RTX's strategy (KERNEL_SPECIALIZATIONS); tensorrt has no such choice."""
        if kernel_specialization not in KERNEL_SPECIALIZATIONS:
            raise ValueError(f"kernel_specialization must be one of {KERNEL_SPECIALIZATIONS}, "
                             f"got {kernel_specialization!r}")
        self.found = import_tensorrt()
        self.engine_path = Path(engine_path)
        self.runtime, self.engine = deserialize_engine(self.engine_path)
        self.profiles = engine_profiles(self.engine)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_dims = {n: dims_tuple(self.engine.get_tensor_shape(n)) for n in self.inputs}  # -1 where dynamic
        past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        kv_dims = self.engine.get_tensor_shape(past_names[0])  # [-1, KVH, -1, Dh]
        self.layout = DecoderLayout(
            past_names, [n.replace("past_key_values.", "present.") for n in past_names], kv_dims[1], kv_dims[3],
            _torch_dtype(self.engine.get_tensor_dtype(past_names[0])), self.engine.get_tensor_shape("logits")[2],
            _torch_dtype(self.engine.get_tensor_dtype("logits")))
        if _torch_dtype(self.engine.get_tensor_dtype("input_ids")) != torch.int64:
            raise TensorRTRuntimeError(f"{engine_path}: input_ids must be int64 per the decoder contract")
        self.runtime_cache_path = self.engine_path.with_name(self.engine_path.name + ".rtx-runtime-cache")
        self._runtime_cache: Any = None
        self.kernel_specialization = kernel_specialization
        # Not the legacy default stream (handle 0): TensorRT synchronizes the device around enqueues there,
        # and TensorRT-RTX's CUDA graphs cannot be captured from it.
        self.stream = torch.cuda.Stream()
        self.first_logits = torch.empty(0)  # the last prefill's next-token logits, [B, V]
        self._suppressed: dict[tuple[int, ...], torch.Tensor] = {}  # suppressed ids -> their device index
        self._checked_shapes: set[tuple[int, int, int]] = set()  # (batch, sequence, past) with verified outputs
        self.contexts = self._create_contexts(cuda_graphs)
        memory_bytes = max(self.engine.get_device_memory_size_for_profile_v2(i) for i in range(len(self.contexts)))
        self.context_memory = torch.empty(memory_bytes, dtype=torch.uint8, device=self.stream.device)
        for index, context in enumerate(self.contexts):
            context.set_device_memory(self.context_memory.data_ptr(), memory_bytes)
            if not context.set_optimization_profile_async(index, self.stream.cuda_stream):
                raise TensorRTRuntimeError(f"set_optimization_profile_async({index}) was refused")
        self.stream.synchronize()

    def _create_contexts(self, cuda_graphs: bool) -> list[trt.IExecutionContext]:
        """One execution context per optimization profile, without device memory of their own."""
        captured = errors_of_next_call()
        create: Callable[[], trt.IExecutionContext | None]
        if self.found.flavor == "tensorrt":
            if cuda_graphs:
                raise ValueError("cuda_graphs is TensorRT-RTX's built-in capture; tensorrt has no such runtime option")
            strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            create = functools.partial(self.engine.create_execution_context, strategy)
        else:
            rtx: Any = self.found.module  # TensorRT-RTX-only members, not in tensorrt-stubs
            config: Any = self.engine.create_runtime_config()
            config.set_execution_context_allocation_strategy(rtx.ExecutionContextAllocationStrategy.USER_MANAGED)
            # explicit: the default (lazy) runs fallback kernels while each new shape compiles in the background,
            # so the same step measures differently from one run to the next
            config.dynamic_shapes_kernel_specialization_strategy = getattr(
                rtx.DynamicShapesKernelSpecializationStrategy, self.kernel_specialization.upper())
            self._runtime_cache = config.create_runtime_cache()  # JIT-compiled kernels, kept across processes
            if self.runtime_cache_path.is_file() and not self._runtime_cache.deserialize(
                    self.runtime_cache_path.read_bytes()):
                log.warning("runtime cache %s is from another GPU, driver or version: starting empty",
                            self.runtime_cache_path)
            config.set_runtime_cache(self._runtime_cache)
            if cuda_graphs:
                config.cuda_graph_strategy = rtx.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            create = functools.partial(self.engine.create_execution_context, config)
        contexts = []
        for index in range(self.engine.num_optimization_profiles):
            context = create()
            if context is None:
                raise TensorRTRuntimeError(captured.describe(
                    f"could not create the execution context for profile {index} of {self.engine_path}"))
            contexts.append(context)
        return contexts

    def _profile_index(self, batch: int, sequence: int, past: int) -> int:
        index = profile_for(self.profiles, batch, sequence, past)
        if index is None:
            raise ShapeOutsideProfiles(batch, sequence, past, self.profiles)
        return index

    def _check_output_shapes(self, context: trt.IExecutionContext, buffers: DecodeBuffers, batch: int,
                             sequence: int, past: int) -> None:
        """Compare the output shapes TensorRT infers for this call with what the buffers hold (once per shape)."""
        if (batch, sequence, past) in self._checked_shapes:
            return
        expected = buffers.output_shapes(sequence, past)
        inferred = {name: dims_tuple(context.get_tensor_shape(name)) for name in expected}
        wrong = [f"{name} {inferred[name]} (buffer for {shape})" for name, shape in expected.items()
                 if inferred[name] != shape]
        if wrong:
            raise TensorRTRuntimeError(f"{self.engine_path} at batch {batch}, sequence {sequence}, past {past} "
                                       f"outputs shapes its buffers do not hold: " + ", ".join(wrong))
        self._checked_shapes.add((batch, sequence, past))

    def _run(self, context: trt.IExecutionContext, buffers: DecodeBuffers, sequence: int, past: int,
             addresses: dict[str, int]) -> None:
        """Set shapes and addresses for one engine call and enqueue it on the runner's stream."""
        batch = buffers.batch
        for name in self.inputs:
            shape = input_shape(name, self.input_dims[name], batch, sequence, past)
            if not context.set_input_shape(name, shape):
                raise TensorRTRuntimeError(f"set_input_shape({name}, {shape}) was refused")
        self._check_output_shapes(context, buffers, batch, sequence, past)
        for name, address in addresses.items():
            if not context.set_tensor_address(name, address):
                raise TensorRTRuntimeError(f"set_tensor_address({name}) was refused")
        captured = errors_of_next_call()
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise TensorRTRuntimeError(captured.describe(f"execute_async_v3 failed at batch {batch}, sequence "
                                                         f"{sequence}, past {past}"))

    def _suppressed_index(self, token_ids: Sequence[int], device: torch.device) -> torch.Tensor:
        """The device index of token_ids, copied to the GPU once per set of ids (the copy blocks the host)."""
        key = tuple(token_ids)
        if key not in self._suppressed:
            self._suppressed[key] = torch.tensor(key, dtype=torch.int64, device=device)
        return self._suppressed[key]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[], None],
                 suppress_token_ids: Sequence[int] = (), on_start: Callable[[], None] = lambda: None) -> torch.Tensor:
        """Greedy-decode max_new_tokens for input_ids [B, S] int64 on CUDA, never emitting suppress_token_ids;
        returns [B, max_new_tokens] on CUDA. The prefill's last logits stay in self.first_logits [B, V].

        Runs on self.stream, after the caller's queued work. on_start and on_token are called with that stream
        current (a timer's CUDA events then time the generation itself), on_start before the prompt goes in.
        """
        if input_ids.dim() != 2 or input_ids.dtype != torch.int64 or input_ids.device != self.stream.device:
            raise ValueError(f"input_ids must be a [B, S] int64 tensor on {self.stream.device}, got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)} on {input_ids.device}")
        batch, seq = input_ids.shape
        steps = decode_steps(seq, max_new_tokens)
        contexts = [self.contexts[self._profile_index(batch, s, p)] for s, p in steps]  # fail before any GPU work
        suppressed = self._suppressed_index(suppress_token_ids, input_ids.device)
        caller = torch.cuda.current_stream(input_ids.device)
        with on_stream(self.stream):
            on_start()
            buffers = DecodeBuffers(self.layout, input_ids, max_new_tokens, suppressed)

            def enqueue(step: int, addresses: dict[str, int]) -> None:
                sequence, past = steps[step]
                self._run(contexts[step], buffers, sequence, past, addresses)

            greedy_loop(buffers, steps, enqueue, on_token)
            tokens = buffers.tokens.t().contiguous()  # [B, max_new_tokens]
        self.first_logits = buffers.first_logits
        for made_here in (tokens, self.first_logits):
            made_here.record_stream(caller)  # the caller reads them: their memory is not reused before it has
        return tokens

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] for the token after the prompt (the quality check against the reference)."""
        self.generate(input_ids, 1, lambda: None)
        return self.first_logits

    def close(self) -> None:
        """Save the TensorRT-RTX runtime cache and release the contexts, their memory and the engine."""
        if self._runtime_cache is not None:
            atomic_write(self.runtime_cache_path, memoryview(self._runtime_cache.serialize()))
            self._runtime_cache = None
        self.stream.synchronize()  # the contexts' memory may still be in use by queued work
        del self.contexts, self.context_memory, self.engine, self.runtime


def runtime_unavailable_reason(flavor: str, version: str, engine_path: str | Path | None = None) -> str | None:
    """None when engines of this flavor can run here, else why not; with engine_path, also tries to load it."""
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible (torch.cuda.is_available() is False); {flavor} {version} engines run only on a GPU"
    if flavor == "tensorrt_rtx" and not rtx_can_run_here():
        capability = "{}.{}".format(*torch.cuda.get_device_capability())
        return (f"TensorRT-RTX {version} cannot run engines on {torch.cuda.get_device_name()}, which has compute "
                f"capability {capability}; supported compute capabilities: {RTX_COMPUTE_CAPABILITIES}")
    if engine_path is not None:
        try:
            TrtDecoderRunner(engine_path).close()
        except TensorRTRuntimeError as err:
            return str(err)
    return None
