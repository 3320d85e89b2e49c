"""The decision: which configuration meets the latency targets and the accuracy gate with the most tokens/s
per GPU, why the others lost, goodput from raw samples, and the cost arithmetic."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench_kernels.analysis import unmeasured_summary
from bench_kernels.decision import (MATRIX_NOTES, WINNER_MARK, Targets, configurations, cost_table, decide,
                                    decision_matrix, deployment_gpus, goodput_share, recommend, summary_facts)
from bench_kernels.report import ReportSpec, cost_html, quality_notes, recommendation_html, styled_matrix
from bench_kernels.config import parse_config
from bench_kernels.results import row_key, typed_frame


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"stage": "inference", "status": "ok", "model": "m", "weights": "real", "input_len": 128,
            "output_len": 128}
    return typed_frame({**base, **r} for r in rows)


def config(runtime: str, precision: str, batch: int, tps: float, ttft: float, itl: float, **extra: object) -> dict:
    return {"runtime": runtime, "precision": precision, "batch_size": batch, "tokens_per_s": tps,
            "ttft_ms_p99": ttft, "itl_ms_p99": itl, "itl_ms_p50": itl * 0.9, **extra}


TARGETS = Targets(batch_size=32, input_len=128, output_len=128, ttft_ms=500.0, tpot_ms=30.0, max_ppl_delta_pct=1.0)
ROWS = [
    config("reference", "bf16", 8, 240.0, 45.0, 44.0),  # too slow per token
    config("compiled", "bf16", 8, 1200.0, 22.0, 6.7),
    config("compiled", "bf16", 32, 4100.0, 90.0, 7.5),
    config("compiled", "bf16", 64, 7000.0, 180.0, 8.0),  # beyond the workload's batch: not a candidate
    config("compiled", "fp8", 32, 4600.0, 110.0, 6.3),  # fastest, but over the accuracy gate
    config("tensorrt", "bf16", 32, 4300.0, 620.0, 5.0),  # first token too late
    {"stage": "quality", "runtime": "compiled", "precision": "fp8", "perplexity": 10.3, "ppl_delta_pct": 3.0},
    {"stage": "quality", "runtime": "compiled", "precision": "bf16", "perplexity": 10.0, "ppl_delta_pct": 0.0},
]


def test_the_fastest_configuration_that_meets_every_target_wins() -> None:
    df = frame(ROWS)
    table = configurations(df, TARGETS)
    assert 64 not in set(table["batch_size"])
    rec = recommend(table, df)
    assert summary_facts(rec)["best"] == "compiled bf16, batch 32"
    assert rec.runner_up is None  # every other runtime x precision breaks a target
    reasons = rec.losers.set_index(["runtime", "precision"])["reason"]
    assert "perplexity +3.00% over the accuracy gate of 1%" in reasons[("compiled", "fp8")]
    assert "time to first token p99 620.0 ms > 500 ms (+24%)" in reasons[("tensorrt", "bf16")]
    assert "time per output token p99 44.0 ms > 30 ms (+47%)" in reasons[("reference", "bf16")]
    assert rec.quality_judged


def test_without_targets_the_fastest_wins_and_a_runner_up_is_another_runtime() -> None:
    df = frame(ROWS[:6])
    rec = recommend(configurations(df, Targets(batch_size=32, input_len=128, output_len=128)), df)
    facts = summary_facts(rec)
    assert facts["best"] == "compiled fp8, batch 32" and facts["runner_up"] == "tensorrt bf16, batch 32"
    assert facts["behind_pct"] == pytest.approx(100 * (1 - 4300 / 4600))
    assert not rec.quality_judged  # no perplexity rows: the report says quality was not judged


def test_nothing_feasible_names_each_closest_miss() -> None:
    df = frame([ROWS[0], ROWS[5]])
    rec = recommend(configurations(df, TARGETS), df)
    assert rec.best is None and rec.runner_up is None
    assert len(rec.losers) == 2 and rec.losers["reason"].str.startswith("no batch size meets the targets").all()


def test_tokens_per_gpu_divide_by_the_gpus_a_deployment_uses() -> None:
    df = frame([config("compiled", "bf16", 8, 3000.0, 50.0, 10.0, gpu_count=2),
                config("compiled", "fp8", 8, 2000.0, 50.0, 10.0, gpu_count=1)])
    df["gpu_count"] = [2, 1]
    table = configurations(df, Targets(batch_size=8, input_len=128, output_len=128))
    assert table.iloc[0]["runtime"] == "compiled" and table.iloc[0]["precision"] == "fp8"
    assert table.set_index("precision").loc["bf16", "tokens_per_s_per_gpu"] == 1500.0


def test_goodput_counts_runs_that_meet_both_targets() -> None:
    samples = {"ttft_ms": [100.0, 200.0, 600.0, 100.0], "latency_ms": [100 + 127 * 20, 200 + 127 * 40,
                                                                      600 + 127 * 20, 100 + 127 * 29]}
    # run 1 meets both; run 2 breaks the per-token target (40 ms); run 3 the first-token target; run 4 meets both
    assert goodput_share(samples, 128, TARGETS) == 0.5
    assert goodput_share(None, 128, TARGETS) is None


def test_cost_arithmetic_by_hand() -> None:
    df = frame([config("compiled", "bf16", 32, 1000.0, 50.0, 10.0)])
    table = configurations(df, TARGETS)
    costs = cost_table(table, gpu_hour_usd=2.0, requests_per_day=1_000_000, output_len=128).iloc[0]
    assert costs["usd_per_million_tokens"] == pytest.approx(2.0 / (1000 * 3600) * 1e6)  # $0.556
    # 1e6 x 128 tokens a day = 1,481.5 tokens/s: at most 70% busy, a GPU of 1,000 tokens/s serves 700 of them,
    # so three GPUs, 3 x $2 x 730 h a month (two would be 74% busy)
    assert costs["gpus_needed"] == 3 and costs["usd_per_month"] == pytest.approx(3 * 2.0 * 730)
    full = cost_table(table, gpu_hour_usd=2.0, requests_per_day=1_000_000, output_len=128, max_utilization=1.0)
    assert full.iloc[0]["gpus_needed"] == 2
    assert cost_table(table, gpu_hour_usd=0.0, requests_per_day=None, output_len=128).empty
    assert deployment_gpus(1_000_000, 128, 800.0, gpus_per_replica=2, max_utilization=1.0) == 2  # 1,600 tokens/s
    assert deployment_gpus(1_000_000, 128, 300.0, gpus_per_replica=2, max_utilization=1.0) == 6  # 3 x 600 tokens/s
    assert math.isnan(table.iloc[0]["ppl_delta_pct"])


def _key(runtime: str, precision: str) -> tuple[str, ...]:
    """The samples' key of a batch-8, 128-token configuration, as index_samples builds it."""
    return row_key({"stage": "inference", "runtime": runtime, "model": "m", "precision": precision, "gpu_count": 1,
                    "batch_size": 8, "input_len": 128, "output_len": 128})


