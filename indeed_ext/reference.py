"""Eager PyTorch reference of every indeed op: the executable spec.

Every backend (cpu, cuda, triton) is tested against these functions, forward and
backward; gradients come from autograd through the code below, so the reference
fixes the semantics of ties (``torch.amin``/``torch.amax`` split the gradient
evenly among tied extremes) and of the eps clamp (a clamped denominator is a
constant). Half inputs are computed in float32 and cast back; see docs/SPEC.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORMS = ("minmax", "l2")
HEADS = ("orig_a", "orig_b", "ident_a", "ident_b", "disp_a", "disp_b")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """six_head_bce output dtype: float32 for half inputs, the input dtype otherwise."""
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


def bce_with_logits_sum(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of softplus(z) - y*z, the stable BCE with sigma(z) = 1/(1+exp(-z))."""
    return (F.softplus(z) - y * z).sum(dim=-1)


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
    """Per-pair BCE of the six heads, shape (P, 6), heads ordered as HEADS.

    Written the plain way (six feature sets, six linear layers) so that it is
    obviously the paper's method; the kernels use the structure instead.
    """
    cd = compute_dtype(features.dtype)
    f, w = features.to(cd), weight.to(cd)
    bias_cd = None if bias is None else bias.to(cd)
    fa, fb = f[index_a], f[index_b]
    ia, ib, da, db = decompose(fa, fb, norm, eps)
    feats = torch.stack((fa, fb, ia, ib, da, db), dim=1)  # (P, 6, n)
    logits = F.linear(feats, w, bias_cd)  # (P, 6, c)
    y = pair_targets(targets.to(cd), index_a, index_b)
    return bce_with_logits_sum(logits, y)
