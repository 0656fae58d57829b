"""Triton kernels of six_head_loss (docs/SPEC.md, "Structure the kernels use").

The base loss (BCE or ASL) is a compile-time choice (ASL, FOCAL_GRAD) of the two kernels
that touch the logits, the forward and A below; both call the same elementwise functions,
_base_loss and _base_loss_grad. So is present_negatives (MEAN_PRESENT): "mean" weights each
class term of the decomposed heads by w (reference.present_negative_weights), in the loss sums
and in the logit errors e_h; both kernels first sum the targets' s over all classes per pair
(_present_sums), then form the weights per class block (_present_weight).

Forward, two kernels:
1. ``_linear_kernel``: the batch logits L = F W^T + b (B, c), one GEMM over B rows.
   It is a separate kernel because L is an output of the schema (saved for the
   backward) and the orig/disp heads of every pair only gather rows of it:
   computing fa W^T, fb W^T inside the pair kernel would redo it for 2P rows.
2. ``_six_head_forward_kernel``, one program per block of pairs (and of classes):
   pass 1 gathers the fa, fb rows for the row statistics of p, pass 2 gathers them
   again, forms m, m*fa, m*fb in registers and accumulates (m*fa) W^T and (m*fb) W^T
   with tl.dot; the epilogue adds the bias, gathers L[a], L[b] and the targets,
   forms the disparate logits by subtraction and writes the six per-head loss sums.
   Written: loss (P, 6) and ident_logits (P, 2, c); nothing of size P x n.
   With more classes than one block, each class block writes partial sums that
   torch adds (deterministic).
Saved for the backward (by ops.py): the inputs and the logits L, ident_logits.

Backward, four kernels; every reduction is deterministic except the scatter into dF:
A. ``_grad_logits_kernel``, per block of pairs: one pass over the fa, fb rows for the
   statistics of p with the tie counts (written, (P, 6)), then over the classes:
   e_h = g_h w_h dloss/dz(z_h, y_h) from the saved logits (w_h = 1 under "sum"), combined
   per feature vector as Ga = e_oa + e_da, Gb = e_ob + e_db, Gia = e_ia - e_da,
   Gib = e_ib - e_db (written, (4, P, c)), and per program the partial sums of dbias, added
   by torch.
B. ``_grad_m_kernel``, per block of pairs and of features: dm = (Gia W) fa + (Gib W) fb
   (written, (P, n)) and its partial row sums of dm and dm m, added by torch: the
   row reduction that dp needs.
C. ``_grad_features_kernel``, per block of pairs and of features: Ga W, Gb W, Gia W,
   Gib W, dp from the written dm and its row sums, dfa = Ga W + (Gia W) m + dp fb
   (likewise dfb) scatter-added into dF[a], dF[b] with atomics, as torch's own
   indexing backward does; under torch.use_deterministic_algorithms(True) it writes
   the per-pair rows and torch's index_add_ reduces them deterministically.
   dm is read back rather than recomputed: for a clamped row dp = (dm - mean dm)/eps
   must cancel exactly (it is 0 for n = 1), so the row sums must be sums of the very
   values used, not of a recomputation that may round differently.
D. ``_grad_weight_kernel``, per block of classes and of features, over a split of the
   pairs: dW = Ga^T fa + Gb^T fb + Gia^T (m fa) + Gib^T (m fb), m recomputed from the
   statistics; the splits' partial sums are added by torch.
The batch G of the spec is never formed: its two GEMMs become per-pair GEMMs (Ga, Gb),
which needs no scatter of G and shares the loads of W and of the fa, fb tiles.
Memory: the gathered fa, fb rows are read four times (A, B, C, D), dm written and read
once; the (P, c) buffers and W are small next to P x n.

Precision: tl.dot accumulates in float32 (float64 for float64). float32 operands follow
torch.get_float32_matmul_precision() ("highest": IEEE, else TF32). Half inputs feed
bf16/fp16 operands to the forward GEMMs and to kernel C; kernels B and D take them as
float32 with 3xTF32, since dm is amplified by 1/den in dp and dW sums over all pairs
(with half operands both drift from the float32 reference by more than one rounding).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRETING, acc_dtype, dot_dtype, dot_precision, grad_p, grad_p_coefficients, load_pair_tile, load_tile, row_stats,
)


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
        acc = tl.dot(x, w_t, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + classes, mask=class_mask, other=0.0).to(ACC)[None, :]
    tl.store(out_ptr + r[:, None] * c + classes[None, :], acc, mask=row_mask[:, None] & class_mask[None, :])


@triton.jit
def _pair_indices(index_a_ptr, index_b_ptr, pairs, P, B):
    """Mask and gathered feature rows (a, b) of a block of pairs (int64 positions).

    The mask keeps the pairs below P whose indices lie in [0, B): the kernels never read
    out of bounds, and the forward writes NaN losses for the others (on GPUs the op does
    not read index values on the host, which would cost a sync per call; the public API
    raises IndexError for them unless told the indices are valid).
    """
    in_range = pairs < P
    idx_a = tl.load(index_a_ptr + pairs, mask=in_range, other=0)
    idx_b = tl.load(index_b_ptr + pairs, mask=in_range, other=0)
    valid = in_range & (idx_a >= 0) & (idx_a < B) & (idx_b >= 0) & (idx_b < B)
    return valid, tl.where(valid, idx_a, 0), tl.where(valid, idx_b, 0)


@triton.jit
def _asl_terms(z, y, gamma_neg, gamma_pos, clip, eps_log):
    """The steps of reference.asl_sum (ASL's AsymmetricLoss) for logits z, targets y; see csrc/cpu/base_losses.h.

    (1 - pt)^gamma is exp(gamma log(1 - pt)) with pow's edges, b^0 = 1 and 0^gamma = 0 (1 - pt
    is 0 or at least one ulp of 1, so the 1e-30 floor only keeps log away from 0).
    """
    p = 1.0 / (1.0 + tl.exp(-z))  # torch.sigmoid's formula
    xs_neg_unclipped = (1.0 - p) + clip
    xs_neg = tl.where(xs_neg_unclipped > 1.0, 1.0, xs_neg_unclipped)  # NaN stays NaN, as in clamp
    pos = tl.where(p < eps_log, eps_log, p)
    neg = tl.where(xs_neg < eps_log, eps_log, xs_neg)
    log_likelihood = y * tl.log(pos) + (1.0 - y) * tl.log(neg)
    gamma = gamma_pos * y + gamma_neg * (1.0 - y)
    base = 1.0 - (p * y + xs_neg * (1.0 - y))
    power = tl.where(base > 0.0, tl.exp(gamma * tl.log(tl.maximum(base, 1e-30))), 0.0)
    weight = tl.where(gamma == 0.0, 1.0, power)
    return p, xs_neg_unclipped, xs_neg, pos, neg, log_likelihood, gamma, base, weight


@triton.jit
def _base_loss(z, y, gamma_neg, gamma_pos, clip, eps_log, ASL: tl.constexpr):
    """The loss of each logit: ASL, or BCE as softplus(z) - y z in the stable form max(z, 0) + log(1 + exp(-|z|))."""
    if ASL:
        _, _, _, _, _, log_likelihood, _, _, weight = _asl_terms(z, y, gamma_neg, gamma_pos, clip, eps_log)
        loss = -(log_likelihood * weight)
    else:
        loss = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z))) - y * z
    return loss


@triton.jit
def _base_loss_grad(z, y, gamma_neg, gamma_pos, clip, eps_log, ASL: tl.constexpr, FOCAL_GRAD: tl.constexpr):
    """d loss / dz of each logit (_base_loss), as autograd through reference.py gives it: ASL's clamps pass
    no gradient at equality (torch's clamp), and its focal weight w = (1 - pt)^gamma is a constant unless
    FOCAL_GRAD."""
    if ASL:
        p, xs_neg_unclipped, xs_neg, pos, neg, log_likelihood, gamma, base, weight = _asl_terms(
            z, y, gamma_neg, gamma_pos, clip, eps_log)
        grad_log_likelihood = -weight
        if FOCAL_GRAD:  # -(-A) dw/dbase, base^(gamma - 1) = w / base, and pow's values at base = 0
            at_zero = tl.where(gamma == 1.0, 1.0, tl.where((gamma > 0.0) & (gamma < 1.0), float("inf"), 0.0))
            power = tl.where(base > 0.0, weight / tl.where(base > 0.0, base, 1.0), at_zero)
            grad_pt = tl.where(gamma == 0.0, 0.0, log_likelihood * (gamma * power))
        else:
            grad_pt = tl.zeros_like(z)
        grad_pos = tl.where(p > eps_log, grad_log_likelihood * y / pos, 0.0)
        grad_neg = tl.where(xs_neg > eps_log, grad_log_likelihood * (1.0 - y) / neg, 0.0)
        grad_xs_neg = grad_neg + grad_pt * (1.0 - y)
        clip_limit = tl.where(clip > 0.0, 1.0, float("inf"))  # no clamp at all without a clip
        grad_p = grad_pos + grad_pt * y - tl.where(xs_neg_unclipped < clip_limit, grad_xs_neg, 0.0)
        grad = grad_p * (1.0 - p) * p
    else:
        grad = tl.sigmoid(z) - y
    return grad


@triton.jit
def _loss_params(gamma_neg, gamma_pos, clip, eps_log, ACC: tl.constexpr):
    """ASL's parameters (float64 arguments) in ACC, as torch rounds a Python scalar for a tensor of that dtype
    (tl.full, not tl.cast: the interpreter's tl.cast would round them to float32 first)."""
    return (tl.full((), gamma_neg, ACC), tl.full((), gamma_pos, ACC), tl.full((), clip, ACC),
            tl.full((), eps_log, ACC))


@triton.jit
def _loss_sum(z, y, class_weight, mask, gamma_neg, gamma_pos, clip, eps_log, ASL: tl.constexpr):
    """Sum over classes (axis 1) of class_weight * _base_loss (no weight when None), zero outside mask."""
    loss = _base_loss(z, y, gamma_neg, gamma_pos, clip, eps_log, ASL)
    if class_weight is not None:
        loss = class_weight * loss
    return tl.sum(tl.where(mask, loss, 0.0), axis=1)


@triton.jit
def _present_sums(t_ptr, idx_a, idx_b, stride_tr, stride_tc, pair_mask, c,
                  MEAN_PRESENT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Per pair, the sums over all classes of the s of the class weights (reference.present_negative_weights):
    ya - ya yb (ident_a), yb - ya yb (ident_b), ya yb (disp_a, disp_b), written as the kernels form the disp
    heads' targets; zeros unless MEAN_PRESENT."""
    sum_ident_a = tl.zeros([BLOCK_P], ACC)
    sum_ident_b = tl.zeros([BLOCK_P], ACC)
    sum_both = tl.zeros([BLOCK_P], ACC)
    if MEAN_PRESENT:
        for start in range(0, c, BLOCK_C):
            classes = start + tl.arange(0, BLOCK_C)
            mask = pair_mask[:, None] & (classes < c)[None, :]
            y_a = load_tile(t_ptr, idx_a * stride_tr, classes, stride_tc, mask, ACC)
            y_b = load_tile(t_ptr, idx_b * stride_tr, classes, stride_tc, mask, ACC)
            both = y_a * y_b
            sum_ident_a += tl.sum(y_a - both, axis=1)
            sum_ident_b += tl.sum(y_b - both, axis=1)
            sum_both += tl.sum(both, axis=1)
    return sum_ident_a, sum_ident_b, sum_both


@triton.jit
def _present_weight(s, s_sum, MEAN_PRESENT: tl.constexpr):
    """The class weights 1 - s + s / max(1, s_sum) of a head, s_sum per pair (from _present_sums); None (no
    weights) unless MEAN_PRESENT."""
    if MEAN_PRESENT:
        divisor = tl.where(s_sum < 1.0, 1.0, s_sum)  # clamp_min: NaN stays NaN
        weight = 1.0 - s + s / divisor[:, None]
    else:
        weight = None
    return weight


@triton.jit
def _six_head_forward_kernel(
    f_ptr, w_ptr, bias_ptr, t_ptr, index_a_ptr, index_b_ptr, logits_ptr, ident_ptr, loss_ptr,
    P, B, n, c, eps: tl.float64, gamma_neg: tl.float64, gamma_pos: tl.float64, clip: tl.float64, eps_log: tl.float64,
    stride_fr, stride_fc, stride_wr, stride_wc, stride_tr, stride_tc,
    L2: tl.constexpr, HAS_BIAS: tl.constexpr, ASL: tl.constexpr, MEAN_PRESENT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_STATS: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """loss partial sums (class blocks, P, 6) and ident_logits (P, 2, c) of a block of pairs and classes."""
    pairs = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    pair_mask, idx_a, idx_b = _pair_indices(index_a_ptr, index_b_ptr, pairs, P, B)
    a_rows, b_rows = idx_a * stride_fr, idx_b * stride_fr
    lo, hi, den, unclamped, k_lo, k_hi = row_stats(
        f_ptr, f_ptr, a_rows, b_rows, pair_mask, n, stride_fc, stride_fc, eps, L2, False, BLOCK_P, BLOCK_STATS, ACC
    )
    classes = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    class_mask = classes < c
    acc_a = tl.zeros([BLOCK_P, BLOCK_C], ACC)
    acc_b = tl.zeros([BLOCK_P, BLOCK_C], ACC)
    for start in range(0, n, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        mask = pair_mask[:, None] & (k[None, :] < n)
        a, b, _, m = load_pair_tile(f_ptr, f_ptr, a_rows, b_rows, k, stride_fc, stride_fc, mask, lo, den, ACC)
        w_t = load_tile(w_ptr, k * stride_wc, classes, stride_wr, (k[:, None] < n) & class_mask[None, :], DOT)
        acc_a = tl.dot((m * a).to(DOT), w_t, acc_a, input_precision=PRECISION, out_dtype=acc_a.dtype)
        acc_b = tl.dot((m * b).to(DOT), w_t, acc_b, input_precision=PRECISION, out_dtype=acc_b.dtype)
    # over all classes, not only this program's block; between the GEMM loop and the epilogue:
    # held through the loop, or formed with the epilogue's tiles live, they made ptxas spill (sm_90)
    sum_ident_a, sum_ident_b, sum_both = _present_sums(
        t_ptr, idx_a, idx_b, stride_tr, stride_tc, pair_mask, c, MEAN_PRESENT, BLOCK_P, BLOCK_C, ACC)
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
    y_a = load_tile(t_ptr, idx_a * stride_tr, classes, stride_tc, mask, ACC)
    y_b = load_tile(t_ptr, idx_b * stride_tr, classes, stride_tc, mask, ACC)
    both = y_a * y_b
    out = loss_ptr + (tl.program_id(1) * P + pairs) * 6
    # NaN losses for indices outside [0, B) (_pair_indices)
    bad = tl.where(pair_mask, 0.0, float("nan"))
    params = _loss_params(gamma_neg, gamma_pos, clip, eps_log, ACC)
    # side a's heads, then side b's: fewer tiles live at once (the ASL epilogue spilled otherwise)
    z_oa = load_tile(logits_ptr, idx_a * c, classes, 1, mask, ACC)
    _store_side_sums(out, pairs < P, bad, z_oa, z_ia, beta, y_a, both, sum_ident_a, sum_both, mask, params, 0, ASL,
                     MEAN_PRESENT)
    z_ob = load_tile(logits_ptr, idx_b * c, classes, 1, mask, ACC)
    _store_side_sums(out, pairs < P, bad, z_ob, z_ib, beta, y_b, both, sum_ident_b, sum_both, mask, params, 1, ASL,
                     MEAN_PRESENT)


@triton.jit
def _store_side_sums(out, in_range, bad, z_o, z_i, beta, y, both, sum_ident, sum_both, mask, params,
                     SIDE: tl.constexpr, ASL: tl.constexpr, MEAN_PRESENT: tl.constexpr):
    """The loss sums of one side's heads orig, ident, disp (columns SIDE, 2 + SIDE, 4 + SIDE of out); sum_ident,
    sum_both: the side's _present_sums."""
    w_ident = _present_weight(y - both, sum_ident, MEAN_PRESENT)  # s: the disp head's targets
    w_disp = _present_weight(both, sum_both, MEAN_PRESENT)
    tl.store(out + SIDE, _loss_sum(z_o, y, None, mask, *params, ASL) + bad, mask=in_range)
    tl.store(out + 2 + SIDE, _loss_sum(z_i, both, w_ident, mask, *params, ASL) + bad, mask=in_range)
    tl.store(out + 4 + SIDE, _loss_sum(z_o - z_i + beta, y - both, w_disp, mask, *params, ASL) + bad, mask=in_range)


@triton.jit
def _head_error(g_ptr, pairs, pair_mask, mask, z, y, class_weight, gamma_neg, gamma_pos, clip, eps_log,
                HEAD: tl.constexpr, ACC: tl.constexpr, ASL: tl.constexpr, FOCAL_GRAD: tl.constexpr):
    """e = g_h class_weight dloss/dz(z, y) of one head (no weight when None), zero outside mask."""
    g = tl.load(g_ptr + pairs * 6 + HEAD, mask=pair_mask, other=0.0).to(ACC)[:, None]
    if class_weight is not None:
        g = g * class_weight
    grad = _base_loss_grad(z, y, gamma_neg, gamma_pos, clip, eps_log, ASL, FOCAL_GRAD)
    return tl.where(mask, g * grad, 0.0)


@triton.jit
def _grad_logits_kernel(
    g_ptr, f_ptr, bias_ptr, t_ptr, index_a_ptr, index_b_ptr, logits_ptr, ident_ptr,
    ga_ptr, gb_ptr, gia_ptr, gib_ptr, stats_ptr, dbias_ptr,
    P, B, n, c, eps: tl.float64, gamma_neg: tl.float64, gamma_pos: tl.float64, clip: tl.float64, eps_log: tl.float64,
    stride_fr, stride_fc, stride_tr, stride_tc,
    L2: tl.constexpr, HAS_BIAS: tl.constexpr, ASL: tl.constexpr, FOCAL_GRAD: tl.constexpr, MEAN_PRESENT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    """Ga, Gb, Gia, Gib (P, c), the row statistics of p (P, 6) and partial dbias sums (pair blocks, c)."""
    pid = tl.program_id(0)
    pairs = (pid * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    pair_mask, idx_a, idx_b = _pair_indices(index_a_ptr, index_b_ptr, pairs, P, B)
    lo, hi, den, unclamped, k_lo, k_hi = row_stats(
        f_ptr, f_ptr, idx_a * stride_fr, idx_b * stride_fr, pair_mask, n, stride_fc, stride_fc, eps,
        L2, True, BLOCK_P, BLOCK_K, ACC,
    )
    stats = stats_ptr + pairs * 6
    tl.store(stats + 0, lo, mask=pair_mask)
    tl.store(stats + 1, hi, mask=pair_mask)
    tl.store(stats + 2, den, mask=pair_mask)
    tl.store(stats + 3, unclamped.to(ACC), mask=pair_mask)
    tl.store(stats + 4, k_lo.to(ACC), mask=pair_mask)
    tl.store(stats + 5, k_hi.to(ACC), mask=pair_mask)
    params = _loss_params(gamma_neg, gamma_pos, clip, eps_log, ACC)
    sum_ident_a, sum_ident_b, sum_both = _present_sums(
        t_ptr, idx_a, idx_b, stride_tr, stride_tc, pair_mask, c, MEAN_PRESENT, BLOCK_P, BLOCK_C, ACC)
    for start in range(0, c, BLOCK_C):
        classes = start + tl.arange(0, BLOCK_C)
        class_mask = classes < c
        mask = pair_mask[:, None] & class_mask[None, :]
        if HAS_BIAS:
            beta = tl.load(bias_ptr + classes, mask=class_mask, other=0.0).to(ACC)[None, :]
        else:
            beta = tl.zeros([1, BLOCK_C], ACC)
        y_a = load_tile(t_ptr, idx_a * stride_tr, classes, stride_tc, mask, ACC)
        y_b = load_tile(t_ptr, idx_b * stride_tr, classes, stride_tc, mask, ACC)
        both = y_a * y_b
        out = pairs[:, None] * c + classes[None, :]
        # side a's heads, then side b's: fewer tiles live at once (ASL's gradients spilled otherwise)
        z_oa = load_tile(logits_ptr, idx_a * c, classes, 1, mask, ACC)
        z_ia = load_tile(ident_ptr, pairs * (2 * c), classes, 1, mask, ACC)
        dbias = _store_side_errors(g_ptr, ga_ptr, gia_ptr, out, z_oa, z_ia, beta, y_a, both, sum_ident_a, sum_both,
                                   pairs, pair_mask, mask, params, 0, ACC, ASL, FOCAL_GRAD, MEAN_PRESENT)
        z_ob = load_tile(logits_ptr, idx_b * c, classes, 1, mask, ACC)
        z_ib = load_tile(ident_ptr, pairs * (2 * c) + c, classes, 1, mask, ACC)
        dbias += _store_side_errors(g_ptr, gb_ptr, gib_ptr, out, z_ob, z_ib, beta, y_b, both, sum_ident_b, sum_both,
                                    pairs, pair_mask, mask, params, 1, ACC, ASL, FOCAL_GRAD, MEAN_PRESENT)
        tl.store(dbias_ptr + pid * c + classes, dbias, mask=class_mask)


@triton.jit
def _store_side_errors(g_ptr, g_orig_ptr, g_ident_ptr, out, z_o, z_i, beta, y, both, sum_ident, sum_both, pairs,
                       pair_mask, mask, params, SIDE: tl.constexpr, ACC: tl.constexpr, ASL: tl.constexpr,
                       FOCAL_GRAD: tl.constexpr, MEAN_PRESENT: tl.constexpr):
    """One side's logit gradients e_o, e_i, e_d (heads orig, ident, disp: SIDE, 2 + SIDE, 4 + SIDE): stores
    G = e_o + e_d and G_ident = e_i - e_d at out, returns the side's column sums of dbias. sum_ident, sum_both:
    the side's _present_sums."""
    w_ident = _present_weight(y - both, sum_ident, MEAN_PRESENT)  # s: the disp head's targets
    w_disp = _present_weight(both, sum_both, MEAN_PRESENT)
    e_o = _head_error(g_ptr, pairs, pair_mask, mask, z_o, y, None, *params, SIDE, ACC, ASL, FOCAL_GRAD)
    e_i = _head_error(g_ptr, pairs, pair_mask, mask, z_i, both, w_ident, *params, 2 + SIDE, ACC, ASL, FOCAL_GRAD)
    e_d = _head_error(g_ptr, pairs, pair_mask, mask, z_o - z_i + beta, y - both, w_disp, *params, 4 + SIDE, ACC, ASL,
                      FOCAL_GRAD)
    tl.store(g_orig_ptr + out, e_o + e_d, mask=mask)
    tl.store(g_ident_ptr + out, e_i - e_d, mask=mask)
    return tl.sum(e_o + e_i + e_d, axis=0)


@triton.jit
def _g_times_w(acc, g_ptr, pairs, pair_mask, classes, class_mask, c, w, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc + G[pairs, classes] @ w for one of the (P, c) buffers of _grad_logits_kernel."""
    g = load_tile(g_ptr, pairs * c, classes, 1, pair_mask[:, None] & class_mask[None, :], DOT)
    return tl.dot(g, w, acc, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _pair_feature_tile(index_a_ptr, index_b_ptr, P, B, n, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """A program's block of pairs (axis 0) and of features (axis 1): pairs, cols, their masks, the gathered rows."""
    pairs = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    pair_mask, idx_a, idx_b = _pair_indices(index_a_ptr, index_b_ptr, pairs, P, B)
    return pairs, cols, pair_mask, cols < n, idx_a, idx_b


@triton.jit
def _g_w_products(w_ptr, ga_ptr, gb_ptr, gia_ptr, gib_ptr, pairs, pair_mask, cols, col_mask, c, stride_wr, stride_wc,
                  ORIGINAL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                  ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """(Ga W, Gb W, Gia W, Gib W) of a tile of pairs x features in one pass over the classes (one W tile
    load each); Ga W and Gb W only when ORIGINAL (zeros otherwise, and ga_ptr, gb_ptr are not read)."""
    d_fa = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    d_fb = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    d_ia = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    d_ib = tl.zeros([BLOCK_P, BLOCK_N], ACC)
    for start in range(0, c, BLOCK_C):
        classes = start + tl.arange(0, BLOCK_C)
        class_mask = classes < c
        w = load_tile(w_ptr, classes * stride_wr, cols, stride_wc, class_mask[:, None] & col_mask[None, :], DOT)
        if ORIGINAL:
            d_fa = _g_times_w(d_fa, ga_ptr, pairs, pair_mask, classes, class_mask, c, w, DOT, PRECISION)
            d_fb = _g_times_w(d_fb, gb_ptr, pairs, pair_mask, classes, class_mask, c, w, DOT, PRECISION)
        d_ia = _g_times_w(d_ia, gia_ptr, pairs, pair_mask, classes, class_mask, c, w, DOT, PRECISION)
        d_ib = _g_times_w(d_ib, gib_ptr, pairs, pair_mask, classes, class_mask, c, w, DOT, PRECISION)
    return d_fa, d_fb, d_ia, d_ib


@triton.jit
def _grad_m_kernel(
    f_ptr, w_ptr, index_a_ptr, index_b_ptr, gia_ptr, gib_ptr, stats_ptr, dm_ptr, sums_ptr,
    P, B, n, c,
    stride_fr, stride_fc, stride_wr, stride_wc,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """dm = (Gia W) fa + (Gib W) fb of a tile (written, (P, n)) and its partial row sums of dm, dm m."""
    pairs, cols, pair_mask, col_mask, idx_a, idx_b = _pair_feature_tile(index_a_ptr, index_b_ptr, P, B, n, BLOCK_P,
                                                                         BLOCK_N)
    # Ga W and Gb W are not needed here: their buffers stand in for the unused pointers
    _, _, d_ia, d_ib = _g_w_products(w_ptr, gia_ptr, gib_ptr, gia_ptr, gib_ptr, pairs, pair_mask, cols, col_mask, c,
                                     stride_wr, stride_wc, False, BLOCK_P, BLOCK_C, BLOCK_N, ACC, DOT, PRECISION)
    lo = tl.load(stats_ptr + pairs * 6 + 0, mask=pair_mask, other=0.0)
    den = tl.load(stats_ptr + pairs * 6 + 2, mask=pair_mask, other=1.0)
    mask = pair_mask[:, None] & col_mask[None, :]
    a, b, _, m = load_pair_tile(f_ptr, f_ptr, idx_a * stride_fr, idx_b * stride_fr, cols, stride_fc, stride_fc, mask,
                                lo, den, ACC)
    dm = d_ia * a + d_ib * b
    tl.store(dm_ptr + pairs[:, None] * n + cols[None, :], dm, mask=mask)
    sums = sums_ptr + (pairs * tl.num_programs(1) + tl.program_id(1)) * 2
    tl.store(sums + 0, tl.sum(dm, axis=1), mask=pair_mask)
    tl.store(sums + 1, tl.sum(dm * m, axis=1), mask=pair_mask)


@triton.jit
def _grad_features_kernel(
    f_ptr, w_ptr, index_a_ptr, index_b_ptr, ga_ptr, gb_ptr, gia_ptr, gib_ptr, stats_ptr, dm_ptr, sums_ptr,
    df_ptr, dfa_ptr, dfb_ptr,
    P, B, n, c,
    stride_fr, stride_fc, stride_wr, stride_wc, stride_dr, stride_dc,
    L2: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """dfa, dfb of a tile of pairs x features: atomically added to df (ATOMIC) or written to dfa, dfb (P, n)."""
    pairs, cols, pair_mask, col_mask, idx_a, idx_b = _pair_feature_tile(index_a_ptr, index_b_ptr, P, B, n, BLOCK_P,
                                                                         BLOCK_N)
    d_fa, d_fb, d_ia, d_ib = _g_w_products(w_ptr, ga_ptr, gb_ptr, gia_ptr, gib_ptr, pairs, pair_mask, cols, col_mask, c,
                                           stride_wr, stride_wc, True, BLOCK_P, BLOCK_C, BLOCK_N, ACC, DOT, PRECISION)
    stats = stats_ptr + pairs * 6
    lo = tl.load(stats + 0, mask=pair_mask, other=0.0)
    hi = tl.load(stats + 1, mask=pair_mask, other=0.0)
    den = tl.load(stats + 2, mask=pair_mask, other=1.0)
    unclamped = tl.load(stats + 3, mask=pair_mask, other=0.0) != 0
    k_lo = tl.load(stats + 4, mask=pair_mask, other=1.0)
    k_hi = tl.load(stats + 5, mask=pair_mask, other=1.0)
    dm_sum = tl.load(sums_ptr + pairs * 2, mask=pair_mask, other=0.0)
    dm_dot_m = tl.load(sums_ptr + pairs * 2 + 1, mask=pair_mask, other=0.0)
    coef_m, u_lo, u_hi = grad_p_coefficients(dm_sum, dm_dot_m, unclamped, k_lo, k_hi, L2)
    mask = pair_mask[:, None] & col_mask[None, :]
    a, b, p, m = load_pair_tile(f_ptr, f_ptr, idx_a * stride_fr, idx_b * stride_fr, cols, stride_fc, stride_fc, mask,
                                lo, den, ACC)
    # dm as written by _grad_m_kernel, so that dp's row sums are those of exactly these values
    # (for a clamped row dp = (dm - mean dm) / eps cancels, exactly for n = 1)
    dm = tl.load(dm_ptr + pairs[:, None] * n + cols[None, :], mask=mask, other=0.0)
    dp = grad_p(dm, p, m, lo, hi, den, coef_m, u_lo, u_hi, L2)
    d_fa += d_ia * m + dp * b
    d_fb += d_ib * m + dp * a
    if ATOMIC:
        cols_d = cols[None, :] * stride_dc
        tl.atomic_add(df_ptr + idx_a[:, None] * stride_dr + cols_d, d_fa, mask=mask, sem="relaxed")
        tl.atomic_add(df_ptr + idx_b[:, None] * stride_dr + cols_d, d_fb, mask=mask, sem="relaxed")
    else:
        out = pairs[:, None] * n + cols[None, :]
        tl.store(dfa_ptr + out, d_fa, mask=mask)
        tl.store(dfb_ptr + out, d_fb, mask=mask)


@triton.jit
def _grad_weight_kernel(
    f_ptr, index_a_ptr, index_b_ptr, ga_ptr, gb_ptr, gia_ptr, gib_ptr, stats_ptr, dw_ptr,
    P, B, n, c, stride_fr, stride_fc,
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
        pair_mask, idx_a, idx_b = _pair_indices(index_a_ptr, index_b_ptr, pairs, P, B)
        lo = tl.load(stats_ptr + pairs * 6 + 0, mask=pair_mask, other=0.0)
        den = tl.load(stats_ptr + pairs * 6 + 2, mask=pair_mask, other=1.0)
        mask = pair_mask[:, None] & col_mask[None, :]
        a, b, _, m = load_pair_tile(f_ptr, f_ptr, idx_a * stride_fr, idx_b * stride_fr, cols, stride_fc, stride_fc,
                                    mask, lo, den, ACC)
        # G^T tiles (classes x pairs) straight from the (P, c) buffers
        g_mask = class_mask[:, None] & pair_mask[None, :]
        acc = tl.dot(load_tile(ga_ptr, classes, pairs, c, g_mask, DOT), a.to(DOT), acc,
                     input_precision=PRECISION, out_dtype=acc.dtype)
        acc = tl.dot(load_tile(gb_ptr, classes, pairs, c, g_mask, DOT), b.to(DOT), acc,
                     input_precision=PRECISION, out_dtype=acc.dtype)
        acc = tl.dot(load_tile(gia_ptr, classes, pairs, c, g_mask, DOT), (m * a).to(DOT), acc,
                     input_precision=PRECISION, out_dtype=acc.dtype)
        acc = tl.dot(load_tile(gib_ptr, classes, pairs, c, g_mask, DOT), (m * b).to(DOT), acc,
                     input_precision=PRECISION, out_dtype=acc.dtype)
    out = (split * c + classes)[:, None] * n + cols[None, :]
    tl.store(dw_ptr + out, acc, mask=class_mask[:, None] & col_mask[None, :])


# Tiles and warps per kernel on GPUs, sized so that ptxas reports no register spills on
# sm_90 and sm_80 in any dtype, tl.dot precision or norm (tools/triton_compile_check.py
# compiles every launch without a GPU and CI fails on a spill; the forward kernel spilled
# 264-552 bytes per thread at c = 80 with BLOCK_P = 32). float64, a correctness path,
# halves BLOCK_C and BLOCK_P. BLOCK_C shrinks to the number of classes; 16 is tl.dot's
# minimum. The interpreter pays per block, not per element: it uses 16 everywhere, so
# that small test shapes still cover several blocks of each dimension.
_GPU_CONFIGS = {
    "linear": dict(BLOCK_M=32, BLOCK_C=64, BLOCK_K=32, num_warps=8),
    "forward": dict(BLOCK_P=16, BLOCK_C=128, BLOCK_K=16, BLOCK_STATS=128, num_warps=8),
    "grad_logits": dict(BLOCK_P=16, BLOCK_C=32, BLOCK_K=64, num_warps=8),
    "grad_features": dict(BLOCK_P=32, BLOCK_C=32, BLOCK_N=64, num_warps=8),  # also _grad_m_kernel
    "grad_weight": dict(BLOCK_P=16, BLOCK_C=64, BLOCK_N=32, num_warps=8),
}
# ASL's epilogues hold more tiles. ptxas spilled 8-44 bytes with the BCE settings: the forward
# at BLOCK_C = 128 (255 registers, float32 with TF32 and bfloat16, c = 130), and where it capped
# a kernel below 255 registers by its own heuristic (64 or 128: _grad_logits_kernel at c = 3, the
# forward at BLOCK_C = 64); maxnreg = 255 stops that cap.
_ASL_GPU_CONFIGS = {"forward": dict(BLOCK_C=64, maxnreg=255), "grad_logits": dict(maxnreg=255)}


def _config(kernel: str, features: torch.Tensor, c: int, dot: bool = True, accurate: bool = False,
            loss: str = "bce") -> dict:
    """Launch parameters of one kernel: blocks, warps, stages and (dot) the dtypes and tl.dot precision.

    accurate: half inputs go into tl.dot as float32 with 3xTF32 (about float32 accuracy on
    tensor cores) instead of as bf16/fp16 operands, for the GEMMs whose rounding would show:
    dm, amplified by 1/den in dp (1/eps for a clamped row), and dW, a sum over all pairs.
    Computed once per setting (callers only read the dict): the ops' per-call Python is small.
    """
    return _cached_config(kernel, features.dtype, c, dot, accurate, loss, torch.get_float32_matmul_precision())


@functools.lru_cache(maxsize=256)
def _cached_config(kernel: str, dtype: torch.dtype, c: int, dot: bool, accurate: bool, loss: str,
                   _matmul_precision: str) -> dict:
    config = dict(_GPU_CONFIGS[kernel], **(_ASL_GPU_CONFIGS.get(kernel, {}) if loss == "asl" else {}))
    if INTERPRETING:
        config = {k: (16 if k.startswith("BLOCK") else v) for k, v in config.items()}
    else:
        fp64 = dtype == torch.float64
        config["BLOCK_C"] = min(config["BLOCK_C"] // (2 if fp64 else 1), max(16, triton.next_power_of_2(c)))
        if fp64 and "BLOCK_P" in config:
            config["BLOCK_P"] = max(16, config["BLOCK_P"] // 2)
        config["num_stages"] = 1 if fp64 else 2
    config["ACC"] = acc_dtype(dtype)
    if dot:
        config.update(DOT=dot_dtype(dtype), PRECISION=dot_precision(dtype))
        if accurate and dtype in (torch.bfloat16, torch.float16):
            config.update(DOT=tl.float32, PRECISION="tf32x3")
    return config


def six_head_forward(features, weight, bias, targets, index_a, index_b, norm: str, eps: float, loss: str,
                     gamma_neg: float, gamma_pos: float, clip: float, eps_log: float, present_negatives: str = "sum"):
    """(loss (P, 6), logits (B, c), ident_logits (P, 2, c)) in the accumulation dtype; inputs already checked."""
    (B, n), c, P = features.shape, weight.shape[0], index_a.shape[0]
    cd = torch.float64 if features.dtype == torch.float64 else torch.float32
    dev = features.device
    logits = torch.empty((B, c), dtype=cd, device=dev)
    ident_logits = torch.empty((P, 2, c), dtype=cd, device=dev)
    if B and c:
        cfg = _config("linear", features, c)
        _linear_kernel[(triton.cdiv(B, cfg["BLOCK_M"]), triton.cdiv(c, cfg["BLOCK_C"]))](
            features, weight, bias, logits, B, n, c, *features.stride(), *weight.stride(),
            HAS_BIAS=bias is not None, **cfg,
        )
    if P == 0 or c == 0:
        return torch.zeros((P, 6), dtype=cd, device=dev), logits, ident_logits
    cfg = _config("forward", features, c, loss=loss)
    class_blocks = triton.cdiv(c, cfg["BLOCK_C"])
    sums = torch.empty((P, 6) if class_blocks == 1 else (class_blocks, P, 6), dtype=cd, device=dev)
    _six_head_forward_kernel[(triton.cdiv(P, cfg["BLOCK_P"]), class_blocks)](
        features, weight, bias, targets, index_a.contiguous(), index_b.contiguous(), logits, ident_logits, sums,
        P, B, n, c, eps, gamma_neg, gamma_pos, clip, eps_log, *features.stride(), *weight.stride(), *targets.stride(),
        L2=norm == "l2", HAS_BIAS=bias is not None, ASL=loss == "asl", MEAN_PRESENT=present_negatives == "mean",
        **cfg,
    )
    return (sums if class_blocks == 1 else sums.sum(0)), logits, ident_logits


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _weight_splits(device: torch.device, tiles: int, pair_blocks: int) -> int:
    """How many programs share the pairs of one dW tile: about two waves of the GPU, at most one per pair block."""
    if INTERPRETING:
        return min(2, pair_blocks)
    return max(1, min(pair_blocks, triton.cdiv(2 * _multiprocessors(device), tiles)))


def _in_layout_of(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t in like's dtype and strides (those of the fake kernel's empty_like)."""
    if t.dtype == like.dtype and t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)


def six_head_backward(grad, features, weight, bias, targets, index_a, index_b, logits, ident_logits, norm: str,
                      eps: float, loss: str, gamma_neg: float, gamma_pos: float, clip: float, eps_log: float,
                      focal_grad: bool, present_negatives: str = "sum"):
    """(grad_features, grad_weight, grad_bias) in the dtypes of features, weight, weight; inputs already checked."""
    (B, n), c, P = features.shape, weight.shape[0], index_a.shape[0]
    cd = torch.float64 if features.dtype == torch.float64 else torch.float32
    dev = features.device
    grad_features = torch.zeros_like(features, dtype=cd)
    if P == 0 or c == 0 or n == 0:
        return grad_features.to(features.dtype), torch.zeros_like(weight), weight.new_zeros((c,))
    l2 = norm == "l2"
    index_a, index_b = index_a.contiguous(), index_b.contiguous()
    grad, logits, ident_logits = grad.contiguous(), logits.contiguous(), ident_logits.contiguous()

    cfg = _config("grad_logits", features, c, dot=False, loss=loss)
    pair_blocks = triton.cdiv(P, cfg["BLOCK_P"])
    ga, gb, gia, gib = torch.empty((4, P, c), dtype=cd, device=dev)
    stats = torch.empty((P, 6), dtype=cd, device=dev)
    dbias = torch.empty((pair_blocks, c), dtype=cd, device=dev)
    _grad_logits_kernel[(pair_blocks,)](
        grad, features, bias, targets, index_a, index_b, logits, ident_logits, ga, gb, gia, gib, stats, dbias,
        P, B, n, c, eps, gamma_neg, gamma_pos, clip, eps_log, *features.stride(), *targets.stride(), L2=l2,
        HAS_BIAS=bias is not None, ASL=loss == "asl", FOCAL_GRAD=loss == "asl" and focal_grad,
        MEAN_PRESENT=present_negatives == "mean", enable_fp_fusion=False, **cfg,
    )

    cfg = _config("grad_features", features, c)
    grid = (triton.cdiv(P, cfg["BLOCK_P"]), triton.cdiv(n, cfg["BLOCK_N"]))
    dm = torch.empty((P, n), dtype=cd, device=dev)
    sums = torch.empty((P, grid[1], 2), dtype=cd, device=dev)
    _grad_m_kernel[grid](
        features, weight, index_a, index_b, gia, gib, stats, dm, sums, P, B, n, c,
        *features.stride(), *weight.stride(), enable_fp_fusion=False,
        **_config("grad_features", features, c, accurate=True),
    )
    sums = sums.sum(1)
    atomic = not torch.are_deterministic_algorithms_enabled()
    dfa, dfb = (grad_features, grad_features) if atomic else torch.empty((2, P, n), dtype=cd, device=dev)
    _grad_features_kernel[grid](
        features, weight, index_a, index_b, ga, gb, gia, gib, stats, dm, sums, grad_features, dfa, dfb,
        P, B, n, c, *features.stride(), *weight.stride(), *grad_features.stride(), L2=l2, ATOMIC=atomic, enable_fp_fusion=False, **cfg,
    )
    if not atomic:
        grad_features.index_add_(0, index_a, dfa).index_add_(0, index_b, dfb)

    cfg = _config("grad_weight", features, c, accurate=True)
    tiles = (triton.cdiv(c, cfg["BLOCK_C"]), triton.cdiv(n, cfg["BLOCK_N"]))
    splits = _weight_splits(dev, tiles[0] * tiles[1], triton.cdiv(P, cfg["BLOCK_P"]))
    grad_weight = torch.empty((splits, c, n), dtype=cd, device=dev)
    _grad_weight_kernel[(*tiles, splits)](
        features, index_a, index_b, ga, gb, gia, gib, stats, grad_weight, P, B, n, c, *features.stride(), **cfg,
    )
    return (
        grad_features.to(features.dtype),
        _in_layout_of(grad_weight.sum(0) if splits > 1 else grad_weight[0], weight),
        dbias.sum(0).to(weight.dtype),
    )
