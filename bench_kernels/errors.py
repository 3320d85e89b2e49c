"""Error text a user can act on, shared by the sweep and the runtimes (which never import the sweep)."""

from __future__ import annotations

import torch


def readable_error(err: BaseException) -> str:
    """One line a user can act on: the exception type and the first line of its message."""
    if isinstance(err, torch.OutOfMemoryError):
        return f"out of memory: {str(err).splitlines()[0][:300]}"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:500]}"
