"""The processes of a tensor-parallel deployment: the coordinator (coordinator.py) starts one per rank and joins
them itself.

Each rank is a fresh Python process running this module's serve_rank (RANK_PROGRAM: the caller's script is
never imported again) with its own device (cuda:<rank>, or the CPU), in one torch.distributed group (NCCL
on GPUs, gloo on the CPU) rendezvousing through a file, so no port is needed. Each rank runs a
SingleProcessRuntime on its part of the model and answers every command the coordinator sends, the
collectives keeping the ranks in step. A rank that fails, dies or does not answer in time stops the whole
group with a readable error; nothing waits forever.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_kernels
from bench_kernels.runtimes.compiled.single_process import SingleProcessRuntime

log = logging.getLogger(__name__)

# How long a rank may take to exit once told to stop, before it is killed.
STOP_GRACE_S = 10.0
# A rank's whole program (`python -c`): serve_rank on the pipe end whose file descriptor is its one argument.
RANK_PROGRAM = ("import multiprocessing.connection, sys; from {module} import serve_rank; "
                "serve_rank(multiprocessing.connection.Connection(int(sys.argv[1])))")


@dataclass(frozen=True)
class RankRequest:
    """What every rank needs to build its part of the deployment."""

    model: str
    seed: int
    precision: str
    device_type: str
    options: Any  # CompiledOptions with a single tensor_parallel degree
    cpu_threads: int


def _send(conn: multiprocessing.connection.Connection, message: Any) -> None:
    # Plain pickle: tensors go by value. Connection.send would pass them as shared memory through
    # torch.multiprocessing's reducers, which only processes started by multiprocessing can accept.
    conn.send_bytes(pickle.dumps(message))


def _receive(conn: multiprocessing.connection.Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


class RankFailure(RuntimeError):
    """A rank raised, exited or did not answer; the group has been stopped."""

    def __init__(self, message: str, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory


def _die_with_parent() -> None:
    """Linux: the kernel kills this rank when the sweep's process dies (a killed sweep leaves no GPU held)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _failure(err: BaseException) -> dict[str, Any]:
    import torch

    from bench_kernels.errors import readable_error

    return {"error": readable_error(err), "traceback": "".join(traceback.format_exception(err)),
            "out_of_memory": isinstance(err, torch.OutOfMemoryError)}


def _start_rank(rank: int, world: int, store_path: str, request: RankRequest,
                timeout_s: float) -> tuple[SingleProcessRuntime, dict[str, Any]]:
    """Join the group, measure the link, load and pack this rank's part; returns (runtime, facts)."""
    import torch
    import torch.distributed as dist

    from bench_kernels.rates import all_reduce_bus_gbps, all_reduce_latency_us
    from bench_kernels.models import load_model
    from bench_kernels.runtimes.compiled.sharding import Shard

    if request.device_type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(request.cpu_threads)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.FileStore(store_path, world), rank=rank, world_size=world,
                            timeout=dt.timedelta(seconds=timeout_s),
                            **({"device_id": device} if device.type == "cuda" else {}))
    link_gbps = all_reduce_bus_gbps(device, world)
    shard = Shard(rank, world, dist.group.WORLD.group_name)
    loaded = load_model(request.model, request.precision, device, request.seed, placement="streamed")
    runtime = SingleProcessRuntime(loaded, request.precision, device, request.options, shard=shard)
    start = time.perf_counter()
    runtime.pack()
    pack_s = time.perf_counter() - start
    static = runtime.static
    # A decode step at batch 1: two all-reduces of one token's hidden state per layer.
    step_all_reduces = 2 * static.args.num_layers
    all_reduce_us = all_reduce_latency_us(device, static.args.hidden_size, static.embed.dtype, step_all_reduces)
    facts = {"backend": backend, "link_gbps": link_gbps, "all_reduce_us": all_reduce_us,
             "step_all_reduces": step_all_reduces, "pack_s": pack_s,
             "weight_bytes": static.weight_bytes(), "kv_bytes_per_token": static.kv_bytes_per_token(),
             "link_bytes_per_token": static.link_bytes_per_token()}
    return runtime, facts


