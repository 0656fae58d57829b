"""Eager PyTorch reference of every indeed op: the executable spec.

Every backend (cpu, cuda, triton) is tested against these functions, forward and
backward; gradients come from autograd through the code below, so the reference
fixes the semantics of ties (``torch.amin``/``torch.amax`` split the gradient
evenly among tied extremes) and of the eps clamp (a clamped denominator is a
constant). Half inputs are computed in float32 and cast back; see docs/SPEC.md.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

NORMS = ("minmax", "l2")
HEADS = ("orig_a", "orig_b", "ident_a", "ident_b", "disp_a", "disp_b")
# mine_pairs_cooccur's default load cap: how many weighted draws of a batch one row may serve as a
# partner, in expectation (docs/SPEC.md); csrc/ops.cpp's schema default (INDEED_LOAD_CAP) is the same.
DEFAULT_LOAD_CAP = 4
LOSSES = ("bce", "asl")  # base losses of six_head_loss (focal loss: asl with gamma_neg = gamma_pos, clip = 0)
# How six_head_loss counts a decomposed head's present negatives (docs/SPEC.md): "sum", the paper's
# sum over classes; "mean", their base losses averaged, so that together they count as one class.
PRESENT_NEGATIVES = ("sum", "mean")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """six_head_loss output dtype: float32 for half inputs, the input dtype otherwise."""
    return compute_dtype(dtype)


def _clamp_denominator(d: torch.Tensor, eps: float) -> torch.Tensor:
    # torch.where (not clamp_min) so that d == eps also counts as clamped: a clamped
    # denominator gets no gradient, as the spec says for "range or norm <= eps".
    return torch.where(d > eps, d, torch.full_like(d, eps))


def identical_map(fa: torch.Tensor, fb: torch.Tensor, norm: str = "minmax", eps: float = 1e-12) -> torch.Tensor:
    """m = normalise(fa * fb) per row; returned in the input dtype."""
    cd = compute_dtype(fa.dtype)
    p = fa.to(cd) * fb.to(cd)
    if norm == "l2":
        m = p / _clamp_denominator(torch.linalg.vector_norm(p, dim=-1, keepdim=True), eps)
    elif norm == "minmax":
        lo = torch.amin(p, dim=-1, keepdim=True)
        hi = torch.amax(p, dim=-1, keepdim=True)
        m = (p - lo) / _clamp_denominator(hi - lo, eps)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return m.to(fa.dtype)


def decompose(fa: torch.Tensor, fb: torch.Tensor, norm: str = "minmax", eps: float = 1e-12):
    """(ia, ib, da, db) = (m*fa, m*fb, (1-m)*fa, (1-m)*fb), in the input dtype."""
    cd = compute_dtype(fa.dtype)
    a, b = fa.to(cd), fb.to(cd)
    m = identical_map(a, b, norm, eps)
    out = (m * a, m * b, (1 - m) * a, (1 - m) * b)
    return tuple(t.to(fa.dtype) for t in out)


def pair_targets(targets: torch.Tensor, index_a: torch.Tensor, index_b: torch.Tensor) -> torch.Tensor:
    """Targets of the six heads, shape (P, 6, c): ya, yb, ya*yb, ya*yb, ya*(1-yb), yb*(1-ya)."""
    ya, yb = targets[index_a], targets[index_b]
    both = ya * yb
    return torch.stack((ya, yb, both, both, ya * (1 - yb), yb * (1 - ya)), dim=1)


def present_negative_weights(targets: torch.Tensor, index_a: torch.Tensor, index_b: torch.Tensor) -> torch.Tensor:
    """Class weights of the six heads under present_negatives="mean", shape (P, 6, c).

    A decomposed head's present negatives are the classes its image has that its target excludes:
    for ident_a, s = ya * (1 - yb) (a's own disparate labels); for ident_b, yb * (1 - ya); for both
    disparate heads, s = ya * yb (the shared labels). Their weight is 1 / max(1, sum_k s_k), every
    other class's 1: w = 1 - s + s / max(1, sum_k s_k) (for 0/1 labels; the same formula for soft
    ones). The original heads keep weight 1.
    """
    ya, yb = targets[index_a], targets[index_b]
    ones, both = torch.ones_like(ya), ya * yb
    s = torch.stack((ya * (1 - yb), yb * (1 - ya), both), dim=1)  # (P, 3, c): ident_a, ident_b, disp_a = disp_b
    w = 1 - s + s / s.sum(-1, keepdim=True).clamp_min(1)
    return torch.stack((ones, ones, w[:, 0], w[:, 1], w[:, 2], w[:, 2]), dim=1)


def bce_with_logits_sum(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the last dim of softplus(z) - y*z, the stable BCE with sigma(z) = 1/(1+exp(-z)),
    each term times weights (broadcast) when given."""
    terms = F.softplus(z) - y * z
    return (terms if weights is None else terms * weights).sum(dim=-1)


