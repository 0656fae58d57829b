"""six_head_loss with the ASL base loss (and its focal case) on every backend against reference.py.

Backends: the CPU C++ kernels, Triton (through the interpreter on CPU tensors without a GPU,
which has no half tl.dot: float64 and float32 there) and, on a GPU, the CUDA C++ kernels.
The reference is ASL's own code line by line (reference.asl_sum), so autograd through it fixes
the gradients the kernels must give in both focal_grad modes. BCE, the other base loss, has
its own tests in test_cpu_ops.py, test_triton_ops.py and test_cuda_ops.py.
"""
import pytest
import torch

import indeed_ext
from indeed_ext import reference
from indeed_ext.ops import _triton_ops
from indeed_ext.triton._common import INTERPRETING

from conftest import DTYPES, assert_close, make_six_head_inputs, requires_cuda

TRITON_DEVICE = "cpu" if INTERPRETING else "cuda"
BACKENDS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("triton", id="triton", marks=pytest.mark.skipif(
        TRITON_DEVICE == "cuda" and not torch.cuda.is_available(), reason="Triton needs a GPU or TRITON_INTERPRET=1")),
    pytest.param("cuda", id="cuda", marks=requires_cuda),
]
# (gamma_neg, gamma_pos, clip): ASL's training setting, a focal loss (gamma 2, no clip), an
# asymmetric one with a large clip, and gamma 0 (the clamped-log form of BCE).
SETTINGS = [(4.0, 0.0, 0.05), (2.0, 2.0, 0.0), (3.0, 1.0, 0.2), (0.0, 0.0, 0.0)]
# (B, P, n, c, kind): B = 1 with n = c = 1; n = 33 with c = 65 (several class blocks); n = 1, c = 1.
SHAPES = [(1, 1, 1, 1, "relu"), (5, 9, 33, 65, "negative"), (7, 11, 1, 1, "negative")]


def _device(backend):
    return TRITON_DEVICE if backend == "triton" else backend


def _op(backend):
    return (_triton_ops() if backend == "triton" else torch.ops.indeed).six_head_loss


def _dtypes(backend):
    return (torch.float64, torch.float32) if backend == "triton" and INTERPRETING else DTYPES


