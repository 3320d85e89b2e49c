"""Where things live: the project root (for relative paths) and the on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The nearest folder at or above the working directory that holds params/default.yaml.

    JupyterLab runs notebooks from notebooks/ and papermill from the root; both must write to the
    same reports/ folder. Falls back to the working directory.
    """
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params" / "default.yaml").is_file():
            return folder
    return here


def resolve_project_path(path: str | Path) -> Path:
    """An absolute path as given, a relative one against the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def cache_dir(*parts: str) -> Path:
    """$BENCH_KERNELS_CACHE (default ~/.cache/bench_kernels)/parts, created on demand."""
    root = Path(os.environ.get("BENCH_KERNELS_CACHE", Path.home() / ".cache" / "bench_kernels")).expanduser()
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
