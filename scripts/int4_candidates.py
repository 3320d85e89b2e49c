"""The compiled runtime's int4 decode candidates (linear_ops.decode_candidates: the CUDA-core GEMV at one row,
the tensor-core kernel by row tile) at the projection shapes of the presets named (default Llama-3.1-70B), each
checked against the float math, then timed from device memory (rotated over weight copies > 2 x L2); prints the
three fastest per shape and row count with their share of the copy bandwidth. On a CUDA machine:
`python scripts/int4_candidates.py [PRESET...]`."""
import sys
import time

import torch

from bench_kernels.quantization import dequantize_int4, quantize_int4
from bench_kernels.rates import device_rates
from bench_kernels.runtimes.compiled.kernel_bench import projection_shapes
from bench_kernels.runtimes.compiled.linear_ops import (decode_candidates, int4_words, l2_cache_bytes, rotated_sets,
                                                        rotating_time_ms)


def main():
    copy_gbps = device_rates("cuda").streaming_gbps
    l2 = l2_cache_bytes(torch.device("cuda"))
    print(torch.cuda.get_device_name(), f"copy {copy_gbps:.0f} GB/s, L2 {l2 / 1e6:.1f} MB", flush=True)
    t0 = time.time()
    for preset in sys.argv[1:] or ["llama-3.1-70b"]:
        for name, (n, k) in projection_shapes(preset).items():
            weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            q = quantize_int4(weight)
            words = int4_words(q.packed, q.group_size)
            reference = dequantize_int4(q, torch.float32)
            nbytes = words.numel() * 4 + q.scales.numel() * 2
            sets = rotated_sets((words, q.scales), l2)
            for rows in (1, 8, 32, 64):
                x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
                expected = x.float() @ reference.t()
                results = []
                for label, run in decode_candidates(x, words, q.scales).items():
                    try:
                        error = ((run(x, words, q.scales).float() - expected).abs().max() / expected.abs().max()).item()
                        if not error <= 1e-2:
                            print(f"  {preset} {name} rows {rows} {label}: error {error:.3g}", flush=True)
                            continue
                        ms = rotating_time_ms(lambda w, s, run=run, x=x: run(x, w, s), sets)
                    except Exception as err:  # noqa: BLE001
                        print(f"  {preset} {name} rows {rows} {label}: {type(err).__name__} {str(err)[:300]}")
                        continue
                    results.append((ms, label))
                results.sort()
                best = " | ".join(f"{label} {ms * 1e3:.1f}us {nbytes / ms / 1e6 / copy_gbps:.2f}"
                                  for ms, label in results[:3])
                print(f"{preset} {name} {n}x{k} rows {rows}: {best}", flush=True)
            del sets
        print(f"[{time.time() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
