"""TensorRT engines: real builds with the installed TensorRT (tensorrt_rtx builds on a CPU), the engine
cache, shape profiles, clean errors without a GPU, and mypy."""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
import typing
import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn

from bench_kernels.decoder import Decoder, DecoderArgs
from bench_kernels.onnx_export import export_decoder
from bench_kernels.paths import cache_dir
from bench_kernels.runtimes.tensorrt.build import (attach_timing_cache, build_engine, default_target, onnx_files,
                                                   save_timing_cache)
from bench_kernels.runtimes.tensorrt.deserialize import deserialize_engine
from bench_kernels.runtimes.tensorrt.library import (CapturedErrors, EngineBuildError, TensorRTRuntimeError,
                                                     TensorRTUnavailable, TrtModule, import_tensorrt, rtx_runs_on,
                                                     trt_logger)
from bench_kernels.runtimes.tensorrt.profiles import ShapeOutsideProfiles, ShapeProfile, profile_for, profiles_for_sweep
from bench_kernels.runtimes.tensorrt.runner import KERNEL_SPECIALIZATIONS, TrtDecoderRunner, runtime_unavailable_reason

ROOT = Path(__file__).resolve().parents[3]
VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, MAX_POSITIONS = 64, 32, 4, 2, 8, 2, 64
PROFILES = profiles_for_sweep(batch_sizes=[1, 2], input_lens=[4, 8], output_len=6)
GPU = torch.cuda.is_available()


class TinyLayer(nn.Module):
    """Causal attention over past + new keys (GQA by repeat_interleave), then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False)
        self.k = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.v = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.o = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 2 * HIDDEN), nn.SiLU(), nn.Linear(2 * HIDDEN, HIDDEN))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, past_k: torch.Tensor,
                past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, HEADS, HEAD_DIM).transpose(1, 2)  # [B, H, S, Dh]
        k = torch.cat([past_k, self.k(x).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)], dim=2)  # [B, KVH, T, Dh]
        v = torch.cat([past_v, self.v(x).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)], dim=2)
        rep = HEADS // KV_HEADS
        scores = q @ k.repeat_interleave(rep, dim=1).transpose(2, 3) / HEAD_DIM ** 0.5  # [B, H, S, T]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        attn = (scores.softmax(-1) @ v.repeat_interleave(rep, dim=1)).transpose(1, 2).reshape(b, s, -1)
        x = x + self.o(attn)
        return x + self.mlp(x), k, v


class TinyDecoder(nn.Module):
    """The ONNX decoder contract in miniature: ids, positions, mask and past KV in; logits and present out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.positions = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.layers = nn.ModuleList(TinyLayer() for _ in range(LAYERS))
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s, t = input_ids.shape[1], attention_mask.shape[1]
        causal = torch.arange(t)[None, :] <= (torch.arange(s) + (t - s))[:, None]  # [S, T], past offset t - s
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # [B, 1, S, T]
        x = self.embed(input_ids) + self.positions(position_ids)
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, allowed, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        return (self.head(x), *presents)


PAST_NAMES = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
PRESENT_NAMES = [n.replace("past_key_values.", "present.") for n in PAST_NAMES]


def export_tiny(path: Path, external_data: bool = False) -> TinyDecoder:
    """Export the tiny decoder with dynamic batch / sequence / past axes, opset 17, TorchScript exporter."""
    torch.manual_seed(0)
    model = TinyDecoder().eval()
    b, s, p = 2, 3, 4
    args = (torch.randint(0, VOCAB, (b, s)), torch.arange(p, p + s).expand(b, s),
            torch.ones(b, p + s, dtype=torch.long), *[torch.randn(b, KV_HEADS, p, HEAD_DIM) for _ in PAST_NAMES])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total_sequence"}, "logits": {0: "batch", 1: "sequence"}}
    axes |= {n: {0: "batch", 2: "past_sequence"} for n in PAST_NAMES}
    axes |= {n: {0: "batch", 2: "total_sequence"} for n in PRESENT_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, args, str(path), input_names=["input_ids", "position_ids", "attention_mask",
                          *PAST_NAMES], output_names=["logits", *PRESENT_NAMES], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    if external_data:
        onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location=path.name + ".data",
                        size_threshold=0)
    return model


@pytest.fixture(scope="module")
def tensorrt() -> TrtModule:
    """The installed TensorRT; skips (with the import errors) only outside CI, fails in CI."""
    try:
        return import_tensorrt()
    except TensorRTUnavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have TensorRT (pip install tensorrt-rtx==1.7.1.116): {err.reason}")
        print(f"skipping TensorRT builds: {err.reason}", file=sys.__stderr__)
        pytest.skip(err.reason)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyDecoder]:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return path, export_tiny(path)


