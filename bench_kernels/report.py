"""What 90_report shows: provenance, results, charts, the decision, and what was not measured. It renders: the
decision comes from decision.py, the rows from results.py, and what the spec asked for from a ReportSpec."""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from bench_kernels.analysis import (build_columns, build_rows, code_versions, gpu_counts, inference_columns,
                                    inference_rows, measurement_differences, named_percentiles, not_yet_run,
                                    ok_rows, on_gpus, plain_number, quality_columns, quality_rows, readable_errors,
                                    runs_precision, scaling_table, unmeasured_summary, with_sample_counts)
from bench_kernels.claims import check_claims, claims_section_html
from bench_kernels.claims_file import load_claims
from bench_kernels.decision import (CONFIDENCE, MATRIX_NOTES, WINNER_MARK, Decision, Evidence,
                                    Recommendation, Targets, behind_pct, cost_formulas, describe, gate_failures,
                                    summary_facts, usd_per_million_tokens, usd_per_month)
from bench_kernels.gpu_specs import specified_bandwidth_gbps
from bench_kernels.method import (BATCH_FORMATION, MATMUL_SIZE_CPU, MATMUL_SIZE_GPU, MAX_UTILIZATION,
                                  MEMORY_SAMPLE_INTERVAL_S, PERPLEXITY_WINDOW, PERPLEXITY_WINDOWS,
                                  perplexity_predictions)
from bench_kernels.plots import ALL_CHARTS
from bench_kernels.results import (MATMUL_COLUMNS, PROFILE_COLUMNS, PROFILER_STEP_PREFIX, PROVENANCE_COLUMNS,
                                   ResultsStore, load_results)
from bench_kernels.roofline import streaming_gbps_of


@dataclass(frozen=True)
class ReportSpec:
    """What the report reads beside the results: where they are, what the spec asked for (to say what has not run
    yet), the workload and its targets, the price and load for the cost section, the claims file."""

    run_dir: Path
    model: str
    device: str
    output_len: int
    warmup: int
    repeats: int
    batch_sizes: tuple[int, ...]
    input_lens: tuple[int, ...]
    precisions_by_runtime: dict[str, list[str]]  # every runtime of the spec, with the precisions it runs
    targets: Targets
    gpu_hour_usd: float = 0.0
    requests_per_day: float | None = None
    load_output_len: int | None = None
    claims: str = ""
    traffic: dict = field(default_factory=dict)  # the spec's traffic key, as given (traffic.spec parses it)
    max_utilization: float = MAX_UTILIZATION  # GPUs for the load are sized at most this busy
    quality_evidence: tuple[Path, ...] = ()  # results folders of real-weight runs whose gate verdicts are cited
    perplexity_windows: int = PERPLEXITY_WINDOWS  # the packaged text's first windows perplexity scores

    @property
    def max_ppl_delta_pct(self) -> float | None:
        return self.targets.max_ppl_delta_pct

    @classmethod
    def of(cls, spec: Any) -> ReportSpec:
        """From a validated sweep spec (config.SweepConfig, read by its fields: the report half does not import
        the measurement half)."""
        shape, slo, load = spec.workload_shape, spec.targets, spec.sized_load
        return cls(spec.run_dir, spec.model, spec.device, spec.output_len, spec.warmup, spec.repeats,
                   tuple(spec.batch_sizes), tuple(spec.input_lens),
                   {runtime: spec.precisions_for(runtime) for runtime in spec.runtimes},
                   Targets(shape.batch_size, shape.input_len, shape.output_len, slo.ttft_ms, slo.tpot_ms,
                           spec.max_ppl_delta_pct),
                   spec.gpu_hour_usd, load.requests_per_day if load else None, load.output_len if load else None,
                   spec.claims, dict(spec.traffic or {}), load.max_utilization if load else MAX_UTILIZATION,
                   spec.evidence_dirs, spec.perplexity_windows)

    def evidence(self) -> pd.DataFrame:
        """The rows of the runs cited as quality evidence (empty without any)."""
        return load_results([folder / "results.csv" for folder in self.quality_evidence])


def _from_folder(value: Any, folder: Path) -> Any:
    """A spec field's paths (one or a list) relative to folder: an absolute one names the machine that wrote it."""
    if isinstance(value, (tuple, list)):
        return [_from_folder(v, folder) for v in value]
    is_path = isinstance(value, Path) or (isinstance(value, str) and os.path.isabs(value))
    return os.path.relpath(value, folder) if is_path else value


def run_metadata(spec: ReportSpec, df: pd.DataFrame) -> dict[str, Any]:
    """What results.json says of the run beside its rows: its name, model, the spec the report read, and the code
    and library versions the rows were measured with."""
    versions = {"git_sha": code_versions(df)} if not df.empty else {}
    for column in ("torch_version", "transformers_version"):
        versions[column] = sorted(set(df[column]) - {""})
    versions["runtime_version"] = {runtime: sorted(set(rows["runtime_version"]) - {""})
                                   for runtime, rows in df.groupby("runtime")}
    fields = {k: _from_folder(v, spec.run_dir) for k, v in asdict(spec).items() if k not in ("run_dir", "model")}
    return {"run_name": spec.run_dir.name, "model": spec.model, "spec": fields, "versions": versions}


