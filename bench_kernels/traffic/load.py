"""Measured load runs: requests issued on their arrival schedule to a runtime serving them in-process with its
batching policy; each request's arrival, first token and last token timestamped on the host clock.

Rows (stage `load`, one per runtime x precision x policy x arrival setting) go to results.csv, every request to
requests.jsonl beside it. Output lengths are fixed (EOS ignored), as in the offline sweep. A run is bounded by the
spec's duration_s and request count; requests still queued when the schedule ends are served and counted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from bench_kernels.config import SweepConfig
from bench_kernels.errors import readable_error
from bench_kernels.provenance import pick_device, provenance
from bench_kernels.timing import StepTimer
from bench_kernels.models import model_display_name, resolve_model_config
from bench_kernels.results import ResultsStore, row_key
from bench_kernels.runtimes import Runtime, get_runtime
from bench_kernels.traffic.arrivals import Request, closed_loop_requests, requests_at_rate
from bench_kernels.traffic.latency import REQUESTS_FILE, RequestTiming, summarize
from bench_kernels.traffic.policies import Arrivals, ContinuousBatching, Policy, StaticBatching, make_policy
from bench_kernels.traffic.spec import TrafficSpec, parse_traffic
from bench_kernels.workload import load_text, make_prompts, text_token_ids

log = logging.getLogger(__name__)

# TensorRT's optimisation profiles are ranges (a shape inside runs as it is); other built runtimes run the exact
# shapes they captured, so a batch is padded up to one.
PADS_TO_BUILT_SHAPES = {"tensorrt": False}
# Requests served before the timed load (not recorded): the first batch pays one-time costs (allocation, the
# continuous batching manager's cache, first kernels).
WARMUP_REQUESTS = 2

ProgressFn = Callable[[str], None]


def policy_for(runtime_cls: type[Runtime], spec: TrafficSpec, cfg: SweepConfig) -> Policy:
    """The runtime's batching policy under this traffic: the spec's choice for it, else the runtime's default."""
    name = spec.policies.get(runtime_cls.name, runtime_cls.batching_policies[0])
    return make_policy(name, spec.batching, built_batch_sizes=cfg.batch_sizes, built_input_lens=cfg.input_lens,
                       pads=PADS_TO_BUILT_SHAPES.get(runtime_cls.name, True))


def arrival_settings(spec: TrafficSpec) -> list[tuple[str, float | None, int | None]]:
    """(label, Poisson rate, concurrency) of each load run the spec asks for."""
    if spec.arrivals == "concurrency":
        return [(f"concurrency {n}", None, n) for n in spec.concurrency]
    return [(f"poisson {rate:g}/s", rate, None) for rate in spec.load_rates_per_s]


def serve_batches(runtime: Runtime, policy: StaticBatching, arrivals: Arrivals, token_ids: list[int],
                  clock: Callable[[], float]) -> list[RequestTiming]:
    """Static or shape-limited batching in real time: wait for the policy's launch, run the padded batch to
    completion with runtime.generate, repeat. A padded row is computed in full (the cost of padding)."""
    queue: list[Request] = []
    done: list[RequestTiming] = []
    while True:
        now = clock()
        queue += arrivals.arrived(now)
        upcoming = arrivals.next_arrival_s()
        if not queue:
            if upcoming is None:
                return done
            time.sleep(max(upcoming - now, 0.0))
            continue
        launch = policy.launch_at(queue, now)
        if launch > now:
            time.sleep(max(min(launch, upcoming if upcoming is not None else launch) - now, 0.0))
            continue
        batch = policy.take(queue)
        shape = policy.shape(batch)
        output_len = max(r.output_len for r in batch)
        ids = make_prompts(token_ids, shape.batch_size, shape.input_len)
        timer = StepTimer(runtime.device)
        start = clock()
        runtime.generate(ids, output_len, timer)
        last = clock()  # generate returns the tokens on the host: every token is out
        first = start + timer.offsets_ms()[0] / 1e3
        done += [RequestTiming(r.index, r.arrival_s, first, last, r.input_len, r.output_len, len(batch))
                 for r in batch]
        arrivals.finished(len(batch), last)


def continuous_manager(runtime: Runtime, spec: TrafficSpec, output_len: int, max_total_len: int) -> Any:
    """transformers' ContinuousBatchingManager over the runtime's model, configured as a user would: greedy, at most
    max_batch requests per step, a paged KV cache sized for max_batch requests of max_total_len tokens (not the
    default 90% of free memory), the attention the model was loaded with, CUDA graphs left to transformers."""
    import inspect

    from transformers import ContinuousBatchingConfig, GenerationConfig

    hf_model = runtime.loaded.hf_model
    page_size = 256
    wanted = {"max_requests_per_batch": spec.batching.max_batch, "page_size": page_size,
              "num_blocks": math.ceil(max_total_len / page_size) * spec.batching.max_batch + 2,
              "auto_switch_to_flash": False}
    accepted = inspect.signature(ContinuousBatchingConfig).parameters
    dropped = sorted(set(wanted) - set(accepted))
    if dropped:  # an older transformers: its defaults stand for what it lacks
        log.warning("this transformers' ContinuousBatchingConfig has no %s; left at its defaults", ", ".join(dropped))
    config = ContinuousBatchingConfig(**{k: v for k, v in wanted.items() if k in accepted})
    generation = GenerationConfig(max_new_tokens=output_len, do_sample=False)
    return hf_model.init_continuous_batching(generation_config=generation, continuous_batching_config=config)


