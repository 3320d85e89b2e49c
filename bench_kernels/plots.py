"""matplotlib/seaborn figures of the results table; each returns a Figure (None when nothing to plot)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench_kernels.analysis import (break_even_table, gpu_counts, ok_rows, on_gpus, reference_precision_for,
                                    sample_count, speedup_table, split_deployments, unquantized_reference_precision)
from bench_kernels.results import COLUMN
from bench_kernels.verdicts import SPEED_WORDS, VERDICT_COLOURS

sns.set_theme(style="whitegrid", context="notebook")


def _series_label(df: pd.DataFrame) -> pd.Series:
    """'compiled fp8', or 'compiled fp8 on 2 GPUs' for a deployment over several GPUs."""
    return df["runtime"] + " " + df["precision"] + gpu_counts(df).map(on_gpus)


def series_palette(df: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """One colour per series (runtime x precision x GPU count) of the ok inference rows, in sorted order: every
    chart of one results frame draws a series in the same colour."""
    labels = sorted(set(_series_label(ok_rows(df))))
    return dict(zip(labels, sns.color_palette("tab10" if len(labels) <= 10 else "tab20", len(labels))))


def _hue(data: pd.DataFrame, palette: dict[str, tuple[float, float, float]]) -> dict:
    """seaborn's hue arguments for data's `series`: the palette's colours, every series of the chart in each legend
    (a panel may lack some)."""
    present = set(data["series"])
    order = [label for label in palette if label in present]
    unknown = sorted(present - set(order))  # not among the palette's series: colours after the palette's
    extra = dict(zip(unknown, sns.color_palette("tab20", len(palette) + len(unknown))[len(palette):]))
    colours = {**{label: palette[label] for label in order}, **extra}
    return {"hue": "series", "hue_order": order + unknown, "palette": colours}


def _facet_panels(data: pd.DataFrame, x: str, y: str, facet: str, title: str, ylabel: str,
                  palette: dict[str, tuple[float, float, float]], log_x: bool = False, log_y: bool = False,
                  style: str = "series") -> Figure:
    """One panel per value of `facet`, one colour per value of data's `series` column (its palette's), line style by
    `style`; the last panel's legend names every series of the chart."""
    facets = sorted(data[facet].unique())
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets) + 1, 3.6), squeeze=False, sharey=True)
    for ax, value in zip(axes[0], facets):
        panel = data[data[facet] == value]
        sns.lineplot(data=panel, x=x, y=y, **_hue(data, palette), style=style, markers=True,
                     dashes=style != "series", ax=ax)
        ax.set_title(f"{facet.replace('_', ' ')} = {int(value)}")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log", base=2)
            ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(sorted(panel[x].unique()))  # after the scale: only the measured values get ticks
        if log_y:
            ax.set_yscale("log")
        if ax is not axes[0][-1] and ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _reference_line(ax: Axes, text: str, *, y: float | None = None, x: float | None = None, **style: Any) -> None:
    """A horizontal (y) or vertical (x) reference line with its name written beside it: a legend drawn before the
    line was added would not name it."""
    colour = style.setdefault("color", "#343a40")
    if y is not None:
        ax.axhline(y, **style)
        ax.annotate(text, xy=(0.01, y), xycoords=("axes fraction", "data"), xytext=(0, 2), textcoords="offset points",
                    fontsize=8, color=colour, va="bottom")
    else:
        ax.axvline(x, **style)
        ax.annotate(text, xy=(x, 0.99), xycoords=("data", "axes fraction"), xytext=(3, 0), textcoords="offset points",
                    fontsize=8, color=colour, va="top", rotation=90)


def _facet_lines(df: pd.DataFrame, x: str, y: str, facet: str, title: str, ylabel: str | None = None,
                 log_x: bool = False) -> Figure | None:
    """One panel per value of `facet`, one line per runtime+precision, over the ok inference rows; the y axis
    labelled from the metric registry unless given."""
    data = ok_rows(df).dropna(subset=[y])
    if data.empty:
        return None
    return _facet_panels(data.assign(series=_series_label(data)), x, y, facet, title,
                         ylabel or COLUMN[y].titled, series_palette(df), log_x=log_x)


def throughput_vs_batch(df: pd.DataFrame) -> Figure | None:
    return _facet_lines(df, "batch_size", "tokens_per_s", "input_len",
                        "Generated tokens/s vs batch size (end to end, higher is better)")


