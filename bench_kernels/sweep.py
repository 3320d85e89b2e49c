"""Sweeps: for each runtime and precision, build once, then measure every (batch, input length).

Every outcome becomes a results row: ok, error (with a readable message), skipped or
unavailable (with the reason). Finished rows are kept; a rerun measures only what is missing.
"""

from __future__ import annotations

import gc
import logging
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import pandas as pd
import torch

from bench_kernels.config import SweepConfig
from bench_kernels.console import quiet_libraries
from bench_kernels.deployments import Deployment, deployments
from bench_kernels.errors import readable_error
from bench_kernels.models import LoadedModel, model_display_name, resolve_model_config
from bench_kernels.provenance import pick_device, provenance
from bench_kernels.quality import agreement_columns, baseline_precision, perplexity_columns, reference_outputs_dir
from bench_kernels.rates import DeviceRates, device_rates, last_level_cache_bytes, remeasured_rates
from bench_kernels.results import ResultsStore, row_key
from bench_kernels.roofline import (ROOFLINE_NOT_APPLICABLE, decode_columns, decode_step_bytes, decode_weight_bytes,
                                    prefill_columns, prefill_flops)
from bench_kernels.runtimes import BuildInfo, Runtime, get_runtime
from bench_kernels.workload import load_text, make_prompts, text_token_ids

log = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]


@dataclass
class SweepContext:
    """What every row of one sweep shares."""

    cfg: SweepConfig
    store: ResultsStore
    device: torch.device
    model_name: str
    weights: str
    env: dict[str, str]
    progress: ProgressFn
    runtime_columns: dict[str, dict[str, str]] = field(default_factory=dict)

    def base_row(self, stage: str, runtime: str, precision: str, options: Any) -> dict[str, Any]:
        """What every row of this runtime carries: provenance, and the runtime's facts the report reads."""
        if runtime not in self.runtime_columns:
            runtime_cls = get_runtime(runtime)
            self.runtime_columns[runtime] = {"runtime_version": runtime_cls.version(self.device),
                                             **runtime_cls.facts()}
        return {"run_name": self.cfg.run_name, "stage": stage, "runtime": runtime, "model": self.model_name,
                "weights": self.weights, "precision": precision, **self.env, **self.runtime_columns[runtime],
                "runtime_options": options_text(options)}

    def log_failure(self, what: str, err: BaseException) -> None:
        """Full traceback to errors.log beside the results; the row keeps one readable line."""
        with (self.store.run_dir / "errors.log").open("a", encoding="utf-8") as handle:
            handle.write(f"--- {what}\n{''.join(traceback.format_exception(err))}\n")


def options_text(options: Any) -> str:
    """A runtime's options as one line for its rows ('' when it takes none)."""
    return ", ".join(f"{k}={v}" for k, v in asdict(options).items())


