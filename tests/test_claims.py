"""Claims check: limits from the presets and the measured bandwidth, verdicts on constructed and committed rows."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench_kernels.claims import (BELOW_WEIGHTS, BEYOND, CONSISTENT, NOT_MEASURED, NOT_REPRODUCED, TOLERANCE,
                                  VERDICTS, check_claims, claims_section_html, preset_parameter_counts)
from bench_kernels.claims_file import Claim, ClaimsError, load_claims
from bench_kernels.results import COLUMNS, load_results
from bench_kernels.runtimes import runtime_names

SHIPPED = "params/claims/tensorrt-vs-llama-blog.yaml"
H100 = "NVIDIA H100 80GB HBM3"
BANDWIDTH_GBPS = 2900.0


def make_claim(**fields: Any) -> Claim:
    """A throughput claim for compiled fp8, batch 1, Llama-3.1-8B on an H100, with `fields` changed."""
    base: dict[str, Any] = dict(id="c", statement="s", source="src", metric="tokens_per_s", claimed=100.0,
                                model="preset:llama-3.1-8b", runtime="compiled", precision="fp8", gpu="H100",
                                batch_size=1)
    return Claim(**{**base, **fields})


def make_results(tmp_path: Path, *changes: dict[str, Any]) -> pd.DataFrame:
    """A results.csv of compiled fp8 batch-1 H100 inference rows (4 ms per token), each with `changes`, loaded."""
    base = dict(run_name="t", stage="inference", runtime="compiled", runtime_version="torch 2.11.0",
                model="llama-3.1-8b", weights="random", precision="fp8", batch_size=1, input_len=128, output_len=128,
                status="ok", itl_ms_p50=4.0, peak_mem_gb=9.5, copy_gbps=BANDWIDTH_GBPS, gpu_name=H100)
    path = tmp_path / "results.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**base, **change} for change in changes)
    return load_results(path)


def test_parameter_counts_match_the_published_llama_sizes() -> None:
    assert preset_parameter_counts("llama-3.1-8b").total == 8_030_261_248
    assert preset_parameter_counts("llama-3.1-70b").total == 70_553_706_496


def test_8b_fp8_batch1_limit_is_bytes_per_step_over_bandwidth(tmp_path: Path) -> None:
    layers, hidden, intermediate, vocab, heads, kv_heads = 32, 4096, 14336, 128256, 32, 8
    head_dim = hidden // heads
    projection_bytes = layers * (hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate)  # fp8
    lm_head_and_norm_bytes = 2 * (vocab * hidden + (2 * layers + 1) * hidden)  # kept bf16
    embedding_row_bytes = 2 * hidden  # batch 1 gathers one row of the bf16 embedding, not the table
    kv_cache_bytes = 2 * layers * kv_heads * head_dim * (128 + 127 / 2)  # fp8 cache, mean context of 128 steps
    step_bytes = projection_bytes + lm_head_and_norm_bytes + embedding_row_bytes + kv_cache_bytes
    by_hand = BANDWIDTH_GBPS * 1e9 / step_bytes
    assert 355 < by_hand < 365  # ~8 GB read per token at 2.9 TB/s

    checked = check_claims([make_claim(claimed=2400)], make_results(tmp_path, {}))
    assert checked.loc[0, "physical_limit"] == pytest.approx(by_hand, rel=1e-9)
    assert checked.loc[0, "claimed_over_limit"] == pytest.approx(2400 / by_hand, rel=1e-9)
    assert checked.loc[0, "verdict"] == BEYOND
    assert "at least 7 such GPUs" in checked.loc[0, "detail"]


def test_limit_uses_the_best_bandwidth_on_the_claims_gpu_and_scales_with_gpu_count(tmp_path: Path) -> None:
    results = make_results(tmp_path, {"copy_gbps": BANDWIDTH_GBPS / 2}, {},
                           {"gpu_name": "NVIDIA A100-SXM4-80GB", "copy_gbps": 10 * BANDWIDTH_GBPS})
    one, two = check_claims([make_claim(), make_claim(gpu_count=2)], results)["physical_limit"]
    alone = check_claims([make_claim()], make_results(tmp_path, {}))["physical_limit"].iloc[0]
    assert one == pytest.approx(alone)
    assert two == pytest.approx(2 * one)


@pytest.mark.parametrize(("claim", "changes", "verdict", "in_detail"), [
    (make_claim(claimed=2400), {}, BEYOND, "6.6"),
    (make_claim(claimed=240), {}, CONSISTENT, "250 tokens/s (104% of the claim)"),
    (make_claim(claimed=300), {}, NOT_REPRODUCED, "250 tokens/s (83% of the claim)"),
    (make_claim(claimed=300, runtime="tensorrt"), {}, NOT_MEASURED, "nearest: 250 tokens/s"),
    (make_claim(claimed=300, batch_size=8), {}, NOT_MEASURED, "batch 8"),
    (make_claim(claimed=300), {"status": "error", "itl_ms_p50": ""}, NOT_MEASURED, "no decode throughput"),
    (make_claim(claimed=2400, gpu="A100"), {}, NOT_MEASURED, "no rows on a GPU named 'A100'"),
    (make_claim(claimed=240), {"copy_gbps": ""}, CONSISTENT, "recorded no copy bandwidth"),
    (make_claim(metric="memory_gb", claimed=60, model="preset:llama-3.1-70b", batch_size=None), {},
     BELOW_WEIGHTS, "72.7 GB its weights occupy"),
    (make_claim(metric="memory_gb", claimed=10, batch_size=None), {}, CONSISTENT, "9.5 GB"),
    (make_claim(metric="memory_gb", claimed=10, batch_size=None), {"peak_mem_gb": 12}, NOT_REPRODUCED, "12.0 GB"),
    (make_claim(metric="build_min", claimed=8, runtime="tensorrt", runtime_version="TensorRT 10.2", batch_size=None),
     {"stage": "build", "runtime": "tensorrt", "runtime_version": "tensorrt_rtx 1.7.1.116", "build_s": 104},
     NOT_MEASURED, "tensorrt_rtx 1.7.1.116 is not TensorRT 10.2"),
    (make_claim(metric="build_min", claimed=8, runtime="tensorrt", runtime_version="TensorRT 10.2", batch_size=None),
     {"stage": "build", "runtime": "tensorrt", "runtime_version": "TensorRT 10.2.0", "build_s": 400},
     CONSISTENT, "6.7 min"),
    (make_claim(metric="build_min", claimed=8, runtime="tensorrt", runtime_version="TensorRT 10.2", batch_size=None),
     {"stage": "build", "runtime": "tensorrt", "runtime_version": "TensorRT 10.2.0", "build_s": 600},
     NOT_REPRODUCED, "10.0 min"),
])
def test_each_verdict_on_constructed_rows(tmp_path: Path, claim: Claim, changes: dict[str, Any], verdict: str,
                                          in_detail: str) -> None:
    row = check_claims([claim], make_results(tmp_path, changes)).iloc[0]
    assert row["verdict"] == verdict
    assert in_detail in row["detail"]


def test_the_nearest_configuration_prefers_runtime_then_precision_then_batch_then_context(tmp_path: Path) -> None:
    results = make_results(tmp_path, {"runtime": "reference", "itl_ms_p50": 1.0},
                           {"precision": "bf16", "itl_ms_p50": 2.0}, {"batch_size": 8, "itl_ms_p50": 3.0},
                           {"input_len": 2048, "itl_ms_p50": 5.0}, {"input_len": 1024, "itl_ms_p50": 8.0})
    row = check_claims([make_claim(input_len=1800)], results).iloc[0]
    assert row["measured"] == pytest.approx(1e3 / 5.0)
    assert "compiled (torch 2.11.0) fp8, batch 1, 2048 in / 128 out" in row["measured_configuration"]


def test_the_nearest_configuration_matches_gpu_count_and_a_precision_of_the_same_width(tmp_path: Path) -> None:
    results = make_results(tmp_path, {"gpu_count": 2, "itl_ms_p50": 2.0}, {"gpu_count": 1, "itl_ms_p50": 4.0},
                           {"model": "llama-3.1-70b", "precision": "int4", "peak_mem_gb": 40.0},
                           {"model": "llama-3.1-70b", "precision": "bf16", "gpu_count": 2, "peak_mem_gb": 143.6})
    one_card = check_claims([make_claim(claimed=200.0)], results).iloc[0]
    assert one_card["measured"] == pytest.approx(250.0) and one_card["verdict"] == CONSISTENT
    fp16 = make_claim(metric="memory_gb", claimed=142.0, precision="fp16", gpu_count=2,
                      model="preset:llama-3.1-70b", batch_size=None)
    row = check_claims([fp16], results).iloc[0]
    assert row["measured"] == pytest.approx(143.6) and "bf16" in row["measured_configuration"]
    assert row["verdict"] == NOT_MEASURED  # bf16 is as wide as fp16, but not the claim's precision


def test_shipped_70b_claims_against_the_committed_two_h100_run() -> None:
    checked = check_claims(load_claims(SHIPPED), load_results("reports/h100x2-llama3.1-70b/results.csv"))
    checked = checked.set_index("claim")
    fp8 = checked.loc["tensorrt-70b-fp8-batch1-throughput"]
    # Compiled fp8 on one card decodes below the limit its own run's bandwidth sets; the claim is far beyond it.
    assert fp8["measured"] < fp8["physical_limit"] < fp8["claimed"] / 20
    assert fp8["verdict"] == BEYOND and "fp8, batch 1" in fp8["measured_configuration"]
    memory = checked[checked["metric"] == "memory_gb"]
    assert (memory["measured"] >= memory["physical_limit"]).all()  # no run holds less than its weights
    assert "bf16" in checked.loc["tensorrt-70b-fp16-memory", "measured_configuration"]


def test_shipped_claims_get_computed_verdicts_against_the_committed_h100_run() -> None:
    claims = load_claims(SHIPPED)
    results = load_results("reports/h100-llama3.1-8b/results.csv")
    checked = check_claims(claims, results).set_index("claim")
    assert list(checked.index) == [claim.id for claim in claims]
    assert checked["verdict"].isin(VERDICTS).all()
    throughput = checked[checked["metric"] == "tokens_per_s"]
    assert throughput["physical_limit"].notna().all()
    trt_8b = checked.loc["tensorrt-8b-fp8-batch1-throughput"]
    # The run's own bandwidth decides: the claim stands far above the roofline it allows.
    assert trt_8b["claimed"] > trt_8b["physical_limit"] * (1 + TOLERANCE)
    bandwidth_gbps = results[["copy_gbps", "read_gbps"]].max().max()  # the limit takes the faster of the two
    assert trt_8b["physical_limit"] < bandwidth_gbps * 1e9 / 8e9  # at least 8 GB read per token
    assert trt_8b["verdict"] == BEYOND
    assert "compiled" in trt_8b["measured_configuration"] and "fp8, batch 1" in trt_8b["measured_configuration"]
    memory = checked[checked["metric"] == "memory_gb"]
    assert memory["physical_limit"].notna().all() and memory["measured"].isna().all()  # no 70B run
    assert checked.loc[checked["metric"] == "build_min", "physical_limit"].isna().all()


def test_shipped_build_claim_against_the_tensorrt_rtx_run_says_which_builder_ran() -> None:
    checked = check_claims(load_claims(SHIPPED), load_results("reports/h100-llama3.1-8b-trt/results.csv"))
    build = checked.set_index("claim").loc["tensorrt-8b-fp8-build"]
    assert build["verdict"] == NOT_MEASURED
    assert "tensorrt_rtx" in build["measured_configuration"] and "TensorRT 10.2" in build["detail"]
    # This run recorded no copy bandwidth: no throughput limit, and no verdict that needs one.
    throughput = checked[checked["metric"] == "tokens_per_s"]
    assert throughput["physical_limit"].isna().all() and (throughput["verdict"] == NOT_MEASURED).all()


def test_the_section_states_the_rule_and_escapes_every_claim() -> None:
    checked = check_claims(load_claims(SHIPPED), load_results("reports/h100-llama3.1-8b/results.csv"))
    section = claims_section_html(checked)
    assert f"{TOLERANCE:.0%} above its limit" in section and "streaming bandwidth" in section
    assert section.count("<tr>") == len(checked) + 1
    assert "Llama &quot;8B&quot; FP8, batch 1: 2,400 tokens/s" in section
    assert "No claims to check" in claims_section_html(checked.iloc[0:0])


VALID_FILE = """\
sources:
  article: An article
