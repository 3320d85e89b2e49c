"""The torch side of greedy decoding with a TensorRT decoder engine: the buffers bound to it and the loop around it.

Imports torch alone (no TensorRT, nothing else from the package), so that its GPU checks run on any CUDA
machine with torch and pytest, including GPUs whose TensorRT flavor cannot run engines.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment."
ALIGNMENT_BYTES = 256


def aligned_empty(numel: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A flat uninitialized tensor whose data_ptr() is a multiple of ALIGNMENT_BYTES on any allocator.

    torch's CUDA allocator already rounds blocks to 512 bytes; its CPU allocator aligns to 64 only.
    """
    raw = torch.empty(numel + ALIGNMENT_BYTES // dtype.itemsize, dtype=dtype, device=device)
    skip = (-raw.data_ptr() % ALIGNMENT_BYTES) // dtype.itemsize
    return raw[skip: skip + numel]


@dataclass(frozen=True)
class DecoderLayout:
    """What the buffers need to know of the engine: KV tensor names and sizes, vocabulary, dtypes."""

    past_names: list[str]
    present_names: list[str]
    kv_heads: int
    head_dim: int
    kv_dtype: torch.dtype
    vocab: int
    logits_dtype: torch.dtype


def decode_steps(prompt_len: int, max_new_tokens: int) -> list[tuple[int, int]]:
    """(sequence, past) of each engine call: the prompt with no past, then one token per call."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    # call t >= 1 feeds token t - 1 at position prompt_len + t - 1 (its past); the last token is never fed back
    return [(prompt_len, 0)] + [(1, prompt_len + t - 1) for t in range(1, max_new_tokens)]


class DecodeBuffers:
    """Every tensor one generation binds to the engine, each ALIGNMENT_BYTES-aligned, and the token history.

    Next ids and positions live in fixed [B, 1] buffers written in place, never in row views of larger
    tensors (a row of a [N, B] tensor starts B * 8 bytes after the previous one). The KV cache is two flat
    buffers per past tensor, past read from one and present written to the other, swapped every step;
    a prefix of B*KVH*P*Dh elements is a contiguous [B, KVH, P, Dh].
    """

    def __init__(self, layout: DecoderLayout, prompt: torch.Tensor, max_new_tokens: int,
                 suppressed: torch.Tensor):
        """Buffers for prompt [B, S] int64 on their device; suppressed: 1-D int64 ids on that device, never picked."""
        self.layout = layout
        self.batch, prompt_len = prompt.shape
        device = prompt.device
        total = prompt_len + max_new_tokens - 1  # longest present: the last token is never fed back
        kv_numel = self.batch * layout.kv_heads * total * layout.head_dim
        self.kv = [(aligned_empty(kv_numel, layout.kv_dtype, device), aligned_empty(kv_numel, layout.kv_dtype, device))
                   for _ in layout.past_names]
        # sized for the prefill, the longest call; a decode step uses the prefix [B, 1, V]
        self.logits = aligned_empty(self.batch * prompt_len * layout.vocab, layout.logits_dtype, device)
        self.mask = aligned_empty(self.batch * total, torch.int64, device).fill_(1)  # prefix viewed as [B, P + S]
        self.prompt_ids = aligned_empty(prompt.numel(), torch.int64, device).view_as(prompt).copy_(prompt)
        self.prompt_positions = aligned_empty(prompt.numel(), torch.int64, device).view_as(prompt)
        self.prompt_positions.copy_(torch.arange(prompt_len, device=device).expand_as(prompt))
        self.next_ids = aligned_empty(self.batch, torch.int64, device).view(self.batch, 1)
        self.next_positions = aligned_empty(self.batch, torch.int64, device).view(self.batch, 1)
        self.tokens = torch.empty(max_new_tokens, self.batch, dtype=torch.int64, device=device)  # row t: token t
        self.suppressed = suppressed
        self.first_logits = torch.empty(0)  # the prefill's next-token logits [B, V], before suppression

    def bindings(self, step: int) -> dict[str, torch.Tensor]:
        """Each engine tensor and the buffer whose address is bound to it at this step."""
        bound = {"input_ids": self.prompt_ids if step == 0 else self.next_ids,
                 "position_ids": self.prompt_positions if step == 0 else self.next_positions,
                 "attention_mask": self.mask, "logits": self.logits}
        read = step % 2
        for past, present, pair in zip(self.layout.past_names, self.layout.present_names, self.kv):
            bound[past], bound[present] = pair[read], pair[1 - read]
        return bound

    def output_shapes(self, sequence: int, past: int) -> dict[str, tuple[int, ...]]:
        """The shape each output is read as after a call of (sequence, past): what its buffer holds."""
        layout = self.layout
        shapes: dict[str, tuple[int, ...]] = {"logits": (self.batch, sequence, layout.vocab)}
        for present in layout.present_names:
            shapes[present] = (self.batch, layout.kv_heads, past + sequence, layout.head_dim)
        return shapes

    def pick_next(self, step: int, sequence: int) -> None:
        """The greedy token after this step's logits, suppressed ids excluded, into next_ids and the history."""
        vocab = self.layout.vocab
        last = self.logits[: self.batch * sequence * vocab].view(self.batch, sequence, vocab)[:, -1]  # [B, V]
        if step == 0:
            self.first_logits = last.clone()
        # a device index, not a Python list: indexing with a list copies it to the GPU and blocks the host
        last.index_fill_(-1, self.suppressed, float("-inf"))  # scratch: the next call overwrites the logits
        torch.argmax(last, dim=-1, keepdim=True, out=self.next_ids)
        self.tokens[step].copy_(self.next_ids.view(self.batch))


def greedy_loop(buffers: DecodeBuffers, steps: list[tuple[int, int]], enqueue: Callable[[int, dict[str, int]], None],
                on_token: Callable[[], None]) -> None:
    """One engine call per step, on the current stream: enqueue(step, address of every bound tensor), then pick."""
    for step, (sequence, past) in enumerate(steps):
        if step > 0:
            buffers.next_positions.fill_(past)  # the fed-back token's position is the past length
        enqueue(step, {name: tensor.data_ptr() for name, tensor in buffers.bindings(step).items()})
        buffers.pick_next(step, sequence)
        on_token()


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream) -> Iterator[None]:
    """Run the block on stream, after the caller's queued work; the caller's later work waits for the block's."""
    caller = torch.cuda.current_stream(stream.device)
    stream.wait_stream(caller)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        caller.wait_stream(stream)