def make_context(cfg: SweepConfig, progress: ProgressFn | None = None) -> SweepContext:
    quiet_libraries()
    device = pick_device(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    weights = "random" if cfg.model.startswith("preset:") else "real"
    return SweepContext(cfg, ResultsStore(cfg.run_dir), device, model_display_name(cfg.model), weights,
                        provenance(device), progress or (lambda message: log.info(message)))


def _shape_key(ctx: SweepContext, stage: str, deployment: Deployment, batch_size: int | None,
               input_len: int | None) -> dict[str, Any]:
    return {"stage": stage, "runtime": deployment.runtime, "model": ctx.model_name, "precision": deployment.precision,
            "gpu_count": deployment.gpu_count, "batch_size": batch_size, "input_len": input_len,
            "output_len": ctx.cfg.output_len if batch_size is not None else None}


def _release(*objects: Any) -> None:
    """Close runtimes and give cached GPU memory back. Call it once nothing refers to what should be freed (the
    next deployment may be another process on the same GPU: a tensor-parallel rank)."""
    for obj in objects:
        if isinstance(obj, Runtime):
            obj.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(ctx: SweepContext, deployment: Deployment) -> LoadedModel:
    """The model as the deployment's runtime runs it (see Runtime.load)."""
    return get_runtime(deployment.runtime).load(ctx.cfg.model, deployment.precision, ctx.device, ctx.cfg.seed,
                                                deployment.options)


def unsupported_precision(runtime_cls: type[Runtime], precision: str) -> str | None:
    if precision in runtime_cls.precisions:
        return None
    return f"{runtime_cls.name} does not run {precision} (it runs {', '.join(runtime_cls.precisions)})"


def unavailable(ctx: SweepContext, deployment: Deployment, *, building: bool = False) -> str | None:
    """Why this deployment cannot run (or, building, cannot build) here, or None; the model's family first, since
    no machine would change that."""
    runtime_cls = get_runtime(deployment.runtime)
    config = resolve_model_config(ctx.cfg.model)
    device_reason = (runtime_cls.build_unavailable_reason if building else runtime_cls.unavailable_reason)(
        ctx.device, deployment.precision)
    return (runtime_cls.model_unavailable_reason(config) or unsupported_precision(runtime_cls, deployment.precision)
            or device_reason or runtime_cls.options_unavailable_reason(deployment.options, ctx.device, config))


def run_build_stage(cfg: SweepConfig, progress: ProgressFn | None = None) -> pd.DataFrame:
    """One build row per (runtime, precision): export / engine build time, artifact size, cache hit."""
    ctx = make_context(cfg, progress)
    for runtime_name in cfg.runtimes:
        for deployment in deployments(cfg, runtime_name, ctx.device):
            _build_deployment(ctx, deployment)
    return ctx.store.load()


def build_deployment(cfg: SweepConfig, deployment: Deployment, progress: ProgressFn | None = None) -> pd.DataFrame:
    """The build row of one deployment of the sweep (see run_build_stage); return the whole table."""
    ctx = make_context(cfg, progress)
    _build_deployment(ctx, deployment)
    return ctx.store.load()


def _build_deployment(ctx: SweepContext, deployment: Deployment) -> None:
    runtime_name, runtime_cls = deployment.runtime, get_runtime(deployment.runtime)
    label = f"build {deployment.label}"
    key = _shape_key(ctx, "build", deployment, None, None)
    if ctx.store.is_finished(key):
        ctx.progress(f"{label}: already done, kept")
        return
    row = {**ctx.base_row("build", runtime_name, deployment.precision, deployment.options), **key}
    unsupported = unavailable(ctx, deployment, building=True)
    if unsupported:
        row.update(status="unavailable", error=unsupported)
        ctx.store.append(row)
        return
    if not runtime_cls.needs_build:
        row.update(status="skipped", build_s=0.0, notes="no build step: runs the loaded weights directly")
        ctx.store.append(row)
        return
    log.info("%s ...", label)
    runtime = loaded = None
    try:
        loaded = _load(ctx, deployment)
        runtime = runtime_cls(loaded, deployment.precision, ctx.device, deployment.options)
        info = runtime.prepare(ctx.cfg.batch_sizes, ctx.cfg.input_lens, ctx.cfg.output_len)
        row.update(status="ok", link_gbps=runtime.link_gbps, **_build_columns(info))
        reason = runtime_cls.unavailable_reason(ctx.device, deployment.precision)
        if reason:
            discarded = runtime.discard_build()
            row["notes"] = f"{row['notes']}; inference unavailable here: {reason}" + (
                f"; {discarded}" if discarded else "")
    except Exception as err:  # noqa: BLE001 - a failed build is a row, the sweep goes on
        ctx.log_failure(label, err)
        row.update(status="error", error=readable_error(err))
    finally:
        _release(runtime)
    runtime = loaded = None
    _release()
    ctx.store.append(row)
    ctx.progress(f"{label}: {row['status']} {row.get('error') or ''}".rstrip())


def _record_build(ctx: SweepContext, deployment: Deployment, build: BuildInfo, link_gbps: float | None) -> None:
    """A build done for the inference sweep is the build row too, when the build stage has none yet."""
    key = _shape_key(ctx, "build", deployment, None, None)
    if not ctx.store.is_finished(key):
        ctx.store.append({**ctx.base_row("build", deployment.runtime, deployment.precision, deployment.options),
                          **key, "status": "ok", "link_gbps": link_gbps, **_build_columns(build),
                          "notes": f"{build.notes}; built by the inference sweep"})


def _build_columns(info: BuildInfo | None) -> dict[str, Any]:
    if info is None:
        return {"build_s": 0.0, "notes": "no build step"}
    return {"build_s": info.build_s, "artifact_mb": info.artifact_mb, "cache_hit": str(info.cache_hit).lower(),
            "notes": info.notes}


def _workload_shape(cfg: SweepConfig) -> tuple[int, int]:
    """The measured (batch size, input length) the workload's traffic fills: where a profile is recorded."""
    shape = cfg.workload_shape
    return max([b for b in cfg.batch_sizes if b <= shape.batch_size], default=cfg.batch_sizes[0]), shape.input_len


def _profile(ctx: SweepContext, runtime: Runtime, deployment: Deployment, ids: torch.Tensor) -> dict[str, str]:
    """One more generation under torch.profiler (outside the measured runs); a failure is a note, not an error."""
    from bench_kernels.profiles import PROFILE_DECODE_STEPS, profile_name, record_profile

    name = profile_name(deployment.runtime, deployment.precision, deployment.gpu_count, *ids.shape)
    if deployment.gpu_count > 1:
        return {"notes": "profile not recorded: profiles cover deployments on one device"}
    try:
        record_profile(lambda timer: runtime.generate(ids, ctx.cfg.output_len, timer), ctx.device.type,
                       ctx.store.run_dir / "profiles", name, ctx.cfg.output_len)
    except Exception as err:  # noqa: BLE001 - the measured row stands without its profile
        ctx.log_failure(f"profile {name}", err)
        return {"notes": f"profile not recorded: {readable_error(err)}"}
    return {"notes": f"profile: profiles/{name}.json (prefill and {PROFILE_DECODE_STEPS} decode steps)"}


def _perplexity(ctx: SweepContext, runtime: Runtime, precision: str, loaded: LoadedModel) -> dict[str, Any]:
    """The quality row's columns (quality.perplexity_columns); a failure is a row with a readable error."""
    label = f"{runtime.name} {precision} perplexity"
    try:
        columns = perplexity_columns(runtime, precision, loaded, baseline_precision(ctx.cfg), ctx.store.rows(),
                                     ctx.cfg.perplexity_windows)
    except Exception as err:  # noqa: BLE001 - a failed score is a row, the sweep goes on
        ctx.log_failure(label, err)
        return {"status": "error", "error": readable_error(err)}
    if columns["status"] == "ok":
        delta = columns.get("ppl_delta_pct")
        ctx.progress(f"{label}: {columns['perplexity']:.3f}" + (
            f" ({delta:+.3f}% vs reference {baseline_precision(ctx.cfg)})" if delta is not None else ""))
    return columns


def _roofline(ctx: SweepContext, runtime: Runtime, stored_weight_bytes: int, batch_size: int, input_len: int,
              itl_ms_p50: float) -> dict[str, Any]:
    """Decode roofline from the measured streaming bandwidth with the one byte model (bench_kernels.roofline);
    efficiency = decode tokens/s over that bound. Beside it the bytes a decode step reads per second (decode_gbps)
    and their share of the card's specified bandwidth (mbu).

    A model split over devices counts the busiest device's share of weights and KV cache at that
    bandwidth, plus what it sends per step (tensor-parallel collectives) at the measured link bandwidth.
    On a CPU whose last-level cache holds the weights and KV cache, DRAM bandwidth bounds nothing: no figure."""
    config = runtime.loaded.config
    kv_token_bytes = runtime.kv_bytes_per_token()
    link_bytes = runtime.link_bytes_per_decode_step(batch_size)
    weight_bytes = decode_weight_bytes(stored_weight_bytes, runtime.embedding_row_bytes(), config.vocab_size,
                                       batch_size)
    step_bytes = decode_step_bytes(weight_bytes, kv_token_bytes, batch_size, input_len, ctx.cfg.output_len)
    if ctx.device.type == "cpu" and step_bytes <= last_level_cache_bytes():
        return {"notes": f"{ROOFLINE_NOT_APPLICABLE} ({step_bytes / 1e6:.1f} MB of weights and KV cache fit in "
                         f"the CPU's {last_level_cache_bytes() / 2**20:.0f} MiB last-level cache)"}
    notes = (f"roofline of the busiest device: {weight_bytes / 1e9:.2f} GB of weights, {kv_token_bytes} B of KV "
             f"cache per token, {link_bytes / 1e6:.2f} MB sent per decode step" if link_bytes else "")

    def columns(rates: DeviceRates) -> dict[str, Any]:
        return decode_columns(step_bytes, batch_size, itl_ms_p50, rates.streaming_gbps, ctx.env["gpu_name"],
                              link_bytes, runtime.link_gbps)

    first = device_rates(ctx.device.type)
    decode = columns(first)
    if decode["efficiency"] > 1.0:  # the bandwidth may have been measured while other work held the memory bus
        rates = remeasured_rates(ctx.device.type)
        ctx.env.update(copy_gbps=f"{rates.copy_gbps:.1f}", read_gbps=f"{rates.read_gbps:.1f}")  # this row's on
        decode = columns(rates)
        notes = "; ".join(filter(None, [notes, (
            f"bandwidth measured again: this row decoded faster than {first.streaming_gbps:.1f} GB/s allows, "
            f"{rates.streaming_gbps:.1f} GB/s the faster of two measurements")]))
    return {**decode, "notes": notes}


def _prefill_roofline(ctx: SweepContext, runtime: Runtime, gpu_count: int, batch_size: int, input_len: int,
                      ttft_ms_p50: float) -> dict[str, Any]:
    """Prefill against the compute roofline: its matmul FLOPs (roofline.prefill_flops) over TTFT p50, and
    that over the measured matmul rate of the precision the runtime's prefill computes in (times the GPUs that
    share each prefill: tensor-parallel ranks; GPUs that take turns compute one at a time)."""
    runtime_cls = type(runtime)
    precision = runtime_cls.prefill_compute_precision(ctx.device, runtime.precision)
    flops = prefill_flops(runtime.loaded.config, batch_size, input_len, runtime_cls.prefill_logits_every_position)
    rate = device_rates(ctx.device.type).matmul_tflops.get(precision)
    sharing = gpu_count if runtime_cls.splits_prefill_over_gpus else 1
    columns = prefill_columns(flops, ttft_ms_p50, rate, sharing)
    if rate is None:
        columns["notes"] = f"no prefill efficiency: no {precision} matmul rate was measured on this {ctx.device.type}"
    return {"prefill_precision": precision, **columns}


def _merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Column dicts merged left to right, their notes joined rather than overwritten."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    merged["notes"] = "; ".join(p["notes"] for p in parts if p.get("notes"))
    return merged


class SweepMeter:
    """A progress bar with an ETA over every shape a sweep still has to measure: drawn live on stderr when that is a
    terminal (tqdm), not at all elsewhere, so a log, a pipe or a notebook gets the result lines on their own."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="shape", desc="sweep", disable=None, leave=False, dynamic_ncols=True)

    def advance(self, shapes: int = 1) -> None:
        self.bar.update(shapes)

    def around(self, progress: ProgressFn) -> ProgressFn:
        """progress, the bar cleared while it prints a line and drawn again below it."""
        def say(message: str) -> None:
            with self.bar.external_write_mode():
                progress(message)
        return say

    def close(self) -> None:
        self.bar.close()


def run_inference_sweep(cfg: SweepConfig, runtime_name: str, progress: ProgressFn | None = None,
                        meter: SweepMeter | None = None) -> pd.DataFrame:
    """Measure every (precision, deployment, batch size, input length) of one runtime; return the whole table."""
    ctx = make_context(cfg, progress)
    for deployment in deployments(cfg, runtime_name, ctx.device):
        _measure_deployment(ctx, deployment, meter)
        _release()  # now that the deployment's model is unreferenced
    return ctx.store.load()


def measure_deployment(cfg: SweepConfig, deployment: Deployment, progress: ProgressFn | None = None) -> pd.DataFrame:
    """Every (batch size, input length) of one deployment of the sweep not yet finished, and its perplexity for
    real weights (a Ray task's work: the spec is validated and expanded once, by the driver); the whole table."""
    ctx = make_context(cfg, progress)
    _measure_deployment(ctx, deployment)
    _release()
    return ctx.store.load()


def _todo(ctx: SweepContext, deployment: Deployment, finished: set[tuple[str, ...]]) -> list[tuple[int, int]]:
    """The (batch size, input length) shapes of a deployment with no finished row yet."""
    return [(b, s) for b in ctx.cfg.batch_sizes for s in ctx.cfg.input_lens
            if row_key(_shape_key(ctx, "inference", deployment, b, s)) not in finished]


def _measure_deployment(ctx: SweepContext, deployment: Deployment, meter: SweepMeter | None = None) -> None:
    """Every (batch size, input length) of one deployment not yet finished: build once, then measure each; then,
    for real weights, its perplexity (a `quality` row)."""
    cfg, runtime_name, precision = ctx.cfg, deployment.runtime, deployment.precision
    runtime_cls = get_runtime(runtime_name)
    shapes = len(cfg.batch_sizes) * len(cfg.input_lens)
    finished = ctx.store.finished_keys()  # one read of results.csv, not one per shape
    todo = _todo(ctx, deployment, finished)
    # Random weights carry no quality figure: no perplexity row for them.
    scores = ctx.weights == "real" and row_key(_shape_key(ctx, "quality", deployment, None, None)) not in finished
    name = deployment.label
    ctx.progress(f"{name}: {shapes - len(todo)} of {shapes} shapes already done"
                 + ("" if scores or ctx.weights != "real" else "; perplexity done"))
    if not todo and not scores:
        return

    def advance(shapes_done: int = 1) -> None:
        if meter is not None:
            meter.advance(shapes_done)

    def write_quality(status: str, **columns: Any) -> None:
        ctx.store.append({**ctx.base_row("quality", runtime_name, precision, deployment.options),
                          **_shape_key(ctx, "quality", deployment, None, None), "status": status, **columns})

    def write(status: str, batch_size: int, input_len: int, samples: dict | None = None, **columns: Any) -> None:
        row = {**ctx.base_row("inference", runtime_name, precision, deployment.options),
               **_shape_key(ctx, "inference", deployment, batch_size, input_len),
               "status": status, "warmup": cfg.warmup, "repeats": cfg.repeats, **columns}
        ctx.store.append(row, samples)

    reason = unavailable(ctx, deployment)
    if reason:
        for b, s in todo:
            write("unavailable", b, s, error=reason)
        if scores:
            write_quality("unavailable", error=reason)
        ctx.progress(f"{name}: unavailable: {reason}")
        advance(len(todo))
        return
    runtime = None
    try:
        loaded = _load(ctx, deployment)
        runtime = runtime_cls(loaded, precision, ctx.device, deployment.options)
        build = runtime.prepare(cfg.batch_sizes, cfg.input_lens, cfg.output_len)
        token_ids = text_token_ids(loaded.tokenizer, load_text(cfg.prompt_file))
    except Exception as err:  # noqa: BLE001 - a runtime that cannot start fails its rows, not the sweep
        ctx.log_failure(f"prepare {name}", err)
        for b, s in todo:
            write("error", b, s, error=f"prepare failed: {readable_error(err)}")
        if scores:
            write_quality("error", error=f"prepare failed: {readable_error(err)}")
        ctx.progress(f"{name}: prepare failed: {readable_error(err)}")
        advance(len(todo))
        _release(runtime)
        return
    build_columns = _build_columns(build) if build else {}
    if build is not None:
        _record_build(ctx, deployment, build, runtime.link_gbps)
    stored_weight_bytes = runtime.weight_bytes()
    for batch_size, input_len in todo:
        label = f"{name} batch {batch_size} input {input_len}"
        log.info("%s ...", label)
        try:
            ids = make_prompts(token_ids, batch_size, input_len)
            measured = runtime.measure(ids, cfg.output_len, cfg.warmup, cfg.repeats)
            summary = measured.summary()
            columns = _merged(summary, build_columns,
                              agreement_columns(runtime, precision, ids, measured.last_output,
                                                reference_outputs_dir(ctx.store.run_dir), ctx.model_name,
                                                ctx.cfg.precisions, ctx.cfg.output_len),
                              _roofline(ctx, runtime, stored_weight_bytes, batch_size, input_len,
                                        summary["itl_ms_p50"]),
                              _prefill_roofline(ctx, runtime, deployment.gpu_count, batch_size, input_len,
                                                summary["ttft_ms_p50"]))
            if cfg.profile and (batch_size, input_len) == _workload_shape(cfg):
                columns = _merged(columns, _profile(ctx, runtime, deployment, ids))
            write("ok", batch_size, input_len, measured.samples(), link_gbps=runtime.link_gbps, **columns)
            ctx.progress(f"{label}: {summary['tokens_per_s']:.1f} tokens/s, "
                         f"TTFT p50 {summary['ttft_ms_p50']:.1f} ms, ITL p50 {summary['itl_ms_p50']:.1f} ms")
            advance()
        except Exception as err:  # noqa: BLE001 - e.g. out of memory: a row with the message, sweep goes on
            ctx.log_failure(label, err)
            write("error", batch_size, input_len, error=readable_error(err))
            ctx.progress(f"{label}: error: {readable_error(err)}")
            advance()
            _release()
    if scores:  # after the timed shapes: scoring's long windows must not perturb them
        write_quality(**_perplexity(ctx, runtime, precision, loaded))
    _release(runtime)


def run_sweeps(cfg: SweepConfig, progress: ProgressFn | None = None) -> pd.DataFrame:
    """Every runtime of the sweep in turn, the reference first (the others' quality is measured against its
    outputs and perplexity); return the whole table."""
    ctx = make_context(cfg, progress)
    finished = ctx.store.finished_keys()
    meter = SweepMeter(sum(len(_todo(ctx, deployment, finished)) for runtime_name in cfg.runtimes
                           for deployment in deployments(cfg, runtime_name, ctx.device)))
    said = meter.around(ctx.progress)
    results = ctx.store.load()
    try:
        for runtime_name in sorted(cfg.runtimes, key=lambda name: name != "reference"):
            results = run_inference_sweep(cfg, runtime_name, said, meter)
    finally:
        meter.close()
    return results


def model_summary(cfg: SweepConfig) -> dict[str, Any]:
    """Architecture fields of the sweep's model, without loading weights."""
    from bench_kernels.models import describe_config

    return {"model": model_display_name(cfg.model), "weights": "random" if cfg.model.startswith("preset:") else "real",
            **describe_config(resolve_model_config(cfg.model))}