claims:
  - id: one
    statement: 2,400 tokens/s
    source: article
    metric: tokens_per_s
    claimed: 2400
    model: preset:llama-3.1-8b
    runtime: tensorrt
    precision: fp8
    batch_size: 1
    gpu: H100
"""


@pytest.mark.parametrize(("old", "new", "message"), [
    ("    batch_size: 1\n", "    batch: 1\n", "unknown key 'batch'"),
    ("    precision: fp8\n", "", "missing key 'precision'"),
    ("    batch_size: 1\n", "", "missing key 'batch_size'"),
    ("metric: tokens_per_s", "metric: tokens", "key 'metric' is 'tokens'; allowed: tokens_per_s, build_min"),
    ("claimed: 2400", "claimed: 2,400", "key 'claimed' must be a positive number in tokens/s"),
    ("model: preset:llama-3.1-8b", "model: hub:meta-llama/Llama-3.1-8B", "key 'model'"),
    ("source: article", "source: blog", "key 'source' is 'blog'; allowed: article"),
    ("precision: fp8", "precision: fp4", "key 'precision' is 'fp4'"),
    ("runtime: tensorrt", "runtime: vllm", "key 'runtime' is 'vllm'"),
    ("batch_size: 1", "batch_size: 0", "key 'batch_size' must be a positive integer"),
    ("metric: tokens_per_s", "metric: memory_gb", "key 'batch_size' means nothing for metric 'memory_gb'"),
    ("claims:", "claim:", "unknown key 'claim'"),
    ("sources:\n  article: An article\n", "", "key 'sources'"),
    ("    gpu: H100\n", "    gpu: H100\n  - id: one\n", "missing key"),
])
def test_malformed_claims_files_name_the_bad_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in VALID_FILE
    path = tmp_path / "claims.yaml"
    path.write_text(VALID_FILE.replace(old, new, 1))
    with pytest.raises(ClaimsError, match="claims file .*claims.yaml") as caught:
        load_claims(path, runtime_names())  # the names the spec's check allows: the registry's
    assert message in str(caught.value)


def test_a_valid_file_loads_and_a_repeated_id_does_not(tmp_path: Path) -> None:
    path = tmp_path / "claims.yaml"
    path.write_text(VALID_FILE)
    (claim,) = load_claims(path)
    assert (claim.claimed, claim.batch_size, claim.input_len, claim.source) == (2400.0, 1, 128, "An article")
    path.write_text(VALID_FILE + VALID_FILE.split("claims:\n", 1)[1])
    with pytest.raises(ClaimsError, match="key 'id' repeated: one"):
        load_claims(path)
    path.write_text("claims: [")
    with pytest.raises(ClaimsError, match="not valid YAML"):
        load_claims(path)


def test_the_sweeps_memory_estimate_counts_the_same_parameters() -> None:
    from bench_kernels.models import estimated_memory_bytes, resolve_model_config

    config = resolve_model_config("preset:llama-3.1-8b")
    assert estimated_memory_bytes(config, "bf16", batch_size=1, total_len=0) == 2 * 8_030_261_248