def serve_continuous(manager: Any, arrivals: Arrivals, token_ids: list[int], clock: Callable[[], float],
                     t0: float, timeout_s: float) -> list[RequestTiming]:
    """Continuous batching in real time: each request added to the running manager at its arrival; its first and
    last token times are the manager's own per-token timestamps (time.perf_counter, the clock t0 is read on)."""
    in_flight: dict[str, Request] = {}
    done: list[RequestTiming] = []
    deadline = clock() + timeout_s
    while not arrivals.exhausted or in_flight:
        now = clock()
        if now > deadline:
            raise TimeoutError(f"continuous batching load did not finish in {timeout_s:.0f} s "
                               f"({len(in_flight)} requests still in flight)")
        for request in arrivals.arrived(now):
            prompt = make_prompts(token_ids, 1, request.input_len)[0].tolist()
            request_id = manager.add_request(prompt, request_id=f"r{request.index}", max_new_tokens=request.output_len,
                                             record_timestamps=True, eos_token_id=-1)  # -1: EOS never ends one
            in_flight[request_id] = request
        upcoming = arrivals.next_arrival_s()
        wait_s = 0.05 if upcoming is None else min(max(upcoming - clock(), 0.0), 0.05)
        if not in_flight:
            time.sleep(wait_s)
            continue
        result = manager.get_result(timeout=wait_s)
        if result is None or not result.is_finished():
            continue
        if result.error:
            raise RuntimeError(f"continuous batching request {result.request_id} failed: {result.error}")
        request = in_flight.pop(result.request_id)
        stamps = [s - t0 for s in result.timestamps]
        done.append(RequestTiming(request.index, request.arrival_s, stamps[0], stamps[-1], request.input_len,
                                  len(result.generated_tokens), len(in_flight) + 1))
        arrivals.finished(1, clock())
    return done


def serve(runtime: Runtime, policy: Policy, requests: list[Request], token_ids: list[int], spec: TrafficSpec,
          concurrency: int | None, manager: Any = None) -> list[RequestTiming]:
    """Every request served under policy; times in seconds from the load's start."""
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    arrivals = Arrivals(requests, concurrency=concurrency)
    if isinstance(policy, ContinuousBatching):
        return serve_continuous(manager, arrivals, token_ids, clock, t0, timeout_s=10 * spec.duration_s + 300)
    return serve_batches(runtime, policy, arrivals, token_ids, clock)


