"""Where things live (the project root for relative paths, the on-disk cache) and how files are written safely."""

from __future__ import annotations

import os
from pathlib import Path


def find_project(start: Path) -> Path | None:
    """The nearest folder at or above start that holds params/default.yaml (a bench_kernels project)."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "params" / "default.yaml").is_file():
            return folder
    return None


def project_root() -> Path:
    """The project around the working directory, else the working directory.

    JupyterLab runs notebooks from notebooks/ and papermill from the root; both must write to the
    same reports/ folder.
    """
    return find_project(Path.cwd()) or Path.cwd().resolve()


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


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path, data: bytes | memoryview | str, mode: int = 0o644) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over path (readers see old or new)."""
    tmp = _temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete atomic_write's temporary files left in folder by processes that no longer run (e.g. killed)."""
    removed = []
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
