"""CUDA kernels of torch.ops.indeed against reference.py, forward and backward.

Without a GPU only the registration check can run, and only where the build is known to include
the CUDA sources (INDEED_EXPECT_CUDA=1, as CI sets it); the rest needs a GPU (requires_cuda).
Matmuls run without TF32 so that float32 results can be held to the float32 tolerances.
"""
import os

import pytest
import torch
from conftest import ASL, BCE, DTYPES, NORMS, assert_close, make_features, make_six_head_inputs, requires_cuda

from indeed_ext import reference

CUDA_OPS = (
    "identical_map",
    "_identical_map_backward",
    "decompose",
    "_decompose_backward",
    "_six_head_loss_forward",
    "_six_head_loss_backward",
    "mine_pairs",
    "mine_pairs_cooccur",
)
KINDS = ("relu", "ties", "negative", "zeros")
# (rows, n): single element, two elements, odd n (scalar loads), a vectorisable n, and rows
# longer than one register tile (8192 forward, 4096 backward), which take the re-reading path.
PAIR_SHAPES = ((1, 1), (3, 2), (4, 2047), (5, 2048), (2, 8200))
EPS = 1e-12


def test_every_op_has_a_cuda_kernel():
    if os.environ.get("INDEED_EXPECT_CUDA") != "1":
        pytest.skip("INDEED_EXPECT_CUDA=1 not set: the build may have left out the CUDA sources")
    missing = [op for op in CUDA_OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"indeed::{op}", "CUDA")]
    assert not missing, f"no CUDA kernel registered for {missing}"


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _leaves(*tensors):
    # detach() keeps each view's strides (clone would make strided views contiguous)
    return [None if t is None else t.detach().requires_grad_() for t in tensors]


def _compare_pair_op(name, fa, fb, norm, grads=None):
    """Forward and backward of torch.ops.indeed.<name> on CUDA against reference.<name>."""
    dtype = fa.dtype
    fa_k, fb_k = _leaves(fa, fb)
    fa_r, fb_r = _leaves(fa, fb)
    out = _as_tuple(getattr(torch.ops.indeed, name)(fa_k, fb_k, norm, EPS))
    ref = _as_tuple(getattr(reference, name)(fa_r, fb_r, norm, EPS))
    for i, (o, r) in enumerate(zip(out, ref)):
        assert o.dtype == r.dtype == dtype
        assert o.stride() == torch.empty_like(fa).stride(), "output layout differs from the fake kernel's"
        assert_close(o, r, dtype, what=f"{name} output {i}")
    if grads is None:
        gen = torch.Generator(device=fa.device).manual_seed(1)
        grads = [torch.randn(o.shape, generator=gen, device=fa.device, dtype=torch.float32).to(dtype) for o in out]
    got = torch.autograd.grad(out, (fa_k, fb_k), grads)
    want = torch.autograd.grad(ref, (fa_r, fb_r), grads)
    for what, g, w in zip(("grad fa", "grad fb"), got, want):
        assert g.dtype == dtype
        assert_close(g, w, dtype, backward=True, what=f"{name} {what}")


