"""Run B against run A: per-shape ratios B / A, each judged against the runs' own spread, and what differs in
how the runs were measured.

The rule: a value changed when the two runs differ by more than the larger of their two spreads, a run's spread
being the interquartile range (75th - 25th percentile) of that shape's raw samples in samples.jsonl. Peak memory
and perplexity are one value per run, and a row with fewer than two samples has no spread: such ratios are
shown, never judged (equal values are unchanged).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench_kernels.analysis import measurement_differences, ok_rows, plain_number
from bench_kernels.paths import resolve_project_path
from bench_kernels.results import (COLUMN, KEY_COLUMNS, METRICS, PROVENANCE_COLUMNS, SHAPE_COLUMNS, Column,
                                   ResultsStore, load_results, read_rows, row_key)
from bench_kernels.verdicts import BETTER, NOT_JUDGED, SPEED_WORDS, UNCHANGED, WORSE

# Inference rows are joined on the measurement's key less the model (runs of two models compare, with a warning).
SHAPE_KEY = [c for c in KEY_COLUMNS if c not in ("stage", "model")]
QUALITY_KEY = ["runtime", "precision", "gpu_count"]
WHOLE_NUMBERS = ["gpu_count", *SHAPE_COLUMNS]
# What was measured, compared field by field beside the environment columns.
SETUP_COLUMNS = ["model", "weights", "warmup", "repeats"]
VERDICT_STYLE = {BETTER: "background-color: #d8f3dc; font-weight: bold",
                 WORSE: "background-color: #ffd6d6; font-weight: bold",
                 UNCHANGED: "", NOT_JUDGED: "color: #6c757d; font-style: italic"}
CHANGE_COLUMNS = ["stage", *SHAPE_KEY, "metric", "a", "b", "ratio", "spread_a", "spread_b", "verdict"]
UNMATCHED_COLUMNS = ["stage", *SHAPE_KEY, "in_a", "in_b"]


class RunFolderError(ValueError):
    """A folder given as a run that is not one (missing, or without results.csv)."""


SPEED = COLUMN["tokens_per_s"]


def compared_metrics(stage: str) -> list[Column]:
    """The registry's metrics compare judges on rows of a stage (compared=True); a Comparison names them by column."""
    return [m for m in METRICS if m.compared and stage in m.stages]


@dataclass
class Run:
    """One run folder's results, with a '<column>_spread' column per sampled metric."""

    folder: Path
    results: pd.DataFrame

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass
class Comparison:
    """Run B against run A: every compared value, what was not measured in both, and provenance differences."""

    run_a: Run
    run_b: Run
    changes: pd.DataFrame  # CHANGE_COLUMNS, one row per key and metric measured in both runs
    unmatched: pd.DataFrame  # UNMATCHED_COLUMNS, each run's status ("absent": no row)
    provenance: pd.DataFrame  # field, a, b: only the fields that differ


def spread(samples: list[float]) -> float:
    """Interquartile range of raw samples (linear interpolation); NaN below two samples, which have no spread."""
    if len(samples) < 2:
        return math.nan
    q25, q75 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 75])
    return float(q75 - q25)


def judge(a: float, b: float, spread_a: float, spread_b: float, higher_is_better: bool) -> str:
    """better / worse when |b - a| exceeds the larger of the two runs' spreads, else unchanged; not judged
    when either run has no spread (unless the values are equal: no difference exceeds a spread)."""
    if b == a:
        return UNCHANGED
    if math.isnan(spread_a) or math.isnan(spread_b):
        return NOT_JUDGED
    if abs(b - a) <= max(spread_a, spread_b):
        return UNCHANGED
    return BETTER if (b > a) == higher_is_better else WORSE


def _metric_samples(metric: Column, row: pd.Series, samples: dict[str, Any]) -> list[float]:
    values = samples.get(metric.samples or "", [])
    if metric == SPEED:  # tokens/s of each measured run: its generated tokens over its end-to-end latency
        return [row["batch_size"] * row["output_len"] * 1e3 / v for v in values if v > 0]
    return values


