"""The report renders for any mix of rows: none, one runtime, all-error runtimes, one shape, one batch size,
no reference baseline; impossible values are shown as invalid and never starred."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench_kernels import plots
from bench_kernels.config import load_config, parse_config
from bench_kernels.analysis import measurement_differences, plain_error
from bench_kernels.decision import (MATRIX_NOTES, WINNER_MARK, Targets, configurations, cost_table, decide,
                                    decision_matrix)
from bench_kernels.report import (ReportSpec, availability_notes, build_table, configurations_table, cost_html,
                                  interactive_table_html, measured_with_html, method_notes, profile_table,
                                  profiles_html, provenance_table, readable, recommendation_html, results_table,
                                  roofline_html, roofline_table, run_metadata, scaling_html, scaling_table,
                                  unmeasured_summary)
from bench_kernels.results import ResultsStore, load_results, typed_frame
from bench_kernels.roofline import ROOFLINE_NOT_APPLICABLE
from bench_kernels.sweep import run_sweeps
from tests.browser import check_report, find_chromium

ROOT = Path(__file__).resolve().parents[1]


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"run_name": "t", "model": "m", "weights": "real", "device": "cpu", "cpu_name": "cpu", "output_len": 4,
            "warmup": 1, "repeats": 2, "timestamp": "2026-11-27T00:00:00+00:00", "runtime_version": "v 1",
            "runtime_precisions": "fp32 fp16 bf16", "runtime_needs_build": "false"}
    return typed_frame({**base, **r} for r in rows)


def ok(runtime: str, batch: int, length: int, tps: float, precision: str = "fp32", **extra: object) -> dict:
    return {"stage": "inference", "runtime": runtime, "precision": precision, "batch_size": batch,
            "input_len": length, "status": "ok", "tokens_per_s": tps, "prefill_tokens_per_s": 10 * tps,
            "ttft_ms_p50": 10.0, "ttft_ms_p99": 12.0, "itl_ms_p50": 1000 / tps, "itl_ms_p99": 1100 / tps,
            "latency_ms_p50": 4000 / tps, "latency_ms_p99": 4400 / tps, "peak_mem_gb": 1.0,
            "roofline_tokens_per_s": 4 * tps, "efficiency": 0.25, **extra}


def failed(runtime: str, batch: int, length: int, status: str = "error", precision: str = "fp32") -> dict:
    return {"stage": "inference", "runtime": runtime, "precision": precision, "batch_size": batch,
            "input_len": length, "status": status, "error": f"{runtime} cannot run: a reason"}


BUILT = {"runtime_needs_build": "true"}
MIXES = {
    "no rows": [],
    "reference only": [ok("reference", 1, 8, 10.0), ok("reference", 2, 8, 18.0)],
    "a runtime with only errors": [ok("reference", 1, 8, 10.0), failed("compiled", 1, 8),
                                   {"stage": "build", "runtime": "compiled", "precision": "fp32", "status": "error",
                                    "error": "ValueError: model_type 'gemma2' is not supported", **BUILT},
                                   failed("tensorrt", 1, 8, "unavailable")],
    "one shape": [ok("reference", 1, 8, 10.0), ok("compiled", 1, 8, 30.0, **BUILT),
                  {"stage": "build", "runtime": "compiled", "precision": "fp32", "status": "ok", "build_s": 5.0,
                   **BUILT}],
    "one batch size": [ok("reference", 1, 8, 10.0), ok("reference", 1, 16, 9.0),
                       ok("onnxruntime", 1, 8, 12.0, **BUILT), ok("onnxruntime", 1, 16, 11.0, **BUILT)],
    "no reference baseline (fp8 only)": [
        failed("reference", 1, 8, "unavailable", "fp8"),
        ok("compiled", 1, 8, 30.0, "fp8", runtime_precisions="fp32 fp16 bf16 fp8", **BUILT),
        {"stage": "build", "runtime": "compiled", "precision": "fp8", "status": "ok", "build_s": 5.0,
         "runtime_precisions": "fp32 fp16 bf16 fp8", **BUILT}],
}


@pytest.mark.parametrize("rows", MIXES.values(), ids=MIXES.keys())
def test_every_table_and_chart_renders(rows: list[dict]) -> None:
    df = frame(rows)
    spec = ReportSpec.of(parse_config({}))
    decision_matrix(df)
    for name, chart in plots.ALL_CHARTS.items():
        figure = chart(df)
        assert figure is None or figure.axes, name
    results_table(df), build_table(df), provenance_table(df), unmeasured_summary(df), roofline_table(df)
    scaling_table(df)
    assert availability_notes(df, spec) and method_notes(spec, df) and roofline_html(df)
    assert scaling_html(scaling_table(df))
    targets = Targets(batch_size=4, input_len=8, output_len=4, ttft_ms=500.0, tpot_ms=30.0, max_ppl_delta_pct=1.0)
    table = configurations(df, targets)
    for evidence in (df.iloc[:0], df):  # no evidence; evidence that (real weights, no perplexity) judges nothing
        decision = decide(df, targets, {}, 2.0, 1000.0, evidence=evidence)
        assert "Workload and targets" in recommendation_html(decision)
        assert cost_html(ReportSpec.of(parse_config({"gpu_hour_usd": 2.0, "load": {"requests_per_day": 1000.0}})),
                         decision)
    assert plots.pareto(table, targets.tpot_ms) is None or not table.empty
    cost_table(table, 2.0, 1000.0, 4)
    decision_matrix(df, workload=targets)


def test_a_runtime_with_only_errors_says_why_in_every_cell() -> None:
    matrix = decision_matrix(frame(MIXES["a runtime with only errors"]))
    throughput = matrix.loc[matrix.index.str.startswith("throughput, batch 1")].iloc[0]
    notes = {reason: number for number, (reason, _) in matrix.attrs[MATRIX_NOTES].items()}
    assert throughput["compiled"] == f"not measured: error (note {notes['compiled cannot run: a reason']})"
    build = notes["ValueError: model_type 'gemma2' is not supported"]
    assert matrix.loc["build / export / compile time (s)", "compiled"] == f"not measured: error (note {build})"


def test_a_value_above_the_roofline_is_invalid_and_never_starred() -> None:
    df = frame([ok("reference", 1, 8, 10.0, efficiency=0.5), ok("compiled", 1, 8, 30.0, efficiency=2.08, **BUILT),
                ok("onnxruntime", 1, 8, 12.0, efficiency=0.6, **BUILT)])
    row = decision_matrix(df).loc[lambda m: m.index.str.startswith("decode efficiency")].iloc[0]
    assert row["compiled"] == "invalid: 208% is above the roofline (a measurement error)"
    assert row["onnxruntime"] == WINNER_MARK + "60%" and row["winner"] == "onnxruntime"


def test_a_prefill_above_the_compute_roofline_is_invalid_and_never_starred() -> None:
    df = frame([ok("reference", 1, 8, 10.0, prefill_precision="fp32", prefill_efficiency=0.4),
                ok("compiled", 1, 8, 30.0, prefill_precision="fp32", prefill_efficiency=1.3, **BUILT),
                ok("onnxruntime", 1, 8, 12.0, prefill_precision="fp32", prefill_efficiency=0.5, **BUILT)])
    row = decision_matrix(df).loc[lambda m: m.index.str.startswith("prefill efficiency")].iloc[0]
    assert row["compiled"] == "invalid: 130% is above the compute roofline (a measurement error)"
    assert row["onnxruntime"] == WINNER_MARK + "50% (of the fp32 matmul rate)" and row["winner"] == "onnxruntime"
    assert "exceed the compute roofline" in method_notes(ReportSpec.of(parse_config({})), df)
    assert plots.prefill_efficiency_vs_batch(df).axes[0].collections  # the invalid point is circled


def test_mbu_is_shown_where_the_card_is_known_and_says_why_not_elsewhere() -> None:
    h100 = {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "precision": "bf16",
            "runtime_precisions": "fp32 fp16 bf16 fp8"}
    df = frame([ok("reference", 1, 8, 10.0, mbu=0.2, decode_gbps=670.0, prefill_precision="bf16", **h100),
                ok("compiled", 1, 8, 30.0, mbu=0.6, decode_gbps=2010.0, prefill_precision="bf16", **h100, **BUILT),
                ok("onnxruntime", 1, 8, 12.0, prefill_precision="bf16", **BUILT,
                   **{**h100, "gpu_name": "NVIDIA Imaginary 1"})])
    row = decision_matrix(df).loc[lambda m: m.index.str.startswith("MBU")].iloc[0]
    assert row["compiled"] == WINNER_MARK + "60%" and row["reference"] == "20%"
    assert row["onnxruntime"] == "no MBU: NVIDIA Imaginary 1's specified bandwidth is not in the table"
    assert "specified bandwidth 3,350 GB/s" in roofline_html(df)
    cpu = decision_matrix(frame([ok("reference", 1, 8, 10.0, prefill_precision="fp32")]))
    assert cpu.loc[lambda m: m.index.str.startswith("MBU")].iloc[0]["reference"].startswith("no MBU on a CPU")


@pytest.mark.parametrize("results_csv", sorted(Path(__file__).resolve().parents[1].glob("reports/*/results.csv")),
                         ids=lambda path: path.parent.name)
def test_committed_reports_written_before_the_new_columns_still_render(results_csv: Path) -> None:
    df = load_results(results_csv)
    matrix = decision_matrix(df)
    assert not matrix.empty
    inference = df[(df["stage"] == "inference") & (df["status"] == "ok")]
    legacy = inference["prefill_precision"].replace("", None).isna().all()
    prefill = matrix.loc[lambda m: m.index.str.startswith("prefill efficiency")].iloc[0].drop("winner")
    if legacy:
        assert all(cell.startswith(("not recorded", "not measured")) for cell in prefill)
        assert "written before prefill was set against the compute roofline" in roofline_html(df)
    else:  # re-measured since: numbers, no note about older rows
        assert any(cell[:1].isdigit() for cell in prefill)
        assert "written before prefill" not in roofline_html(df)
    # Their one matmul rate (bf16 on a GPU) reads as the bf16 rate (or was measured as such); the report names it.
    if results_csv.parent.name in ("h100-llama3.1-8b", "h200x2-llama3.1-70b"):
        assert inference["matmul_tflops_bf16"].gt(500).all()
        assert "bf16 7" in roofline_html(df)
    roofline_table(df), provenance_table(df), results_table(df)
    assert method_notes(ReportSpec.of(parse_config({})), df)
    no_quality = inference.empty or not (df["stage"] == "quality").any()
    for name, chart in plots.ALL_CHARTS.items():
        figure = chart(df)
        if name == "prefill efficiency":
            assert (figure is None) == legacy, name
        elif name == "speed vs quality" and no_quality:
            assert figure is None, name
        elif name not in ("speedup", "break-even", "speed vs quality"):
            assert figure is not None, name


def test_a_model_that_fits_in_the_cpu_cache_has_no_roofline() -> None:
    df = frame([ok("reference", 1, 8, 10.0, efficiency=math.nan, roofline_tokens_per_s=math.nan,
                   notes=f"{ROOFLINE_NOT_APPLICABLE} (25.2 MB ...)")])
    row = decision_matrix(df).loc[lambda m: m.index.str.startswith("decode efficiency")].iloc[0]
    assert row["reference"] == "roofline not applicable (model fits in the CPU cache)"


def test_a_real_fp8_sweep_without_the_reference_on_the_cpu_renders(tiny_local_model: Path, tmp_path: Path) -> None:
    cfg = parse_config({"run_name": "fp8", "model": f"local:{tiny_local_model}", "runtimes": ["compiled"],
                        "precisions": ["fp8"], "batch_sizes": [1], "input_lens": [8], "output_len": 2,
                        "device": "cpu", "reports_dir": str(tmp_path),
                        # eager: what is rendered is the point here, and compiling takes a minute on this CPU
                        "runtime_options": {"compiled": {"compile": False}}})
    df = run_sweeps(cfg)
    inference = df[df["stage"] == "inference"]
    assert list(inference["status"]) == ["ok"]
    matrix = decision_matrix(df)
    assert list(matrix.columns) == ["compiled", "winner"]
    for name, chart in plots.ALL_CHARTS.items():
        figure = chart(df)
        # No baseline to compare with; no roofline for a model that fits in the CPU cache.
        # (No perplexity delta either: no reference perplexity to take it against.)
        assert (figure is None) == (name in ("speedup", "break-even", "efficiency", "speed vs quality")), name
    assert "no reference outputs" in inference.iloc[0]["notes"]


def test_a_build_taken_from_the_cache_says_so() -> None:
    df = frame([ok("reference", 1, 8, 10.0), ok("tensorrt", 1, 8, 30.0, **BUILT),
                {"stage": "build", "runtime": "tensorrt", "precision": "fp32", "status": "ok", "build_s": 104.4,
                 "cache_hit": "true", **BUILT}])
    cell = decision_matrix(df).loc["build / export / compile time (s)", "tensorrt"]
    assert cell == "104.4 (from cache: what the first build took)"


def test_a_profile_is_recorded_at_the_workload_and_shown(tiny_local_model: Path, tmp_path: Path) -> None:
    cfg = parse_config({"run_name": "profiled", "model": f"local:{tiny_local_model}", "runtimes": ["reference"],
                        "batch_sizes": [1, 2], "input_lens": [8], "output_len": 3, "warmup": 0, "repeats": 1,
                        "device": "cpu", "reports_dir": str(tmp_path), "profile": True,
                        "workload": {"batch_size": 2}})
    df = run_sweeps(cfg)
    rows = df[df["stage"] == "inference"].set_index("batch_size")
    assert "profile: profiles/reference-fp32-1gpu-b2-i8.json" in rows.loc[2, "notes"]
    assert "profile:" not in rows.loc[1, "notes"]  # only the workload's shape
    trace = cfg.run_dir / "profiles" / "reference-fp32-1gpu-b2-i8.json"
    assert trace.stat().st_size > 1000 and '"traceEvents"' in trace.read_text()
    section = profiles_html(ReportSpec.of(cfg))
    assert "reference-fp32-1gpu-b2-i8" in section and "aten::" in section and "self_time_us" in section


def test_deployments_over_several_gpu_counts_stay_apart() -> None:
    one = ok("compiled", 1, 8, 48.0, "fp8", runtime_precisions="fp8", gpu_count=1, peak_mem_gb_per_gpu=73.0)
    two = ok("compiled", 1, 8, 68.0, "fp8", runtime_precisions="fp8", gpu_count=2, peak_mem_gb_per_gpu=37.6)
    df = frame([one, two, {**one, "batch_size": 8, "tokens_per_s": 270.0},
                {**two, "batch_size": 8, "tokens_per_s": 400.0}])
    matrix = decision_matrix(df)
    assert list(matrix.columns) == ["compiled", "compiled (2 GPUs)", "winner"]
    throughput = matrix.loc[matrix.index.str.startswith("throughput per GPU, batch 8")].iloc[0]
    assert throughput["compiled"] == WINNER_MARK + "270.0"  # per GPU, as the recommendation ranks
    assert throughput["compiled (2 GPUs)"] == "200.0 (400.0 on 2 GPUs)"
    figure = plots.throughput_vs_batch(df)
    labels = {t.get_text() for ax in figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert labels == {"compiled fp8", "compiled fp8 on 2 GPUs"}
    table = results_table(df)  # two rows of one shape: the GPU count and memory per GPU tell them apart
    assert table[["gpu_count", "peak_mem_gb_per_gpu"]].astype(float).values.tolist() == [
        [1, 73.0], [2, 37.6], [1, 73.0], [2, 37.6]]
    scaling = scaling_table(df)
    assert scaling["scaling_efficiency"].round(4).tolist() == [round(68 / (2 * 48), 4), round(400 / (2 * 270), 4)]
    assert scaling["tokens_per_s_per_gpu"].tolist() == [34.0, 200.0] and set(scaling["one_gpu"]) == {"ok"}
    assert "<b>compiled</b> fp8 on 2 GPUs: 0.71 to 0.74 of 2 times one GPU's tokens/s (every shape)" in \
        scaling_html(scaling_table(df))
    # A model one GPU cannot hold: no efficiency, and the reason one GPU gave.
    too_big = frame([{**failed("compiled", 1, 8, precision="bf16"), "gpu_count": 1},
                     ok("compiled", 1, 8, 35.0, "bf16", gpu_count=2, peak_mem_gb_per_gpu=71.8)])
    assert scaling_table(too_big)["scaling_efficiency"].isna().all()
    assert "bf16 on 2 GPUs: no scaling efficiency (on one GPU: error: compiled cannot run: a reason)" in \
        scaling_html(scaling_table(too_big))
    assert scaling_html(scaling_table(frame([one]))) == "<p>Every measured deployment ran on one GPU.</p>"


def test_the_specs_shapes_that_have_not_run_yet_are_listed() -> None:
    """A sweep split over calls (or stopped) leaves some of the spec's shapes without rows: the report says which,
    instead of claiming everything ran."""
    cfg = parse_config({"runtimes": ["reference", "compiled"], "precisions": ["bf16", "fp8"], "batch_sizes": [1, 8],
                        "input_lens": [8]})
    df = frame([ok("reference", 1, 8, 10.0, "bf16"), ok("reference", 8, 8, 40.0, "bf16"),
                ok("compiled", 1, 8, 30.0, "bf16", runtime_precisions="fp32 fp16 bf16 fp8")])
    notes = availability_notes(df, ReportSpec.of(cfg))
    assert "Not run yet" in notes
    assert "<b>compiled</b> bf16: 1 of 2 shapes" in notes and "<b>compiled</b> fp8: 2 of 2 shapes" in notes
    assert "<b>reference</b> bf16" not in notes
    # A precision a runtime's rows say it does not run only ever gets an `unavailable` row, and a runtime's
    # precisions can be narrowed for the sweep: neither is left to run.
    cfg = parse_config({"runtimes": ["reference", "compiled"], "precisions": ["bf16", "int8"], "batch_sizes": [1, 8],
                        "input_lens": [8], "precisions_by_runtime": {"reference": ["bf16"]}})
    notes = availability_notes(df, ReportSpec.of(cfg))
    assert "<b>compiled</b> bf16: 1 of 2 shapes" in notes
    assert "int8" not in notes and "<b>reference</b>" not in notes


def test_speed_against_quality_places_each_precision_by_its_perplexity() -> None:
    quality = [{"stage": "quality", "runtime": runtime, "precision": precision, "status": "ok", "perplexity": ppl,
                "ppl_delta_pct": delta}
               for runtime, precision, ppl, delta in (("reference", "bf16", 40.0, 0.0),
                                                      ("compiled", "int4", 48.0, 20.0),
                                                      ("compiled", "int4-awq", 46.0, 15.0))]
    df = frame([ok("reference", 1, 8, 10.0, "bf16"), ok("compiled", 1, 8, 30.0, "int4"),
                ok("compiled", 4, 8, 90.0, "int4"), ok("compiled", 1, 8, 29.0, "int4-awq"), *quality])
    figure = plots.speed_vs_quality(df)
    labels = {text.get_text() for text in figure.axes[0].texts}
    assert labels == {"reference bf16", "compiled int4", "compiled int4-awq", "the reference's perplexity"}
    positions = {text.get_text(): text.xy for text in figure.axes[0].texts}
    assert positions["compiled int4"] == (20.0, 90.0)  # its best measured tokens/s, at batch 4
    assert plots.speed_vs_quality(frame([ok("reference", 1, 8, 10.0, "bf16")])) is None  # no perplexity: no chart


def test_numbers_read_plainly_money_in_dollars_and_every_percentile_with_its_n() -> None:
    table = readable(pd.DataFrame({"usd_per_month": [13140.0, 3.3611], "tokens_per_s": [17540.0, 0.0000123],
                                   "gpus_needed": [6, None]}))
    assert table["usd_per_month"].tolist() == ["$13,140", "$3.36"]
    assert table["tokens_per_s"].tolist() == ["17,540", "0.0000123"] and table["gpus_needed"].tolist() == ["6", ""]
    df = frame([ok("reference", 1, 8, 10.0, max_logit_diff=0.0000412), ok("compiled", 1, 8, 30.0, **BUILT,
                                                                          max_logit_diff=0.00000731)])
    matrix = decision_matrix(df)
    p99 = matrix.loc["end-to-end latency p99, batch 1, input 8 (ms)", "compiled"]
    assert p99 == WINNER_MARK + "146.7 (≈ max of 2 runs)"
    assert matrix.loc["per-token latency p50, batch 1, input 8 (ms)", "reference"] == "100.00 (n=6)"  # 2 x 3 steps
    logits = matrix.loc[matrix.index.str.startswith("quality: max |logit")].iloc[0]
    assert logits["compiled"] == "0.00000731"
    rows = results_table(df)
    assert rows[["n_runs", "n_decode_steps"]].values.tolist() == [[2, 6], [2, 6]]
    assert list(rows.columns).index("n_runs") == list(rows.columns).index("ttft_ms_p50") - 1


def test_a_percentile_over_too_few_samples_is_named_for_what_it_is() -> None:
    """A p99 of 2 runs (or of 6 decode steps) lies between the two largest samples: the tables' headers and the
    text call it '≈ max of 2 runs', n beside it; a p50 stays a p50, and a p99 over 100 runs a p99."""
    df = frame([ok("reference", 1, 8, 10.0), ok("compiled", 1, 8, 30.0, **BUILT)])
    rows = results_table(df)
    assert {"n_runs", "ttft_ms_p50", "ttft_ms_p99 (≈ max of 2 runs)", "itl_ms_p99 (≈ max of 6 decode steps)",
            "latency_ms_p99 (≈ max of 2 runs)"} <= set(rows.columns)
    assert "ttft_ms_p99" not in rows
    decision = decide(df, Targets(1, 8, 4, ttft_ms=11.0), {}, 0.0, None)
    shown = configurations_table(decision.configurations)
    assert {"n_runs", "ttft_ms_p99 (≈ max of 2 runs)", "itl_ms_p99 (≈ max of 6 decode steps)"} <= set(shown.columns)
    assert "time to first token p99 (≈ max of 2 runs) 12.0 ms &gt; 11 ms" in recommendation_html(decision)
    enough = results_table(frame([ok("compiled", 1, 8, 30.0, repeats=100, **BUILT)]))
    assert {"ttft_ms_p99", "itl_ms_p99"} <= set(enough.columns)


def test_out_of_memory_reads_as_weights_that_do_not_fit_and_errors_stay_whole() -> None:
    raw = ("prepare failed: out of memory: CUDA out of memory. Tried to allocate 896.00 MiB. GPU 0 has a total "
           "capacity of 79.18 GiB of which 156.19 MiB is free. Including non-PyTorch memory, this process has ...")
    assert plain_error(raw, 141.1) == "prepare failed: out of memory: 141 GB of weights do not fit 85 GB"
    assert plain_error(raw, 70.0).endswith("896.00 MiB more were needed with 156.19 MiB of the card's 85 GB free")


def test_the_first_screen_names_versions_and_unlike_rows_say_so() -> None:
    rows = frame([ok("reference", 1, 8, 10.0, git_sha="aaaaaaa111", copy_gbps=3000.0),
                  ok("compiled", 1, 8, 30.0, git_sha="bbbbbbb222", copy_gbps=2850.0)])
    assert "<code>aaaaaaa</code> (1 rows)" in measured_with_html(rows) and "2,850 to 3,000 GB/s" in \
        measured_with_html(rows)
    notes = measurement_differences(rows.iloc[[0]], rows.iloc[[1]])
    assert "different code versions (aaaaaaa against bbbbbbb)" in notes[0] and "5.3% apart" in notes[1]
    assert measurement_differences(rows.iloc[[0]], rows.iloc[[0]]) == []


def test_booleans_have_one_spelling_and_profiles_leave_out_the_step_spans() -> None:
    assert readable(pd.DataFrame({"cache_hit": ["True", "false", True]}))["cache_hit"].tolist() == ["yes", "no", "yes"]
    table = profile_table([{"name": "ProfilerStep*", "calls": "5", "self_time_us": "50", "share_pct": "50"},
                           {"name": "void at::native::copy_kernel<4>(int)", "calls": "2", "self_time_us": "25",
                            "share_pct": "25.0"}])
    assert table["name"].tolist() == ["copy_kernel"] and table["share_pct"].tolist() == ["50"]


def test_results_json_names_the_cited_runs_from_the_run_folder(tmp_path: Path) -> None:
    """run_metadata goes into results.json as it is: the spec's cited quality evidence (paths) included."""
    spec = ReportSpec.of(load_config(ROOT / "params/h100-llama3.1-8b.yaml", check_model=False))
    store = ResultsStore(tmp_path)
    store.append({"stage": "quality", "runtime": "reference", "model": "m", "precision": "bf16", "status": "ok"})
    document = json.loads(store.export_json(run_metadata(spec, store.load())).read_text())
    assert document["run"]["spec"]["quality_evidence"] == ["../h100-smollm2-quality"]
    assert document["run"]["spec"]["claims"] == "../../params/claims/tensorrt-vs-llama-blog.yaml"


