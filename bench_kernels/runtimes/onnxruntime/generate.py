"""Greedy generation with the exported ONNX decoder on ONNX Runtime, feeding present back as past each step."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bench_kernels.decoder import position_ids_from_mask

logger = logging.getLogger(__name__)

KV_ELEMENT_TYPES = {
    "tensor(float)": onnx.TensorProto.FLOAT,
    "tensor(float16)": onnx.TensorProto.FLOAT16,
    "tensor(bfloat16)": onnx.TensorProto.BFLOAT16,
}


def make_session(onnx_path: Path | str, device: str = "cpu") -> ort.InferenceSession:
    """An InferenceSession on CPU, or on CUDA (with CPU fallback for unsupported nodes) when device is cuda. Its CPU
    thread pool is torch's size (the spec's cpu_threads), not one thread per core: every runtime gets the same CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"device {device!r} asked for, but this onnxruntime has no CUDAExecutionProvider")
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    logger.info("ONNX Runtime session on %s for %s", session.get_providers(), onnx_path)
    return session


def _position_ids(attention_mask: np.ndarray) -> np.ndarray:
    return position_ids_from_mask(torch.from_numpy(attention_mask)).numpy()


def first_step_logits(
    session: ort.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray | None
) -> np.ndarray:
    """Prefill logits [B, S, V] of a left-padded batch, as the first step of ort_greedy_generate computes them."""
    attention_mask = np.ones_like(input_ids) if attention_mask is None else attention_mask.astype(np.int64)
    past = _empty_past(session, input_ids.shape[0])
    logits, _ = _step(session, input_ids, _position_ids(attention_mask), attention_mask, past)
    return logits


def ort_greedy_generate(
    session: ort.InferenceSession,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    max_new_tokens: int,
    on_token: Callable[[], None] | None = None,
    suppress_token_ids: Sequence[int] = (),
) -> np.ndarray:
    """Greedy tokens [B, max_new_tokens] of a left-padded batch, never emitting suppress_token_ids."""
    B = input_ids.shape[0]  # input_ids, attention_mask: [B, S] int64
    input_ids = input_ids.astype(np.int64)
    attention_mask = np.ones_like(input_ids) if attention_mask is None else attention_mask.astype(np.int64)
    position_ids = _position_ids(attention_mask)
    past = _empty_past(session, B)
    suppressed = list(suppress_token_ids)
    tokens = np.empty((B, max_new_tokens), dtype=np.int64)
    for step in range(max_new_tokens):
        logits, past = _step(session, input_ids, position_ids, attention_mask, past)
        next_logits = logits[:, -1].astype(np.float32)  # next_logits: [B, V]
        next_logits[:, suppressed] = -np.inf
        tokens[:, step] = next_logits.argmax(-1)
        if on_token is not None:
            on_token()  # this step's tokens are on the host: the timestamp for TTFT and per-token latency
        input_ids = tokens[:, step : step + 1]  # input_ids: [B, 1]
        attention_mask = np.concatenate([attention_mask, np.ones((B, 1), dtype=np.int64)], axis=1)
        position_ids = position_ids[:, -1:] + 1
    return tokens


def _device_type(session: ort.InferenceSession) -> str:
    """Where the KV cache lives between steps: on the GPU for the CUDA provider, else host memory."""
    return "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def _empty_past(session: ort.InferenceSession, batch_size: int) -> list[ort.OrtValue]:
    """Zero-length past KV tensors [B, KVH, 0, Dh] in the graph's KV dtype, on the session's device."""
    past = []
    for node in session.get_inputs()[3:]:
        _, num_kv_heads, _, head_dim = node.shape
        past.append(
            ort.OrtValue.ortvalue_from_shape_and_type(
                [batch_size, num_kv_heads, 0, head_dim], KV_ELEMENT_TYPES[node.type], _device_type(session)
            )
        )
    return past


def _step(
    session: ort.InferenceSession,
    input_ids: np.ndarray,
    position_ids: np.ndarray,
    attention_mask: np.ndarray,
    past: list[ort.OrtValue],
) -> tuple[np.ndarray, list[ort.OrtValue]]:
    """One forward: logits [B, S, V] on the host and present KV left on the device for the next step."""
    device_type = _device_type(session)
    binding = session.io_binding()
    binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids))
    binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids))
    binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask))
    for node, value in zip(session.get_inputs()[3:], past):
        binding.bind_ortvalue_input(node.name, value)
    outputs = session.get_outputs()
    binding.bind_output(outputs[0].name, "cpu")
    for node in outputs[1:]:
        binding.bind_output(node.name, device_type)
    session.run_with_iobinding(binding)
    logits, *present = binding.get_outputs()
    return logits.numpy(), present
