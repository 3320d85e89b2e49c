"""TensorRT: the shared ONNX decoder built into an engine (`tensorrt`, else `tensorrt_rtx`) and run on the GPU.

Precisions: fp32 / fp16 / bf16 graphs as exported; int4 and int4-awq export bf16 with the projections as INT4
initializers dequantized block-wise (DequantizeLinear, one bf16 scale per group of input channels) into their
MatMuls, which strongly typed TensorRT builds as weight-only int4 GEMMs; int4-awq AWQ-scales the model first.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field

from bench_kernels.architecture import DECODER_MODEL_TYPES
from bench_kernels.precisions import INT4_PRECISIONS
from bench_kernels.runtimes.base import OPTIONS_CONFIG, QUALITY_LOGIT_ROWS, BuildInfo, Runtime, options_dataclass

if TYPE_CHECKING:
    import torch

    from bench_kernels.timing import StepTimer

log = logging.getLogger(__name__)


@options_dataclass(config=OPTIONS_CONFIG)
class TensorRTOptions:
    """TensorRT builder settings (sweep spec: runtime_options: {tensorrt: {...}})."""

    workspace_gb: Annotated[float, Field(gt=0, le=1024)] = 4.0  # builder workspace limit (GB)
    optimization_level: Annotated[int, Field(ge=0, le=5)] = 3  # builder optimization level
    allow_rebuild: bool = True  # rebuild the engine when a shape falls outside its profiles
    # TensorRT-RTX only: when kernels specialized for a new shape compile. eager: blocking, at the first call of
    # each shape (the warmup), so measured runs use them; lazy (RTX's default): in the background while fallback
    # kernels run, so timings drift between runs; none: fallback kernels only.
    kernel_specialization: Literal["eager", "lazy", "none"] = "eager"


def tensorrt_status(device: torch.device) -> tuple[str, str, str | None]:
    """(flavor, version, reason inference cannot run here or None); flavor '' when nothing imports."""
    import torch

    from bench_kernels.runtimes.tensorrt.library import TensorRTUnavailable, import_tensorrt
    from bench_kernels.runtimes.tensorrt.runner import runtime_unavailable_reason

    try:
        found = import_tensorrt()
    except TensorRTUnavailable as err:
        return "", "", err.reason
    if device.type != "cuda":
        return found.flavor, found.version, (
            f"{found.flavor} {found.version} engines run only on a CUDA GPU, and this sweep runs on the {device.type}"
            + ("" if torch.cuda.is_available() else " (torch sees no CUDA GPU)"))
    return found.flavor, found.version, runtime_unavailable_reason(found.flavor, found.version)


class TensorRTRuntime(Runtime):
    """Engine built strongly typed from the exported decoder, with prefill and decode profiles from the sweep."""

    name = "tensorrt"
    model_types = DECODER_MODEL_TYPES  # the shared decoder's families
    description = "the shared decoder's ONNX graph built into a strongly typed TensorRT engine"
    needs_build = True
    options_class = TensorRTOptions
    runs_torch_model = False
    batching_policies = ("shape_limited", "static")  # shape_limited: inside the profiles, else a rebuild
    dynamic_shapes = "only inside the engine's optimization profiles; any other shape needs a rebuild"
    prefill_logits_every_position = True  # the engine of the exported decoder: logits [B, S, V] for the prompt
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16", *INT4_PRECISIONS)

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        return tensorrt_status(device)[2]

    @classmethod
    def build_unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        from bench_kernels.runtimes.tensorrt.library import TensorRTUnavailable, import_tensorrt

        try:
            import_tensorrt()
        except TensorRTUnavailable as err:
            return err.reason  # said before the ONNX export, which alone takes minutes for an 8B model
        return None

    @classmethod
    def version(cls, device: torch.device) -> str:
        flavor, version, _ = tensorrt_status(device)
        return f"{flavor} {version}".strip()

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        from bench_kernels.onnx_export import export_model
        from bench_kernels.runtimes.tensorrt.profiles import profiles_for_sweep

        if self.precision in INT4_PRECISIONS:
            self.export = export_model(self.loaded, self.precision, "bf16", "DequantizeLinear")
        else:
            self.export = export_model(self.loaded, self.precision)
        # the quality check's prefill runs the first QUALITY_LOGIT_ROWS prompts of a batch: fewer than the
        # smallest batch when that is larger
        quality_batch = min(min(batch_sizes), QUALITY_LOGIT_ROWS)
        self.profiles = profiles_for_sweep([*batch_sizes, quality_batch], input_lens, output_len)
        self.runner = None
        return self._build()

    def _build(self) -> BuildInfo:
        from bench_kernels.paths import cache_dir
        from bench_kernels.runtimes.tensorrt.build import build_engine

        self.engine = build_engine(self.export.path, self.profiles, cache_dir("engines"),
                                   workspace_gb=self.options.workspace_gb,
                                   optimization_level=self.options.optimization_level)
        ranges = "; ".join(p.describe() for p in self.profiles)
        rounded = f", int4 rounding of the cached {self.export.dtype} export" if self.export.float_source else ""
        notes = (f"engine for {self.engine.target}: parse {self.engine.parse_s:.2f} s, peak build RSS "
                 f"{self.engine.peak_build_rss_gb:.2f} GB; ONNX export {self.export.build_s:.1f} s "
                 f"({self.export.artifact_mb:.0f} MB{rounded}) not included in build_s; profiles: {ranges}")
        return BuildInfo(self.engine.build_s, self.engine.engine_mb, self.engine.cache_hit, notes)

    def discard_build(self) -> str:
        """The engine, its checksum and build record: an engine that cannot run here is kept for nothing (the embedded
        135M model's engines are 0.7-1.1 GB each), and a rerun keeps the finished build row rather than build again."""
        path = self.engine.path
        for built in (path, path.with_name(path.name + ".sha256"), path.with_suffix(".json")):
            built.unlink(missing_ok=True)
        return (f"built here for its build figures (build time, engine size) only: the {self.engine.engine_mb:.0f} MB "
                "engine cannot run on this machine and was deleted")

    def weight_bytes(self) -> int:
        return self.export.weight_bytes(self.loaded.config)

    def ensure_shape(self, batch_size: int, input_len: int, output_len: int) -> float:
        """Rebuild when a request falls outside the built profiles (if allowed); returns the rebuild seconds."""
        from bench_kernels.runtimes.tensorrt.profiles import ShapeOutsideProfiles, profile_for, profiles_for_sweep

        last_past = input_len + output_len - 2
        if profile_for(self.profiles, batch_size, input_len, 0) is not None and (
                output_len == 1 or profile_for(self.profiles, batch_size, 1, last_past) is not None):
            return 0.0
        if not self.options.allow_rebuild:
            raise ShapeOutsideProfiles(batch_size, input_len, last_past, self.profiles)
        start = time.perf_counter()
        batches = {p.batch[k] for p in self.profiles for k in (0, 2)} | {batch_size}
        inputs = {p.sequence[k] for p in self.profiles[:1] for k in (0, 2)} | {input_len}
        widest_output = max(output_len, max(p.past[2] for p in self.profiles) - max(inputs) + 2)
        self.profiles = profiles_for_sweep(sorted(batches), sorted(inputs), widest_output)
        self.close()
        self._build()
        log.info("rebuilt the engine for batch %d, input %d in %.1f s", batch_size, input_len,
                 time.perf_counter() - start)
        return time.perf_counter() - start

    def _runner(self):
        from bench_kernels.runtimes.tensorrt.runner import TrtDecoderRunner

        if self.runner is None:
            self.runner = TrtDecoderRunner(self.engine.path, kernel_specialization=self.options.kernel_specialization)
        return self.runner

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        from bench_kernels.models import eos_token_ids

        self.ensure_shape(input_ids.shape[0], input_ids.shape[1], output_len)
        runner = self._runner()  # before the timer starts: loading the engine (and RTX's JIT) is not TTFT
        ids = input_ids.to(self.device)  # ids: [B, S] on the GPU
        return runner.generate(ids, output_len, timer.token, eos_token_ids(self.loaded), on_start=timer.start).cpu()

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.ensure_shape(input_ids.shape[0], input_ids.shape[1], 1)
        return self._runner().first_step_logits(input_ids.to(self.device)).float().cpu()

    def close(self) -> None:
        if getattr(self, "runner", None) is not None:
            self.runner.close()
            self.runner = None