def test_a_click_on_a_headers_text_sorts_a_column_of_numbers_in_numeric_order(tmp_path: Path) -> None:
    """As a report shows an interactive table: a click on the header's text (not only its arrow) sorts, and
    '1,569.2' sorts after '100' (as text it would come first)."""
    if not find_chromium():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from itables import options, to_html_datatable
    from itables.javascript import generate_init_offline_itables_html

    table = pd.DataFrame({"runtime": ["a", "b", "c", "d"], "tokens_per_s": [9.5, 1569.2, 10.0, 100.0],
                          "usd_per_month": [13140.0, 980.0, 3.36, None]})
    page = tmp_path / "table.html"
    embedded = generate_init_offline_itables_html(options.dt_bundle)  # what the report's init cell embeds
    page.write_text(f"<html><body>{embedded}{interactive_table_html(table, 'numbers')}</body></html>")
    seen = check_report(page)
    assert seen.header_sorts == {"table 1: tokens_per_s": True, "table 1: usd_per_month": True}, seen.header_sorts
    assert seen.problems == [] and seen.unreadable_cells == []
    # Every table the report shows interactively hands its numbers over as numbers, to be sorted as such.
    df = frame([ok("reference", 1, 8, 10.0), ok("compiled", 1, 8, 30.0, **BUILT)])
    configurations = configurations_table(decide(df, Targets(1, 8, 4), {}, 0.0, None).configurations)
    for shown in (results_table(df), roofline_table(df), configurations, scaling_table(df)):
        numbers = [name for name in ("batch_size", "tokens_per_s", "efficiency") if name in shown]
        assert numbers and all(pd.api.types.is_numeric_dtype(shown[name]) for name in numbers), shown.dtypes
    # itables' defaults keep the header text selectable: a click on it does not sort, and the check says so.
    page.write_text(f"<html><body>{embedded}{to_html_datatable(readable(table), connected=False)}</body></html>")
    assert check_report(page).header_sorts == {"table 1: tokens_per_s": False, "table 1: usd_per_month": False}