def asl_sum(
    z: torch.Tensor,
    y: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps_log: float = 1e-8,
    focal_grad: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum over the last dim of the Asymmetric Loss (Ridnik et al. 2021) of logits z, targets y,
    each term times weights (broadcast) when given.

    Line by line ASL's AsymmetricLoss.forward (src/loss_functions/losses.py), so that autograd
    through it fixes the kernels' gradients, clamp ties included (torch's clamp passes no
    gradient at equality). focal_grad=False is ASL's disable_torch_grad_focal_loss=True: the
    focal weight is a constant in backward. Focal loss: gamma_neg = gamma_pos, clip = 0.
    """
    x_sigmoid = torch.sigmoid(z)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps_log))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps_log))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        with contextlib.nullcontext() if focal_grad else torch.no_grad():
            pt = xs_pos * y + xs_neg * (1 - y)
            one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
            one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        loss = loss * one_sided_w
    if weights is not None:
        loss = loss * weights
    return -loss.sum(dim=-1)


def base_loss_sum(
    z: torch.Tensor,
    y: torch.Tensor,
    loss: str = "bce",
    gamma_neg: float = 0.0,
    gamma_pos: float = 0.0,
    clip: float = 0.0,
    eps_log: float = 1e-8,
    focal_grad: bool = False,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The base loss of logits z and targets y, summed over the last dim (each term times weights
    when given): "bce" (the ASL parameters must be 0) or "asl" (see asl_sum)."""
    if loss == "bce":
        return bce_with_logits_sum(z, y, weights)
    if loss == "asl":
        return asl_sum(z, y, gamma_neg, gamma_pos, clip, eps_log, focal_grad, weights)
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")


def six_head_loss(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    index_a: torch.Tensor,
    index_b: torch.Tensor,
    norm: str = "minmax",
    eps: float = 1e-12,
    loss: str = "bce",
    gamma_neg: float = 0.0,
    gamma_pos: float = 0.0,
    clip: float = 0.0,
    eps_log: float = 1e-8,
    focal_grad: bool = False,
    present_negatives: str = "sum",
) -> torch.Tensor:
    """Per-pair base loss (base_loss_sum) of the six heads, shape (P, 6), heads ordered as HEADS;
    present_negatives "mean" weights the classes by present_negative_weights.

    Written the plain way (six feature sets, six linear layers) so that it is
    obviously the paper's method; the kernels use the structure instead.
    """
    if present_negatives not in PRESENT_NEGATIVES:
        raise ValueError(f"unknown present_negatives {present_negatives!r}; expected one of {PRESENT_NEGATIVES}")
    cd = compute_dtype(features.dtype)
    f, w = features.to(cd), weight.to(cd)
    bias_cd = None if bias is None else bias.to(cd)
    fa, fb = f[index_a], f[index_b]
    ia, ib, da, db = decompose(fa, fb, norm, eps)
    feats = torch.stack((fa, fb, ia, ib, da, db), dim=1)  # (P, 6, n)
    logits = F.linear(feats, w, bias_cd)  # (P, 6, c)
    y = pair_targets(targets.to(cd), index_a, index_b)
    class_weights = present_negative_weights(targets.to(cd), index_a, index_b) if present_negatives == "mean" else None
    return base_loss_sum(logits, y, loss, gamma_neg, gamma_pos, clip, eps_log, focal_grad, class_weights)