def measured_with_html(df: pd.DataFrame) -> str:
    """The first screen's line on how the rows were measured: the code versions with their row counts, and the
    range of the measured streaming bandwidth (HTML)."""
    if df.empty:
        return ""
    versions = ", ".join(f"<code>{html.escape(sha)}</code> ({n:,} rows)" for sha, n in code_versions(df).items())
    gbps = streaming_gbps_of(df).dropna()
    bandwidth = ("" if gbps.empty else f"; measured streaming bandwidth {gbps.min():,.0f} GB/s"
                 if gbps.min() == gbps.max() else f"; measured streaming bandwidth {gbps.min():,.0f} to "
                 f"{gbps.max():,.0f} GB/s")
    several = (" Comparisons between rows of different versions, or of bandwidths more than 2% apart, say so."
               if len(code_versions(df)) > 1 or (not gbps.empty and gbps.max() > 1.02 * gbps.min()) else "")
    return f"<p><b>Measured with</b> code version{'s' if ',' in versions else ''} {versions}{bandwidth}.{several}</p>"


def _rows_behind(df: pd.DataFrame, configuration: pd.Series, targets: Targets) -> pd.DataFrame:
    """The measured rows one configuration of decision.configurations stands for."""
    rows = ok_rows(df)
    return rows[(rows["runtime"] == configuration["runtime"]) & (rows["precision"] == configuration["precision"])
                & (rows["batch_size"] == configuration["batch_size"]) & (rows["input_len"] == targets.input_len)
                & (rows["output_len"] == targets.output_len)
                & (gpu_counts(rows) == configuration["gpu_count"])]


def recommendation_caveat_html(rec: Recommendation, df: pd.DataFrame, targets: Targets) -> str:
    """Under the recommendation: whether the winner and the runner-up were measured alike (code version,
    bandwidth), in words when they were not (HTML; empty when alike)."""
    if rec.best is None or rec.runner_up is None:
        return ""
    notes = measurement_differences(_rows_behind(df, rec.best, targets), _rows_behind(df, rec.runner_up, targets))
    if not notes:
        return ""
    return (f"<p style='color:#8a5a00'><b>The winner and the runner-up were not measured alike</b>: "
            f"{html.escape('; '.join(notes))}. Part of the margin may come from that, not from the runtimes.</p>")


def offline_template_dir() -> Path:
    """Folder holding the nbconvert template 'offline' (the lab template with no CDN scripts)."""
    return Path(str(resources.files("bench_kernels").joinpath("templates")))


def provenance_table(df: pd.DataFrame) -> pd.DataFrame:
    """Distinct environments the rows were measured in: which runtimes (and their versions) ran there, and when."""
    if df.empty:
        return pd.DataFrame(columns=list(PROVENANCE_COLUMNS))
    labelled = df.assign(runtime_label=df["runtime"] + df["runtime_version"].map(lambda v: f" ({v})" if v else ""))
    grouped = labelled.groupby(list(PROVENANCE_COLUMNS), dropna=False)
    table = grouped.agg(runtimes=("runtime_label", lambda s: ", ".join(dict.fromkeys(s))), rows=("status", "size"),
                        first=("timestamp", "min"), last=("timestamp", "max"))
    table = readable(table.reset_index().sort_values("first"))
    return table.T.set_axis([f"environment {i + 1}" for i in range(len(table))], axis=1)


def _int_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Shape columns as integers (blank where a row has none), not floats."""
    shape = [c for c in ("batch_size", "input_len", "output_len") if c in df]
    return df.astype({c: "Int64" for c in shape})


def results_table(df: pd.DataFrame) -> pd.DataFrame:
    """Inference rows that ran or failed, with the columns a reader compares; unavailable rows are summarised
    once in "What was and was not measured" instead. Errors whole, in plain words (analysis.plain_error)."""
    rows = inference_rows(df)
    shown = rows[rows["status"] != "unavailable"].reset_index(drop=True)
    table = with_sample_counts(_int_columns(shown[inference_columns()]), shown)
    return table.assign(error=readable_errors(shown))


def build_table(df: pd.DataFrame) -> pd.DataFrame:
    return build_rows(df)[build_columns()].reset_index(drop=True)


def quality_table(df: pd.DataFrame, max_ppl_delta_pct: float) -> pd.DataFrame:
    """Perplexity per runtime and precision, its delta against the reference, and the gate's verdict."""
    table = quality_rows(df)[quality_columns()].reset_index(drop=True)
    verdict = table["ppl_delta_pct"].map(lambda d: "" if pd.isna(d) else "FAIL" if d > max_ppl_delta_pct else "pass")
    return readable(table.assign(accuracy_gate=verdict))