def _stored_checksum_ok(engine: Path) -> bool:
    stored = engine.with_name(engine.name + ".sha256").read_text().strip()
    return stored == hashlib.sha256(engine.read_bytes()).hexdigest()


# --- without TensorRT -----------------------------------------------------------------------------


def test_import_tensorrt_reports_every_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    stub_only = types.ModuleType("tensorrt")  # what `import tensorrt` gives when only tensorrt-stubs is installed
    monkeypatch.setitem(sys.modules, "tensorrt", stub_only)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    import_tensorrt.cache_clear()
    try:
        with pytest.raises(TensorRTUnavailable) as caught:
            import_tensorrt()
    finally:
        import_tensorrt.cache_clear()
    assert "import tensorrt: only an empty namespace package" in caught.value.reason
    assert "import tensorrt_rtx: ModuleNotFoundError" in caught.value.reason


def test_profiles_for_sweep_cover_every_step_of_the_sweep() -> None:
    batch_sizes, input_lens, output_len = [1, 4, 8], [16, 128], 32
    prefill, decode = profiles_for_sweep(batch_sizes, input_lens, output_len)
    assert prefill == ShapeProfile(batch=(1, 8, 8), sequence=(16, 128, 128), past=(0, 0, 0))
    assert decode.sequence == (1, 1, 1) and decode.past[0] == 16 and decode.past[2] == 128 + 32 - 2
    for b in batch_sizes:
        for s in input_lens:
            assert profile_for([prefill, decode], b, s, 0) == 0
            assert all(profile_for([prefill, decode], b, 1, s + t - 1) == 1 for t in range(1, output_len))
    assert profiles_for_sweep([2], [8], 1) == [prefill.__class__((2, 2, 2), (8, 8, 8), (0, 0, 0))]
    with pytest.raises(ValueError):
        profiles_for_sweep([], [8], 4)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile((4, 2, 8), (1, 1, 1), (0, 0, 0))


def test_shape_outside_profiles_names_the_shape_and_the_built_ranges() -> None:
    assert profile_for(PROFILES, 3, 1, 9) is None  # batch 3 > 2
    assert profile_for(PROFILES, 2, 1, 50) is None  # past beyond input 8 + output 6 - 2
    assert profile_for(PROFILES, 2, 1, 12) == 1
    message = str(ShapeOutsideProfiles(2, 1, 50, PROFILES))
    assert "batch=2, sequence=1, past=50" in message
    assert "#0: batch 1..2 (opt 2), sequence 4..8 (opt 8), past 0..0 (opt 0)" in message
    assert "#1: batch 1..2 (opt 2), sequence 1..1 (opt 1), past 4..12 (opt 8)" in message


def test_unavailable_reasons_and_targets() -> None:
    if torch.cuda.is_available():
        pytest.skip("the no-GPU reasons are checked on machines without a GPU")
    assert default_target("tensorrt_rtx") == "portable"
    reason = runtime_unavailable_reason("tensorrt_rtx", "1.7.1.116")
    assert reason is not None and reason.startswith("no CUDA GPU visible (torch.cuda.is_available() is False)")


def test_rtx_compute_capability_rule() -> None:
    """The rule behind the H100/H200 refusal: "Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1 >12.0"."""
    assert not rtx_runs_on((9, 0)) and not rtx_runs_on((7, 5)) and not rtx_runs_on((8, 7))
    assert all(rtx_runs_on(cc) for cc in [(8, 0), (8, 6), (8, 9), (12, 0), (12, 1), (13, 0)])


# --- real builds ----------------------------------------------------------------------------------


