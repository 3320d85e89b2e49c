"""Where things live (the project root for relative paths, the on-disk cache) and how files are written safely."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# temporary_dir's folders: .tmp-<pid>+<host>+<name>-<random>, renamed into place when complete.
TEMPORARY_DIR_PREFIX = ".tmp-"


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


def cache_root() -> Path:
    """$BENCH_KERNELS_CACHE, default ~/.cache/bench_kernels."""
    return Path(os.environ.get("BENCH_KERNELS_CACHE", Path.home() / ".cache" / "bench_kernels")).expanduser()


def cache_dir(*parts: str) -> Path:
    """cache_root()/parts, created on demand; temporaries that killed writers left in it (and in the folders above it,
    up to the root) are removed first."""
    root = cache_root()
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    for depth in range(len(parts) + 1):
        for stale in remove_stale_temporaries(root.joinpath(*parts[:depth])):
            log.info("removed %s, left by a writer that no longer runs", stale)
    return folder


def temporary_dir(parent: Path, name: str) -> Path:
    """A new folder in parent to write `name` into before renaming it into place; its name records this process
    (pid and host), so that a later start can tell when its writer is gone (remove_stale_temporaries)."""
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{TEMPORARY_DIR_PREFIX}{os.getpid()}+{socket.gethostname()}+{name}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def temporary_writer(path: Path) -> tuple[int, str] | None:
    """(pid, host) of the process writing a temporary (a temporary_dir folder, or an atomic_write file: written on
    this host), None when path is not one or its name does not say."""
    name = path.name
    if name.startswith(TEMPORARY_DIR_PREFIX):
        pid, _, rest = name.removeprefix(TEMPORARY_DIR_PREFIX).partition("+")
        host, found, _ = rest.partition("+")
        return (int(pid), host) if pid.isdigit() and found else None
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        pid = name.rsplit(".", 2)[-2]
        return (int(pid), socket.gethostname()) if pid.isdigit() else None
    return None


def writer_gone(path: Path) -> bool:
    """True when path is a temporary whose writer ran on this host and runs no more (killed, or crashed)."""
    writer = temporary_writer(path)
    return writer is not None and writer[1] == socket.gethostname() and not process_alive(writer[0])


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
    """Delete the temporaries (atomic_write's files, temporary_dir's folders) left in folder by processes of this host
    that no longer run (e.g. killed); a temporary of a live writer, or of another host, is left alone."""
    removed = []
    for tmp in sorted({*folder.glob(".*.tmp"), *folder.glob(f"{TEMPORARY_DIR_PREFIX}*")}):
        if not writer_gone(tmp):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