def quality_notes(df: pd.DataFrame, max_ppl_delta_pct: float,
                  evidence: dict[tuple[str, str], Evidence] | None = None) -> str:
    """What the accuracy gate decided (HTML): which configurations failed it, and by how much; on random weights,
    the verdicts cited from real-weight runs (quality_evidence)."""
    if (df["weights"] == "random").any():
        text = ("<p>Random weights: perplexity, token agreement and divergence are not meaningful, so no "
                "configuration is judged on quality here and none is starred for it.</p>")
        if not evidence:
            return text + ("<p>No real-weight run is cited as quality evidence (<code>quality_evidence</code>).</p>")
        items = "".join(f"<li><b>{html.escape(runtime)} {html.escape(precision)}</b>: {html.escape(verdict.words())}"
                        "</li>" for (runtime, precision), verdict in sorted(evidence.items()))
        return text + (f"<p>Cited from real-weight runs instead, against this run's gate of {max_ppl_delta_pct:g}% "
                       f"(another model's perplexity is a guide to a precision's error, not a measurement of this "
                       f"one):</p><ul>{items}</ul>")
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
        if text.startswith(("not measured", "not meaningful", "not recorded", "no ", "invalid")):
            return "color: #8a5a00; font-style: italic"
        if text.startswith("FAIL"):
            return "color: #b00020; font-weight: bold"
        return ""

    styler = matrix.style.map(highlight).set_properties(**{"text-align": "left", "white-space": "normal"})
    notes = matrix.attrs.get(MATRIX_NOTES, {})
    if not notes:
        return styler
    items = "".join(f"<li>note {number} ({cells:,} cell{'s' if cells > 1 else ''}): {html.escape(reason)}</li>"
                    for number, (reason, cells) in notes.items())
    return styler.set_caption(f"Not measured, and why:<ul style='margin:0'>{items}</ul>").set_table_styles(
        [{"selector": "caption", "props": "caption-side: bottom; text-align: left; font-style: italic"}],
        overwrite=False)


def _targets_text(targets: Targets) -> str:
    parts = [f"batch at most {targets.batch_size}, input {targets.input_len}, output {targets.output_len} tokens"]
    if targets.ttft_ms is not None:
        parts.append(f"time to first token p99 &le; {targets.ttft_ms:g} ms")
    if targets.tpot_ms is not None:
        parts.append(f"time per output token p99 &le; {targets.tpot_ms:g} ms")
    if targets.max_ppl_delta_pct is not None:
        parts.append(f"perplexity at most {targets.max_ppl_delta_pct:g}% above the reference's")
    return "; ".join(parts)


def recommendation_html(decision: Decision) -> str:
    """The report's first words: what to ship, the fastest that passes the accuracy gate on the quality evidence,
    the runner-up, the same targets at a larger batch, what was not measured, and why every other configuration
    lost."""
    rec, targets = decision.recommendation, decision.targets
    head = f"<p><b>Workload and targets</b>: {_targets_text(targets)}.</p>"
    if rec.best is None:
        return head + ("<p><b>No measured configuration meets these targets.</b> The closest attempt of each "
                       "runtime and precision, and what it broke:</p>" + _losers_html(rec)
                       + _larger_batch_html(decision) + _unmeasured_html(rec))
    best = rec.best
    text = (f"<p style='font-size:1.15em'><b>Ship {html.escape(describe(best))}</b>: "
            f"{best['tokens_per_s_per_gpu']:,.1f} tokens/s per GPU "
            f"(goodput {best['goodput_tokens_per_s']:,.1f} tokens/s from requests that meet the targets; "
            f"{best['per_user_tokens_per_s']:,.1f} tokens/s per user).</p>")
    text += _evidence_html(rec)
    if rec.runner_up is not None:
        text += _runner_up_html(rec)
    text += _larger_batch_html(decision) + _unmeasured_html(rec)
    if not rec.quality_judged and not rec.evidence:
        text += ("<p><i>Quality was not judged: no perplexity was measured in this run (random weights carry "
                 "none) and no real-weight run is cited (<code>quality_evidence</code>), so the accuracy gate "
                 "could not exclude any configuration.</i></p>")
    losers = not rec.losers.empty or not rec.unmeasured.empty
    return head + text + ("<p>Why the others lost:</p>" + _losers_html(rec) if losers else "")


def _evidence_html(rec: Recommendation) -> str:
    """Whether the fastest passes the accuracy gate on the quality evidence, and the fastest that does beside it;
    in plain words where there is no evidence for it."""
    best, cited = rec.best, rec.evidence_for(rec.best)
    if pd.notna(best["ppl_delta_pct"]) or not rec.evidence:
        return ""  # this run judged it itself, or no run is cited: the paragraph on quality says so
    name = html.escape(f"{best['runtime']} {best['precision']}")
    if cited is None:
        text = (f"<p><b>No quality evidence for {name}</b>: this run measured no perplexity for it, and no "
                "real-weight run cited in <code>quality_evidence</code> measured it either, so whether it passes "
                "the accuracy gate is not known.")
    elif cited.passes:
        return f"<p>Quality: {name} {html.escape(cited.words())}.</p>"
    else:
        text = f"<p><b>{name} {html.escape(cited.words().replace('fails', 'FAILS', 1))}.</b>"
    passing = rec.passing
    if passing is None:
        return text + " No configuration measured here passes the gate on this run's rows or the evidence.</p>"
    behind = behind_pct(passing["tokens_per_s_per_gpu"], best["tokens_per_s_per_gpu"])
    verdict = rec.evidence_for(passing)
    why = verdict.words() if verdict is not None else "passes this run's accuracy gate"
    return (text + f" <b>The fastest that passes: {html.escape(describe(passing))}</b>, "
            f"{passing['tokens_per_s_per_gpu']:,.1f} tokens/s per GPU ({behind:.0f}% behind; {html.escape(why)}).</p>")


