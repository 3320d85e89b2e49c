"""Sweep spec: one YAML per sweep, validated completely before any model loads."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench_kernels.paths import resolve_project_path

log = logging.getLogger(__name__)

RuntimeName = Literal["reference", "onnxruntime", "tensorrt", "compiled"]
Precision = Literal["fp32", "fp16", "bf16", "fp8"]
DeviceName = Literal["auto", "cpu", "cuda"]

RUNTIME_NAMES: tuple[str, ...] = get_args(RuntimeName)
PRECISIONS: tuple[str, ...] = get_args(Precision)
MODEL_FORMS = "'embedded', 'preset:<name>', 'local:<hf dir>' or 'hub:<repo id>'"


class ConfigError(ValueError):
    """A sweep spec that cannot run; the message names every bad key and what it allows."""


class SweepConfig(BaseModel):
    """Everything one sweep needs; field names are exactly the notebooks' parameter names."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    run_name: str = "notebook"
    model: str = "embedded"
    runtimes: list[RuntimeName] = Field(default_factory=lambda: ["reference", "onnxruntime", "tensorrt", "compiled"],
                                         min_length=1)
    precisions: list[Precision] = Field(default_factory=lambda: ["fp32"], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    input_lens: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    output_len: int = Field(8, ge=1)
    warmup: int = Field(1, ge=0)
    repeats: int = Field(2, ge=1)
    device: DeviceName = "auto"
    prompt_file: str = ""
    reports_dir: str = "reports"
    seed: int = 0
    cpu_threads: int = Field(0, ge=0)
    trt_workspace_gb: float = Field(4.0, gt=0)
    trt_optimization_level: int = Field(3, ge=0, le=5)
    trt_allow_rebuild: bool = True

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_folder_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (it names the folder reports/<run_name>/)")
        return value

    @field_validator("batch_sizes", "input_lens")
    @classmethod
    def _positive_unique(cls, values: list[int]) -> list[int]:
        bad = [v for v in values if v < 1]
        if bad:
            raise ValueError(f"every value must be >= 1, got {bad}")
        if len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return sorted(values)

    @field_validator("runtimes", "precisions")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"values must be unique, got {values}")
        return values

    @field_validator("model")
    @classmethod
    def _model_form(cls, value: str) -> str:
        kind, _, rest = value.partition(":")
        if value == "embedded" or (kind in ("preset", "local", "hub") and rest):
            return value
        raise ValueError(f"unknown model {value!r}; allowed: {MODEL_FORMS}")

    @property
    def run_dir(self) -> Path:
        """reports/<run_name>/, relative paths taken from the project root."""
        return resolve_project_path(self.reports_dir) / self.run_name

    @property
    def max_total_len(self) -> int:
        """Longest sequence the sweep asks of the model: prompt plus generated tokens."""
        return max(self.input_lens) + self.output_len


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<top level>"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(SweepConfig.model_fields)
            lines.append(f"  {key}: unknown key; allowed keys: {allowed}")
        else:
            got = item.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, (dict, list)) or len(repr(got)) < 80 else ""
            lines.append(f"  {key}: {item['msg']}{got_text}")
    return f"invalid sweep spec {source}:\n" + "\n".join(lines)


def check_against_model(cfg: SweepConfig, max_positions: int, source: str = "") -> None:
    """Reject lengths the model cannot hold (prompt + output beyond its maximum positions)."""
    if cfg.max_total_len > max_positions:
        too_long = [n for n in cfg.input_lens if n + cfg.output_len > max_positions]
        raise ConfigError(
            f"invalid sweep spec {source}:\n  input_lens: {too_long} plus output_len {cfg.output_len} exceed "
            f"the model's maximum positions {max_positions} (model {cfg.model!r}); "
            f"allowed: input_len + output_len <= {max_positions}"
        )


def parse_config(data: Mapping[str, Any], source: str = "<parameters>") -> SweepConfig:
    """Validate a mapping of parameters; raise ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"invalid sweep spec {source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return SweepConfig(**data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path, *, check_model: bool = True) -> SweepConfig:
    """Read and validate a params YAML, including the lengths against the model's config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {path} is not valid YAML: {err}") from None
    cfg = parse_config(data, str(path))
    if check_model:
        validate_model(cfg, str(path))
    return cfg


def validate_model(cfg: SweepConfig, source: str = "") -> None:
    """Resolve the model's config (cheap: no weights) and check the sweep's lengths against it."""
    from bench_kernels.models import ModelError, resolve_model_config

    try:
        hf_config = resolve_model_config(cfg.model)
    except ModelError as err:
        raise ConfigError(f"invalid sweep spec {source}:\n  model: {err}") from None
    check_against_model(cfg, hf_config.max_position_embeddings, source)


def config_from_namespace(namespace: Mapping[str, Any]) -> SweepConfig:
    """Build the config from a notebook's parameter variables (the `parameters` cell)."""
    data = {name: namespace[name] for name in SweepConfig.model_fields if name in namespace}
    cfg = parse_config(data, "<notebook parameters>")
    validate_model(cfg, "<notebook parameters>")
    return cfg