def serve_rank(conn: multiprocessing.connection.Connection) -> None:
    """A rank's process: read its place, start, then run each (method, args) the coordinator sends until told
    to stop."""
    _die_with_parent()
    runtime = None
    try:
        rank, world, store_path, request, timeout_s = _receive(conn)
        runtime, facts = _start_rank(rank, world, store_path, request, timeout_s)
        _send(conn, ("ok", facts))
        while True:
            try:
                method, args = _receive(conn)
            except EOFError:  # the coordinator is gone
                return
            if method == "stop":
                return
            try:
                _send(conn, ("ok", getattr(runtime, method)(*args)))
            except Exception as err:  # noqa: BLE001 - the coordinator turns it into a row and stops the group
                _send(conn, ("error", _failure(err)))
    except Exception as err:  # noqa: BLE001 - a rank that cannot start says why
        _send(conn, ("error", _failure(err)))
    finally:
        import torch.distributed as dist

        if runtime is not None:
            runtime.close()
        if dist.is_initialized():
            dist.destroy_process_group()


class TensorParallelGroup:
    """The ranks of one deployment, started by `start` and stopped by `stop` (also on any failure)."""

    def __init__(self, request: RankRequest, world: int, timeout_s: float):
        self.request, self.world, self.timeout_s = request, world, timeout_s
        self.processes: list[subprocess.Popen] = []
        self.connections: list[multiprocessing.connection.Connection] = []
        self.folder: Path | None = None

    @property
    def running(self) -> bool:
        return bool(self.processes)

    def start(self) -> list[dict[str, Any]]:
        """Start the ranks and wait until each has joined the group and packed its weights; their facts."""
        self.folder = Path(tempfile.mkdtemp(prefix="bench-kernels-tp-"))
        store_path = str(self.folder / "rendezvous")
        # The ranks import this very package, wherever it was imported from.
        package_root = str(Path(bench_kernels.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                          if p)}
        for rank in range(self.world):
            parent_end, child_end = multiprocessing.Pipe()
            process = subprocess.Popen([sys.executable, "-c", RANK_PROGRAM.format(module=__name__),
                                        str(child_end.fileno())], env=env, pass_fds=[child_end.fileno()])
            child_end.close()
            _send(parent_end, (rank, self.world, store_path, self.request, self.timeout_s))
            self.processes.append(process)
            self.connections.append(parent_end)
        return self._answers("start")

    def call(self, method: str, *args: Any) -> list[Any]:
        """Run runtime.method(*args) on every rank; every rank's result, in rank order."""
        if not self.running:
            raise RankFailure("the tensor-parallel ranks are not running")
        for connection in self.connections:
            _send(connection, (method, args))
        return self._answers(method)

    def _answers(self, what: str) -> list[Any]:
        """Each rank's answer, or RankFailure (and the group stopped) on the first error, exit or timeout."""
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + self.timeout_s
        while len(answers) < self.world:
            waiting = [r for r in range(self.world) if r not in answers]
            if time.monotonic() > deadline:
                self.stop()
                raise RankFailure(f"tensor-parallel ranks {waiting} did not finish {what} within {self.timeout_s:.0f} s"
                                  " (runtime_options compiled.worker_timeout_s); the ranks were stopped")
            # A dead rank's end of the pipe reads as end-of-file, so waiting on the pipes also sees exits.
            ready = multiprocessing.connection.wait([self.connections[r] for r in waiting], timeout=1.0)
            for rank in waiting:
                if self.connections[rank] not in ready:
                    continue
                try:
                    status, value = _receive(self.connections[rank])
                except EOFError:
                    code = self.processes[rank].wait()
                    self.stop()
                    raise RankFailure(f"rank {rank} of {self.world} exited with code {code} during {what}") from None
                if status == "error":
                    self.stop()
                    log.warning("rank %d failed in %s:\n%s", rank, what, value["traceback"])
                    raise RankFailure(f"rank {rank} of {self.world} failed in {what}: {value['error']}",
                                      out_of_memory=value["out_of_memory"])
                answers[rank] = value
        return [answers[r] for r in range(self.world)]

    def stop(self) -> None:
        """Tell the ranks to stop, kill those that do not, and remove the rendezvous folder."""
        for connection in self.connections:
            try:
                _send(connection, ("stop", ()))
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for connection in self.connections:
            connection.close()
        self.processes, self.connections = [], []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

