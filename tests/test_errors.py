"""Bad input raises a Python exception naming the problem, through the Python API and through
torch.ops.indeed directly (the C++ checks of the CPU kernels).

A second device is the meta device: a CPU-only machine has no other. Mixed CPU/meta calls of
torch.ops dispatch to the meta (fake) kernels, whose checks are the Python API's.
"""
import pytest
import torch

import indeed_ext

from conftest import BCE, make_six_head_inputs

B, P, N, C = 5, 4, 6, 3


def _pair(**changes):
    args = {"fa": torch.rand(3, N), "fb": torch.rand(3, N), "norm": "minmax", "eps": 1e-12}
    args.update(changes)
    return args


def _six_head(**changes):
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(B, P, N, C)
    args = dict(features=features, weight=weight, bias=bias, targets=targets, index_a=index_a, index_b=index_b)
    args.update(norm="minmax", eps=1e-12)
    args.update(changes)
    return args


PAIR_ERRORS = [
    ("fa_rank", _pair(fa=torch.rand(N)), ValueError, r"fa must be 2-D \(rows, n\)"),
    ("fb_rank", _pair(fb=torch.rand(3, N, 1)), ValueError, r"fb must be 2-D \(rows, n\)"),
    ("shape_mismatch", _pair(fb=torch.rand(3, N + 1)), ValueError, r"fa and fb must have the same shape"),
    ("rows_mismatch", _pair(fb=torch.rand(2, N)), ValueError, r"fa and fb must have the same shape"),
    ("devices", _pair(fb=torch.rand(3, N, device="meta")), ValueError, r"fa, fb are on different devices"),
    ("mixed_dtypes", _pair(fb=torch.rand(3, N, dtype=torch.float64)), TypeError, r"fa, fb have mixed dtypes"),
    ("integer_dtype", _pair(fa=torch.ones(3, N, dtype=torch.int64), fb=torch.ones(3, N, dtype=torch.int64)),
     TypeError, r"fa must be float16, bfloat16, float32 or float64"),
    ("unknown_norm", _pair(norm="max"), ValueError, r"unknown norm 'max'"),
    ("eps_zero", _pair(eps=0.0), ValueError, r"eps must be a positive finite number"),
    ("eps_negative", _pair(eps=-1e-6), ValueError, r"eps must be a positive finite number"),
    ("eps_nan", _pair(eps=float("nan")), ValueError, r"eps must be a positive finite number"),
    ("eps_inf", _pair(eps=float("inf")), ValueError, r"eps must be a positive finite number"),
]

SIX_HEAD_ERRORS = [
    ("features_rank", _six_head(features=torch.rand(B)), ValueError, r"features must be 2-D \(B, n\)"),
    ("weight_rank", _six_head(weight=torch.rand(N)), ValueError, r"weight must be 2-D \(c, n\)"),
    ("targets_rank", _six_head(targets=torch.rand(B, C, 1)), ValueError, r"targets must be 2-D \(B, c\)"),
    ("index_rank", _six_head(index_a=torch.zeros(P, 1, dtype=torch.int64)), ValueError, r"index_a must be 1-D \(P,\)"),
    ("weight_n", _six_head(weight=torch.rand(C, N + 1)), ValueError, r"weight must be \(c, n\) with n = features"),
    ("bias_shape", _six_head(bias=torch.rand(C + 1)), ValueError, r"bias must have shape \(c,\) = \(3,\)"),
    ("bias_rank", _six_head(bias=torch.rand(1, C)), ValueError, r"bias must have shape \(c,\)"),
    ("targets_rows", _six_head(targets=torch.rand(B + 1, C)), ValueError,
     r"targets must have shape \(B, c\) = \(5, 3\)"),
    ("targets_classes", _six_head(targets=torch.rand(B, C + 1)), ValueError, r"targets must have shape \(B, c\)"),
    ("index_length", _six_head(index_b=torch.zeros(P + 1, dtype=torch.int64)), ValueError,
     r"index_a and index_b must have the same length"),
    ("index_a_int32", _six_head(index_a=torch.zeros(P, dtype=torch.int32)), TypeError, r"index_a must be int64"),
    ("index_b_float", _six_head(index_b=torch.zeros(P)), TypeError, r"index_b must be int64"),
    ("index_negative", _six_head(index_a=torch.tensor([0, -1, 2, 3])), IndexError,
     r"index_a has values outside \[0, B\) = \[0, 5\)"),
    ("index_too_large", _six_head(index_b=torch.tensor([0, 1, 5, 3])), IndexError,
     r"index_b has values outside \[0, B\)"),
    ("devices", _six_head(weight=torch.rand(C, N, device="meta")), ValueError, r"are on different devices"),
    ("mixed_dtypes", _six_head(weight=torch.rand(C, N, dtype=torch.float64)), TypeError,
     r"features, weight, bias have mixed dtypes"),
    ("bias_dtype", _six_head(bias=torch.rand(C, dtype=torch.float16)), TypeError, r"have mixed dtypes"),
    ("integer_features", _six_head(features=torch.ones(B, N, dtype=torch.int64)), TypeError,
     r"features must be float16, bfloat16, float32 or float64"),
    ("integer_targets", _six_head(targets=torch.ones(B, C, dtype=torch.int64)), TypeError,
     r"targets must be float16, bfloat16, float32 or float64"),
    ("unknown_norm", _six_head(norm="L2"), ValueError, r"unknown norm 'L2'"),
    ("eps_zero", _six_head(eps=0.0), ValueError, r"eps must be a positive finite number"),
    ("eps_nan", _six_head(eps=float("nan")), ValueError, r"eps must be a positive finite number"),
]


