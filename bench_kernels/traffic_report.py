"""The report's traffic section: measured load runs beside the simulator's predictions, latency against request
rate with the latency targets, the highest rate each configuration sustains, the GPUs (and their cost) the traffic
needs, and which batching policy serves it with the fewest.

Report half: pandas and the pure simulator (bench_kernels.traffic.simulator, policies, arrivals, spec), never torch
or the runtimes. A configuration is runtime x precision x devices x batching policy; its step costs are the offline
sweep's TTFT and ITL rows at the traffic's output length.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench_kernels.traffic.arrivals import SECONDS_PER_HOUR, requests_at_rate
from bench_kernels.traffic.latency import keeps_up, percentile_note
from bench_kernels.traffic.policies import make_policy
from bench_kernels.traffic.simulator import StepCosts, highest_rate, predict_rate
from bench_kernels.traffic.spec import MLPERF_MIN_DURATION_S, TrafficSpec, parse_traffic

log = logging.getLogger(__name__)

# Requests per simulated rate: a p99 over the 3 slowest, few enough for a report in seconds; the rate search
# brackets a factor of 10^4 to within 2% (2^-9 of its log).
SECONDS_PER_DAY = 86_400
SIMULATED_REQUESTS = 300
SEARCH_ITERATIONS = 9
# Runtimes whose shape-limited policy runs any shape inside its built ranges (TensorRT profiles); others pad.
RANGE_PROFILES = ("tensorrt",)
LOAD_COLUMNS = ["runtime", "precision", "gpu_count", "policy", "arrivals", "request_rate_per_s",
                "offered_rate_per_s", "completion_rate_per_s", "achieved_rate_per_s", "requests", "duration_s",
                "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99", "latency_ms_p99", "goodput_per_s",
                "slo_attainment"]


@dataclass
class Configuration:
    """One way to serve the traffic: a measured runtime x precision x devices under one of its batching policies."""

    runtime: str
    precision: str
    gpu_count: int
    policy: str
    costs: StepCosts
    built_batch_sizes: list[int]
    built_input_lens: list[int]

    @property
    def label(self) -> str:
        devices = f" on {self.gpu_count} GPUs" if self.gpu_count > 1 else ""
        return f"{self.runtime} {self.precision}{devices}, {self.policy}"


def configurations(results: pd.DataFrame, output_len: int,
                   declared: dict[str, tuple[str, ...]] | None = None) -> list[Configuration]:
    """Every configuration the offline rows give step costs for: each measured runtime x precision x devices,
    under each policy its rows (or `declared`) say it serves."""
    rows = results[(results["stage"] == "inference") & (results["status"] == "ok")].dropna(
        subset=["ttft_ms_p50", "itl_ms_p50", "output_len"])
    # A shape measured at several output lengths: the one nearest the traffic's (step costs hardly depend on it).
    rows = rows.assign(_off=(rows["output_len"] - output_len).abs()).sort_values("_off").drop_duplicates(
        ["runtime", "precision", "gpu_count", "batch_size", "input_len"]).drop(columns="_off")
    builds = results[(results["stage"] == "build") & (results["status"] == "ok")]
    out = []
    for (runtime, precision, gpu_count), group in rows.groupby(["runtime", "precision", "gpu_count"], sort=True):
        written = str(group["runtime_batching_policies"].iloc[0] or "").split() \
            if "runtime_batching_policies" in group else []
        policies = (declared or {}).get(runtime) or written or ["static"]
        build = builds[(builds["runtime"] == runtime) & (builds["precision"] == precision)
                       & (builds["gpu_count"] == gpu_count)]["build_s"]
        shapes = sorted({(int(b), int(n)) for b, n in zip(group["batch_size"], group["input_len"])})
        # TensorRT rebuilds its whole engine for a shape outside its profiles; a compiled runtime captures one shape.
        rebuild_s = float(build.iloc[0]) if not build.empty else 0.0
        rebuild_s = rebuild_s if runtime in RANGE_PROFILES else rebuild_s / max(len(shapes), 1)
        for policy in policies:
            costs = StepCosts.from_rows(group, rebuild_s=rebuild_s)
            out.append(Configuration(runtime, precision, int(gpu_count), policy, costs,
                                     sorted({b for b, _ in shapes}), sorted({n for _, n in shapes})))
    return out


def _predictor(config: Configuration, spec: TrafficSpec, output_len: int, targets: Any,
               count: int | None = SIMULATED_REQUESTS):
    """rate -> the simulated summary of `count` requests (None: the spec's own load run, the very requests a
    measured run at that rate was sent, drawn from the same seed)."""
    def policy():
        return make_policy(config.policy, spec.batching, built_batch_sizes=config.built_batch_sizes,
                           built_input_lens=config.built_input_lens, pads=config.runtime not in RANGE_PROFILES)

    def predict(rate: float) -> dict[str, float]:
        return predict_rate(lambda r: requests_at_rate(spec, r, output_len, count=count), policy,
                            config.costs, rate, ttft_ms=targets.ttft_ms, tpot_ms=targets.tpot_ms)

    return predict


def _capacity_bounds(config: Configuration, spec: TrafficSpec, output_len: int) -> tuple[float, float]:
    """Rates to search between: a full batch back to back, times 2 and over 10^4."""
    batch = spec.batching.max_batch
    length = spec.lengths.input_len or spec.lengths.mean_len or spec.lengths.max_len or 128
    service_s = (config.costs.prefill(batch, int(length))
                 + (output_len - 1) * config.costs.decode(batch, length + output_len / 2)) / 1e3
    high = 2 * batch / max(service_s, 1e-9)
    return high / 1e4, high


def sustainable_rates(configs: list[Configuration], spec: TrafficSpec, output_len: int,
                      targets: Any) -> pd.DataFrame:
    """Per configuration: the highest Poisson rate (requests/s) whose simulated p99 TTFT and TPOT meet the targets
    and which it keeps up with, per deployment and per GPU, and what the simulation had to extrapolate."""
    records = []
    for config in configs:
        config.costs.beyond.clear()
        low, high = _capacity_bounds(config, spec, output_len)
        rate = highest_rate(_predictor(config, spec, output_len, targets), ttft_ms=targets.ttft_ms,
                            tpot_ms=targets.tpot_ms, low_per_s=low, high_per_s=high, iterations=SEARCH_ITERATIONS)
        records.append({"configuration": config.label, "runtime": config.runtime, "precision": config.precision,
                        "gpu_count": config.gpu_count, "policy": config.policy, "rate_per_s": rate,
                        "rate_per_s_per_gpu": rate / config.gpu_count,
                        "extrapolated": "; ".join(config.costs.extrapolated)})
    return pd.DataFrame(records, columns=["configuration", "runtime", "precision", "gpu_count", "policy",
                                          "rate_per_s", "rate_per_s_per_gpu", "extrapolated"])


def traffic_rates(report_spec: Any, spec: TrafficSpec) -> tuple[list[float], str]:
    """The traffic to size for, as requests/s in each hour, and its description: a day profile's hours, else the
    sweep's `load` (requests per day, flat), else the highest load-test rate."""
    if spec.arrivals == "day_profile":
        return ([r / SECONDS_PER_HOUR for r in spec.requests_per_hour],
                f"the day profile (peak {spec.peak_rate_per_s:,.2f} requests/s, mean {spec.mean_rate_per_s:,.2f})")
    if report_spec.requests_per_day:
        per_day = float(report_spec.requests_per_day)
        return [per_day / SECONDS_PER_DAY], f"{per_day:,.0f} requests a day ({per_day / SECONDS_PER_DAY:,.2f}/s)"
    return [max(spec.rate_per_s, default=0.0)], f"{max(spec.rate_per_s, default=0.0):g} requests/s"


