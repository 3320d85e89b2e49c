"""TensorRT engines for the ONNX decoder: import, shape profiles, cached strongly typed builds, greedy runner.

Works with NVIDIA TensorRT 10.1+/11.x (`tensorrt`) and TensorRT for RTX (`tensorrt_rtx`), which share the
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import onnx
import torch

from bench_kernels.measure import PeakMemory
from bench_kernels.paths import atomic_write, remove_stale_temporaries
from bench_kernels.runtimes.tensorrt.buffers import DecodeBuffers, DecoderLayout, decode_steps, greedy_loop, on_stream

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


# What TensorRT logs to a logger passed to a new builder or runtime while another logger is registered.
LOGGER_SUPERSEDED = "differs from one already registered"
# Warnings every parse of the exported decoder gives, logged at debug: its token ids are int64 by design, and the
# runner binds them so.
EXPECTED_WARNINGS = ("has Int64 binding",)


@dataclass
class CapturedErrors:
    """What the process's TensorRT logger captured since the last clear."""

    messages: list[str] = field(default_factory=list)
    # TensorRT said, at the last builder or runtime created, that it keeps a logger registered earlier
    superseded: bool = False

    def describe(self, message: str) -> str:
        """message followed by TensorRT's errors, or by why there are none."""
        if self.messages:
            return message + ": " + " | ".join(self.messages)
        if self.superseded:
            return message + (" (no TensorRT error reached this project's logger: TensorRT said it keeps a logger "
                              "that other code in this process registered first)")
        return message + " (TensorRT logged no error)"


@functools.cache
def _trt_logger() -> tuple[trt.ILogger, CapturedErrors]:
    """The process's one TensorRT logger, forwarding to `log`, and what it captures.

    One instance for every builder, parser and runtime: TensorRT registers the logger of the first one
    alive and answers any other logger with a LOGGER_SUPERSEDED warning, which is recorded.
    """
    captured = CapturedErrors()
    severity = trt.ILogger.Severity

    class Logger(trt.ILogger):
        def log(self, level: trt.ILogger.Severity, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                captured.messages.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                captured.superseded |= LOGGER_SUPERSEDED in msg
                (log.debug if any(m in msg for m in EXPECTED_WARNINGS) else log.warning)("TensorRT: %s", msg)
            elif level == severity.INFO:
                log.debug("TensorRT: %s", msg)

    return Logger(), captured


def _logger_for_new_object() -> tuple[trt.ILogger, CapturedErrors]:
    """The logger to create a builder or runtime with, its captures cleared for what that creation logs."""
    logger, captured = _trt_logger()
    captured.messages.clear()
    captured.superseded = False
    return logger, captured


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
    logger, captured = _logger_for_new_object()
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
        attach_timing_cache(config, timing_cache_path)
        if target == "portable":
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif target != "portable":  # TensorRT-RTX builds for all its GPUs unless told which
        rtx_config: Any = config  # TensorRT-RTX-only members, not in tensorrt-stubs
        rtx: Any = found.module
        rtx_config.num_compute_capabilities = 1
        if not rtx_config.set_compute_capability(rtx.ComputeCapability.CURRENT, 0):
            raise EngineBuildError(captured.describe(f"{found.flavor} {found.version} refused to target {target}"))

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(captured.describe(f"{found.flavor} {found.version} could not build {onnx_path}"))
    if found.flavor == "tensorrt":
        save_timing_cache(config, timing_cache_path)
    return plan, parse_s


def attach_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Attach the timing cache saved at path, else a new empty one (which then replaces a refused file)."""
    saved = path.read_bytes() if path.is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(saved), False):
        return
    log.warning("timing cache %s does not match this GPU or TensorRT version: starting an empty one", path)
    if saved and config.set_timing_cache(config.create_timing_cache(b""), False):
        return
    log.warning("TensorRT refused an empty timing cache too: building without one, %s left as it is", path)


def save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Write the timing cache the build used to path; nothing when none was attached (get_timing_cache is None)."""
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write(path, memoryview(cache.serialize()))


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
    logger, captured = _logger_for_new_object()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise TensorRTRuntimeError(captured.describe(f"{found.flavor} {found.version} could not load {engine_path}"))
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
        self.input_dims = {n: _dims(self.engine.get_tensor_shape(n)) for n in self.inputs}  # -1 where dynamic
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
        _, captured = _trt_logger()
        captured.messages.clear()
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
        inferred = {name: _dims(context.get_tensor_shape(name)) for name in expected}
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
            shape = _input_shape(name, self.input_dims[name], batch, sequence, past)
            if not context.set_input_shape(name, shape):
                raise TensorRTRuntimeError(f"set_input_shape({name}, {shape}) was refused")
        self._check_output_shapes(context, buffers, batch, sequence, past)
        for name, address in addresses.items():
            if not context.set_tensor_address(name, address):
                raise TensorRTRuntimeError(f"set_tensor_address({name}) was refused")
        _, captured = _trt_logger()
        captured.messages.clear()
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
