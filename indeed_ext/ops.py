"""Fake kernels, the Triton backend's autograd and the backend-selecting Python API of the indeed ops.

The schemas live in csrc/ops.cpp (namespace ``indeed``), with their autograd in C++
(csrc/autograd.cpp); the Triton backend re-declares the same schemas in namespace
``indeed_triton``. ``register_fakes`` serves both namespaces, so they share one definition
of shapes; ``register_autograd`` gives indeed_triton the gradients csrc/autograd.cpp gives indeed.
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from . import _checks, _extension, reference

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}  # device type -> the dispatch key of its C++ kernels
OP_NAMES = (
    "identical_map",
    "_identical_map_backward",
    "decompose",
    "_decompose_backward",
    "six_head_bce",
    "six_head_loss",
    "_six_head_loss_forward",
    "_six_head_loss_backward",
    "mine_pairs",
    "mine_pairs_cooccur",
)


# ----------------------------------------------------------------------------- fake kernels
# Every kernel returns contiguous tensors, whatever the inputs' strides.
def _contiguous_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _fake_identical_map(fa, fb, norm="minmax", eps=1e-12):
    _checks.check_pair(fa, fb)
    _checks.check_norm_eps(norm, eps)
    return _contiguous_like(fa)


def _fake_identical_map_backward(grad_m, fa, fb, norm, eps):
    return _contiguous_like(fa), _contiguous_like(fb)


def _fake_decompose(fa, fb, norm="minmax", eps=1e-12):
    _checks.check_pair(fa, fb)
    _checks.check_norm_eps(norm, eps)
    return tuple(_contiguous_like(fa) for _ in range(4))


def _fake_decompose_backward(grad_ia, grad_ib, grad_da, grad_db, fa, fb, norm, eps):
    return _contiguous_like(fa), _contiguous_like(fb)


def _fake_six_head_loss_forward(features, weight, bias, targets, index_a, index_b, norm, eps, loss, gamma_neg,
                                gamma_pos, clip, eps_log, focal_grad, present_negatives):
    _checks.check_six_head(features, weight, bias, targets, index_a, index_b, check_index_values=False)
    _checks.check_norm_eps(norm, eps)
    _checks.check_loss(loss, gamma_neg, gamma_pos, clip, eps_log)
    _checks.check_present_negatives(present_negatives)
    P, B, c = index_a.shape[0], features.shape[0], weight.shape[0]
    cd = reference.compute_dtype(features.dtype)
    loss = features.new_empty((P, 6), dtype=reference.loss_dtype(features.dtype))
    return loss, features.new_empty((B, c), dtype=cd), features.new_empty((P, 2, c), dtype=cd)


def _fake_six_head_loss_backward(grad, features, weight, bias, targets, index_a, index_b, logits, ident_logits, norm, eps,
                                 loss, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives):
    return _contiguous_like(features), _contiguous_like(weight), weight.new_empty((weight.shape[0],))


def _empty_pairs(targets):
    index_a = targets.new_empty((targets.shape[0],), dtype=torch.int64)
    return index_a, torch.empty_like(index_a), torch.empty_like(index_a, dtype=torch.bool)


def _fake_mine_pairs(targets, seed):
    _checks.check_mine_pairs(targets, seed)
    return _empty_pairs(targets)


def _fake_mine_pairs_cooccur(targets, seed, contrast_weights, load_cap=_checks.DEFAULT_LOAD_CAP):
    _checks.check_mine_pairs_cooccur(targets, seed, contrast_weights, load_cap, check_weight_values=False)
    return _empty_pairs(targets)


# ----------------------------------------------------------------------------- autograd (indeed_triton)
def _setup_pair(ctx, inputs, output):
    fa, fb, norm, eps = inputs
    ctx.save_for_backward(fa, fb)
    ctx.norm, ctx.eps = norm, eps


def _setup_six_head(ctx, inputs, output):
    features, weight, bias, targets, index_a, index_b, *settings = inputs  # norm, eps, the loss and its parameters
    _, logits, ident_logits = output
    ctx.mark_non_differentiable(logits, ident_logits)
    ctx.set_materialize_grads(False)  # the logits' gradients are never used
    ctx.save_for_backward(features, weight, bias, targets, index_a, index_b, logits, ident_logits)
    ctx.settings = settings


_FAKES = {
    "identical_map": _fake_identical_map,
    "_identical_map_backward": _fake_identical_map_backward,
    "decompose": _fake_decompose,
    "_decompose_backward": _fake_decompose_backward,
    "_six_head_loss_forward": _fake_six_head_loss_forward,
    "_six_head_loss_backward": _fake_six_head_loss_backward,
    "mine_pairs": _fake_mine_pairs,
    "mine_pairs_cooccur": _fake_mine_pairs_cooccur,
}


def register_fakes(namespace: str) -> None:
    """Register the fake kernels of ``namespace::<op>`` (indeed, indeed_triton)."""
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}", fake)


def register_autograd(namespace: str) -> None:
    """Register Python autograd formulas for ``namespace::<op>``, the ones csrc/autograd.cpp has in C++."""
    ops = getattr(torch.ops, namespace)

    def identical_map_backward(ctx, grad_m):
        fa, fb = ctx.saved_tensors
        grad_fa, grad_fb = ops._identical_map_backward(grad_m, fa, fb, ctx.norm, ctx.eps)
        return grad_fa, grad_fb, None, None

    def decompose_backward(ctx, grad_ia, grad_ib, grad_da, grad_db):
        fa, fb = ctx.saved_tensors
        grad_fa, grad_fb = ops._decompose_backward(grad_ia, grad_ib, grad_da, grad_db, fa, fb, ctx.norm, ctx.eps)
        return grad_fa, grad_fb, None, None

    def six_head_loss_backward(ctx, grad_loss, _grad_logits, _grad_ident_logits):
        non_differentiable = (None,) * (3 + len(ctx.settings))  # targets, index_a, index_b and the settings
        if grad_loss is None:  # the loss was not used
            return (None, None, None) + non_differentiable
        features, weight, bias, targets, index_a, index_b, logits, ident_logits = ctx.saved_tensors
        grad_features, grad_weight, grad_bias = ops._six_head_loss_backward(
            grad_loss, features, weight, bias, targets, index_a, index_b, logits, ident_logits, *ctx.settings
        )
        return (grad_features, grad_weight, None if bias is None else grad_bias) + non_differentiable

    torch.library.register_autograd(f"{namespace}::identical_map", identical_map_backward, setup_context=_setup_pair)
    torch.library.register_autograd(f"{namespace}::decompose", decompose_backward, setup_context=_setup_pair)
    torch.library.register_autograd(
        f"{namespace}::_six_head_loss_forward", six_head_loss_backward, setup_context=_setup_six_head
    )


# ----------------------------------------------------------------------------- backend choice
def _constant(fn):
    """fn with its result computed once per arguments, a constant to torch.compile: for queries of what
    was registered and installed at import (the dispatcher's take microseconds; dynamo traces neither)."""
    results = {}

    @torch.compiler.assume_constant_result
    @functools.wraps(fn)
    def once(*args):
        try:
            return results[args]
        except KeyError:
            results[args] = fn(*args)
            return results[args]

    return once


@_constant
def _has_kernel(op_name: str, dispatch_key: str) -> bool:
    # Without _C the op is not defined at all (indeed_ext._extension)
    return _extension.loaded and torch._C._dispatch_has_kernel_for_dispatch_key(f"indeed::{op_name}", dispatch_key)


@_constant
def triton_unavailable() -> str | None:
    """Why the Triton backend cannot be used here, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    if _extension.build_info is None:
        return "indeed_ext is not built (the Triton ops take their schemas from its build record)"
    return None


def _triton_ops():
    reason = triton_unavailable()
    if reason:
        raise RuntimeError(f"backend='triton' is unavailable: {reason}")
    from .triton import ops as triton_ops  # noqa: F401  (registers torch.ops.indeed_triton)

    return torch.ops.indeed_triton


def resolve_backend(backend: str, device: torch.device, op_name: str):
    """The namespace (torch.ops.indeed, torch.ops.indeed_triton or reference) that runs op_name on device.

    "auto": the C++ kernel of op_name for the device where there is one, else Triton on CUDA
    tensors, else the reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "reference":
        return reference
    if backend == "triton":
        return _triton_ops()
    key = _DISPATCH_KEYS.get(device.type)
    if backend == "auto":
        if key and _has_kernel(op_name, key):
            return torch.ops.indeed
        if device.type == "cuda" and triton_unavailable() is None:
            return _triton_ops()
        return reference
    if device.type != backend:
        raise ValueError(f"backend={backend!r} needs {backend} tensors, got tensors on {device}")
    if not _extension.loaded:
        raise RuntimeError(
            f"backend={backend!r} needs indeed_ext's compiled kernels, which did not load ({_extension.load_error}); "
            f"use backend='auto', or build them for this torch: {_extension.rebuild_command()}"
        )
    if not _has_kernel(op_name, key):
        raise RuntimeError(f"indeed_ext was built without {backend} kernels (see INDEED_CUDA in setup.py)")
    return torch.ops.indeed


# ----------------------------------------------------------------------------- public API
def identical_map(fa, fb, norm: str = "minmax", eps: float = 1e-12, backend: str = "auto") -> torch.Tensor:
    """Identical map m of each row pair (fa, fb): normalise(fa * fb), norm "minmax" or "l2"."""
    _checks.check_pair(fa, fb)
    _checks.check_norm_eps(norm, eps)
    return resolve_backend(backend, fa.device, "identical_map").identical_map(fa, fb, norm, eps)


def decompose(fa, fb, norm: str = "minmax", eps: float = 1e-12, backend: str = "auto"):
    """(m*fa, m*fb, (1-m)*fa, (1-m)*fb): identical and disparate features of each row pair."""
    _checks.check_pair(fa, fb)
    _checks.check_norm_eps(norm, eps)
    return tuple(resolve_backend(backend, fa.device, "decompose").decompose(fa, fb, norm, eps))


def _six_head_backend(features, weight, bias, targets, index_a, index_b, norm, eps, backend, check_indices):
    """The namespace that runs the six-head ops on these inputs, after checking them."""
    ops = resolve_backend(backend, features.device, "_six_head_loss_forward")
    # The CPU kernels (C++, and Triton through the interpreter) read the indices anyway and
    # raise the same IndexError, so only other tensors (and the reference) are read here.
    read_indices = features.device.type != "cpu" or ops is reference
    checking = check_indices and read_indices and not torch.compiler.is_compiling()
    _checks.check_six_head(features, weight, bias, targets, index_a, index_b, check_index_values=checking)
    _checks.check_norm_eps(norm, eps)
    return ops


def six_head_loss(
    features,
    weight,
    bias,
    targets,
    index_a,
    index_b,
    norm: str = "minmax",
    eps: float = 1e-12,
    loss: str = "bce",
    gamma_neg: float = 0.0,
    gamma_pos: float = 0.0,
    clip: float = 0.0,
    eps_log: float = 1e-8,
    focal_grad: bool = False,
    present_negatives: str = "sum",
    backend: str = "auto",
    check_indices: bool = True,
) -> torch.Tensor:
    """Per-pair base loss (P, 6), summed over classes, of the heads orig_a, orig_b, ident_a, ident_b, disp_a, disp_b.

    loss: "bce" (gamma_neg, gamma_pos and clip must be 0) or "asl", the Asymmetric Loss of
    Ridnik et al. with ASL's gamma_neg, gamma_pos, clip and log clamp eps_log (reference.asl_sum);
    focal_grad=False makes its focal weight a constant in backward (ASL's default), True gives
    the full gradient. Focal loss: "asl" with gamma_neg = gamma_pos = gamma and clip = 0.
    present_negatives: "sum" (the paper) or "mean": a decomposed head's present negatives, the
    classes its image has that its target excludes (the other side's disparate labels for an
    identical head, the shared labels for a disparate head), count as one class in all
    (reference.present_negative_weights; docs/SPEC.md).
    Targets should lie in [0, 1] (soft targets are fine).
    check_indices reads the pair indices to raise IndexError for values outside
    [0, B) (one host sync on GPU); pass False for indices known to be valid. Unchecked
    invalid indices never read out of bounds: the CUDA kernels stop with a device-side
    assertion, the Triton kernels give those pairs NaN losses.
    """
    _checks.check_loss(loss, gamma_neg, gamma_pos, clip, eps_log)
    _checks.check_present_negatives(present_negatives)
    ops = _six_head_backend(features, weight, bias, targets, index_a, index_b, norm, eps, backend, check_indices)
    return ops.six_head_loss(
        features, weight, bias, targets, index_a, index_b, norm, eps, loss, gamma_neg, gamma_pos, clip, eps_log,
        bool(focal_grad), present_negatives,
    )


def six_head_bce(
    features,
    weight,
    bias,
    targets,
    index_a,
    index_b,
    norm: str = "minmax",
    eps: float = 1e-12,
    backend: str = "auto",
    check_indices: bool = True,
) -> torch.Tensor:
    """Per-pair BCE (P, 6) of the six heads: six_head_loss with loss="bce" (see there)."""
    ops = _six_head_backend(features, weight, bias, targets, index_a, index_b, norm, eps, backend, check_indices)
    return ops.six_head_bce(features, weight, bias, targets, index_a, index_b, norm, eps)
