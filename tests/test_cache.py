"""The cache cleans itself: temporaries of killed writers go at the next start, `bench-kernels cache` lists and
cleans entries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bench_kernels.paths import cache_dir, temporary_dir

COMMAND = str(Path(sys.executable).with_name("bench-kernels"))
# A writer as the ONNX export is one: a temporary_dir in the cache's onnx/ folder, a file half written into it;
# then it waits to be killed.
WRITER = """
from bench_kernels.paths import cache_dir, temporary_dir
tmp = temporary_dir(cache_dir("onnx"), "tiny-fp32-export")
(tmp / "model.onnx").write_bytes(b"x" * 300_000)
print(tmp, flush=True)
import time
time.sleep(600)
"""


def killed_writer(cache: Path) -> Path:
    """The temporary folder of a real writer process killed with SIGKILL mid-write."""
    env = {**os.environ, "BENCH_KERNELS_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    folder = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert folder.is_dir() and folder.parent == cache / "onnx"
    return folder


def cache_command(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, "cache", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BENCH_KERNELS_CACHE": str(cache)})


def test_cache_lists_and_cleans_what_a_killed_export_left(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    left = killed_writer(cache)
    (cache / "awq").mkdir()
    (cache / "awq" / "tiny-fp32.pt").write_bytes(b"y" * 200_000)
    listed = cache_command(cache)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if left.name in line)
    assert line.split()[:3] == ["temporary", "0.3", "MB"] and "which no longer runs (killed)" in line
    assert any(line.startswith("awq") and "AWQ scales" in line for line in listed.stdout.splitlines())
    assert listed.stdout.splitlines()[-1] == f"{cache}: 2 entries, 0.5 MB"

    refused = cache_command(cache, "clean")
    assert refused.returncode == 1 and "removes nothing without --kind" in refused.stderr and left.is_dir()
    cleaned = cache_command(cache, "clean", "--kind", "temporary")
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"removed temporary {left.name} (0.3 MB)" in cleaned.stdout and not left.exists()
    assert (cache / "awq" / "tiny-fp32.pt").is_file()
    assert cache_command(cache, "clean", "--older-than", "1").stdout.endswith("0 entries removed, 0.0 MB freed\n")
    assert cache_command(cache, "clean", "--all").returncode == 0 and not (cache / "awq" / "tiny-fp32.pt").exists()


def test_the_next_start_removes_a_killed_writers_folder_and_keeps_a_live_one(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    left = killed_writer(cache)
    monkeypatch.setenv("BENCH_KERNELS_CACHE", str(cache))
    live = temporary_dir(cache / "onnx", "still-writing")  # this process's own: its writer runs
    assert cache_dir("onnx") == cache / "onnx"
    assert not left.exists() and live.is_dir()
