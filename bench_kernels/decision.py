"""The decision, in one module: which configuration meets the latency targets and the accuracy gate with the
most tokens/s per GPU, why each other lost, goodput, what serving a load costs, and the decision matrix that sets
every runtime x precision side by side. Pure pandas on results rows (no torch).

A configuration is a runtime x precision x batch size measured at the workload's input and output
length, with at most the workload's batch size (the traffic cannot fill a larger batch). Targets are
checked at p99, as MLPerf does: time to first token (ttft_ms_p99) and time per output token
(itl_ms_p99, every decode step of every measured run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench_kernels.analysis import (SAMPLE_COUNT_COLUMNS, break_even_tokens, build_rows, gpu_counts, inference_rows,
                                    ok_rows, on_gpus, plain_error, plain_number, quality_rows, random_weights,
                                    reference_precision_for, rows_of, runs_precision, runtime_fact, sample_count,
                                    split_deployments, stored_weights_gb, unquantized_reference_precision)
from bench_kernels.gpu_specs import specified_bandwidth_gbps
from bench_kernels.method import MAX_UTILIZATION
from bench_kernels.results import COLUMN, METRICS, row_key
from bench_kernels.roofline import ROOFLINE_NOT_APPLICABLE

SECONDS_PER_DAY = 86_400
HOURS_PER_MONTH = 730.0
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95  # of the interval on how far the runner-up is behind the recommendation


@dataclass(frozen=True)
class Targets:
    """What the recommendation must respect; None: no limit of that kind."""

    batch_size: int
    input_len: int
    output_len: int
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    max_ppl_delta_pct: float | None = None


def _misses(row: pd.Series, targets: Targets) -> list[str]:
    """The latency targets a measured row breaks, each with its margin."""
    misses = []
    for column, limit, name in (("ttft_ms_p99", targets.ttft_ms, "time to first token p99"),
                                ("itl_ms_p99", targets.tpot_ms, "time per output token p99")):
        if limit is not None and row[column] > limit:
            n = sample_count(row, COLUMN[column].n)
            over = f"{name}{f' ({COLUMN[column].sample_words(n)})' if pd.notna(n) else ''}"
            misses.append(f"{over} {row[column]:,.1f} ms > {limit:,.0f} ms (+{100 * (row[column] / limit - 1):.0f}%)")
    return misses


def goodput_share(samples: dict[str, list[float]] | None, output_len: int, targets: Targets) -> float | None:
    """Share of measured runs (each a batch of requests) whose TTFT and mean time per output token both meet
    the targets; None without raw samples."""
    if not samples or not samples.get("ttft_ms"):
        return None
    met = 0
    for ttft, latency in zip(samples["ttft_ms"], samples["latency_ms"]):
        tpot = (latency - ttft) / max(output_len - 1, 1)
        met += ((targets.ttft_ms is None or ttft <= targets.ttft_ms)
                and (targets.tpot_ms is None or tpot <= targets.tpot_ms))
    return met / len(samples["ttft_ms"])


def gate_failures(df: pd.DataFrame, max_ppl_delta_pct: float) -> dict[tuple[str, str], float]:
    """(runtime, precision) -> perplexity delta (%) of every configuration over the accuracy gate."""
    rows = quality_rows(df)
    over = rows[(rows["status"] == "ok") & (rows["ppl_delta_pct"] > max_ppl_delta_pct)]
    return {(r.runtime, r.precision): float(r.ppl_delta_pct) for r in over.itertuples()}


@dataclass(frozen=True)
class Evidence:
    """The accuracy gate's verdict on one runtime x precision, cited from a real-weight run (quality_evidence)."""

    runtime: str
    precision: str
    model: str  # what it was measured on: not necessarily this run's model
    run_name: str
    ppl_delta_pct: float
    passes: bool

    def words(self) -> str:
        """'fails the accuracy gate on the quality evidence (perplexity +2.75% on smollm2-135m-instruct, ...)'."""
        return (f"{'passes' if self.passes else 'fails'} the accuracy gate on the quality evidence (perplexity "
                f"{self.ppl_delta_pct:+.2f}% over the reference on {self.model}, real weights, run {self.run_name})")


def evidence_verdicts(evidence: pd.DataFrame, max_ppl_delta_pct: float | None) -> dict[tuple[str, str], Evidence]:
    """(runtime, precision) -> the gate's verdict on the cited runs' real-weight perplexity; where several runs
    measured one, the worst delta is cited (one lucky run does not pass the gate)."""
    rows = quality_rows(evidence)
    rows = rows[(rows["status"] == "ok") & (rows["weights"] == "real") & rows["ppl_delta_pct"].notna()]
    verdicts = {}
    for row in rows.sort_values("ppl_delta_pct").itertuples():  # the worst last: it stays
        verdicts[(row.runtime, row.precision)] = Evidence(
            row.runtime, row.precision, row.model, row.run_name, float(row.ppl_delta_pct),
            max_ppl_delta_pct is None or row.ppl_delta_pct <= max_ppl_delta_pct)
    return verdicts


def _judged_here(df: pd.DataFrame) -> set[tuple[str, str]]:
    """The runtime x precision pairs this run's own rows judge: a perplexity delta measured against the reference."""
    rows = quality_rows(df)
    rows = rows[(rows["status"] == "ok") & rows["ppl_delta_pct"].notna()]
    return set(zip(rows["runtime"], rows["precision"]))


UNMEASURED_COLUMNS = ["runtime", "precisions", "gpu_count", "status", "reason"]