def gpus_for_traffic(rates: pd.DataFrame, hourly_per_s: list[float], gpu_hour_usd: float) -> pd.DataFrame:
    """GPUs each configuration needs: a fleet sized for the peak hour, and the mean over hours of a fleet that
    follows each hour's rate; with a price, their cost per day."""
    table = rates.copy()

    def deployments(rate: float, per_deployment: float) -> float:
        return math.ceil(rate / per_deployment) if per_deployment > 0 else math.nan

    table["gpus_at_peak"] = [deployments(max(hourly_per_s), r) * g
                             for r, g in zip(table["rate_per_s"], table["gpu_count"])]
    table["gpus_at_mean"] = [float(np.mean([deployments(h, r) * g for h in hourly_per_s]))
                             for r, g in zip(table["rate_per_s"], table["gpu_count"])]
    if gpu_hour_usd > 0:
        table["usd_per_day_at_peak"] = table["gpus_at_peak"] * 24 * gpu_hour_usd
        table["usd_per_day_following"] = table["gpus_at_mean"] * 24 * gpu_hour_usd
    return table.sort_values(["gpus_at_peak", "gpus_at_mean", "rate_per_s_per_gpu"],
                             ascending=[True, True, False], na_position="last")


def load_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = results[results["stage"] == "load"]
    return rows[rows["status"] == "ok"][LOAD_COLUMNS].sort_values(["runtime", "precision", "policy",
                                                                   "request_rate_per_s"])


