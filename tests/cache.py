"""The tests' own cache (the converted embedded model, ONNX exports, AWQ scales), never the user's
~/.cache/bench_kernels: $BENCH_KERNELS_TEST_CACHE, else ~/.cache/bench_kernels-tests."""

from __future__ import annotations

import os
from pathlib import Path


def use_test_cache() -> Path:
    """Point BENCH_KERNELS_CACHE (read by bench_kernels.paths.cache_dir, inherited by subprocesses) at the tests'
    cache."""
    folder = Path(os.environ.get("BENCH_KERNELS_TEST_CACHE") or Path.home() / ".cache" / "bench_kernels-tests")
    os.environ["BENCH_KERNELS_CACHE"] = str(folder.expanduser())
    return folder
