"""TensorRT engines for the ONNX decoder: import, shape profiles, cached strongly typed builds, greedy runner.

Works with NVIDIA TensorRT 10.x/11.x (`tensorrt`) and TensorRT for RTX (`tensorrt_rtx`), which share the
builder/runtime API used here. The code is type-checked against tensorrt-stubs (mypy-tensorrt.ini);
the few TensorRT-RTX-only members are reached through handles typed `Any`, and the tests check that
the installed tensorrt_rtx has them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import onnx
import torch

from bench_kernels.measure import PeakMemory
from bench_kernels.paths import atomic_write, remove_stale_temporaries

if TYPE_CHECKING:
    import tensorrt as trt
else:

    class _ImportedOnUse:
        """Stands for the module import_tensorrt() picks; imported on the first attribute access."""

        def __getattr__(self, name: str) -> Any:
            return getattr(import_tensorrt().module, name)

    trt = _ImportedOnUse()

log = logging.getLogger(__name__)

# What the TensorRT-RTX 1.7 runtime accepts, in its own words on an H200: "The engine cannot run on this GPU,
# which has compute capability 9.0. Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1 >12.0".
RTX_COMPUTE_CAPABILITIES = "8.0 8.6 8.9 12.0 12.1 >12.0"
DECODER_INPUTS = "input_ids, position_ids, attention_mask, past_key_values.{i}.key / .value"


class TensorRTUnavailable(ImportError):
    """Neither tensorrt nor tensorrt_rtx imports; `reason` holds both import errors."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EngineBuildError(RuntimeError):
    """The ONNX did not parse or the engine did not build; the message carries TensorRT's own errors."""


class TensorRTRuntimeError(RuntimeError):
    """An engine could not be loaded or run; the message carries TensorRT's own errors."""


@dataclass(frozen=True)
class TrtModule:
    """The imported TensorRT Python module and which flavor it is."""

    module: ModuleType
    flavor: str  # "tensorrt" | "tensorrt_rtx"
    version: str


@functools.cache
def import_tensorrt() -> TrtModule:
    """NVIDIA TensorRT if it imports, else TensorRT for RTX; TensorRTUnavailable with both errors otherwise."""
    errors = []
    for flavor in ("tensorrt", "tensorrt_rtx"):
        try:
            module = importlib.import_module(flavor)
        except Exception as err:  # noqa: BLE001 - a broken install raises OSError etc., not only ImportError
            errors.append(f"import {flavor}: {type(err).__name__}: {err}")
            continue
        if getattr(module, "__file__", None) is None:  # tensorrt-stubs alone leaves an empty namespace package
            errors.append(f"import {flavor}: only an empty namespace package (type stubs without the library?)")
            continue
        return TrtModule(module, flavor, module.__version__)
    raise TensorRTUnavailable("no TensorRT Python module imports (" + "; ".join(errors) + ")")