def measured_highest_rates(results: pd.DataFrame, targets: Any) -> pd.DataFrame:
    """Per measured configuration: the highest load-tested Poisson rate whose p99 TTFT and TPOT met the targets and
    which it kept up with (latency.keeps_up: its requests completed at 90% of the rate they arrived at), of the
    rates tried."""
    rows = load_table(results)
    rows = rows[rows["arrivals"].astype(str).str.startswith("poisson")]
    records = []
    for (runtime, precision, gpu_count, policy), group in rows.groupby(["runtime", "precision", "gpu_count",
                                                                         "policy"]):
        holds = group[((targets.ttft_ms is None) | (group["ttft_ms_p99"] <= (targets.ttft_ms or 0)))
                      & ((targets.tpot_ms is None) | (group["tpot_ms_p99"] <= (targets.tpot_ms or 0)))
                      & keeps_up(group["completion_rate_per_s"], group["offered_rate_per_s"])]
        records.append({"runtime": runtime, "precision": precision, "gpu_count": gpu_count, "policy": policy,
                        "rates_tried": ", ".join(f"{r:g}" for r in sorted(group["request_rate_per_s"])),
                        "highest_rate_holding_per_s": holds["request_rate_per_s"].max() if not holds.empty else 0.0})
    return pd.DataFrame(records)


def _policy_name(policy_text: str) -> str:
    return str(policy_text).split()[0] if policy_text else ""


def predicted_vs_measured(results: pd.DataFrame, configs: list[Configuration], spec: TrafficSpec,
                          output_len: int, targets: Any) -> pd.DataFrame:
    """Each measured Poisson load row beside the simulator's prediction at the same rate, from the same runtime x
    precision's offline step costs under the same policy, with the error of TTFT p99 and TPOT p99."""
    by_key = {(c.runtime, c.precision, c.gpu_count, c.policy): c for c in configs}
    records = []
    for row in load_table(results).itertuples():
        config = by_key.get((row.runtime, row.precision, int(row.gpu_count), _policy_name(row.policy)))
        if config is None or not str(row.arrivals).startswith("poisson"):
            continue
        config.costs.beyond.clear()
        predicted = _predictor(config, spec, output_len, targets, count=None)(float(row.request_rate_per_s))
        records.append({"runtime": row.runtime, "precision": row.precision, "policy": row.policy,
                        "request_rate_per_s": row.request_rate_per_s, "requests": row.requests,
                        "ttft_ms_p99": row.ttft_ms_p99, "predicted_ttft_ms_p99": predicted["ttft_ms_p99"],
                        "ttft_error_pct": 100 * (predicted["ttft_ms_p99"] / row.ttft_ms_p99 - 1),
                        "tpot_ms_p99": row.tpot_ms_p99, "predicted_tpot_ms_p99": predicted["tpot_ms_p99"],
                        "tpot_error_pct": 100 * (predicted["tpot_ms_p99"] / row.tpot_ms_p99 - 1),
                        "extrapolated": "; ".join(config.costs.extrapolated)})
    return pd.DataFrame(records)