def latency_vs_batch(df: pd.DataFrame) -> Figure | None:
    """p50 (solid) and p99 (dashed) end-to-end latency per batch size, each named for what it is over the runs
    (a p99 of 5 runs: '≈ max of 5 runs')."""
    data = ok_rows(df).dropna(subset=["latency_ms_p50"])
    if data.empty:
        return None
    data = data.assign(series=_series_label(data))
    percentiles = ["latency_ms_p50", "latency_ms_p99"]
    long = data.melt(id_vars=["series", "batch_size", "input_len"], value_vars=percentiles,
                     var_name="percentile", value_name="latency_ms")
    counts = [sample_count(row, COLUMN["latency_ms_p99"].n) for _, row in data.iterrows()]
    long["percentile"] = long["percentile"].map({c: COLUMN[c].statistic(counts) for c in percentiles})
    return _facet_panels(long, "batch_size", "latency_ms", "input_len",
                         "End-to-end latency p50 / p99 vs batch size (lower is better)", "end-to-end latency (ms)",
                         series_palette(df), style="percentile")


def ttft_vs_input_len(df: pd.DataFrame) -> Figure | None:
    return _facet_lines(df, "input_len", "ttft_ms_p50", "batch_size",
                        "Time to first token (p50) vs input length (lower is better)")


def memory_vs_batch(df: pd.DataFrame) -> Figure | None:
    """Peak memory of the busiest device (all of it for a single device), against one card's capacity."""
    rows = ok_rows(df)
    per_device = rows["peak_mem_gb_per_gpu"].fillna(rows["peak_mem_gb"]) if "peak_mem_gb_per_gpu" in rows \
        else rows["peak_mem_gb"]
    fig = _facet_lines(df.assign(memory_gb=pd.Series(per_device, index=rows.index)), "batch_size", "memory_gb",
                       "input_len", "Peak memory per device vs batch size (see Method for what each device counts)",
                       "peak memory per device (GB)")
    capacity = pd.to_numeric(rows.get("gpu_memory_gb"), errors="coerce").max() if "gpu_memory_gb" in rows else None
    if fig is not None and capacity and capacity == capacity:
        for ax in fig.axes:
            _reference_line(ax, f"one card: {capacity:.0f} GB", y=capacity, color="#b00020", linestyle="--",
                            linewidth=1)
    return fig


def _against_bound(df: pd.DataFrame, column: str, title: str, x: str, facet: str, above: str) -> Figure | None:
    """A share of a roofline per shape; the red line is the bound, points above it are flagged (`above`)."""
    fig = _facet_lines(df, x, column, facet, title, log_x=True)
    if fig is None:
        return None
    data = ok_rows(df).dropna(subset=[column])
    facets = sorted(data[facet].unique())
    for ax, value in zip(fig.axes, facets):
        _reference_line(ax, "the bound (1.0)", y=1.0, color="#b00020", linestyle="--", linewidth=1)
        over = data[(data[facet] == value) & (data[column] > 1.0)]
        if not over.empty:  # above the bound is impossible: a measurement error, shown as such
            ax.scatter(over[x], over[column], s=120, facecolors="none", edgecolors="#b00020", label=above)
        ax.set_ylim(0, max(1.1, float(data[column].max()) * 1.05))
    return fig


def efficiency_vs_batch(df: pd.DataFrame) -> Figure | None:
    """Decode efficiency against the bandwidth roofline, per batch size."""
    return _against_bound(df, "efficiency", "Decode efficiency vs the roofline (decode tokens/s over the bandwidth "
                          "bound; 1.0 = bound)", "batch_size", "input_len", "above roofline: measurement error")


def prefill_efficiency_vs_batch(df: pd.DataFrame) -> Figure | None:
    """Prefill efficiency against the compute roofline (the measured matmul rate of its precision), per batch size."""
    return _against_bound(df, "prefill_efficiency", "Prefill efficiency vs the compute roofline (prefill FLOP/s "
                          "over the measured matmul rate of its precision; 1.0 = bound)", "batch_size", "input_len",
                          "above compute roofline: measurement error")