@functools.cache
def _trt_logger() -> tuple[trt.ILogger, list[str]]:
    """One process-wide TensorRT logger forwarding to `log`, and the list it appends error messages to."""
    errors: list[str] = []
    severity = trt.ILogger.Severity

    class Logger(trt.ILogger):
        def log(self, level: trt.ILogger.Severity, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                log.warning("TensorRT: %s", msg)
            elif level == severity.INFO:
                log.debug("TensorRT: %s", msg)

    return Logger(), errors


def _with_errors(message: str, errors: list[str]) -> str:
    return message + (": " + " | ".join(errors) if errors else " (TensorRT logged no error)")


# --- shape profiles -------------------------------------------------------------------------------


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


def _dims(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(dims[i] for i in range(len(dims)))


def _input_shape(name: str, dims: tuple[int, ...], batch: int, sequence: int, past: int) -> tuple[int, ...]:
    """The shape of decoder input `name` (static dims `dims`, -1 where dynamic) at one (batch, sequence, past)."""
    if name in ("input_ids", "position_ids"):
        return batch, sequence
    if name == "attention_mask":
        return batch, past + sequence
    if name.startswith("past_key_values."):
        return batch, dims[1], past, dims[3]  # [B, KVH, P, Dh]
    raise EngineBuildError(f"input {name!r} is not in the decoder contract ({DECODER_INPUTS})")


# --- cached builds --------------------------------------------------------------------------------


@dataclass
class EngineBuild:
    """A serialized engine on disk and what getting it cost (this call: a build, or a verified cache hit)."""

    path: Path
    build_s: float
    parse_s: float
    engine_mb: float
    cache_hit: bool
    peak_build_rss_gb: float
    flavor: str
    version: str
    target: str  # "<GPU name> (compute capability X.Y)" or "portable"


def rtx_runs_on(capability: tuple[int, int]) -> bool:
    """Whether TensorRT-RTX's runtime accepts a GPU of this compute capability (see RTX_COMPUTE_CAPABILITIES)."""
    return capability in ((8, 0), (8, 6), (8, 9)) or capability >= (12, 0)


def _rtx_can_run_here() -> bool:
    return rtx_runs_on(torch.cuda.get_device_capability())


def default_target(flavor: str) -> str:
    """The GPU this machine would build for, or "portable" with no usable CUDA GPU."""
    if not torch.cuda.is_available():
        return "portable"
    if flavor == "tensorrt_rtx" and not _rtx_can_run_here():
        # e.g. an H100/H200 (9.0): RTX still builds for it (seen on an H200), but its runtime refuses the engine
        return "portable"
    capability = "{}.{}".format(*torch.cuda.get_device_capability())
    return f"{torch.cuda.get_device_name()} (compute capability {capability})"


def _onnx_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for subgraph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _onnx_tensors(subgraph)


def onnx_files(onnx_path: Path) -> list[Path]:
    """The .onnx file and the external data files its tensors point to (paths relative to its folder)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = {entry.value for tensor in _onnx_tensors(model.graph)
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    return [onnx_path, *sorted(onnx_path.parent / location for location in locations)]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".sha256")


def _checksum_ok(engine_path: Path) -> bool:
    """True when the engine exists and matches the sha256 stored beside it."""
    if not engine_path.is_file():
        return False
    checksum = _checksum_path(engine_path)
    stored = checksum.read_text().strip() if checksum.is_file() else ""
    if stored != _sha256_file(engine_path):
        log.warning("engine %s does not match its checksum %s: not loading it", engine_path, checksum)
        return False
    return True


def build_engine(onnx_path: str | Path, profiles: list[ShapeProfile], cache_dir: str | Path, *,
                 workspace_gb: float = 4.0, optimization_level: int = 3, target: str = "auto") -> EngineBuild:
    """A strongly typed engine for the ONNX decoder, from cache_dir when a verified entry matches.

    The cache key covers the ONNX bytes (with its external data), the profiles, the TensorRT flavor and
    version, the target, the workspace and the optimization level. target "auto" is default_target();
    "portable" asks for an engine that runs on any supported GPU (TensorRT-RTX's default, TensorRT's
    hardware compatibility level AMPERE_PLUS).
    """
    found = import_tensorrt()
    if not profiles:
        raise ValueError("build_engine needs at least one ShapeProfile")
    if target not in ("auto", "portable"):
        raise ValueError(f"target must be 'auto' or 'portable', got {target!r}")
    resolved = default_target(found.flavor) if target == "auto" else target
    onnx_path, cache_dir = Path(onnx_path), Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(cache_dir):
        log.info("removed %s, left by a build that was killed mid-write", stale.name)
    start = time.perf_counter()
    with PeakMemory(torch.device("cpu")) as peak:
        key = json.dumps({
            "onnx": [(path.name, _sha256_file(path)) for path in onnx_files(onnx_path)],
            "profiles": [asdict(p) for p in profiles], "flavor": found.flavor, "version": found.version,
            "target": resolved, "workspace_gb": workspace_gb, "optimization_level": optimization_level,
        }, sort_keys=True)
        path = cache_dir / f"{onnx_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.engine"
        cache_hit = _checksum_ok(path)
        parse_s = 0.0
        if not cache_hit:
            plan, parse_s = _build(found, onnx_path, profiles, cache_dir, resolved, workspace_gb, optimization_level)
            data = memoryview(plan)
            atomic_write(path, data)
            atomic_write(_checksum_path(path), hashlib.sha256(data).hexdigest().encode())
    meta_path = path.with_suffix(".json")
    if cache_hit and meta_path.is_file():
        # A hit reports what the engine cost to build (the cost a cold start pays), not the lookup time.
        meta = json.loads(meta_path.read_text())
        build_s, parse_s, peak_gb = meta["build_s"], meta["parse_s"], meta["peak_build_rss_gb"]
    else:
        build_s, peak_gb = time.perf_counter() - start, peak.peak_gb
        atomic_write(meta_path, json.dumps({"build_s": build_s, "parse_s": parse_s,
                                             "peak_build_rss_gb": peak_gb}).encode())
    build = EngineBuild(path, build_s, parse_s, path.stat().st_size / 1e6, cache_hit, peak_gb, found.flavor,
                        found.version, resolved)
    log.info("%s engine %s: %.1f MB in %.2f s (cache hit: %s)", found.flavor, path.name, build.engine_mb,
             build.build_s, cache_hit)
    return build


def _build(found: TrtModule, onnx_path: Path, profiles: list[ShapeProfile], cache_dir: Path, target: str,
           workspace_gb: float, optimization_level: int) -> tuple[trt.IHostMemory, float]:
    """Parse and build; returns the serialized engine and the parse time in seconds."""
    if found.flavor == "tensorrt" and not torch.cuda.is_available():
        raise EngineBuildError(f"TensorRT {found.version} builds only with a CUDA GPU, and none is visible")
    logger, errors = _trt_logger()
    errors.clear()
    builder = trt.Builder(logger)
    # Required on TensorRT 10.x for strong typing; ignored by 11.x and TensorRT-RTX, which are always strongly typed.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external data next to it resolves
        raise EngineBuildError(f"{found.flavor} {found.version} could not parse {onnx_path}:\n" +
                               "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    parse_s = time.perf_counter() - start

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = optimization_level
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = _dims(tensor.shape)
            shapes = [_input_shape(tensor.name, dims, profile.batch[k], profile.sequence[k], profile.past[k])
                      for k in range(3)]
            trt_profile.set_shape(tensor.name, *(trt.Dims(list(shape)) for shape in shapes))
        config.add_optimization_profile(trt_profile)

    # TensorRT keeps a timing cache per version and target. TensorRT-RTX gets none: ITimingCache calls are no-ops
    # there (deprecated since RTX 1.2) and force a GPU query that breaks its CPU-only build; its JIT kernels go to
    # a runtime cache instead (TrtDecoderRunner).
    timing_cache_path = cache_dir / f"timing-{found.version}-{re.sub(r'[^A-Za-z0-9.]+', '_', target)}.cache"
    if found.flavor == "tensorrt":
        data = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(data), False):
            log.warning("timing cache %s does not match this GPU or version: building without it", timing_cache_path)
        if target == "portable":
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif target != "portable":  # TensorRT-RTX builds for all its GPUs unless told which
        rtx_config: Any = config  # TensorRT-RTX-only members, not in tensorrt-stubs
        rtx: Any = found.module
        rtx_config.num_compute_capabilities = 1
        rtx_config.set_compute_capability(rtx.ComputeCapability.CURRENT, 0)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(_with_errors(f"{found.flavor} {found.version} could not build {onnx_path}", errors))
    if found.flavor == "tensorrt":
        atomic_write(timing_cache_path, memoryview(config.get_timing_cache().serialize()))
    return plan, parse_s


# --- running --------------------------------------------------------------------------------------


def runtime_unavailable_reason(flavor: str, version: str, engine_path: str | Path | None = None) -> str | None:
    """None when engines of this flavor can run here, else why not; with engine_path, also tries to load it."""
    if not torch.cuda.is_available():
        return f"no CUDA GPU visible (torch.cuda.is_available() is False); {flavor} {version} engines run only on a GPU"
    if flavor == "tensorrt_rtx" and not _rtx_can_run_here():
        capability = "{}.{}".format(*torch.cuda.get_device_capability())
        return (f"TensorRT-RTX {version} cannot run engines on {torch.cuda.get_device_name()}, which has compute "
                f"capability {capability}; supported compute capabilities: {RTX_COMPUTE_CAPABILITIES}")
    if engine_path is not None:
        try:
            TrtDecoderRunner(engine_path).close()
        except TensorRTRuntimeError as err:
            return str(err)
    return None


def deserialize_engine(engine_path: str | Path) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """The runtime and engine for a checksum-verified engine file (keep the runtime alive with the engine)."""
    engine_path = Path(engine_path)
    found = import_tensorrt()
    if not _checksum_ok(engine_path):
        raise TensorRTRuntimeError(f"{engine_path} is missing or does not match its checksum; rebuild it")
    logger, errors = _trt_logger()
    errors.clear()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise TensorRTRuntimeError(_with_errors(f"{found.flavor} {found.version} could not load {engine_path}", errors))
    return runtime, engine


def engine_profiles(engine: trt.ICudaEngine) -> list[ShapeProfile]:
    """The optimization profiles an engine was built with, read back from the engine."""
    profiles = []
    for i in range(engine.num_optimization_profiles):
        ids = engine.get_tensor_profile_shape("input_ids", i)  # [min, opt, max] of [B, S]
        past = engine.get_tensor_profile_shape("past_key_values.0.key", i)  # of [B, KVH, P, Dh]
        profiles.append(ShapeProfile((ids[0][0], ids[1][0], ids[2][0]), (ids[0][1], ids[1][1], ids[2][1]),
                                     (past[0][2], past[1][2], past[2][2])))
    return profiles


def _torch_dtype(dtype: trt.DataType) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
             trt.DataType.INT64: torch.int64, trt.DataType.INT32: torch.int32}
    if dtype not in table:
        raise TensorRTRuntimeError(f"engine I/O dtype {dtype} is not supported here")
    return table[dtype]


class TrtDecoderRunner:
    """Greedy generation with a decoder engine; the KV cache stays on the GPU in ping-pong buffers."""

    def __init__(self, engine_path: str | Path, *, cuda_graphs: bool = False):
        self.found = import_tensorrt()
        self.engine_path = Path(engine_path)
        self.runtime, self.engine = deserialize_engine(self.engine_path)
        self.profiles = engine_profiles(self.engine)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_dims = {n: _dims(self.engine.get_tensor_shape(n)) for n in self.inputs}  # -1 where dynamic
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        kv_dims = self.engine.get_tensor_shape(self.past_names[0])  # [-1, KVH, -1, Dh]
        self.kv_heads, self.head_dim = kv_dims[1], kv_dims[3]
        self.vocab = self.engine.get_tensor_shape("logits")[2]
        self.kv_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.past_names[0]))
        self.logits_dtype = _torch_dtype(self.engine.get_tensor_dtype("logits"))
        if _torch_dtype(self.engine.get_tensor_dtype("input_ids")) != torch.int64:
            raise TensorRTRuntimeError(f"{engine_path}: input_ids must be int64 per the decoder contract")
        self.runtime_cache_path = self.engine_path.with_name(self.engine_path.name + ".rtx-runtime-cache")
        self._runtime_cache: Any = None
        self.first_logits = torch.empty(0)  # the last prefill's next-token logits, [B, V]
        self.context = self._create_context(cuda_graphs)

    def _create_context(self, cuda_graphs: bool) -> trt.IExecutionContext:
        logger, errors = _trt_logger()
        errors.clear()
        if self.found.flavor == "tensorrt":
            if cuda_graphs:
                raise ValueError("cuda_graphs is TensorRT-RTX's built-in capture; tensorrt has no such runtime option")
            context = self.engine.create_execution_context()
        else:
            rtx: Any = self.found.module  # TensorRT-RTX-only members, not in tensorrt-stubs
            config: Any = self.engine.create_runtime_config()
            self._runtime_cache = config.create_runtime_cache()  # JIT-compiled kernels, kept across processes
            if self.runtime_cache_path.is_file() and not self._runtime_cache.deserialize(
                    self.runtime_cache_path.read_bytes()):
                log.warning("runtime cache %s is from another GPU, driver or version: starting empty",
                            self.runtime_cache_path)
            config.set_runtime_cache(self._runtime_cache)
            if cuda_graphs:
                config.cuda_graph_strategy = rtx.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            context = self.engine.create_execution_context(config)
        if context is None:
            raise TensorRTRuntimeError(_with_errors(f"could not create an execution context for {self.engine_path}",
                                                    errors))
        return context

    def _profile_index(self, batch: int, sequence: int, past: int) -> int:
        index = profile_for(self.profiles, batch, sequence, past)
        if index is None:
            raise ShapeOutsideProfiles(batch, sequence, past, self.profiles)
        return index

    def _run(self, batch: int, sequence: int, past: int, addresses: dict[str, int], stream: int) -> None:
        """Set shapes and addresses for one engine call and enqueue it on stream."""
        for name in self.inputs:
            shape = _input_shape(name, self.input_dims[name], batch, sequence, past)
            if not self.context.set_input_shape(name, shape):
                raise TensorRTRuntimeError(f"set_input_shape({name}, {shape}) was refused")
        for name, address in addresses.items():
            if not self.context.set_tensor_address(name, address):
                raise TensorRTRuntimeError(f"set_tensor_address({name}) was refused")
        _, errors = _trt_logger()
        errors.clear()
        if not self.context.execute_async_v3(stream):
            raise TensorRTRuntimeError(_with_errors(f"execute_async_v3 failed at batch {batch}, sequence "
                                                    f"{sequence}, past {past}", errors))

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[], None],
                 suppress_token_ids: Sequence[int] = ()) -> torch.Tensor:
        """Greedy-decode max_new_tokens for input_ids [B, S] int64 on CUDA, never emitting suppress_token_ids;
        returns [B, max_new_tokens] on CUDA. The prefill's last logits stay in self.first_logits [B, V]."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.int64 or not input_ids.is_cuda:
            raise ValueError(f"input_ids must be a [B, S] int64 CUDA tensor, got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)} on {input_ids.device}")
        stream = torch.cuda.current_stream(input_ids.device).cuda_stream
        return self._decode(input_ids.contiguous(), max_new_tokens, on_token, stream, list(suppress_token_ids))

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] for the token after the prompt (the quality check against the reference)."""
        self.generate(input_ids, 1, lambda: None)
        return self.first_logits

    def _decode(self, prompt: torch.Tensor, max_new_tokens: int, on_token: Callable[[], None],
                stream: int, suppressed: list[int]) -> torch.Tensor:
        """The greedy loop on the device of prompt [B, S], enqueued on stream; returns [B, max_new_tokens]."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        batch, seq = prompt.shape
        steps = [(seq, 0)] + [(1, seq + t - 1) for t in range(1, max_new_tokens)]  # (sequence, past) per call
        profile_indices = [self._profile_index(batch, s, p) for s, p in steps]  # fail before any GPU work
        total = seq + max_new_tokens - 1  # longest present: the last token is never fed back
        device = prompt.device

        kv_numel = batch * self.kv_heads * total * self.head_dim
        # two flat buffers per past tensor; a prefix of B*KVH*P*Dh elements is a contiguous [B, KVH, P, Dh]
        kv = [[torch.empty(kv_numel, dtype=self.kv_dtype, device=device) for _ in range(2)] for _ in self.past_names]
        logits = torch.empty(batch * seq * self.vocab, dtype=self.logits_dtype, device=device)  # prefix: [B, S, V]
        tokens = torch.empty(max_new_tokens, batch, dtype=torch.int64, device=device)  # row t: token t, [B]
        mask = torch.ones(batch * total, dtype=torch.int64, device=device)  # prefix viewed as [B, P + S]
        prompt_positions = torch.arange(seq, device=device).expand(batch, seq).contiguous()  # [B, S]
        decode_positions = torch.arange(total, device=device).repeat_interleave(batch).view(total, batch, 1)

        src, active = 0, -1
        for t, ((sequence, past), index) in enumerate(zip(steps, profile_indices)):
            if index != active:
                if not self.context.set_optimization_profile_async(index, stream):
                    raise TensorRTRuntimeError(f"set_optimization_profile_async({index}) was refused")
                active = index
            ids = prompt if t == 0 else tokens[t - 1].view(batch, 1)  # [B, S] or [B, 1]
            positions = prompt_positions if t == 0 else decode_positions[past]  # [B, S] or [B, 1]
            addresses = {"input_ids": ids.data_ptr(), "position_ids": positions.data_ptr(),
                         "attention_mask": mask.data_ptr(), "logits": logits.data_ptr()}
            for past_name, present_name, pair in zip(self.past_names, self.present_names, kv):
                addresses[past_name] = pair[src].data_ptr()  # reads [B, KVH, P, Dh]
                addresses[present_name] = pair[1 - src].data_ptr()  # writes [B, KVH, P + S, Dh]
            self._run(batch, sequence, past, addresses, stream)
            last = logits[: batch * sequence * self.vocab].view(batch, sequence, self.vocab)[:, -1]  # [B, V]
            if t == 0:
                self.first_logits = last.clone()
            if suppressed:
                last[:, suppressed] = float("-inf")  # scratch buffer: the next call overwrites it
            torch.argmax(last, dim=-1, out=tokens[t])
            on_token()
            src = 1 - src
        return tokens.t().contiguous()  # [B, max_new_tokens]

    def close(self) -> None:
        """Save the TensorRT-RTX runtime cache and release the context and engine."""
        if self._runtime_cache is not None:
            atomic_write(self.runtime_cache_path, memoryview(self._runtime_cache.serialize()))
            self._runtime_cache = None
        del self.context, self.engine, self.runtime