def latency_vs_rate(results: pd.DataFrame, configs: list[Configuration], spec: TrafficSpec, output_len: int,
                    targets: Any, rates: pd.DataFrame) -> Figure | None:
    """p99 TTFT and TPOT against request rate: simulated lines per configuration, measured load rows as points,
    the targets as horizontal lines."""
    measured = load_table(results)
    if not configs and measured.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    top = max([r for r in rates["rate_per_s"] if r > 0] + list(measured["request_rate_per_s"].dropna()) + [1e-3])
    grid = np.geomspace(top / 30, top * 1.5, 10)
    for config in configs:
        predict = _predictor(config, spec, output_len, targets)
        curve = [predict(float(rate)) for rate in grid]
        for ax, column in zip(axes, ("ttft_ms_p99", "tpot_ms_p99")):
            ax.plot(grid, [c[column] for c in curve], label=f"{config.label} (simulated)")
    for (runtime, precision, policy), group in measured.groupby(["runtime", "precision", "policy"]):
        for ax, column in zip(axes, ("ttft_ms_p99", "tpot_ms_p99")):
            ax.scatter(group["request_rate_per_s"], group[column], marker="o", s=40, zorder=3,
                       label=f"{runtime} {precision}, {policy} (measured)")
    for ax, limit, title in ((axes[0], targets.ttft_ms, "time to first token p99"),
                             (axes[1], targets.tpot_ms, "time per output token p99")):
        if limit is not None:
            ax.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"target {limit:g} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("requests/s (Poisson)")
        ax.set_ylabel("ms")
        ax.set_title(title)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Latency against request rate (lower is better; the queue counts in TTFT)")
    fig.tight_layout()
    return fig


def _percentiles_html(results: pd.DataFrame) -> str:
    rows = load_table(results)
    if rows.empty:
        return ""
    items = "".join(f"<li>{html.escape(f'{r.runtime} {r.precision}, {r.policy}, {r.arrivals}')}: "
                    f"{html.escape(percentile_note(int(r.requests), float(r.duration_s)))}</li>"
                    for r in rows.itertuples())
    return f"<p>How many requests each percentile rests on:</p><ul>{items}</ul>"


def _fewest_html(sizing: pd.DataFrame, traffic: str) -> str:
    """Which configuration and policy serve the traffic with the fewest GPUs, and why."""
    usable = sizing[sizing["rate_per_s"] > 0]
    if usable.empty:
        return "<p><b>No configuration meets the targets at any simulated rate</b> for this traffic.</p>"
    best = usable.iloc[0]
    text = (f"<p><b>Fewest GPUs: {html.escape(best['configuration'])}</b>: {best['gpus_at_peak']:.0f} GPUs for "
            f"{html.escape(traffic)} at its peak, because one deployment sustains "
            f"{best['rate_per_s']:,.2f} requests/s within the targets ({best['rate_per_s_per_gpu']:,.2f} per GPU)")
    others = usable[(usable["runtime"] == best["runtime"]) & (usable["precision"] == best["precision"])
                    & (usable["policy"] != best["policy"])]
    for other in others.itertuples():
        text += (f"; under {html.escape(other.policy)} the same runtime sustains {other.rate_per_s:,.2f} "
                 f"requests/s and needs {other.gpus_at_peak:.0f}")
    return text + ".</p>"


def _unsimulated_html(results: pd.DataFrame, configs: list[Configuration]) -> str:
    """Runtimes built in this run whose engine never ran: no step costs, so no prediction (say so)."""
    simulated = {(c.runtime, c.precision) for c in configs}
    builds = results[(results["stage"] == "build") & (results["status"] == "ok") & (results["build_s"] > 0)]
    missing = [f"{r.runtime} {r.precision} (built in {r.build_s:,.0f} s)" for r in builds.itertuples()
               if (r.runtime, r.precision) not in simulated]
    if not missing:
        return ""
    return (f"<p>Not simulated: {html.escape(', '.join(missing))}: built, but no inference row measured its prefill "
            "and decode steps here, and a prediction needs them (a rebuild's cost is known, a step's is not).</p>")