def _larger_batch_html(decision: Decision) -> str:
    """What the workload's batch ceiling costs: the same targets met at a larger batch, and the GPUs for the load."""
    wider, best = decision.larger_batch, decision.recommendation.best
    if wider is None:
        return ""
    gpus, best_gpus = decision.gpus_for_load(wider), decision.gpus_for_load(best)
    load = ""
    if gpus is not None:
        instead = f" instead of {best_gpus:,}" if best_gpus is not None else ""
        load = (f"; {gpus:,} GPU{'s' if gpus > 1 else ''} for the load{instead}, at most "
                f"{decision.max_utilization:.0%} busy")
    cited = decision.recommendation.evidence_for(wider)
    quality = f"; it {html.escape(cited.words())}" if cited is not None else ""
    return (f"<p><b>The same targets at a larger batch</b>: {html.escape(describe(wider))} gives "
            f"{wider['tokens_per_s_per_gpu']:,.1f} tokens/s per GPU{load}{quality}. The workload's batch of at most "
            f"{decision.targets.batch_size} is a ceiling the traffic sets: filling larger batches would cost "
            "that much less.</p>")


def _unmeasured_line(row: Any) -> str:
    return (f"<b>{html.escape(row.runtime)} {html.escape(', '.join(row.precisions))}{on_gpus(row.gpu_count)}</b>: "
            f"not measured ({html.escape(row.status)}): {html.escape(row.reason)}")


def _unmeasured_html(rec: Recommendation) -> str:
    """One line naming the runtimes not measured at the workload, and why: they are not in this decision."""
    if rec.unmeasured.empty:
        return ""
    return ("<p><b>Not in this decision</b>, because not measured at the workload: "
            + "; ".join(_unmeasured_line(row) for row in rec.unmeasured.itertuples()) + ".</p>")


def _runner_up_html(rec: Recommendation) -> str:
    """The runner-up, how far it is behind with its bootstrap interval, and 'a tie' when the interval reaches 0."""
    behind = summary_facts(rec)["behind_pct"]
    runner_up = (f"{html.escape(describe(rec.runner_up))}, {rec.runner_up['tokens_per_s_per_gpu']:,.1f} tokens/s "
                 f"per GPU")
    if rec.behind_interval_pct is None:
        return (f"<p>Runner-up: {runner_up} ({behind:.0f}% behind; no raw samples of both, so no interval on "
                "it).</p>")
    low, high = rec.behind_interval_pct
    digits = 2 if max(abs(low), abs(high)) < 1 else 1  # under 1%: enough digits to show its sign
    interval = (f"{CONFIDENCE:.0%} bootstrap interval {low:+.{digits}f}% to {high:+.{digits}f}% behind, over "
                f"{rec.runs[0]:,} and {rec.runs[1]:,} measured runs")
    if rec.tie:
        return (f"<p><b>Runner-up: {runner_up}, a tie</b>: {behind:.1f}% behind lies inside the runs' spread "
                f"({interval}); on these measurements the two are not told apart, so choose between them on "
                "the other criteria.</p>")
    return f"<p>Runner-up: {runner_up} ({behind:.0f}% behind; {interval}).</p>"


def _losers_html(rec: Recommendation) -> str:
    items = "".join(f"<li><b>{html.escape(r.runtime)} {html.escape(r.precision)}"
                    f"{on_gpus(r.gpu_count)}</b>: {html.escape(r.reason)}</li>"
                    for r in rec.losers.itertuples())
    items += "".join(f"<li>{_unmeasured_line(row)}</li>" for row in rec.unmeasured.itertuples())
    return f"<ul>{items}</ul>"


def cost_html(spec: ReportSpec, decision: Decision) -> str:
    """The cost section's words: the formulas and the same targets at a larger batch, or what to set to get
    figures."""
    costs, larger_batch = decision.costs, _larger_batch_html(decision)
    if spec.gpu_hour_usd <= 0:
        return ("<p>No cost figures: set <code>gpu_hour_usd</code> (the price of one GPU hour) in the sweep spec, "
                "and <code>load: {requests_per_day: ...}</code> to size a deployment.</p>" + larger_batch)
    if costs.empty:
        return "<p>No configuration meets the targets, so nothing is priced.</p>" + larger_batch
    sizing = (f"Load: {spec.requests_per_day:,.0f} requests a day of {spec.load_output_len} generated tokens, "
              f"each GPU at most {decision.max_utilization:.0%} busy."
              if spec.requests_per_day else "Set <code>load: {requests_per_day: ...}</code> to size a deployment.")
    formulas = "".join(f"<li>{html.escape(f)}</li>" for f in cost_formulas(decision.max_utilization))
    wider = decision.larger_batch
    priced = ""
    if wider is not None:
        gpus = decision.gpus_for_load(wider)
        usd_per_million = usd_per_million_tokens(spec.gpu_hour_usd, wider["tokens_per_s_per_gpu"])
        monthly = f", ${usd_per_month(gpus, spec.gpu_hour_usd):,.0f} a month" if gpus is not None else ""
        priced = f"<p>At that larger batch: ${usd_per_million:,.2f} per million generated tokens{monthly}.</p>"
    return (f"<p>GPU hour: ${spec.gpu_hour_usd:,.2f}. {sizing}</p>{readable(costs).to_html(index=False)}"
            f"<ul>{formulas}</ul>" + larger_batch + priced)