def test_build_cache_hit_corruption_and_profile_change(tensorrt: TrtModule, tiny_onnx: tuple[Path, TinyDecoder],
                                                       tmp_path: Path) -> None:
    onnx_path, _ = tiny_onnx
    first = build_engine(onnx_path, PROFILES, tmp_path, workspace_gb=1, optimization_level=3)
    print(f"\n{first}")
    assert first.path.is_file() and first.path.stat().st_size > 0 and first.engine_mb > 0
    assert not first.cache_hit and first.build_s > 0 and first.parse_s > 0 and first.peak_build_rss_gb > 0
    assert (first.flavor, first.version) == (tensorrt.flavor, tensorrt.version)
    assert first.target == default_target(tensorrt.flavor)
    assert _stored_checksum_ok(first.path)

    second = build_engine(onnx_path, PROFILES, tmp_path, workspace_gb=1, optimization_level=3)
    assert second.cache_hit and second.path == first.path and second.build_s == first.build_s  # the original cost
    assert second.parse_s == first.parse_s

    data = bytearray(first.path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    first.path.write_bytes(bytes(data))
    rebuilt = build_engine(onnx_path, PROFILES, tmp_path, workspace_gb=1, optimization_level=3)
    assert not rebuilt.cache_hit and rebuilt.path == first.path and _stored_checksum_ok(rebuilt.path)

    first.path.with_name(first.path.name + ".sha256").unlink()  # an entry without its checksum is never loaded
    assert not build_engine(onnx_path, PROFILES, tmp_path, workspace_gb=1, optimization_level=3).cache_hit

    wider = profiles_for_sweep(batch_sizes=[1, 4], input_lens=[4, 8], output_len=6)
    changed = build_engine(onnx_path, wider, tmp_path, workspace_gb=1, optimization_level=3)
    assert not changed.cache_hit and changed.path != first.path
    assert build_engine(onnx_path, PROFILES, tmp_path, workspace_gb=1, optimization_level=3).cache_hit
    if tensorrt.flavor == "tensorrt_rtx":
        assert not list(tmp_path.glob("timing-*"))  # no timing cache: a no-op in TensorRT-RTX
    else:
        assert list(tmp_path.glob("timing-*"))


def test_external_data_is_part_of_the_cache_key(tensorrt: TrtModule, tmp_path: Path) -> None:
    onnx_path = tmp_path / "model" / "tiny.onnx"
    onnx_path.parent.mkdir()
    export_tiny(onnx_path, external_data=True)
    data_file = onnx_path.with_name("tiny.onnx.data")
    assert onnx_files(onnx_path) == [onnx_path, data_file]
    first = build_engine(onnx_path, PROFILES, tmp_path / "cache")  # parse_from_file resolves the data file
    weights = bytearray(data_file.read_bytes())
    weights[-1] ^= 0x01  # other weights, same graph
    data_file.write_bytes(bytes(weights))
    second = build_engine(onnx_path, PROFILES, tmp_path / "cache")
    assert not first.cache_hit and not second.cache_hit and second.path != first.path


def test_parse_errors_carry_the_parser_messages(tensorrt: TrtModule, tiny_onnx: tuple[Path, TinyDecoder],
                                               tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx[0]))
    next(n for n in model.graph.node if n.op_type == "Softmax").op_type = "NoSuchOp"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(EngineBuildError, match=r"could not parse .*broken\.onnx:\n.*operator: NoSuchOp"):
        build_engine(broken, PROFILES, tmp_path / "cache")


def test_int4_weight_only_graph_builds_a_smaller_engine(tensorrt: TrtModule, tmp_path: Path) -> None:
    """The int4 export (INT4 initializers, block DequantizeLinear along K into MatMul, bf16 scales) builds, and the
    engine keeps the weights in int4: it is smaller than the bf16 engine by most of what int4 saves."""
    torch.manual_seed(0)
    # projections dominate (2 x 1.2M weights against 2 x 64K for the embedding and the LM head)
    args = DecoderArgs(vocab_size=256, hidden_size=256, intermediate_size=1024, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=64)
    decoder = Decoder(args).eval()
    bf16 = export_decoder(decoder, "tiny", "bf16", tmp_path / "onnx")
    int4 = export_decoder(decoder, "tiny", "int4", tmp_path / "onnx", dtype="bf16", int4_format="DequantizeLinear")
    graph = onnx.load(str(int4.path)).graph
    initializers = {t.name: t for t in graph.initializer}
    dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantize) == 7 * args.num_layers
    assert all(initializers[n.input[0]].data_type == onnx.TensorProto.INT4 for n in dequantize)
    assert all(initializers[n.input[1]].data_type == onnx.TensorProto.BFLOAT16 for n in dequantize)
    assert all({a.name: a.i for a in n.attribute} == {"axis": 0, "block_size": 128} for n in dequantize)

    float_build = build_engine(bf16.path, PROFILES, tmp_path / "engines")
    int4_build = build_engine(int4.path, PROFILES, tmp_path / "engines")
    print(f"\nbf16 engine {float_build.engine_mb:.2f} MB in {float_build.build_s:.2f} s, "
          f"int4 engine {int4_build.engine_mb:.2f} MB in {int4_build.build_s:.2f} s")
    projection_bf16_mb = sum(
        m.weight.numel() for name, m in decoder.named_modules() if name.endswith("_proj")) * 2 / 1e6
    saved_mb = projection_bf16_mb - int4.int4_bytes / 1e6
    assert 0 < int4_build.engine_mb < float_build.engine_mb - saved_mb / 2