def traffic_section(report_spec: Any, results: pd.DataFrame,
                    declared: dict[str, tuple[str, ...]] | None = None) -> tuple[str, Figure | None]:
    """The traffic section's HTML and its latency-against-rate figure (None without anything to draw), from the
    report's spec (report.ReportSpec: traffic, targets, output_len, gpu_hour_usd, requests_per_day)."""
    spec = parse_traffic(report_spec.traffic)
    if spec is None:
        return "<p><i>No traffic given (the <code>traffic</code> key): no load runs, no traffic sizing.</i></p>", None
    targets = report_spec.targets
    output_len = spec.output_len or report_spec.output_len
    configs = configurations(results, output_len, declared)
    parts = [f"<p>Traffic: {html.escape(_describe(spec, output_len))}. Targets at p99: "
             f"{html.escape(_targets(targets))}. Output lengths are fixed (EOS ignored); the queue counts in TTFT. "
             f"Predictions are a discrete-event simulation of each policy over this run's offline step costs (TTFT "
             f"rows as the prefill, ITL rows as a decode step, interpolated between measured shapes); continuous "
             f"batching is predicted from generate()'s step costs, not transformers' continuous batching's own.</p>"]
    measured = load_table(results)
    if measured.empty:
        parts.append("<p><i>No load run in this run's results: every figure below is predicted.</i></p>")
    else:
        parts.append("<h4>Measured load runs</h4>" + _table_html(measured)
                     + "<p>Highest measured rate within the targets:</p>"
                     + _table_html(measured_highest_rates(results, targets)))
        parts.append(_percentiles_html(results))
        check = predicted_vs_measured(results, configs, spec, output_len, targets)
        if not check.empty:
            parts.append("<h4>Simulator against the measured load runs</h4>" + _table_html(check))
    if not configs:
        parts.append("<p><i>No offline inference rows: no step costs to simulate with.</i></p>")
        return "".join(parts), latency_vs_rate(results, configs, spec, output_len, targets, pd.DataFrame(
            {"rate_per_s": []}))
    parts.append(_unsimulated_html(results, configs))
    rates = sustainable_rates(configs, spec, output_len, targets)
    hourly, traffic = traffic_rates(report_spec, spec)
    sizing = gpus_for_traffic(rates, hourly, report_spec.gpu_hour_usd)
    parts.append(f"<h4>Highest sustainable rate and GPUs for {html.escape(traffic)} (simulated)</h4>"
                 + _table_html(sizing))
    parts.append(_fewest_html(sizing, traffic))
    return "".join(parts), latency_vs_rate(results, configs, spec, output_len, targets, rates)


def _describe(spec: TrafficSpec, output_len: int) -> str:
    if spec.arrivals == "day_profile":
        arrivals = (f"a day profile of {min(spec.requests_per_hour):,.0f}-{max(spec.requests_per_hour):,.0f} "
                    f"requests an hour (mean {spec.mean_rate_per_s:,.2f}/s, peak {spec.peak_rate_per_s:,.2f}/s)")
    elif spec.arrivals == "concurrency":
        arrivals = f"closed loop at concurrency {', '.join(map(str, spec.concurrency))}"
    else:
        arrivals = f"Poisson at {', '.join(f'{r:g}' for r in spec.rate_per_s)} requests/s"
    lengths = spec.lengths
    if lengths.kind == "fixed":
        inputs = f"{lengths.input_len} tokens in"
    elif lengths.kind == "uniform":
        inputs = f"{lengths.min_len}-{lengths.max_len} tokens in (uniform)"
    elif lengths.kind == "lognormal":
        inputs = f"about {lengths.mean_len:g} tokens in (lognormal, {lengths.min_len}-{lengths.max_len})"
    else:
        inputs = f"tokens in drawn from {lengths.file}"
    return (f"{arrivals}; {inputs}, {output_len} out; batches of at most {spec.batching.max_batch}, a static batch "
            f"waiting at most {spec.batching.max_wait_ms:g} ms; load runs of at most {spec.duration_s:g} s "
            f"or {spec.requests} requests (MLPerf's Server scenario: at least {MLPERF_MIN_DURATION_S:.0f} s)")


def _targets(targets: Any) -> str:
    parts = [f"TTFT <= {targets.ttft_ms:g} ms" if targets.ttft_ms is not None else "",
             f"TPOT <= {targets.tpot_ms:g} ms" if targets.tpot_ms is not None else ""]
    return ", ".join(p for p in parts if p) or "none (the highest rate is the one each configuration keeps up with)"


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, float_format=lambda v: f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}",
                         na_rep="", border=0)
