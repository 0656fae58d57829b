"""Triton backend (torch.ops.indeed_triton) against reference.py, forward and backward.

Without a GPU (conftest sets TRITON_INTERPRET=1) the kernels run on CPU tensors through
the interpreter with small block sizes, so small odd shapes still cover several blocks
of rows, pairs, classes and features; with a GPU the same tests run on CUDA tensors,
plus the half dtypes and the larger shapes.
"""
import os
import subprocess
import sys

import pytest
import torch

import indeed_ext
from indeed_ext import reference
from indeed_ext.ops import OP_NAMES, _triton_ops
from indeed_ext.triton._common import INTERPRETING

from conftest import ASL, BCE, NORMS, assert_close, make_features, make_six_head_inputs

ops = _triton_ops()
DEVICE = "cpu" if INTERPRETING else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("Triton needs a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)
on_gpu = pytest.mark.skipif(INTERPRETING, reason="runs on a GPU only (too slow or unsupported in the interpreter)")

# The interpreter has no bf16 tl.dot; the half dtypes run on GPUs.
DTYPES = (torch.float64, torch.float32) + (() if INTERPRETING else (torch.bfloat16, torch.float16))


def _grads(outputs, inputs, seed=0):
    """Gradients of sum(g * output) for random upstream grads g (the same for every backend)."""
    gen = torch.Generator().manual_seed(seed)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outputs]
    return torch.autograd.grad(outputs, inputs, ups)


def _pair_inputs(rows, n, dtype, kind, seed=0):
    fa = make_features(rows, n, dtype, DEVICE, kind, seed)
    fb = make_features(rows, n, dtype, DEVICE, "negative" if kind == "negative" else "relu", seed + 7)
    return fa.requires_grad_(), fb.requires_grad_()


def _check_pair_op(name, fa, fb, norm, eps=1e-12):
    dtype = fa.dtype
    got = getattr(ops, name)(fa, fb, norm, eps)
    expected = getattr(reference, name)(fa, fb, norm, eps)
    got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
    for g, e in zip(got, expected):
        assert g.dtype == dtype and g.shape == fa.shape
        assert_close(g, e, dtype, what=f"{name} forward")
    for g, e, what in zip(_grads(got, (fa, fb)), _grads(expected, (fa, fb)), ("grad fa", "grad fb")):
        assert g.dtype == dtype
        assert_close(g, e, dtype, backward=True, what=f"{name} {what}")


PAIR_CASES = [  # rows, n, kind: n not a multiple of the block, single columns, long rows
    (3, 37, "relu"),
    (5, 20, "ties"),
    (6, 33, "zeros"),
    (2, 19, "negative"),
    (1, 1, "relu"),
    (3, 2, "negative"),
    (3, 2047, "relu"),
]