def unmeasured_configurations(df: pd.DataFrame, targets: Targets) -> pd.DataFrame:
    """Each runtime (and GPU count) with precisions it runs but no measured row at the workload, and why: one line
    per reason, its precisions listed (e.g. TensorRT engines this GPU cannot run)."""
    rows = inference_rows(df)
    rows = rows[(rows["input_len"] == targets.input_len) & (rows["output_len"] == targets.output_len)
                & (rows["batch_size"] <= targets.batch_size)]
    rows = rows.assign(gpu_count=gpu_counts(rows).astype(int))
    lines: dict[tuple[str, int, str, str], list[str]] = {}
    for (runtime, precision, gpus), group in rows.groupby(["runtime", "precision", "gpu_count"], sort=False):
        if (group["status"] == "ok").any() or not runs_precision(df, runtime, precision):
            continue
        first = group[group["status"] != "ok"].iloc[0]
        reason = plain_error(str(first["error"] or first["notes"] or "no reason recorded"),
                             stored_weights_gb(first["model"], precision), int(gpus))
        lines.setdefault((runtime, int(gpus), first["status"], reason), []).append(precision)
    return pd.DataFrame([{"runtime": runtime, "precisions": precisions, "gpu_count": gpus, "status": status,
                          "reason": reason} for (runtime, gpus, status, reason), precisions in lines.items()],
                        columns=UNMEASURED_COLUMNS)


def configurations(df: pd.DataFrame, targets: Targets,
                   samples: dict[tuple[str, ...], dict[str, Any]] | None = None) -> pd.DataFrame:
    """Every measured configuration at the workload's lengths: throughput per GPU, goodput, and whether it
    meets the targets and the accuracy gate (with the reasons when not)."""
    rows = ok_rows(df)
    rows = rows[(rows["input_len"] == targets.input_len) & (rows["output_len"] == targets.output_len)
                & (rows["batch_size"] <= targets.batch_size)].copy()
    columns = ["runtime", "precision", "batch_size", "gpu_count", "tokens_per_s", "tokens_per_s_per_gpu",
               "goodput_tokens_per_s", "n_runs", "ttft_ms_p99", "n_decode_steps", "itl_ms_p99", "per_user_tokens_per_s",
               "ppl_delta_pct", "feasible", "why_not"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    failing = gate_failures(df, targets.max_ppl_delta_pct) if targets.max_ppl_delta_pct is not None else {}
    quality = df[(df["stage"] == "quality") & (df["status"] == "ok")].set_index(["runtime", "precision"])
    rows["gpu_count"] = gpu_counts(rows)
    rows["tokens_per_s_per_gpu"] = rows["tokens_per_s"] / rows["gpu_count"]
    rows["per_user_tokens_per_s"] = 1000.0 / rows["itl_ms_p50"]
    out = []
    for _, row in rows.iterrows():
        pair = (row["runtime"], row["precision"])
        why = _misses(row, targets)
        if pair in failing:
            why.append(f"perplexity {failing[pair]:+.2f}% over the accuracy gate of {targets.max_ppl_delta_pct:g}%")
        share = goodput_share((samples or {}).get(row_key(row)), targets.output_len, targets)
        if share is None:  # no raw samples: all or nothing at p99
            share = 0.0 if _misses(row, targets) else 1.0
        out.append({**{c: row[c] for c in ("runtime", "precision", "batch_size", "gpu_count", "tokens_per_s",
                                            "tokens_per_s_per_gpu", "ttft_ms_p99", "itl_ms_p99",
                                            "per_user_tokens_per_s")},
                    "goodput_tokens_per_s": row["tokens_per_s"] * share,
                    **{SAMPLE_COUNT_COLUMNS[kind]: sample_count(row, kind) for kind in SAMPLE_COUNT_COLUMNS},
                    "ppl_delta_pct": quality["ppl_delta_pct"].get(pair, math.nan) if not quality.empty else math.nan,
                    "feasible": not why, "why_not": "; ".join(why)})
    table = pd.DataFrame(out, columns=columns).astype({c: "Int64" for c in SAMPLE_COUNT_COLUMNS.values()})
    return table.sort_values("tokens_per_s_per_gpu", ascending=False, ignore_index=True)


@dataclass
class Recommendation:
    """The configuration to ship, the runner-up (best of another runtime x precision x GPU count), and why the
    others lost."""

    best: pd.Series | None
    runner_up: pd.Series | None
    losers: pd.DataFrame  # one row per other runtime x precision: its best attempt and the reason
    quality_judged: bool  # False when no perplexity was measured (e.g. random weights)
    # CONFIDENCE bootstrap interval of how far the runner-up is behind (behind_pct); None: no raw samples
    behind_interval_pct: tuple[float, float] | None = None
    runs: tuple[int, int] = (0, 0)  # measured runs of the best and the runner-up that the interval resamples
    tie: bool = False  # that interval reaches 0: the runner-up may be no slower at all
    # Verdicts cited from real-weight runs for the pairs this run does not judge itself (quality_evidence).
    evidence: dict[tuple[str, str], Evidence] = field(default_factory=dict)
    passing: pd.Series | None = None  # the fastest feasible configuration that passes the gate, here or on evidence
    unmeasured: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=UNMEASURED_COLUMNS))

    def evidence_for(self, row: pd.Series) -> Evidence | None:
        return self.evidence.get((row["runtime"], row["precision"]))


