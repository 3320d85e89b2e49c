"""Prompts of exact token lengths cut from real text, identical for every runtime, and the fixed windows of the
packaged text that perplexity scores.

Perplexity windows: the text's tokens are cut into consecutive, non-overlapping windows of PERPLEXITY_WINDOW
tokens (fewer when the model's context is shorter) and the first PERPLEXITY_WINDOWS of them are scored (8 x 511 =
4,088 predictions), or fewer where a spec asks for fewer (perplexity_windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_kernels.method import PERPLEXITY_WINDOW, PERPLEXITY_WINDOWS
from bench_kernels.paths import resolve_project_path

if TYPE_CHECKING:
    import torch


def packaged_text() -> str:
    """The text shipped with the package: original prose written for these prompts."""
    return resources.files("bench_kernels").joinpath("data/prompts.txt").read_text(encoding="utf-8")


def load_text(prompt_file: str = "") -> str:
    """The user's text file if one is named, else the packaged text."""
    if not prompt_file:
        return packaged_text()
    path = resolve_project_path(prompt_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompt_file {path} does not exist")
    return Path(path).read_text(encoding="utf-8")


# The fewest tokens a prompt text may have, whatever the input lengths (prompts wrap around the text).
MIN_TEXT_TOKENS = 16


def text_token_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < MIN_TEXT_TOKENS:
        raise ValueError(f"prompt text has only {len(ids)} tokens; give a longer prompt_file")
    return list(ids)


def make_prompts(token_ids: list[int], batch_size: int, input_len: int) -> torch.Tensor:
    """A [batch_size, input_len] int64 batch cut from the token stream (see method.BATCH_FORMATION)."""
    import torch

    n = len(token_ids)
    stride = max(n // batch_size, 1)
    rows = [[token_ids[(i * stride + j) % n] for j in range(input_len)] for i in range(batch_size)]
    return torch.tensor(rows, dtype=torch.long)  # ids: [B, S]


def perplexity_windows(token_ids: Sequence[int], max_positions: int, windows: int = PERPLEXITY_WINDOWS) -> torch.Tensor:
    """The first windows scored [N, W] (see the module docstring); N < windows only for a short text."""
    import torch

    window = min(PERPLEXITY_WINDOW, max_positions)
    count = min(windows, len(token_ids) // window)
    if count == 0:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than one window of {window}")
    return torch.tensor(list(token_ids[: count * window]), dtype=torch.long).view(count, window)
