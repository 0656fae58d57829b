"""CPU kernels (torch.ops.indeed on CPU) against reference.py, forward and backward.

Gradients of both sides come from autograd through the public ops, with the same random
upstream gradient, so the backward ops are checked exactly as training uses them.
"""
import pytest
import torch

import indeed_ext
from indeed_ext import reference

from conftest import ASL, BCE, DTYPES, NORMS, assert_close, make_features, make_six_head_inputs

# (rows, n, kind): B=1, n=1, n=2, n=2047, tied extremes, all-zero rows, signed values.
PAIR_CASES = [
    (1, 1, "relu"),
    (3, 2, "negative"),
    (2, 2047, "relu"),
    (5, 64, "ties"),
    (6, 33, "zeros"),
    (4, 17, "negative"),
]
# (B, P, n, c, kind): B=1/n=1/c=1, P > B (repeated indices), n=2047, all-zero rows, ties.
SIX_HEAD_CASES = [
    (1, 1, 1, 1, "relu"),
    (4, 9, 2, 3, "negative"),
    (16, 12, 2047, 7, "relu"),
    (8, 10, 40, 5, "zeros"),
    (8, 10, 40, 5, "ties"),
    (12, 20, 33, 1, "negative"),
]


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _grads(outputs, inputs, upstream):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(outputs, inputs, upstream)


def _upstream_like(outputs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outputs]


def _compare_pair_op(name, fa, fb, norm, eps=1e-12):
    dtype = fa.dtype
    ours_in, ref_in = _leaves(fa, fb), _leaves(fa, fb)
    as_tuple = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
    ours = as_tuple(getattr(indeed_ext, name)(*ours_in, norm=norm, eps=eps, backend="cpu"))
    ref = as_tuple(getattr(reference, name)(*ref_in, norm=norm, eps=eps))
    for o, r, what in zip(ours, ref, ("out0", "out1", "out2", "out3")):
        assert o.dtype == dtype and o.shape == r.shape
        assert_close(o, r, dtype, what=f"{name} {what}")
    upstream = _upstream_like(ref)
    for o, r, what in zip(_grads(ours, ours_in, upstream), _grads(ref, ref_in, upstream), ("grad_fa", "grad_fb")):
        assert o.dtype == dtype
        assert_close(o, r, dtype, backward=True, what=f"{name} {what}")


@pytest.mark.parametrize("rows,n,kind", PAIR_CASES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["decompose", "identical_map"])
def test_pair_op_matches_reference(name, dtype, norm, rows, n, kind):
    fa = make_features(rows, n, dtype, kind=kind, seed=1)
    fb = make_features(rows, n, dtype, kind=kind, seed=2)
    _compare_pair_op(name, fa, fb, norm)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ["decompose", "identical_map"])
def test_pair_op_non_contiguous_and_self_pair(name, norm):
    base = make_features(16, 10, torch.float32, kind="negative", seed=3)
    fa = base[::2]  # every other row
    fb = make_features(20, 8, torch.float32, kind="relu", seed=4).t()  # (8, 20), column-major
    _compare_pair_op(name, fa, fb[:, :10], norm)
    _compare_pair_op(name, fa, fa, norm)  # a == b: p = fa^2


@pytest.mark.parametrize("norm", NORMS)
def test_pair_op_clamp_boundary(norm):
    # Ranges and norms just below, at and above eps: at d == eps the denominator is the constant eps.
    eps = 1e-3
    fa = torch.tensor([[5e-4, 0.0, 0.0], [1e-3, 0.0, 0.0], [2e-3, 0.0, 1e-4]], dtype=torch.float64)
    _compare_pair_op("decompose", fa, torch.ones_like(fa), norm, eps=eps)


def _six_head_both(features, weight, bias, targets, index_a, index_b, norm):
    dtype = features.dtype
    ours_in, ref_in = _leaves(features, weight, bias), _leaves(features, weight, bias)
    ours = indeed_ext.six_head_bce(*ours_in, targets, index_a, index_b, norm=norm, backend="cpu")
    ref = reference.six_head_bce(*ref_in, targets, index_a, index_b, norm=norm)
    assert ours.dtype == reference.loss_dtype(dtype) and ours.shape == (index_a.shape[0], 6)
    return ours, ref, ours_in, ref_in