def _runs(latency_ms: list[float]) -> dict[str, list[float]]:
    return {"ttft_ms": [20.0] * len(latency_ms), "latency_ms": latency_ms}


def test_a_runner_up_whose_bootstrap_interval_reaches_zero_behind_is_a_tie() -> None:
    # Batch 8 x 128 tokens: 947.7 vs 945.9 tokens/s from latencies whose run-to-run spread is wider than the gap.
    close = [config("compiled", "fp16", 8, 8 * 128e3 / 1080.5, 20.0, 8.0),
             config("compiled", "bf16", 8, 8 * 128e3 / 1082.6, 20.0, 8.0)]
    apart = [close[0], config("reference", "bf16", 8, 8 * 128e3 / 1500.0, 20.0, 8.0)]
    samples = {_key("compiled", "fp16"): _runs([1060.0, 1075.0, 1080.5, 1090.0,
                                                                                   1101.0]),
               _key("compiled", "bf16"): _runs([1058.0, 1071.0, 1082.6, 1094.0,
                                                                                   1099.0]),
               _key("reference", "bf16"): _runs([1480.0, 1490.0, 1500.0,
                                                                                    1510.0, 1520.0])}
    targets = Targets(batch_size=8, input_len=128, output_len=128)
    df = frame(close)
    tie = recommend(configurations(df, targets, samples), df, samples, targets)
    low, high = tie.behind_interval_pct
    assert low < 0 < high and tie.tie and summary_facts(tie)["tie"]
    assert "a tie" in recommendation_html(decide(df, targets, samples, 0.0, None))
    df = frame(apart)
    clear = recommend(configurations(df, targets, samples), df, samples, targets)
    low, high = clear.behind_interval_pct
    assert 0 < low <= summary_facts(clear)["behind_pct"] <= high and not clear.tie
    assert "a tie" not in recommendation_html(decide(df, targets, samples, 0.0, None))
    without = recommend(configurations(df, targets), df)  # no raw samples: no interval, never called a tie
    assert without.behind_interval_pct is None and not without.tie


