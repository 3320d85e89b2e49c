"""The reference implementation: transformers generate(), eager, dynamic cache; optionally with its layers
split over several GPUs by accelerate (device_map="auto"), as transformers users run a model larger than one
card; its quantized precisions (fp8, int8, int4 weights) through torchao, as transformers users quantize, int4-awq
after the package's AWQ scaling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from bench_kernels.runtimes.base import OPTIONS_CONFIG, Runtime, distribution_version, options_dataclass
from bench_kernels.runtimes.reference.torchao_quantization import TORCHAO_PRECISIONS

if TYPE_CHECKING:
    import torch

    from bench_kernels.timing import StepTimer
    from bench_kernels.models import LoadedModel


@options_dataclass(config=OPTIONS_CONFIG)
class ReferenceOptions:
    """Reference runtime settings (sweep spec: runtime_options: {reference: {...}})."""

    # "auto": accelerate splits the layers over the GPUs (on a CPU-only machine: all on the CPU); "": one device.
    device_map: Literal["", "auto"] = ""
    gpus: Annotated[int, Field(ge=0, le=64)] = 0  # GPUs device_map spreads over (0: every GPU torch sees)


def _map_devices(options: ReferenceOptions, device: torch.device) -> list[Any]:
    """The devices a device_map may use: the first `gpus` GPUs, or the CPU alone."""
    import torch

    if device.type != "cuda":
        return ["cpu"]
    return list(range(options.gpus or torch.cuda.device_count()))


class ReferenceRuntime(Runtime):
    """Hugging Face generate() in eager mode with a fixed output length (EOS suppressed)."""

    name = "reference"
    description = ("transformers generate(), eager, dynamic KV cache; layers split over GPUs with device_map: auto; "
                   "fp8, int8 and int4 weights through torchao's quantize_ (int4-awq: after AWQ scaling)")
    dynamic_shapes = "any batch and length, no rebuild (dynamic KV cache)"
    precisions = ("fp32", "fp16", "bf16", *TORCHAO_PRECISIONS)
    options_class = ReferenceOptions

    @classmethod
    def version(cls, device: torch.device) -> str:
        return ", ".join(v for v in (distribution_version("transformers"), distribution_version("torchao")) if v)

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        from bench_kernels.runtimes.reference.torchao_quantization import torchao_unavailable_reason

        return torchao_unavailable_reason(device, precision) if precision in TORCHAO_PRECISIONS else None

    @classmethod
    def gpu_count(cls, options: ReferenceOptions, device: torch.device) -> int:
        return len(_map_devices(options, device)) if options.device_map == "auto" else 1

    @classmethod
    def options_unavailable_reason(cls, options: ReferenceOptions, device: torch.device, config: Any) -> str | None:
        import torch

        if options.device_map == "auto" and device.type == "cuda" and options.gpus > torch.cuda.device_count():
            return f"device_map over {options.gpus} GPUs; torch sees {torch.cuda.device_count()}"
        return None

    @classmethod
    def load(cls, model: str, precision: str, device: torch.device, seed: int, options: Any) -> LoadedModel:
        """The model on its device(s), its projections quantized by torchao for a quantized precision (after
        placement: torchao packs weights for the device they are on; int4-awq after AWQ's scaling)."""
        loaded = super().load(model, precision, device, seed, options)
        if precision in TORCHAO_PRECISIONS:
            from bench_kernels.runtimes.reference.torchao_quantization import quantize_projections

            quantize_projections(loaded.hf_model, precision)
        return loaded

    @classmethod
    def load_weights(cls, model: str, precision: str, device: torch.device, seed: int, options: Any) -> LoadedModel:
        """With device_map auto, accelerate's balanced map over the GPUs (never CPU offload), each module's weights
        placed (or drawn) on its device, then dispatched with hooks that move activations between devices."""
        if options.device_map != "auto":
            return super().load_weights(model, precision, device, seed, options)
        import psutil
        import torch
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        from bench_kernels.models import load_model

        loaded = load_model(model, precision, device, seed, placement="streamed")
        hf_model = loaded.hf_model
        devices = _map_devices(options, device)
        max_memory = ({d: torch.cuda.mem_get_info(d)[0] for d in devices} if device.type == "cuda"
                      else {"cpu": psutil.virtual_memory().available})
        no_split = hf_model._no_split_modules
        balanced = get_balanced_memory(hf_model, max_memory=max_memory, no_split_module_classes=no_split)
        device_map = infer_auto_device_map(hf_model, max_memory=balanced, no_split_module_classes=no_split)
        elsewhere = sorted({str(d) for d in device_map.values() if d not in max_memory})
        if elsewhere:
            raise RuntimeError(f"the model does not fit on {devices} (accelerate would put parts on {elsewhere})")
        for module_name, module_device in device_map.items():
            loaded.materialize(module_name, module_device)
        loaded.device_map = device_map
        dispatch_model(hf_model, device_map=device_map, skip_keys=hf_model._skip_keys_device_placement)
        return loaded

    def devices(self) -> list[torch.device]:
        import torch

        device_map = getattr(self.loaded, "device_map", None)
        if not device_map or self.device.type != "cuda":
            return [self.device]
        return [torch.device("cuda", index) for index in sorted(set(device_map.values()))]

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        from bench_kernels.runtimes.reference.generation import generate_fixed_length

        return generate_fixed_length(self.loaded.hf_model, input_ids.to(self.device), output_len, timer)

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch

        ids = input_ids.to(self.device)
        with torch.inference_mode():
            # logits_to_keep=1: only the last position's logits, not [B, S, vocab]
            out = self.loaded.hf_model(ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
        return out.logits[:, -1].float().cpu()

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch

        ids = input_ids.to(self.device)
        with torch.inference_mode():
            return self.loaded.hf_model(ids, attention_mask=torch.ones_like(ids)).logits
