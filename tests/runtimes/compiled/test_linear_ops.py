"""The decode-kernel chooser: speed never picks a candidate whose product is wrong."""

from __future__ import annotations

import pytest
import torch

from bench_kernels.runtimes.compiled.linear_ops import (CANDIDATE_MAX_ERROR, FP8_ROWS_CONFIGS, FP8_ROWS_PREFIX,
                                                        accurate_candidates, decode_candidates, quantize_fp8,
                                                        relative_error)


def test_a_candidate_far_from_the_library_path_is_left_out():
    torch.manual_seed(0)
    rows, weight = torch.randn(4, 64), torch.randn(32, 64)
    candidates = {
        "exact": lambda r, w, s: r @ w.t(),
        "slightly off": lambda r, w, s: (r @ w.t()) * (1 + CANDIDATE_MAX_ERROR / 2),
        "wrong": lambda r, w, s: (r @ w.t()).flip(-1),
    }
    kept = accurate_candidates(candidates, rows, weight, None)
    assert list(kept) == ["exact", "slightly off"]


def test_relative_error_is_over_the_whole_product():
    reference = torch.ones(2, 8)
    assert relative_error(reference, reference) == 0.0
    assert abs(relative_error(reference * 1.5, reference) - 0.5) < 1e-6
    assert relative_error(torch.zeros(2, 8), torch.zeros(2, 8)) == 0.0


def test_fp8_weights_at_several_rows_are_also_timed_with_fp8_activations():
    """From two rows on, the fp8-rows kernel (activations rounded to fp8 per row, as the scaled GEMM rounds them)
    is a candidate in each of its launch configurations; one row keeps the weight-only GEMV."""
    pytest.importorskip("triton")
    weight, scale = quantize_fp8(torch.randn(64, 256))
    several = [name for name in decode_candidates(torch.randn(8, 256), weight, scale)
               if name.startswith(FP8_ROWS_PREFIX)]
    assert len(several) == len(FP8_ROWS_CONFIGS) and "fp8 rows 64/128/4/4" in several
    assert not any(name.startswith(FP8_ROWS_PREFIX) for name in decode_candidates(torch.randn(1, 256), weight, scale))
