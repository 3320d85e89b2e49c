"""Sweep spec: one YAML per sweep, validated completely before any model loads.

Which runtimes and precisions exist, and each runtime's options, come from the runtime registry.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bench_kernels.method import MAX_UTILIZATION, PERPLEXITY_WINDOWS
from bench_kernels.paths import find_project, resolve_project_path
from bench_kernels.results import read_rows
from bench_kernels.runtimes import RUNTIMES, get_runtime, known_precisions, runtime_names

log = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda"]
# Bounds on what a sweep can sensibly ask for; beyond them a typo is far likelier than intent.
MAX_BATCH_SIZE = 4096
MAX_WARMUP = 100
MAX_REPEATS = 1000
# MLPerf gates a result on reaching 99% of the reference's accuracy; for perplexity that reads as at most
# 1% higher than the reference's.
DEFAULT_MAX_PPL_DELTA_PCT = 1.0
# Keys of earlier versions, and where their settings live now.
MOVED_KEYS = {
    "trt_workspace_gb": "runtime_options: {tensorrt: {workspace_gb: ...}}",
    "trt_optimization_level": "runtime_options: {tensorrt: {optimization_level: ...}}",
    "trt_allow_rebuild": "runtime_options: {tensorrt: {allow_rebuild: ...}}",
}
# Keys naming a path (quality_evidence: a list of them); relative ones are taken from the spec file's folder (spec_dir).
PATH_KEYS = ("reports_dir", "prompt_file", "claims", "quality_evidence")
DEFAULT_REPORTS_DIR = "reports"


# Latency targets by name: MLPerf Inference's limits for Llama-3.1-8B (time to first token, time per output token).
SLO_PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "mlperf-interactive": {"ttft_ms": 500.0, "tpot_ms": 30.0},
    "mlperf-conversational": {"ttft_ms": 2000.0, "tpot_ms": 100.0},
}


class Workload(BaseModel):
    """The traffic the user will serve: how many requests run at once, and their lengths."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    batch_size: int = Field(ge=1, le=MAX_BATCH_SIZE)  # the most requests the traffic keeps in flight at once
    input_len: int = Field(ge=1)
    output_len: int = Field(ge=1)


