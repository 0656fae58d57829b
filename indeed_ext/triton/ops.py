"""Registers the Triton kernels as torch.ops.indeed_triton, with the schemas of torch.ops.indeed.

Each schema is the one csrc/ops.cpp gives the op in namespace ``indeed``, as setup.py
recorded it in _build_info.json (torch.ops.indeed is undefined when _C does not load;
tests/test_triton_ops.py checks that the namespaces agree); the fake kernels are the
shared ones of indeed_ext.ops, and so are the autograd formulas (Python here, the C++
ones of csrc/autograd.cpp for indeed). The ops are plain torch.library definitions with
CPU and CUDA kernels (not triton_op/wrap_triton, which fail opcheck and torch.compile
under the Triton interpreter, pytorch#152868): torch.compile treats them as opaque custom ops.
CPU tensors run through the Triton interpreter (TRITON_INTERPRET=1, the CI setting).
"""
from __future__ import annotations

import torch

from .. import _checks, _extension
from ..ops import OP_NAMES, register_autograd, register_fakes
from . import decompose as _pair
from . import mine_pairs as _mine
from . import six_head_loss as _six_head
from ._common import require_runnable

NAMESPACE = "indeed_triton"

_lib = torch.library.Library(NAMESPACE, "DEF")
for _name in OP_NAMES:
    _lib.define(_extension.build_info.schemas[_name])


def _check_pair_op(fa, fb, norm, eps):
    _checks.check_pair(fa, fb)
    _checks.check_norm_eps(norm, eps)
    require_runnable(fa.device)


def _check_grads(grads, fa):
    for name, g in grads.items():
        if g.shape != fa.shape or g.device != fa.device:
            raise ValueError(f"{name} must have the shape and device of fa, {tuple(fa.shape)} on {fa.device}, "
                             f"got {tuple(g.shape)} on {g.device}")


def identical_map(fa, fb, norm="minmax", eps=1e-12):
    _check_pair_op(fa, fb, norm, eps)
    return _pair.pair_forward(fa, fb, norm, eps, decompose=False)[0]


def identical_map_backward(grad_m, fa, fb, norm, eps):
    _check_pair_op(fa, fb, norm, eps)
    _check_grads({"grad_m": grad_m}, fa)
    return _pair.pair_backward([grad_m], fa, fb, norm, eps)


def decompose(fa, fb, norm="minmax", eps=1e-12):
    _check_pair_op(fa, fb, norm, eps)
    return tuple(_pair.pair_forward(fa, fb, norm, eps, decompose=True))


def decompose_backward(grad_ia, grad_ib, grad_da, grad_db, fa, fb, norm, eps):
    _check_pair_op(fa, fb, norm, eps)
    _check_grads({"grad_ia": grad_ia, "grad_ib": grad_ib, "grad_da": grad_da, "grad_db": grad_db}, fa)
    return _pair.pair_backward([grad_ia, grad_ib, grad_da, grad_db], fa, fb, norm, eps)


def six_head_loss_forward(features, weight, bias, targets, index_a, index_b, norm, eps, loss, gamma_neg, gamma_pos,
                          clip, eps_log, focal_grad, present_negatives):
    # Index values are read on the host only for CPU tensors: on GPUs that would be a sync per call.
    # There the kernels skip pairs with indices outside [0, B) and give them NaN losses, and the
    # public API (indeed_ext.six_head_loss, check_indices=True) raises IndexError before the call.
    on_cpu = features.device.type == "cpu"
    _checks.check_six_head(features, weight, bias, targets, index_a, index_b, check_index_values=on_cpu)
    _checks.check_norm_eps(norm, eps)
    _checks.check_loss(loss, gamma_neg, gamma_pos, clip, eps_log)
    _checks.check_present_negatives(present_negatives)
    require_runnable(features.device)
    return _six_head.six_head_forward(
        features, weight, bias, targets, index_a, index_b, norm, eps, loss, gamma_neg, gamma_pos, clip, eps_log,
        present_negatives,
    )


def six_head_loss_backward(grad, features, weight, bias, targets, index_a, index_b, logits, ident_logits, norm, eps,
                           loss, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives):
    # Private op, called by the autograd of _six_head_loss_forward with indices it has checked.
    _checks.check_six_head(features, weight, bias, targets, index_a, index_b, check_index_values=False)
    _checks.check_norm_eps(norm, eps)
    _checks.check_loss(loss, gamma_neg, gamma_pos, clip, eps_log)
    _checks.check_present_negatives(present_negatives)
    require_runnable(features.device)
    (B, _), c, P = features.shape, weight.shape[0], index_a.shape[0]
    expected_shapes = {"grad": (grad, (P, 6)), "logits": (logits, (B, c)), "ident_logits": (ident_logits, (P, 2, c))}
    for name, (t, shape) in expected_shapes.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return _six_head.six_head_backward(
        grad, features, weight, bias, targets, index_a, index_b, logits, ident_logits, norm, eps, loss, gamma_neg,
        gamma_pos, clip, eps_log, focal_grad, present_negatives,
    )


# Like csrc/ops.cpp: the public ops forward to _six_head_loss_forward, whose autograd saves the logits.
def six_head_loss(features, weight, bias, targets, index_a, index_b, norm="minmax", eps=1e-12, loss="bce",
                  gamma_neg=0.0, gamma_pos=0.0, clip=0.0, eps_log=1e-8, focal_grad=False, present_negatives="sum"):
    forward = torch.ops.indeed_triton._six_head_loss_forward
    return forward(features, weight, bias, targets, index_a, index_b, norm, eps, loss, gamma_neg, gamma_pos, clip,
                   eps_log, focal_grad, present_negatives)[0]


def six_head_bce(features, weight, bias, targets, index_a, index_b, norm="minmax", eps=1e-12):
    return six_head_loss(features, weight, bias, targets, index_a, index_b, norm, eps)


def mine_pairs(targets, seed):
    _checks.check_mine_pairs(targets, seed)
    require_runnable(targets.device)
    return _mine.mine_pairs(targets, seed)


def mine_pairs_cooccur(targets, seed, contrast_weights, load_cap=_checks.DEFAULT_LOAD_CAP):
    # The weights' values are read on the host only for CPU tensors, as six_head_bce's indices.
    on_cpu = targets.device.type == "cpu"
    _checks.check_mine_pairs_cooccur(targets, seed, contrast_weights, load_cap, check_weight_values=on_cpu)
    require_runnable(targets.device)
    return _mine.mine_pairs_cooccur(targets, seed, contrast_weights, load_cap)


_KERNELS = {
    "identical_map": identical_map,
    "_identical_map_backward": identical_map_backward,
    "decompose": decompose,
    "_decompose_backward": decompose_backward,
    "_six_head_loss_forward": six_head_loss_forward,
    "_six_head_loss_backward": six_head_loss_backward,
    "mine_pairs": mine_pairs,
    "mine_pairs_cooccur": mine_pairs_cooccur,
}
for _name, _kernel in _KERNELS.items():
    for _key in ("CPU", "CUDA"):
        _lib.impl(_name, _kernel, _key)
_lib.impl("six_head_bce", six_head_bce, "CompositeImplicitAutograd")
_lib.impl("six_head_loss", six_head_loss, "CompositeImplicitAutograd")

register_fakes(NAMESPACE)
register_autograd(NAMESPACE)
