"""The sweep's build stage alone, for every shape of a spec: build_stage.py SPEC REPORTS_DIR. Run before a
one-shape sweep of the same runtimes, whose own build would otherwise become the build row (one shape's compile)."""
import sys

from bench_kernels.cli import _load
from bench_kernels.sweep import run_build_stage

run_build_stage(_load(sys.argv[1], sys.argv[2]), progress=print)
