"""Where compiled fp8's perplexity loss comes from, on the GPU: the precision (weights, activations) or the kernels."""
import torch

from bench_kernels.decoder import Decoder
from bench_kernels.models import load_model
from bench_kernels.quality import perplexity, ppl_delta_pct
from bench_kernels.runtimes.compiled.fp8_rounding import fp8_round_trip_
from bench_kernels.runtimes.compiled import linear_ops
from bench_kernels.runtimes.compiled.static_decoder import StaticDecoder
from bench_kernels.workload import packaged_text, perplexity_windows, text_token_ids

device = torch.device("cuda")


def fresh():
    return load_model("embedded", "bf16", device)


loaded = fresh()
windows = perplexity_windows(text_token_ids(loaded.tokenizer, packaged_text()), loaded.config.max_position_embeddings)
with torch.inference_mode():
    base, _ = perplexity(lambda ids: loaded.hf_model(ids.to(device)).logits, windows)
    print(f"reference bf16: {base:.4f}")
    static = StaticDecoder.from_decoder(Decoder.from_hf(loaded.hf_model), "fp8", compile_mode=None)
    value, _ = perplexity(lambda ids: static.sequence_logits(ids.to(device)), windows)
    print(f"compiled fp8, GPU kernels (_scaled_mm beyond 64 rows): {value:.4f} ({ppl_delta_pct(value, base):+.3f}%)")
    rows = torch.randn(512, 576, device=device, dtype=torch.bfloat16) * 3
    weight, scale = static.layers[0].o
    kernel = linear_ops.scaled_mm_rowwise(rows, weight, scale).float()
    q, row_scale = linear_ops.quantize_rows_fp8(rows)
    emulated = (q.float() * row_scale) @ weight.float().t() * scale
    print(f"_scaled_mm vs the same math in fp32: max |diff| / max |out| = "
          f"{((kernel - emulated).abs().max() / emulated.abs().max()).item():.2e}")

    def emulate(rows, weight, scale):
        if weight.dtype != linear_ops.FP8:
            return torch.nn.functional.linear(rows, weight)
        q, row_scale = linear_ops.quantize_rows_fp8(rows)
        return ((q.float() * row_scale) @ weight.float().t() * scale).to(rows.dtype)

    linear_ops._library_linear = emulate
    value, _ = perplexity(lambda ids: static.sequence_logits(ids.to(device)), windows)
    print(f"compiled fp8, same math in fp32 on the GPU: {value:.4f} ({ppl_delta_pct(value, base):+.3f}%)")
    for activations in (False, True):
        loaded = fresh()
        fp8_round_trip_(loaded.hf_model, activations=activations)
        value, _ = perplexity(lambda ids: loaded.hf_model(ids.to(device)).logits, windows)
        what = "weights and activations (per row, beyond 64 rows)" if activations else "weights"
        print(f"reference bf16, fp8 round trip of {what}: {value:.4f} ({ppl_delta_pct(value, base):+.3f}%)")
