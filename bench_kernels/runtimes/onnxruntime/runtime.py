"""ONNX Runtime: the shared decoder exported to ONNX, generated step by step with the KV cache fed back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench_kernels.runtimes.base import BuildInfo, Runtime, distribution_version

if TYPE_CHECKING:
    import torch

    from bench_kernels.measure import StepTimer


class OnnxRuntimeRuntime(Runtime):
    """The exported decoder on ONNX Runtime: CPU provider here, CUDA provider with onnxruntime-gpu."""

    name = "onnxruntime"
    description = "the shared decoder exported to ONNX, generated step by step on ONNX Runtime"
    needs_build = True
    runs_torch_model = False
    dynamic_shapes = "any batch and length (dynamic ONNX axes), no rebuild"
    prefill_logits_every_position = True  # the exported decoder's head runs on every position: logits [B, S, V]

    @classmethod
    def version(cls, device: torch.device) -> str:
        return distribution_version("onnxruntime-gpu", "onnxruntime")

    @classmethod
    def prefill_compute_precision(cls, device: torch.device, precision: str) -> str:
        """The CPU provider computes in fp32 (it wraps fp16 / bf16 matmuls, for which it has no kernels, in casts)."""
        return "fp32" if device.type == "cpu" else super().prefill_compute_precision(device, precision)

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        import onnxruntime as ort

        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("this onnxruntime has no CUDAExecutionProvider (providers: "
                    f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu to run it on the GPU")
        return None

    def prepare(self, batch_sizes: list[int], input_lens: list[int], output_len: int) -> BuildInfo:
        from bench_kernels.onnx_export import export_model

        self.export = export_model(self.loaded, self.precision)
        self.session = None
        return BuildInfo(self.export.build_s, self.export.artifact_mb, self.export.cache_hit,
                         notes=f"ONNX export ({self.export.path.parent.name})")

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
