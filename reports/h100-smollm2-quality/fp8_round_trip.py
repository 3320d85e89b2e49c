"""Perplexity of the reference bf16 with its projection weights rounded to fp8 e4m3 per channel and back."""
import torch

from bench_kernels.models import load_model
from bench_kernels.quality import fp8_round_trip_, perplexity, perplexity_windows, ppl_delta_pct
from bench_kernels.workload import packaged_text, text_token_ids

device = torch.device("cuda")
loaded = load_model("embedded", "bf16", device)
windows = perplexity_windows(text_token_ids(loaded.tokenizer, packaged_text()), loaded.config.max_position_embeddings)


def score(ids):
    return loaded.hf_model(ids.to(device)).logits


with torch.inference_mode():
    base, tokens = perplexity(score, windows)
    print(f"reference bf16 perplexity {base:.4f} over {tokens} predictions")
    print(f"rounded {fp8_round_trip_(loaded.hf_model)} linear layers to fp8 e4m3 per output channel and back")
    rounded, _ = perplexity(score, windows)
print(f"reference bf16, fp8 round-trip weights: perplexity {rounded:.4f} ({ppl_delta_pct(rounded, base):+.3f}%)")