def read_run(folder: str | Path) -> Run:
    """A run folder's results.csv and the spreads of its samples.jsonl; relative paths from the project root."""
    folder = resolve_project_path(folder).resolve()
    if not folder.is_dir():
        raise RunFolderError(f"{folder}: no such folder (give a run folder, e.g. reports/<run_name>)")
    csv_path = folder / "results.csv"
    if not csv_path.is_file():
        raise RunFolderError(f"{folder}: not a run folder, it has no results.csv")
    results = load_results(csv_path)
    by_key = ResultsStore(folder).samples_by_key()
    row_samples = [by_key.get(row_key(r), {}) for r in read_rows(csv_path)]
    for metric in compared_metrics("inference"):
        if metric.samples:
            results[f"{metric.name}_spread"] = [spread(_metric_samples(metric, row, samples)) for (_, row), samples
                                                  in zip(results.iterrows(), row_samples)]
    return Run(folder, results)


def _stage(run: Run, stage: str) -> pd.DataFrame:
    return run.results[run.results["stage"] == stage]


def _changes(run_a: Run, run_b: Run, stage: str, key: list[str], metrics: list[Column]) -> list[dict]:
    """One record per key measured ok in both runs and metric with a value in both."""
    ok_a, ok_b = (_stage(run, stage)[lambda d: d["status"] == "ok"] for run in (run_a, run_b))
    merged = ok_a.merge(ok_b, on=key, suffixes=("_a", "_b"))
    records = []
    for _, row in merged.iterrows():
        for metric in metrics:
            a, b = row[f"{metric.name}_a"], row[f"{metric.name}_b"]
            if pd.isna(a) or pd.isna(b):
                continue
            spread_a = row.get(f"{metric.name}_spread_a", math.nan)
            spread_b = row.get(f"{metric.name}_spread_b", math.nan)
            records.append({"stage": stage, **{k: row[k] for k in key}, "metric": metric.name, "a": a, "b": b,
                            "ratio": b / a if a else math.nan, "spread_a": spread_a, "spread_b": spread_b,
                            "verdict": judge(a, b, spread_a, spread_b, metric.better == "higher")})
    return records


def _unmatched(run_a: Run, run_b: Run, stage: str, key: list[str]) -> list[dict]:
    """Keys of the stage not measured ok in both runs, with each run's status ('absent' where it has no row)."""
    merged = _stage(run_a, stage)[key + ["status"]].merge(_stage(run_b, stage)[key + ["status"]], on=key,
                                                          how="outer", suffixes=("_a", "_b"))
    merged = merged.fillna({"status_a": "absent", "status_b": "absent"})
    missing = merged[(merged["status_a"] != "ok") | (merged["status_b"] != "ok")]
    return [{"stage": stage, **{k: row[k] for k in key}, "in_a": row["status_a"], "in_b": row["status_b"]}
            for _, row in missing.iterrows()]


def _number(value: float) -> str:
    """3 significant digits: the last digits of a measured rate (copy bandwidth, matmul rate) are noise."""
    return f"{float(f'{value:.3g}'):g}"  # no exponent form below a million


def _values(rows: pd.DataFrame, column: str) -> str:
    """The distinct values of a column over a run's rows, as text ('—' when none)."""
    values = rows[column].dropna()
    texts = values.map(_number) if pd.api.types.is_numeric_dtype(values) else values[values != ""]
    return ", ".join(sorted(set(texts))) or "—"


def provenance_differences(run_a: Run, run_b: Run) -> pd.DataFrame:
    """The setup, environment and runtime version fields whose values differ, with both runs' values."""
    a, b = run_a.results, run_b.results
    rows = [(column, _values(a, column), _values(b, column)) for column in [*SETUP_COLUMNS, *PROVENANCE_COLUMNS]]
    rows += [(f"runtime_version ({runtime})", _values(a[a["runtime"] == runtime], "runtime_version"),
              _values(b[b["runtime"] == runtime], "runtime_version"))
             for runtime in sorted(set(a["runtime"]) | set(b["runtime"]))]
    table = pd.DataFrame(rows, columns=["field", "a", "b"])
    return table[table["a"] != table["b"]].reset_index(drop=True)