def six_head_bce(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    index_a: torch.Tensor,
    index_b: torch.Tensor,
    norm: str = "minmax",
    eps: float = 1e-12,
) -> torch.Tensor:
    """Per-pair BCE of the six heads, shape (P, 6): six_head_loss with loss="bce"."""
    return six_head_loss(features, weight, bias, targets, index_a, index_b, norm, eps)


# ----------------------------------------------------------------------------- mine_pairs
_LOW32 = 0xFFFFFFFF
_PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_PHILOX_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(multiplier, x: torch.Tensor):
    """(high, low) 32-bit halves of multiplier * x for multiplier (an int or an int64 tensor) and x
    in [0, 2^32), in int64 without overflow."""
    high_part, low_part = multiplier * (x >> 16), multiplier * (x & 0xFFFF)  # each < 2^48
    high = (high_part + (low_part >> 16)) >> 16
    low = (((high_part & 0xFFFF) << 16) + low_part) & _LOW32
    return high, low


def philox4x32(seed: torch.Tensor, counter):
    """Philox4x32-10 (as ATen's philox_engine and tl.philox): four 32-bit words per counter.

    seed: int64 tensor (the key's low and high words); counter: four int64 tensors in [0, 2^32).
    """
    key = [seed & _LOW32, (seed >> 32) & _LOW32]
    c0, c1, c2, c3 = counter
    for _ in range(10):
        high0, low0 = _mulhilo32(_PHILOX_MULTIPLIERS[0], c0)
        high1, low1 = _mulhilo32(_PHILOX_MULTIPLIERS[1], c2)
        c0, c1, c2, c3 = high1 ^ c1 ^ key[0], low1, high0 ^ c3 ^ key[1], low0
        key = [(k + step) & _LOW32 for k, step in zip(key, _PHILOX_KEY_STEPS)]
    return c0, c1, c2, c3