@pytest.mark.parametrize("family", ["phi3", "qwen3"])
def test_phi3_and_qwen3_exports_parse_and_build(tensorrt: TrtModule, tmp_path: Path, family: str) -> None:
    """The exported decoder of a tiny Phi-3 (LongRoPE's regime chosen in the graph, partial rotary) and Qwen3 (q/k
    norms) parses and builds, with profiles reaching past Phi-3's original context of 12 positions (8 + 6 tokens)."""
    from tests.test_decoder import tiny_model

    decoder = Decoder.from_hf(tiny_model(family))
    export = export_decoder(decoder, f"tiny-{family}", "fp32", tmp_path / "onnx")
    build = build_engine(export.path, PROFILES, tmp_path / "engines", workspace_gb=1)
    print(f"\n{family}: {build.flavor} engine {build.engine_mb:.2f} MB in {build.build_s:.2f} s")
    assert build.path.is_file() and build.engine_mb > 0 and not build.cache_hit


@pytest.mark.skipif(GPU, reason="checks the error on a machine without a GPU")
def test_loading_without_a_gpu_is_a_clean_error(tensorrt: TrtModule, tiny_onnx: tuple[Path, TinyDecoder],
                                                tmp_path: Path) -> None:
    build = build_engine(tiny_onnx[0], PROFILES, tmp_path)
    reason = runtime_unavailable_reason(build.flavor, build.version, build.path)
    assert reason is not None and reason.startswith("no CUDA GPU visible")
    # The runtime itself can be created without a GPU; deserializing then fails with CUDA's own error text.
    with pytest.raises(TensorRTRuntimeError, match=r"could not load .*\.engine: .*(?i:cuda)") as caught:
        TrtDecoderRunner(build.path)
    print(f"\n{caught.value}")


def test_runtime_api_used_by_the_runner_exists(tensorrt: TrtModule) -> None:
    """The runner cannot run here; at least every name it calls must exist in the installed module."""
    used = {
        "Runtime": ["deserialize_cuda_engine"],
        "ICudaEngine": ["num_optimization_profiles", "get_tensor_profile_shape", "num_io_tensors", "get_tensor_name",
                        "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype", "create_execution_context",
                        "get_device_memory_size_for_profile_v2"],
        "IExecutionContext": ["set_optimization_profile_async", "set_input_shape", "set_tensor_address",
                              "execute_async_v3", "set_device_memory", "get_tensor_shape"],
        "ExecutionContextAllocationStrategy": ["USER_MANAGED"],
        "TensorIOMode": ["INPUT"], "DataType": ["FLOAT", "HALF", "BF16", "INT64", "INT32"],
    }
    if tensorrt.flavor == "tensorrt_rtx":  # reached through Any-typed handles, so mypy cannot check these
        used |= {"ICudaEngine": used["ICudaEngine"] + ["create_runtime_config"],
                 "IRuntimeConfig": ["create_runtime_cache", "set_runtime_cache", "cuda_graph_strategy",
                                    "set_execution_context_allocation_strategy",
                                    "dynamic_shapes_kernel_specialization_strategy"],
                 "IRuntimeCache": ["deserialize", "serialize"], "CudaGraphStrategy": ["WHOLE_GRAPH_CAPTURE"],
                 "DynamicShapesKernelSpecializationStrategy": [s.upper() for s in KERNEL_SPECIALIZATIONS],
                 "IBuilderConfig": ["num_compute_capabilities", "set_compute_capability"],
                 "ComputeCapability": ["CURRENT"]}
    missing = [f"{cls}.{name}" for cls, names in used.items() for name in names
               if not hasattr(getattr(tensorrt.module, cls), name)]
    assert not missing


def test_kernel_specialization_option_matches_the_runner() -> None:
    from bench_kernels.runtimes.tensorrt.runtime import TensorRTOptions

    choices = typing.get_args(typing.get_type_hints(TensorRTOptions)["kernel_specialization"])
    assert sorted(choices) == sorted(KERNEL_SPECIALIZATIONS)
    with pytest.raises(ValueError, match="kernel_specialization must be one of"):
        TrtDecoderRunner("never-read.engine", kernel_specialization="EAGER")


