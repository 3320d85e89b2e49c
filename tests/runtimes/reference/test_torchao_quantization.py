"""The reference's torchao precisions on the CPU: fp8 and int8 run (or are unavailable with torchao's reason),
int4 and int4-awq are unavailable with torchao's own reason; stored bytes and perplexity of the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench_kernels.config import parse_config
from bench_kernels.timing import StepTimer
from bench_kernels.models import weight_bytes
from bench_kernels.quality import perplexity
from bench_kernels.runtimes.reference import ReferenceRuntime
from bench_kernels.runtimes.reference.runtime import ReferenceOptions
from bench_kernels.runtimes.reference.torchao_quantization import is_quantized, torchao_config
from bench_kernels.sweep import run_sweeps
from bench_kernels.workload import packaged_text, perplexity_windows, text_token_ids

CPU = torch.device("cpu")


def torchao_error_on_cpu(precision: str) -> str | None:
    """The first line of what torchao raises quantizing and running a bf16 layer on the CPU, None if nothing."""
    from torchao.quantization import quantize_

    layer = torch.nn.Linear(256, 256, bias=False).to(torch.bfloat16)
    try:
        quantize_(layer, torchao_config(precision))
        layer(torch.randn(1, 256, dtype=torch.bfloat16))
    except Exception as err:  # noqa: BLE001 - the message is what the test compares
        return str(err).splitlines()[0]
    return None


def test_sweep_rows_say_what_torchao_did(tiny_local_model: Path, tmp_path: Path) -> None:
    cfg = parse_config({"run_name": "torchao", "model": f"local:{tiny_local_model}", "runtimes": ["reference"],
                        "precisions": ["bf16", "fp8", "int8", "int4", "int4-awq"], "batch_sizes": [1],
                        "input_lens": [8], "output_len": 2, "warmup": 0, "repeats": 1, "device": "cpu",
                        "reports_dir": str(tmp_path)})
    df = run_sweeps(cfg)
    assert set(df["runtime_version"]) == {ReferenceRuntime.version(CPU)}
    assert "torchao 0.18" in ReferenceRuntime.version(CPU)
    for precision in ("fp8", "int8", "int4", "int4-awq"):
        rows = df[df["precision"] == precision].set_index("stage")
        error = torchao_error_on_cpu(precision)
        if error is None:
            assert rows.loc["inference", "status"] == "ok" and rows.loc["inference", "tokens_per_s"] > 0
            # Random weights of a tiny model: perplexity near the vocabulary size; quantization moves it little.
            assert rows.loc["quality", "status"] == "ok" and abs(rows.loc["quality", "ppl_delta_pct"]) < 5
        else:
            assert (rows["status"] == "unavailable").all()
            assert rows["error"].str.contains(error, regex=False).all(), (error, rows["error"].tolist())
    # torch's int4 tinygemm packing (tile_packed_to_4d) is a CUDA kernel: never on the CPU.
    assert torchao_error_on_cpu("int4") is not None


@pytest.fixture(scope="module")
def embedded_bf16() -> ReferenceRuntime:
    loaded = ReferenceRuntime.load("embedded", "bf16", CPU, 0, ReferenceOptions())
    return ReferenceRuntime(loaded, "bf16", CPU)


def short_window_perplexity(runtime: ReferenceRuntime) -> float:
    """Perplexity through the runtime's sequence_logits over one 128-token window of the packaged text."""
    ids = text_token_ids(runtime.loaded.tokenizer, packaged_text())
    return perplexity(runtime.sequence_logits, perplexity_windows(ids, 128)[:1])[0]


@pytest.mark.parametrize(("precision", "max_ppl_delta_pct"), [("int8", 3.0), ("fp8", 6.0)])
def test_embedded_model_quantized_by_torchao(embedded_bf16: ReferenceRuntime, precision: str,
                                             max_ppl_delta_pct: float) -> None:
    reason = ReferenceRuntime.unavailable_reason(CPU, precision)
    if reason is not None:
        assert reason.startswith(f"torchao {precision} on cpu: ")
        return
    loaded = ReferenceRuntime.load("embedded", precision, CPU, 0, ReferenceOptions())
    runtime = ReferenceRuntime(loaded, precision, CPU)
    model = loaded.hf_model
    projections = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert all(is_quantized(m.weight) for m in projections)
    assert not is_quantized(model.lm_head.weight) and not is_quantized(model.model.embed_tokens.weight)
    # One byte per projection weight plus per-channel scales (and int8 zero points): at most 2% more.
    projection_params = sum(m.weight.numel() for m in projections)
    unquantized_bytes = weight_bytes(embedded_bf16.loaded.hf_model) - 2 * projection_params
    assert projection_params <= runtime.weight_bytes() - unquantized_bytes <= 1.02 * projection_params
    assert runtime.kv_element_size() == 2

    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert runtime.generate(ids, 2, StepTimer(CPU)).shape == (1, 2)
    baseline = short_window_perplexity(embedded_bf16)
    delta_pct = 100 * (short_window_perplexity(runtime) / baseline - 1)
    assert abs(delta_pct) < max_ppl_delta_pct, (precision, delta_pct)
