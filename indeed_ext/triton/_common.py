"""Pieces shared by the Triton kernels: dtypes, tl.dot precision and the row statistics of p = fa * fb.

The identical map m = (p - shift) / den of a row needs a reduction over the whole
row first: min and max (``minmax``, shift = min, den = max(max - min, eps)) or
the L2 norm (``l2``, shift = 0, den = max(||p||, eps)). ``row_stats`` does that
reduction in BLOCK_N column chunks for a block of rows, optionally with the tie
counts of the extremes that the backward needs (torch.amin/amax split their
gradient evenly among ties); ``grad_p`` turns dm into dp with the per-row
coefficients of ``grad_p_coefficients`` (docs/SPEC.md, "dp from dm").
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Read when the kernels are defined (this module is imported first): that is when
# triton.jit picks JITFunction or InterpretedFunction, so a later TRITON_INTERPRET
# changes neither.
INTERPRETING = bool(triton.knobs.runtime.interpret)

_TL_DTYPES = {
    torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
}


def require_runnable(device: torch.device) -> None:
    """Raise unless Triton can run on device (CUDA, or CPU through the interpreter)."""
    if device.type == "cuda" or (device.type == "cpu" and INTERPRETING):
        return
    if device.type == "cpu":
        raise RuntimeError(
            "indeed_triton ops need CUDA tensors; to run them on CPU tensors through the Triton "
            "interpreter, set TRITON_INTERPRET=1 before triton is first imported"
        )
    raise RuntimeError(f"indeed_triton ops need CUDA tensors, got tensors on {device}")


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype: float64 for float64 inputs, float32 otherwise (reference.compute_dtype)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_dtype(dtype: torch.dtype):
    """Operand dtype of tl.dot: half inputs use their own tensor-core dtype, the rest accumulate dtype."""
    return _TL_DTYPES[dtype] if dtype in (torch.bfloat16, torch.float16) else acc_dtype(dtype)


def dot_precision(dtype: torch.dtype) -> str:
    """input_precision of tl.dot: TF32 for float32 only when torch allows it for its own matmuls."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


@triton.jit
def load_tile(ptr, row_offsets, cols, stride_col, mask, DTYPE: tl.constexpr):
    """Rows starting at element offsets row_offsets, columns cols, zero where masked, as DTYPE."""
    return tl.load(ptr + row_offsets[:, None] + cols[None, :] * stride_col, mask=mask, other=0.0).to(DTYPE)


@triton.jit
def load_pair_tile(fa_ptr, fb_ptr, a_rows, b_rows, cols, stride_ac, stride_bc, mask, lo, den, ACC: tl.constexpr):
    """(fa, fb, p = fa * fb, m = (p - lo) / den) of a tile, zero inputs where masked; lo, den from row_stats."""
    a = load_tile(fa_ptr, a_rows, cols, stride_ac, mask, ACC)
    b = load_tile(fb_ptr, b_rows, cols, stride_bc, mask, ACC)
    p = a * b
    return a, b, p, (p - lo[:, None]) / den[:, None]