@pytest.mark.parametrize("name", ["identical_map", "decompose"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,n,kind", PAIR_CASES)
def test_pair_ops_match_reference(name, norm, dtype, rows, n, kind):
    _check_pair_op(name, *_pair_inputs(rows, n, dtype, kind), norm)


@on_gpu
@pytest.mark.parametrize("name", ["identical_map", "decompose"])
@pytest.mark.parametrize("norm", NORMS)
def test_pair_ops_long_rows(name, norm):
    # 8192 columns: more than one 4096-column tile per row
    _check_pair_op(name, *_pair_inputs(9, 8192, torch.float32, "relu"), norm)


def _tied_rows(n):
    """Rows of values in {1, 2} (both extremes tied many times, in every column block); in the
    first row the extremes then move, to 0 and 3 (tied twice each), in the last block."""
    rows = torch.randint(1, 3, (2, n), generator=torch.Generator().manual_seed(n)).double()
    rows[0, -4:] = torch.tensor([0.0, 3.0, 0.0, 3.0])
    return rows.to(DEVICE)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n", [20, 5000])  # the last 4 columns in a later column block, interpreted or not
def test_tied_extremes_split_the_gradient(norm, n):
    fa = _tied_rows(n).requires_grad_()
    fb = torch.ones_like(fa, requires_grad=True)
    _check_pair_op("identical_map", fa, fb, norm)
    _check_pair_op("decompose", fa, fb, norm)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_clamped_denominator(norm, dtype):
    # range and norm below eps (constant eps denominator), an all-equal row, an all-zero row
    fa = torch.tensor([[5e-4, 0.0, 2e-4], [3.0, 3.0, 3.0], [0.0, 0.0, 0.0]], dtype=dtype, device=DEVICE)
    fb = torch.ones_like(fa)
    _check_pair_op("decompose", fa.requires_grad_(), fb.requires_grad_(), norm, eps=1e-3)


@pytest.mark.parametrize("norm", NORMS)
def test_nan_propagates_forward(norm):
    fa = make_features(3, 21, torch.float32, DEVICE)
    fa[1, 17] = float("nan")
    fb = make_features(3, 21, torch.float32, DEVICE, seed=3)
    for got, expected in zip(ops.decompose(fa, fb, norm), reference.decompose(fa, fb, norm)):
        assert_close(got, expected, torch.float32, what="decompose with NaN")
    m = ops.identical_map(fa, fb, norm)
    assert_close(m, reference.identical_map(fa, fb, norm), torch.float32, what="identical_map with NaN")
    # minmax: the row's min and max are NaN, so is all of m; l2: the norm is NaN, so clamped to eps
    assert m[1].isnan().all() if norm == "minmax" else m[1].isnan().sum() == 1


@pytest.mark.parametrize("norm", NORMS)
def test_non_contiguous_inputs(norm):
    base = make_features(40, 6, torch.float64, DEVICE)
    fa = base.t()  # (6, 40), column-major
    fb = make_features(6, 80, torch.float64, DEVICE, seed=2)[:, ::2]  # strided columns
    _check_pair_op("decompose", fa.requires_grad_(), fb.requires_grad_(), norm)
    _check_pair_op("identical_map", fa, fb, norm)


def _check_six_head(inputs, norm, dtype):
    features, weight, bias, targets, index_a, index_b = inputs
    params = [t.requires_grad_() for t in (features, weight, bias) if t is not None]
    got = ops.six_head_bce(features, weight, bias, targets, index_a, index_b, norm, 1e-12)
    expected = reference.six_head_bce(features, weight, bias, targets, index_a, index_b, norm, 1e-12)
    assert got.shape == (index_a.shape[0], 6) and got.dtype == reference.loss_dtype(dtype)
    assert_close(got, expected, dtype, what="six_head_bce forward")
    if index_a.numel() == 0:
        return
    for g, e, t in zip(_grads(got, params), _grads(expected, params), params):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert_close(g, e, dtype, backward=True, what=f"six_head_bce grad of {tuple(t.shape)}")


SIX_HEAD_CASES = [  # B, P, n, c, bias, kind: several blocks of pairs, classes and features
    (5, 19, 37, 19, True, "relu"),
    (6, 21, 20, 33, False, "ties"),
    (4, 17, 18, 3, True, "zeros"),
    (3, 5, 9, 1, True, "negative"),
    (1, 1, 1, 1, False, "relu"),
    (4, 0, 8, 5, True, "relu"),
]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,P,n,c,bias,kind", SIX_HEAD_CASES)
def test_six_head_bce_matches_reference(norm, dtype, B, P, n, c, bias, kind):
    _check_six_head(make_six_head_inputs(B, P, n, c, dtype, DEVICE, bias, kind), norm, dtype)


@on_gpu
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_six_head_bce_larger(norm, dtype):
    # more than one 128-class block, uneven blocks everywhere
    _check_six_head(make_six_head_inputs(70, 300, 515, 130, dtype, DEVICE, True, "relu"), norm, dtype)


@pytest.mark.parametrize("norm", NORMS)
def test_six_head_bce_non_contiguous_and_weird_targets(norm):
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(6, 13, 40, 18, torch.float64, DEVICE)
    features = features.t().contiguous().t()  # column-major
    weight = torch.cat([weight, weight], dim=1)[:, ::2]  # strided columns, same values
    targets = torch.rand(18, 6, dtype=torch.float64, device=DEVICE).t()  # soft labels, column-major
    _check_six_head((features, weight, bias, targets, index_a.flip(0), index_b), norm, torch.float64)


@pytest.mark.parametrize("norm", NORMS)
def test_six_head_bce_deterministic_mode(norm):
    # dF is then reduced by torch's index_add_ instead of atomics: bitwise reproducible, same values
    features, weight, bias, *rest = make_six_head_inputs(5, 30, 21, 7, torch.float32, DEVICE, True, "ties")
    params = [t.requires_grad_() for t in (features, weight, bias)]
    runs = []
    try:
        torch.use_deterministic_algorithms(True)
        for _ in range(2):
            runs.append(_grads(ops.six_head_bce(*params, *rest, norm, 1e-12), params))
    finally:
        torch.use_deterministic_algorithms(False)
    expected = _grads(reference.six_head_bce(*params, *rest, norm, 1e-12), params)
    for first, second, e in zip(*runs, expected):
        assert torch.equal(first, second)
        assert_close(first, e, torch.float32, backward=True, what="six_head_bce deterministic grads")


def _opcheck_samples():
    fa, fb = _pair_inputs(3, 19, torch.float64, "ties")
    grads = [torch.randn_like(fa) for _ in range(4)]
    six = make_six_head_inputs(4, 9, 18, 5, torch.float64, DEVICE)
    loss, logits, ident = ops._six_head_loss_forward(*six, "minmax", 1e-12, *ASL)
    return {
        "identical_map": (fa, fb, "l2", 1e-12),
        "_identical_map_backward": (grads[0], fa.detach(), fb.detach(), "minmax", 1e-12),
        "decompose": (fa, fb, "minmax", 1e-12),
        "_decompose_backward": (*grads, fa.detach(), fb.detach(), "l2", 1e-12),
        "six_head_bce": tuple(t.detach().requires_grad_() if t is not None and t.is_floating_point() else t
                              for t in six) + ("l2", 1e-12),
        "six_head_loss": tuple(t.detach().requires_grad_() if t is not None and t.is_floating_point() else t
                               for t in six) + ("l2", 1e-12, *ASL),
        "_six_head_loss_forward": (*(t.requires_grad_() if i < 3 else t for i, t in enumerate(six)), "minmax", 1e-12,
                                   *ASL),
        "_six_head_loss_backward": (torch.randn_like(loss), *(t.detach() for t in six[:3]), *six[3:],
                                    logits, ident, "minmax", 1e-12, *ASL),
        "mine_pairs": (six[3], torch.tensor(3, device=DEVICE)),
        "mine_pairs_cooccur": (six[3], torch.tensor(3, device=DEVICE), torch.randint(0, 2**16 + 1, (5, 5), device=DEVICE)),
    }


@pytest.mark.parametrize("name", OP_NAMES)
def test_opcheck(name):
    torch.library.opcheck(getattr(ops, name).default, _opcheck_samples()[name])


def test_schemas_match_indeed_namespace():
    for name in OP_NAMES:
        theirs = str(getattr(torch.ops.indeed, name).default._schema)
        ours = str(getattr(ops, name).default._schema)
        assert ours == theirs.replace("indeed::", "indeed_triton::", 1)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    inputs = make_six_head_inputs(5, 11, 19, 6, torch.float32, DEVICE)

    def step(features, weight, bias):
        loss = indeed_ext.six_head_bce(features, weight, bias, *inputs[3:], norm="l2", backend="triton")
        ia, ib, da, db = indeed_ext.decompose(features[:3], features[2:5], backend="triton")
        return loss.sum() + (ia * db).sum() - indeed_ext.identical_map(ib, da, backend="triton").sum()

    params = [t.detach().requires_grad_() for t in inputs[:3]]
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(*params)
    expected = step(*(p.detach().requires_grad_() for p in params))
    torch.testing.assert_close(got, expected)
    got.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in params)


def test_public_api_dispatches_to_triton():
    fa, fb = _pair_inputs(2, 5, torch.float64, "relu")
    got = indeed_ext.identical_map(fa, fb, "l2", backend="triton")
    torch.testing.assert_close(got, reference.identical_map(fa, fb, "l2"))


def test_bad_inputs_raise():
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(4, 3, 8, 5, torch.float32, DEVICE)
    with pytest.raises(IndexError, match="index_b"):
        indeed_ext.six_head_bce(features, weight, bias, targets, index_a, index_b + 4, backend="triton")
    if DEVICE == "cpu":  # on GPUs the op itself does not read index values (test_out_of_range_indices)
        with pytest.raises(IndexError, match="index_a"):
            ops.six_head_bce(features, weight, bias, targets, index_a - 5, index_b)
    with pytest.raises(ValueError, match="norm"):
        ops.six_head_bce(features, weight, bias, targets, index_a, index_b, "l1")
    with pytest.raises(TypeError, match="mixed dtypes"):
        ops.decompose(features, features.double())
    with pytest.raises(ValueError, match="eps"):
        ops.identical_map(features, features, "l2", 0.0)


@pytest.mark.parametrize("norm", NORMS)
def test_out_of_range_indices_give_nan_losses_without_reading_out_of_bounds(norm):
    # What the kernels do with indices outside [0, B) (on GPUs the op passes them on unread):
    # those pairs get NaN losses and no gradient, the other pairs are exact.
    from indeed_ext.triton.six_head_loss import six_head_backward, six_head_forward

    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(5, 19, 21, 6, torch.float64, DEVICE)
    bad = torch.tensor([0, 7, 18])
    index_a, index_b = index_a.clone(), index_b.clone()
    index_a[bad[:2]] = torch.tensor([5, -1])
    index_b[bad[2]] = 1 << 40
    good = torch.ones(19, dtype=torch.bool)
    good[bad] = False
    loss, logits, ident = six_head_forward(features, weight, bias, targets, index_a, index_b, norm, 1e-12, *BCE[:5])  # no focal_grad in the forward
    assert loss[bad].isnan().all() and loss[good].isfinite().all()
    params = [t.detach().requires_grad_() for t in (features, weight, bias)]
    expected = reference.six_head_bce(*params, targets, index_a[good], index_b[good], norm, 1e-12)
    assert_close(loss[good], expected, torch.float64, what="valid pairs' losses")
    upstream = torch.randn(19, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    got = six_head_backward(upstream, features, weight, bias, targets, index_a, index_b, logits, ident, norm, 1e-12,
                            *BCE)
    for g, e in zip(got, torch.autograd.grad(expected, params, upstream[good])):
        assert_close(g, e, torch.float64, backward=True, what="gradients of the valid pairs only")


def test_cpu_tensors_need_the_interpreter():
    code = (
        "import torch, indeed_ext\n"
        "from indeed_ext.ops import _triton_ops\n"
        "x = torch.ones(2, 3)\n"
        "try:\n"
        "    _triton_ops().identical_map(x, x)\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "TRITON_INTERPRET=1" in out.stdout, out.stderr


def test_float32_dot_precision_follows_torch():
    from indeed_ext.triton._common import dot_precision

    before = torch.get_float32_matmul_precision()
    try:
        for setting, expected in (("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")):
            torch.set_float32_matmul_precision(setting)
            assert dot_precision(torch.float32) == expected
            assert dot_precision(torch.float64) == "ieee"
    finally:
        torch.set_float32_matmul_precision(before)