BOOLEAN_WORDS = {"true": "yes", "false": "no"}  # the report's one spelling of a boolean
# The configurations table's columns a reader decides on, first: a wide table scrolls, these stay in view.
DECISION_COLUMNS = ["runtime", "precision", "batch_size", "gpu_count", "feasible", "tokens_per_s_per_gpu",
                    "goodput_tokens_per_s", "why_not"]


def configurations_table(configurations: pd.DataFrame) -> pd.DataFrame:
    """decision.configurations with the decision columns first, then the measurements behind them, its
    percentiles named for what they are (analysis.named_percentiles)."""
    first = [c for c in DECISION_COLUMNS if c in configurations]
    return named_percentiles(configurations[first + [c for c in configurations if c not in first]])


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """For display: numbers to 4 significant digits with thousands separators and no exponent, money (usd_*
    columns) as '$13,140' or '$3.36', blanks instead of NaN and None, booleans (and results.csv's 'true', 'False')
    as 'yes' and 'no'."""
    def cell(value: object, money: bool) -> object:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, bool) or str(value).lower() in BOOLEAN_WORDS:
            return BOOLEAN_WORDS[str(value).lower()]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and money:
            return f"${value:,.2f}" if abs(value) < 1000 else f"${value:,.0f}"
        if isinstance(value, float):
            return plain_number(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return value

    return table.apply(lambda column: column.map(lambda v: cell(v, str(column.name).startswith("usd_"))))


def whole_table_html(table: pd.DataFrame, index: bool = False) -> str:
    """A static table with every cell whole (a DataFrame's own notebook display cuts text after 50 characters)."""
    return readable(table).to_html(index=index, na_rep="")


def _numbers_only(column: pd.Series) -> bool:
    """Whether a column holds numbers alone (blanks aside): its readable text then sorts as those numbers."""
    values = column.dropna()
    return not values.empty and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def interactive_table_html(table: pd.DataFrame, caption: str) -> str:
    """A complete, sortable and filterable table (itables; its JavaScript is embedded once by the notebook's
    init_notebook_mode, so the report stays one file). A click anywhere on a header sorts: itables' default
    (text_in_header_can_be_selected) keeps the header text selectable and sorts on the small arrow alone. Columns
    of numbers sort as numbers (DataTables' num-fmt type reads '1,569.2' and '$13,140'), not as their text."""
    from itables import to_html_datatable

    numeric = [i for i, name in enumerate(table.columns) if _numbers_only(table[name])]
    column_types = {"columnDefs": [{"type": "num-fmt", "targets": numeric}]} if numeric else {}
    return to_html_datatable(readable(table), caption=caption, connected=False, showIndex=False,
                             lengthMenu=[10, 25, 50, 100, -1], pageLength=25, classes="display compact",
                             text_in_header_can_be_selected=False, **column_types)


def show_table(table: pd.DataFrame, caption: str) -> None:
    """The table as interactive_table_html shows it, in the notebook (and so in the report)."""
    from IPython.display import HTML, display

    display(HTML(interactive_table_html(table, caption)))


def claims_html(spec: ReportSpec, results: pd.DataFrame) -> str:
    """Published claims set beside this run's measurements and the hardware's limit, or what to set."""
    if not spec.claims:
        return ("<p>No claims checked: set <code>claims: params/claims/&lt;name&gt;.yaml</code> in the sweep spec "
                "(for example <code>tensorrt-vs-llama-blog.yaml</code>, the article's figures).</p>")
    return claims_section_html(check_claims(load_claims(spec.claims), results))


def short_kernel_name(name: str) -> str:
    """A C++ kernel signature by its function's name alone ('void at::native::index_elementwise_kernel<128, ...>(long,
    ...)' -> 'index_elementwise_kernel'); other names (Triton kernels, aten operators) as they are."""
    bare = re.split(r"[<(]", name.removeprefix("void "), maxsplit=1)[0]
    return bare.rsplit("::", 1)[-1] if bare != name else name


def profile_table(rows: list[dict[str, str]]) -> pd.DataFrame:
    """A profile's top kernels for display: names shortened, the profiler's own step spans left out and the shares
    taken of the kernels' time alone (profiles recorded before the step spans were dropped counted them)."""
    table = pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))
    steps = table["name"].str.startswith(PROFILER_STEP_PREFIX)
    share = pd.to_numeric(table["share_pct"])
    kernels_pct = 100.0 - share[steps].sum()
    kernels = table[~steps].assign(name=table["name"].map(short_kernel_name),
                                   share_pct=(100 * share[~steps] / kernels_pct).round(1))
    return readable(kernels.astype({"calls": int, "self_time_us": float}))


