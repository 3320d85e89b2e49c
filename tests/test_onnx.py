"""ONNX export of the decoder and greedy generation on ONNX Runtime, against transformers on the embedded model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_decoder import (  # one model load per session; one_torch_thread is an autouse fixture
    MAX_REL_ERR,
    PROMPTS,
    embedded_reference,
    eos_ids,
    one_torch_thread,  # noqa: F401
    rel_err,
)

from bench_kernels.decoder import Decoder, DecoderArgs, empty_past, position_ids_from_mask
from bench_kernels.onnx_export import DATA_FILE, MODEL_FILE, export_decoder, input_names, output_names
from bench_kernels.runtimes.onnxruntime.generate import first_step_logits, make_session, ort_greedy_generate

MODEL_KEY = "smollm2-135m-instruct-q4_1"


@pytest.fixture(scope="module")
def embedded():
    """(transformers model, tokenizer) for the embedded model."""
    return embedded_reference()


@pytest.fixture(scope="module")
def exported(embedded, tmp_path_factory):
    """The embedded model exported in fp32 to a fresh cache directory."""
    cache_dir = tmp_path_factory.mktemp("onnx_cache")
    return export_decoder(Decoder.from_hf(embedded[0]), MODEL_KEY, "fp32", cache_dir), cache_dir


@pytest.fixture(scope="module")
def session(exported):
    """A CPU ONNX Runtime session on the fp32 export."""
    return make_session(exported[0].path, "cpu")


def reference_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[dict, np.ndarray]:
    """Left-padded numpy inputs and transformers' fixed-length greedy tokens [B, max_new_tokens]."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    return {k: v.numpy() for k, v in enc.items()}, out[:, enc.input_ids.shape[1] :].numpy()


def test_export_is_valid_with_named_dynamic_axes(exported):
    record, _ = exported
    assert not record.cache_hit and record.build_s > 0 and record.precision == "fp32"
    assert (record.num_layers, record.num_kv_heads, record.head_dim) == (30, 3, 64)
    assert 500 < record.artifact_mb < 2000  # 135M fp32 weights (+ a transposed copy of the tied embedding)
    onnx.checker.check_model(str(record.path))
    graph = onnx.load(str(record.path), load_external_data=False).graph
    values = [*graph.input, *graph.output]
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
    assert [v.name for v in graph.input] == input_names(30)
    assert [v.name for v in graph.output] == output_names(30)
    assert dims["input_ids"] == dims["position_ids"] == ["batch", "sequence"]
    assert dims["attention_mask"] == ["batch", "total_sequence"]
    assert dims["past_key_values.29.value"] == ["batch", 3, "past_sequence", 64]
    assert dims["present.0.key"] == ["batch", 3, "total_sequence", 64]
    assert dims["logits"] == ["batch", "sequence", 49152]


def test_second_export_is_a_cache_hit(embedded, exported):
    first, cache_dir = exported
    again = export_decoder(Decoder.from_hf(embedded[0]), MODEL_KEY, "fp32", cache_dir)
    assert again.cache_hit and again.path == first.path
    assert again.build_s == first.build_s and again.artifact_mb == first.artifact_mb
    assert [p.name for p in cache_dir.iterdir()] == [first.path.parent.name], "no temp dirs left behind"


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


@pytest.fixture(scope="module")
def tiny_decoder():
    """A 2-layer random-weight decoder (GQA, untied lm_head) for cheap export checks."""
    torch.manual_seed(0)
    args = DecoderArgs(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
    )
    return Decoder(args).eval()


def tiny_prefill(decoder: Decoder, session) -> tuple[np.ndarray, np.ndarray]:
    """ORT and torch prefill logits [B, S, V] (as fp32) at the real tokens of a left-padded batch of 3."""
    input_ids = torch.randint(0, decoder.args.vocab_size, (3, 6), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0
    dtype = decoder.embed_tokens.weight.dtype
    with torch.inference_mode():
        past = empty_past(decoder.args, 3, dtype, "cpu")
        expected, _ = decoder(input_ids, position_ids_from_mask(attention_mask), attention_mask, past)
    actual = first_step_logits(session, input_ids.numpy(), attention_mask.numpy())
    real = attention_mask.bool().numpy()
    return actual[real].astype(np.float32), expected.float().numpy()[real]


def test_external_data_export_runs(tiny_decoder, tmp_path):
    record = export_decoder(tiny_decoder, "tiny", "fp32", tmp_path, external_data=True)
    assert sorted(p.name for p in record.path.parent.iterdir()) == sorted([MODEL_FILE, DATA_FILE, "export.json"])
    assert record.path.stat().st_size < 100_000, "weights must live in the data file"
    onnx.checker.check_model(str(record.path))
    actual, expected = tiny_prefill(tiny_decoder, make_session(record.path))
    assert rel_err(torch.from_numpy(actual), torch.from_numpy(expected)) < 1e-5


def test_half_precision_exports(tiny_decoder, tmp_path):
    fp16 = export_decoder(tiny_decoder, "tiny", "fp16", tmp_path)
    actual, expected = tiny_prefill(tiny_decoder.cast(torch.float16), make_session(fp16.path))
    assert rel_err(torch.from_numpy(actual), torch.from_numpy(expected)) < 5e-3
    assert tiny_decoder.embed_tokens.weight.dtype == torch.float32, "export casts a copy"

    bf16 = export_decoder(tiny_decoder, "tiny", "bf16", tmp_path)  # for TensorRT: ORT's CPU provider lacks bf16 kernels
    onnx.checker.check_model(str(bf16.path))
    fp32 = export_decoder(tiny_decoder, "tiny", "fp32", tmp_path)
    for record, elem_type in ((fp16, onnx.TensorProto.FLOAT16), (bf16, onnx.TensorProto.BFLOAT16)):
        inputs = {v.name: v.type.tensor_type.elem_type for v in onnx.load(str(record.path)).graph.input}
        assert inputs["past_key_values.0.key"] == elem_type and inputs["input_ids"] == onnx.TensorProto.INT64
        assert record.artifact_mb < 0.6 * fp32.artifact_mb


def test_failed_export_leaves_no_cache_entry(tiny_decoder, tmp_path, monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter died")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="exporter died"):
        export_decoder(tiny_decoder, "tiny", "fp32", tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert not export_decoder(tiny_decoder, "tiny", "fp32", tmp_path).cache_hit
