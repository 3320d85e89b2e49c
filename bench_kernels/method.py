"""The measurement method's constants: the measurement half measures with them, the report states them."""

from __future__ import annotations

PERPLEXITY_WINDOW = 512  # tokens per scored window (fewer when the model's context is shorter)
PERPLEXITY_WINDOWS = 8  # windows scored: the first ones of the text
MEMORY_SAMPLE_INTERVAL_S = 0.005  # how often device memory in use (outside torch) and a CPU's RSS are sampled
MATMUL_SIZE_GPU = 8192  # the measured matmul rate's GEMMs are n x n x n: this on a GPU,
MATMUL_SIZE_CPU = 2048  # and this on a CPU
# GPUs for a load are sized to run at most this busy: headroom for peaks and queueing, until load runs measure it.
MAX_UTILIZATION = 0.7
BATCH_FORMATION = (
    "Each prompt is exactly input_len tokens of real English text, tokenized without special tokens. "
    "Prompt i of a batch starts at token offset i * (text tokens // batch_size) and wraps around the "
    "text, so the prompts of a batch differ, need no padding, and every runtime gets the same ids."
)


def perplexity_predictions(window: int = PERPLEXITY_WINDOW, windows: int = PERPLEXITY_WINDOWS) -> int:
    """Tokens predicted over the scored windows: every token after a window's first."""
    return windows * (window - 1)