def profiles_html(spec: ReportSpec) -> str:
    """The top kernels of every recorded profile (the Chrome traces lie beside results.csv), or what to set."""
    profiles = ResultsStore(spec.run_dir).profiles()
    if not profiles:
        return ("<p>No profiles: set <code>profile: true</code> to record a torch profiler trace per runtime and "
                "precision at the workload's shape (Chrome trace format, in <code>profiles/</code> beside "
                "results.csv).</p>")
    parts = ["<p>Self time of the top kernels (operators on a CPU) over the prefill and the first decode steps; "
             "open the <code>.json</code> file of the same name in <code>chrome://tracing</code> or Perfetto. "
             "Work outside torch (ONNX Runtime on the CPU) is not seen by torch's profiler.</p>"]
    for name, rows in profiles.items():
        parts.append(f"<h4>{html.escape(name)}</h4>" + profile_table(rows).to_html(index=False))
    return "".join(parts)


def scored_windows(df: pd.DataFrame, spec: ReportSpec) -> str:
    """The perplexity windows the quality rows record in their notes ('2 windows of 512 tokens, 1,022
    predictions'), else the spec's."""
    recorded = df.loc[df["stage"] == "quality", "notes"].str.extract(r"over (\d+) windows of (\d+) tokens").dropna()
    pairs = sorted({(int(n), int(w)) for n, w in recorded.itertuples(index=False)}) or \
        [(spec.perplexity_windows, PERPLEXITY_WINDOW)]
    return " or ".join(f"{n} windows of {w} tokens, {perplexity_predictions(w, n):,} predictions" for n, w in pairs)


