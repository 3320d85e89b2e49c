"""Engine builds and their cache: a strongly typed engine for the ONNX decoder, built once per key and verified by
its checksum on every use; TensorRT's timing cache kept beside it."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import onnx
import torch

from bench_kernels.timing import PeakMemory
from bench_kernels.paths import atomic_write, remove_stale_temporaries
from bench_kernels.runtimes.tensorrt.library import (EngineBuildError, TrtModule, import_tensorrt,
                                                     logger_for_new_object, rtx_can_run_here)
from bench_kernels.runtimes.tensorrt.profiles import ShapeProfile, dims_tuple, input_shape

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from bench_kernels.runtimes.tensorrt.library import trt

log = logging.getLogger(__name__)


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


def default_target(flavor: str) -> str:
    """The GPU this machine would build for, or "portable" with no usable CUDA GPU."""
    if not torch.cuda.is_available():
        return "portable"
    if flavor == "tensorrt_rtx" and not rtx_can_run_here():
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


def checksum_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".sha256")


def checksum_ok(engine_path: Path) -> bool:
    """True when the engine exists and matches the sha256 stored beside it."""
    if not engine_path.is_file():
        return False
    checksum = checksum_path(engine_path)
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
        cache_hit = checksum_ok(path)
        parse_s = 0.0
        if not cache_hit:
            plan, parse_s = _build(found, onnx_path, profiles, cache_dir, resolved, workspace_gb, optimization_level)
            data = memoryview(plan)
            atomic_write(path, data)
            atomic_write(checksum_path(path), hashlib.sha256(data).hexdigest().encode())
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
    logger, captured = logger_for_new_object()
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
            dims = dims_tuple(tensor.shape)
            shapes = [input_shape(tensor.name, dims, profile.batch[k], profile.sequence[k], profile.past[k])
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
