"""The compiled runtime's matrix products: fp8 weights (e4m3, per-output-channel scales; activations as they are or
rounded to fp8 per row, as the scaled GEMM rounds them), weight-only int4 (group-wise scales,
bench_kernels.quantization's codes re-laid as int32 words: int4_words) and small-batch GEMV in Triton (here and in
decode_kernels), with cuBLAS / torch._scaled_mm where those are faster: up to GEMV_MAX_ROWS rows each shape times its
candidates on first use and keeps the fastest.

All projections of the compiled decoder go through custom ops, so torch.compile treats each as a single opaque call
and fuses the elementwise work around it: `bench_kernels::linear`, and for one-row decode steps two that take the work
before a projection into its kernel, `add_norm_linear` (residual add and RMSNorm) and `swiglu_linear` (silu(gate) * up):
each of them a launch fewer per layer (a Prologue).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from bench_kernels.timing import cuda_graph_of

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
INT4 = torch.int32  # int4 weights are stored as int32 words of eight codes (int4_words)
# Up to this many activation rows (decode batches) a step is bound by reading the weights: the Triton
# weight-only kernel reads fp8 weights as they are stored; beyond it, prefill-sized GEMMs use tensor cores.
GEMV_MAX_ROWS = 64

# Launch configurations timed for decode_kernels: int4 on CUDA cores for one row and int4 on tensor cores by row tile
# (BLOCK_N, GROUPS_PER_STEP, SPLIT_K, num_warps); fp8 (BLOCK_N, BLOCK_K, SPLIT_K, num_warps). The int4 ones are those
# measured fastest somewhere at the Llama-3.1-8B and 70B projection shapes on an H200 (BENCHMARKS.md, 2026-12-03); the
# first of each is the default where nothing was timed.
INT4_GEMV_CONFIGS = ((64, 2, 8, 2), (128, 2, 8, 4), (64, 4, 8, 2), (64, 4, 4, 2), (128, 4, 4, 4), (64, 8, 2, 2),
                     (64, 1, 8, 2))  # the last also for an odd number of groups (SmolLM2's 576 channels: 9 of 64)
INT4_CONFIGS = {16: ((64, 1, 8, 4), (128, 1, 8, 4), (64, 1, 4, 4), (128, 1, 2, 4), (128, 1, 1, 4), (64, 2, 4, 4),
                     (128, 2, 2, 4)),
                32: ((128, 1, 4, 4), (128, 1, 8, 4), (128, 1, 1, 4), (128, 2, 4, 4), (64, 2, 4, 4), (128, 2, 2, 4)),
                64: ((128, 1, 4, 4), (128, 1, 8, 4), (128, 1, 1, 4), (64, 1, 4, 4), (64, 1, 2, 4), (128, 2, 4, 4),
                     (128, 2, 2, 4))}
FP8_CONFIGS = ((64, 128, 4, 4), (64, 128, 2, 4), (64, 128, 1, 4))
# fp8 activations against fp8 weights on fp8 tensor cores (decode_kernels.fp8_rows_matmul): (BLOCK_N, BLOCK_K, SPLIT_K,
# num_warps); a weight tile of 64 rows or more is one wgmma's M, a K block of 128 or more its K of 32 four times over.
FP8_ROWS_CONFIGS = ((64, 128, 4, 4), (64, 128, 2, 4), (64, 256, 2, 4), (64, 256, 4, 4), (128, 128, 2, 4),
                    (128, 256, 1, 8), (64, 128, 1, 4), (64, 256, 8, 4), (64, 128, 8, 4), (128, 256, 2, 8))
FP8_ROWS_PREFIX = "fp8 rows"  # the candidates that round the activations to fp8, as the library path does

# (device index, weight dtype, N, K, rows, prologue kind) -> the name of the kernel measured fastest there
# (decode_candidates).
_CHOSEN_BACKEND: dict[tuple, str] = {}
# A decode candidate whose product differs from the library path's by more than this (relative, over the whole
# product) is never chosen: fp8's library path rounds activations to fp8 (a few percent), a faulty kernel far more.
CANDIDATE_MAX_ERROR = 0.1


NO_PROLOGUE, ADD_NORM, SWIGLU = 0, 1, 2  # Prologue kinds, as decode_kernels.load_input reads them
PROLOGUE_NAMES = {ADD_NORM: "add-rmsnorm", SWIGLU: "swiglu"}  # as build notes list them


@dataclass(frozen=True)
class Prologue:
    """Work on a decode product's input rows that its kernel does as it reads them. ADD_NORM: the rows plus delta
    (None: nothing added) are the residual stream, written into hidden, and the product's input is their RMSNorm
    (norm_weight, eps); SWIGLU: rows [M, 2K] are gate | up and the input is silu(gate) * up."""

    kind: int
    norm_weight: torch.Tensor | None = None
    eps: float = 0.0
    delta: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def apply_prologue(rows: torch.Tensor, prologue: Prologue | None) -> torch.Tensor:
    """The prologue in torch ops (the kernels' reference, and the path of kernels without one): the product's input."""
    if prologue is None:
        return rows
    if prologue.kind == SWIGLU:
        gate, up = rows.chunk(2, dim=-1)
        return F.silu(gate) * up
    hidden = rows if prologue.delta is None else rows + prologue.delta
    prologue.hidden.copy_(hidden)
    return rms_norm(hidden, prologue.norm_weight, prologue.eps)


def quantize_fp8(weight: torch.Tensor, chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 e4m3 weight [N, K] and fp32 per-output-channel scale [N] with weight ~= q * scale[:, None].

    Rounded chunk_rows output channels at a time: the fp32 temporaries of a whole 70B gate/up projection are
    several GiB, enough to leave a card that must hold the fp8 model too fragmented to finish packing."""
    q = torch.empty(weight.shape, dtype=FP8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], chunk_rows):
        w32 = weight[start:start + chunk_rows].float()
        chunk_scale = (w32.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
        q[start:start + chunk_rows] = (w32 / chunk_scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        scale[start:start + chunk_rows] = chunk_scale
    return q, scale


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


def gemv_configs(triton, block_ns: tuple[int, ...], block_ks: tuple[int, ...]) -> list:
    """The GEMV kernels' autotuned launch configurations."""
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=3)
            for n in block_ns for k in block_ks for w in (4, 8)]