@requires_cuda
@pytest.mark.parametrize("name", ("identical_map", "decompose"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", PAIR_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
def test_pair_op_matches_reference(name, dtype, norm, shape, kind):
    rows, n = shape
    fa = make_features(rows, n, dtype, "cuda", kind, seed=0)
    fb = make_features(rows, n, dtype, "cuda", kind, seed=1)
    _compare_pair_op(name, fa, fb, norm)


def _strided_views(rows, n, dtype):
    """(what, fa, fb) with layouts the kernels must handle without a vector-aligned contiguous row."""
    wide = make_features(rows, 2 * n + 16, dtype, "cuda", "negative", seed=2)
    wide_b = make_features(rows, 2 * n + 16, dtype, "cuda", "relu", seed=3)
    tall = make_features(n, rows, dtype, "cuda", "negative", seed=4)
    tall_b = make_features(n, rows, dtype, "cuda", "relu", seed=5)
    return (
        ("aligned row stride", wide[:, 8 : 8 + n], wide_b[:, 8 : 8 + n]),
        ("misaligned rows", wide[:, 1 : 1 + n], wide_b[:, 3 : 3 + n]),
        ("column stride 2", wide[:, : 2 * n : 2], wide_b[:, 1 : 2 * n : 2]),
        ("transposed", tall.t(), tall_b.t()),
        ("expanded row", wide[:1, :n].expand(rows, n), wide_b[:, :n]),
    )


@requires_cuda
@pytest.mark.parametrize("name", ("identical_map", "decompose"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_pair_op_non_contiguous_inputs(name, dtype, norm):
    for what, fa, fb in _strided_views(6, 256, dtype):
        try:
            _compare_pair_op(name, fa, fb, norm)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from e


@requires_cuda
@pytest.mark.parametrize("norm", NORMS)
def test_decompose_backward_with_expanded_and_zero_grads(norm):
    # sum().backward() hands the kernel a stride-0 grad for ia and zeros for the other outputs
    fa, fb = make_features(3, 100, seed=0, device="cuda"), make_features(3, 100, seed=1, device="cuda")
    fa_k, fb_k = _leaves(fa, fb)
    fa_r, fb_r = _leaves(fa, fb)
    torch.ops.indeed.decompose(fa_k, fb_k, norm, EPS)[0].sum().backward()
    reference.decompose(fa_r, fb_r, norm, EPS)[0].sum().backward()
    assert_close(fa_k.grad, fa_r.grad, torch.float32, backward=True, what="grad fa")
    assert_close(fb_k.grad, fb_r.grad, torch.float32, backward=True, what="grad fb")


@requires_cuda
@pytest.mark.parametrize("name", ("identical_map", "decompose"))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("bad", (float("nan"), float("inf")))
def test_nan_and_inf_propagate_like_the_reference(name, norm, bad):
    fa = make_features(4, 33, device="cuda", kind="negative")
    fb = make_features(4, 33, device="cuda", kind="relu", seed=1)
    fa[1, 5] = bad
    out = _as_tuple(getattr(torch.ops.indeed, name)(fa, fb, norm, EPS))
    ref = _as_tuple(getattr(reference, name)(fa, fb, norm, EPS))
    for o, r in zip(out, ref):
        assert_close(o, r, torch.float32, what=f"{name} with {bad}")
    assert not out[0][1].isfinite().all(), "the bad value did not reach its row"


@requires_cuda
def test_minmax_gradient_splits_ties_on_cuda():
    # the worked case of test_reference: p = [0, 0, 2, 2, 1], dm = e_4
    fa = torch.tensor([[0.0, 0.0, 2.0, 2.0, 1.0]], dtype=torch.float64, device="cuda", requires_grad=True)
    fb = torch.ones(1, 5, dtype=torch.float64, device="cuda")
    torch.ops.indeed.identical_map(fa, fb, "minmax", EPS)[0, 4].backward()
    expected = torch.tensor([[-0.125, -0.125, -0.125, -0.125, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(fa.grad.cpu(), expected)


# ----------------------------------------------------------------------------- six_head_bce
SIX_HEAD_SHAPES = ((1, 1, 1, 1), (7, 13, 2047, 5), (16, 40, 64, 80), (9, 24, 2048, 3), (5, 0, 32, 3))


def _compare_six_head(features, weight, bias, targets, index_a, index_b, norm):
    dtype = features.dtype
    k_leaves = _leaves(features, weight, bias)
    r_leaves = _leaves(features, weight, bias)
    loss = torch.ops.indeed.six_head_bce(*k_leaves, targets, index_a, index_b, norm, EPS)
    ref = reference.six_head_bce(*r_leaves, targets, index_a, index_b, norm, EPS)
    assert loss.dtype == ref.dtype == reference.loss_dtype(dtype)
    assert loss.shape == (index_a.shape[0], 6)
    assert_close(loss, ref, dtype, what="loss")
    grad = torch.rand(loss.shape, generator=torch.Generator(device="cuda").manual_seed(3), device="cuda").to(loss.dtype)
    wrt_k = [t for t in k_leaves if t is not None]
    wrt_r = [t for t in r_leaves if t is not None]
    got = torch.autograd.grad(loss, wrt_k, grad, allow_unused=True)
    want = torch.autograd.grad(ref, wrt_r, grad, allow_unused=True)
    for what, g, w, leaf in zip(("features", "weight", "bias"), got, want, wrt_k):
        g = torch.zeros_like(leaf) if g is None else g
        w = torch.zeros_like(leaf) if w is None else w
        assert g.dtype == leaf.dtype
        assert_close(g, w, dtype, backward=True, what=f"grad {what}")


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SIX_HEAD_SHAPES, ids=lambda s: "B{}-P{}-n{}-c{}".format(*s))
@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no_bias"))
def test_six_head_bce_matches_reference(dtype, norm, shape, bias):
    B, P, n, c = shape
    _compare_six_head(*make_six_head_inputs(B, P, n, c, dtype, "cuda", bias=bias), norm)


@requires_cuda
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", ("ties", "zeros", "negative"))
def test_six_head_bce_feature_kinds(dtype, norm, kind):
    _compare_six_head(*make_six_head_inputs(12, 30, 96, 7, dtype, "cuda", kind=kind), norm)


@requires_cuda
@pytest.mark.parametrize("norm", NORMS)
def test_six_head_bce_non_contiguous_inputs(norm):
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(10, 24, 50, 6, device="cuda")
    wide = torch.cat([features, features], dim=1)  # column stride 2 below: copied by the kernel
    features_nc = wide[:, ::2]
    weight_t = weight.t().contiguous().t()  # a transposed (n, c) buffer
    targets_nc = torch.cat([targets, targets], dim=1)[:, ::2]
    index_a_nc = torch.stack([index_a, index_b], dim=1)[:, 0]
    index_b_nc = torch.stack([index_a, index_b], dim=1)[:, 1]
    assert not any(t.is_contiguous() for t in (features_nc, weight_t, targets_nc, index_a_nc))
    _compare_six_head(features_nc, weight_t, bias, targets_nc, index_a_nc, index_b_nc, norm)


@requires_cuda
def test_six_head_bce_repeated_pair_rows():
    # every pair shares row 0 with many others: the scatter-adds into dF[0] and G[0] collide
    features, weight, bias, targets, _, index_b = make_six_head_inputs(4, 64, 40, 5, device="cuda")
    index_a = torch.zeros_like(index_b)
    _compare_six_head(features, weight, bias, targets, index_a, index_b, "minmax")


@requires_cuda
@pytest.mark.parametrize("norm", NORMS)
def test_ops_are_cuda_graph_capturable(norm):
    # Capture fails if a kernel runs on another stream than the current one or an op syncs with the host.
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(8, 16, 64, 5, device="cuda")
    fa, fb = make_features(4, 64, device="cuda"), make_features(4, 64, device="cuda", seed=1)
    grad = torch.rand(16, 6, device="cuda")
    ops = torch.ops.indeed

    def run():
        loss, logits, ident = ops._six_head_loss_forward(
            features, weight, bias, targets, index_a, index_b, norm, EPS, *ASL
        )
        six_head_grads = ops._six_head_loss_backward(
            grad, features, weight, bias, targets, index_a, index_b, logits, ident, norm, EPS, *ASL
        )
        parts = ops.decompose(fa, fb, norm, EPS)
        m = ops.identical_map(fa, fb, norm, EPS)
        pair_grads = ops._decompose_backward(*parts, fa, fb, norm, EPS) + ops._identical_map_backward(m, fa, fb, norm, EPS)
        return (loss, *six_head_grads, *parts, m, *pair_grads)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        expected = run()  # warm-up outside the capture (cuBLAS handles and workspaces)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    for i, (got, want) in enumerate(zip(captured, expected)):
        assert_close(got, want, torch.float32, backward=True, what=f"output {i} of the replayed graph")


# ----------------------------------------------------------------------------- opcheck
@requires_cuda
@pytest.mark.parametrize("norm", NORMS)
def test_opcheck_pair_ops(norm):
    fa = make_features(5, 37, device="cuda", kind="negative").requires_grad_()
    fb = make_features(5, 37, device="cuda", seed=1).requires_grad_()
    g = torch.randn(5, 37, device="cuda")
    ops = torch.ops.indeed
    torch.library.opcheck(ops.identical_map.default, (fa, fb, norm, EPS))
    torch.library.opcheck(ops.decompose.default, (fa, fb, norm, EPS))
    torch.library.opcheck(ops._identical_map_backward.default, (g, fa.detach(), fb.detach(), norm, EPS))
    torch.library.opcheck(ops._decompose_backward.default, (g, g, g, g, fa.detach(), fb.detach(), norm, EPS))


@requires_cuda
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no_bias"))
def test_opcheck_six_head_ops(norm, bias):
    features, weight, b, targets, index_a, index_b = make_six_head_inputs(6, 9, 33, 5, device="cuda", bias=bias)
    for leaf in (features, weight, b):
        if leaf is not None:
            leaf.requires_grad_()
    args = (features, weight, b, targets, index_a, index_b, norm, EPS)
    ops = torch.ops.indeed
    torch.library.opcheck(ops.six_head_bce.default, args)
    for loss_settings in (BCE, ASL):
        torch.library.opcheck(ops._six_head_loss_forward.default, args + loss_settings)
        torch.library.opcheck(ops.six_head_loss.default, args + loss_settings)
        _, logits, ident_logits = ops._six_head_loss_forward(*args, *loss_settings)
        grad = torch.rand(9, 6, device="cuda")
        detached = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args)
        backward_args = (grad, *detached[:6], logits.detach(), ident_logits.detach(), norm, EPS, *loss_settings)
        torch.library.opcheck(ops._six_head_loss_backward.default, backward_args)
