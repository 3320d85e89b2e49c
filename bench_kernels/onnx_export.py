"""Export the package's decoder to ONNX (explicit KV cache in and out), cached on disk per model and precision.

Shared by the runtimes that start from the ONNX graph (onnxruntime, tensorrt). int4 precisions export the float
graph, then store the attention and MLP projections as int4 with one scale per group of input channels
(bench_kernels.quantization's groups; the LM head and the embedding stay float), in one of two forms:
MatMulNBits (ONNX Runtime's contrib operator, written by its own MatMulNBitsQuantizer) or DequantizeLinear (the
standard opset-21 operator with INT4 weights and block scales feeding MatMul, the pattern TensorRT builds into
weight-only int4 GEMMs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx.external_data_helper
import onnx.version_converter
import torch

from bench_kernels.architecture import parameter_counts
from bench_kernels.decoder import Decoder
from bench_kernels.models import LoadedModel
from bench_kernels.paths import cache_dir as cache_root, temporary_dir
from bench_kernels.precisions import INT4_PRECISIONS  # the weights (AWQ-scaled or not) are the caller's
from bench_kernels.quantization import int4_codes, int4_group_size

logger = logging.getLogger(__name__)

OPSET = 17
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT4_FORMATS = ("MatMulNBits", "DequantizeLinear")
BLOCK_DEQUANTIZE_OPSET = 21  # DequantizeLinear's block_size and the INT4 type
PROJECTION_MATMUL = re.compile(r"^/layers\.\d+/(self_attn|mlp)/\w+_proj/MatMul$")  # the exporter's node names
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
META_FILE = "export.json"


@dataclass
class OnnxExport:
    """An exported decoder on disk and what building it cost."""

    path: Path
    build_s: float
    artifact_mb: float  # model.onnx plus external data, in 10^6 bytes
    cache_hit: bool
    num_layers: int
    num_kv_heads: int
    head_dim: int
    precision: str
    dtype: str  # the float precision of activations, KV cache, float weights and int4 scales
    int4_format: str | None = None  # one of INT4_FORMATS for int4 precisions
    int4_bytes: int | None = None  # stored bytes of the int4 projections and their scales
    float_source: str | None = None  # the cached float export an int4 one was rounded from (build_s: rounding only)

    def weight_bytes(self, config: Any) -> int:
        """Bytes of the weights one decode step reads: int4 projections as stored, everything else in the graph's
        float dtype (a tied embedding once)."""
        counts = parameter_counts(config)
        element = torch.finfo(PRECISIONS[self.dtype]).bits // 8
        projections = counts.projections * element if self.int4_bytes is None else self.int4_bytes
        return projections + (counts.total - counts.projections) * element


def input_names(num_layers: int) -> list[str]:
    """Graph input names, in the order of Decoder.forward's flattened arguments."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "position_ids", "attention_mask", *past]