@pytest.mark.parametrize("B,P,n,c,kind", SIX_HEAD_CASES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_six_head_bce_matches_reference(dtype, norm, B, P, n, c, kind):
    inputs = make_six_head_inputs(B, P, n, c, dtype, kind=kind)
    ours, ref, ours_in, ref_in = _six_head_both(*inputs, norm)
    assert_close(ours, ref, dtype, what="loss")
    upstream = _upstream_like([ref])
    ours_grads, ref_grads = _grads(ours, ours_in, upstream), _grads(ref, ref_in, upstream)
    for o, r, t, what in zip(ours_grads, ref_grads, inputs[:3], ("features", "weight", "bias")):
        assert o.dtype == t.dtype
        assert_close(o, r, dtype, backward=True, what=f"grad {what}")


@pytest.mark.parametrize("norm", NORMS)
def test_six_head_bce_no_bias_self_pairs_non_contiguous(norm):
    B, P, n, c = 10, 14, 24, 6
    features, weight, _, targets, index_a, index_b = make_six_head_inputs(B, P, n, c, torch.float32, bias=False)
    index_b[:4] = index_a[:4]  # self-pairs a == b
    features = features.t().contiguous().t()  # column-major
    weight = torch.cat([weight, weight], dim=1)[:, ::2]  # strided columns
    targets = targets.t().contiguous().t()
    index_a = torch.stack([index_a, index_b], dim=1)[:, 0]  # strided indices
    ours, ref, ours_in, ref_in = _six_head_both(features, weight, None, targets, index_a, index_b, norm)
    assert_close(ours, ref, torch.float32, what="loss")
    upstream = _upstream_like([ref])
    for o, r, what in zip(_grads(ours, ours_in, upstream), _grads(ref, ref_in, upstream), ("features", "weight")):
        assert_close(o, r, torch.float32, backward=True, what=f"grad {what}")


def test_six_head_bce_half_targets_and_bias_gradient_without_bias():
    # targets may have their own float dtype; the backward op returns grad_bias (c,) even without a bias
    features, weight, _, targets, index_a, index_b = make_six_head_inputs(6, 8, 12, 4, torch.float32, bias=False)
    loss, logits, ident_logits = torch.ops.indeed._six_head_loss_forward(
        features, weight, None, targets.half(), index_a, index_b, "minmax", 1e-12, *BCE
    )
    assert_close(loss, reference.six_head_bce(features, weight, None, targets.half(), index_a, index_b), torch.float32)
    grad = torch.ones_like(loss)
    _, _, grad_bias = torch.ops.indeed._six_head_loss_backward(
        grad, features, weight, None, targets, index_a, index_b, logits, ident_logits, "minmax", 1e-12, *BCE
    )
    bias = torch.zeros(4, requires_grad=True)
    reference.six_head_bce(features, weight, bias, targets, index_a, index_b).sum().backward()
    assert grad_bias.shape == (4,)
    assert_close(grad_bias, bias.grad, torch.float32, backward=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_six_head_bce_large_logits(dtype):
    # Logits far beyond softplus's threshold (20) and below exp's float range (-87): the tails
    # of the kernels' exp/log1p and of the threshold branch.
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(8, 12, 16, 5, dtype, kind="negative")
    weight = weight * 200
    ours, ref, ours_in, ref_in = _six_head_both(features, weight, bias, targets, index_a, index_b, "minmax")
    assert ref.detach().abs().max() > 100  # the case is what it claims
    assert_close(ours, ref, dtype, what="loss")
    upstream = _upstream_like([ref])
    for o, r, what in zip(_grads(ours, ours_in, upstream), _grads(ref, ref_in, upstream), ("features", "weight", "bias")):
        assert_close(o, r, dtype, backward=True, what=f"grad {what}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_six_head_bce_no_pairs(dtype):
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(4, 0, 8, 3, dtype)
    features.requires_grad_()
    weight.requires_grad_()
    loss = indeed_ext.six_head_bce(features, weight, bias, targets, index_a, index_b, backend="cpu")
    assert loss.shape == (0, 6) and loss.dtype == reference.loss_dtype(dtype)
    loss.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_six_head_bce_logits_saved_in_accumulation_dtype():
    for dtype in DTYPES:
        inputs = make_six_head_inputs(5, 6, 8, 3, dtype)
        loss, logits, ident_logits = torch.ops.indeed._six_head_loss_forward(*inputs, "l2", 1e-12, *BCE)
        acc = reference.compute_dtype(dtype)
        assert (loss.dtype, logits.dtype, ident_logits.dtype) == (acc, acc, acc)
        assert logits.shape == (5, 3) and ident_logits.shape == (6, 2, 3)


# ----------------------------------------------------------------------------- NaN and Inf
def _with_non_finite(t):
    t = t.clone()
    t[0, 1] = float("nan")
    t[1, 0] = float("inf")
    t[2, 2] = float("-inf")
    return t


def _assert_nan_where_reference_nan(ours, ref, what):
    assert not torch.isnan(ref).logical_and(~torch.isnan(ours)).any(), f"{what}: finite where the reference is NaN"
    finite = ~torch.isnan(ref)
    torch.testing.assert_close(ours[finite], ref[finite], atol=1e-5, rtol=1e-4, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("norm", NORMS)
def test_nan_and_inf_propagate(norm):
    fa = _with_non_finite(make_features(4, 6, torch.float32, kind="negative", seed=1))
    fb = make_features(4, 6, torch.float32, kind="negative", seed=2)
    ours_in, ref_in = _leaves(fa, fb), _leaves(fa, fb)
    ours = indeed_ext.decompose(*ours_in, norm=norm, backend="cpu")
    ref = reference.decompose(*ref_in, norm=norm)
    for o, r in zip(ours, ref):
        assert torch.equal(torch.isnan(o), torch.isnan(r)), "forward NaN pattern differs from the reference"
        _assert_nan_where_reference_nan(o, r, "decompose")
    upstream = _upstream_like(ref)
    for o, r in zip(_grads(ours, ours_in, upstream), _grads(ref, ref_in, upstream)):
        _assert_nan_where_reference_nan(o, r, "decompose backward")

    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(6, 8, 6, 3, kind="negative")
    features = _with_non_finite(features)
    ours_in, ref_in = _leaves(features, weight, bias), _leaves(features, weight, bias)
    ours = indeed_ext.six_head_bce(*ours_in, targets, index_a, index_b, norm=norm, backend="cpu")
    ref = reference.six_head_bce(*ref_in, targets, index_a, index_b, norm=norm)
    _assert_nan_where_reference_nan(ours, ref, "six_head_bce")
    upstream = _upstream_like([ref])
    for o, r in zip(_grads(ours, ours_in, upstream), _grads(ref, ref_in, upstream)):
        _assert_nan_where_reference_nan(o, r, "six_head_bce backward")


# ----------------------------------------------------------------------------- gradcheck, opcheck
@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck(norm):
    # Signed random values: no ties and no clamp, where finite differences are valid.
    fa = make_features(3, 7, torch.float64, kind="negative", seed=1).requires_grad_()
    fb = make_features(3, 7, torch.float64, kind="negative", seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.indeed.identical_map(a, b, norm), (fa, fb))
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.indeed.decompose(a, b, norm), (fa, fb))
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(4, 5, 6, 3, torch.float64, kind="negative")
    assert torch.autograd.gradcheck(
        lambda f, w, b: torch.ops.indeed.six_head_bce(f, w, b, targets, index_a, index_b, norm),
        tuple(t.requires_grad_() for t in (features, weight, bias)),
    )


def _opcheck_cases(norm):
    fa = make_features(3, 5, torch.float32, kind="negative", seed=1)
    fb = make_features(3, 5, torch.float32, kind="relu", seed=2)
    g = [make_features(3, 5, torch.float32, kind="negative", seed=s) for s in range(3, 7)]
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(4, 6, 5, 3, kind="negative")
    six = (features, weight, bias, targets, index_a, index_b, norm, 1e-12)
    loss, logits, ident_logits = torch.ops.indeed._six_head_loss_forward(*six, *ASL)
    grad = torch.randn_like(loss)
    req = lambda *ts: tuple(t.clone().requires_grad_() for t in ts)  # noqa: E731
    return {
        "identical_map": (*req(fa, fb), norm, 1e-12),
        "_identical_map_backward": (g[0], fa, fb, norm, 1e-12),
        "decompose": (*req(fa, fb), norm, 1e-12),
        "_decompose_backward": (*g, fa, fb, norm, 1e-12),
        "six_head_bce": (*req(features, weight, bias), *six[3:]),
        "six_head_loss": (*req(features, weight, bias), *six[3:], *ASL),
        "_six_head_loss_forward": (*req(features, weight, bias), *six[3:], *ASL),
        "_six_head_loss_backward": (grad, *six[:6], logits, ident_logits, norm, 1e-12, *ASL),
        "mine_pairs": (targets, torch.tensor(3)),
        "mine_pairs_cooccur": (targets, torch.tensor(3), torch.randint(0, 2**16 + 1, (3, 3), generator=torch.Generator().manual_seed(0))),
    }


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("op_name", indeed_ext.ops.OP_NAMES)
def test_opcheck(op_name, norm):
    args = _opcheck_cases(norm)[op_name]
    torch.library.opcheck(getattr(torch.ops.indeed, op_name), args)