def compare_runs(folder_a: str | Path, folder_b: str | Path) -> Comparison:
    """Run B against run A: inference joined on runtime, precision and shape, perplexity on runtime and precision."""
    run_a, run_b = read_run(folder_a), read_run(folder_b)
    changes = (_changes(run_a, run_b, "inference", SHAPE_KEY, compared_metrics("inference"))
               + _changes(run_a, run_b, "quality", QUALITY_KEY, compared_metrics("quality")))
    unmatched = _unmatched(run_a, run_b, "inference", SHAPE_KEY) + _unmatched(run_a, run_b, "quality", QUALITY_KEY)
    return Comparison(run_a, run_b, pd.DataFrame(changes, columns=CHANGE_COLUMNS),
                      pd.DataFrame(unmatched, columns=UNMATCHED_COLUMNS), provenance_differences(run_a, run_b))


def summary_table(comparison: Comparison) -> pd.DataFrame:
    """Per runtime and precision: shapes compared on tokens/s, and how many B ran faster, slower or unchanged."""
    speed = comparison.changes[comparison.changes["metric"] == SPEED.name]
    rows = [{"runtime": runtime, "precision": precision, "shapes": len(group),
             **{word: int((group["verdict"] == verdict).sum()) for verdict, word in SPEED_WORDS.items()}}
            for (runtime, precision), group in speed.groupby(["runtime", "precision"])]
    return pd.DataFrame(rows, columns=["runtime", "precision", "shapes", *SPEED_WORDS.values()])


def summary_line(comparison: Comparison) -> str:
    """One line: per runtime and precision, how many shapes B ran faster, slower or unchanged (tokens/s)."""
    counts = [f"{row['runtime']} {row['precision']}: {row['faster']} faster, {row['slower']} slower, "
              f"{row['unchanged']} unchanged" + (f", {row['not judged']} not judged" if row["not judged"] else "")
              for row in summary_table(comparison).to_dict("records")]
    shapes = comparison.unmatched["stage"].eq("inference").sum()
    return (f"{comparison.run_b.name} vs {comparison.run_a.name}, tokens/s beyond the runs' spread: "
            + ("; ".join(counts) or "no shape measured in both runs")
            + (f" ({shapes} shapes not measured in both)" if shapes else ""))


def _shape_text(table: pd.DataFrame) -> pd.DataFrame:
    """Shape columns as whole numbers, blank where a row has none (perplexity rows); metrics by their labels."""
    shaped = table.assign(**{c: table[c].map(lambda v: "" if pd.isna(v) else f"{v:.0f}") for c in WHOLE_NUMBERS})
    return shaped.assign(metric=shaped["metric"].map(lambda m: COLUMN[m].titled)) if "metric" in shaped else shaped


def _table(table: pd.DataFrame, empty: str) -> str:
    if table.empty:
        return f"<p>{html.escape(empty)}</p>"
    return table.to_html(index=False, na_rep="", float_format=plain_number)


def heading_html(comparison: Comparison) -> str:
    """Which run is A and which is B, the summary line, and a warning when they measured different models."""
    a, b = comparison.run_a, comparison.run_b
    models = comparison.provenance[comparison.provenance["field"] == "model"]
    warning = ("" if models.empty else f"<p style='color:#b00020'><b>Different models</b>: A measured "
               f"{html.escape(models['a'].iloc[0])}, B {html.escape(models['b'].iloc[0])}; the ratios compare the "
               "models as much as anything else.</p>")
    unlike = measurement_differences(ok_rows(b.results), ok_rows(a.results))
    if unlike:
        warning += (f"<p style='color:#8a5a00'><b>Not measured alike</b>: B against A, "
                    f"{html.escape('; '.join(unlike))}; a ratio may owe part of itself to that.</p>")
    return (f"<p><b>A</b> (baseline): {html.escape(a.name)} (<code>{html.escape(str(a.folder))}</code>)<br>"
            f"<b>B</b>: {html.escape(b.name)} (<code>{html.escape(str(b.folder))}</code>)</p>"
            f"<p>{html.escape(summary_line(comparison))}</p>{warning}")


def summary_html(comparison: Comparison) -> str:
    return _table(summary_table(comparison), "No inference shape was measured in both runs.")


