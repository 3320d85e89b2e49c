"""Claims files: published figures mapped onto this project's presets, runtimes and precisions, read and validated
key by key (pure: the spec checks a file with it before anything loads; claims.py checks the claims against a run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from bench_kernels.architecture import preset_names
from bench_kernels.paths import resolve_project_path

UNITS = {"tokens_per_s": "tokens/s", "build_min": "min", "memory_gb": "GB"}
MEASUREMENTS = {"tokens_per_s": "decode throughput", "build_min": "build", "memory_gb": "peak memory"}
PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int4")
# The context a throughput claim is bounded and matched at when the claim states none.
DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN = 128, 128
REQUIRED_KEYS = ("id", "statement", "source", "metric", "claimed", "model", "runtime", "precision", "gpu")
OPTIONAL_KEYS = ("runtime_version", "gpu_count", "batch_size", "input_len", "output_len")
THROUGHPUT_ONLY_KEYS = ("batch_size", "input_len", "output_len")
class ClaimsError(ValueError):
    """A claims file that cannot be used, naming the file, the claim and the key at fault."""


@dataclass(frozen=True)
class Claim:
    """One published figure and its mapping onto this project's presets, runtimes and precisions."""

    id: str
    statement: str  # the figure in the source's words
    source: str  # the source's description, from the file's `sources`
    metric: str  # a key of UNITS
    claimed: float
    model: str  # preset:<name>
    runtime: str
    precision: str
    gpu: str  # matched case-insensitively within a row's gpu_name
    runtime_version: str = ""  # as the source gives it, e.g. "TensorRT 10.2"
    gpu_count: int = 1
    batch_size: int | None = None
    input_len: int = DEFAULT_INPUT_LEN
    output_len: int = DEFAULT_OUTPUT_LEN

    @property
    def preset(self) -> str:
        return self.model.removeprefix("preset:")


# ---- loading ----------------------------------------------------------------------------------------------------

def load_claims(path: str | Path, runtimes: Sequence[str] | None = None) -> list[Claim]:
    """The claims of a claims file (relative paths against the project root), validated key by key; `runtimes`:
    the names a claim's runtime may take (the spec's check passes the registry's; None: any name)."""
    path = resolve_project_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ClaimsError(f"claims file {path} cannot be read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ClaimsError(f"claims file {path} is not valid YAML: {err}") from None
    where = f"claims file {path}"
    if not isinstance(data, dict):
        raise ClaimsError(f"{where}: expected a mapping with keys 'sources' and 'claims'")
    for key in data:
        if key not in ("sources", "claims"):
            raise ClaimsError(f"{where}: unknown key {key!r}; allowed: sources, claims")
    sources, entries = data.get("sources"), data.get("claims")
    if not isinstance(sources, dict) or not sources or not all(isinstance(v, str) and v for v in sources.values()):
        raise ClaimsError(f"{where}: key 'sources' must map each source's name to its description")
    if not isinstance(entries, list) or not entries:
        raise ClaimsError(f"{where}: key 'claims' must be a non-empty list of claims")
    claims = [_parse_claim(entry, f"{where}, claim {i + 1}", sources, runtimes) for i, entry in enumerate(entries)]
    ids = [claim.id for claim in claims]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ClaimsError(f"{where}: key 'id' repeated: {', '.join(duplicated)}")
    return claims


def _parse_claim(entry: Any, where: str, sources: dict[str, str], runtimes: Sequence[str] | None) -> Claim:
    if not isinstance(entry, dict):
        raise ClaimsError(f"{where}: expected a mapping of keys, got {entry!r}")
    if isinstance(entry.get("id"), str):
        where += f" ({entry['id']!r})"
    for key in entry:
        if key not in REQUIRED_KEYS + OPTIONAL_KEYS:
            raise ClaimsError(f"{where}: unknown key {key!r}; allowed: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in entry:
            raise ClaimsError(f"{where}: missing key {key!r}")

    def text(key: str) -> str:
        value = entry.get(key, "")
        if not isinstance(value, str) or (key in REQUIRED_KEYS and not value.strip()):
            raise ClaimsError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
        return value

    def positive_int(key: str, default: int) -> int:
        value = entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClaimsError(f"{where}: key {key!r} must be a positive integer, got {value!r}")
        return value

    def one_of(key: str, allowed: Sequence[str]) -> str:
        value = text(key)
        if value not in allowed:
            raise ClaimsError(f"{where}: key {key!r} is {value!r}; allowed: {', '.join(allowed)}")
        return value

    metric = one_of("metric", tuple(UNITS))
    claimed = entry["claimed"]
    if isinstance(claimed, bool) or not isinstance(claimed, (int, float)) or not claimed > 0:
        raise ClaimsError(f"{where}: key 'claimed' must be a positive number in {UNITS[metric]}, got {claimed!r}")
    model = text("model")
    if not model.startswith("preset:") or model.removeprefix("preset:") not in preset_names():
        raise ClaimsError(f"{where}: key 'model' is {model!r}; allowed: "
                          + ", ".join(f"preset:{name}" for name in preset_names()))
    if metric == "tokens_per_s" and "batch_size" not in entry:
        raise ClaimsError(f"{where}: missing key 'batch_size' (a tokens_per_s claim is bounded at its batch)")
    if metric != "tokens_per_s":
        for key in THROUGHPUT_ONLY_KEYS:
            if key in entry:
                raise ClaimsError(f"{where}: key {key!r} means nothing for metric {metric!r}; remove it")
    return Claim(id=text("id"), statement=text("statement"), source=sources[one_of("source", list(sources))],
                 metric=metric, claimed=float(claimed), model=model,
                 runtime=one_of("runtime", runtimes) if runtimes is not None else text("runtime"),
                 precision=one_of("precision", PRECISIONS), gpu=text("gpu"), runtime_version=text("runtime_version"),
                 gpu_count=positive_int("gpu_count", 1),
                 batch_size=positive_int("batch_size", 1) if "batch_size" in entry else None,
                 input_len=positive_int("input_len", DEFAULT_INPUT_LEN),
                 output_len=positive_int("output_len", DEFAULT_OUTPUT_LEN))
