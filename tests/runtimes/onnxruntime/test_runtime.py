"""Greedy generation on ONNX Runtime against transformers on the embedded model: prefill logits, 32 greedy tokens,
dynamic batch sizes; int4 and int4-awq through the runtime with their perplexity and stored bytes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from bench_kernels.decoder import position_ids_from_mask
from bench_kernels.quality import perplexity
from bench_kernels.runtimes.onnxruntime.generate import first_step_logits, make_session, ort_greedy_generate
from bench_kernels.runtimes.onnxruntime.runtime import OnnxRuntimeRuntime
from bench_kernels.timing import StepTimer
from bench_kernels.workload import packaged_text, perplexity_windows, text_token_ids
from tests.test_decoder import (
    MAX_REL_ERR,
    PROMPTS,
    embedded_reference,
    eos_ids,
    assert_runs_like_the_reference,
    compare_with_reference,
    rel_err,
    tiny_loaded,
)


@pytest.fixture(scope="module")
def embedded():
    """(transformers model, tokenizer) for the embedded model."""
    return embedded_reference()


@pytest.fixture(scope="module")
def session(embedded_fp32_export):
    """A CPU ONNX Runtime session on the embedded model's fp32 export."""
    return make_session(embedded_fp32_export[0].path, "cpu")


def reference_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[dict, np.ndarray]:
    """Left-padded numpy inputs and transformers' fixed-length greedy tokens [B, max_new_tokens]."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    return {k: v.numpy() for k, v in enc.items()}, out[:, enc.input_ids.shape[1] :].numpy()


def test_ort_prefill_logits_match_transformers(embedded, session):
    model, tokenizer = embedded
    enc = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref = model(**enc, position_ids=position_ids_from_mask(enc.attention_mask)).logits.numpy()
    logits = first_step_logits(session, enc.input_ids.numpy(), enc.attention_mask.numpy())
    real = enc.attention_mask.bool().numpy()
    assert logits.shape == ref.shape
    assert rel_err(torch.from_numpy(logits[real]), torch.from_numpy(ref[real])) < MAX_REL_ERR


def test_ort_greedy_32_tokens_identical_to_transformers(embedded, session):
    model, tokenizer = embedded
    inputs, ref = reference_generate(model, tokenizer, PROMPTS[:2], 32)
    assert (inputs["attention_mask"] == 0).any(), "the batch must exercise left padding"
    calls = []
    tokens = ort_greedy_generate(
        session, inputs["input_ids"], inputs["attention_mask"], 32, lambda: calls.append(1), eos_ids(model)
    )
    assert len(calls) == 32
    np.testing.assert_array_equal(tokens, ref)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ort_dynamic_batch_sizes(embedded, session, batch_size):
    model, tokenizer = embedded
    inputs, ref = reference_generate(model, tokenizer, PROMPTS[2 : 2 + batch_size], 8)
    tokens = ort_greedy_generate(session, inputs["input_ids"], inputs["attention_mask"], 8, None, eos_ids(model))
    np.testing.assert_array_equal(tokens, ref)


def test_ort_int4_and_int4_awq_on_the_embedded_model():
    """Real weights: int4 costs perplexity, AWQ wins some of it back, greedy decoding still answers; the stored
    weights are a third of fp32's."""
    cpu = torch.device("cpu")
    prompt = None
    results = {}
    for precision in ("fp32", "int4", "int4-awq"):
        loaded = OnnxRuntimeRuntime.load("embedded", precision, cpu, 0, None)
        runtime = OnnxRuntimeRuntime(loaded, precision, cpu)
        runtime.prepare([1], [8], 4)
        # the first two of the quality stage's windows: enough to order the three
        windows = perplexity_windows(text_token_ids(loaded.tokenizer, packaged_text()),
                                     loaded.config.max_position_embeddings)[:2]
        value, _ = perplexity(runtime.sequence_logits, windows)
        prompt = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
        tokens = runtime.generate(prompt, 4, StepTimer(cpu))
        graph = onnx.load(str(runtime.export.path), load_external_data=False).graph
        matmul_nbits = sum(n.op_type == "MatMulNBits" for n in graph.node)
        results[precision] = (value, tokens, runtime.weight_bytes(), runtime.export.artifact_mb, matmul_nbits)
        runtime.close()
    fp32, int4, awq = results["fp32"], results["int4"], results["int4-awq"]
    assert fp32[4] == 0 and int4[4] == awq[4] == 7 * 30
    assert fp32[0] < awq[0] < int4[0] < 1.35 * fp32[0]
    for result in (int4, awq):
        assert result[1].shape == (1, 4) and result[1][0, 0] == fp32[1][0, 0]  # " Paris"
        assert result[2] < 0.35 * fp32[2] and result[3] < 0.5 * fp32[3]


@pytest.mark.parametrize("family", ["phi3", "qwen3"])
def test_ort_runs_phi3_and_qwen3_like_the_reference(family, tmp_path, monkeypatch):
    """The ONNX Runtime runtime on a tiny random Phi-3 (fused projections, LongRoPE past its original context) and
    Qwen3 (q/k norms): the reference's greedy tokens, logits and perplexity."""
    monkeypatch.setenv("BENCH_KERNELS_CACHE", str(tmp_path))
    loaded = tiny_loaded(family)
    assert_runs_like_the_reference(compare_with_reference(loaded, OnnxRuntimeRuntime(loaded, "fp32",
                                                                                      torch.device("cpu"))))