def ratios_html(comparison: Comparison) -> str:
    """Ratios B / A per shape (rows) and metric (columns), coloured where the change exceeds the runs' spread."""
    inference = comparison.changes[comparison.changes["stage"] == "inference"]
    if inference.empty:
        return "<p>No inference shape was measured in both runs.</p>"
    names = [m.name for m in compared_metrics("inference") if m.name in set(inference["metric"])]
    shaped = inference.astype({c: "Int64" for c in WHOLE_NUMBERS})  # numbers, so that shapes sort by size
    titles = {name: COLUMN[name].titled for name in names}
    ratios = shaped.pivot(index=SHAPE_KEY, columns="metric", values="ratio")[names].rename(columns=titles)
    verdicts = shaped.pivot(index=SHAPE_KEY, columns="metric", values="verdict")[names].rename(columns=titles)
    text = ratios.map(lambda r: "—" if pd.isna(r) else f"{r:.3f}") + verdicts.map(
        lambda v: f" {v}" if v in (BETTER, WORSE) else "")
    styled = text.style.apply(lambda _: verdicts.map(lambda v: VERDICT_STYLE.get(v, "")), axis=None)
    return styled.set_caption("Ratios B / A per shape").to_html()


def unmatched_html(comparison: Comparison) -> str:
    table = _shape_text(comparison.unmatched).rename(columns={"in_a": f"A: {comparison.run_a.name}",
                                                                "in_b": f"B: {comparison.run_b.name}"})
    return _table(table, "Every shape and perplexity row was measured in both runs.")


def quality_html(comparison: Comparison) -> str:
    quality = comparison.changes[comparison.changes["stage"] == "quality"]
    table = quality[[*QUALITY_KEY, "metric", "a", "b", "ratio", "verdict"]].rename(
        columns={"a": "A", "b": "B", "ratio": "B / A"})
    table = table.assign(gpu_count=table["gpu_count"].map(lambda v: f"{v:.0f}"),
                         metric=table["metric"].map(lambda m: COLUMN[m].titled))
    return _table(table, "No perplexity was measured in both runs (random weights get none).")


def provenance_html(comparison: Comparison) -> str:
    table = comparison.provenance.rename(columns={"a": f"A: {comparison.run_a.name}",
                                                  "b": f"B: {comparison.run_b.name}"})
    return _table(table, "Every recorded setup and environment field is the same in both runs.")


def values_html(comparison: Comparison) -> str:
    """Every compared value with both runs' spreads and the verdict."""
    table = _shape_text(comparison.changes).rename(columns={"a": "A", "b": "B", "ratio": "B / A",
                                                             "spread_a": "spread A", "spread_b": "spread B"})
    return _table(table, "Nothing was measured in both runs.")


def method_html() -> str:
    """The comparison method in plain words (HTML), stated in every comparison."""
    lines = [
        "<b>Ratios</b> are run B over run A (B / A), joined on runtime, precision, batch size, input length and "
        "output length for inference and on runtime and precision for perplexity, where both runs measured the "
        "row ok. tokens/s above 1 is faster; TTFT, per-token latency, latency, memory and perplexity below 1 are "
        "better.",
        "<b>Changed</b> only when |B - A| exceeds the larger of the two runs' spreads; a run's spread is the "
        "interquartile range (75th - 25th percentile) of that shape's raw samples in samples.jsonl: the measured "
        "runs' TTFT and end-to-end latency (for tokens/s, each run's generated tokens over its latency) and "
        "every decode step's latency (per-token latency). Otherwise unchanged.",
        "<b>Not judged</b>: peak memory and perplexity are one value per run, and a row with fewer than two "
        "samples has no spread: their ratios are shown, never flagged (equal values are unchanged).",
        "<b>Not compared</b>: rows present in one run only, or not measured ok in both, are listed with each "
        "run's status.",
        "<b>Provenance</b>: only the fields whose values differ, over all rows of each run (several values: the run "
        "was measured in several sessions); numbers (copy bandwidth, matmul rate) are rounded to 3 significant "
        "digits.",
    ]
    return "<ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"
