"""Export the package's decoder to ONNX (explicit KV cache in and out), cached on disk per model and precision.

Shared by the runtimes that start from the ONNX graph (onnxruntime, tensorrt).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch

from bench_kernels.decoder import Decoder
from bench_kernels.models import LoadedModel
from bench_kernels.paths import cache_dir as cache_root

logger = logging.getLogger(__name__)

OPSET = 17
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
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


def cache_entry_name(decoder: Decoder, model_key: str, precision: str, external_data: bool) -> str:
    """Readable, collision-safe directory name for one export."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key)[:64]
    layout = "-external" if external_data else ""
    identity = [model_key, precision, torch.__version__, OPSET, layout, asdict(decoder.args)]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{slug}-{precision}-torch{torch.__version__}-opset{OPSET}{layout}-{digest}"


def export_model(loaded: LoadedModel, precision: str) -> OnnxExport:
    """The decoder of a loaded model exported to ONNX in `precision` (cached on disk by model and weights)."""
    decoder = Decoder.from_hf(loaded.hf_model).to("cpu")  # exported on the host: the graph is device-neutral
    return export_decoder(decoder, f"{loaded.name}-{loaded.weights_id}", precision, cache_root("onnx"))


def export_decoder(
    decoder: Decoder, model_key: str, precision: str, cache_dir: Path, external_data: bool = False
) -> OnnxExport:
    """Export a copy of decoder cast to precision, or reuse the cached export; model_key must identify the weights."""
    # Weights go to model.onnx.data when external_data is set, and always above the 2 GiB protobuf limit.
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
    cache_dir = Path(cache_dir)
    entry = cache_dir / cache_entry_name(decoder, model_key, precision, external_data)
    if (entry / META_FILE).exists():
        logger.info("ONNX cache hit: %s", entry)
        return _read_entry(entry, cache_hit=True)

    start_s = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=cache_dir))
    try:
        _export_to(decoder.cast(PRECISIONS[precision]), tmp, external_data)
        onnx.checker.check_model(str(tmp / MODEL_FILE))  # by path: works with external data and above 2 GiB
        onnx.shape_inference.infer_shapes_path(str(tmp / MODEL_FILE), strict_mode=True)
        build_s = time.perf_counter() - start_s
        artifact_mb = sum(f.stat().st_size for f in tmp.iterdir()) / 1e6
        meta = {
            "model_key": model_key,
            "precision": precision,
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
    with torch.no_grad():
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
        model = onnx.load(str(raw_dir / MODEL_FILE))
        onnx.save_model(
            model, str(out_dir / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
            location=DATA_FILE,
        )
    else:
        (raw_dir / MODEL_FILE).rename(out_dir / MODEL_FILE)
    shutil.rmtree(raw_dir)
