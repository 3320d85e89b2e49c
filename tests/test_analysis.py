"""Aggregation: break-even arithmetic, speedups, and the decision matrix's values, reasons and winners."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench_kernels.analysis import break_even_tokens, speedup_table, unmeasured_summary
from bench_kernels.decision import MATRIX_NOTES, WINNER_MARK, decision_matrix
from bench_kernels.results import typed_frame as frame


def inference(runtime: str, batch: int, tps: float, **extra: object) -> dict:
    return {"stage": "inference", "runtime": runtime, "precision": "fp32", "batch_size": batch, "input_len": 16,
            "status": "ok", "tokens_per_s": tps, "latency_ms_p99": 1000 / tps, "ttft_ms_p50": 10.0,
            "itl_ms_p50": 5.0, "peak_mem_gb": 1.0, **extra}


def test_break_even_tokens() -> None:
    # 10 s build; 100 vs 200 tokens/s saves 5 ms per token: 2000 tokens to pay back
    assert break_even_tokens(10.0, 200.0, 100.0) == pytest.approx(2000.0)
    assert math.isinf(break_even_tokens(10.0, 100.0, 200.0))


def test_decision_matrix_values_reasons_and_winners() -> None:
    df = frame([
        {"stage": "build", "runtime": "reference", "precision": "fp32", "status": "skipped", "build_s": 0.0},
        {"stage": "build", "runtime": "onnxruntime", "precision": "fp32", "status": "ok", "build_s": 10.0},
        {"stage": "build", "runtime": "tensorrt", "precision": "fp32", "status": "ok", "build_s": 30.0},
        inference("reference", 1, 100.0), inference("reference", 4, 300.0),
        inference("onnxruntime", 1, 150.0, token_agreement=1.0, max_logit_diff=1e-5),
        inference("onnxruntime", 4, 600.0, token_agreement=1.0, max_logit_diff=2e-5),
        {"stage": "inference", "runtime": "tensorrt", "precision": "fp32", "batch_size": 1, "input_len": 16,
         "status": "unavailable", "error": "no CUDA GPU"},
        {"stage": "inference", "runtime": "tensorrt", "precision": "fp32", "batch_size": 4, "input_len": 16,
         "status": "unavailable", "error": "no CUDA GPU"},
    ])
    matrix = decision_matrix(df)
    assert list(matrix.columns) == ["reference", "onnxruntime", "tensorrt", "winner"]
    row = matrix.loc["throughput, batch 4, input 16 (tokens/s)"]
    assert row["onnxruntime"] == WINNER_MARK + "600.0" and row["reference"] == "300.0"
    assert row["tensorrt"] == "not measured: unavailable (note 1)" and row["winner"] == "onnxruntime"
    reason, cells = matrix.attrs[MATRIX_NOTES][1]
    assert reason == "no CUDA GPU" and cells == (matrix == "not measured: unavailable (note 1)").sum().sum()
    # break-even at batch 4: 10 s / (1/300 - 1/600) s per token = 6000 tokens
    assert matrix.loc["break-even vs reference, batch 4, input 16 (generated tokens)", "onnxruntime"].endswith("6,000")
    assert matrix.loc["build / export / compile time (s)", "winner"] == "reference"
    assert "not measured" in matrix.loc["quality: token agreement with reference, batch 1, input 16", "tensorrt"]
    assert speedup_table(df, "onnxruntime")["speedup"].tolist() == [1.5, 2.0]
    missing = unmeasured_summary(df)
    assert missing.iloc[0]["runtime"] == "tensorrt" and missing.iloc[0]["rows"] == 2


def test_not_yet_run_counts_only_the_precisions_each_runtime_runs() -> None:
    from bench_kernels.analysis import not_yet_run
    rows = pd.DataFrame([{"stage": "inference", "runtime": "reference", "precision": "bf16", "gpu_count": 1,
                          "batch_size": 1, "input_len": 128}])
    pending = not_yet_run(rows, {"reference": ["bf16"], "compiled": ["bf16", "fp8"]}, [1, 8], [128])
    assert pending.fillna(0).to_dict("records") == [
        {"runtime": "reference", "precision": "bf16", "gpu_count": 1, "missing": 1, "shapes": 2,
         "build_missing": False},
        {"runtime": "compiled", "precision": "bf16", "gpu_count": 0, "missing": 2, "shapes": 2, "build_missing": False},
        {"runtime": "compiled", "precision": "fp8", "gpu_count": 0, "missing": 2, "shapes": 2, "build_missing": False}]


def test_not_yet_run_expects_every_precision_at_each_gpu_count_the_runtime_ran() -> None:
    """Tensor parallel [2, 1]: fp8 complete on one GPU does not hide fp8's missing shapes on two."""
    from bench_kernels.analysis import not_yet_run
    rows = pd.DataFrame([{"stage": "inference", "runtime": "compiled", "precision": p, "gpu_count": g,
                          "batch_size": b, "input_len": 128}
                         for p, g, b in (("fp8", 1, 1), ("fp8", 1, 8), ("fp8", 2, 1), ("bf16", 2, 1), ("bf16", 2, 8))])
    pending = not_yet_run(rows, {"compiled": ["bf16", "fp8"]}, [1, 8], [128])
    assert pending.to_dict("records") == [
        {"runtime": "compiled", "precision": "bf16", "gpu_count": 1, "missing": 2, "shapes": 2, "build_missing": False},
        {"runtime": "compiled", "precision": "fp8", "gpu_count": 2, "missing": 1, "shapes": 2, "build_missing": False}]


def test_not_yet_run_expects_a_build_in_every_precision_once_the_runtime_has_one() -> None:
    """Engines built in bf16 but not yet in int4, their inference rows already `unavailable`: the build is pending."""
    from bench_kernels.analysis import not_yet_run
    from bench_kernels.report import pending_work
    rows = pd.DataFrame([{"stage": "build", "runtime": "tensorrt", "precision": "bf16", "gpu_count": 1,
                          "batch_size": None, "input_len": None}]
                        + [{"stage": "inference", "runtime": "tensorrt", "precision": p, "gpu_count": 1,
                            "batch_size": 1, "input_len": 128} for p in ("bf16", "int4")])
    pending = not_yet_run(rows, {"tensorrt": ["bf16", "int4"]}, [1], [128])
    assert pending.to_dict("records") == [
        {"runtime": "tensorrt", "precision": "int4", "gpu_count": 1, "missing": 0, "shapes": 1, "build_missing": True}]
    assert pending_work(pending.iloc[0]) == "the build"
    # No build anywhere: none expected.
    assert not_yet_run(rows.iloc[1:], {"tensorrt": ["bf16", "int4"]}, [1], [128]).empty
