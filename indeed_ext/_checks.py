"""Input checks shared by the Python API, the fake kernels and the Triton ops.

The C++ kernels make the same checks (csrc/checks.h) with the same exception
types: ValueError for shapes and values, TypeError for dtypes, IndexError for
pair indices out of range.
"""
from __future__ import annotations

import math

import torch

from .reference import DEFAULT_LOAD_CAP, LOSSES, NORMS, PRESENT_NEGATIVES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_norm_eps(norm: str, eps: float) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if not isinstance(eps, (int, float)) or math.isnan(eps) or eps <= 0 or math.isinf(eps):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_loss(loss: str, gamma_neg: float, gamma_pos: float, clip: float, eps_log: float) -> None:
    """The base loss of six_head_loss and ASL's parameters (csrc/checks.h check_loss makes the same checks)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    for name, gamma in (("gamma_neg", gamma_neg), ("gamma_pos", gamma_pos)):
        if not _is_number(gamma) or gamma < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {gamma!r}")
    if not _is_number(clip) or not 0 <= clip < 1:
        raise ValueError(f"clip must be a number in [0, 1), got {clip!r}")
    if not _is_number(eps_log) or not 0 < eps_log < 1:
        raise ValueError(f"eps_log must be a number in (0, 1), got {eps_log!r}")
    if loss == "bce" and (gamma_neg or gamma_pos or clip):
        raise ValueError(
            f"gamma_neg, gamma_pos and clip shape loss='asl' only; loss='bce' needs them 0, "
            f"got {gamma_neg!r}, {gamma_pos!r}, {clip!r}"
        )


def check_present_negatives(present_negatives: str) -> None:
    """six_head_loss's present_negatives (csrc/checks.h parse_loss makes the same check)."""
    if present_negatives not in PRESENT_NEGATIVES:
        raise ValueError(f"unknown present_negatives {present_negatives!r}; expected one of {PRESENT_NEGATIVES}")


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _check_rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")


def _check_same_device(names: str, tensors) -> None:
    if len({t.device for t in tensors}) > 1:
        got = ", ".join(str(t.device) for t in tensors)
        raise ValueError(f"{names} are on different devices: {got}")


def _check_same_dtype(names: str, tensors) -> None:
    if len({t.dtype for t in tensors}) > 1:
        got = ", ".join(str(t.dtype) for t in tensors)
        raise TypeError(f"{names} have mixed dtypes: {got}")


def check_pair(fa: torch.Tensor, fb: torch.Tensor) -> None:
    """fa, fb: (rows, n) of one float dtype, one device, one shape."""
    _check_rank("fa", fa, 2, "(rows, n)")
    _check_rank("fb", fb, 2, "(rows, n)")
    if fa.shape != fb.shape:
        raise ValueError(f"fa and fb must have the same shape, got {tuple(fa.shape)} and {tuple(fb.shape)}")
    _check_same_device("fa, fb", (fa, fb))
    _check_float("fa", fa)
    _check_same_dtype("fa, fb", (fa, fb))


def check_six_head(features, weight, bias, targets, index_a, index_b, check_index_values: bool = True) -> None:
    """Shapes, dtypes and devices of six_head_loss's inputs; index values when asked (syncs on GPU)."""
    _check_rank("features", features, 2, "(B, n)")
    _check_rank("weight", weight, 2, "(c, n)")
    _check_rank("targets", targets, 2, "(B, c)")
    _check_rank("index_a", index_a, 1, "(P,)")
    _check_rank("index_b", index_b, 1, "(P,)")
    B, n = features.shape
    c = weight.shape[0]
    if weight.shape[1] != n:
        raise ValueError(f"weight must be (c, n) with n = features.shape[1] = {n}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"bias must have shape (c,) = ({c},), got {tuple(bias.shape)}")
    if tuple(targets.shape) != (B, c):
        raise ValueError(f"targets must have shape (B, c) = ({B}, {c}), got {tuple(targets.shape)}")
    if index_a.shape != index_b.shape:
        raise ValueError(
            f"index_a and index_b must have the same length, got {index_a.shape[0]} and {index_b.shape[0]}"
        )
    with_bias = [] if bias is None else [bias]
    bias_name = "" if bias is None else ", bias"
    _check_same_device(
        "features, weight, targets, index_a, index_b" + bias_name, [features, weight, targets, index_a, index_b] + with_bias
    )
    _check_float("features", features)
    _check_float("targets", targets)
    _check_same_dtype("features, weight" + bias_name, [features, weight] + with_bias)
    for name, idx in (("index_a", index_a), ("index_b", index_b)):
        if idx.dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {idx.dtype}")
    if check_index_values:
        for name, idx in (("index_a", index_a), ("index_b", index_b)):
            if idx.numel() and bool(((idx < 0) | (idx >= B)).any()):
                raise IndexError(f"{name} has values outside [0, B) = [0, {B})")


def check_mine_pairs(targets, seed) -> None:
    """targets: (B, c) bool or float; seed: one-element int64 tensor on the targets' device."""
    _check_rank("targets", targets, 2, "(B, c)")
    if targets.shape[0] >= 2**31:
        raise ValueError(f"mine_pairs needs B < 2^31 rows, got {targets.shape[0]}")
    if targets.dtype != torch.bool and targets.dtype not in FLOAT_DTYPES:
        raise TypeError(f"targets must be bool or float16, bfloat16, float32, float64, got {targets.dtype}")
    if seed.dtype != torch.int64:
        raise TypeError(f"seed must be int64, got {seed.dtype}")
    if seed.numel() != 1:
        raise ValueError(f"seed must have one element, got shape {tuple(seed.shape)}")
    _check_same_device("targets, seed", (targets, seed))


CONTRAST_SCALE = 2**16  # contrast weights are round(S * 2^16) for S in [0, 1]


def check_load_cap(load_cap) -> None:
    if isinstance(load_cap, bool) or not isinstance(load_cap, int) or load_cap < 0:
        raise ValueError(f"load_cap must be an int >= 0 (0: no cap), got {load_cap!r}")


def check_mine_pairs_cooccur(targets, seed, contrast_weights, load_cap: int = DEFAULT_LOAD_CAP,
                             check_weight_values: bool = True) -> None:
    """check_mine_pairs, contrast_weights: (c, c) int64 on the targets' device, values in [0, 2^16]
    when asked (a host sync on GPU); the masses' sum below 2^63 from the shapes; load_cap an int >= 0."""
    check_mine_pairs(targets, seed)
    check_load_cap(load_cap)
    B, c = targets.shape
    if tuple(contrast_weights.shape) != (c, c):
        raise ValueError(f"contrast_weights must have shape (c, c) = ({c}, {c}), got {tuple(contrast_weights.shape)}")
    if contrast_weights.dtype != torch.int64:
        raise TypeError(f"contrast_weights must be int64, got {contrast_weights.dtype}")
    _check_same_device("targets, contrast_weights", (targets, contrast_weights))
    if c * (c - 1) * B * CONTRAST_SCALE >= 2**63:
        raise ValueError(f"mine_pairs_cooccur needs c * (c - 1) * B * 2^16 < 2^63, got c = {c}, B = {B}")
    if check_weight_values and contrast_weights.numel():
        if bool(((contrast_weights < 0) | (contrast_weights > CONTRAST_SCALE)).any()):
            raise ValueError(f"contrast_weights has values outside [0, 2^16] = [0, {CONTRAST_SCALE}]")