def random(rows: list[dict]) -> pd.DataFrame:
    """Rows of a random-weight run: no perplexity of its own."""
    return typed_frame({"stage": "inference", "status": "ok", "model": "preset:llama", "weights": "random",
                        "input_len": 128, "output_len": 128, **r} for r in rows)


def evidence(*deltas: tuple[str, str, float]) -> pd.DataFrame:
    """Quality rows of a real-weight run: (runtime, precision, perplexity delta %)."""
    return typed_frame({"run_name": "real-run", "stage": "quality", "status": "ok", "model": "small-real",
                        "weights": "real", "runtime": runtime, "precision": precision, "perplexity": 40.0,
                        "ppl_delta_pct": delta} for runtime, precision, delta in deltas)


FAST_FP8 = [config("compiled", "fp8", 1, 250.0, 20.0, 4.0), config("compiled", "bf16", 1, 164.0, 20.0, 6.0),
            config("compiled", "int4", 1, 229.0, 20.0, 4.4)]
AT_ONE = Targets(batch_size=1, input_len=128, output_len=128, ttft_ms=500.0, tpot_ms=30.0, max_ppl_delta_pct=1.0)


def test_quality_evidence_names_the_fastest_that_passes_beside_the_fastest() -> None:
    df = random(FAST_FP8)
    cited = evidence(("compiled", "fp8", 2.75), ("compiled", "bf16", 0.0), ("reference", "bf16", 0.0))
    decision = decide(df, AT_ONE, {}, 0.0, None, evidence=cited)
    rec = decision.recommendation
    assert summary_facts(rec)["best"] == "compiled fp8, batch 1"  # the fastest is still named first
    assert rec.passing["precision"] == "bf16"  # int4 is faster, but no evidence says it passes
    assert not rec.evidence_for(rec.best).passes and rec.evidence_for(rec.passing).passes
    html = recommendation_html(decision)
    assert "compiled fp8 FAILS the accuracy gate on the quality evidence (perplexity +2.75%" in html
    assert "on small-real, real weights, run real-run" in html
    assert "The fastest that passes: compiled bf16, batch 1</b>, 164.0 tokens/s per GPU (34% behind" in html
    assert "Quality was not judged" not in html
    reasons = rec.losers.set_index("precision")["reason"]
    assert "passes the accuracy gate on the quality evidence" in reasons["bf16"]
    notes = quality_notes(df, 1.0, rec.evidence)
    assert "<b>compiled fp8</b>: fails the accuracy gate on the quality evidence" in notes
    assert "<b>reference bf16</b>: passes" in notes  # cited though not measured at the workload here
    # Evidence that cites others but not the fastest: the first screen says so, and still names the passing one.
    html = recommendation_html(decide(df, AT_ONE, {}, 0.0, None, evidence=evidence(("compiled", "bf16", 0.5))))
    assert "No quality evidence for compiled fp8</b>" in html and "The fastest that passes: compiled bf16" in html
    # No evidence at all: not judged, in plain words.
    html = recommendation_html(decide(df, AT_ONE, {}, 0.0, None))
    assert "Quality was not judged" in html and "no real-weight run is cited" in html
    assert "No quality evidence for" not in html and "The fastest that passes" not in html


def test_the_worst_cited_delta_decides_and_this_runs_own_perplexity_comes_first() -> None:
    cited = pd.concat([evidence(("compiled", "fp8", 0.4)), evidence(("compiled", "fp8", 2.75))])
    rec = decide(random(FAST_FP8), AT_ONE, {}, 0.0, None, evidence=cited).recommendation
    assert rec.evidence[("compiled", "fp8")].ppl_delta_pct == 2.75
    own = frame(FAST_FP8 + [{"stage": "quality", "runtime": "compiled", "precision": "fp8", "perplexity": 10.0,
                             "ppl_delta_pct": 0.2}])
    rec = decide(own, AT_ONE, {}, 0.0, None, evidence=cited).recommendation
    assert ("compiled", "fp8") not in rec.evidence and rec.passing["precision"] == "fp8"