def output_names(num_layers: int) -> list[str]:
    """Graph output names: logits, then the grown KV cache."""
    return ["logits", *(f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value"))]


def dynamic_axes(num_layers: int) -> dict[str, dict[int, str]]:
    """Named dynamic dims: batch, sequence (new tokens), past_sequence, total_sequence = past + new."""
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    for i in range(num_layers):
        for kv in ("key", "value"):
            axes[f"past_key_values.{i}.{kv}"] = {0: "batch", 2: "past_sequence"}
            axes[f"present.{i}.{kv}"] = {0: "batch", 2: "total_sequence"}
    return axes


def cache_entry_name(decoder: Decoder, model_key: str, precision: str, external_data: bool,
                     dtype: str | None = None, int4_format: str | None = None) -> str:
    """Readable, collision-safe directory name for one export (int4 ones name their float dtype and format)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key)[:64]
    layout = "-external" if external_data else ""
    identity = [model_key, precision, torch.__version__, OPSET, layout, asdict(decoder.args)]
    name = precision
    if int4_format is not None:
        # MatMulNBits is written by onnxruntime's quantizer: its version is part of what the entry holds
        quantizer = _onnxruntime_version() if int4_format == "MatMulNBits" else "bench_kernels"
        identity += [dtype, int4_format, quantizer]
        name = f"{precision}-{int4_format}-{dtype}"
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{slug}-{name}-torch{torch.__version__}-opset{OPSET}{layout}-{digest}"


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def export_model(loaded: LoadedModel, precision: str, dtype: str | None = None,
                 int4_format: str | None = None) -> OnnxExport:
    """The decoder of a loaded model exported to ONNX in `precision` (cached on disk by model and weights; an
    int4-awq model's weights are AWQ-scaled, and its precision keeps them apart from the others)."""
    decoder = Decoder.from_hf(loaded.hf_model).to("cpu")  # exported on the host: the graph is device-neutral
    # int4 rounds the very weights a float export holds; int4-awq's are AWQ-scaled, so its float graph is its own
    return export_decoder(decoder, f"{loaded.name}-{loaded.weights_id}", precision, cache_root("onnx"),
                          dtype=dtype, int4_format=int4_format, reuse_float_export=precision == "int4")


def _check_precision(precision: str, dtype: str | None, int4_format: str | None) -> str:
    """The export's float dtype; ValueError for an unknown precision or a dtype / int4 format that does not fit it."""
    if precision in PRECISIONS:
        if dtype not in (None, precision) or int4_format is not None:
            raise ValueError(f"precision {precision!r} exports in {precision} without an int4 format")
        return precision
    if precision not in INT4_PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS) + list(INT4_PRECISIONS)}")
    if dtype not in PRECISIONS or int4_format not in INT4_FORMATS:
        raise ValueError(f"precision {precision!r} needs a float dtype ({', '.join(PRECISIONS)}) and an int4 format "
                         f"({', '.join(INT4_FORMATS)}), got {dtype!r} and {int4_format!r}")
    return dtype


def export_decoder(
    decoder: Decoder, model_key: str, precision: str, cache_dir: Path, external_data: bool = False, *,
    dtype: str | None = None, int4_format: str | None = None, reuse_float_export: bool = False,
) -> OnnxExport:
    """Export a copy of decoder cast to precision (for int4: to dtype, its projections then stored as int4 in
    int4_format), or reuse the cached export; model_key must identify the weights. With reuse_float_export an int4
    export starts from the cached float export of the same weights in dtype, when there is one, instead of tracing
    the decoder again (minutes for an 8B model)."""
    # Weights go to model.onnx.data when external_data is set, and always above the 2 GiB protobuf limit.
    dtype = _check_precision(precision, dtype, int4_format)
    cache_dir = Path(cache_dir)
    entry = cache_dir / cache_entry_name(decoder, model_key, precision, external_data, dtype, int4_format)
    if (entry / META_FILE).exists():
        logger.info("ONNX cache hit: %s", entry)
        return _read_entry(entry, cache_hit=True)

    start_s = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = temporary_dir(cache_dir, entry.name)
    float_entry = cache_dir / cache_entry_name(decoder, model_key, dtype, external_data)
    reuse = reuse_float_export and int4_format is not None and (float_entry / META_FILE).exists()
    try:
        if reuse:
            int4_bytes = _store_int4(float_entry, tmp, int4_format)
        else:
            _export_to(decoder.cast(PRECISIONS[dtype]), tmp, external_data)
            int4_bytes = None if int4_format is None else _store_int4(tmp, tmp, int4_format)
        onnx.checker.check_model(str(tmp / MODEL_FILE))  # by path: works with external data and above 2 GiB
        onnx.shape_inference.infer_shapes_path(str(tmp / MODEL_FILE), strict_mode=True)
        build_s = time.perf_counter() - start_s
        artifact_mb = sum(f.stat().st_size for f in tmp.iterdir()) / 1e6
        meta = {
            "model_key": model_key,
            "precision": precision,
            "dtype": dtype,
            "int4_format": int4_format,
            "int4_bytes": int4_bytes,
            "float_source": float_entry.name if reuse else None,
            "torch_version": torch.__version__,
            "opset": OPSET,
            "build_s": build_s,
            "artifact_mb": artifact_mb,
            "num_layers": decoder.args.num_layers,
            "num_kv_heads": decoder.args.num_kv_heads,
            "head_dim": decoder.args.head_dim,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        try:
            tmp.rename(entry)  # atomic: the entry appears complete or not at all
        except OSError:
            if not (entry / META_FILE).exists():
                raise
            logger.info("a concurrent export of %s finished first; using it", entry.name)
            return _read_entry(entry, cache_hit=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s in %.1f s (%.0f MB)", entry.name, build_s, artifact_mb)
    return _read_entry(entry, cache_hit=False)


def _read_entry(entry: Path, cache_hit: bool) -> OnnxExport:
    """The OnnxExport of a finished cache entry, with the build time of its original export."""
    meta = json.loads((entry / META_FILE).read_text())
    return OnnxExport(
        path=entry / MODEL_FILE,
        build_s=meta["build_s"],
        artifact_mb=meta["artifact_mb"],
        cache_hit=cache_hit,
        num_layers=meta["num_layers"],
        num_kv_heads=meta["num_kv_heads"],
        head_dim=meta["head_dim"],
        precision=meta["precision"],
        dtype=meta.get("dtype", meta["precision"]),  # entries from before int4 name their float precision only
        int4_format=meta.get("int4_format"),
        int4_bytes=meta.get("int4_bytes"),
        float_source=meta.get("float_source"),
    )


def _export_to(decoder: Decoder, out_dir: Path, external_data: bool) -> None:
    """Trace decoder into out_dir/model.onnx (+ model.onnx.data) with the TorchScript exporter."""
    args, param = decoder.args, decoder.embed_tokens.weight
    B, S, P = 2, 3, 4  # distinct sizes so the tracer cannot confuse dynamic dims
    input_ids = torch.randint(0, args.vocab_size, (B, S), device=param.device)
    position_ids = torch.arange(P, P + S, device=param.device).expand(B, S)
    attention_mask = torch.ones(B, P + S, dtype=torch.int64, device=param.device)
    kv_shape = (B, args.num_kv_heads, P, args.head_dim)
    past = [
        tuple(torch.randn(kv_shape, dtype=param.dtype, device=param.device) for _ in ("key", "value"))
        for _ in range(args.num_layers)
    ]
    raw_dir = out_dir / "raw"
    raw_dir.mkdir()
    with torch.no_grad(), warnings.catch_warnings():
        # LongRoPE's factors enter the graph as the constants they are
        warnings.filterwarnings("ignore", "torch.tensor results are registered as constants", torch.jit.TracerWarning)
        torch.onnx.export(
            decoder,
            (input_ids, position_ids, attention_mask, past),
            str(raw_dir / MODEL_FILE),
            input_names=input_names(args.num_layers),
            output_names=output_names(args.num_layers),
            dynamic_axes=dynamic_axes(args.num_layers),
            opset_version=OPSET,
            dynamo=False,
        )
    # Above 2 GiB the exporter writes one file per tensor; gather them into a single model.onnx.data.
    if external_data or len(list(raw_dir.iterdir())) > 1:
        _save(onnx.load(str(raw_dir / MODEL_FILE)), out_dir, external_data=True)
    else:
        (raw_dir / MODEL_FILE).rename(out_dir / MODEL_FILE)
    shutil.rmtree(raw_dir)


def _save(model: onnx.ModelProto, out_dir: Path, external_data: bool) -> None:
    """Write model to out_dir/model.onnx, its tensors to one model.onnx.data when external_data is set."""
    if external_data:
        onnx.save_model(model, str(out_dir / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE)
    else:
        onnx.save_model(model, str(out_dir / MODEL_FILE))


def _store_int4(source_dir: Path, out_dir: Path, int4_format: str) -> int:
    """The float graph in source_dir with its projections stored as int4 in int4_format, written to out_dir (in place
    when it is source_dir); returns the bytes of their codes and scales."""
    external_data = (source_dir / DATA_FILE).exists()
    model = onnx.load(str(source_dir / MODEL_FILE), load_external_data=False)
    if int4_format == "DequantizeLinear":
        # before the weights load: the converter serializes the graph, which must stay under 2 GiB
        model = onnx.version_converter.convert_version(model, BLOCK_DEQUANTIZE_OPSET)
        model.ir_version = max(model.ir_version, 10)  # INT4 tensors need IR version 10
    onnx.external_data_helper.load_external_data_for_model(model, str(source_dir))
    groups = _projection_groups(model.graph)
    if int4_format == "MatMulNBits":
        model = _quantize_matmul_nbits(model, groups)
        stored = [name for node in model.graph.node if node.op_type == "MatMulNBits" for name in node.input[1:3]]
    else:
        _quantize_block_dequantize(model.graph, groups)
        stored = [name for node in model.graph.node if node.op_type == "DequantizeLinear" for name in node.input[:2]]
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    (out_dir / MODEL_FILE).unlink(missing_ok=True)
    (out_dir / DATA_FILE).unlink(missing_ok=True)  # rewritten whole: saving appends to an existing data file
    _save(model, out_dir, external_data)
    logger.info("stored %d projections as int4 (%s)", len(groups), int4_format)
    return sum(len(initializers[name].raw_data) for name in stored)


def _projection_groups(graph: onnx.GraphProto) -> dict[str, int]:
    """The int4 group size of every projection MatMul (by node name) whose weight is a 2-D initializer [K, N]."""
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    return {node.name: int4_group_size(shapes[node.input[1]][0]) for node in graph.node
            if node.op_type == "MatMul" and PROJECTION_MATMUL.match(node.name)
            and len(shapes.get(node.input[1], [])) == 2}


def _quantize_matmul_nbits(model: onnx.ModelProto, groups: dict[str, int]) -> onnx.ModelProto:
    """ONNX Runtime's MatMulNBitsQuantizer (its default algorithm: round-to-nearest, symmetric) over the projections,
    one pass per group size so every layer gets its own (K = 576 takes 64, where 128 would pad); the LM head stays
    float. accuracy_level is left unset: 4 would round the activations to int8 too."""
    MatMulNBitsQuantizer = _matmul_nbits_quantizer()
    matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul"]
    for group_size in sorted(set(groups.values())):
        others = [name for name in matmuls if groups.get(name) != group_size]
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=group_size, is_symmetric=True,
                                         nodes_to_exclude=others)
        quantizer.process()
        model = quantizer.model.model
    return model


def _matmul_nbits_quantizer() -> type:
    """onnxruntime's MatMulNBitsQuantizer class, imported without what its module does to logging on import:
    logging.basicConfig(level=INFO) on the root logger, which would print every library's INFO lines."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)  # a line per node otherwise
    return MatMulNBitsQuantizer


ONNX_TO_TORCH = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16,
                 onnx.TensorProto.BFLOAT16: torch.bfloat16}


def _quantize_block_dequantize(graph: onnx.GraphProto, groups: dict[str, int]) -> None:
    """Each projection's weight [K, N] becomes INT4 codes [K, N] and scales [K / group, N] in the weight's float type
    (bench_kernels.quantization.int4_codes, as the compiled runtime rounds), dequantized block-wise along K
    (axis 0) by DequantizeLinear into the MatMul."""
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.name in groups:
            weight = initializers.pop(node.input[1])
            scale_dtype = ONNX_TO_TORCH[weight.data_type]
            w_t = torch.from_numpy(onnx.numpy_helper.to_array(weight).astype("float32"))  # w_t: [K, N]
            codes, scales = int4_codes(w_t.T, groups[node.name], scale_dtype)  # codes: [N, K], scales: [N, K/g]
            nibbles = (codes.T.contiguous().flatten() & 0xF).to(torch.uint8)  # two's complement, row-major [K, N]
            packed = nibbles[0::2] | (nibbles[1::2] << 4)  # the first of each pair in the low nibble
            quantized = onnx.helper.make_tensor(f"{weight.name}_int4", onnx.TensorProto.INT4, list(weight.dims),
                                                packed.numpy().tobytes(), raw=True)
            scale_tensor = onnx.helper.make_tensor(f"{weight.name}_scales", weight.data_type, list(scales.T.shape),
                                                   scales.T.contiguous().view(torch.uint8).numpy().tobytes(), raw=True)
            initializers[quantized.name], initializers[scale_tensor.name] = quantized, scale_tensor
            dequantized = f"{weight.name}_dequantized"
            nodes.append(onnx.helper.make_node("DequantizeLinear", [quantized.name, scale_tensor.name], [dequantized],
                                               name=f"{node.name}_DequantizeLinear", axis=0,
                                               block_size=groups[node.name]))
            node.input[1] = dequantized
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(initializers.values())