def speedup_heatmaps(df: pd.DataFrame) -> Figure | None:
    """Throughput over the reference per (batch, input length), one heatmap per runtime and precision. A panel
    against a quantized reference (fp8: slower than the reference's bf16) writes the speedup over the reference's
    unquantized baseline under each cell, so no speedup is read against the slow baseline alone."""
    df = split_deployments(df)
    panels = []
    measured = ok_rows(df)[["runtime", "precision"]].drop_duplicates()
    unquantized = unquantized_reference_precision(df)
    for runtime, precision in measured[measured["runtime"] != "reference"].itertuples(index=False):
        baseline = reference_precision_for(df, precision)
        table = speedup_table(df, runtime, baseline_precision=baseline)
        table = table[table["precision"] == precision]
        if table.empty:
            continue
        beside = None
        if unquantized is not None and baseline != unquantized:
            beside = speedup_table(df, runtime, baseline_precision=unquantized)
            beside = beside[beside["precision"] == precision]
        title = f"{runtime} {precision} vs reference {baseline}"
        panels.append((title + (f"\n(below: vs reference {unquantized})" if beside is not None else ""), table,
                       beside))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.5, 3.8), squeeze=False)
    top = max(float(t["speedup"].max()) for _, t, _ in panels)
    for ax, (title, table, beside) in zip(axes[0], panels):
        grid = _speedup_grid(table)
        labels = grid.map(lambda v: f"{v:.1f}")
        if beside is not None:
            below = _speedup_grid(beside).reindex_like(grid).map(lambda v: f"{v:.1f}" if pd.notna(v) else "")
            labels = labels + below.where(below == "", "\n" + below + f" vs {unquantized}")
        sns.heatmap(grid, annot=labels.where(grid.notna(), ""), fmt="", cmap="RdYlGn", center=1.0, vmin=0,
                    vmax=max(top, 2.0), ax=ax, cbar=ax is axes[0][-1], annot_kws={"fontsize": 9},
                    cbar_kws={"label": "speedup over the reference (x)"})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("input length")
        ax.set_ylabel("batch size")
    fig.suptitle("Speedup over the reference (end-to-end tokens/s ratio; > 1 is faster)")
    fig.tight_layout()
    return fig


def _speedup_grid(table: pd.DataFrame) -> pd.DataFrame:
    """A speedup_table as batch size x input length."""
    grid = table.pivot_table(index="batch_size", columns="input_len", values="speedup")
    grid.index = grid.index.astype(int)
    grid.columns = grid.columns.astype(int)
    return grid


def build_vs_break_even(df: pd.DataFrame) -> Figure | None:
    """Generated tokens until a build (export, engine, compile) pays for itself, per batch size."""
    table = break_even_table(df)
    table = table[table["break_even_tokens"].abs() < float("inf")]
    if table.empty:
        return None
    series = _series_label(table)
    table = table.assign(series=series + " (build " + table["build_s"].map(lambda s: f"{s:.0f} s") + ")")
    colours = series_palette(df)  # a series' colour as on the other charts, its label with its build time
    palette = {label: colours[base] for base, label in sorted(set(zip(series, table["series"]))) if base in colours}
    return _facet_panels(table, "batch_size", "break_even_tokens", "input_len",
                         "Build time against break-even: tokens to generate before the build beats the reference",
                         "break-even (generated tokens)", palette, log_x=True, log_y=True)