class LatencyTargets(BaseModel):
    """Service-level objectives: time to first token and time per output token, each optional."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)


class Load(BaseModel):
    """Requests per day (their lengths: the workload's unless given) for sizing a deployment, at most
    max_utilization busy."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    requests_per_day: float = Field(gt=0)
    input_len: int | None = Field(None, ge=1)
    output_len: int | None = Field(None, ge=1)
    max_utilization: float = Field(MAX_UTILIZATION, gt=0, le=1)


class ConfigError(ValueError):
    """A sweep spec that cannot run; the message names every bad key and what it allows."""


def _yaml_if_text(value: Any) -> Any:
    """papermill's `-p batch_sizes "[1, 4]"` passes a string: read it as the YAML it is."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


class SweepConfig(BaseModel):
    """Everything one sweep needs; field names are exactly the notebooks' parameter names."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    run_name: str = "notebook"
    model: str = "embedded"
    runtimes: list[str] = Field(default_factory=lambda: ["reference", "onnxruntime", "tensorrt", "compiled"],
                                min_length=1)
    precisions: list[str] = Field(default_factory=lambda: ["fp32"], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    input_lens: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    output_len: int = Field(8, ge=1)
    warmup: int = Field(1, ge=0, le=MAX_WARMUP)
    repeats: int = Field(2, ge=1, le=MAX_REPEATS)
    device: DeviceName = "auto"
    prompt_file: str = ""
    reports_dir: str = DEFAULT_REPORTS_DIR
    spec_dir: str = ""  # the folder relative paths are taken from (load_config: the spec's); empty: the project root
    seed: int = Field(0, ge=0)
    cpu_threads: int = Field(0, ge=0, le=4096)
    runtime_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    precisions_by_runtime: dict[str, list[str]] = Field(default_factory=dict)
    max_ppl_delta_pct: float = Field(DEFAULT_MAX_PPL_DELTA_PCT, ge=0, le=1000)
    # Perplexity scores the packaged text's first windows; the text after the last possible one calibrates AWQ.
    perplexity_windows: int = Field(PERPLEXITY_WINDOWS, ge=1, le=PERPLEXITY_WINDOWS)
    workload: dict[str, Any] = Field(default_factory=dict)
    slo: str | dict[str, float] = "none"
    gpu_hour_usd: float = Field(0.0, ge=0, le=10_000)
    load: dict[str, Any] = Field(default_factory=dict)
    profile: bool = False
    claims: str = ""
    quality_evidence: list[str] = Field(default_factory=list)  # results folders of real-weight runs
    traffic: dict[str, Any] = Field(default_factory=dict)  # bench_kernels.traffic.spec; empty: no load run

    @field_validator("runtimes", "precisions", "batch_sizes", "input_lens", "runtime_options", "precisions_by_runtime",
                     "workload", "slo", "load", "traffic", mode="before")
    @classmethod
    def _parse_text(cls, value: Any) -> Any:
        return _yaml_if_text(value)

    @field_validator("quality_evidence", mode="before")
    @classmethod
    def _one_folder_or_several(cls, value: Any) -> Any:
        value = _yaml_if_text(value)
        return [value] if isinstance(value, str) else value

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_folder_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("must be letters, digits, '.', '_' or '-' (it names the folder reports/<run_name>/)")
        return value

    @field_validator("batch_sizes", "input_lens")
    @classmethod
    def _positive_unique(cls, values: list[int], info: Any) -> list[int]:
        problems = []
        bad = [v for v in values if v < 1]
        if bad:
            problems.append(f"every value must be >= 1, got {bad}")
        too_big = [v for v in values if info.field_name == "batch_sizes" and v > MAX_BATCH_SIZE]
        if too_big:
            problems.append(f"every value must be <= {MAX_BATCH_SIZE}, got {too_big}")
        if len(set(values)) != len(values):
            problems.append(f"values must be unique, got {values}")
        if problems:
            raise ValueError("; ".join(problems))
        return sorted(values)

    @field_validator("runtimes")
    @classmethod
    def _registered_runtimes(cls, values: list[str]) -> list[str]:
        return _known_unique(values, list(RUNTIMES), "runtime")

    @field_validator("precisions")
    @classmethod
    def _known_precisions(cls, values: list[str]) -> list[str]:
        return _known_unique(values, known_precisions(), "precision")

    @field_validator("slo")
    @classmethod
    def _slo_preset_or_targets(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(value, str) and value not in SLO_PRESETS:
            raise ValueError(f"unknown preset {value!r}; allowed: {', '.join(map(repr, SLO_PRESETS))} "
                             "or a mapping {ttft_ms: ..., tpot_ms: ...}")
        if isinstance(value, dict):
            _nested(LatencyTargets, value)
        return value

    @model_validator(mode="after")
    def _rules_across_keys(self, info: ValidationInfo) -> SweepConfig:
        """Every rule that reads several keys, all reported at once; with the context check_model, also what the
        model's config and tokenizer say about the lengths and the prompt file (model_problems)."""
        problems = self._workload_problems() + self._precisions_by_runtime_problems()
        if info.context and info.context.get("check_model"):
            problems += model_problems(self.model, self.input_lens, self.output_len, self.prompt_file)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _workload_problems(self) -> list[str]:
        """workload and load are complete, and their lengths are shapes the sweep measures: the report reads them."""
        try:
            _nested(Workload, {"batch_size": self.batch_sizes[0], "input_len": self.input_lens[0],
                               "output_len": self.output_len, **self.workload}, "workload")
            if self.load:
                _nested(Load, self.load, "load")
        except ValueError as err:
            return [str(err)]
        shape = self.workload_shape
        problems = []
        if shape.input_len not in self.input_lens:
            problems.append(f"workload.input_len {shape.input_len} is not measured; allowed: {self.input_lens}")
        if shape.output_len != self.output_len:
            problems.append(f"workload.output_len {shape.output_len} is not measured; allowed: {self.output_len}")
        if self.load:
            load = self.sized_load
            if load.input_len not in self.input_lens:
                problems.append(f"load.input_len {load.input_len} is not measured; allowed: {self.input_lens}")
            if load.output_len != self.output_len:
                problems.append(f"load.output_len {load.output_len} is not measured; allowed: {self.output_len}")
        return problems

    @property
    def workload_shape(self) -> Workload:
        """The user's workload; without one, the sweep's first shape."""
        return Workload(**{"batch_size": self.batch_sizes[0], "input_len": self.input_lens[0],
                           "output_len": self.output_len, **self.workload})

    @property
    def targets(self) -> LatencyTargets:
        return LatencyTargets(**(SLO_PRESETS[self.slo] if isinstance(self.slo, str) else self.slo))

    @property
    def sized_load(self) -> Load | None:
        """The load with its lengths filled in from the workload (None without a load)."""
        if not self.load:
            return None
        shape = self.workload_shape
        return Load(**{"input_len": shape.input_len, "output_len": shape.output_len, **self.load})

    @model_validator(mode="after")
    def _traffic_valid(self) -> SweepConfig:
        from bench_kernels.traffic.spec import check_runtimes, parse_traffic

        spec = parse_traffic(self.traffic)
        problems = check_runtimes(spec, self.runtimes, {n: c.batching_policies for n, c in RUNTIMES.items()}) \
            if spec else []
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("claims")
    @classmethod
    def _claims_file_reads(cls, value: str) -> str:
        if value:
            from bench_kernels.claims_file import ClaimsError, load_claims

            try:
                load_claims(value, runtime_names())
            except ClaimsError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("quality_evidence")
    @classmethod
    def _evidence_has_real_weight_verdicts(cls, folders: list[str]) -> list[str]:
        problems = [problem for folder in folders if (problem := evidence_problem(resolve_project_path(folder)))]
        if problems:
            raise ValueError("; ".join(problems))
        return folders

    @field_validator("spec_dir")
    @classmethod
    def _spec_dir_exists(cls, value: str) -> str:
        if value and not Path(value).expanduser().is_dir():
            raise ValueError(f"folder {Path(value).expanduser().resolve()} does not exist (the spec file's folder, "
                             "which relative paths are taken from)")
        return value

    @field_validator("prompt_file")
    @classmethod
    def _prompt_file_exists(cls, value: str) -> str:
        if value and not resolve_project_path(value).is_file():
            raise ValueError(f"file {resolve_project_path(value)} does not exist (empty: the packaged text)")
        return value

    @field_validator("runtime_options")
    @classmethod
    def _options_per_runtime(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        problems = []
        for name, options in value.items():
            if name not in RUNTIMES:
                problems.append(f"{name}: unknown runtime; allowed: {', '.join(RUNTIMES)}")
                continue
            options_class = get_runtime(name).options_class
            if not isinstance(options, dict):
                problems.append(f"{name}: expected a mapping of option names to values, got {options!r}")
                continue
            try:
                options_class(**options)
            except ValidationError as err:
                allowed = ", ".join(options_class.__dataclass_fields__) or "(none: this runtime takes no options)"
                for item in err.errors():
                    key = ".".join(str(p) for p in item["loc"]) or "<top level>"
                    message = "unknown key" if item["type"] in ("unexpected_keyword_argument", "extra_forbidden") \
                        else item["msg"]
                    problems.append(f"{name}.{key}: {message}; allowed keys: {allowed}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    def _precisions_by_runtime_problems(self) -> list[str]:
        """Names must be registered runtimes and known precisions (a typo is an error); a runtime of the sweep
        must keep at least one of `precisions`. Entries for runtimes this sweep leaves out are ignored, so
        trimming `runtimes` needs no other edit."""
        problems = []
        for name, chosen in self.precisions_by_runtime.items():
            if name not in RUNTIMES:
                problems.append(f"precisions_by_runtime.{name}: unknown runtime; allowed: {', '.join(RUNTIMES)}")
                continue
            unknown = [p for p in chosen if p not in known_precisions()]
            if unknown:
                problems.append(f"precisions_by_runtime.{name}: unknown precision(s) {unknown}; allowed: "
                                f"{', '.join(known_precisions())}")
            elif name in self.runtimes and not self.precisions_for(name):
                problems.append(f"precisions_by_runtime.{name}: none of {chosen} is in precisions "
                                f"({', '.join(self.precisions)})")
        return problems

    def precisions_for(self, runtime: str) -> list[str]:
        """The precisions this sweep runs `runtime` in: precisions_by_runtime[runtime] if set, else all of them."""
        return [p for p in self.precisions if p in self.precisions_by_runtime.get(runtime, self.precisions)]

    def options_for(self, runtime: str) -> Any:
        """The runtime's typed options (its defaults, updated by runtime_options[runtime])."""
        return get_runtime(runtime).options_class(**self.runtime_options.get(runtime, {}))

    @property
    def run_dir(self) -> Path:
        """reports/<run_name>/, relative paths taken from the project root."""
        return resolve_project_path(self.reports_dir) / self.run_name

    @property
    def evidence_dirs(self) -> tuple[Path, ...]:
        """The quality_evidence folders, relative paths taken from the project root."""
        return tuple(resolve_project_path(folder) for folder in self.quality_evidence)

    @property
    def max_total_len(self) -> int:
        """Longest sequence the sweep asks of the model: prompt plus generated tokens."""
        return max(self.input_lens) + self.output_len


def evidence_problem(folder: Path) -> str:
    """Why a results folder cannot be quality evidence ('' when it can): it must hold a results.csv with a
    real-weight perplexity measured against the reference."""
    csv_path = folder / "results.csv"
    if not folder.is_dir():
        return f"folder {folder} does not exist (a results folder of another run, e.g. reports/<run_name>)"
    if not csv_path.is_file():
        return f"{folder} holds no results.csv (a results folder of another run, e.g. reports/<run_name>)"
    if not any(r.get("stage") == "quality" and r.get("status") == "ok" and r.get("weights") == "real"
               and r.get("ppl_delta_pct") for r in read_rows(csv_path)):
        return (f"{csv_path} holds no real-weight perplexity against the reference (quality rows of a run with real "
                "weights), so it carries no accuracy-gate verdict to cite")
    return ""


def _nested(model: type[BaseModel], data: dict[str, Any], key: str = "") -> BaseModel:
    """A nested mapping validated, its errors named key.field with the allowed fields."""
    try:
        return model(**data)
    except ValidationError as err:
        allowed = ", ".join(model.model_fields)
        raise ValueError("; ".join(
            f"{key + '.' if key else ''}{'.'.join(map(str, item['loc']))}: "
            + ("unknown key" if item["type"] == "extra_forbidden" else item["msg"]) + f" (allowed keys: {allowed})"
            for item in err.errors())) from None


def _known_unique(values: list[str], allowed: list[str], what: str) -> list[str]:
    """values, each one of allowed and none twice; else an error naming the bad ones and the allowed ones."""
    problems = []
    unknown = [v for v in values if v not in allowed]
    if unknown:
        problems.append(f"unknown {what}(s) {unknown}; allowed: {', '.join(map(repr, allowed))}")
    if len(set(values)) != len(values):
        problems.append(f"values must be unique, got {values}")
    if problems:
        raise ValueError("; ".join(problems))
    return values


def defaults() -> dict[str, Any]:
    """Every key with its default value (`bench-kernels validate --show-defaults`)."""
    return SweepConfig().model_dump()


def _error_lines(err: ValidationError) -> list[str]:
    """One line per problem pydantic found, naming the key (rules across keys: their messages name them)."""
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<top level>"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(SweepConfig.model_fields)
            lines.append(f"{key}: unknown key; allowed keys: {allowed}")
            continue
        got = item.get("input")
        message = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:
            lines.extend(message.split("\n  "))
            continue
        # A message that already quotes the value (e.g. papermill's text '[0]', read as [0]) says it once.
        quoted = str(_yaml_if_text(got)) in message
        shown = not quoted and (not isinstance(got, (dict, list)) or len(repr(got)) < 80)
        lines.append(f"{key}: {message}" + (f" (got {got!r})" if shown else ""))
    return lines


def _invalid(source: str, problems: list[str]) -> ConfigError:
    return ConfigError(f"invalid sweep spec {source}:\n" + "\n".join(f"  {p}" for p in problems))


# The keys model_problems reads: checked against the model only when each of them is valid itself.
MODEL_KEYS = ("model", "input_lens", "output_len", "prompt_file")


def model_problems(model: str, input_lens: list[int], output_len: int, prompt_file: str) -> list[str]:
    """What the model's config and tokenizer (no weights) say about the spec: a model that cannot be resolved,
    lengths beyond its maximum positions, a prompt_file with fewer tokens than the longest input."""
    from bench_kernels.models import ModelError, resolve_model_config, resolve_tokenizer
    from bench_kernels.workload import MIN_TEXT_TOKENS

    try:
        hf_config = resolve_model_config(model)
    except ModelError as err:
        return [f"model: {err}"]
    problems = []
    max_positions = hf_config.max_position_embeddings
    too_long = [n for n in input_lens if n + output_len > max_positions]
    if too_long:
        problems.append(f"input_lens: {too_long} plus output_len {output_len} exceed the model's maximum positions "
                        f"{max_positions} (model {model!r}); allowed: input_len + output_len <= {max_positions}")
    path = resolve_project_path(prompt_file) if prompt_file else None
    if path is not None and path.is_file():  # a missing file is the prompt_file key's own error
        needed = max(max(input_lens), MIN_TEXT_TOKENS)
        try:
            tokens = len(resolve_tokenizer(model)(path.read_text(encoding="utf-8"),
                                                  add_special_tokens=False)["input_ids"])
        except (OSError, ValueError) as err:
            problems.append(f"prompt_file: {path} cannot be tokenized with the model's tokenizer: {err}")
        else:
            if tokens < needed:
                problems.append(f"prompt_file: {path} has {tokens} tokens (model {model!r}'s tokenizer), fewer than "
                                f"the longest input needs ({needed}); give a longer text (empty: the packaged text)")
    return problems


def parse_config(data: Mapping[str, Any], source: str = "<parameters>", *, check_model: bool = False) -> SweepConfig:
    """Validate a mapping of parameters; raise ConfigError listing every problem at once. check_model: also the
    lengths and the prompt file against the model's config and tokenizer (model_problems)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"invalid sweep spec {source}: expected a mapping of keys, got {type(data).__name__}")
    moved = [f"{key}: this key has moved; use {MOVED_KEYS[key]}" for key in data if key in MOVED_KEYS]
    fields = {k: v for k, v in data.items() if k not in MOVED_KEYS}
    spec_dir = fields.get("spec_dir")
    if isinstance(spec_dir, str) and spec_dir and Path(spec_dir).expanduser().is_dir():
        # papermill passes the spec's values only; spec_dir (-p spec_dir FOLDER) says where its relative paths start.
        # Notebook parameters always carry reports_dir: at its default it means what a spec without one means.
        folder = Path(spec_dir).expanduser().resolve()
        if fields.get("reports_dir", DEFAULT_REPORTS_DIR) == DEFAULT_REPORTS_DIR:
            fields["reports_dir"] = str(default_reports_dir(folder))
        fields = _relative_to(folder, {**fields, "spec_dir": str(folder)})
    try:
        cfg = SweepConfig.model_validate(fields, context={"check_model": check_model})
    except ValidationError as err:
        problems = _error_lines(err)
        bad_keys = {str(item["loc"][0]) for item in err.errors() if item["loc"]}
        # Rules across keys run only once every key is valid; the model's rules need only their own keys.
        if check_model and bad_keys and not bad_keys & set(MODEL_KEYS):
            values = {key: _yaml_if_text(fields[key]) if key in fields
                      else SweepConfig.model_fields[key].get_default(call_default_factory=True) for key in MODEL_KEYS}
            problems += model_problems(**values)
        raise _invalid(source, problems + moved) from None
    if moved:
        raise _invalid(source, moved)
    return cfg


def _relative_to(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Relative paths of a spec (PATH_KEYS, local:<folder>) made absolute against folder."""
    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            return str((folder / value).resolve())
        return value

    out = dict(data)
    for key in PATH_KEYS:
        value = _yaml_if_text(out[key]) if key == "quality_evidence" and key in out else out.get(key)
        if isinstance(value, list):
            out[key] = [absolute(v) for v in value]
        elif value is not None:
            out[key] = absolute(value)
    model = out.get("model")
    if isinstance(model, str) and model.startswith("local:"):
        ref = Path(model.removeprefix("local:")).expanduser()
        out["model"] = f"local:{ref if ref.is_absolute() else (folder / ref).resolve()}"
    return out


def load_config(path: str | Path, *, check_model: bool = True,
                overrides: Mapping[str, Any] | None = None) -> SweepConfig:
    """Read and validate a params YAML (overrides replacing some of its keys); its relative paths are taken from the
    YAML file's folder, and without a reports_dir it writes to its project's reports/ (or, outside a project, to
    reports/ beside it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"params file not found: {path.resolve()}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {path} is not valid YAML: {err}") from None
    if isinstance(data, dict):
        folder = path.resolve().parent
        if isinstance(data.get("spec_dir"), str) and data["spec_dir"]:
            folder = (folder / Path(data["spec_dir"]).expanduser()).resolve()
        data = _relative_to(folder, {"reports_dir": str(default_reports_dir(folder)), **data, **(overrides or {}),
                                     "spec_dir": str(folder)})
    return parse_config(data, str(path), check_model=check_model)


def default_reports_dir(spec_folder: Path) -> Path:
    """Where a spec without reports_dir writes: its project's reports/ for a spec inside a project, else reports/
    beside the spec."""
    return (find_project(spec_folder) or spec_folder) / "reports"


def validate_model(cfg: SweepConfig, source: str = "") -> Any:
    """Check an already parsed spec against its model (model_problems); return the model's config."""
    from bench_kernels.models import resolve_model_config

    problems = model_problems(cfg.model, cfg.input_lens, cfg.output_len, cfg.prompt_file)
    if problems:
        raise _invalid(source, problems)
    return resolve_model_config(cfg.model)


def family_warnings(cfg: SweepConfig, hf_config: Any) -> list[str]:
    """Runtimes of the sweep that do not run the model's family (its config's model_type): their rows will be
    unavailable, with that reason."""
    reasons = (get_runtime(name).model_unavailable_reason(hf_config) for name in cfg.runtimes)
    return [f"{reason}: its rows will be unavailable" for reason in reasons if reason]


def check_device(cfg: SweepConfig, source: str = "") -> None:
    """A sweep that asks for a GPU on a machine without one fails here, not after loading models."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"invalid sweep spec {source}:\n  device: 'cuda' was asked for but torch sees no CUDA "
                          "GPU on this machine; allowed here: 'auto', 'cpu'")


def config_from_namespace(namespace: Mapping[str, Any], *, for_report: bool = False) -> SweepConfig:
    """Build the config from a notebook's parameter variables (the `parameters` cell).

    for_report: the report reads results only, so neither the model nor the device must be reachable here.
    """
    data = {name: namespace[name] for name in SweepConfig.model_fields if name in namespace}
    cfg = parse_config(data, "<notebook parameters>", check_model=not for_report)
    if not for_report:
        from bench_kernels.models import resolve_model_config

        check_device(cfg, "<notebook parameters>")
        for warning in family_warnings(cfg, resolve_model_config(cfg.model)):
            log.warning("warning: %s", warning)
    return cfg
