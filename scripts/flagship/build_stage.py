"""The sweep's build stage alone, for every shape of a spec: build_stage.py SPEC REPORTS_DIR. Run before a
one-shape sweep of the same runtimes, whose own build would otherwise become the build row (one shape's compile)."""
import sys
from pathlib import Path

from bench_kernels.config import load_config
from bench_kernels.sweep import run_build_stage

run_build_stage(load_config(sys.argv[1], overrides={"reports_dir": str(Path(sys.argv[2]).resolve())}), progress=print)
