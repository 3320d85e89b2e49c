"""Error text a user can act on, shared by the sweep and the runtimes (which never import the sweep)."""

from __future__ import annotations

import torch


def readable_error(err: BaseException) -> str:
    """One line a user can act on: the exception type and the whole first line of its message (never cut mid-word;
    the report puts torch's out-of-memory line in plain words, analysis.plain_error)."""
    first = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {first}"
    return f"{type(err).__name__}: {first}"