def test_the_same_targets_at_a_larger_batch_and_its_gpus_for_the_load() -> None:
    df = random(FAST_FP8 + [config("compiled", "fp8", 8, 1577.0, 60.0, 5.0),
                            config("compiled", "fp8", 64, 9000.0, 900.0, 7.0),  # first token too late
                            config("compiled", "int4", 8, 1400.0, 60.0, 5.5)])
    decision = decide(df, AT_ONE, {}, 3.0, 1_000_000)
    assert decision.recommendation.best["batch_size"] == 1
    wider = decision.larger_batch
    assert (wider["precision"], wider["batch_size"]) == ("fp8", 8)
    # 1,481.5 tokens/s for the load: 1,577 x 70% = 1,104 per GPU needs two; 250 x 70% = 175 needs nine
    assert decision.gpus_for_load(wider) == 2 and decision.gpus_for_load(decision.recommendation.best) == 9
    line = "The same targets at a larger batch</b>: compiled fp8, batch 8 gives 1,577.0 tokens/s per GPU; 2 GPUs for "
    assert line + "the load instead of 9, at most 70% busy" in recommendation_html(decision)
    spec = ReportSpec.of(parse_config({"gpu_hour_usd": 3.0, "load": {"requests_per_day": 1_000_000}}))
    cost = cost_html(spec, decision)
    assert line in cost and "at most 70% busy" in cost and "$4,380 a month" in cost  # 2 x $3 x 730 h
    loose = decide(df, AT_ONE, {}, 3.0, 1_000_000, max_utilization=1.0)
    assert loose.gpus_for_load(loose.recommendation.best) == 6
    # Nothing measured beyond the workload's batch: no line.
    assert decide(random(FAST_FP8), AT_ONE, {}, 3.0, 1_000_000).larger_batch is None


def test_a_configuration_that_ran_out_of_memory_is_not_in_the_decision_in_plain_words() -> None:
    oom = ("prepare failed: out of memory: CUDA out of memory. Tried to allocate 896.00 MiB. GPU 0 has a total "
           "capacity of 79.18 GiB of which 156.19 MiB is free. Including non-PyTorch memory, this process has "
           "79.02 GiB memory in use. Of the allocated memory 77.26 GiB is allocated by PyTorch, and 1.10 GiB is")
    rows = [{**row, "model": "llama-3.1-70b"} for row in FAST_FP8[:1]]
    df = random(rows + [{"runtime": "reference", "precision": "bf16", "batch_size": 1, "status": "error",
                         "model": "llama-3.1-70b", "error": oom, "runtime_precisions": "bf16"}])
    html = recommendation_html(decide(df, AT_ONE, {}, 0.0, None))
    assert ("<b>reference bf16</b>: not measured (error): prepare failed: out of memory: 141 GB of weights do not fit "
            "85 GB") in html
    assert "Tried to allocate" not in html
    assert unmeasured_summary(df)["reason"].tolist() == ["prepare failed: out of memory: 141 GB of weights do not fit "
                                                         "85 GB"]
    notes = decision_matrix(df, workload=AT_ONE).attrs[MATRIX_NOTES]
    assert [reason for reason, _ in notes.values()] == unmeasured_summary(df)["reason"].tolist()