def method_notes(spec: ReportSpec, df: pd.DataFrame) -> str:
    """The measurement method in plain words (HTML), stated in every report."""
    inference = inference_rows(df)
    devices = ", ".join(sorted(set(df["device"]) - {""})) or spec.device
    random_weights = (df["weights"] == "random").any()

    def measured(column: str, spec_value: int) -> str:
        """What the rows record (they may come from several calls), else the spec's value."""
        values = sorted({int(v) for v in inference[column].dropna()})
        return " or ".join(map(str, values)) if values else str(spec_value)

    sample_ms = MEMORY_SAMPLE_INTERVAL_S * 1000

    lines = [
        f"<b>Model</b>: {html.escape(str(df['model'].iloc[0]) if not df.empty else spec.model)}"
        + (" with <b>random weights</b> from an architecture preset: valid for speed and memory, "
           "never for quality." if random_weights else " (real weights)."),
        f"<b>Output length</b>: fixed at {measured('output_len', spec.output_len)} new tokens per prompt (minimum = "
        "maximum, EOS ignored), so every runtime generates the same amount of work.",
        f"<b>Runs</b>: {measured('warmup', spec.warmup)} warmup run(s) per shape, never counted; "
        f"{measured('repeats', spec.repeats)} measured run(s). "
        "p50 / p99 are over the measured runs (per-token latency: over every decode step of every run); the "
        "tables and the matrix give that n beside them (n_runs, n_decode_steps). A p99 over fewer than 100 "
        "samples is no tail estimate: linear interpolation puts it between the two largest (over 5 runs, 96% of "
        "the way to the largest), so it is named for what it is, &asymp; max of 5 runs.",
        f"<b>Timing</b> on {html.escape(devices)}: CUDA events read after one synchronize on GPU, "
        "<code>time.perf_counter</code> on CPU. TTFT = prompt in to first token out (prefill + first token); "
        "per-token latency = each later decode step; throughput = batch x output tokens / end-to-end p50 latency.",
        "<b>Peak memory</b> during the measured runs. GPU: torch's max allocated for torch runtimes; for ONNX "
        "Runtime and TensorRT, which allocate outside torch, the device memory in use (total - free, sampled "
        f"every {sample_ms:g} ms, CUDA context included). CPU: the process's peak resident set, sampled every "
        f"{sample_ms:g} ms (Python and libraries included).",
        f"<b>Batches</b>: {html.escape(BATCH_FORMATION)}",
        "<b>Efficiency</b>: decode tokens/s (batch / per-token latency p50) over the roofline bound "
        "(all weights plus the batch's KV cache read once per step at the measured streaming bandwidth: the "
        "faster of a copy, counting bytes read and written, and a read-only sum, both measured at the start of "
        "the sweep; rows written before the read rate was measured used the copy rate alone).",
        "<b>MBU</b> (model bandwidth utilization, as PyTorch's <i>GPT, Fast</i> post defines it): the bytes a "
        "decode step reads (all weights plus the batch's KV cache, averaged over the steps) per second of "
        "per-token latency p50 (<code>decode_gbps</code>), over the card's <i>specified</i> bandwidth from its "
        "NVIDIA data sheet. Efficiency divides by what this card measurably streams, so it says how much headroom "
        "is left here; MBU divides by the data-sheet figure, which no kernel reaches (this project's H100s copy "
        "at 85-87% of it), so it compares with published MBU figures. No MBU on a CPU or on a card whose data "
        "sheet is not in <code>bench_kernels/gpu_specs.py</code>.",
        "<b>Prefill efficiency</b>: the prefill's matmul FLOPs over TTFT p50 (<code>prefill_tflops</code>), over "
        f"the matmul rate measured at the start of the sweep (GPU: {MATMUL_SIZE_GPU}&sup3; GEMMs; CPU: "
        f"{MATMUL_SIZE_CPU}&sup3;) in the precision "
        "the runtime's prefill computes in (<code>prefill_precision</code>: the weights' precision for fp32, fp16 and "
        "bf16; bf16 for weight-only quantized weights; fp8 for the compiled runtime's fp8 on a GPU; fp32 for ONNX "
        "Runtime on a CPU), times the GPUs that share each prefill (tensor-parallel ranks). FLOPs = 2 &times; P "
        "&times; B &times; S (P: the attention and MLP projection parameters of every layer) + 2 &times; V &times; D "
        "&times; B &times; H (the LM head, H = S for runtimes that compute logits at every prompt position, ONNX "
        "Runtime and TensorRT, else 1) + 4 &times; L &times; A &times; Dh &times; B &times; S(S+1)/2 (causal "
        "attention, QK<sup>T</sup> and PV), with batch B, prompt length S, vocabulary V, hidden size D, layers L, "
        "query heads A and head dimension Dh. TTFT also holds the embedding, norms, the first token's sampling and "
        "the host's work, so this is a lower bound on the prefill's own rate.",
        "<b>Perplexity</b>: teacher-forced through each runtime's own forward pass over the packaged text, cut "
        f"into consecutive windows of {PERPLEXITY_WINDOW} tokens (fewer if the model's context is shorter); the "
        f"first of them are scored (<code>perplexity_windows</code>; here {scored_windows(df, spec)}), every token "
        "after a window's first predicted from those before it. "
        f"Its delta is against the reference at the sweep's first reference precision; the accuracy gate "
        f"(max_ppl_delta_pct = {spec.max_ppl_delta_pct:g}%) reads MLPerf's 99%-of-reference rule as at most "
        f"that much higher perplexity. Random weights get no perplexity.",
        "<b>Token agreement</b> is the share of generated tokens equal to the reference's on the same prompts; "
        "<b>first divergence</b> the median position of the first generated token that differs.",
    ]
    if not inference.empty and inference["efficiency"].gt(1.0).any():
        lines.append("<b style='color:#b00020'>Measurement error</b>: some rows exceed the roofline "
                     "(efficiency above 1.0); treat them as bugs, not results. (On a CPU, a model small "
                     "enough to stay in the caches also reads faster than the DRAM bandwidth measured.)")
    if not inference.empty and inference["prefill_efficiency"].gt(1.0).any():
        lines.append("<b style='color:#b00020'>Measurement error</b>: some rows exceed the compute roofline "
                     "(prefill efficiency above 1.0): a prefill cannot compute faster than the measured matmul "
                     "rate of its precision; treat them as bugs, not results.")
    return "<ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


ROOFLINE_COLUMNS = ["runtime", "precision", "gpu_count", "batch_size", "input_len", "efficiency", "decode_gbps",
                    "mbu", "prefill_precision", "prefill_tflops", "prefill_efficiency"]


