"""The charts draw what was measured: one line per deployment with its values, points above a roofline circled,
one card's memory drawn across the memory panels, the speedups written in their cells, the latency target shaded."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection

from bench_kernels import plots
from bench_kernels.results import typed_frame

matplotlib.use("Agg")


def ok(runtime: str, batch: int, length: int, tps: float, **extra: object) -> dict:
    return {"stage": "inference", "status": "ok", "runtime": runtime, "precision": "fp32", "batch_size": batch,
            "input_len": length, "output_len": 4, "tokens_per_s": tps, "efficiency": 0.5, **extra}


ROWS = [ok("reference", 1, 8, 10.0), ok("reference", 2, 8, 18.0), ok("reference", 1, 16, 9.0),
        ok("compiled", 1, 8, 30.0), ok("compiled", 2, 8, 50.0, efficiency=1.3), ok("compiled", 1, 16, 27.0),
        {**ok("compiled", 2, 16, 99.0), "status": "error", "error": "RuntimeError: out of memory"}]


def lines_by_label(ax: Axes) -> dict[str, list[tuple[float, float]]]:
    """A panel's data lines by series: their (x, y) points (seaborn's legend entries are empty lines of one colour)."""
    series = {line.get_color(): line.get_label() for line in ax.get_lines() if not len(line.get_xdata())}
    return {series[line.get_color()]: list(zip(line.get_xdata(), line.get_ydata())) for line in ax.get_lines()
            if len(line.get_xdata()) and line.get_color() in series}


def test_throughput_has_a_panel_per_input_length_and_a_line_per_deployment_with_its_values() -> None:
    figure = plots.throughput_vs_batch(typed_frame(ROWS))
    assert [ax.get_title() for ax in figure.axes] == ["input len = 8", "input len = 16"]
    short = lines_by_label(figure.axes[0])
    assert short["reference fp32"] == [(1, 10.0), (2, 18.0)] and short["compiled fp32"] == [(1, 30.0), (2, 50.0)]
    long = lines_by_label(figure.axes[1])
    assert long["compiled fp32"] == [(1, 27.0)], "the failed row is not drawn"


def test_a_deployment_over_several_gpus_is_its_own_line() -> None:
    rows = [ok("compiled", 1, 8, 30.0, gpu_count=1), ok("compiled", 1, 8, 45.0, gpu_count=2)]
    labels = set(lines_by_label(plots.throughput_vs_batch(typed_frame(rows)).axes[0]))
    assert labels == {"compiled fp32", "compiled fp32 on 2 GPUs"}


def test_points_above_the_roofline_are_circled_and_kept_in_view() -> None:
    figure = plots.efficiency_vs_batch(typed_frame(ROWS))
    short = figure.axes[0]
    circled = [tuple(point) for collection in short.collections if isinstance(collection, PathCollection)
               for point in collection.get_offsets()]
    assert circled == [(2.0, 1.3)]
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in short.get_lines())  # the bound, named on the chart
    assert "the bound (1.0)" in [text.get_text() for text in short.texts]
    assert short.get_ylim()[1] == pytest.approx(1.3 * 1.05)
    assert figure.axes[1].get_ylim() == short.get_ylim()  # one scale for every panel
    assert not any(isinstance(collection, PathCollection) for collection in figure.axes[1].collections)


def test_memory_is_per_device_against_one_card() -> None:
    rows = [ok("compiled", 1, 8, 30.0, peak_mem_gb=60.0, peak_mem_gb_per_gpu=30.0, gpu_memory_gb=80.0, gpu_count=2),
            ok("reference", 1, 8, 10.0, peak_mem_gb=20.0, gpu_memory_gb=80.0)]
    ax = plots.memory_vs_batch(typed_frame(rows)).axes[0]
    values = {y for points in lines_by_label(ax).values() for _, y in points}
    assert {30.0, 20.0} <= values and 60.0 not in values
    assert any(list(line.get_ydata()) == [80.0, 80.0] for line in ax.get_lines())
    assert "one card: 80 GB" in [text.get_text() for text in ax.texts]


def test_speedup_cells_hold_the_ratio_to_the_reference() -> None:
    figure = plots.speedup_heatmaps(typed_frame(ROWS))
    ax = figure.axes[0]
    assert ax.get_title() == "compiled fp32 vs reference fp32"
    assert sorted(text.get_text() for text in ax.texts) == ["2.8", "3.0", "3.0"]  # 50 / 18, 30 / 10, 27 / 9
    assert figure.axes[-1].get_ylabel() == "speedup over the reference (x)"  # the colour bar


def test_a_speedup_over_the_references_fp8_shows_the_bf16_baseline_beside_it() -> None:
    """The reference's fp8 (torchao) is slower than its bf16: compiled fp8's 10.0x over it reads as 2.5x over bf16."""
    rows = [ok("reference", 1, 8, 40.0, precision="bf16"), ok("reference", 1, 8, 10.0, precision="fp8"),
            ok("compiled", 1, 8, 100.0, precision="fp8"), ok("compiled", 1, 8, 120.0, precision="bf16")]
    axes = {ax.get_title(): ax for ax in plots.speedup_heatmaps(typed_frame(rows)).axes if ax.get_title()}
    fp8 = axes["compiled fp8 vs reference fp8\n(below: vs reference bf16)"]
    assert [text.get_text() for text in fp8.texts] == ["10.0\n2.5 vs bf16"]
    assert [text.get_text() for text in axes["compiled bf16 vs reference bf16"].texts] == ["3.0"]


def test_pareto_shades_what_meets_the_per_token_target_at_p99() -> None:
    """The band is where the per-token latency p99 meets the target, as the decision checks it: batch 4's p50
    (22 ms) meets 40 ms but its p99 (45 ms) does not, so its point lies left of the band."""
    table = typed_frame([ok("compiled", 1, 8, 30.0), ok("compiled", 4, 8, 80.0)]).assign(
        itl_ms_p99=[25.0, 45.0], per_user_tokens_per_s=[1000 / 20, 1000 / 22], tokens_per_s_per_gpu=[30.0, 80.0],
        gpu_count=[1, 1])
    ax = plots.pareto(table, tpot_ms=40.0).axes[0]
    shaded = [patch for patch in ax.patches if patch.get_label().startswith("meets 40 ms per token at p99")]
    assert len(shaded) == 1 and shaded[0].get_x() == pytest.approx(1000 / 40)
    points = {text.get_text(): text.xy[0] for text in ax.texts}
    assert points == {"b1": pytest.approx(1000 / 25), "b4": pytest.approx(1000 / 45)}
    assert points["b4"] < shaded[0].get_x() <= points["b1"]
    assert "p99" in ax.get_xlabel()
    assert plots.pareto(table.iloc[0:0]) is None


def legend_colours(figure) -> dict[str, tuple]:
    """Each chart's legend entries with the colour of their line, over every axis that has a legend."""
    return {text.get_text(): tuple(handle.get_color()) if hasattr(handle, "get_color") else
            tuple(handle.get_facecolor()[0])
            for ax in figure.axes if ax.get_legend()
            for handle, text in zip(ax.get_legend().legend_handles, ax.get_legend().get_texts())
            if text.get_text() in ("reference fp32", "compiled fp32", "onnxruntime fp32")}


def test_every_series_is_in_the_legend_in_one_colour_on_every_chart() -> None:
    # onnxruntime ran only the short input: the last panel (input 16) lacks it, its legend must still name it.
    rows = [*ROWS, ok("onnxruntime", 1, 8, 12.0, latency_ms_p50=5.0, latency_ms_p99=6.0)]
    rows = [{"latency_ms_p50": 4.0, "latency_ms_p99": 5.0, **row} for row in rows]
    results = typed_frame(rows)
    charts = [plots.throughput_vs_batch(results), plots.latency_vs_batch(results)]
    legends = [legend_colours(chart) for chart in charts]
    assert all(set(legend) == {"reference fp32", "compiled fp32", "onnxruntime fp32"} for legend in legends)
    assert legends[0] == legends[1]
    palette = plots.series_palette(results)
    assert legends[0]["onnxruntime fp32"][:3] == pytest.approx(palette["onnxruntime fp32"])