def test_a_runtime_not_measured_gets_one_line_where_the_decision_is_made_and_one_matrix_note() -> None:
    reason = "TensorRT-RTX 1.7 cannot run engines on NVIDIA H100 80GB HBM3, which has compute capability 9.0"
    unavailable = [{"runtime": "tensorrt", "precision": precision, "batch_size": batch, "status": "unavailable",
                    "error": reason, "runtime_precisions": "bf16 int4"}
                   for precision in ("bf16", "int4") for batch in (1, 8)]
    not_its_precision = {"runtime": "tensorrt", "precision": "fp8", "batch_size": 1, "status": "unavailable",
                         "error": "tensorrt does not run fp8", "runtime_precisions": "bf16 int4"}
    df = random(FAST_FP8 + unavailable + [not_its_precision])
    rec = decide(df, AT_ONE, {}, 0.0, None).recommendation
    assert rec.unmeasured[["runtime", "status", "reason"]].values.tolist() == [["tensorrt", "unavailable", reason]]
    assert rec.unmeasured.iloc[0]["precisions"] == ["bf16", "int4"]
    html = recommendation_html(decide(df, AT_ONE, {}, 0.0, None))
    first_screen, losers = html.split("Why the others lost")
    line = f"<b>tensorrt bf16, int4</b>: not measured (unavailable): {reason}"
    assert "Not in this decision</b>" in first_screen and line in first_screen and f"<li>{line}</li>" in losers
    assert "does not run fp8" not in html
    matrix = decision_matrix(df, workload=AT_ONE)
    cells = matrix.filter(like="tensorrt").to_numpy().ravel().tolist()
    assert {c for c in cells if c.startswith("not measured: unavailable")} == {"not measured: unavailable (note 1)"}
    assert matrix.attrs[MATRIX_NOTES][1] == (reason, cells.count("not measured: unavailable (note 1)"))
    rendered = styled_matrix(matrix).to_html()
    assert rendered.count(reason) == 1 and "note 1 (" in rendered
    # Every runtime unavailable: nothing to ship, and the line still says why.
    alone = decide(random(unavailable), AT_ONE, {}, 0.0, None)
    assert alone.recommendation.best is None and line in recommendation_html(alone)


def test_behind_has_one_formula_on_the_page() -> None:
    """Tokens/s per GPU relative to the winner's, in the runner-up line and in why the others lost alike: 1,200
    against 4,600 is 74% behind (the lead formula, 4,600 / 1,200 - 1, would say 283%)."""
    df = frame([config("compiled", "fp8", 32, 4600.0, 110.0, 6.3), config("compiled", "bf16", 32, 1200.0, 22.0, 6.7),
                config("reference", "bf16", 32, 1200.0 * 0.9, 45.0, 20.0)])
    html = recommendation_html(decide(df, TARGETS, {}, 0.0, None))
    assert "Runner-up: compiled bf16, batch 32, 1,200.0 tokens/s per GPU (74% behind" in html
    assert "gives 1,080.0 tokens/s per GPU, 77% behind" in html
    assert "% less" not in html and "283%" not in html


def test_the_matrix_stars_tokens_per_gpu_as_the_recommendation_ranks() -> None:
    """A deployment over 2 GPUs gives more tokens/s in all than one GPU, but fewer per GPU: the matrix stars the one
    GPU, as the recommendation picks it, and says what the pair gives."""
    df = frame([config("compiled", "bf16", 8, 3000.0, 50.0, 10.0), config("compiled", "bf16", 8, 2000.0, 50.0, 10.0)])
    df["gpu_count"] = [2, 1]
    targets = Targets(batch_size=8, input_len=128, output_len=128)
    best = decide(df, targets, {}, 0.0, None).recommendation.best
    assert best["gpu_count"] == 1
    row = decision_matrix(df, workload=targets).loc["throughput per GPU, batch 8, input 128 (tokens/s)"]
    assert row["compiled"] == WINNER_MARK + "2000.0"
    assert row["compiled (2 GPUs)"] == "1500.0 (3000.0 on 2 GPUs)"


def test_latency_beside_the_ttft_target_says_it_is_end_to_end() -> None:
    df = frame([config("compiled", "bf16", 8, 1200.0, 22.0, 6.7, latency_ms_p99=900.0),
                config("reference", "bf16", 8, 240.0, 45.0, 44.0, latency_ms_p99=4000.0)])
    matrix = decision_matrix(df, workload=TARGETS)
    assert "end-to-end latency p99, batch 8, input 128 (ms)" in matrix.index
    assert not any(label.startswith("latency") for label in matrix.index)


def test_a_break_even_against_the_references_fp8_shows_the_one_against_bf16_beside_it() -> None:
    """10 s of build: against the reference's fp8 (10 tokens/s) compiled fp8 (100) pays back after 111 tokens,
    against its bf16 (40) after 667."""
    df = frame([config("reference", "bf16", 1, 40.0, 20.0, 20.0), config("reference", "fp8", 1, 10.0, 20.0, 90.0),
                config("compiled", "fp8", 1, 100.0, 20.0, 9.0),
                {"stage": "build", "runtime": "compiled", "precision": "fp8", "status": "ok", "build_s": 10.0}])
    row = decision_matrix(df).loc["break-even vs reference, batch 1, input 128 (generated tokens)"]
    assert row["compiled fp8"] == "111 (vs reference bf16: 667)"
    assert row["reference bf16"] == "baseline"