def _ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("name", ["identical_map", "decompose"])
@pytest.mark.parametrize("case,args,error,message", PAIR_ERRORS, ids=_ids(PAIR_ERRORS))
def test_pair_op_python_api(name, case, args, error, message):
    with pytest.raises(error, match=message):
        getattr(indeed_ext, name)(**args)


@pytest.mark.parametrize("name", ["identical_map", "decompose"])
@pytest.mark.parametrize("case,args,error,message", PAIR_ERRORS, ids=_ids(PAIR_ERRORS))
def test_pair_op_torch_ops(name, case, args, error, message):
    with pytest.raises(error, match=message):
        getattr(torch.ops.indeed, name)(args["fa"], args["fb"], args["norm"], args["eps"])


@pytest.mark.parametrize("case,args,error,message", SIX_HEAD_ERRORS, ids=_ids(SIX_HEAD_ERRORS))
def test_six_head_bce_python_api(case, args, error, message):
    with pytest.raises(error, match=message):
        indeed_ext.six_head_bce(**args)


@pytest.mark.parametrize("op_name", ["six_head_bce", "six_head_loss", "_six_head_loss_forward"])
@pytest.mark.parametrize("case,args,error,message", SIX_HEAD_ERRORS, ids=_ids(SIX_HEAD_ERRORS))
def test_six_head_bce_torch_ops(op_name, case, args, error, message):
    loss_settings = BCE if op_name == "_six_head_loss_forward" else ()  # it has no defaults
    with pytest.raises(error, match=message):
        getattr(torch.ops.indeed, op_name)(*args.values(), *loss_settings)


def test_no_pairs_is_not_an_error():
    args = _six_head(index_a=torch.zeros(0, dtype=torch.int64), index_b=torch.zeros(0, dtype=torch.int64))
    assert indeed_ext.six_head_bce(**args).shape == (0, 6)
    assert torch.ops.indeed.six_head_bce(*args.values()).shape == (0, 6)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'"):
        indeed_ext.decompose(torch.rand(2, 3), torch.rand(2, 3), backend="gpu")


# The backward ops check what the forward would have given them (shapes, dtypes).
def test_pair_backward_op_checks_gradients():
    fa, fb = torch.rand(3, N), torch.rand(3, N)
    g = torch.rand(3, N)
    with pytest.raises(ValueError, match=r"grad_m must have shape \[3, 6\]"):
        torch.ops.indeed._identical_map_backward(g[:2], fa, fb, "minmax", 1e-12)
    with pytest.raises(TypeError, match=r"grad_db must be Float"):
        torch.ops.indeed._decompose_backward(g, g, g, g.double(), fa, fb, "l2", 1e-12)
    with pytest.raises(ValueError, match=r"unknown norm"):
        torch.ops.indeed._decompose_backward(g, g, g, g, fa, fb, "minimax", 1e-12)


def test_six_head_backward_op_checks_saved_tensors():
    args = _six_head()
    loss, logits, ident_logits = torch.ops.indeed._six_head_loss_forward(*args.values(), *BCE)
    inputs = list(args.values())[:6]
    grad = torch.ones_like(loss)
    with pytest.raises(ValueError, match=r"grad must have shape \[4, 6\]"):
        torch.ops.indeed._six_head_loss_backward(grad[:2], *inputs, logits, ident_logits, "minmax", 1e-12, *BCE)
    with pytest.raises(ValueError, match=r"logits must have shape \[5, 3\]"):
        torch.ops.indeed._six_head_loss_backward(grad, *inputs, logits.t(), ident_logits, "minmax", 1e-12, *BCE)
    with pytest.raises(TypeError, match=r"ident_logits must be Float"):
        torch.ops.indeed._six_head_loss_backward(grad, *inputs, logits, ident_logits.double(), "minmax", 1e-12, *BCE)
    inputs[4] = torch.tensor([0, 1, 2, 7])
    with pytest.raises(IndexError, match=r"index_a has values outside"):
        torch.ops.indeed._six_head_loss_backward(grad, *inputs, logits, ident_logits, "minmax", 1e-12, *BCE)