def test_timing_cache_refusals_never_lose_the_build(tensorrt: TrtModule, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """attach_timing_cache / save_timing_cache on the real builder config.

    TensorRT-RTX's timing-cache calls are no-ops that accept anything (empty, garbage, every one-byte corruption
    of a serialized cache were tried), so TensorRT's refusal (False for a cache of another GPU or version) is
    reached by replacing set_timing_cache on the IBuilderConfig class for this test only.
    """
    builder = tensorrt.module.Builder(trt_logger()[0])
    path = tmp_path / "timing.cache"
    accept = tensorrt.module.IBuilderConfig.set_timing_cache
    answers: list[bool | None] = []

    def set_timing_cache(config: object, cache: object, ignore_mismatch: bool) -> bool:
        answer = answers.pop(0) if answers else None
        return accept(config, cache, ignore_mismatch) if answer is None else answer

    monkeypatch.setattr(tensorrt.module.IBuilderConfig, "set_timing_cache", set_timing_cache)

    path.write_bytes(b"from another GPU")
    answers[:] = [False]  # the saved cache is refused, an empty one accepted: the file is replaced
    config = builder.create_builder_config()
    attach_timing_cache(config, path)
    assert config.get_timing_cache() is not None
    save_timing_cache(config, path)
    assert path.read_bytes() != b"from another GPU" and path.stat().st_size > 0

    path.write_bytes(b"from another GPU")
    answers[:] = [False, False]  # both refused: no cache attached, the build goes on and the file stays
    config = builder.create_builder_config()
    attach_timing_cache(config, path)
    assert config.get_timing_cache() is None
    save_timing_cache(config, path)  # raised AttributeError on None.serialize() before
    assert path.read_bytes() == b"from another GPU"


def test_one_logger_captures_errors_when_another_came_first(tensorrt: TrtModule, tmp_path: Path) -> None:
    engine = tmp_path / "garbage.engine"
    engine.write_bytes(b"not an engine" * 16)
    engine.with_name(engine.name + ".sha256").write_text(hashlib.sha256(engine.read_bytes()).hexdigest())
    assert trt_logger()[0] is trt_logger()[0]  # one logger for the process
    gc.collect()  # no builder or runtime of ours left alive from earlier tests: the foreign logger registers first
    foreign = tensorrt.module.Runtime(tensorrt.module.Logger(tensorrt.module.Logger.INTERNAL_ERROR))
    try:
        with pytest.raises(TensorRTRuntimeError) as caught:
            deserialize_engine(engine)
    finally:
        del foreign
    print(f"\n{caught.value}")
    assert trt_logger()[1].superseded  # TensorRT answered our logger with LOGGER_SUPERSEDED
    # tensorrt_rtx 1.7 still routes a runtime's errors to the logger it was created with
    assert "IRuntime::deserializeCudaEngine" in str(caught.value)
    assert "registered first" in CapturedErrors(superseded=True).describe("could not load x.engine")


# --- static typing against tensorrt-stubs ---------------------------------------------------------


def _prepare_tensorrt_stubs(dest: Path) -> None:
    """Copy tensorrt-stubs into dest with its syntax errors fixed (see mypy-tensorrt.ini)."""
    origin = importlib.util.find_spec("tensorrt_stubs")
    assert origin is not None and origin.origin is not None
    site = Path(origin.origin).parents[1]
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / package, dest / package)
    stub = dest / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r", in: list\[", ", in_: list[", stub.read_text())
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = 0)")
    stub.write_text(text)


def _mypy(scratch: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """mypy with mypy-tensorrt.ini, the stubs in scratch and its cache in the tests'
    cache: nothing written into the checkout."""
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy-tensorrt.ini", "--cache-dir",
                           str(cache_dir("mypy")), *files], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "MYPYPATH": str(scratch / "tensorrt-stubs")})


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None or importlib.util.find_spec("tensorrt_stubs") is None,
                    reason="needs mypy and tensorrt-stubs (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
def test_trt_engine_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    _prepare_tensorrt_stubs(tmp_path / "tensorrt-stubs")
    clean = _mypy(tmp_path)  # the files mypy-tensorrt.ini lists
    assert clean.returncode == 0, clean.stdout + clean.stderr
    typo = tmp_path / "trt_engine_typo.py"
    source = (ROOT / "bench_kernels" / "runtimes" / "tensorrt" / "runner.py").read_text()
    typo.write_text(source.replace("context.set_input_shape(", "context.set_input_shap("))
    caught = _mypy(tmp_path, str(typo))
    assert caught.returncode == 1 and '"IExecutionContext" has no attribute "set_input_shap"' in caught.stdout
