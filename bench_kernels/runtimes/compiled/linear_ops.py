"""The compiled runtime's matrix-vector products: weight-only fp8 (e4m3, per-output-channel scales) and
small-batch GEMV in Triton, with cuBLAS / torch._scaled_mm where those are faster.

All projections of the compiled decoder go through one custom op, `bench_kernels::linear`, so
torch.compile treats it as a single opaque call and fuses the elementwise work around it.
"""

from __future__ import annotations

import inspect
import logging
from functools import cache

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# Up to this many activation rows (decode batches) a step is bound by reading the weights: the Triton
# weight-only kernel reads fp8 weights as they are stored; beyond it, prefill-sized GEMMs use tensor cores.
GEMV_MAX_ROWS = 64

# (device index, weight dtype, N, K, rows) -> "triton" or "library"; filled by timing both on first use.
_CHOSEN_BACKEND: dict[tuple, str] = {}


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 e4m3 weight [N, K] and fp32 per-output-channel scale [N] with weight ~= q * scale[:, None]."""
    w32 = weight.float()
    scale = (w32.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)  # scale: [N]
    q = (w32 / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.contiguous(), scale.contiguous()


def quantize_rows_fp8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 e4m3 activations [M, K] and fp32 per-row scales [M, 1] with rows ~= q * scale."""
    row_scale = (rows.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)  # row_scale: [M, 1]
    return (rows.float() / row_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), row_scale


@cache
def triton_unavailable_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return f"triton is not importable ({err})"
    return None


def fp8_unavailable_reason(device: torch.device) -> str | None:
    """None when fp8 weights run fast here, else why not."""
    if device.type != "cuda":
        return None  # the CPU dequantizes: slow but exact to the same math, used by tests
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8 e4m3 matmuls need compute capability 8.9 or newer (Ada, Hopper); this GPU is {major}.{minor}"
    return triton_unavailable_reason()


@cache
def _kernels():
    """The Triton kernels, compiled lazily so importing this module never needs triton."""
    import triton
    import triton.language as tl
    import triton.testing

    def configs(block_ns, block_ks):
        return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                for n in block_ns for k in block_ks for w in (4, 8) for s in (3,)]

    # Candidates are timed from CUDA graphs where this triton can: the kernels run there, and a plain
    # timing loop of a 20 us kernel measures Python's launch cost instead.
    autotune_timing = {}
    if "do_bench" in inspect.signature(triton.autotune).parameters:
        autotune_timing["do_bench"] = lambda fn, quantiles: triton.testing.do_bench_cudagraph(fn, quantiles=quantiles)
    elif "use_cuda_graph" in inspect.signature(triton.autotune).parameters:
        autotune_timing["use_cuda_graph"] = True

    @triton.autotune(configs=configs((8, 16, 32), (256, 512)), key=["N", "K"], **autotune_timing)
    @triton.jit
    def gemv_one_row(x_ptr, w_ptr, scale_ptr, y_ptr, N, K, HAS_SCALE: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # y[n] = scale[n] * sum_k w[n, k] * x[k]; each program owns BLOCK_N output channels. Products
        # accumulate elementwise and are reduced across K once, after the loop (no shuffles per block).
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        y = tl.sum(acc, axis=1)
        if HAS_SCALE:
            y = y * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.autotune(configs=configs((16, 32, 64), (128, 256)), key=["N", "K", "M"], **autotune_timing)
    @triton.jit
    def gemv_few_rows(x_ptr, w_ptr, scale_ptr, y_ptr, M, N, K, HAS_SCALE: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # Up to BLOCK_M activation rows share each weight tile: one tensor-core dot per K block.
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        n_ok, m_ok = offs_n < N, offs_m < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            acc += tl.dot(x, tl.trans(w.to(x_ptr.dtype.element_ty)))
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
        tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])

    return triton, gemv_one_row, gemv_few_rows