def comparison_ratios(changes: pd.DataFrame) -> Figure | None:
    """tokens/s of run B over run A per shape (a compare.Comparison's changes), one panel per runtime and
    precision; the grey bar around 1 is the runs' spread, within which a ratio counts as unchanged."""
    speed = changes[changes["metric"] == "tokens_per_s"]
    if speed.empty:
        return None
    panels = list(speed.groupby(["runtime", "precision"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(0.45 * len(speed) + 2 * len(panels) + 1, 3.8),
                             squeeze=False, sharey=True)
    for ax, ((runtime, precision), panel) in zip(axes[0], panels):
        panel = panel.sort_values(["batch_size", "input_len", "output_len"]).reset_index(drop=True)
        tolerance = panel[["spread_a", "spread_b"]].max(axis=1, skipna=False) / panel["a"]
        ax.bar(panel.index, 2 * tolerance, bottom=1 - tolerance, width=0.6, color="#e9ecef")
        for verdict, word in SPEED_WORDS.items():
            points = panel[panel["verdict"] == verdict]
            if not points.empty:
                ax.scatter(points.index, points["ratio"], color=VERDICT_COLOURS[verdict], s=60, zorder=3, label=word)
        _reference_line(ax, "B = A", y=1.0, linewidth=1)
        ax.set_xticks(panel.index, [f"b{b:.0f} in{i:.0f} out{o:.0f}" for b, i, o in
                                    panel[["batch_size", "input_len", "output_len"]].itertuples(index=False)],
                      rotation=30, ha="right")
        ax.set_title(f"{runtime} {precision}")
        ax.set_ylabel("tokens/s B / A")
        ax.legend(fontsize=8)
    fig.suptitle("tokens/s of run B over run A per shape (> 1 is faster; grey: within the runs' spread)")
    fig.tight_layout()
    return fig


def speed_vs_quality(df: pd.DataFrame) -> Figure | None:
    """Each runtime x precision with a perplexity: its best measured tokens/s (any shape) against how much worse
    its perplexity is than the reference's, so the precisions' trade-off reads off one chart."""
    quality = df[(df["stage"] == "quality") & (df["status"] == "ok")].dropna(subset=["ppl_delta_pct"]) \
        if "ppl_delta_pct" in df else df.iloc[0:0]
    speed = ok_rows(df).dropna(subset=["tokens_per_s"])
    if quality.empty or speed.empty:
        return None
    best = speed.groupby(["runtime", "precision"])["tokens_per_s"].max().rename("best_tokens_per_s").reset_index()
    points = quality.merge(best, on=["runtime", "precision"])
    if points.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = points.assign(series=_series_label(points))
    colours = series_palette(df)
    sns.scatterplot(data=points, x="ppl_delta_pct", y="best_tokens_per_s", **_hue(points, colours), s=90, ax=ax)
    for _, point in points.iterrows():
        ax.annotate(f"{point['runtime']} {point['precision']}", (point["ppl_delta_pct"], point["best_tokens_per_s"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    _reference_line(ax, "the reference's perplexity", x=0, color="grey", linewidth=0.8)
    ax.set_xlabel("perplexity above the reference's (%, lower is better)")
    ax.set_ylabel("best measured tokens/s")
    fig.suptitle("Speed against quality per runtime and precision (up and left is better)")
    fig.tight_layout()
    return fig


# The report shows these in order: a new chart is one entry here.
ALL_CHARTS = {
    "throughput": throughput_vs_batch,
    "latency": latency_vs_batch,
    "time to first token": ttft_vs_input_len,
    "memory": memory_vs_batch,
    "efficiency": efficiency_vs_batch,
    "prefill efficiency": prefill_efficiency_vs_batch,
    "speed vs quality": speed_vs_quality,
    "speedup": speedup_heatmaps,
    "break-even": build_vs_break_even,
}


def pareto(table: pd.DataFrame, tpot_ms: float | None = None,
           palette: dict[str, tuple[float, float, float]] | None = None) -> Figure | None:
    """Per-user tokens/s at the per-token latency p99 (1000 / itl_ms_p99, the statistic the target is checked at)
    against tokens/s per GPU, one line per runtime x precision over batch sizes, points labelled with the batch
    size; the region that meets the per-token latency target shaded, so a configuration that fails it lies outside.
    palette: the results' series_palette, so its series keep their colours from the other charts."""
    data = table.dropna(subset=["itl_ms_p99", "tokens_per_s_per_gpu"])
    if data.empty:
        return None
    gpus = data["gpu_count"].map(on_gpus)
    data = data.assign(series=data["runtime"] + " " + data["precision"] + gpus,
                       per_user_at_p99=1000.0 / data["itl_ms_p99"]).sort_values("batch_size")
    fig, ax = plt.subplots(figsize=(8, 5))
    palette = palette or dict(zip(sorted(set(data["series"])), sns.color_palette("tab10")))
    sns.lineplot(data=data, x="per_user_at_p99", y="tokens_per_s_per_gpu", **_hue(data, palette),
                 style="series", markers=True, dashes=False, sort=False, ax=ax)
    for _, row in data.iterrows():
        ax.annotate(f"b{int(row['batch_size'])}", (row["per_user_at_p99"], row["tokens_per_s_per_gpu"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    if tpot_ms:
        threshold = 1000.0 / tpot_ms
        right = max(float(data["per_user_at_p99"].max()) * 1.1, threshold * 1.2)
        ax.axvspan(threshold, right, color="#d8f3dc", alpha=0.6, zorder=0,
                   label=f"meets {tpot_ms:g} ms per token at p99 (the target)")
        ax.set_xlim(left=0, right=right)
        ax.legend()
    ax.set_xlabel("per-user tokens/s at the per-token latency p99 (1000 / p99)")
    ax.set_ylabel("tokens/s per GPU")
    fig.suptitle("Throughput per GPU against speed per user (up and right is better)")
    fig.tight_layout()
    return fig
