"""ONNX Runtime: the shared decoder exported to ONNX, generated step by step with the KV cache fed back.

Precisions: fp32 / fp16 / bf16 graphs as exported; int4 and int4-awq store the projections through ONNX Runtime's
own MatMulNBitsQuantizer (block-quantized MatMulNBits, symmetric round-to-nearest, one scale per group of input
channels) with activations in fp32 on the CPU (fp16 on CUDA); int4-awq AWQ-scales the model first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from bench_kernels.architecture import DECODER_MODEL_TYPES
from bench_kernels.precisions import INT4_PRECISIONS
from bench_kernels.runtimes.base import BuildInfo, Runtime, distribution_version

if TYPE_CHECKING:
    import torch

    from bench_kernels.timing import StepTimer


class OnnxRuntimeRuntime(Runtime):
    """The exported decoder on ONNX Runtime: CPU provider here, CUDA provider with onnxruntime-gpu."""

    name = "onnxruntime"
    model_types = DECODER_MODEL_TYPES  # the shared decoder's families
    description = "the shared decoder exported to ONNX, generated step by step on ONNX Runtime"
    needs_build = True
    runs_torch_model = False
    dynamic_shapes = "any batch and length (dynamic ONNX axes), no rebuild"
    prefill_logits_every_position = True  # the exported decoder's head runs on every position: logits [B, S, V]
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16", *INT4_PRECISIONS)

    @classmethod
    def version(cls, device: torch.device) -> str:
        return distribution_version("onnxruntime-gpu", "onnxruntime")

    @staticmethod
    def int4_activations(device: torch.device) -> str:
        """The float precision around int4 weights: fp32 on the CPU (its provider has no bf16 kernels), fp16 on CUDA."""
        return "fp32" if device.type == "cpu" else "fp16"

    @classmethod
    def prefill_compute_precision(cls, device: torch.device, precision: str) -> str:
        """The CPU provider computes in fp32 (it wraps fp16 / bf16 matmuls, for which it has no kernels, in casts);
        MatMulNBits dequantizes int4 to the activations' precision."""
        if device.type == "cpu":
            return "fp32"
        if precision in INT4_PRECISIONS:
            return cls.int4_activations(device)
        return super().prefill_compute_precision(device, precision)

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        import onnxruntime as ort

        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("this onnxruntime has no CUDAExecutionProvider (providers: "
                    f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu to run it on the GPU")
        return None

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        from bench_kernels.onnx_export import export_model

        if self.precision in INT4_PRECISIONS:
            self.export = export_model(self.loaded, self.precision, self.int4_activations(self.device), "MatMulNBits")
        else:
            self.export = export_model(self.loaded, self.precision)
        self.session = None
        return BuildInfo(self.export.build_s, self.export.artifact_mb, self.export.cache_hit,
                         notes=f"ONNX export ({self.export.path.parent.name})")

    def weight_bytes(self) -> int:
        return self.export.weight_bytes(self.loaded.config)

    def kv_element_size(self) -> int:
        """Bytes per cached element in the graph's float precision (int4 precisions load bf16 but export fp32)."""
        import torch

        from bench_kernels.onnx_export import PRECISIONS

        return torch.finfo(PRECISIONS[self.export.dtype]).bits // 8

    def _session(self):
        """The inference session, created on first use (the build stage only exports)."""
        from bench_kernels.runtimes.onnxruntime.generate import make_session

        if self.session is None:
            self.session = make_session(self.export.path, self.device.type)
        return self.session

    def generate(self, input_ids: torch.Tensor, output_len: int, timer: StepTimer) -> torch.Tensor:
        import numpy as np
        import torch

        from bench_kernels.models import eos_token_ids
        from bench_kernels.runtimes.onnxruntime.generate import ort_greedy_generate

        session = self._session()
        ids = input_ids.numpy().astype(np.int64)  # ids: [B, S]
        timer.start()
        tokens = ort_greedy_generate(session, ids, None, output_len, on_token=timer.token,
                                     suppress_token_ids=eos_token_ids(self.loaded))
        return torch.from_numpy(tokens)

    def first_step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        from bench_kernels.runtimes.onnxruntime.generate import first_step_logits

        logits = first_step_logits(self._session(), input_ids.numpy().astype(np.int64), None)
        return torch.from_numpy(np.asarray(logits[:, -1], dtype=np.float32))

    def sequence_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        from bench_kernels.runtimes.onnxruntime.generate import first_step_logits

        return torch.from_numpy(np.asarray(first_step_logits(self._session(), input_ids.numpy().astype(np.int64),
                                                             None)))

    def close(self) -> None:
        self.session = None
