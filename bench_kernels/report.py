"""What 90_report shows: provenance, results, charts, the decision matrix, and what was not measured."""

from __future__ import annotations

import base64
import html
import io
from importlib import resources
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from bench_kernels.analysis import (BUILD_COLUMNS, INFERENCE_COLUMNS, QUALITY_COLUMNS, WINNER_MARK, build_rows,
                                    decision_matrix, gate_failures, inference_rows, quality_rows, shorten,
                                    unmeasured_summary)
from bench_kernels.config import SweepConfig
from bench_kernels.results import ResultsStore
from bench_kernels.workload import BATCH_FORMATION

PROVENANCE_COLUMNS = ["device", "gpu_name", "driver_version", "cuda_version", "cpu_name", "torch_version",
                      "transformers_version", "git_sha", "copy_gbps", "matmul_tflops"]


def offline_template_dir() -> Path:
    """Folder holding the nbconvert template 'offline' (the lab template with no CDN scripts)."""
    return Path(str(resources.files("bench_kernels").joinpath("templates")))


def load_run(cfg: SweepConfig) -> pd.DataFrame:
    return ResultsStore(cfg.run_dir).load()


def provenance_table(df: pd.DataFrame) -> pd.DataFrame:
    """Distinct environments the rows were measured in: which runtimes (and their versions) ran there, and when."""
    if df.empty:
        return pd.DataFrame(columns=PROVENANCE_COLUMNS)
    labelled = df.assign(runtime_label=df["runtime"] + df["runtime_version"].map(lambda v: f" ({v})" if v else ""))
    grouped = labelled.groupby(PROVENANCE_COLUMNS, dropna=False)
    table = grouped.agg(runtimes=("runtime_label", lambda s: ", ".join(dict.fromkeys(s))), rows=("status", "size"),
                        first=("timestamp", "min"), last=("timestamp", "max"))
    table = table.reset_index().sort_values("first")
    return table.T.set_axis([f"environment {i + 1}" for i in range(len(table))], axis=1)


def _int_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Shape columns as integers (blank where a row has none), not floats."""
    shape = [c for c in ("batch_size", "input_len", "output_len") if c in df]
    return df.astype({c: "Int64" for c in shape})


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Inference rows with the columns a reader compares (errors shortened: the full text is listed above)."""
    table = _int_columns(inference_rows(df)[INFERENCE_COLUMNS].reset_index(drop=True))
    return table.assign(error=table["error"].map(shorten))


def build_table(df: pd.DataFrame) -> pd.DataFrame:
    return build_rows(df)[BUILD_COLUMNS].reset_index(drop=True)


def quality_table(df: pd.DataFrame, max_ppl_delta_pct: float) -> pd.DataFrame:
    """Perplexity per runtime and precision, its delta against the reference, and the gate's verdict."""
    table = quality_rows(df)[QUALITY_COLUMNS].reset_index(drop=True)
    verdict = table["ppl_delta_pct"].map(lambda d: "" if pd.isna(d) else "FAIL" if d > max_ppl_delta_pct else "pass")
    return table.assign(accuracy_gate=verdict)


def quality_notes(df: pd.DataFrame, max_ppl_delta_pct: float) -> str:
    """What the accuracy gate decided (HTML): which configurations failed it, and by how much."""
    if (df["weights"] == "random").any():
        return ("<p>Random weights: perplexity, token agreement and divergence are not meaningful, so no "
                "configuration is judged on quality and none is starred for it.</p>")
    quality = quality_rows(df)
    if quality.empty:
        return "<p>No perplexity was measured in this run.</p>"
    failing = gate_failures(df, max_ppl_delta_pct)
    gate = (f"The accuracy gate: perplexity at most {max_ppl_delta_pct:g}% above the reference's. ")
    if not failing:
        return f"<p>{gate}Every configuration with a measured perplexity passed it.</p>"
    items = "".join(f"<li><b>{html.escape(runtime)} {html.escape(precision)}</b>: perplexity {delta:+.2f}% "
                    f"({delta - max_ppl_delta_pct:.2f} points over the gate)</li>"
                    for (runtime, precision), delta in sorted(failing.items()))
    return (f"<p>{gate}These configurations failed it: they are marked in the decision matrix and never "
            f"starred there.</p><ul>{items}</ul>")


def styled_matrix(matrix: pd.DataFrame):
    """The decision matrix with winning cells highlighted."""
    def highlight(cell: object) -> str:
        text = str(cell)
        if text.startswith(WINNER_MARK):
            return "background-color: #d8f3dc; font-weight: bold"
        if text.startswith(("not measured", "not meaningful", "invalid")):
            return "color: #8a5a00; font-style: italic"
        if text.startswith("FAIL"):
            return "color: #b00020; font-weight: bold"
        return ""

    return matrix.style.map(highlight).set_properties(**{"text-align": "left", "white-space": "normal"})