def roofline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every measured row against both rooflines: decode (efficiency, MBU) and prefill (compute); numbers kept as
    numbers (show_table writes them readably and sorts them as numbers)."""
    return _int_columns(ok_rows(df)[ROOFLINE_COLUMNS].reset_index(drop=True))


def show_several_gpus(df: pd.DataFrame) -> None:
    """The Several GPUs section: what scaling_html says, then the scaling table when there is one."""
    from IPython.display import HTML, display

    table = scaling_table(df)
    display(HTML(scaling_html(table)))
    if not table.empty:
        show_table(table, "Every shape measured on several GPUs, beside one GPU")


def scaling_html(table: pd.DataFrame) -> str:
    """What spreading a deployment over several GPUs bought (a scaling_table): its scaling efficiency where one
    GPU ran the same shapes, or why one GPU did not (HTML)."""
    if table.empty:
        return "<p>Every measured deployment ran on one GPU.</p>"
    items = []
    for (runtime, precision, gpus), rows in table.groupby(["runtime", "precision", "gpu_count"], sort=False):
        name = f"<b>{html.escape(runtime)}</b> {html.escape(precision)}{on_gpus(gpus)}"
        efficiency = rows["scaling_efficiency"].dropna()
        shapes = f"{len(efficiency)} of its {len(rows)} shapes" if len(efficiency) < len(rows) else "every shape"
        failed = rows.loc[rows["one_gpu"] != "ok", "one_gpu"]
        if efficiency.empty:
            items.append(f"<li>{name}: no scaling efficiency (on one GPU: {html.escape(failed.iloc[0])})</li>")
            continue
        spread = (f"{efficiency.iloc[0]:.2f}" if len(efficiency) == 1
                  else f"{efficiency.min():.2f} to {efficiency.max():.2f}")
        rest = f"; none for the others (on one GPU: {html.escape(failed.iloc[0])})" if not failed.empty else ""
        items.append(f"<li>{name}: {spread} of {int(gpus)} times one GPU's tokens/s ({shapes}){rest}</li>")
    return ("<p>Tensor parallelism splits every layer over the GPUs: each reads its share of the weights and KV "
            "cache at once, then they all-reduce twice per layer. A device map (the reference's "
            "<code>device_map: auto</code>) puts whole layers on each GPU, and the GPUs take turns: it adds "
            "memory, not speed. Scaling efficiency is tokens/s on N GPUs over N times tokens/s on one, at the same "
            "runtime, precision and shape; 1.0 would be ideal.</p>" f"<ul>{''.join(items)}</ul>")


def roofline_html(df: pd.DataFrame) -> str:
    """The rates the rooflines divide by, per environment, and why a column is blank where it is (HTML)."""
    inference = ok_rows(df)
    if inference.empty:
        return "<p>No measured inference rows.</p>"
    items = []
    for gpu, rows in inference.groupby("gpu_name"):
        where = html.escape(gpu or f"CPU ({rows['cpu_name'].iloc[0]})")
        rates = ", ".join(f"{column.removeprefix('matmul_tflops_')} {plain_number(rows[column].max())}"
                          for column in MATMUL_COLUMNS if rows[column].notna().any())
        streams = streaming_gbps_of(rows).max()
        specified = specified_bandwidth_gbps(gpu) if gpu else None
        spec = (f"specified bandwidth {specified:,.0f} GB/s (data sheet)" if specified
                else "no MBU: no specified bandwidth for a CPU" if not gpu
                else "no MBU: its specified bandwidth is not in <code>bench_kernels/gpu_specs.py</code>")
        stream = f"{streams:,.1f} GB/s" if pd.notna(streams) else "not recorded"
        items.append(f"<li><b>{where}</b>: streaming bandwidth (measured) {stream}; matmul TFLOP/s (measured): "
                     f"{rates or 'not recorded'}; {spec}.</li>")
    notes = []
    if inference["prefill_precision"].isna().all() or (inference["prefill_precision"] == "").all():
        notes.append("These rows were written before prefill was set against the compute roofline and MBU was "
                     "recorded: those columns are blank.")
    return ("<p>Decode reads every weight once per step, so its bound is memory bandwidth; prefill multiplies "
            "whole prompts through the same weights, so its bound is the matmul rate. The rates of this run:</p>"
            f"<ul>{''.join(items)}</ul>" + "".join(f"<p>{n}</p>" for n in notes))


def pending_work(row: pd.Series) -> str:
    """What one not_yet_run line still lacks, in words: its build and missing shapes."""
    shapes = f"{row['missing']} of {row['shapes']} shapes" if row["missing"] else ""
    build = "the build" if row["build_missing"] else ""
    return " and ".join(part for part in (build, shapes) if part)


def pending_item(row: pd.Series) -> str:
    """One not_yet_run line as an HTML list item: runtime, precision, GPU count when several, what it lacks."""
    return (f"<li><b>{html.escape(row['runtime'])}</b> {html.escape(row['precision'])}{on_gpus(row['gpu_count'])}: "
            f"{pending_work(row)}</li>")


def availability_notes(df: pd.DataFrame, spec: ReportSpec) -> str:
    """Plain statement of every runtime that could not be measured, and why, and of the spec's shapes that have not
    run yet (HTML)."""
    missing = unmeasured_summary(df)
    # A precision the runtime's rows say it does not run only ever gets an `unavailable` row: nothing left to run.
    runnable = {runtime: [p for p in precisions if runs_precision(df, runtime, p)]
                for runtime, precisions in spec.precisions_by_runtime.items()}
    pending = not_yet_run(df, runnable, list(spec.batch_sizes), list(spec.input_lens))
    if missing.empty and pending.empty:
        return "<p>Every configured runtime was measured on every shape.</p>"
    parts = []
    if not pending.empty:
        items = [pending_item(row) for _, row in pending.iterrows()]
        parts.append("<p><b>Not run yet</b> (the spec asks for them; running the same spec again resumes, keeping "
                     "every finished row): the recommendation, matrix and charts cover only what ran.</p><ul>"
                     + "".join(items) + "</ul>")
    if not missing.empty:
        items = [f"<li><b>{html.escape(row['runtime'])}</b> ({html.escape(row['precision'])}, {row['stage']}): "
                 f"{row['status']} on {row['rows']} row(s): {html.escape(str(row['reason']))}</li>"
                 for _, row in missing.iterrows()]
        parts.append("<p>Not measured in this run:</p><ul>" + "".join(items) + "</ul>")
    return "".join(parts)


def show_charts(df: pd.DataFrame) -> None:
    """Every chart of plots.ALL_CHARTS, in order."""
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
