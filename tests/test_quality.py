"""Quality: the perplexity arithmetic and window rule, first divergence, the quality stage's rows and resume,
and the accuracy gate's effect on the decision matrix."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench_kernels.decision import GATE_MARK, WINNER_MARK, decision_matrix
from bench_kernels.config import ConfigError, parse_config
from bench_kernels.report import ReportSpec, method_notes
from bench_kernels.quality import first_divergence_p50, perplexity, ppl_delta_pct, window_nll
from bench_kernels.results import ResultsStore, typed_frame
from bench_kernels.runtimes.compiled.fp8_rounding import fp8_round_trip_
from bench_kernels.sweep import run_sweeps
from bench_kernels.workload import perplexity_windows


def test_nll_and_perplexity_of_a_case_worked_by_hand() -> None:
    # Vocabulary of 2. Position 0 predicts token 1 with logits (0, ln 3): p = 3/4. Position 1 predicts token 0
    # with logits (0, 0): p = 1/2. The last position predicts nothing (it has no next token).
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [5.0, -5.0]]])
    ids = torch.tensor([[0, 1, 0]])
    nll, tokens = window_nll(logits, ids)
    assert tokens == 2 and nll == pytest.approx(-math.log(3 / 4) - math.log(1 / 2))
    value, counted = perplexity(lambda window: logits, ids)
    assert counted == 2 and value == pytest.approx(math.sqrt(1 / (3 / 4 * 1 / 2)))
    assert ppl_delta_pct(10.1, 10.0) == pytest.approx(1.0)


def test_window_rule() -> None:
    text = list(range(4464))
    windows = perplexity_windows(text, max_positions=8192)
    assert windows.shape == (8, 512) and windows[1, 0].item() == 512 and windows[-1, -1].item() == 4095
    assert perplexity_windows(text, max_positions=256).shape == (8, 256)  # never longer than the context
    assert perplexity_windows(list(range(1600)), max_positions=8192).shape == (3, 512)  # a short text
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity_windows(list(range(100)), max_positions=8192)


def test_first_divergence_is_the_median_first_differing_position() -> None:
    reference = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    tokens = torch.tensor([[1, 9, 3, 4], [1, 2, 3, 9], [1, 2, 3, 4]])  # first differences at 1, 3, never (4)
    assert first_divergence_p50(reference, tokens) == 3.0
    assert first_divergence_p50(reference[:2], tokens[:2]) == 2.0  # even count: the mean of the middle two


def test_fp8_round_trip_rounds_projections_and_keeps_the_head(tiny_local_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_local_model, dtype=torch.float32)
    before = {name: p.clone() for name, p in model.named_parameters()}
    assert fp8_round_trip_(model) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    after = dict(model.named_parameters())
    assert torch.equal(after["lm_head.weight"], before["lm_head.weight"])
    w, w0 = after["model.layers.0.mlp.down_proj.weight"], before["model.layers.0.mlp.down_proj.weight"]
    relative = ((w - w0).abs().amax(dim=1) / w0.abs().amax(dim=1))
    assert 0 < relative.max() <= 2**-4  # e4m3 keeps 3 mantissa bits: at most half a step of 1/8


def test_quality_stage_rows_match_the_reference_and_resume(tiny_local_model: Path, tmp_path: Path) -> None:
    cfg = parse_config({"run_name": "quality", "model": f"local:{tiny_local_model}",
                        "runtimes": ["onnxruntime", "reference"], "precisions": ["fp32"], "batch_sizes": [2],
                        "input_lens": [8], "output_len": 3, "warmup": 0, "repeats": 1, "device": "cpu",
                        "reports_dir": str(tmp_path), "perplexity_windows": 3})
    first_lines: list[str] = []
    df = run_sweeps(cfg, progress=first_lines.append)  # the reference runs first, whatever the order asked for
    assert first_lines[0].startswith("reference fp32")
    # Not a terminal: the result lines on their own, no bar among them (tqdm draws it only on a terminal).
    assert first_lines[-2].startswith("onnxruntime fp32 batch 2") and not any("sweep:" in line for line in first_lines)
    quality = df[df["stage"] == "quality"].set_index("runtime")
    assert list(quality["status"]) == ["ok", "ok"]
    reference, onnx = quality.loc["reference"], quality.loc["onnxruntime"]
    assert reference["ppl_delta_pct"] == 0.0 and abs(onnx["ppl_delta_pct"]) < 0.1
    assert 1000 < reference["perplexity"] < 1e6  # random-initialised weights over a 49,152-token vocabulary
    assert "3 windows of 512 tokens" in onnx["notes"] and "1533 predictions" in onnx["notes"]
    method = method_notes(ReportSpec.of(cfg), df)
    assert "(<code>perplexity_windows</code>; here 3 windows of 512 tokens, 1,533 predictions)" in method
    with pytest.raises(ConfigError, match="perplexity_windows: Input should be less than or equal to 8"):
        parse_config({**cfg.model_dump(), "perplexity_windows": 9})
    inference = df[(df["stage"] == "inference") & (df["runtime"] == "onnxruntime")].iloc[0]
    assert inference["token_agreement"] == 1.0 and inference["first_divergence_p50"] == 3.0

    store = ResultsStore(cfg.run_dir)
    stamps = {r["runtime"]: r["timestamp"] for r in store.rows() if r["stage"] == "quality"}
    lines: list[str] = []
    again = run_sweeps(cfg, progress=lines.append)
    assert {r["runtime"]: r["timestamp"] for r in store.rows() if r["stage"] == "quality"} == stamps
    assert "onnxruntime fp32: 1 of 1 shapes already done; perplexity done" in lines
    assert len(again) == len(df)


def test_presets_get_no_perplexity(tmp_path: Path) -> None:
    cfg = parse_config({"run_name": "random", "model": "preset:smollm2-135m", "runtimes": ["reference"],
                        "batch_sizes": [1], "input_lens": [8], "output_len": 2, "warmup": 0, "repeats": 1,
                        "device": "cpu", "reports_dir": str(tmp_path)})
    df = run_sweeps(cfg)
    assert "quality" not in set(df["stage"]) and (df["weights"] == "random").all()


def frame(rows: list[dict]) -> pd.DataFrame:
    base = {"weights": "real", "output_len": 4, "status": "ok", "runtime_precisions": "fp32 fp16 bf16 fp8"}
    return typed_frame({**base, **r} for r in rows)


def test_a_configuration_over_the_gate_is_marked_and_never_starred() -> None:
    def measured(runtime: str, precision: str, tps: float) -> dict:
        return {"stage": "inference", "runtime": runtime, "precision": precision, "batch_size": 1, "input_len": 8,
                "tokens_per_s": tps, "itl_ms_p50": 1000 / tps}

    df = frame([measured("reference", "bf16", 100.0), measured("compiled", "bf16", 160.0),
                measured("compiled", "fp8", 240.0),
                {"stage": "quality", "runtime": "reference", "precision": "bf16", "perplexity": 10.0,
                 "ppl_delta_pct": 0.0},
                {"stage": "quality", "runtime": "compiled", "precision": "bf16", "perplexity": 10.01,
                 "ppl_delta_pct": 0.1},
                {"stage": "quality", "runtime": "compiled", "precision": "fp8", "perplexity": 10.4,
                 "ppl_delta_pct": 4.0}])
    ungated = decision_matrix(df)
    throughput = ungated.index[0]
    assert ungated.loc[throughput, "compiled fp8"] == WINNER_MARK + "240.0"
    gated = decision_matrix(df, max_ppl_delta_pct=1.0)
    failing = "compiled fp8" + GATE_MARK
    assert gated.loc[throughput, failing] == "240.0" and gated.loc[throughput, "winner"] == "compiled bf16"
    assert gated.loc[throughput, "compiled bf16"] == WINNER_MARK + "160.0"
    gate_row = gated.loc[gated.index.str.startswith("accuracy gate")].iloc[0]
    assert gate_row[failing] == "FAIL (+4.00%)" and gate_row["compiled bf16"] == "pass (+0.10%)"
    assert gated.loc["quality: perplexity on the packaged text", "compiled bf16"] == "10.010 (+0.10% vs reference)"