def _rank(lo: torch.Tensor, hi: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return (hi * count + ((lo * count) >> 32)) >> 32


def partner_rank(seed: torch.Tensor, rows: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """floor(u * count), u = (hi * 2^32 + lo) / 2^64 from Philox(key seed, counter (0, 0, row, 0))."""
    zero = torch.zeros_like(rows)
    lo, hi = philox4x32(seed, (zero, zero, rows, zero))[:2]
    return _rank(lo, hi, count)


def _mulhi64(u_lo: torch.Tensor, u_hi: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """floor(u * total / 2^64) for u = u_hi * 2^32 + u_lo (words in [0, 2^32)) and 0 <= total < 2^63,
    exact in int64: the 32-bit limbs' products that could reach 2^64 go through _mulhilo32."""
    t_lo, t_hi = total & _LOW32, total >> 32  # t_hi < 2^31: the products with it fit in int64
    low_high = _mulhilo32(u_lo, t_lo)[0]
    cross_high, cross_low = _mulhilo32(u_hi, t_lo)
    other_cross = u_lo * t_hi
    middle = low_high + cross_low + (other_cross & _LOW32)  # < 3 * 2^32
    return u_hi * t_hi + cross_high + (other_cross >> 32) + (middle >> 32)


def _labels(targets: torch.Tensor) -> torch.Tensor:
    return targets if targets.dtype == torch.bool else targets > 0.5


def _valid_partners(labels: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: ya & yb != 0 and ya != yb."""
    y = labels.double()
    shared = y @ y.T  # |ya & yb|; ya == yb iff it equals both set sizes
    sizes = y.sum(1)
    same_set = (shared == sizes[:, None]) & (shared == sizes[None, :])
    return (shared > 0) & ~same_set


def _nth(mask: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Per row, the column of its rank-th (0-based) True entry; 0 where there is none."""
    return (mask & (mask.cumsum(1) == rank[:, None] + 1)).to(torch.uint8).argmax(1)


def mine_pairs(targets: torch.Tensor, seed: torch.Tensor):
    """(index_a, index_b, is_partial), each (B,): pairs (a, b) for a = 0..B-1.

    b is the rank-th (partner_rank) valid partner of a in batch order: ya & yb != 0 and
    ya != yb for the labels y = targets > 0.5; b = a when a has none (is_partial False).
    Builds the B x B validity matrix: a spec, not a sampler for large batches.
    """
    valid = _valid_partners(_labels(targets))
    count = valid.sum(1)
    rows = torch.arange(valid.shape[0], device=targets.device)
    rank = partner_rank(seed.reshape(()), rows, count)
    is_partial = count > 0
    return rows, torch.where(is_partial, _nth(valid, rank), rows), is_partial


def _contrast_masses(labels: torch.Tensor, contrast_weights: torch.Tensor):
    """(masses, counts), each (B, c, c) int64, of the contrasts (i, j) of each row a: counts[a, i, j]
    = the rows with i and without j when j is in ya, with i and j when it is not (the rows that i
    joins to a and j separates from it); masses = S[i, j] * counts for i in ya, j != i, else 0."""
    c = labels.shape[1]
    y = labels.double()
    co = (y.T @ y).long()  # co-counts: exact below 2^53 rows
    counts = torch.where(labels[:, None, :], co.diagonal()[:, None] - co, co)
    contrasts = labels[:, :, None] & ~torch.eye(c, dtype=torch.bool, device=labels.device)
    return torch.where(contrasts, contrast_weights * counts, 0), counts


def _pair_weights(labels: torch.Tensor, contrast_weights: torch.Tensor) -> torch.Tensor:
    """(B, B) int64: w(a, b) = the sum of contrast_weights[i, j] over i in ya & yb and j in ya ^ yb
    (exact: float64 sums of integers below 2^53)."""
    y = labels.double()
    shared = y[:, None, :] * y[None, :, :]
    differs = (y[:, None, :] != y[None, :, :]).double()
    return torch.einsum("abi,ij,abj->ab", shared, contrast_weights.double(), differs).long()


def load_scale(B: int) -> int:
    """Q = 63 - bit_length(B): loads are fixed-point numbers with Q fraction bits, below B * 2^Q < 2^63."""
    return 63 - B.bit_length()


def partner_loads(targets: torch.Tensor, contrast_weights: torch.Tensor) -> torch.Tensor:
    """(B,) int64: each row's load, how many weighted draws of the batch pick it in expectation, in fixed
    point: L[b] = sum over rows a of w(a, b) * floor(2^Q / W_a) (rows with W_a = 0 draw no weighted
    partner and count 0), Q = load_scale(B); L[b] / 2^Q is sum_a w(a, b) / W_a up to the floors."""
    labels = _labels(targets)
    weights = _pair_weights(labels, contrast_weights)
    total = weights.sum(1)
    share = torch.where(total > 0, (1 << load_scale(labels.shape[0])) // total.clamp_min(1), 0)
    return (weights * share[:, None]).sum(0)


def mine_pairs_cooccur(targets: torch.Tensor, seed: torch.Tensor, contrast_weights: torch.Tensor,
                       load_cap: int = DEFAULT_LOAD_CAP):
    """(index_a, index_b, is_partial), each (B,): pairs (a, b) for a = 0..B-1, b drawn with
    probability w(a, b) / W_a, w(a, b) = sum of contrast_weights[i, j] over i in ya & yb, j in ya ^ yb,
    each weighted draw kept with probability min(1, load_cap / load(b)) (load_cap > 0), else uniform.

    The draw: the contrasts (i, j) of a (i in ya, j != i, i then j ascending) have masses
    S[i, j] * count(i, j) (_contrast_masses), W_a their sum; r = floor(u * W_a / 2^64) from Philox
    words 2 and 3 of a's counter picks the first contrast whose cumulative mass exceeds r, and b is
    the rank-th of its rows in batch order, rank from words 0 and 1 as partner_rank(seed, a,
    count(i, j)). W_a = 0: mine_pairs' draw. The cap: b is kept when floor(u' * L[b] / 2^64) <
    min(load_cap, B) * 2^Q (partner_loads; u' from words 0 and 1 of a's counter (1, 0, a, 0)), else a
    takes a uniform valid partner, ranked by words 2 and 3 of that counter. Builds (B, c, c) and B x B
    tensors: a spec, not a sampler for large batches.
    """
    labels = _labels(targets)
    B, c = labels.shape
    rows = torch.arange(B, device=targets.device)
    zero, one = torch.zeros_like(rows), torch.ones_like(rows)
    lo, hi, u_lo, u_hi = philox4x32(seed.reshape(()), (zero, zero, rows, zero))
    masses, counts = _contrast_masses(labels, contrast_weights)
    total = masses.sum((1, 2))
    contrast = (masses.flatten(1).cumsum(1) > _mulhi64(u_lo, u_hi, total)[:, None]).to(torch.uint8).argmax(1)
    i, j = contrast // c, contrast % c
    # Row b is eligible for a's contrast (i, j) when it has i and differs from a at j.
    eligible = labels.T[i] & (labels.T[j] != labels[rows, j][:, None])
    weighted = _nth(eligible, _rank(lo, hi, counts[rows, i, j]))
    valid = _valid_partners(labels)
    count = valid.sum(1)
    uniform = torch.where(count > 0, _nth(valid, _rank(lo, hi, count)), rows)
    if load_cap > 0:
        keep_lo, keep_hi, redraw_lo, redraw_hi = philox4x32(seed.reshape(()), (one, zero, rows, zero))
        loads = partner_loads(labels, contrast_weights)
        kept = _mulhi64(keep_lo, keep_hi, loads[weighted]) < (min(load_cap, B) << load_scale(B))
        redrawn = torch.where(count > 0, _nth(valid, _rank(redraw_lo, redraw_hi, count)), rows)
        weighted = torch.where(kept, weighted, redrawn)
    return rows, torch.where(total > 0, weighted, uniform), count > 0


def cooccur_partner_probabilities(targets: torch.Tensor, contrast_weights: torch.Tensor,
                                  load_cap: int = DEFAULT_LOAD_CAP) -> torch.Tensor:
    """(B, B) float64: P(b | a) of mine_pairs_cooccur: w(a, b) / W_a, times min(1, cap / L[b]) with its
    complement spread uniformly over a's valid partners when load_cap > 0; uniform over a's valid
    partners where W_a = 0 (mine_pairs' draw), and 1 at b = a for a row without one."""
    labels = _labels(targets)
    weights = _pair_weights(labels, contrast_weights).double()
    valid = _valid_partners(labels)
    self_pairs = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    uniform = torch.where(valid.any(1, keepdim=True), valid, self_pairs).double()
    uniform = uniform / uniform.sum(1, keepdim=True)
    total = weights.sum(1, keepdim=True)
    weighted = weights / total.clamp_min(1)
    if load_cap > 0:
        B = labels.shape[0]
        loads = partner_loads(labels, contrast_weights).double()
        kept = (min(load_cap, B) * 2.0 ** load_scale(B) / loads.clamp_min(1)).clamp_max(1)
        weighted = weighted * kept + (1 - (weighted * kept).sum(1, keepdim=True)) * uniform
    return torch.where(total > 0, weighted, uniform)
