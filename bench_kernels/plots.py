"""matplotlib/seaborn figures of the results table; each returns a Figure (None when nothing to plot)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from bench_kernels.analysis import ok_rows

sns.set_theme(style="whitegrid", context="notebook")


def _series_label(df: pd.DataFrame) -> pd.Series:
    return df["runtime"] + " " + df["precision"]


def _facet_lines(df: pd.DataFrame, x: str, y: str, facet: str, title: str, ylabel: str,
                 log_x: bool = False) -> Figure | None:
    """One panel per value of `facet`, one line per runtime+precision."""
    data = ok_rows(df).dropna(subset=[y])
    if data.empty:
        return None
    data = data.assign(series=_series_label(data))
    facets = sorted(data[facet].unique())
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets) + 1, 3.6), squeeze=False, sharey=True)
    for ax, value in zip(axes[0], facets):
        panel = data[data[facet] == value]
        sns.lineplot(data=panel, x=x, y=y, hue="series", style="series", markers=True, dashes=False, ax=ax)
        ax.set_title(f"{facet.replace('_', ' ')} = {int(value)}")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted(panel[x].unique()))
        if log_x:
            ax.set_xscale("log", base=2)
        if ax is not axes[0][-1] and ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def throughput_vs_batch(df: pd.DataFrame) -> Figure | None:
    return _facet_lines(df, "batch_size", "tokens_per_s", "input_len",
                        "Generated tokens/s vs batch size (end to end, higher is better)", "tokens/s")


def latency_vs_batch(df: pd.DataFrame) -> Figure | None:
    """p50 (solid) and p99 (dashed) end-to-end latency per batch size."""
    data = ok_rows(df).dropna(subset=["latency_ms_p50"])
    if data.empty:
        return None
    data = data.assign(series=_series_label(data))
    long = data.melt(id_vars=["series", "batch_size", "input_len"], value_vars=["latency_ms_p50", "latency_ms_p99"],
                     var_name="percentile", value_name="latency_ms")
    long["percentile"] = long["percentile"].str.replace("latency_ms_", "")
    facets = sorted(long["input_len"].unique())
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets) + 1, 3.6), squeeze=False, sharey=True)
    for ax, value in zip(axes[0], facets):
        panel = long[long["input_len"] == value]
        sns.lineplot(data=panel, x="batch_size", y="latency_ms", hue="series", style="percentile", markers=True, ax=ax)
        ax.set_title(f"input len = {int(value)}")
        ax.set_xlabel("batch size")
        ax.set_ylabel("end-to-end latency (ms)")
        ax.set_xticks(sorted(panel["batch_size"].unique()))
        if ax is not axes[0][-1] and ax.get_legend():
            ax.get_legend().remove()
    fig.suptitle("Latency p50 / p99 vs batch size (lower is better)")
    fig.tight_layout()
    return fig


def ttft_vs_input_len(df: pd.DataFrame) -> Figure | None:
    return _facet_lines(df, "input_len", "ttft_ms_p50", "batch_size",
                        "Time to first token (p50) vs input length (lower is better)", "TTFT p50 (ms)")


def memory_vs_batch(df: pd.DataFrame) -> Figure | None:
    return _facet_lines(df, "batch_size", "peak_mem_gb", "input_len",
                        "Peak memory vs batch size (see Method for what each device counts)", "peak memory (GB)")


ALL_CHARTS = {
    "throughput": throughput_vs_batch,
    "latency": latency_vs_batch,
    "ttft": ttft_vs_input_len,
    "memory": memory_vs_batch,
}