def run_latencies(df: pd.DataFrame, targets: Targets, samples: dict[tuple[str, ...], dict[str, Any]] | None,
                  configuration: pd.Series) -> list[float]:
    """The end-to-end latency of each measured run of a configuration (samples.jsonl); [] without samples."""
    rows = ok_rows(df)
    rows = rows[(rows["runtime"] == configuration["runtime"]) & (rows["precision"] == configuration["precision"])
                & (rows["batch_size"] == configuration["batch_size"]) & (rows["input_len"] == targets.input_len)
                & (rows["output_len"] == targets.output_len) & (gpu_counts(rows) == configuration["gpu_count"])]
    if rows.empty or not samples:
        return []
    return list((samples.get(row_key(rows.iloc[0])) or {}).get("latency_ms") or [])


def behind_pct(tokens_per_s_per_gpu: float, winner_tokens_per_s_per_gpu: float) -> float:
    """How far a configuration is behind the winner: % fewer tokens/s per GPU than the winner's. The one formula
    of every 'x% behind' in the report (so 74% behind gives a quarter of the winner's tokens/s, never 282%)."""
    return 100 * (1 - tokens_per_s_per_gpu / winner_tokens_per_s_per_gpu)


def behind_interval_pct(best: pd.Series, best_runs: list[float], runner_up: pd.Series, runner_up_runs: list[float],
                        output_len: int, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                        seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of how far the runner-up is behind the best (behind_pct): each resample draws both
    configurations' runs with replacement and sets their median latencies against each other, as the reported
    tokens/s (batch x output tokens over the median latency) does."""
    rng = np.random.default_rng(seed)

    def rates(row: pd.Series, runs: list[float]) -> np.ndarray:
        drawn = rng.choice(np.asarray(runs, dtype=np.float64), size=(resamples, len(runs)), replace=True)
        return row["batch_size"] * output_len * 1e3 / np.median(drawn, axis=1) / row["gpu_count"]

    behind = behind_pct(rates(runner_up, runner_up_runs), rates(best, best_runs))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(behind, [tail, 100 - tail])
    return float(low), float(high)


def _passes_gate(row: pd.Series, evidence: dict[tuple[str, str], Evidence]) -> bool:
    """Judged by this run's own perplexity (a feasible row passed it) or passing on the cited evidence."""
    cited = evidence.get((row["runtime"], row["precision"]))
    return pd.notna(row["ppl_delta_pct"]) or (cited is not None and cited.passes)


def recommend(table: pd.DataFrame, df: pd.DataFrame, samples: dict[tuple[str, ...], dict[str, Any]] | None = None,
              targets: Targets | None = None, evidence: pd.DataFrame | None = None) -> Recommendation:
    """The most tokens/s per GPU among configurations that meet every target; ties go to the smaller batch. With
    raw samples (by row_key) and the targets, how far the runner-up is behind gets a bootstrap interval, and an
    interval that reaches 0 makes a tie. With the targets, the runtimes not measured at the workload are named; with
    the rows of real-weight runs (evidence), each pair this run does not judge gets their verdict, and the fastest
    configuration that passes the gate is named beside the fastest."""
    feasible = table[table["feasible"].astype(bool)].sort_values(["tokens_per_s_per_gpu", "batch_size"],
                                                                 ascending=[False, True])
    gate = targets.max_ppl_delta_pct if targets is not None else None
    judged_here = _judged_here(df)
    verdicts = {pair: verdict for pair, verdict in evidence_verdicts(evidence, gate).items()
                if pair not in judged_here} if evidence is not None and not evidence.empty else {}
    passing = next((row for _, row in feasible.iterrows() if _passes_gate(row, verdicts)), None)
    unmeasured = unmeasured_configurations(df, targets) if targets is not None else None
    more = {"evidence": verdicts, "passing": passing,
            **({"unmeasured": unmeasured} if unmeasured is not None else {})}
    best = feasible.iloc[0] if not feasible.empty else None
    others = feasible if best is None else feasible[(feasible["runtime"] != best["runtime"])
                                                   | (feasible["precision"] != best["precision"])
                                                   | (feasible["gpu_count"] != best["gpu_count"])]
    runner_up = others.iloc[0] if best is not None and not others.empty else None
    losers = []
    for (runtime, precision, gpus), group in table.groupby(["runtime", "precision", "gpu_count"], sort=False):
        if best is not None and (runtime, precision, gpus) == (best["runtime"], best["precision"], best["gpu_count"]):
            continue
        ok = group[group["feasible"].astype(bool)]
        if not ok.empty:
            top = ok.iloc[0]
            reason = (f"meets every target; its best, batch {int(top['batch_size'])}, gives "
                      f"{top['tokens_per_s_per_gpu']:,.1f} tokens/s per GPU, "
                      f"{behind_pct(top['tokens_per_s_per_gpu'], best['tokens_per_s_per_gpu']):.0f}% behind")
            cited = verdicts.get((runtime, precision))
            reason += f"; {cited.words()}" if cited is not None else ""
        else:
            top = group.iloc[0]
            reason = f"no batch size meets the targets; at batch {int(top['batch_size'])}: {top['why_not']}"
        losers.append({"runtime": runtime, "precision": precision, "gpu_count": int(gpus),
                       "batch_size": int(top["batch_size"]), "tokens_per_s_per_gpu": top["tokens_per_s_per_gpu"],
                       "reason": reason})
    judged = not df[(df["stage"] == "quality") & (df["status"] == "ok")].empty
    losers_table = pd.DataFrame(losers, columns=["runtime", "precision", "gpu_count", "batch_size",
                                                 "tokens_per_s_per_gpu", "reason"])
    if best is None or runner_up is None or targets is None:
        return Recommendation(best, runner_up, losers_table, judged, **more)
    best_runs, runner_up_runs = (run_latencies(df, targets, samples, row) for row in (best, runner_up))
    if len(best_runs) < 2 or len(runner_up_runs) < 2:  # one run has no spread to resample
        return Recommendation(best, runner_up, losers_table, judged, **more)
    interval = behind_interval_pct(best, best_runs, runner_up, runner_up_runs, targets.output_len)
    return Recommendation(best, runner_up, losers_table, judged, interval, (len(best_runs), len(runner_up_runs)),
                          interval[0] <= 0, **more)


def larger_batch(df: pd.DataFrame, targets: Targets, samples: dict[tuple[str, ...], dict[str, Any]] | None,
                 best: pd.Series | None) -> pd.Series | None:
    """What the workload's batch ceiling costs: the configuration with the most tokens/s per GPU among those
    measured at a larger batch that still meet the latency targets (and this run's accuracy gate), when it
    beats the recommendation; None otherwise."""
    measured = ok_rows(df)["batch_size"].max()
    if pd.isna(measured) or measured <= targets.batch_size:
        return None
    table = configurations(df, replace(targets, batch_size=int(measured)), samples)
    wider = table[table["feasible"].astype(bool) & (table["batch_size"] > targets.batch_size)]
    if wider.empty:
        return None
    top = wider.iloc[0]
    return top if best is None or top["tokens_per_s_per_gpu"] > best["tokens_per_s_per_gpu"] else None


def cost_table(table: pd.DataFrame, gpu_hour_usd: float, requests_per_day: float | None,
               output_len: int, max_utilization: float = MAX_UTILIZATION) -> pd.DataFrame:
    """Per runtime x precision at its best feasible batch: $ per million generated tokens, and for a load the
    GPUs it needs at max_utilization and their monthly cost (see cost_formulas)."""
    columns = ["runtime", "precision", "gpu_count", "batch_size", "tokens_per_s_per_gpu", "usd_per_million_tokens",
               "gpus_needed", "usd_per_month"]
    feasible = table[table["feasible"].astype(bool)]
    if feasible.empty or gpu_hour_usd <= 0:
        return pd.DataFrame(columns=columns)
    rows = []
    for (runtime, precision, _), group in feasible.groupby(["runtime", "precision", "gpu_count"], sort=False):
        top = group.sort_values("tokens_per_s_per_gpu", ascending=False).iloc[0]
        per_gpu = top["tokens_per_s_per_gpu"]
        gpus = (deployment_gpus(requests_per_day, output_len, per_gpu, top["gpu_count"], max_utilization)
                if requests_per_day else None)
        rows.append({"runtime": runtime, "precision": precision, "gpu_count": int(top["gpu_count"]),
                     "batch_size": int(top["batch_size"]),
                     "tokens_per_s_per_gpu": per_gpu,
                     "usd_per_million_tokens": usd_per_million_tokens(gpu_hour_usd, per_gpu),
                     "gpus_needed": gpus, "usd_per_month": usd_per_month(gpus, gpu_hour_usd) if gpus else None})
    return pd.DataFrame(rows, columns=columns).sort_values("usd_per_million_tokens", ignore_index=True)


def usd_per_million_tokens(gpu_hour_usd: float, tokens_per_s_per_gpu: float) -> float:
    return gpu_hour_usd / (tokens_per_s_per_gpu * 3600) * 1e6


def usd_per_month(gpus: int, gpu_hour_usd: float) -> float:
    return gpus * gpu_hour_usd * HOURS_PER_MONTH


def deployment_gpus(requests_per_day: float, output_len: int, tokens_per_s_per_gpu: float,
                    gpus_per_replica: float = 1, max_utilization: float = MAX_UTILIZATION) -> int:
    """GPUs to generate requests_per_day x output_len tokens a day at the measured rate, in whole replicas each
    kept at most max_utilization busy."""
    needed_tokens_per_s = requests_per_day * output_len / SECONDS_PER_DAY
    replica_tokens_per_s = tokens_per_s_per_gpu * gpus_per_replica * max_utilization
    # A hair of float error must not buy a whole replica: 0.7 x 1,000 tokens/s serving 700 is one replica.
    return int(math.ceil(round(needed_tokens_per_s / replica_tokens_per_s, 9)) * gpus_per_replica)


def cost_formulas(max_utilization: float = MAX_UTILIZATION) -> list[str]:
    """The arithmetic of the cost section, in words."""
    return [
        "$ per million generated tokens = GPU-hour price / (tokens/s per GPU x 3,600) x 1,000,000, at the "
        "configuration's best batch size that meets the targets.",
        "GPUs needed = ceil(requests per day x output tokens / 86,400 / (tokens/s of one replica x "
        f"{max_utilization:.0%} maximum utilisation)) x GPUs per replica: the load spread evenly over the day, "
        f"every replica kept at that batch size and at most {max_utilization:.0%} busy, the rest headroom for "
        "peaks and queueing (load.max_utilization sets it).",
        f"Monthly cost = GPUs needed x GPU-hour price x {HOURS_PER_MONTH:g} hours.",
    ]


def describe(row: pd.Series | None) -> str:
    """'compiled fp8, batch 8' for a configuration row ('compiled fp8 on 2 GPUs, batch 8' for a split one)."""
    if row is None:
        return "none"
    return f"{row['runtime']} {row['precision']}{on_gpus(row['gpu_count'])}, batch {int(row['batch_size'])}"


def summary_facts(rec: Recommendation) -> dict[str, Any]:
    """The recommendation's headline numbers, for the report's first paragraph and for tests."""
    if rec.best is None:
        return {}
    facts = {"best": describe(rec.best), "tokens_per_s_per_gpu": float(rec.best["tokens_per_s_per_gpu"]),
             "goodput_tokens_per_s": float(rec.best["goodput_tokens_per_s"])}
    if rec.runner_up is not None:
        facts["runner_up"] = describe(rec.runner_up)
        facts["behind_pct"] = behind_pct(rec.runner_up["tokens_per_s_per_gpu"], rec.best["tokens_per_s_per_gpu"])
        facts["behind_interval_pct"] = rec.behind_interval_pct
        facts["tie"] = rec.tie
    return facts


@dataclass
class Decision:
    """Everything the report's first sections show, computed once from the rows and the report's inputs."""

    targets: Targets
    configurations: pd.DataFrame
    recommendation: Recommendation
    costs: pd.DataFrame
    larger_batch: pd.Series | None = None  # the same targets beyond the workload's batch (see larger_batch)
    requests_per_day: float | None = None
    max_utilization: float = MAX_UTILIZATION

    def gpus_for_load(self, row: pd.Series | None) -> int | None:
        """GPUs a configuration needs for the load (None without a load or a configuration)."""
        if row is None or not self.requests_per_day:
            return None
        return deployment_gpus(self.requests_per_day, self.targets.output_len, row["tokens_per_s_per_gpu"],
                               row["gpu_count"], self.max_utilization)


def decide(results: pd.DataFrame, targets: Targets, samples: dict[tuple[str, ...], dict[str, Any]],
           gpu_hour_usd: float, requests_per_day: float | None, max_utilization: float = MAX_UTILIZATION,
           evidence: pd.DataFrame | None = None) -> Decision:
    """The configurations at the workload, the recommendation (with the quality evidence: rows of real-weight
    runs), the costs at max_utilization, and the same targets at a larger batch (raw samples, by row_key, give
    goodput)."""
    table = configurations(results, targets, samples)
    costs = cost_table(table, gpu_hour_usd, requests_per_day, targets.output_len, max_utilization)
    rec = recommend(table, results, samples, targets, evidence)
    return Decision(targets, table, rec, costs, larger_batch(results, targets, samples, rec.best), requests_per_day,
                    max_utilization)


# --- the decision matrix: rows = criteria (the metric registry's matrix entries), columns = configurations ---

WINNER_MARK = "★ "
MATRIX_NOTES = "notes"  # a decision matrix's attrs key: note number -> (the reason a cell was not measured, its cells)
GATE_MARK = " ✗ over the accuracy gate"
NOT_MEANINGFUL = "not meaningful: random weights"


@dataclass(frozen=True)
class MatrixContext:
    """What every cell of one decision matrix reads: the rows, the shapes it is read at, the gate's verdicts."""

    df: pd.DataFrame
    batch_min: int
    batch_max: int
    input_min: int
    input_max: int
    output_len: int | None
    failing: frozenset[tuple[str, str]]
    max_ppl_delta_pct: float | None

    def shape(self, code: str) -> tuple[int, int]:
        """(batch size, input length) of a registry matrix code such as 'min max' (smallest batch, longest input)."""
        batch, length = code.split()
        return (self.batch_min if batch == "min" else self.batch_max,
                self.input_min if length == "min" else self.input_max)


Cell = Callable[[MatrixContext, "Criterion", str, str], Any]  # -> float or "not measured: why"


@dataclass(frozen=True)
class Criterion:
    """One row of the decision matrix: a metric (or a derived figure) at one shape."""

    label: str
    better: str  # "higher", "lower" or "" (not ranked)
    value: Cell
    fmt: str = "{:.1f}"
    suffix: Cell | None = None  # words after a measured value
    column: str = ""
    batch_size: int | None = None
    input_len: int | None = None


class Unmeasured(str):
    """A cell's 'not measured: <status>: <reason>' that keeps its reason apart: the matrix shows the reason once,
    as a note under it, instead of in every cell it explains."""

    def __new__(cls, status: str, reason: str) -> Unmeasured:
        cell = super().__new__(cls, f"not measured: {status}: {reason}")
        cell.status, cell.reason = status, reason
        return cell

    @classmethod
    def of(cls, row: pd.Series) -> Unmeasured:
        """A failed row's cell, its reason in plain words (plain_error)."""
        gpus = int(row["gpu_count"]) if pd.notna(row.get("gpu_count")) else 1
        return cls(row["status"], plain_error(str(row["error"] or row["notes"]),
                                              stored_weights_gb(row["model"], row["precision"]), gpus))


def _why_not(df: pd.DataFrame, runtime: str, stage: str, **shape: Any) -> str:
    """'not measured: <why>' from the runtime's rows (their status and error)."""
    rows = df[(df["runtime"] == runtime) & (df["stage"] == stage)]
    for column, value in shape.items():
        rows = rows[rows[column] == value]
    if rows.empty:
        return "not measured: not in this sweep"
    failed = rows[rows["status"] != "ok"]
    if failed.empty:
        return "not measured"
    return Unmeasured.of(failed.iloc[0])


def _pick(df: pd.DataFrame, runtime: str, column: str, precision: str, **shape: Any) -> Any:
    rows = rows_of(df, runtime, precision)
    for key, value in shape.items():
        rows = rows[rows[key] == value]
    value = pd.to_numeric(rows.iloc[0][column], errors="coerce") if not rows.empty else math.nan
    if pd.isna(value):
        return _why_not(df, runtime, "inference", precision=precision, **shape)
    return float(value)


def _measured(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    return _pick(ctx.df, runtime, c.column, precision, batch_size=c.batch_size, input_len=c.input_len)


def _gpus(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> float:
    """GPUs one deployment of the configuration uses at the criterion's shape (1 where its rows do not say)."""
    rows = rows_of(ctx.df, runtime, precision)
    rows = rows[(rows["batch_size"] == c.batch_size) & (rows["input_len"] == c.input_len)]
    return float(gpu_counts(rows).iloc[0]) if not rows.empty else 1.0


def _per_gpu(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    """tokens/s per GPU, what the recommendation ranks by: a deployment over 2 GPUs is starred by what each of its
    GPUs gives, not by what the pair gives."""
    value = _measured(ctx, c, runtime, precision)
    return value / _gpus(ctx, c, runtime, precision) if isinstance(value, float) else value


def _whole_deployment(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    """After a per-GPU figure of a deployment over several GPUs: what the whole deployment gives."""
    gpus = _gpus(ctx, c, runtime, precision)
    value = _measured(ctx, c, runtime, precision)
    return f" ({_formatted(c.fmt, value)} on {int(gpus)} GPUs)" if gpus > 1 and isinstance(value, float) else ""


def _quality_row(df: pd.DataFrame, runtime: str, precision: str) -> pd.Series | None:
    rows = quality_rows(df)
    rows = rows[(rows["runtime"] == runtime) & (rows["precision"] == precision) & (rows["status"] == "ok")]
    return rows.iloc[0] if not rows.empty else None


def _per_configuration(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    """A metric of the build or quality stage: one value per runtime x precision."""
    stage = COLUMN[c.column].stages[0]
    rows = ctx.df[(ctx.df["stage"] == stage) & (ctx.df["runtime"] == runtime) & (ctx.df["precision"] == precision)
                  & (ctx.df["status"] == "ok")][c.column].dropna()
    return float(rows.iloc[0]) if not rows.empty else _why_not(ctx.df, runtime, stage, precision=precision)


def _against_reference(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    """A figure measured against the reference's outputs: none for the reference itself or on random weights."""
    if runtime == "reference" and precision == reference_precision_for(ctx.df, precision):
        return "is the reference"
    if random_weights(ctx.df, runtime, precision):
        return NOT_MEANINGFUL
    return _measured(ctx, c, runtime, precision)


def _decode_efficiency(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    """A value above the bound is a measurement error: shown as invalid, never ranked."""
    value = _measured(ctx, c, runtime, precision)
    if isinstance(value, float) and value > 1.0:
        return f"invalid: {value:.0%} is above the roofline (a measurement error)"
    if isinstance(value, str):
        rows = rows_of(ctx.df, runtime, precision)
        notes = rows[(rows["batch_size"] == c.batch_size) & (rows["input_len"] == c.input_len)]["notes"]
        if notes.str.contains(ROOFLINE_NOT_APPLICABLE, regex=False).any():
            return "roofline not applicable (model fits in the CPU cache)"
    return value


def _prefill_efficiency(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    """Above the measured matmul rate is a measurement error, as for decode; rows without one say why."""
    value = _measured(ctx, c, runtime, precision)
    if isinstance(value, float) and value > 1.0:
        return f"invalid: {value:.0%} is above the compute roofline (a measurement error)"
    if value == "not measured":
        computed = [p for p in rows_of(ctx.df, runtime, precision)["prefill_precision"] if isinstance(p, str) and p]
        if not computed:
            return "not recorded: rows written before prefill was set against the compute roofline"
        return f"no {computed[0]} matmul rate measured on this device"
    return value


def _model_bandwidth_utilization(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    """MBU, or why measured rows carry none: a CPU, a card whose specified bandwidth is not in gpu_specs, or rows
    from before MBU was recorded."""
    value = _measured(ctx, c, runtime, precision)
    if value != "not measured":
        return value
    gpu = next((g for g in rows_of(ctx.df, runtime, precision)["gpu_name"] if isinstance(g, str) and g), "")
    if not gpu:
        return "no MBU on a CPU (no specified bandwidth)"
    if specified_bandwidth_gbps(gpu) is None:
        return f"no MBU: {gpu}'s specified bandwidth is not in the table"
    return "not recorded: rows written before MBU was"


def _build_time(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    builds = build_rows(ctx.df)
    row = builds[(builds["runtime"] == runtime) & (builds["precision"] == precision)]
    if row.empty:
        return 0.0 if runtime_fact(ctx.df, runtime, "runtime_needs_build") == "false" \
            else "not measured: build stage not run"
    if row.iloc[0]["status"] == "skipped":
        return 0.0
    if row.iloc[0]["status"] != "ok":
        return Unmeasured.of(row.iloc[0])
    return float(row.iloc[0]["build_s"])


def _from_cache(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    builds = build_rows(ctx.df)
    row = builds[(builds["runtime"] == runtime) & (builds["precision"] == precision) & (builds["status"] == "ok")]
    hit = not row.empty and row.iloc[0]["cache_hit"] == "true"
    return " (from cache: what the first build took)" if hit else ""


def _break_even_against(ctx: MatrixContext, c: Criterion, runtime: str, precision: str, baseline: str) -> Any:
    """Generated tokens until the build pays for itself against the reference in the baseline precision."""
    shape = {"batch_size": c.batch_size, "input_len": c.input_len}
    build = _build_time(ctx, c, runtime, precision)
    tps = _pick(ctx.df, runtime, "tokens_per_s", precision, **shape)
    ref = _pick(ctx.df, "reference", "tokens_per_s", baseline, **shape)
    for value in (build, tps, ref):
        if isinstance(value, str):
            return value
    tokens = break_even_tokens(build, tps, ref)
    return "never (not faster than reference)" if math.isinf(tokens) else tokens


def _break_even(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    if runtime == "reference":
        return "baseline"
    return _break_even_against(ctx, c, runtime, precision, reference_precision_for(ctx.df, precision))


def _against_unquantized(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    """After a break-even against a quantized reference (its fp8 is slower than its bf16): the one against the
    reference's unquantized baseline, beside it."""
    unquantized = unquantized_reference_precision(ctx.df)
    if unquantized is None or reference_precision_for(ctx.df, precision) == unquantized:
        return ""
    tokens = _break_even_against(ctx, c, runtime, precision, unquantized)
    return f" (vs reference {unquantized}: {tokens if isinstance(tokens, str) else _formatted(c.fmt, tokens)})"


def _dynamic_shapes(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    return runtime_fact(ctx.df, runtime, "runtime_dynamic_shapes") or "not recorded"


def _perplexity(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> Any:
    if random_weights(ctx.df, runtime, precision):
        return NOT_MEANINGFUL
    row = _quality_row(ctx.df, runtime, precision)
    return float(row["perplexity"]) if row is not None else _why_not(ctx.df, runtime, "quality",
                                                                      precision=precision)


def _ppl_delta(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    row = _quality_row(ctx.df, runtime, precision)
    return f" ({row['ppl_delta_pct']:+.2f}% vs reference)" if row is not None and pd.notna(
        row["ppl_delta_pct"]) else ""


def _gate(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    value = _perplexity(ctx, c, runtime, precision)
    row = _quality_row(ctx.df, runtime, precision)
    if isinstance(value, str) or row is None:
        return value if isinstance(value, str) else "not measured"
    if pd.isna(row["ppl_delta_pct"]):
        return "not judged: no reference perplexity"
    verdict = "FAIL" if (runtime, precision) in ctx.failing else "pass"
    return f"{verdict} ({row['ppl_delta_pct']:+.2f}%)"


def _prefill_precision(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    """Words after a prefill efficiency: the compute precision whose matmul rate bounds it."""
    rows = rows_of(ctx.df, runtime, precision)
    rows = rows[(rows["batch_size"] == c.batch_size) & (rows["input_len"] == c.input_len)]
    computed = [p for p in rows["prefill_precision"] if isinstance(p, str) and p]
    return f" (of the {computed[0]} matmul rate)" if computed else ""


def _sample_n(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    """' (n=1,270)' after a percentile: the samples it is over at the criterion's shape; ' (≈ max of 5 runs)' where
    they are too few for it."""
    rows = rows_of(ctx.df, runtime, precision)
    rows = rows[(rows["batch_size"] == c.batch_size) & (rows["input_len"] == c.input_len)]
    n = sample_count(rows.iloc[0], COLUMN[c.column].n) if not rows.empty else math.nan
    return f" ({COLUMN[c.column].sample_words(n)})" if pd.notna(n) else ""


def _of_generated(ctx: MatrixContext, c: Criterion, runtime: str, precision: str) -> str:
    return f" of {ctx.output_len}" if ctx.output_len else ""


# Metrics whose cells need more than the measured value (reasons, invalid values, the reference's own column);
# any other metric with matrix entries in the registry is read as measured.
SPECIAL_CELLS: dict[str, Cell] = {
    "tokens_per_s": _per_gpu, "build_s": _build_time, "perplexity": _perplexity, "efficiency": _decode_efficiency,
    "mbu": _model_bandwidth_utilization, "prefill_efficiency": _prefill_efficiency,
    "token_agreement": _against_reference, "first_divergence_p50": _against_reference,
    "max_logit_diff": _against_reference,
}
SUFFIXES: dict[str, Cell] = {"tokens_per_s": _whole_deployment, "build_s": _from_cache, "perplexity": _ppl_delta,
                             "prefill_efficiency": _prefill_precision, "first_divergence_p50": _of_generated}
# Matrix rows whose cells divide the metric by the deployment's GPUs, named for it where a deployment has several.
PER_GPU_LABELS = {"tokens_per_s": "throughput per GPU"}


def _derived_after(metric: str, ctx: MatrixContext) -> list[Criterion]:
    """The matrix rows computed from other figures, placed after the metric they follow."""
    if metric == "build_s":
        return [Criterion(f"break-even vs reference, batch {ctx.batch_max}, input {ctx.input_max} (generated "
                          "tokens)", "lower", _break_even, "{:,.0f}", _against_unquantized,
                          batch_size=ctx.batch_max, input_len=ctx.input_max),
                Criterion("dynamic shapes", "", _dynamic_shapes)]
    if metric == "perplexity":
        gate = (f"accuracy gate: perplexity at most +{ctx.max_ppl_delta_pct:g}% over the reference"
                if ctx.max_ppl_delta_pct is not None else "accuracy gate: none set")
        return [Criterion(gate, "", _gate)]
    return []


def matrix_criteria(ctx: MatrixContext) -> list[Criterion]:
    """The matrix rows, in registry order: each metric at each shape its registry entry names."""
    criteria = []
    several_gpus = bool(gpu_counts(inference_rows(ctx.df)).gt(1).any())
    for metric in METRICS:
        label = PER_GPU_LABELS.get(metric.name, metric.label) if several_gpus else metric.label
        for code in metric.matrix:
            unit = f" ({metric.unit})" if metric.unit else ""
            cell = SPECIAL_CELLS.get(metric.name, _measured if code != "once" else _per_configuration)
            suffix = SUFFIXES.get(metric.name, _sample_n if metric.n else None)
            if code == "once":
                criteria.append(Criterion(label + unit, metric.better, cell, metric.fmt, suffix, metric.name))
                continue
            batch, length = ctx.shape(code)
            criteria.append(Criterion(f"{label}, batch {batch}, input {length}{unit}", metric.better, cell,
                                      metric.fmt, suffix, metric.name, batch, length))
        criteria += _derived_after(metric.name, ctx)
    return criteria


def _formatted(fmt: str, value: float) -> str:
    return plain_number(value, 3) if fmt == "significant" else fmt.format(value)


def matrix_columns(df: pd.DataFrame, precision: str | None = None) -> list[tuple[str, str]]:
    """(runtime, precision) pairs a decision matrix compares: each runtime at each sweep precision it runs
    (a precision a runtime does not implement is left out, not shown as a column of reasons)."""
    present = set(zip(df["runtime"], df["precision"]))
    return [(runtime, prec) for runtime in dict.fromkeys(df["runtime"]) for prec in dict.fromkeys(df["precision"])
            if (runtime, prec) in present and runs_precision(df, runtime, prec) and precision in (None, prec)]


def decision_matrix(df: pd.DataFrame, precision: str | None = None, max_ppl_delta_pct: float | None = None,
                    workload: Any = None) -> pd.DataFrame:
    """Rows = criteria, columns = runtimes (runtime + precision when the sweep has several precisions);
    each cell a measured value or 'not measured: why'.

    The best measured value of each ranked row is marked with a star (only when at least two
    columns were measured on it). Shapes are stated in the row labels. With max_ppl_delta_pct, a
    configuration over the accuracy gate is marked in its column label and never starred. With a workload
    (batch_size, input_len), every shape-specific row is read at the user's shape: the workload's input
    length and the largest measured batch that its batch size fills; without one, at the sweep's extremes.
    """
    df = split_deployments(df)
    inference = inference_rows(df)
    if inference.empty:
        return pd.DataFrame()
    pairs = matrix_columns(df, precision)
    several = len({p for _, p in pairs}) > 1
    failing = frozenset(gate_failures(df, max_ppl_delta_pct)) if max_ppl_delta_pct is not None else frozenset()
    label = {pair: (f"{pair[0]} {pair[1]}" if several else pair[0]) + (GATE_MARK if pair in failing else "")
             for pair in pairs}
    batches = sorted(inference["batch_size"].dropna().unique())
    lens = sorted(inference["input_len"].dropna().unique())
    b_min, b_max, l_min, l_max = int(batches[0]), int(batches[-1]), int(lens[0]), int(lens[-1])
    if workload is not None:
        b_min = b_max = int(max([b for b in batches if b <= workload.batch_size], default=batches[0]))
        l_min = l_max = int(workload.input_len)
    output_len = pd.to_numeric(inference["output_len"], errors="coerce").max()
    ctx = MatrixContext(df, b_min, b_max, l_min, l_max, int(output_len) if pd.notna(output_len) else None, failing,
                        max_ppl_delta_pct)
    table: dict[str, dict[str, str]] = {}
    winners: dict[str, str] = {}
    notes: dict[str, list[int]] = {}  # reason -> [its note number, the cells it explains]

    def unmeasured(value: Any) -> str:
        if not isinstance(value, Unmeasured):
            return str(value)
        note = notes.setdefault(value.reason, [len(notes) + 1, 0])
        note[1] += 1
        return f"not measured: {value.status} (note {note[0]})"

    for criterion in dict((c.label, c) for c in matrix_criteria(ctx)).values():  # at one shape, rows can coincide
        values = {label[pair]: criterion.value(ctx, criterion, *pair) for pair in pairs}
        numeric = {c: v for c, v in values.items() if isinstance(v, float) and not math.isnan(v)}
        ranked = {label[pair]: numeric[label[pair]] for pair in pairs if label[pair] in numeric and pair not in failing}
        best = ""
        if criterion.better and len(ranked) >= 2:
            pick = max if criterion.better == "higher" else min
            best = pick(ranked, key=ranked.__getitem__)
        table[criterion.label] = {
            label[pair]: (WINNER_MARK if label[pair] == best else "")
            + (_formatted(criterion.fmt, values[label[pair]])
               + (criterion.suffix(ctx, criterion, *pair) if criterion.suffix else "")
               if label[pair] in numeric else unmeasured(values[label[pair]]))
            for pair in pairs
        }
        winners[criterion.label] = best or "—"
    columns = [label[pair] for pair in pairs]
    matrix = pd.DataFrame.from_dict(table, orient="index")[columns]
    matrix["winner"] = pd.Series(winners)
    precisions = ", ".join(dict.fromkeys(p for _, p in pairs))
    matrix.index.name = f"criterion ({precisions})"
    matrix.attrs[MATRIX_NOTES] = {number: (reason, cells) for reason, (number, cells) in notes.items()}
    return matrix