def _inputs(B, P, n, c, dtype, device, kind="negative", seed=0):
    """make_six_head_inputs with soft targets in [0, 1] and the larger logits of weights scaled by 3."""
    features, weight, bias, _, index_a, index_b = make_six_head_inputs(B, P, n, c, dtype, device, True, kind, seed)
    targets = torch.rand(B, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    targets[:, ::3] = (targets[:, ::3] > 0.5).double()  # hard labels in every third class
    return features, (weight.double() * 3).to(dtype), bias, targets.to(dtype), index_a, index_b


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _compare(backend, inputs, settings, focal_grad, norm="minmax"):
    """Forward and the gradients of features, weight, bias for one random upstream gradient."""
    features, weight, bias, targets, index_a, index_b = inputs
    dtype = features.dtype
    loss_args = ("asl", *settings, 1e-8, focal_grad)
    ours_in, ref_in = _leaves(features, weight, bias), _leaves(features, weight, bias)
    ours = _op(backend)(*ours_in, targets, index_a, index_b, norm, 1e-12, *loss_args)
    ref = reference.six_head_loss(*ref_in, targets, index_a, index_b, norm, 1e-12, *loss_args)
    assert ours.dtype == ref.dtype == reference.loss_dtype(dtype) and ours.shape == (index_a.shape[0], 6)
    assert_close(ours, ref, dtype, what="loss")
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(ref)
    got = torch.autograd.grad(ours, ours_in, upstream)
    want = torch.autograd.grad(ref, ref_in, upstream)
    for what, g, w, leaf in zip(("features", "weight", "bias"), got, want, ours_in):
        assert g.dtype == leaf.dtype
        assert_close(g, w, dtype, backward=True, what=f"grad {what}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("focal_grad", [False, True], ids=["focal_weight_constant", "focal_grad"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "gn{}-gp{}-clip{}".format(*s))
def test_asl_matches_reference(backend, settings, focal_grad):
    device = _device(backend)
    for dtype in _dtypes(backend):
        for B, P, n, c, kind in SHAPES:
            try:
                _compare(backend, _inputs(B, P, n, c, dtype, device, kind), settings, focal_grad)
            except AssertionError as e:
                raise AssertionError(f"{dtype}, B={B} P={P} n={n} c={c}: {e}") from e


@pytest.mark.parametrize("backend", BACKENDS)
def test_asl_l2_norm_and_no_bias(backend):
    features, weight, _, targets, index_a, index_b = _inputs(6, 10, 20, 7, torch.float64, _device(backend))
    features_, weight_ = _leaves(features, weight)
    args = (targets, index_a, index_b, "l2", 1e-12, "asl", 4.0, 1.0, 0.05, 1e-8, True)
    got = _op(backend)(features_, weight_, None, *args)
    ref_in = _leaves(features, weight)
    want = reference.six_head_loss(*ref_in[:2], None, *args)
    assert_close(got, want, torch.float64, what="loss")
    for g, w in zip(torch.autograd.grad(got.sum(), (features_, weight_)), torch.autograd.grad(want.sum(), ref_in)):
        assert_close(g, w, torch.float64, backward=True, what="grad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    # float64 finite differences, signed features (no ties, no clamp), logits away from the clip's
    # kink at p = 1 - clip. focal_grad=True is the loss's own gradient; focal_grad=False holds the
    # focal weight constant, which the loss's finite differences show only where the weight is
    # constant (gamma 0: ASL's clip and log clamp alone); there both modes are checked.
    features, weight, bias, targets, index_a, index_b = _inputs(4, 5, 6, 3, torch.float64, _device(backend))
    op = _op(backend)
    cases = [((4.0, 1.0, 0.05), True), ((2.0, 2.0, 0.0), True), ((0.0, 0.0, 0.1), True), ((0.0, 0.0, 0.1), False)]
    for settings, focal_grad in cases:
        assert torch.autograd.gradcheck(
            lambda f, w, b: op(f, w, b, targets, index_a, index_b, "minmax", 1e-12, "asl", *settings, 1e-8, focal_grad),
            tuple(t.detach().clone().requires_grad_() for t in (features, weight, bias)), fast_mode=backend == "triton",
        ), (settings, focal_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gamma_zero_is_bce_in_float64(backend):
    # ASL with gamma 0 and no clip is BCE in its clamped-log form: the same wherever the
    # clamp at eps_log does not bite (logits of a few units here).
    inputs = _inputs(5, 9, 33, 65, torch.float64, _device(backend))
    op = _op(backend)
    results = []
    for loss_args in (("asl", 0.0, 0.0, 0.0, 1e-8, False), ("bce", 0.0, 0.0, 0.0, 1e-8, False)):
        leaves = _leaves(*inputs[:3])
        loss = op(*leaves, *inputs[3:], "minmax", 1e-12, *loss_args)
        results.append((loss, *torch.autograd.grad(loss.sum(), leaves)))
    for asl, bce in zip(*results):
        torch.testing.assert_close(asl, bce, atol=1e-9, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clamps_at_equality(backend):
    # Logits whose probabilities sit exactly on the clamps: p = 1/2 = eps_log on the log's
    # clamps, and 1 - p + clip = 1 (p = clip = 1/2) on the clip's. torch's clamp passes no
    # gradient at equality (torch 2.14); the kernels must do the same (passing it changes the
    # bias gradient by 0.0625 in the clip's case).
    device = _device(backend)
    features = torch.zeros(2, 1, dtype=torch.float64, device=device)
    weight = torch.zeros(1, 1, dtype=torch.float64, device=device)
    bias = torch.zeros(1, dtype=torch.float64, device=device)  # every logit 0: p = 1/2 exactly
    targets = torch.tensor([[0.5], [0.0]], dtype=torch.float64, device=device)  # soft: the clip's gradient is not 0
    index = torch.tensor([0, 1], device=device), torch.tensor([1, 0], device=device)
    for settings in ((2.0, 1.0, 0.5, 0.25), (2.0, 1.0, 0.0, 0.5)):  # gamma_neg, gamma_pos, clip, eps_log
        for focal_grad in (False, True):
            args = (features, weight, *index, "minmax", 1e-12, "asl", *settings, focal_grad)
            ours_bias, ref_bias = _leaves(bias, bias)
            ours = _op(backend)(args[0], args[1], ours_bias, targets, *args[2:])
            ref = reference.six_head_loss(args[0], args[1], ref_bias, targets, *args[2:])
            assert_close(ours, ref, torch.float64, what=f"loss at the clamps {settings}")
            (got,), (want,) = torch.autograd.grad(ours.sum(), ours_bias), torch.autograd.grad(ref.sum(), ref_bias)
            assert_close(got, want, torch.float64, backward=True, what=f"grad at the clamps {settings} {focal_grad}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_logits_of_100_give_finite_losses_and_gradients(backend):
    # ASL issue 53: half logits drove log(0). Logits of +-100 in bfloat16, both kinds of targets;
    # the op accumulates in float32 and clamps as ASL's formula says.
    if backend == "triton" and INTERPRETING:
        pytest.skip("the Triton interpreter has no bfloat16 tl.dot")
    device = _device(backend)
    features = torch.ones(4, 8, dtype=torch.bfloat16, device=device)
    weight = torch.tensor([[12.5] * 8, [-12.5] * 8], dtype=torch.bfloat16, device=device)  # logits +-100
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], device=device)
    index_a, index_b = torch.arange(4, device=device), torch.tensor([1, 0, 3, 2], device=device)
    for focal_grad in (False, True):
        features_, weight_ = _leaves(features, weight)
        loss = _op(backend)(features_, weight_, None, targets, index_a, index_b, "minmax", 1e-12, "asl", 4.0, 0.0,
                            0.05, 1e-8, focal_grad)
        assert loss.dtype == torch.float32 and loss.isfinite().all() and loss.max() > 10  # log(1e-8) terms
        grads = torch.autograd.grad(loss.sum(), (features_, weight_))
        assert all(g.isfinite().all() for g in grads)
        ref_in = _leaves(features, weight)
        ref = reference.six_head_loss(*ref_in[:2], None, targets, index_a, index_b, "minmax", 1e-12, "asl", 4.0, 0.0,
                                      0.05, 1e-8, focal_grad)
        assert_close(loss, ref, torch.bfloat16, what="loss")


def _opcheck_args(backend):
    inputs = _inputs(4, 6, 5, 3, torch.float64, _device(backend))
    leaves = tuple(t.requires_grad_() for t in _leaves(*inputs[:3]))
    return leaves + inputs[3:] + ("l2", 1e-12, "asl", 4.0, 1.0, 0.05, 1e-8, True, "mean")


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    namespace = _triton_ops() if backend == "triton" else torch.ops.indeed
    args = _opcheck_args(backend)
    torch.library.opcheck(namespace.six_head_loss.default, args)
    torch.library.opcheck(namespace._six_head_loss_forward.default, args)
    loss, logits, ident = namespace._six_head_loss_forward(*args)
    detached = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args)
    torch.library.opcheck(namespace._six_head_loss_backward.default,
                          (torch.randn_like(loss), *detached[:6], logits, ident, *detached[6:]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    features, weight, bias, targets, index_a, index_b = _inputs(6, 9, 12, 5, torch.float32, _device(backend))
    api_backend = "triton" if backend == "triton" else "auto"  # "cpu", "cuda" look up the kernels: not traceable

    def step(f, w, b):
        heads = indeed_ext.six_head_loss(f, w, b, targets, index_a, index_b, "minmax", loss="asl", gamma_neg=4.0,
                                         gamma_pos=1.0, clip=0.05, backend=api_backend, check_indices=False)
        return (heads * torch.arange(1.0, 7.0, device=heads.device)).sum()

    eager_in, compiled_in = _leaves(features, weight, bias), _leaves(features, weight, bias)
    expected = step(*eager_in)
    got = torch.compile(step, fullgraph=True)(*compiled_in)
    torch.testing.assert_close(got, expected)
    for g, e in zip(torch.autograd.grad(got, compiled_in), torch.autograd.grad(expected, eager_in)):
        torch.testing.assert_close(g, e)


BAD_SETTINGS = [
    (("focal", 2.0, 2.0, 0.0, 1e-8), ValueError, r"unknown loss 'focal'; expected one of \('bce', 'asl'\)"),
    (("asl", -1.0, 0.0, 0.0, 1e-8), ValueError, "gamma_neg must be a finite number >= 0"),
    (("asl", 4.0, float("inf"), 0.0, 1e-8), ValueError, "gamma_pos must be a finite number >= 0"),
    (("asl", 4.0, 0.0, 1.0, 1e-8), ValueError, r"clip must be a number in \[0, 1\)"),
    (("asl", 4.0, 0.0, -0.1, 1e-8), ValueError, r"clip must be a number in \[0, 1\)"),
    (("asl", 4.0, 0.0, 0.05, 0.0), ValueError, r"eps_log must be a number in \(0, 1\)"),
    (("bce", 4.0, 0.0, 0.0, 1e-8), ValueError, "loss='bce' needs them 0"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("settings,error,message", BAD_SETTINGS, ids=[s[0][0] + str(i) for i, s in enumerate(BAD_SETTINGS)])
def test_bad_loss_settings_raise(backend, settings, error, message):
    inputs = _inputs(3, 4, 5, 2, torch.float32, _device(backend))
    with pytest.raises(error, match=message):
        _op(backend)(*inputs, "minmax", 1e-12, *settings, False)
    loss, gamma_neg, gamma_pos, clip, eps_log = settings
    with pytest.raises(error, match=message):
        indeed_ext.six_head_loss(*inputs, loss=loss, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip,
                                 eps_log=eps_log, backend=backend)
