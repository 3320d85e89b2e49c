"""End to end: `bench-kernels run` on a tiny params file, its results, and its report in a real browser."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.browser import check_report, find_chromium
from tests.run_notebooks import scratch_project
from bench_kernels.results import load_results

ROOT = Path(__file__).resolve().parents[1]


TINY = yaml.safe_load((ROOT / "params/tiny.yaml").read_text())


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params/tiny.yaml (the notebooks' default shapes) under the notebooks' default run name, `notebook`: the nbval
    test below then finds this run finished, as a second run of the notebooks does."""
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "run_name": "notebook"}))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, spec_file: Path) -> Path:
    reports = tmp_path_factory.mktemp("reports")
    done = subprocess.run(
        [sys.executable, "-m", "bench_kernels.cli", "run", str(spec_file), "--reports-dir", str(reports)],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return reports / "notebook"


def test_results_have_every_shape_ok(run_dir: Path) -> None:
    df = load_results(run_dir / "results.csv")
    spec = TINY
    reference = df[(df["stage"] == "inference") & (df["runtime"] == "reference")]
    assert len(reference) == len(spec["batch_sizes"]) * len(spec["input_lens"])
    assert (reference["status"] == "ok").all()
    assert (reference["tokens_per_s"] > 0).all() and (reference["ttft_ms_p50"] > 0).all()
    assert (reference["latency_ms_p99"] >= reference["latency_ms_p50"]).all()
    assert (reference["git_sha"] != "").all() and (reference["torch_version"] != "").all()
    assert set(df["status"]) <= {"ok", "error", "skipped", "unavailable"}
    compiled = df[(df["stage"] == "inference") & (df["runtime"] == "compiled")]
    assert len(compiled) == len(reference) and (compiled["status"] == "ok").all(), compiled[["status", "error"]]
    # The embedded model's real weights, fp32 on the CPU: the compiled decoder gives the reference's tokens.
    assert (compiled["token_agreement"] == 1.0).all() and (compiled["max_logit_diff"] < 1e-3).all()
    assert ((compiled["efficiency"] > 0) & (compiled["efficiency"] <= 1.0)).all()
    decode_tokens_per_s = compiled["batch_size"] * 1e3 / compiled["itl_ms_p50"]
    assert (decode_tokens_per_s / compiled["roofline_tokens_per_s"] - compiled["efficiency"]).abs().max() < 1e-9
    build = df[(df["stage"] == "build") & (df["runtime"] == "compiled")]
    assert (build["status"] == "ok").all() and (build["build_s"] > 0).all()
    scored = df[(df["stage"] == "quality") & (df["status"] == "ok")]
    assert set(scored["runtime"]) == {"reference", "onnxruntime", "compiled"}
    assert scored["notes"].str.contains("over 2 windows of 512 tokens").all()  # the spec's perplexity_windows
    # A real TensorRT-RTX engine of the embedded model (its weights, over 50 MB), built for any GPU.
    engine = df[(df["stage"] == "build") & (df["runtime"] == "tensorrt")]
    assert len(engine) == 1 and (engine["status"] == "ok").all(), engine[["status", "error"]]
    assert engine["build_s"].iloc[0] > 0 and engine["artifact_mb"].iloc[0] > 50
    assert engine["runtime_version"].iloc[0].startswith("tensorrt_rtx ")
    assert "engine for portable" in engine["notes"].iloc[0]
    for name in ("00_environment", "10_build", "20_sweep", "90_report"):
        assert (run_dir / "notebooks" / f"{name}.ipynb").is_file()
    assert (df["runtime_version"] != "").all() and set(df["runtime_needs_build"]) == {"true", "false"}


def test_rerun_resumes_without_remeasuring(run_dir: Path, spec_file: Path) -> None:
    before = load_results(run_dir / "results.csv")
    done = subprocess.run(
        [sys.executable, "-m", "bench_kernels.cli", "run", str(spec_file), "--reports-dir", str(run_dir.parent),
         "--only", "20"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 of 4 shapes already done" in done.stdout + done.stderr
    after = load_results(run_dir / "results.csv")
    ok = before["status"] == "ok"
    assert before[ok]["timestamp"].tolist() == after[after["status"] == "ok"]["timestamp"].tolist()


def test_notebooks_pass_nbval_on_their_defaults(run_dir: Path, tmp_path: Path) -> None:
    """Every notebook under nbval, as stored, on its defaults, in a scratch copy of the project whose notebook run is
    the one above: the builds and shapes are found done (measuring them again would repeat the run above, minutes
    on this CPU), the environment and report notebooks run whole."""
    notebooks = scratch_project(tmp_path, finished_run=run_dir)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "--nbval-lax", str(notebooks)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
    assert (tmp_path / "reports" / "notebook" / "report.html").is_file()


def test_report_is_self_contained(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text()
    assert "Decision matrix" in html and "Provenance" in html and "What was and was not measured" in html
    # throughput, latency, TTFT, memory, efficiency, speedup heatmaps, build vs break-even
    assert html.count("data:image/png;base64,") >= 7
    assert "<script src=" not in html  # nothing to fetch: it must read offline
    assert "cfg = config_from_namespace" not in html  # no code shown
    assert html.count('<img alt="') >= 7 and "No description has been provided" not in html


def test_report_in_headless_chromium(run_dir: Path) -> None:
    """Every chart decodes, the console stays clean, a click on a header's text sorts a column of numbers in
    numeric order, and a screenshot is saved beside the report."""
    if not find_chromium():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/run must install Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium); the browser check did not run")
    seen = check_report(run_dir / "report.html", run_dir / "report.png", filter_text="onnxruntime")
    assert len(seen.images) >= 7 and all(img["ok"] and img["width"] > 300 for img in seen.images), seen.images
    assert all(len(img["alt"]) > 20 for img in seen.images), [img["alt"] for img in seen.images]
    assert seen.problems == [] and seen.unreadable_cells == [], seen.problems[:5] + seen.unreadable_cells[:5]
    assert "table 1: tokens_per_s_per_gpu" in seen.header_sorts and all(seen.header_sorts.values()), \
        seen.header_sorts
    before, after = seen.filtered_rows
    assert before >= 8 and after == 4, seen.filtered_rows  # 12 rows that ran, 4 of them onnxruntime
    png = (run_dir / "report.png").read_bytes()
    assert png.startswith(base64.b64decode("iVBORw0KGgo=")) and len(png) > 50_000