def method_notes(cfg: SweepConfig, df: pd.DataFrame) -> str:
    """The measurement method in plain words (HTML), stated in every report."""
    inference = inference_rows(df)
    devices = ", ".join(sorted(set(df["device"]) - {""})) or cfg.device
    random_weights = (df["weights"] == "random").any()
    lines = [
        f"<b>Model</b>: {html.escape(str(df['model'].iloc[0]) if not df.empty else cfg.model)}"
        + (" with <b>random weights</b> from an architecture preset: valid for speed and memory, "
           "never for quality." if random_weights else " (real weights)."),
        f"<b>Output length</b>: fixed at {cfg.output_len} new tokens per prompt (minimum = maximum, EOS ignored), "
        "so every runtime generates the same amount of work.",
        f"<b>Runs</b>: {cfg.warmup} warmup run(s) per shape, never counted; {cfg.repeats} measured run(s). "
        "p50 / p99 are over the measured runs (per-token latency: over every decode step of every run).",
        f"<b>Timing</b> on {html.escape(devices)}: CUDA events read after one synchronize on GPU, "
        "<code>time.perf_counter</code> on CPU. TTFT = prompt in to first token out (prefill + first token); "
        "per-token latency = each later decode step; throughput = batch x output tokens / end-to-end p50 latency.",
        "<b>Peak memory</b> during the measured runs. GPU: torch's max allocated for torch runtimes; for ONNX "
        "Runtime and TensorRT, which allocate outside torch, the device memory in use (total - free, sampled "
        "every 5 ms, CUDA context included). CPU: the process's peak resident set, sampled every 5 ms (Python "
        "and libraries included).",
        f"<b>Batches</b>: {html.escape(BATCH_FORMATION)}",
        "<b>Efficiency</b>: decode tokens/s (batch / per-token latency p50) over the roofline bound "
        "(all weights plus the batch's KV cache read once per step at the measured copy bandwidth).",
        "<b>Perplexity</b>: teacher-forced through each runtime's own forward pass over the packaged text, cut "
        "into consecutive windows of 512 tokens (fewer if the model's context is shorter); the first 8 windows "
        "are scored, every token after a window's first predicted from those before it (4,088 predictions). "
        f"Its delta is against the reference at the sweep's first reference precision; the accuracy gate "
        f"(max_ppl_delta_pct = {cfg.max_ppl_delta_pct:g}%) reads MLPerf's 99%-of-reference rule as at most "
        f"that much higher perplexity. Random weights get no perplexity.",
        "<b>Token agreement</b> is the share of generated tokens equal to the reference's on the same prompts; "
        "<b>first divergence</b> the median position of the first generated token that differs.",
    ]
    if not inference.empty and inference["efficiency"].gt(1.0).any():
        lines.append("<b style='color:#b00020'>Measurement error</b>: some rows exceed the roofline "
                     "(efficiency above 1.0); treat them as bugs, not results. (On a CPU, a model small "
                     "enough to stay in the caches also reads faster than the DRAM bandwidth measured.)")
    return "<ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


def availability_notes(df: pd.DataFrame) -> str:
    """Plain statement of every runtime that could not be measured, and why (HTML)."""
    missing = unmeasured_summary(df)
    if missing.empty:
        return "<p>Every configured runtime was measured on every shape.</p>"
    items = []
    for _, row in missing.iterrows():
        items.append(f"<li><b>{html.escape(row['runtime'])}</b> ({html.escape(row['precision'])}, {row['stage']}): "
                     f"{row['status']} on {row['rows']} row(s): {html.escape(str(row['reason']))}</li>")
    return "<p>Not measured in this run:</p><ul>" + "".join(items) + "</ul>"


def show_charts(df: pd.DataFrame) -> None:
    """Every chart of plots.ALL_CHARTS, in order."""
    from bench_kernels.plots import ALL_CHARTS

    for what, chart in ALL_CHARTS.items():
        show_figure(chart(df), what)


def figure_html(fig: Figure, alt: str) -> str:
    """The figure as an embedded PNG with alternative text (the report stays one self-contained file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width: 100%">'


def show_figure(fig: Figure | None, what: str) -> None:
    """Display a figure in the notebook (embedded as PNG in the HTML) or say why there is none."""
    import matplotlib.pyplot as plt
    from IPython.display import HTML, Markdown, display

    if fig is None:
        display(Markdown(f"*No {what} chart: no inference row measured what it shows.*"))
        return
    series = sorted({text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()})
    alt = f"{what} chart: {fig.get_suptitle()}" + (f"; series: {', '.join(series)}" if series else "")
    display(HTML(figure_html(fig, alt)))
    plt.close(fig)


__all__ = ["availability_notes", "build_table", "quality_notes", "quality_table", "decision_matrix", "load_run", "method_notes",
           "offline_template_dir", "provenance_table", "results_table", "show_charts", "show_figure", "styled_matrix"]
