"""The torch side of the TensorRT runner, on the CPU and, where CUDA is available, on the GPU: every bound pointer
256-byte aligned, tokens fed back through fixed buffers, the KV ping-pong, and (GPU) a generation on its own
stream without one host synchronization.

The engine is stood in for by a few torch operations that read and write the bound addresses, so these checks
need torch and pytest alone: buffers.py is loaded from its file, because importing it through the package
would import the runtime registry and pydantic, which a bare GPU machine may lack.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
import torch

BUFFERS_FILE = Path(__file__).resolve().parents[3] / "bench_kernels" / "runtimes" / "tensorrt" / "buffers.py"
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
# Odd sizes, so that no buffer size is a multiple of 256 bytes by chance; batch 2 as in the issue.
BATCH, PROMPT_LEN, NEW_TOKENS, VOCAB, KV_HEADS, HEAD_DIM, LAYERS = 2, 5, 6, 11, 3, 3, 2
SUPPRESSED = [4, 5]


def _load_buffers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trt_buffers_under_test", BUFFERS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tb = _load_buffers()
PAST = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
LAYOUT = tb.DecoderLayout(PAST, [n.replace("past_key_values.", "present.") for n in PAST], KV_HEADS, HEAD_DIM,
                          torch.float16, VOCAB, torch.float32)


def _prompt(device: str) -> torch.Tensor:
    return torch.tensor([[1, 2, 3, 4, 5], [7, 8, 9, 10, 0]], device=device)


def _buffers(device: str) -> Any:
    suppressed = torch.tensor(SUPPRESSED, device=device)
    return tb.DecodeBuffers(LAYOUT, _prompt(device), NEW_TOKENS, suppressed)


def _stand_in_engine(buffers: Any, steps: list[tuple[int, int]]) -> tuple[Callable[..., None], list[int]]:
    """An enqueue(step, addresses) that computes with torch from the tensors at the bound addresses.

    Logits favour (3 * id + position) % VOCAB, then the ids after it in turn; present = past + the new
    positions. Returns it and the list of stream handles it was called on.
    """
    by_address = {t.data_ptr(): t for step in range(len(steps)) for t in buffers.bindings(step).values()}
    streams: list[int] = []

    def at(addresses: dict[str, int], name: str, shape: tuple[int, ...]) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        return by_address[addresses[name]].reshape(-1)[:numel].view(shape)

    def enqueue(step: int, addresses: dict[str, int]) -> None:
        streams.append(torch.cuda.current_stream().cuda_stream if CUDA else 0)
        sequence, past = steps[step]
        ids = at(addresses, "input_ids", (BATCH, sequence))
        positions = at(addresses, "position_ids", (BATCH, sequence))
        favoured = (3 * ids + positions) % VOCAB
        vocab = torch.arange(VOCAB, device=ids.device)
        logits = at(addresses, "logits", (BATCH, sequence, VOCAB))
        logits.copy_(-((vocab - favoured[..., None]) % VOCAB))
        for past_name, present_name in zip(LAYOUT.past_names, LAYOUT.present_names):
            present = at(addresses, present_name, (BATCH, KV_HEADS, past + sequence, HEAD_DIM))
            present[:, :, :past] = at(addresses, past_name, (BATCH, KV_HEADS, past, HEAD_DIM))
            present[:, :, past:] = positions[:, None, :, None].to(present.dtype)

    return enqueue, streams


def _expected_tokens() -> list[list[int]]:
    """What greedy decoding with the stand-in engine gives, computed in Python."""
    rows = []
    for prompt in _prompt("cpu").tolist():
        token, position, out = prompt[-1], PROMPT_LEN - 1, []
        for _ in range(NEW_TOKENS):
            favoured = (3 * token + position) % VOCAB
            token = next((favoured + k) % VOCAB for k in range(VOCAB) if (favoured + k) % VOCAB not in SUPPRESSED)
            out.append(token)
            position += 1
        rows.append(out)
    return rows


@pytest.mark.parametrize("device", DEVICES)
def test_every_bound_pointer_is_256_byte_aligned(device: str) -> None:
    buffers = _buffers(device)
    steps = tb.decode_steps(PROMPT_LEN, NEW_TOKENS)
    misaligned = [(step, name, tensor.data_ptr() % 256) for step in range(len(steps))
                  for name, tensor in buffers.bindings(step).items() if tensor.data_ptr() % 256]
    assert not misaligned
    assert set(buffers.bindings(0)) == {"input_ids", "position_ids", "attention_mask", "logits",
                                        *LAYOUT.past_names, *LAYOUT.present_names}


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_loop_feeds_tokens_back_and_swaps_the_kv_buffers(device: str) -> None:
    buffers = _buffers(device)
    steps = tb.decode_steps(PROMPT_LEN, NEW_TOKENS)
    assert steps == [(5, 0), (1, 5), (1, 6), (1, 7), (1, 8), (1, 9)]
    enqueue, _ = _stand_in_engine(buffers, steps)
    marks: list[int] = []
    tb.greedy_loop(buffers, steps, enqueue, lambda: marks.append(len(marks)))
    assert marks == list(range(NEW_TOKENS))
    assert buffers.tokens.t().tolist() == _expected_tokens()
    assert buffers.first_logits.shape == (BATCH, VOCAB) and buffers.first_logits.isfinite().all()
    total = PROMPT_LEN + NEW_TOKENS - 1
    last_present = buffers.bindings(len(steps) - 1)[LAYOUT.present_names[0]]
    cache = last_present[: BATCH * KV_HEADS * total * HEAD_DIM].view(BATCH, KV_HEADS, total, HEAD_DIM)
    assert cache[:, :, :, 0].tolist() == [[list(range(total))] * KV_HEADS] * BATCH
    assert buffers.output_shapes(1, 7) == {"logits": (BATCH, 1, VOCAB),
                                           **{name: (BATCH, KV_HEADS, 8, HEAD_DIM) for name in LAYOUT.present_names}}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch only)")
def test_generation_runs_on_its_own_stream_without_host_syncs() -> None:
    assert torch.cuda.current_stream().cuda_stream == 0  # the legacy default stream the runner used to enqueue on
    prompt, suppressed = _prompt("cuda"), torch.tensor(SUPPRESSED, device="cuda")  # copied to the GPU first
    logits = torch.zeros(BATCH, VOCAB, device="cuda")
    stream = torch.cuda.Stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            logits[:, SUPPRESSED] = float("-inf")  # the runner's former suppression: a list index copied per step
        with tb.on_stream(stream):
            buffers = tb.DecodeBuffers(LAYOUT, prompt, NEW_TOKENS, suppressed)
            steps = tb.decode_steps(PROMPT_LEN, NEW_TOKENS)
            enqueue, streams = _stand_in_engine(buffers, steps)
            tb.greedy_loop(buffers, steps, enqueue, lambda: None)
            tokens = buffers.tokens.t().contiguous()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stream.cuda_stream != 0 and streams == [stream.cuda_stream] * NEW_TOKENS
    assert tokens.tolist() == _expected_tokens()  # read on the caller's stream, which waited for the generation
