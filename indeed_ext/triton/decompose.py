"""Triton kernels of identical_map and decompose, forward and backward.

One program per block of BLOCK_R rows, the row in BLOCK_N column chunks.
Forward: pass 1 reads fa, fb for the row statistics (min/max or the L2 norm),
pass 2 reads them again and writes m, or ia, ib, da, db: one kernel, two
reads of the inputs (the second mostly from cache) and one write per output.
Nothing is saved for the backward but fa and fb themselves (ops.py saves them).
Backward: one kernel, three passes over the row: the statistics with the tie
counts of the extremes, the row sums of dm and dm * m that dp needs, then dp
and the written dfa, dfb; the inputs are re-read in each pass, nothing is
stored between passes but the per-row scalars.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRETING, acc_dtype, grad_p, grad_p_coefficients, load_pair_tile, load_tile, row_stats


@triton.jit
def _pair_forward_kernel(
    fa_ptr, fb_ptr, ia_ptr, ib_ptr, da_ptr, db_ptr,
    rows, n, eps: tl.float64,
    stride_ar, stride_ac, stride_br, stride_bc, stride_or, stride_oc,
    L2: tl.constexpr, DECOMPOSE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """m (DECOMPOSE false, written to ia_ptr) or m*fa, m*fb, (1-m)*fa, (1-m)*fb; outputs share one layout."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    row_mask = r < rows
    a_rows, b_rows, out_rows = r * stride_ar, r * stride_br, r * stride_or
    lo, hi, den, unclamped, k_lo, k_hi = row_stats(
        fa_ptr, fb_ptr, a_rows, b_rows, row_mask, n, stride_ac, stride_bc, eps, L2, False, BLOCK_R, BLOCK_N, ACC
    )
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (cols[None, :] < n)
        a, b, _, m = load_pair_tile(fa_ptr, fb_ptr, a_rows, b_rows, cols, stride_ac, stride_bc, mask, lo, den, ACC)
        out = out_rows[:, None] + cols[None, :] * stride_oc
        if DECOMPOSE:
            tl.store(ia_ptr + out, (m * a).to(ia_ptr.dtype.element_ty), mask=mask)
            tl.store(ib_ptr + out, (m * b).to(ib_ptr.dtype.element_ty), mask=mask)
            tl.store(da_ptr + out, ((1 - m) * a).to(da_ptr.dtype.element_ty), mask=mask)
            tl.store(db_ptr + out, ((1 - m) * b).to(db_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(ia_ptr + out, m.to(ia_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_grads(g_ia_ptr, g_ib_ptr, g_da_ptr, g_db_ptr, g_rows, cols, stride_gc, mask, a, b, m,
                DECOMPOSE: tl.constexpr, ACC: tl.constexpr):
    """(dm, the part of dfa, dfb that does not go through m); identical_map's grad_m is g_ia."""
    g_ia = load_tile(g_ia_ptr, g_rows[0], cols, stride_gc[0], mask, ACC)
    if DECOMPOSE:
        g_ib = load_tile(g_ib_ptr, g_rows[1], cols, stride_gc[1], mask, ACC)
        g_da = load_tile(g_da_ptr, g_rows[2], cols, stride_gc[2], mask, ACC)
        g_db = load_tile(g_db_ptr, g_rows[3], cols, stride_gc[3], mask, ACC)
        dm = (g_ia - g_da) * a + (g_ib - g_db) * b
        direct_a = g_ia * m + g_da * (1 - m)
        direct_b = g_ib * m + g_db * (1 - m)
    else:
        dm = g_ia
        direct_a = tl.zeros_like(a)
        direct_b = direct_a
    return dm, direct_a, direct_b


@triton.jit
def _pair_backward_kernel(
    g_ia_ptr, g_ib_ptr, g_da_ptr, g_db_ptr, fa_ptr, fb_ptr, dfa_ptr, dfb_ptr,
    rows, n, eps: tl.float64,
    stride_ar, stride_ac, stride_br, stride_bc, stride_dar, stride_dac, stride_dbr, stride_dbc,
    stride_g0r, stride_g0c, stride_g1r, stride_g1c, stride_g2r, stride_g2c, stride_g3r, stride_g3c,
    L2: tl.constexpr, DECOMPOSE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """dfa, dfb from grad_m (DECOMPOSE false, in g_ia_ptr) or the four output grads."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    row_mask = r < rows
    a_rows, b_rows, da_rows, db_rows = r * stride_ar, r * stride_br, r * stride_dar, r * stride_dbr
    g_rows = (r * stride_g0r, r * stride_g1r, r * stride_g2r, r * stride_g3r)
    stride_gc = (stride_g0c, stride_g1c, stride_g2c, stride_g3c)
    lo, hi, den, unclamped, k_lo, k_hi = row_stats(
        fa_ptr, fb_ptr, a_rows, b_rows, row_mask, n, stride_ac, stride_bc, eps, L2, True, BLOCK_R, BLOCK_N, ACC
    )
    dm_sum = tl.zeros([BLOCK_R], ACC)
    dm_dot_m = tl.zeros([BLOCK_R], ACC)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (cols[None, :] < n)
        a, b, _, m = load_pair_tile(fa_ptr, fb_ptr, a_rows, b_rows, cols, stride_ac, stride_bc, mask, lo, den, ACC)
        dm, _, _ = _load_grads(g_ia_ptr, g_ib_ptr, g_da_ptr, g_db_ptr, g_rows, cols, stride_gc, mask, a, b, m,
                               DECOMPOSE, ACC)
        dm_sum += tl.sum(dm, axis=1)
        dm_dot_m += tl.sum(dm * m, axis=1)
    coef_m, u_lo, u_hi = grad_p_coefficients(dm_sum, dm_dot_m, unclamped, k_lo, k_hi, L2)
    for start in range(0, n, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = row_mask[:, None] & (cols[None, :] < n)
        a, b, p, m = load_pair_tile(fa_ptr, fb_ptr, a_rows, b_rows, cols, stride_ac, stride_bc, mask, lo, den, ACC)
        dm, direct_a, direct_b = _load_grads(g_ia_ptr, g_ib_ptr, g_da_ptr, g_db_ptr, g_rows, cols, stride_gc, mask,
                                             a, b, m, DECOMPOSE, ACC)
        dp = grad_p(dm, p, m, lo, hi, den, coef_m, u_lo, u_hi, L2)
        da_out = da_rows[:, None] + cols[None, :] * stride_dac
        db_out = db_rows[:, None] + cols[None, :] * stride_dbc
        tl.store(dfa_ptr + da_out, (direct_a + dp * b).to(dfa_ptr.dtype.element_ty), mask=mask)
        tl.store(dfb_ptr + db_out, (direct_b + dp * a).to(dfb_ptr.dtype.element_ty), mask=mask)


def _blocks(n: int, dtype: torch.dtype):
    """(BLOCK_R, BLOCK_N): on GPUs tiles of 2048 elements (1024 in float64) and at most 128 rows,
    8 elements per thread with 8 warps: ptxas (sm_90) reports no register spills.

    The interpreter pays per block, not per element: 16 columns (several blocks per row
    in small tests) up to 128 columns, 512 beyond.
    """
    if INTERPRETING:
        return 4, 16 if n <= 128 else 512
    tile = 1024 if dtype == torch.float64 else 2048
    block_n = min(triton.next_power_of_2(max(n, 1)), tile)
    return min(tile // block_n, 128), block_n


def _launch_params(fa: torch.Tensor, norm: str):
    rows, n = fa.shape
    block_r, block_n = _blocks(n, fa.dtype)
    grid = (triton.cdiv(rows, block_r),)
    meta = dict(L2=norm == "l2", BLOCK_R=block_r, BLOCK_N=block_n, ACC=acc_dtype(fa.dtype), num_warps=8)
    return grid, meta


def pair_forward(fa: torch.Tensor, fb: torch.Tensor, norm: str, eps: float, decompose: bool):
    """m, or (ia, ib, da, db), in fa's dtype and layout (inputs already checked)."""
    outs = [torch.empty_like(fa) for _ in range(4 if decompose else 1)]
    if fa.numel() == 0:
        return outs
    (ia, ib, da, db) = outs if decompose else outs * 4
    grid, meta = _launch_params(fa, norm)
    _pair_forward_kernel[grid](
        fa, fb, ia, ib, da, db, fa.shape[0], fa.shape[1], eps,
        *fa.stride(), *fb.stride(), *ia.stride(), DECOMPOSE=decompose, **meta,
    )
    return outs


def pair_backward(grads, fa: torch.Tensor, fb: torch.Tensor, norm: str, eps: float):
    """dfa, dfb from [grad_m] (identical_map) or [grad_ia, grad_ib, grad_da, grad_db] (decompose)."""
    dfa, dfb = torch.empty_like(fa), torch.empty_like(fb)
    if fa.numel() == 0:
        return dfa, dfb
    decompose = len(grads) == 4
    g = list(grads) if decompose else list(grads) * 4
    grid, meta = _launch_params(fa, norm)
    _pair_backward_kernel[grid](
        *g, fa, fb, dfa, dfb, fa.shape[0], fa.shape[1], eps,
        *fa.stride(), *fb.stride(), *dfa.stride(), *dfb.stride(), *(s for t in g for s in t.stride()),
        DECOMPOSE=decompose, **meta,
        # dm is computed in two passes; without FMA contraction both round alike, so that
        # dp = (dm - mean dm) / eps of a clamped row cancels exactly (0 for n = 1)
        enable_fp_fusion=False,
    )
    return dfa, dfb
