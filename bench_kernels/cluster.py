"""Sweeps on a Ray cluster: every deployment of a sweep (runtime, precision and, for the compiled runtime,
tensor-parallel degree) is one Ray task that asks for the GPUs it uses.

Each task runs the same build and measure functions as a serial run on its one deployment (the driver validates
and expands the spec once and sends each task the spec and its deployment), and writes
its rows into the one results folder through ResultsStore (locked across processes), so a killed run
resumes like a serial one. On a cluster of several machines that folder must be on a filesystem every
node mounts at the same path; a task that cannot see the driver's folder fails instead of writing
elsewhere. Tasks of other runtimes start once the reference runtime's tasks are done, because their
quality columns compare with its outputs.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Callable

import pandas as pd

from bench_kernels.config import ConfigError, SweepConfig, parse_config
from bench_kernels.deployments import Deployment, deployments
from bench_kernels.paths import resolve_project_path
from bench_kernels.results import ResultsStore

log = logging.getLogger(__name__)

MARKER = ".ray-driver"  # written by the driver into the results folder; each task checks it sees it


def _deployment_task(cfg: SweepConfig, deployment: Deployment, marker: str, skip_build: bool,
                     *_after: Any) -> dict[str, Any]:
    """One deployment's build and inference rows (a Ray task body; `_after` are the tasks it waits for)."""
    from bench_kernels.errors import readable_error
    from bench_kernels.sweep import build_deployment, measure_deployment

    label = deployment.label
    seen = cfg.run_dir / MARKER
    if not seen.is_file() or seen.read_text() != marker:
        return {"deployment": label, "error": f"this node does not see the driver's results folder {cfg.run_dir} "
                                              "(it must be on a filesystem shared by every node)"}
    try:
        if not skip_build:
            build_deployment(cfg, deployment)
        rows = measure_deployment(cfg, deployment)
    except Exception as err:  # noqa: BLE001 - the driver reports it; the other deployments go on
        log.exception("deployment %s failed", label)
        return {"deployment": label, "error": readable_error(err)}
    mine = rows[(rows.runtime == deployment.runtime) & (rows.precision == deployment.precision)
                & (rows.gpu_count == deployment.gpu_count)]
    return {"deployment": label, "error": None, "statuses": mine.status.value_counts().to_dict()}


def task_spec(cfg: SweepConfig) -> SweepConfig:
    """The spec with its paths absolute, so a task on any node resolves them the same."""
    data = cfg.model_dump()
    data["reports_dir"] = str(cfg.run_dir.parent)
    if cfg.prompt_file:
        data["prompt_file"] = str(resolve_project_path(cfg.prompt_file))
    return parse_config(data, "<ray driver>")


def cluster_deployments(cfg: SweepConfig, gpu_device_type: str) -> list[tuple[Deployment, int]]:
    """(deployment, GPUs its task asks for) for every deployment of the sweep, the reference's first."""
    import torch

    out = []
    for runtime in sorted(cfg.runtimes, key=lambda name: name != "reference"):
        for deployment in deployments(cfg, runtime, torch.device(gpu_device_type)):
            gpus = deployment.gpu_count if gpu_device_type == "cuda" else 0
            if gpu_device_type == "cuda" and gpus == 0:
                raise ConfigError(f"{runtime}: set how many GPUs it uses in runtime_options (this machine sees none, "
                                  "so it cannot tell how many a task should ask Ray for)")
            out.append((deployment, gpus))
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
        spec = task_spec(cfg)
        for deployment, gpus in cluster_deployments(cfg, "cuda" if uses_gpus else "cpu"):
            after = [] if deployment.runtime == "reference" else reference_tasks
            # CPU deployments of several ranks use one core per rank.
            cpus = 1 if gpus else max(1, deployment.gpu_count)
            ref = task.options(num_gpus=gpus, num_cpus=cpus).remote(spec, deployment, marker, skip_build, *after)
            (reference_tasks if deployment.runtime == "reference" else pending).append(ref)
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
