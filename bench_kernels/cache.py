"""What the on-disk cache holds (`bench-kernels cache`): its entries with their sizes and what each is for, and
removing them by kind, by age or all. Torch-free: it reads names, sizes and the small JSON records beside them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench_kernels.paths import process_alive, cache_root, temporary_writer

# The cache's folders (paths.cache_dir's first part) and what their entries are for.
KINDS = {
    "models": "the embedded model converted once from its GGUF (every run of model: embedded loads it), or its "
              "config and tokenizer read from the GGUF (validation, before the first run converts it)",
    "onnx": "an ONNX export of the shared decoder (onnxruntime, tensorrt), per model, precision and exporter",
    "engines": "a TensorRT engine, per ONNX export, set of profiles, TensorRT version and target GPU",
    "awq": "AWQ scales searched once per model and precision (int4-awq)",
}
TEMPORARY = "temporary"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CacheEntry:
    """One thing in the cache: a folder or a group of files that belong together (an engine and its checksum)."""

    kind: str  # one of KINDS, TEMPORARY (a writer's unfinished output) or UNKNOWN
    name: str
    paths: tuple[Path, ...]
    size_bytes: int
    modified: float  # newest modification time of its files (seconds since the epoch): when it was last written
    purpose: str
    removable: bool = True  # False: a temporary whose writer still runs (or runs on another host)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return [Path(folder) / name for folder, _, names in os.walk(path) for name in names]
    return [path] if path.exists() else []


def _entry(kind: str, name: str, paths: list[Path], purpose: str, removable: bool = True) -> CacheEntry:
    files = [f for p in paths for f in _files(p)]
    stats = [f.stat() for f in files if f.exists()]
    size = sum(s.st_size for s in stats)
    modified = max([s.st_mtime for s in stats] or [p.stat().st_mtime for p in paths if p.exists()] or [0.0])
    return CacheEntry(kind, name, tuple(paths), size, modified, purpose, removable)


def _temporary(path: Path) -> CacheEntry:
    """A writer's unfinished output: removable once its writer is gone (a later start removes it by itself)."""
    writer = temporary_writer(path)
    if writer is None:
        return _entry(TEMPORARY, path.name, [path], "unfinished output of an unknown writer (its name records none)")
    pid, host = writer
    if host != socket.gethostname():
        return _entry(TEMPORARY, path.name, [path], f"being written by pid {pid} on host {host}", removable=False)
    if process_alive(pid):
        return _entry(TEMPORARY, path.name, [path], f"being written by pid {pid}", removable=False)
    return _entry(TEMPORARY, path.name, [path],
                  f"left by pid {pid}, which no longer runs (killed): removed at the next start of a writer here")


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and (path.name.endswith(".tmp") or path.name.startswith(".tmp-")
                                          or path.name.startswith(".convert-"))


def _onnx_purpose(folder: Path) -> str:
    try:
        meta = json.loads((folder / "export.json").read_text())
    except (OSError, ValueError):
        return KINDS["onnx"] + " (no export.json: incomplete or from an older version)"
    int4 = f", int4 as {meta['int4_format']}" if meta.get("int4_format") else ""
    return (f"ONNX export of {meta.get('model_key')} in {meta.get('precision')}{int4} "
            f"(torch {meta.get('torch_version')}, opset {meta.get('opset')}) for onnxruntime and tensorrt")


def _engine_entries(folder: Path, children: list[Path]) -> list[CacheEntry]:
    """Engines with their checksum and build record as one entry each; timing caches on their own."""
    groups: dict[str, list[Path]] = {}
    for child in children:
        key = child.name.removesuffix(".sha256").removesuffix(".engine").removesuffix(".json")
        groups.setdefault(key, []).append(child)
    entries = []
    for key, paths in sorted(groups.items()):
        if key.startswith("timing-"):
            version = key.removeprefix("timing-").removesuffix(".cache")
            purpose = f"TensorRT timing cache ({version}): shortens later builds"
        else:
            built = folder / f"{key}.json"
            try:
                build_s = json.loads(built.read_text()).get("build_s")
            except (OSError, ValueError):
                build_s = None
            purpose = KINDS["engines"] + (f"; built in {build_s:.0f} s" if isinstance(build_s, (int, float)) else "")
        entries.append(_entry("engines", key, paths, purpose))
    return entries


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry of the cache, kind by kind."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    entries = []
    for top in sorted(root.iterdir()):
        if _is_temporary(top):
            entries.append(_temporary(top))
        elif top.is_dir() and top.name in KINDS:
            children = sorted(top.iterdir())
            entries += [_temporary(c) for c in children if _is_temporary(c)]
            kept = [c for c in children if not _is_temporary(c)]
            if top.name == "engines":
                entries += _engine_entries(top, kept)
            else:
                entries += [_entry(top.name, c.name, [c], _onnx_purpose(c) if top.name == "onnx" else
                                   f"{KINDS[top.name]}: {c.stem}") for c in kept]
        else:
            entries.append(_entry(UNKNOWN, top.name, [top], "not written by this version of bench_kernels"))
    return entries


def select(entries: list[CacheEntry], kinds: list[str] | None = None, older_than_days: float | None = None,
           now: float | None = None) -> list[CacheEntry]:
    """The removable entries of these kinds (all kinds: None) last written more than older_than_days ago (None: any
    age)."""
    now = time.time() if now is None else now
    return [e for e in entries if e.removable and (not kinds or e.kind in kinds)
            and (older_than_days is None or now - e.modified > older_than_days * 86400)]


def remove(entries: list[CacheEntry]) -> int:
    """Delete the entries; the bytes freed."""
    for entry in entries:
        for path in entry.paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return sum(e.size_bytes for e in entries)


def age_text(seconds: float) -> str:
    """'3 min', '5 h', '12 d'."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h" if seconds < 86400 else f"{seconds / 86400:.0f} d"
