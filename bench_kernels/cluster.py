"""Sweeps on a Ray cluster: every deployment of a sweep (runtime, precision and, for the compiled runtime,
tensor-parallel degree) is one Ray task that asks for the GPUs it uses.

Each task runs the same build and sweep functions as a serial run, restricted to its deployment, and writes
its rows into the one results folder through ResultsStore (locked across processes), so a killed run
resumes like a serial one. On a cluster of several machines that folder must be on a filesystem every
node mounts at the same path; a task that cannot see the driver's folder fails instead of writing
elsewhere. Tasks of other runtimes start once the reference runtime's tasks are done, because their
quality columns compare with its outputs.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict
from typing import Any, Callable

import pandas as pd

from bench_kernels.config import ConfigError, SweepConfig, parse_config
from bench_kernels.paths import resolve_project_path
from bench_kernels.results import ResultsStore

log = logging.getLogger(__name__)

MARKER = ".ray-driver"  # written by the driver into the results folder; each task checks it sees it


def _deployment_task(params: dict[str, Any], marker: str, skip_build: bool, *_after: Any) -> dict[str, Any]:
    """One deployment's build and inference rows (a Ray task body; `_after` are the tasks it waits for)."""
    from bench_kernels.provenance import pick_device
    from bench_kernels.errors import readable_error
    from bench_kernels.sweep import deployments, run_build_stage, run_inference_sweep

    cfg = parse_config(params, "<ray task>")
    deployment = deployments(cfg, cfg.runtimes[0], pick_device(cfg.device))[0]
    label = deployment.label
    seen = cfg.run_dir / MARKER
    if not seen.is_file() or seen.read_text() != marker:
        return {"deployment": label, "error": f"this node does not see the driver's results folder {cfg.run_dir} "
                                              "(it must be on a filesystem shared by every node)"}
    try:
        if not skip_build:
            run_build_stage(cfg)
        rows = run_inference_sweep(cfg, cfg.runtimes[0])
    except Exception as err:  # noqa: BLE001 - the driver reports it; the other deployments go on
        log.exception("deployment %s failed", label)
        return {"deployment": label, "error": readable_error(err)}
    mine = rows[(rows.runtime == deployment.runtime) & (rows.precision == deployment.precision)
                & (rows.gpu_count == deployment.gpu_count)]
    return {"deployment": label, "error": None, "statuses": mine.status.value_counts().to_dict()}


def deployment_params(cfg: SweepConfig, gpu_device_type: str) -> list[tuple[dict[str, Any], int]]:
    """(sweep spec restricted to one deployment, GPUs it asks for) for every deployment of the sweep, with
    paths absolute so a task resolves them the same anywhere."""
    import torch

    from bench_kernels.sweep import deployments

    base = cfg.model_dump()
    base["reports_dir"] = str(cfg.run_dir.parent)
    if cfg.prompt_file:
        base["prompt_file"] = str(resolve_project_path(cfg.prompt_file))
    out = []
    for runtime in cfg.runtimes:
        for deployment in deployments(cfg, runtime, torch.device(gpu_device_type)):
            gpus = deployment.gpu_count if gpu_device_type == "cuda" else 0
            if gpu_device_type == "cuda" and gpus == 0:
                raise ConfigError(f"{runtime}: set how many GPUs it uses in runtime_options (this machine sees none, "
                                  "so it cannot tell how many a task should ask Ray for)")
            params = {**base, "runtimes": [runtime], "precisions": [deployment.precision], "precisions_by_runtime": {},
                      "runtime_options": {**cfg.runtime_options, runtime: asdict(deployment.options)}}
            out.append((params, gpus))
    return out


def run_sweeps_on_ray(cfg: SweepConfig, address: str | None = None, *, skip_build: bool = False,
                      progress: Callable[[str], None] | None = None, **init_options: Any) -> pd.DataFrame:
    """Run every deployment of the sweep as a Ray task on the cluster at `address` (None: a local Ray instance
    started here, and stopped at the end); return the whole results table. init_options go to ray.init."""
    import ray

    from bench_kernels.provenance import git_sha

    progress = progress or log.info
    started_here = not ray.is_initialized()
    if started_here:
        # The tasks' rows carry this checkout's commit, wherever they run.
        runtime_env = {"env_vars": {"BENCH_KERNELS_GIT_SHA": git_sha()}} if git_sha() else None
        ray.init(address=address, include_dashboard=False, runtime_env=runtime_env, **init_options)
    try:
        uses_gpus = cfg.device == "cuda" or (cfg.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        store = ResultsStore(cfg.run_dir)
        marker = secrets.token_hex(8)
        (store.run_dir / MARKER).write_text(marker)
        task = ray.remote(max_retries=0)(_deployment_task)
        reference_tasks: list[Any] = []
        pending = []
        for params, gpus in sorted(deployment_params(cfg, "cuda" if uses_gpus else "cpu"),
                                   key=lambda item: item[0]["runtimes"][0] != "reference"):
            after = [] if params["runtimes"][0] == "reference" else reference_tasks
            # CPU deployments of several ranks use one core per rank.
            cpus = 1 if gpus else max(1, params["runtime_options"].get(params["runtimes"][0], {})
                                      .get("tensor_parallel", 1))
            ref = task.options(num_gpus=gpus, num_cpus=cpus).remote(params, marker, skip_build, *after)
            (reference_tasks if params["runtimes"][0] == "reference" else pending).append(ref)
        pending = reference_tasks + pending
        progress(f"ray: {len(pending)} deployments submitted to {ray.get_runtime_context().gcs_address}")
        failures = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            if result["error"]:
                failures.append(f"{result['deployment']}: {result['error']}")
            progress(f"ray: {result['deployment']}: {result['error'] or result['statuses']}")
        for failure in failures:
            log.warning("ray deployment failed: %s", failure)
        return store.load()
    finally:
        if started_here:
            ray.shutdown()
