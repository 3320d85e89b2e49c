"""What to ship: the configurations that meet the latency targets and the accuracy gate, the best of them,
why each other lost, goodput, and what serving a load costs. Pure pandas on results rows (no torch).

A configuration is a runtime x precision x batch size measured at the workload's input and output
length, with at most the workload's batch size (the traffic cannot fill a larger batch). Targets are
checked at p99, as MLPerf does: time to first token (ttft_ms_p99) and time per output token
(itl_ms_p99, every decode step of every measured run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench_kernels.analysis import gate_failures, gpu_counts, ok_rows, on_gpus
from bench_kernels.results import KEY_COLUMNS

SECONDS_PER_DAY = 86_400
HOURS_PER_MONTH = 730.0


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
            misses.append(f"{name} {row[column]:,.1f} ms > {limit:,.0f} ms (+{100 * (row[column] / limit - 1):.0f}%)")
    return misses


def goodput_share(samples: dict[str, list[float]] | None, output_len: int, targets: Targets) -> float | None:
    """Share of measured runs (each a batch of requests) whose TTFT and mean time per output token both meet
    the targets; None without raw samples."""
    if not samples or not samples.get("ttft_ms"):
        return None
    met = 0
    for ttft, latency in zip(samples["ttft_ms"], samples["latency_ms"]):
        tpot = (latency - ttft) / max(output_len - 1, 1)
        met += (targets.ttft_ms is None or ttft <= targets.ttft_ms) and (targets.tpot_ms is None or tpot <= targets.tpot_ms)
    return met / len(samples["ttft_ms"])


def index_samples(records: list[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, list[float]]]:
    """ResultsStore.load_samples() records by their row key (as results.csv writes it)."""
    return {tuple(str(record["key"][c]) for c in KEY_COLUMNS): record for record in records}


def _row_key(row: pd.Series) -> tuple[str, ...]:
    return tuple(str(int(row[c])) if c in ("gpu_count", "batch_size", "input_len", "output_len") else str(row[c])
                 for c in KEY_COLUMNS)


def configurations(df: pd.DataFrame, targets: Targets,
                   samples: dict[tuple[str, ...], dict[str, list[float]]] | None = None) -> pd.DataFrame:
    """Every measured configuration at the workload's lengths: throughput per GPU, goodput, and whether it
    meets the targets and the accuracy gate (with the reasons when not)."""
    rows = ok_rows(df)
    rows = rows[(rows["input_len"] == targets.input_len) & (rows["output_len"] == targets.output_len)
                & (rows["batch_size"] <= targets.batch_size)].copy()
    columns = ["runtime", "precision", "batch_size", "gpu_count", "tokens_per_s", "tokens_per_s_per_gpu",
               "goodput_tokens_per_s", "ttft_ms_p99", "itl_ms_p99", "per_user_tokens_per_s", "ppl_delta_pct",
               "feasible", "why_not"]
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
        share = goodput_share((samples or {}).get(_row_key(row)), targets.output_len, targets)
        if share is None:  # no raw samples: all or nothing at p99
            share = 0.0 if _misses(row, targets) else 1.0
        out.append({**{c: row[c] for c in ("runtime", "precision", "batch_size", "gpu_count", "tokens_per_s",
                                            "tokens_per_s_per_gpu", "ttft_ms_p99", "itl_ms_p99",
                                            "per_user_tokens_per_s")},
                    "goodput_tokens_per_s": row["tokens_per_s"] * share,
                    "ppl_delta_pct": quality["ppl_delta_pct"].get(pair, math.nan) if not quality.empty else math.nan,
                    "feasible": not why, "why_not": "; ".join(why)})
    return pd.DataFrame(out, columns=columns).sort_values("tokens_per_s_per_gpu", ascending=False,
                                                          ignore_index=True)


@dataclass
class Recommendation:
    """The configuration to ship, the runner-up (best of another runtime x precision x GPU count), and why the
    others lost."""

    best: pd.Series | None
    runner_up: pd.Series | None
    losers: pd.DataFrame  # one row per other runtime x precision: its best attempt and the reason
    quality_judged: bool  # False when no perplexity was measured (e.g. random weights)


def recommend(table: pd.DataFrame, df: pd.DataFrame) -> Recommendation:
    """The most tokens/s per GPU among configurations that meet every target; ties go to the smaller batch."""
    feasible = table[table["feasible"].astype(bool)].sort_values(["tokens_per_s_per_gpu", "batch_size"],
                                                                 ascending=[False, True])
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
                      f"{100 * (1 - top['tokens_per_s_per_gpu'] / best['tokens_per_s_per_gpu']):.0f}% less")
        else:
            top = group.iloc[0]
            reason = f"no batch size meets the targets; at batch {int(top['batch_size'])}: {top['why_not']}"
        losers.append({"runtime": runtime, "precision": precision, "gpu_count": int(gpus),
                       "batch_size": int(top["batch_size"]), "tokens_per_s_per_gpu": top["tokens_per_s_per_gpu"],
                       "reason": reason})
    judged = not df[(df["stage"] == "quality") & (df["status"] == "ok")].empty
    return Recommendation(best, runner_up, pd.DataFrame(losers, columns=["runtime", "precision", "gpu_count",
                                                                         "batch_size", "tokens_per_s_per_gpu",
                                                                         "reason"]), judged)


def cost_table(table: pd.DataFrame, gpu_hour_usd: float, requests_per_day: float | None,
               output_len: int) -> pd.DataFrame:
    """Per runtime x precision at its best feasible batch: $ per million generated tokens, and for a load the
    GPUs it needs and their monthly cost (see cost_formulas)."""
    columns = ["runtime", "precision", "gpu_count", "batch_size", "tokens_per_s_per_gpu", "usd_per_million_tokens",
               "gpus_needed", "usd_per_month"]
    feasible = table[table["feasible"].astype(bool)]
    if feasible.empty or gpu_hour_usd <= 0:
        return pd.DataFrame(columns=columns)
    rows = []
    for (runtime, precision, _), group in feasible.groupby(["runtime", "precision", "gpu_count"], sort=False):
        top = group.sort_values("tokens_per_s_per_gpu", ascending=False).iloc[0]
        per_gpu = top["tokens_per_s_per_gpu"]
        gpus = deployment_gpus(requests_per_day, output_len, per_gpu, top["gpu_count"]) if requests_per_day else None
        rows.append({"runtime": runtime, "precision": precision, "gpu_count": int(top["gpu_count"]),
                     "batch_size": int(top["batch_size"]),
                     "tokens_per_s_per_gpu": per_gpu,
                     "usd_per_million_tokens": gpu_hour_usd / (per_gpu * 3600) * 1e6,
                     "gpus_needed": gpus, "usd_per_month": gpus * gpu_hour_usd * HOURS_PER_MONTH if gpus else None})
    return pd.DataFrame(rows, columns=columns).sort_values("usd_per_million_tokens", ignore_index=True)


def deployment_gpus(requests_per_day: float, output_len: int, tokens_per_s_per_gpu: float,
                    gpus_per_replica: float = 1) -> int:
    """GPUs to generate requests_per_day x output_len tokens a day at the measured rate, in whole replicas."""
    needed_tokens_per_s = requests_per_day * output_len / SECONDS_PER_DAY
    replica_tokens_per_s = tokens_per_s_per_gpu * gpus_per_replica
    return int(math.ceil(needed_tokens_per_s / replica_tokens_per_s) * gpus_per_replica)


def cost_formulas() -> list[str]:
    """The arithmetic of the cost section, in words."""
    return [
        "$ per million generated tokens = GPU-hour price / (tokens/s per GPU x 3,600) x 1,000,000, at the "
        "configuration's best batch size that meets the targets.",
        "GPUs needed = ceil(requests per day x output tokens / 86,400 / tokens/s of one replica) x GPUs per "
        "replica: the load spread evenly over the day, every replica kept at that batch size (peaks need more).",
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
        facts["lead_pct"] = 100 * (rec.best["tokens_per_s_per_gpu"] / rec.runner_up["tokens_per_s_per_gpu"] - 1)
    return facts