def _autotune_timing(triton) -> dict:
    """Candidates are timed from CUDA graphs where this triton can: the kernels run there, and a plain timing loop
    of a 20 us kernel measures Python's launch cost instead."""
    import triton.testing

    if "do_bench" in inspect.signature(triton.autotune).parameters:
        return {"do_bench": lambda fn, quantiles: triton.testing.do_bench_cudagraph(fn, quantiles=quantiles)}
    if "use_cuda_graph" in inspect.signature(triton.autotune).parameters:
        return {"use_cuda_graph": True}
    return {}


@cache
def _kernels():
    """The Triton kernels, compiled lazily so importing this module never needs triton."""
    import triton
    import triton.language as tl

    from bench_kernels.runtimes.compiled.decode_kernels import gemv_one_row

    @triton.autotune(configs=gemv_configs(triton, (16, 32, 64), (128, 256)), key=["N", "K", "M"],
                     **_autotune_timing(triton))
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


@cache
def _int4_kernels():
    """The int4 dequantization kernel (prefill: cuBLAS multiplies the weight it writes) for int4_words' layout:
    int32 words [N, K / 8] and scales [N, K / GROUP]. A code becomes a float without an int-to-float conversion: the
    nibble ORed into the mantissa of 2^23, reinterpreted, minus 2^23 + 8, all exact. Decode sizes run
    decode_kernels' int4 kernels."""
    import triton
    import triton.language as tl

    @triton.jit
    def int4_dequantize(words_ptr, scale_ptr, w_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
        # One group of BLOCK_N rows per program: w [N, K] in w's dtype; nibble p of word t is channel p * WORDS + t.
        WORDS: tl.constexpr = GROUP // 8
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        g = tl.program_id(1)
        offs_t = tl.arange(0, WORDS)
        n_ok = offs_n < N
        words = tl.load(words_ptr + offs_n[:, None] * (K // 8) + g * WORDS + offs_t[None, :], mask=n_ok[:, None],
                        other=0)
        scale = tl.load(scale_ptr + offs_n * (K // GROUP) + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        row = w_ptr + offs_n[:, None] * K + g * GROUP + offs_t[None, :]
        for p in tl.static_range(8):
            code = (((words >> (4 * p)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
            tl.store(row + p * WORDS, (code * scale).to(w_ptr.dtype.element_ty), mask=n_ok[:, None])

    return triton, int4_dequantize


INT4_DOT_MIN_GROUP = 128  # the tensor-core kernel's dots have K = GROUP / 8 words, and a dot's K is at least 16


def int4_triton_group_ok(group_size: int) -> bool:
    """Whether the dequantization kernel and the GEMV take this group size: a power of two from 32 (a Triton range of
    GROUP / 8 words); the tensor-core kernel needs INT4_DOT_MIN_GROUP."""
    return group_size >= 32 and group_size & (group_size - 1) == 0


def int4_words(packed: torch.Tensor, group_size: int, chunk_rows: int = 4096) -> torch.Tensor:
    """bench_kernels.quantization's packed int4 weight [N, K / 2] re-laid once, at load, as int32 words [N, K / 8]:
    bits 4p..4p+3 of word t of group g hold the stored code (+ 8) of input channel g * group_size + p * group_size / 8
    + t, so each of a word's eight nibble positions multiplies one contiguous slice of the activations. The same
    codes in the same bytes. chunk_rows output channels at a time bound the int64 temporaries."""
    from bench_kernels.quantization import unpack_int4

    if group_size % 8:
        raise ValueError(f"int4 words hold eight channels of one group: group size {group_size} is not a multiple of 8")
    n, per_word = packed.shape[0], group_size // 8
    words = torch.empty((n, packed.shape[1] // 4), dtype=INT4, device=packed.device)
    shifts = 4 * torch.arange(8, device=packed.device).view(1, 1, 8, 1)
    for start in range(0, n, chunk_rows):
        codes = unpack_int4(packed[start:start + chunk_rows], group_size).to(torch.int64) + 8  # [n, K] in 0..15
        by_position = codes.reshape(codes.shape[0], -1, 8, per_word)  # [n, groups, p, t]
        chunk = (by_position << shifts).sum(dim=2).reshape(codes.shape[0], -1)
        words[start:start + chunk_rows] = torch.where(chunk >= 2 ** 31, chunk - 2 ** 32, chunk).to(INT4)
    return words


def int4_word_codes(words: torch.Tensor, group_size: int) -> torch.Tensor:
    """The signed codes int8 [N, K] of int4_words' int32 words [N, K / 8]."""
    n = words.shape[0]
    shifts = 4 * torch.arange(8, device=words.device, dtype=INT4).view(1, 1, 8, 1)
    codes = ((words.view(n, -1, 1, group_size // 8) >> shifts) & 0xF) - 8  # [N, groups, p, t]
    return codes.to(torch.int8).reshape(n, -1)


@cache
def _row_quantize_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def quantize_rows_fp8_kernel(x_ptr, q_ptr, scale_ptr, K, FP8_LIMIT: tl.constexpr, BLOCK_K: tl.constexpr):
        # quantize_rows_fp8 in one kernel per row: the row is read twice (the second time from cache) and written
        # once in fp8, where the eager version makes several full passes with fp32 copies.
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_K)
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr + row * K + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.max(amax, axis=0) / FP8_LIMIT, 1e-12)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr + row * K + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            # div_rn: IEEE division, as torch divides (Triton's / is approximate), so both round alike.
            q = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -FP8_LIMIT), FP8_LIMIT)
            tl.store(q_ptr + row * K + k0 + offs, q.to(q_ptr.dtype.element_ty), mask=k0 + offs < K)
        tl.store(scale_ptr + row, scale)

    return quantize_rows_fp8_kernel


def triton_quantize_rows_fp8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows_fp8 fused into one Triton kernel (the same values)."""
    M, K = rows.shape
    rows = rows.contiguous()
    quantized = torch.empty((M, K), dtype=FP8, device=rows.device)
    row_scale = torch.empty((M, 1), dtype=torch.float32, device=rows.device)
    # A whole row per step up to 16,384 channels: the second pass reads it again from the cache, not from memory
    # behind a second loop (a decode step's few rows are latency, not bandwidth).
    block = min(16384, 1 << (K - 1).bit_length())
    _row_quantize_kernel()[(M,)](rows, quantized, row_scale, K, FP8_LIMIT=FP8_MAX, BLOCK_K=block,
                                 num_warps=8 if block >= 4096 else 4)
    return quantized, row_scale


def _int4_config(candidate: tuple[int, int, int, int]) -> dict:
    block_n, groups_per_step, split_k, warps = candidate
    # Two stages where three steps of words and activations would fill most of a multiprocessor's shared memory.
    return {"BLOCK_N": block_n, "GROUPS_PER_STEP": groups_per_step, "SPLIT_K": split_k, "num_warps": warps,
            "num_stages": 3 if block_n * groups_per_step <= 256 else 2}


def _int4_name(config: dict) -> str:
    return f"{config['BLOCK_N']}/{config['GROUPS_PER_STEP']}/{config['SPLIT_K']}/{config['num_warps']}"


def _fp8_config(candidate: tuple[int, int, int, int]) -> dict:
    block_n, block_k, split_k, warps = candidate
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": split_k, "num_warps": warps, "num_stages": 3}


def dequantize_int4_weight(words: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The int4 weight [N, K] (int4_words) in dtype, on words' device: one Triton pass on a GPU (for cuBLAS at
    prefill sizes), torch ops on the CPU."""
    N, K = words.shape[0], words.shape[1] * 8
    group = K // scales.shape[1]
    if not words.is_cuda or triton_unavailable_reason() or not int4_triton_group_ok(group):
        codes = int4_word_codes(words, group).float()
        return (codes * scales.float().repeat_interleave(group, dim=1)).to(dtype)
    triton, dequantize = _int4_kernels()
    weight = torch.empty((N, K), dtype=dtype, device=words.device)
    dequantize[(triton.cdiv(N, 64), K // group)](words, scales, weight, N, K, GROUP=group, BLOCK_N=64)
    return weight


def triton_gemv(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                prologue: Prologue | None = None) -> torch.Tensor:
    """rows [M <= GEMV_MAX_ROWS, K] (bf16/fp16) times weight [N, K] (bf16, fp16 or fp8) transposed, times scale [N];
    a prologue only for one row, inside the kernel."""
    triton, gemv_one_row, gemv_few_rows = _kernels()
    M = rows.shape[0]
    if prologue is not None and M > 1:
        raise ValueError(f"the GEMV takes a prologue for one row, not {M}")
    N, K = weight.shape
    out = torch.empty((M, N), dtype=rows.dtype, device=rows.device)
    scale_arg = scale if scale is not None else out  # never read when HAS_SCALE is False
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    if M == 1:
        from bench_kernels.runtimes.compiled.decode_kernels import _prologue_args

        rows = rows.contiguous()
        gemv_one_row[grid](rows, weight, scale_arg, out, N, K, HAS_SCALE=scale is not None,
                           **_prologue_args(rows, prologue))
    else:
        rows = rows.contiguous()
        gemv_few_rows[grid](rows, weight, scale_arg, out, M, N, K, HAS_SCALE=scale is not None,
                            BLOCK_M=max(16, triton.next_power_of_2(M)))
    return out


def scaled_mm_rowwise(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                       chunk_rows: int = 16384) -> torch.Tensor:
    """fp8 GEMM for many rows: activations quantized per row, weights per channel, bf16 out (Hopper).

    Long prefills go in chunks of rows, so the fp8 copy of the activations stays small. Each chunk's GEMM writes
    straight into its rows of the output: a copy of the output costs as much time as the quantization."""
    quantize = quantize_rows_fp8 if triton_unavailable_reason() else triton_quantize_rows_fp8
    out = torch.empty((rows.shape[0], weight.shape[0]), dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], chunk_rows):
        part_q, row_scale = quantize(rows[start:start + chunk_rows])
        torch._scaled_mm(part_q, weight.t(), scale_a=row_scale, scale_b=scale[None, :], out_dtype=torch.bfloat16,
                         out=out[start:start + chunk_rows])
    return out


def kernel_time_ms(fn, iters: int = 20) -> float:
    """Kernel time per call, replayed from a CUDA graph as in decoding (Python launch cost excluded). A weight that
    fits the L2 is read from there on every replay but the first: rotating_time_ms times it from device memory."""
    graph = cuda_graph_of(fn, iters)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def l2_cache_bytes(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).L2_cache_size


def rotation_count(nbytes: int, l2_bytes: int) -> int:
    """Copies of nbytes of weights to cycle through so that together they exceed twice the L2 (at least two): each
    call then reads its weight from device memory, as a decode step that reads every layer's weights once does."""
    return max(2, 2 * l2_bytes // nbytes + 1)


def rotated_sets(tensors: tuple[torch.Tensor | None, ...], l2_bytes: int) -> list[tuple[torch.Tensor | None, ...]]:
    """tensors and clones of them (new storage, same values), rotation_count of them in all."""
    nbytes = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    clones = [tuple(None if t is None else t.clone() for t in tensors)
              for _ in range(rotation_count(nbytes, l2_bytes) - 1)]
    return [tensors, *clones]


def rotating_time_ms(run, sets: list[tuple], calls: int = 20) -> float:
    """kernel_time_ms of run(*set), each call on the next of sets (rotated_sets), every set equally often."""
    calls = len(sets) * -(-calls // len(sets))
    position = itertools.count()
    return kernel_time_ms(lambda: run(*sets[next(position) % len(sets)]), iters=calls)


def _library_linear(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                    prologue: Prologue | None = None) -> torch.Tensor:
    """The library path: torch._scaled_mm for fp8 weights, cuBLAS otherwise (int4 dequantized first), after the
    prologue in torch ops."""
    rows = apply_prologue(rows, prologue)
    if weight.dtype == FP8:
        return scaled_mm_rowwise(rows, weight, scale)
    if weight.dtype == INT4:
        return F.linear(rows, dequantize_int4_weight(weight, scale, rows.dtype))
    return F.linear(rows, weight)


def _has_triton_kernel(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> bool:
    """Whether a Triton kernel takes this product: up to GEMV_MAX_ROWS rows (beyond, a prefill's GEMM is
    compute-bound and cuBLAS or _scaled_mm wins; not timing there saves the build minutes), int4 group sizes the
    kernels take."""
    if triton_unavailable_reason() or rows.shape[0] > GEMV_MAX_ROWS:
        return False
    return weight.dtype != INT4 or int4_triton_group_ok(weight.shape[1] * 8 // scale.shape[1])


FUSED_SUFFIX = "+prologue"  # a candidate that takes the prologue into its kernel


def decode_candidates(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                      prologue: Prologue | None = None) -> dict[str, object]:
    """The kernels timed for this product, by the name chosen_backends reports: run(rows, weight, scale). With a
    prologue each kernel that can take it is timed both ways: with it inside (FUSED_SUFFIX) and after the prologue's
    own launch (decode_kernels.prologue_rows), as the traced ops would run it; the library path applies it in torch
    ops."""
    from bench_kernels.runtimes.compiled import decode_kernels

    k = weight.shape[1] * (8 if weight.dtype == INT4 else 1)

    def after_prologue(run):
        if prologue is None:
            return run
        return lambda r, w, s: run(decode_kernels.prologue_rows(r, prologue, k), w, s)

    def both_ways(name: str, run) -> dict[str, object]:
        """run(rows, weight, scale, prologue) with the prologue inside and after its own launch."""
        plain = {name: after_prologue(lambda r, w, s: run(r, w, s, None))}
        return plain if prologue is None else {name + FUSED_SUFFIX: lambda r, w, s: run(r, w, s, prologue), **plain}

    candidates = {}
    if weight.dtype == INT4:
        groups = scale.shape[1]
        group = weight.shape[1] * 8 // groups
        if rows.shape[0] == 1:
            for c in map(_int4_config, INT4_GEMV_CONFIGS):
                if groups % c["GROUPS_PER_STEP"] == 0:
                    candidates |= both_ways(f"gemv {_int4_name(c)}",
                                            lambda r, w, s, p, c=c: decode_kernels.int4_gemv(r, w, s, c, p))
        if group >= INT4_DOT_MIN_GROUP:
            for c in map(_int4_config, INT4_CONFIGS[decode_kernels.block_m(rows.shape[0])]):
                if groups % c["GROUPS_PER_STEP"] == 0:
                    candidates |= both_ways(f"split-K {_int4_name(c)}",
                                            lambda r, w, s, p, c=c: decode_kernels.int4_matmul(r, w, s, c, p))
        return {**candidates, "library": lambda r, w, s: _library_linear(r, w, s, prologue)}
    if rows.shape[0] == 1:
        candidates |= both_ways("triton", triton_gemv)
    else:  # several rows: gemv_few_rows after the prologue
        candidates["triton"] = after_prologue(triton_gemv)
    if weight.dtype == FP8 and rows.shape[0] > 1:
        for c in map(_fp8_config, FP8_CONFIGS):
            candidates[f"split-K {c['BLOCK_N']}/{c['BLOCK_K']}/{c['SPLIT_K']}/{c['num_warps']}"] = after_prologue(
                lambda r, w, s, c=c: decode_kernels.fp8_matmul(r, w, s, c))
        for c in map(_fp8_config, FP8_ROWS_CONFIGS):
            candidates[f"{FP8_ROWS_PREFIX} {c['BLOCK_N']}/{c['BLOCK_K']}/{c['SPLIT_K']}/{c['num_warps']}"] = \
                after_prologue(lambda r, w, s, c=c: decode_kernels.fp8_rows_matmul(*triton_quantize_rows_fp8(r), w, s,
                                                                                    c, r.dtype))
    candidates["library"] = lambda r, w, s: _library_linear(r, w, s, prologue)
    return candidates


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """||out - reference|| / ||reference|| over the whole product (0 for two zero products)."""
    scale = reference.norm().item()
    return (out.float() - reference).norm().item() / scale if scale else out.float().norm().item()


def accurate_candidates(candidates: dict[str, object], rows: torch.Tensor, weight: torch.Tensor,
                        scale: torch.Tensor | None, prologue: Prologue | None = None) -> dict[str, object]:
    """The candidates whose product on these rows agrees with the library path's (CANDIDATE_MAX_ERROR), so that
    speed never chooses a wrong kernel; one that raises is left to the timing, which logs why."""
    reference = _library_linear(rows, weight, scale, prologue).float()
    kept = {}
    for name, run in candidates.items():
        try:
            error = relative_error(run(rows, weight, scale), reference)
        except RuntimeError:
            kept[name] = run
            continue
        if error > CANDIDATE_MAX_ERROR:
            log.warning("%s for %s x %s left out: relative error %.3g against the library path", name,
                        tuple(rows.shape), tuple(weight.shape), error)
        else:
            kept[name] = run
    return kept


def _chosen(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, prologue: Prologue | None) -> str:
    """The name of the candidate measured fastest for this (rows, weight, prologue) shape here, on first use:
    quantized weights timed from device memory (rotated over copies, as a decode step reads each layer's), bf16 as
    before."""
    kind = prologue.kind if prologue else None
    key = (rows.device.index, weight.dtype, weight.shape[0], weight.shape[1], rows.shape[0], kind)
    if key in _CHOSEN_BACKEND:
        return _CHOSEN_BACKEND[key]
    candidates = decode_candidates(rows, weight, scale, prologue)
    if torch.cuda.is_current_stream_capturing():
        # Cannot time inside a CUDA graph capture: the first candidate (quantized weights' library paths lose at few
        # rows: none reads fp8 as stored, the int4 one dequantizes first), bf16's cuBLAS.
        return next(iter(candidates)) if weight.dtype in (FP8, INT4) else "library"
    sets = rotated_sets((weight, scale), l2_cache_bytes(rows.device)) if weight.dtype in (FP8, INT4) \
        else [(weight, scale)]
    times_ms = {}
    for name, run in accurate_candidates(candidates, rows, weight, scale, prologue).items():
        try:
            times_ms[name] = rotating_time_ms(lambda w, s, run=run: run(rows, w, s), sets)
        except RuntimeError as err:  # e.g. a _scaled_mm shape constraint
            log.info("%s for %s x %s unavailable: %s", name, tuple(rows.shape), tuple(weight.shape), err)
    del sets
    _CHOSEN_BACKEND[key] = min(times_ms, key=times_ms.get)
    log.info("%s rows %s x weight %s%s: %s -> %s", _weight_kind(weight), tuple(rows.shape), tuple(weight.shape),
             f" ({PROLOGUE_NAMES[kind]})" if kind else "",
             ", ".join(f"{name} {ms * 1e3:.1f} us" for name, ms in times_ms.items()), _CHOSEN_BACKEND[key])
    return _CHOSEN_BACKEND[key]


def decode_product(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                   prologue: Prologue | None = None) -> torch.Tensor:
    """prologue(rows) [M, K] @ weight^T on a GPU by the kernel the runtime chooses for this shape (timed on first
    use)."""
    if not _has_triton_kernel(rows, weight, scale):
        return _library_linear(rows, weight, scale, prologue)
    return decode_candidates(rows, weight, scale, prologue)[_chosen(rows, weight, scale, prologue)](rows, weight, scale)


def _weight_kind(weight: torch.Tensor) -> str:
    return "int4" if weight.dtype == INT4 else str(weight.dtype).removeprefix("torch.")


def chosen_backends() -> dict[tuple, str]:
    """What the timing picked so far: (device, dtype, N, K, rows, prologue kind or None) -> the kernel's name
    (decode_candidates)."""
    return dict(_CHOSEN_BACKEND)


def _product(rows: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
             prologue: Prologue | None = None) -> torch.Tensor:
    """prologue(rows) [M, K] @ weight[N, K].T in rows' dtype, on rows' device."""
    if weight.dtype in (FP8, INT4) and scale is None:
        raise ValueError(f"an {_weight_kind(weight)} weight needs its scales")
    if rows.is_cuda:
        return decode_product(rows, weight, scale, prologue)
    # The CPU has no fp8 or int4 kernels: dequantize and multiply, with the GPU's math: fp8 activations stay as they
    # are up to GEMV_MAX_ROWS (weight-only kernels; the GPU's timing may choose one that rounds them) and are rounded
    # to fp8 per row beyond (scaled GEMM).
    rows = apply_prologue(rows, prologue)
    if weight.dtype == INT4:
        return (rows.float() @ dequantize_int4_weight(weight, scale, torch.float32).t()).to(rows.dtype)
    if weight.dtype != FP8:
        return F.linear(rows, weight)
    dtype = rows.dtype
    if rows.shape[0] > GEMV_MAX_ROWS:
        rows_q, row_scale = quantize_rows_fp8(rows)
        rows = rows_q.float() * row_scale
    return (rows.float() @ weight.float().t() * scale).to(dtype)


@torch.library.custom_op("bench_kernels::linear", mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] @ weight[N, K].T; the output has x's dtype. fp8 weights carry per-channel scales [N]; int4 weights
    are int32 words [N, K / 8] (int4_words) with group scales [N, K / group]."""
    return _product(x.reshape(-1, x.shape[-1]), weight, scale).reshape(*x.shape[:-1], weight.shape[0])


@linear.register_fake
def _linear_fake(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("bench_kernels::add_norm_linear", mutates_args=())
def add_norm_linear(x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(h) @ weight.T, h) for h = x + delta (x when delta is None): the residual add and the RMSNorm before a
    projection, in its kernel where the kernel chosen takes them (Prologue ADD_NORM); linear's weights."""
    rows = x.reshape(-1, x.shape[-1])
    hidden = torch.empty_like(rows)
    prologue = Prologue(ADD_NORM, norm_weight, eps, None if delta is None else delta.reshape(rows.shape), hidden)
    out = _product(rows, weight, scale, prologue)
    return out.reshape(*x.shape[:-1], weight.shape[0]), hidden.reshape(x.shape)


@add_norm_linear.register_fake
def _add_norm_linear_fake(x: torch.Tensor, delta: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                          weight: torch.Tensor, scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((*x.shape[:-1], weight.shape[0])), torch.empty_like(x)


@torch.library.custom_op("bench_kernels::swiglu_linear", mutates_args=())
def swiglu_linear(gate_up: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """(silu(gate) * up) @ weight.T for gate_up [..., 2K] = gate | up: the MLP's activation in the down projection's
    kernel where the kernel chosen takes it (Prologue SWIGLU); linear's weights."""
    rows = gate_up.reshape(-1, gate_up.shape[-1])
    return _product(rows, weight, scale, Prologue(SWIGLU)).reshape(*gate_up.shape[:-1], weight.shape[0])


@swiglu_linear.register_fake
def _swiglu_linear_fake(gate_up: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return gate_up.new_empty((*gate_up.shape[:-1], weight.shape[0]))
