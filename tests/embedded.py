"""The embedded model as the tests read it: loaded once per test run."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def embedded_fp32_model() -> Any:
    """The embedded SmolLM2-135M-Instruct in fp32 (the product's loader: GGUF converted once), left-padding
    tokenizer."""
    from bench_kernels.models import load_model

    loaded = load_model("embedded", "fp32", "cpu")
    loaded.tokenizer.padding_side = "left"
    return loaded