def append_requests(run_dir: Path, key: dict[str, Any], timings: list[RequestTiming]) -> None:
    """Per-request samples of one load row: one JSON line each, tagged with this load's id, appended in one write
    (a kill tears at most the last line)."""
    load_id = time.time_ns()
    lines = "".join(json.dumps({"key": key, "load_id": load_id, **t.record()}) + "\n" for t in timings)
    fd = os.open(run_dir / REQUESTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def run_load_stage(cfg: SweepConfig, progress: ProgressFn | None = None) -> None:
    """Every load run the sweep's traffic asks for, skipping finished rows; nothing without a traffic key."""
    spec = parse_traffic(cfg.traffic)
    if spec is None or not spec.measure:
        return
    progress = progress or log.info
    device = pick_device(cfg.device)
    store = ResultsStore(cfg.run_dir)
    env = provenance(device)
    targets = cfg.targets
    output_len = spec.output_len or cfg.output_len
    model_name = model_display_name(cfg.model)
    for runtime_name in spec.runtimes or cfg.runtimes:
        runtime_cls = get_runtime(runtime_name)
        for precision in cfg.precisions_for(runtime_name):
            for options in runtime_cls.shard_options(cfg.options_for(runtime_name)):
                _load_runtime(cfg, spec, store, env, device, runtime_cls, precision, options, model_name,
                              output_len, targets, progress)


def _load_runtime(cfg: SweepConfig, spec: TrafficSpec, store: ResultsStore, env: dict[str, str],
                  device: torch.device, runtime_cls: type[Runtime], precision: str, options: Any, model_name: str,
                  output_len: int, targets: Any, progress: ProgressFn) -> None:
    """The load runs of one runtime x precision x options: load and build once, then each arrival setting."""
    policy_name = policy_for(runtime_cls, spec, cfg).name
    gpu_count = runtime_cls.gpu_count(options, device)
    base = {"run_name": cfg.run_name, "stage": "load", "runtime": runtime_cls.name, "model": model_name,
            "weights": "random" if cfg.model.startswith("preset:") else "real", "precision": precision,
            "gpu_count": gpu_count, "batch_size": spec.batching.max_batch, "output_len": output_len,
            "policy": f"{policy_name} max_batch={spec.batching.max_batch}"
                      + (f" max_wait_ms={spec.batching.max_wait_ms:g}" if policy_name != "continuous" else ""),
            "runtime_version": runtime_cls.version(device), **runtime_cls.facts(), **env,
            "runtime_options": ", ".join(f"{k}={v}" for k, v in asdict(options).items()),
            "input_len": spec.lengths.input_len if spec.lengths.kind == "fixed" else None}
    finished = store.finished_keys()
    todo = [s for s in arrival_settings(spec) if row_key({**base, "arrivals": s[0]}) not in finished]
    label = f"load {runtime_cls.name} {precision} {policy_name}"
    if not todo:
        progress(f"{label}: every load run already done, kept")
        return
    reason = (None if precision in runtime_cls.precisions else f"{runtime_cls.name} does not run {precision}") \
        or runtime_cls.unavailable_reason(device, precision) or runtime_cls.options_unavailable_reason(
            options, device, resolve_model_config(cfg.model))
    if reason:
        for arrivals, _, _ in todo:
            store.append({**base, "arrivals": arrivals, "status": "unavailable", "error": reason})
        progress(f"{label}: unavailable: {reason}")
        return
    runtime = manager = None
    try:
        loaded = runtime_cls.load(cfg.model, precision, device, cfg.seed, options)
        runtime = runtime_cls(loaded, precision, device, options)
        runtime.prepare(cfg.batch_sizes, cfg.input_lens, output_len)
        token_ids = text_token_ids(loaded.tokenizer, load_text(cfg.prompt_file))
        max_input_len = loaded.config.max_position_embeddings - output_len
        if policy_name == "continuous":
            longest = spec.lengths.input_len or spec.lengths.max_len or max(cfg.input_lens)
            manager = continuous_manager(runtime, spec, output_len, min(longest, max_input_len) + output_len)
            manager.start()
        warm = closed_loop_requests(spec.model_copy(update={"requests": WARMUP_REQUESTS}), output_len,
                                    max_input_len=max_input_len)
        serve(runtime, policy_for(runtime_cls, spec, cfg), warm, token_ids, spec, 1, manager)
    except Exception as err:  # noqa: BLE001 - a runtime that cannot start fails its load rows, not the sweep
        _log_failure(store, label, err)
        for arrivals, _, _ in todo:
            store.append({**base, "arrivals": arrivals, "status": "error", "error": f"prepare failed: "
                          f"{readable_error(err)}"})
        progress(f"{label}: prepare failed: {readable_error(err)}")
        _close(runtime, manager)
        return
    for arrivals, rate, concurrency in todo:
        row = {**base, "arrivals": arrivals, "request_rate_per_s": rate, "duration_s": spec.duration_s}
        try:
            requests = (requests_at_rate(spec, rate, output_len, max_input_len=max_input_len) if rate is not None
                        else closed_loop_requests(spec, output_len, max_input_len=max_input_len))
            timings = serve(runtime, policy_for(runtime_cls, spec, cfg), requests, token_ids, spec, concurrency,
                            manager)
            summary = summarize(timings, ttft_ms=targets.ttft_ms, tpot_ms=targets.tpot_ms)
            row.update(status="ok", requests=summary["requests"], duration_s=summary["span_s"],
                       request_rate_per_s=rate if rate is not None else summary["achieved_rate_per_s"],
                       **{k: summary[k] for k in ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99",
                                                  "latency_ms_p50", "latency_ms_p99", "tokens_per_s",
                                                  "achieved_rate_per_s", "offered_rate_per_s",
                                                  "completion_rate_per_s", "goodput_per_s", "slo_attainment")},
                       notes=f"{len(timings)} requests; per-request samples in {REQUESTS_FILE}")
            append_requests(store.run_dir, {k: row.get(k) for k in ("stage", "runtime", "model", "precision",
                                                                    "gpu_count", "batch_size", "input_len",
                                                                    "output_len", "policy", "arrivals")},
                            timings)
            progress(f"{label} {arrivals}: {len(timings)} requests, TTFT p99 {summary['ttft_ms_p99']:,.0f} ms, "
                     f"TPOT p99 {summary['tpot_ms_p99']:,.1f} ms, {summary['achieved_rate_per_s']:.2f} requests/s")
        except Exception as err:  # noqa: BLE001 - a failed load run is a row, the others go on
            _log_failure(store, f"{label} {arrivals}", err)
            row.update(status="error", error=readable_error(err))
            progress(f"{label} {arrivals}: error: {readable_error(err)}")
        store.append(row)
    _close(runtime, manager)


def _close(runtime: Runtime | None, manager: Any) -> None:
    if manager is not None:
        manager.stop(block=True)
    if runtime is not None:
        runtime.close()


def _log_failure(store: ResultsStore, what: str, err: BaseException) -> None:
    with (store.run_dir / "errors.log").open("a", encoding="utf-8") as handle:
        handle.write(f"--- {what}\n{''.join(traceback.format_exception(err))}\n")