@triton.jit
def row_stats(fa_ptr, fb_ptr, a_rows, b_rows, row_mask, n, stride_ac, stride_bc, eps,
              L2: tl.constexpr, COUNT_TIES: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    """Per row of p = fa * fb: shift, hi, den, unclamped, k_lo, k_hi.

    m = (p - shift) / den. minmax: shift = lo = min p, hi = max p (NaN if the row has a
    NaN, like torch.amin/amax), k_lo, k_hi their tie counts when COUNT_TIES. l2: shift = 0,
    den = max(||p||, eps); hi, k_lo, k_hi unused. unclamped: the denominator is not eps.
    """
    if L2:
        sumsq = tl.zeros([BLOCK_R], ACC)
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_mask[:, None] & (cols[None, :] < n)
            p = load_tile(fa_ptr, a_rows, cols, stride_ac, mask, ACC) * load_tile(
                fb_ptr, b_rows, cols, stride_bc, mask, ACC)
            sumsq += tl.sum(p * p, axis=1)
        d = tl.sqrt(sumsq)
        lo = tl.zeros([BLOCK_R], ACC)
        hi = lo
        k_lo = tl.zeros([BLOCK_R], tl.int32)
        k_hi = k_lo
    else:
        lo = tl.full([BLOCK_R], float("inf"), ACC)
        hi = tl.full([BLOCK_R], float("-inf"), ACC)
        k_lo = tl.zeros([BLOCK_R], tl.int32)
        k_hi = tl.zeros([BLOCK_R], tl.int32)
        nans = tl.zeros([BLOCK_R], tl.int32)
        for start in range(0, n, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_mask[:, None] & (cols[None, :] < n)
            p = load_tile(fa_ptr, a_rows, cols, stride_ac, mask, ACC) * load_tile(
                fb_ptr, b_rows, cols, stride_bc, mask, ACC)
            new_lo = tl.minimum(lo, tl.min(tl.where(mask, p, float("inf")), axis=1))
            new_hi = tl.maximum(hi, tl.max(tl.where(mask, p, float("-inf")), axis=1))
            if COUNT_TIES:
                # ties of the running extreme: earlier ones survive only if it did not move
                k_lo = tl.where(lo == new_lo, k_lo, 0) + tl.sum((mask & (p == new_lo[:, None])).to(tl.int32), axis=1)
                k_hi = tl.where(hi == new_hi, k_hi, 0) + tl.sum((mask & (p == new_hi[:, None])).to(tl.int32), axis=1)
            lo = new_lo
            hi = new_hi
            nans += tl.sum((mask & (p != p)).to(tl.int32), axis=1)
        # tl.min/tl.max skip NaN; torch.amin/amax return it. Rows outside the block get 0, not inf.
        lo = tl.where(nans > 0, float("nan"), tl.where(row_mask, lo, 0.0))
        hi = tl.where(nans > 0, float("nan"), tl.where(row_mask, hi, 0.0))
        d = hi - lo
    # eps is a float64 argument: compare in float64, then round it like torch.where(d > eps, d, eps) on ACC
    unclamped = d > eps
    den = tl.where(unclamped, d, eps).to(ACC)
    return lo, hi, den, unclamped, k_lo, k_hi


@triton.jit
def grad_p_coefficients(dm_sum, dm_dot_m, unclamped, k_lo, k_hi, L2: tl.constexpr):
    """Per-row coefficients of den * dp = dm - coef_m * m + u_lo [p = lo] + u_hi [p = hi].

    dm_sum = sum_j dm_j and dm_dot_m = sum_j dm_j m_j over the row. A clamped
    denominator is the constant eps, so only the numerator's dependence remains.
    The row is divided by den once, at the end (grad_p): for a clamped row the
    numerator then cancels exactly where it should (dm - dm_sum = 0 for n = 1), on
    GPUs too, whose approximate division would not round two quotients alike.
    """
    s1 = tl.where(unclamped, dm_dot_m, 0.0)
    if L2:
        coef_m = s1
        u_lo = tl.zeros_like(s1)
        u_hi = u_lo
    else:
        coef_m = tl.zeros_like(s1)
        u_lo = (s1 - dm_sum) / tl.maximum(k_lo, 1).to(s1.dtype)
        u_hi = -s1 / tl.maximum(k_hi, 1).to(s1.dtype)
    return coef_m, u_lo, u_hi


@triton.jit
def grad_p(dm, p, m, lo, hi, den, coef_m, u_lo, u_hi, L2: tl.constexpr):
    """dp of a tile from dm, with the per-row values of row_stats and grad_p_coefficients."""
    if L2:
        num = dm - coef_m[:, None] * m
    else:
        num = dm + tl.where(p == lo[:, None], u_lo[:, None], 0.0) + tl.where(p == hi[:, None], u_hi[:, None], 0.0)
    return num / den[:, None]
