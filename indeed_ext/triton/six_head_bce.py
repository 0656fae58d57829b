"""Triton kernels of six_head_bce (docs/SPEC.md, "Structure the kernels use").

Forward, two kernels:
1. ``_linear_kernel``: the batch logits L = F W^T + b (B, c), one GEMM over B rows.
   It is a separate kernel because L is an output of the schema (saved for the
   backward) and the orig/disp heads of every pair only gather rows of it:
   computing fa W^T, fb W^T inside the pair kernel would redo it for 2P rows.
2. ``_six_head_forward_kernel``, one program per block of pairs (and of classes):
   pass 1 gathers the fa, fb rows for the row statistics of p, pass 2 gathers them
   again, forms m, m*fa, m*fb in registers and accumulates (m*fa) W^T and (m*fb) W^T
   with tl.dot; the epilogue adds the bias, gathers L[a], L[b] and the targets,
   forms the disparate logits by subtraction and writes the six per-head BCE sums.
   Written: loss (P, 6) and ident_logits (P, 2, c); nothing of size P x n.
   With more classes than one block, each class block writes partial sums that
   torch adds (deterministic).
Saved for the backward (by ops.py): the inputs and the logits L, ident_logits.

Backward, three kernels, every reduction deterministic except the scatter of dF:
A. ``_grad_logits_kernel``, per block of pairs: one pass over the fa, fb rows for
   the statistics of p with the tie counts, then over the classes: e_h =
   g_h (sigmoid(z_h) - y_h) from the saved logits, combined per feature vector as
   Ga = e_oa + e_da, Gb = e_ob + e_db, Gia = e_ia - e_da, Gib = e_ib - e_db (written,
   (4, P, c)); the row sums that dp needs follow from the logits without touching
   n again: sum_j dm_j = Gia.(L[a]-b) + Gib.(L[b]-b), sum_j dm_j m_j = Gia.(Lia-b) +
   Gib.(Lib-b). Per pair it writes the six scalars of m and dp; per program the
   partial sums of dbias, added by torch afterwards.
B. ``_grad_features_kernel``, per block of pairs and of features: the four GEMMs
   Ga W, Gb W, Gia W, Gib W, then dfa = Ga W + (Gia W) m + dp fb (likewise dfb)
   scatter-added into dF[a], dF[b] with atomics, as torch's own indexing backward
   does; with torch.use_deterministic_algorithms(True) it writes the per-pair rows
   instead and torch's index_add_ reduces them deterministically.
C. ``_grad_weight_kernel``, per block of classes and of features, a split of the
   pairs: dW = Ga^T fa + Gb^T fb + Gia^T (m fa) + Gib^T (m fb), recomputing m from the
   saved per-pair scalars; the splits' partial sums are added by torch.
The batch G of the spec is never formed: its two GEMMs become per-pair GEMMs,
which needs no scatter of G and shares the loads of W and the fa, fb tiles.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRETING, acc_dtype, dot_dtype, dot_precision, grad_p, grad_p_coefficients, load_tile, row_stats


@triton.jit
def _linear_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, rows, n, c,
    stride_xr, stride_xc, stride_wr, stride_wc,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """out (rows, c), contiguous, ACC = x W^T + bias."""
    r = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    classes = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask, class_mask = r < rows, classes < c
    acc = tl.zeros([BLOCK_M, BLOCK_C], ACC)
    for start in range(0, n, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        x = load_tile(x_ptr, r * stride_xr, k, stride_xc, row_mask[:, None] & (k[None, :] < n), DOT)
        w_t = load_tile(w_ptr, k * stride_wc, classes, stride_wr, (k[:, None] < n) & class_mask[None, :], DOT)
        acc = tl.dot(x, w_t, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + classes, mask=class_mask, other=0.0).to(ACC)[None, :]
    tl.store(out_ptr + r[:, None] * c + classes[None, :], acc, mask=row_mask[:, None] & class_mask[None, :])


@triton.jit
def _bce_sum(z, y, mask):
    """sum over classes of softplus(z) - y z, softplus in the stable form max(z, 0) + log(1 + exp(-|z|))."""
    bce = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z))) - y * z
    return tl.sum(tl.where(mask, bce, 0.0), axis=1)


@triton.jit
def _six_head_forward_kernel(
    f_ptr, w_ptr, bias_ptr, t_ptr, index_a_ptr, index_b_ptr, logits_ptr, ident_ptr, loss_ptr,
    P, n, c, eps: tl.float64,
    stride_fr, stride_fc, stride_wr, stride_wc, stride_tr, stride_tc,
    L2: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    pairs = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    pair_mask = pairs < P
    idx_a = tl.load(index_a_ptr + pairs, mask=pair_mask, other=0)
    idx_b = tl.load(index_b_ptr + pairs, mask=pair_mask, other=0)
    a_rows, b_rows = idx_a * stride_fr, idx_b * stride_fr
    lo, hi, den, unclamped, k_lo, k_hi = row_stats(
        f_ptr, f_ptr, a_rows, b_rows, pair_mask, n, stride_fc, stride_fc, eps, L2, False, BLOCK_P, BLOCK_K, ACC
    )
    classes = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    class_mask = classes < c
    acc_a = tl.zeros([BLOCK_P, BLOCK_C], ACC)
    acc_b = tl.zeros([BLOCK_P, BLOCK_C], ACC)
    for start in range(0, n, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        mask = pair_mask[:, None] & (k[None, :] < n)
        a = load_tile(f_ptr, a_rows, k, stride_fc, mask, ACC)
        b = load_tile(f_ptr, b_rows, k, stride_fc, mask, ACC)
        m = (a * b - lo[:, None]) / den[:, None]
        w_t = load_tile(w_ptr, k * stride_wc, classes, stride_wr, (k[:, None] < n) & class_mask[None, :], DOT)
        acc_a = tl.dot((m * a).to(DOT), w_t, acc_a, input_precision=PRECISION)
        acc_b = tl.dot((m * b).to(DOT), w_t, acc_b, input_precision=PRECISION)
    if HAS_BIAS:
        beta = tl.load(bias_ptr + classes, mask=class_mask, other=0.0).to(ACC)[None, :]
    else:
        beta = tl.zeros([1, BLOCK_C], ACC)
    mask = pair_mask[:, None] & class_mask[None, :]
    z_ia = acc_a + beta
    z_ib = acc_b + beta
    ident = pairs[:, None] * (2 * c) + classes[None, :]
    tl.store(ident_ptr + ident, z_ia, mask=mask)
    tl.store(ident_ptr + ident + c, z_ib, mask=mask)
    z_oa = load_tile(logits_ptr, idx_a * c, classes, 1, mask, ACC)
    z_ob = load_tile(logits_ptr, idx_b * c, classes, 1, mask, ACC)
    y_a = load_tile(t_ptr, idx_a * stride_tr, classes, stride_tc, mask, ACC)
    y_b = load_tile(t_ptr, idx_b * stride_tr, classes, stride_tc, mask, ACC)
    both = y_a * y_b
    # loss_ptr: (class blocks, P, 6) partial sums, one slice per class block
    out = loss_ptr + (tl.program_id(1) * P + pairs) * 6
    tl.store(out + 0, _bce_sum(z_oa, y_a, mask), mask=pair_mask)
    tl.store(out + 1, _bce_sum(z_ob, y_b, mask), mask=pair_mask)
    tl.store(out + 2, _bce_sum(z_ia, both, mask), mask=pair_mask)
    tl.store(out + 3, _bce_sum(z_ib, both, mask), mask=pair_mask)
    tl.store(out + 4, _bce_sum(z_oa - z_ia + beta, y_a - both, mask), mask=pair_mask)
    tl.store(out + 5, _bce_sum(z_ob - z_ib + beta, y_b - both, mask), mask=pair_mask)


@triton.jit
def _head_error(g_ptr, pairs, pair_mask, mask, z, y, HEAD: tl.constexpr, ACC: tl.constexpr):
    """e = g_h (sigmoid(z) - y) of one head, zero outside mask."""
    g = tl.load(g_ptr + pairs * 6 + HEAD, mask=pair_mask, other=0.0).to(ACC)
    return tl.where(mask, g[:, None] * (tl.sigmoid(z) - y), 0.0)


@triton.jit
def _grad_logits_kernel(
    g_ptr, f_ptr, bias_ptr, t_ptr, index_a_ptr, index_b_ptr, logits_ptr, ident_ptr,
    ga_ptr, gb_ptr, gia_ptr, gib_ptr, coef_ptr, dbias_ptr,
    P, n, c, eps: tl.float64,
    stride_fr, stride_fc, stride_tr, stride_tc,
    L2: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    pairs = (pid * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    pair_mask = pairs < P
    idx_a = tl.load(index_a_ptr + pairs, mask=pair_mask, other=0)
    idx_b = tl.load(index_b_ptr + pairs, mask=pair_mask, other=0)
    lo, hi, den, unclamped, k_lo, k_hi = row_stats(
        f_ptr, f_ptr, idx_a * stride_fr, idx_b * stride_fr, pair_mask, n, stride_fc, stride_fc, eps,
        L2, True, BLOCK_P, BLOCK_K, ACC,
    )
    dm_sum = tl.zeros([BLOCK_P], ACC)
    dm_dot_m = tl.zeros([BLOCK_P], ACC)
    for start in range(0, c, BLOCK_C):
        classes = start + tl.arange(0, BLOCK_C)
        class_mask = classes < c
        mask = pair_mask[:, None] & class_mask[None, :]
        if HAS_BIAS:
            beta = tl.load(bias_ptr + classes, mask=class_mask, other=0.0).to(ACC)[None, :]
        else:
            beta = tl.zeros([1, BLOCK_C], ACC)
        z_oa = load_tile(logits_ptr, idx_a * c, classes, 1, mask, ACC)
        z_ob = load_tile(logits_ptr, idx_b * c, classes, 1, mask, ACC)
        z_ia = load_tile(ident_ptr, pairs * (2 * c), classes, 1, mask, ACC)
        z_ib = load_tile(ident_ptr, pairs * (2 * c) + c, classes, 1, mask, ACC)
        y_a = load_tile(t_ptr, idx_a * stride_tr, classes, stride_tc, mask, ACC)
        y_b = load_tile(t_ptr, idx_b * stride_tr, classes, stride_tc, mask, ACC)
        both = y_a * y_b
        e_oa = _head_error(g_ptr, pairs, pair_mask, mask, z_oa, y_a, 0, ACC)
        e_ob = _head_error(g_ptr, pairs, pair_mask, mask, z_ob, y_b, 1, ACC)
        e_ia = _head_error(g_ptr, pairs, pair_mask, mask, z_ia, both, 2, ACC)
        e_ib = _head_error(g_ptr, pairs, pair_mask, mask, z_ib, both, 3, ACC)
        e_da = _head_error(g_ptr, pairs, pair_mask, mask, z_oa - z_ia + beta, y_a - both, 4, ACC)
        e_db = _head_error(g_ptr, pairs, pair_mask, mask, z_ob - z_ib + beta, y_b - both, 5, ACC)
        g_ia = e_ia - e_da
        g_ib = e_ib - e_db
        out = pairs[:, None] * c + classes[None, :]
        tl.store(ga_ptr + out, e_oa + e_da, mask=mask)
        tl.store(gb_ptr + out, e_ob + e_db, mask=mask)
        tl.store(gia_ptr + out, g_ia, mask=mask)
        tl.store(gib_ptr + out, g_ib, mask=mask)
        # sum_j dm_j and sum_j dm_j m_j through the logits (see the file comment)
        dm_sum += tl.sum(g_ia * (z_oa - beta) + g_ib * (z_ob - beta), axis=1)
        dm_dot_m += tl.sum(g_ia * (z_ia - beta) + g_ib * (z_ib - beta), axis=1)
        dbias = tl.sum(e_oa + e_ob + e_ia + e_ib + e_da + e_db, axis=0)
        tl.store(dbias_ptr + pid * c + classes, dbias, mask=class_mask)
    coef_m, t_lo, t_hi = grad_p_coefficients(dm_sum, dm_dot_m, den, unclamped, k_lo, k_hi, L2)
    coef = coef_ptr + pairs * 6
    tl.store(coef + 0, lo, mask=pair_mask)
    tl.store(coef + 1, hi, mask=pair_mask)
    tl.store(coef + 2, den, mask=pair_mask)
    tl.store(coef + 3, coef_m, mask=pair_mask)
    tl.store(coef + 4, t_lo, mask=pair_mask)
    tl.store(coef + 5, t_hi, mask=pair_mask)


@triton.jit
def _grad_features_kernel(
    f_ptr, w_ptr, index_a_ptr, index_b_ptr, ga_ptr, gb_ptr, gia_ptr, gib_ptr, coef_ptr,
    df_ptr, dfa_ptr, dfb_ptr,
    P, n, c,
    stride_fr, stride_fc, stride_wr, stride_wc, stride_dr, stride_dc,
    L2: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """dfa, dfb of a tile of pairs x features: atomically added to df (ATOMIC) or written to dfa, dfb (P, n)."""
    pairs = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    pair_mask, col_mask = pairs < P, cols < n
    idx_a = tl.load(index_a_ptr + pairs, mask=pair_mask, other=0)
    idx_b = tl.load(index_b_ptr + pairs, mask=pair_mask, other=0)
    d_fa = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    d_fb = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    d_ia = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    d_ib = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    for start in range(0, c, BLOCK_C):
        classes = start + tl.arange(0, BLOCK_C)
        class_mask = classes < c
        w = load_tile(w_ptr, classes * stride_wr, cols, stride_wc, class_mask[:, None] & col_mask[None, :], DOT)
        g_mask = pair_mask[:, None] & class_mask[None, :]
        d_fa = tl.dot(load_tile(ga_ptr, pairs * c, classes, 1, g_mask, DOT), w, d_fa, input_precision=PRECISION)
        d_fb = tl.dot(load_tile(gb_ptr, pairs * c, classes, 1, g_mask, DOT), w, d_fb, input_precision=PRECISION)
        d_ia = tl.dot(load_tile(gia_ptr, pairs * c, classes, 1, g_mask, DOT), w, d_ia, input_precision=PRECISION)
        d_ib = tl.dot(load_tile(gib_ptr, pairs * c, classes, 1, g_mask, DOT), w, d_ib, input_precision=PRECISION)
    coef = coef_ptr + pairs * 6
    lo = tl.load(coef + 0, mask=pair_mask, other=0.0)
    hi = tl.load(coef + 1, mask=pair_mask, other=0.0)
    den = tl.load(coef + 2, mask=pair_mask, other=1.0)
    coef_m = tl.load(coef + 3, mask=pair_mask, other=0.0)
    t_lo = tl.load(coef + 4, mask=pair_mask, other=0.0)
    t_hi = tl.load(coef + 5, mask=pair_mask, other=0.0)
    mask = pair_mask[:, None] & col_mask[None, :]
    a = load_tile(f_ptr, idx_a * stride_fr, cols, stride_fc, mask, ACC)
    b = load_tile(f_ptr, idx_b * stride_fr, cols, stride_fc, mask, ACC)
    p = a * b
    m = (p - lo[:, None]) / den[:, None]
    dp = grad_p(d_ia * a + d_ib * b, p, m, lo, hi, den, coef_m, t_lo, t_hi, L2)
    d_fa += d_ia * m + dp * b
    d_fb += d_ib * m + dp * a
    if ATOMIC:
        tl.atomic_add(df_ptr + idx_a[:, None] * stride_dr + cols[None, :] * stride_dc, d_fa, mask=mask)
        tl.atomic_add(df_ptr + idx_b[:, None] * stride_dr + cols[None, :] * stride_dc, d_fb, mask=mask)
    else:
        out = pairs[:, None] * n + cols[None, :]
        tl.store(dfa_ptr + out, d_fa, mask=mask)
        tl.store(dfb_ptr + out, d_fb, mask=mask)


@triton.jit
def _grad_weight_kernel(
    f_ptr, index_a_ptr, index_b_ptr, ga_ptr, gb_ptr, gia_ptr, gib_ptr, coef_ptr, dw_ptr,
    P, n, c, stride_fr, stride_fc,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """Partial dW (splits, c, n) of a tile of classes x features over the pair blocks of split program_id(2)."""
    classes = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    split, splits = tl.program_id(2), tl.num_programs(2)
    class_mask, col_mask = classes < c, cols < n
    acc = tl.zeros([BLOCK_C, BLOCK_N], ACC)
    for start in range(split * BLOCK_P, P, splits * BLOCK_P):
        pairs = (start + tl.arange(0, BLOCK_P)).to(tl.int64)
        pair_mask = pairs < P
        idx_a = tl.load(index_a_ptr + pairs, mask=pair_mask, other=0)
        idx_b = tl.load(index_b_ptr + pairs, mask=pair_mask, other=0)
        lo = tl.load(coef_ptr + pairs * 6 + 0, mask=pair_mask, other=0.0)
        den = tl.load(coef_ptr + pairs * 6 + 2, mask=pair_mask, other=1.0)
        mask = pair_mask[:, None] & col_mask[None, :]
        a = load_tile(f_ptr, idx_a * stride_fr, cols, stride_fc, mask, ACC)
        b = load_tile(f_ptr, idx_b * stride_fr, cols, stride_fc, mask, ACC)
        m = (a * b - lo[:, None]) / den[:, None]
        # G^T tiles (classes x pairs) straight from the (P, c) buffers
        g_mask = class_mask[:, None] & pair_mask[None, :]
        acc = tl.dot(load_tile(ga_ptr, classes, pairs, c, g_mask, DOT), a.to(DOT), acc, input_precision=PRECISION)
        acc = tl.dot(load_tile(gb_ptr, classes, pairs, c, g_mask, DOT), b.to(DOT), acc, input_precision=PRECISION)
        acc = tl.dot(load_tile(gia_ptr, classes, pairs, c, g_mask, DOT), (m * a).to(DOT), acc,
                     input_precision=PRECISION)
        acc = tl.dot(load_tile(gib_ptr, classes, pairs, c, g_mask, DOT), (m * b).to(DOT), acc,
                     input_precision=PRECISION)
    out = (split * c + classes)[:, None] * n + cols[None, :]
    tl.store(dw_ptr + out, acc, mask=class_mask[:, None] & col_mask[None, :])


def _dot_blocks(c: int, most: int) -> int:
    """A class block: a power of two >= 16 (tl.dot's minimum), at most `most`."""
    return 16 if INTERPRETING else min(most, max(16, triton.next_power_of_2(c)))


def _stages(dtype: torch.dtype) -> int:
    return 1 if dtype == torch.float64 else 2


def _common_meta(features: torch.Tensor):
    return dict(ACC=acc_dtype(features.dtype), DOT=dot_dtype(features.dtype), PRECISION=dot_precision(features.dtype))


def six_head_forward(features, weight, bias, targets, index_a, index_b, norm: str, eps: float):
    """(loss (P, 6), logits (B, c), ident_logits (P, 2, c)) in the accumulation dtype; inputs already checked."""
    (B, n), c, P = features.shape, weight.shape[0], index_a.shape[0]
    cd = torch.float64 if features.dtype == torch.float64 else torch.float32
    dev = features.device
    logits = torch.empty((B, c), dtype=cd, device=dev)
    ident_logits = torch.empty((P, 2, c), dtype=cd, device=dev)
    meta = _common_meta(features)
    block_p, block_k = (16, 16) if INTERPRETING else (32, 64)
    block_c = _dot_blocks(c, 128)
    num_stages = _stages(features.dtype)
    if B and c:
        _linear_kernel[(triton.cdiv(B, block_p), triton.cdiv(c, block_c))](
            features, weight, bias, logits, B, n, c, *features.stride(), *weight.stride(),
            HAS_BIAS=bias is not None, BLOCK_M=block_p, BLOCK_C=block_c, BLOCK_K=block_k,
            num_warps=4, num_stages=num_stages, **meta,
        )
    if P == 0 or c == 0:
        return torch.zeros((P, 6), dtype=cd, device=dev), logits, ident_logits
    class_blocks = triton.cdiv(c, block_c)
    loss = torch.empty((P, 6) if class_blocks == 1 else (class_blocks, P, 6), dtype=cd, device=dev)
    _six_head_forward_kernel[(triton.cdiv(P, block_p), class_blocks)](
        features, weight, bias, targets, index_a.contiguous(), index_b.contiguous(), logits, ident_logits, loss,
        P, n, c, eps, *features.stride(), *weight.stride(), *targets.stride(),
        L2=norm == "l2", HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_K=block_k,
        num_warps=4, num_stages=num_stages, **meta,
    )
    return (loss if class_blocks == 1 else loss.sum(0)), logits, ident_logits


def _weight_splits(device: torch.device, tiles: int, pair_blocks: int) -> int:
    """How many programs share the pairs of one dW tile: about two waves of the GPU, at most one per pair block."""
    if INTERPRETING:
        return min(2, pair_blocks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(pair_blocks, triton.cdiv(2 * sms, tiles)))


def _in_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t in like's dtype and strides (those of the fake kernel's empty_like)."""
    if t.dtype == like.dtype and t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)


def six_head_backward(grad, features, weight, bias, targets, index_a, index_b, logits, ident_logits, norm: str,
                      eps: float):
    """(grad_features, grad_weight, grad_bias) in the dtypes of features, weight, weight; inputs already checked."""
    (B, n), c, P = features.shape, weight.shape[0], index_a.shape[0]
    cd = torch.float64 if features.dtype == torch.float64 else torch.float32
    dev = features.device
    grad_features = torch.zeros_like(features, dtype=cd)
    if P == 0 or c == 0 or n == 0:
        return grad_features.to(features.dtype), torch.zeros_like(weight), weight.new_zeros((c,))
    meta = _common_meta(features)
    l2 = norm == "l2"
    num_stages = _stages(features.dtype)
    index_a, index_b = index_a.contiguous(), index_b.contiguous()
    grad, logits, ident_logits = grad.contiguous(), logits.contiguous(), ident_logits.contiguous()
    block_p = 16 if INTERPRETING else 32
    pair_blocks = triton.cdiv(P, block_p)

    ga, gb, gia, gib = torch.empty((4, P, c), dtype=cd, device=dev)
    coef = torch.empty((P, 6), dtype=cd, device=dev)
    dbias = torch.empty((pair_blocks, c), dtype=cd, device=dev)
    _grad_logits_kernel[(pair_blocks,)](
        grad, features, bias, targets, index_a, index_b, logits, ident_logits, ga, gb, gia, gib, coef, dbias,
        P, n, c, eps, *features.stride(), *targets.stride(),
        L2=l2, HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=_dot_blocks(c, 128),
        BLOCK_K=16 if INTERPRETING else 128, ACC=meta["ACC"], num_warps=4,
    )

    atomic = not torch.are_deterministic_algorithms_enabled()
    dfa, dfb = (grad_features, grad_features) if atomic else torch.empty((2, P, n), dtype=cd, device=dev)
    block_n = 16 if INTERPRETING else 64
    _grad_features_kernel[(pair_blocks, triton.cdiv(n, block_n))](
        features, weight, index_a, index_b, ga, gb, gia, gib, coef, grad_features, dfa, dfb,
        P, n, c, *features.stride(), *weight.stride(), *grad_features.stride(),
        L2=l2, ATOMIC=atomic, BLOCK_P=block_p, BLOCK_C=_dot_blocks(c, 64), BLOCK_N=block_n,
        num_warps=4, num_stages=num_stages, **meta,
    )
    if not atomic:
        grad_features.index_add_(0, index_a, dfa).index_add_(0, index_b, dfb)

    block_c = _dot_blocks(c, 128)
    tiles = (triton.cdiv(c, block_c), triton.cdiv(n, block_n))
    splits = _weight_splits(dev, tiles[0] * tiles[1], pair_blocks)
    grad_weight = torch.empty((splits, c, n), dtype=cd, device=dev)
    _grad_weight_kernel[(*tiles, splits)](
        features, index_a, index_b, ga, gb, gia, gib, coef, grad_weight, P, n, c, *features.stride(),
        BLOCK_P=block_p, BLOCK_C=block_c, BLOCK_N=block_n, num_warps=8, num_stages=num_stages, **meta,
    )
    return (
        grad_features.to(features.dtype),
        _in_layout_of(grad_weight.sum(0) if splits > 1 else grad_weight[0], weight),
        dbias.sum(0).to(weight.dtype),
    )
