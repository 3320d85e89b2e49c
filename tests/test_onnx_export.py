"""ONNX export of the decoder: the embedded model's graph, names and dynamic axes, its cache, half and int4 exports of a
tiny decoder checked on ONNX Runtime (the runtime itself: tests/runtimes/onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tests.embedded import embedded_fp32_model
from tests.test_decoder import rel_err

from bench_kernels.decoder import Decoder, DecoderArgs, empty_past, position_ids_from_mask
from bench_kernels.models import load_model
from bench_kernels.onnx_export import DATA_FILE, MODEL_FILE, export_decoder, export_model, input_names, output_names
from bench_kernels.quantization import int4_codes, int4_group_size
from bench_kernels.runtimes.onnxruntime.generate import first_step_logits, make_session

MODEL_KEY = "smollm2-135m-instruct-q4_1"


@pytest.fixture
def exported(embedded_fp32_export):
    """The embedded model exported in fp32 to a fresh cache directory (once per run): (record, directory)."""
    return embedded_fp32_export


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


def test_second_export_is_a_cache_hit(exported):
    first, cache_dir = exported
    loaded = embedded_fp32_model()
    again = export_decoder(Decoder.from_hf(loaded.hf_model), f"{loaded.name}-{loaded.weights_id}", "fp32", cache_dir)
    assert again.cache_hit and again.path == first.path
    assert again.build_s == first.build_s and again.artifact_mb == first.artifact_mb
    assert [p.name for p in cache_dir.iterdir()] == [first.path.parent.name], "no temp dirs left behind"


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


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def int4_rounded(decoder: Decoder) -> Decoder:
    """A copy of decoder whose projections hold their int4 round trip (fp32 scales, groups as int4_group_size)."""
    rounded = decoder.cast(torch.float32)
    for name, module in rounded.named_modules():
        if name.rsplit(".", 1)[-1] in PROJECTIONS:
            codes, scales = int4_codes(module.weight, int4_group_size(module.in_features), torch.float32)
            module.weight = torch.nn.Parameter(codes.float() * scales.repeat_interleave(
                module.in_features // scales.shape[1], dim=1), requires_grad=False)
    return rounded


def int4_stored_bytes(decoder: Decoder, scale_bytes: int) -> int:
    """Bytes of the projections as int4 codes plus one scale per group."""
    return sum(m.weight.numel() // 2 + m.weight.numel() // int4_group_size(m.in_features) * scale_bytes
               for name, m in decoder.named_modules() if name.rsplit(".", 1)[-1] in PROJECTIONS)


def test_int4_matmulnbits_export_is_round_to_nearest_on_the_projections(tiny_decoder, tmp_path):
    record = export_decoder(tiny_decoder, "tiny", "int4", tmp_path, dtype="fp32", int4_format="MatMulNBits")
    graph = onnx.load(str(record.path)).graph
    quantized = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(quantized) == 7 * tiny_decoder.args.num_layers
    for node in quantized:
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == int4_group_size(attrs["K"])  # 64 and 128 here
        assert "accuracy_level" not in attrs, "activations stay fp32"
    assert [n.name for n in graph.node if n.op_type == "MatMul" and "lm_head" in n.name] == ["/lm_head/MatMul"]
    assert record.int4_bytes == int4_stored_bytes(tiny_decoder, scale_bytes=4)
    fp32 = export_decoder(tiny_decoder, "tiny", "fp32", tmp_path)
    assert record.artifact_mb < 0.5 * fp32.artifact_mb

    # ONNX Runtime's symmetric round-to-nearest is bench_kernels.quantization's: same codes, same scales
    actual, expected = tiny_prefill(int4_rounded(tiny_decoder), make_session(record.path))
    assert rel_err(torch.from_numpy(actual), torch.from_numpy(expected)) < 1e-5
    _, unrounded = tiny_prefill(tiny_decoder, make_session(fp32.path))
    assert rel_err(torch.from_numpy(actual), torch.from_numpy(unrounded)) > 1e-3, "the int4 rounding shows"


def test_int4_block_dequantize_export_holds_int4_weights(tiny_decoder, tmp_path):
    record = export_decoder(tiny_decoder, "tiny", "int4", tmp_path, dtype="bf16", int4_format="DequantizeLinear")
    model = onnx.load(str(record.path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 21 and model.ir_version >= 10
    initializers = {t.name: t for t in model.graph.initializer}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantize) == 7 * tiny_decoder.args.num_layers
    for node in dequantize:
        weight, scales = initializers[node.input[0]], initializers[node.input[1]]
        k, n = weight.dims
        attrs = {a.name: a.i for a in node.attribute}
        assert weight.data_type == onnx.TensorProto.INT4 and len(weight.raw_data) == k * n // 2
        assert attrs == {"axis": 0, "block_size": int4_group_size(k)}
        assert scales.data_type == onnx.TensorProto.BFLOAT16 and list(scales.dims) == [k // attrs["block_size"], n]
    assert record.int4_bytes == int4_stored_bytes(tiny_decoder, scale_bytes=2)

    # the same layout in fp32 runs on ONNX Runtime: codes, nibble order and block axis give the rounded weights
    fp32 = export_decoder(tiny_decoder, "tiny", "int4", tmp_path, dtype="fp32", int4_format="DequantizeLinear")
    options = ort.SessionOptions()
    # ONNX Runtime fuses DequantizeLinear -> MatMul into MatMulNBits at accuracy level 4 (int8 activations) unless told
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    session = ort.InferenceSession(str(fp32.path), options, providers=["CPUExecutionProvider"])
    actual, expected = tiny_prefill(int4_rounded(tiny_decoder), session)
    assert rel_err(torch.from_numpy(actual), torch.from_numpy(expected)) < 1e-5


def test_int4_exports_never_share_a_cache_entry(tiny_decoder, tmp_path):
    def export(precision, **kwargs):
        return export_decoder(tiny_decoder, "tiny", precision, tmp_path, **kwargs)

    paths = {export("fp32").path, export("int4", dtype="fp32", int4_format="MatMulNBits").path,
             export("int4-awq", dtype="fp32", int4_format="MatMulNBits").path,
             export("int4", dtype="fp32", int4_format="DequantizeLinear").path}
    assert len(paths) == 4
    again = export("int4-awq", dtype="fp32", int4_format="MatMulNBits")
    assert again.cache_hit and again.precision == "int4-awq" and again.int4_format == "MatMulNBits"
    with pytest.raises(ValueError, match="needs a float dtype"):
        export("int4", dtype="fp32")
    with pytest.raises(ValueError, match="without an int4 format"):
        export("fp32", int4_format="MatMulNBits")


def test_int4_export_rounds_the_cached_float_export(tiny_decoder, tmp_path):
    """Started from the cached bf16 export, the int4 graph equals a fresh trace's, and the bf16 entry
    stays as it was."""
    def int4(cache_dir):
        return export_decoder(tiny_decoder, "tiny", "int4", cache_dir, external_data=True, dtype="bf16",
                              int4_format="DequantizeLinear", reuse_float_export=True)

    bf16 = export_decoder(tiny_decoder, "tiny", "bf16", tmp_path / "a", external_data=True)
    bf16_files = {path.name: path.read_bytes() for path in bf16.path.parent.iterdir()}
    reused, fresh = int4(tmp_path / "a"), int4(tmp_path / "b")
    assert reused.float_source == bf16.path.parent.name and fresh.float_source is None
    assert onnx.load(str(reused.path)) == onnx.load(str(fresh.path))
    assert reused.int4_bytes == fresh.int4_bytes and (reused.path.parent / DATA_FILE).exists()
    assert {path.name: path.read_bytes() for path in bf16.path.parent.iterdir()} == bf16_files


def test_random_preset_weights_export(tmp_path, monkeypatch):
    """Random weights export like real ones: drawn without inference mode, so the tracer can take them."""
    monkeypatch.setenv("BENCH_KERNELS_CACHE", str(tmp_path))
    loaded = load_model("preset:smollm2-135m", "bf16", "cpu")
    assert not any(param.is_inference() for param in loaded.hf_model.parameters())
    record = export_model(loaded, "bf16")
    assert not record.cache_hit and record.path.is_relative_to(tmp_path) and record.path.exists()