def triton_gemv(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """rows [M <= GEMV_MAX_ROWS, K] (bf16/fp16) times weight [N, K] (bf16, fp16 or fp8) transposed, times scale [N]."""
    triton, gemv_one_row, gemv_few_rows = _kernels()
    M, K = rows.shape
    N = weight.shape[0]
    rows = rows.contiguous()
    out = torch.empty((M, N), dtype=rows.dtype, device=rows.device)
    scale_arg = scale if scale is not None else out  # never read when HAS_SCALE is False
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    if M == 1:
        gemv_one_row[grid](rows, weight, scale_arg, out, N, K, HAS_SCALE=scale is not None)
    else:
        gemv_few_rows[grid](rows, weight, scale_arg, out, M, N, K, HAS_SCALE=scale is not None,
                            BLOCK_M=max(16, triton.next_power_of_2(M)))
    return out


def _scaled_mm_rowwise(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                       chunk_rows: int = 8192) -> torch.Tensor:
    """fp8 GEMM for many rows: activations quantized per row, weights per channel, bf16 out (Hopper).

    Long prefills go in chunks of rows, so the fp32 and fp8 copies of the activations stay small
    (a 64 x 2048-token prefill would otherwise need 7.5 GB for one fp32 copy)."""
    out = torch.empty((rows.shape[0], weight.shape[0]), dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], chunk_rows):
        part_q, row_scale = quantize_rows_fp8(rows[start:start + chunk_rows])
        out[start:start + chunk_rows] = torch._scaled_mm(part_q, weight.t(), scale_a=row_scale, scale_b=scale[None, :],
                                                         out_dtype=torch.bfloat16)
    return out


def _time_ms(fn, iters: int = 20) -> float:
    """Kernel time per call, replayed from a CUDA graph as in decoding (Python launch cost excluded)."""
    fn()  # autotune and compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    # thread_local: under tensor parallelism the process group's watchdog thread may query events meanwhile.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for _ in range(iters):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def _library_linear(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The library path: torch._scaled_mm for fp8 weights, cuBLAS otherwise."""
    if weight.dtype == FP8:
        return _scaled_mm_rowwise(rows, weight, scale)
    return F.linear(rows, weight)


def _small_rows_backend(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> str:
    """"triton" or "library" for this (rows, weight) shape: whichever measured faster here, on first use."""
    key = (rows.device.index, weight.dtype, weight.shape[0], weight.shape[1], rows.shape[0])
    if key not in _CHOSEN_BACKEND:
        if torch.cuda.is_current_stream_capturing() or triton_unavailable_reason():
            # Cannot time inside a CUDA graph capture; fp8 at few rows has no library kernel worth taking.
            return "triton" if weight.dtype == FP8 and not triton_unavailable_reason() else "library"
        triton_ms = _time_ms(lambda: triton_gemv(rows, weight, scale))
        try:
            library_ms = _time_ms(lambda: _library_linear(rows, weight, scale))
        except RuntimeError as err:  # e.g. a _scaled_mm shape constraint
            log.info("library kernel for %s x %s unavailable: %s", tuple(rows.shape), tuple(weight.shape), err)
            library_ms = float("inf")
        _CHOSEN_BACKEND[key] = "triton" if triton_ms < library_ms else "library"
        log.info("%s rows %s x weight %s: triton %.1f us, %s %.1f us -> %s", str(weight.dtype).removeprefix("torch."),
                 tuple(rows.shape), tuple(weight.shape), triton_ms * 1e3,
                 "_scaled_mm" if weight.dtype == FP8 else "cuBLAS", library_ms * 1e3, _CHOSEN_BACKEND[key])
    return _CHOSEN_BACKEND[key]


def chosen_backends() -> dict[tuple, str]:
    """What the timing picked so far: (device, dtype, N, K, rows) -> backend."""
    return dict(_CHOSEN_BACKEND)


@torch.library.custom_op("bench_kernels::linear", mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T, times scale [N] when the weight is fp8; the output has x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    if weight.dtype == FP8 and scale is None:
        raise ValueError("an fp8 weight needs its per-channel scale")
    if not x.is_cuda:
        # The CPU has no fp8 kernels: dequantize and multiply, with the GPU's math: activations stay as they are
        # up to GEMV_MAX_ROWS (weight-only kernel) and are rounded to fp8 per row beyond (scaled GEMM).
        if weight.dtype != FP8:
            out = F.linear(rows, weight)
        else:
            if rows.shape[0] > GEMV_MAX_ROWS:
                rows_q, row_scale = quantize_rows_fp8(rows)
                rows = rows_q.float() * row_scale
            out = (rows.float() @ weight.float().t() * scale).to(x.dtype)
    elif rows.shape[0] <= GEMV_MAX_ROWS and _small_rows_backend(rows, weight, scale) == "triton":
        out = triton_gemv(rows, weight, scale)
    else:
        out = _library_linear(rows, weight, scale)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@linear.register_fake
def _linear_fake(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))

