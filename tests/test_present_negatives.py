"""six_head_loss's present_negatives="mean" (issue 26): a decomposed head's present negatives (the
classes its image has that its target excludes) count as one class in all. The rule's weights on
hand-computed pairs, every backend against reference.py (forward and gradients, BCE and ASL, odd
sizes, soft targets), float64 gradcheck, opcheck, "sum" unchanged, and INDeeDLoss's fused and unfused
paths. The aten count of INDeeDLoss(present_negatives="mean") is pinned in test_aten_counts.py.
"""
import contextlib

import pytest
import torch
from torch import nn

from indeed_ext import INDeeDLoss, reference
from indeed_ext.ops import _triton_ops

from conftest import assert_close, make_six_head_inputs
from test_six_head_loss import BACKENDS, _device, _dtypes

LOSSES = [("bce", 0.0, 0.0, 0.0), ("asl", 4.0, 0.0, 0.05)]
# (B, P, n, c): one class; several class blocks (c = 65) with repeated rows; P > B.
SHAPES = [(1, 1, 3, 1), (5, 9, 33, 65), (7, 11, 13, 5)]


def _namespace(backend):
    return _triton_ops() if backend == "triton" else torch.ops.indeed


def _inputs(B, P, n, c, dtype, device, seed=0):
    """Signed features, denser 0/1 labels than conftest's (so that pairs share several), soft labels in
    every fourth class, and a self pair (a, a) first."""
    features, weight, bias, _, index_a, index_b = make_six_head_inputs(B, P, n, c, dtype, device, True, "negative", seed)
    g = torch.Generator().manual_seed(seed + 7)
    targets = (torch.rand(B, c, generator=g) < 0.6).double()
    targets[:, ::4] = torch.rand(B, (c + 3) // 4, generator=g, dtype=torch.float64)
    index_b = index_b.clone()
    index_b[0] = index_a[0]
    return features, weight, bias, targets.to(dtype=dtype, device=device), index_a, index_b


def test_weights_on_hand_computed_pairs():
    targets = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 0, 1, 1, 1]])
    index_a, index_b = torch.tensor([0, 0, 2]), torch.tensor([1, 0, 1])
    w = reference.present_negative_weights(targets, index_a, index_b)
    # Pair (0, 1): shared {0, 1}, a only {2}, b only {3}. The disparate heads' present negatives are the
    # two shared labels (1/2 each); each identical head has one (weight 1: one class is one class).
    ones = torch.ones(5)
    expected_01 = torch.stack((ones, ones, ones, ones, torch.tensor([0.5, 0.5, 1, 1, 1]), torch.tensor([0.5, 0.5, 1, 1, 1])))
    torch.testing.assert_close(w[0], expected_01)
    # Self pair (0, 0): the identical heads have none; the disparate ones all three labels of row 0.
    third = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1, 1])
    torch.testing.assert_close(w[1], torch.stack((ones, ones, ones, ones, third, third)))
    # Pair (2, 1): shared {0, 3}; a only {2, 4} (ident_a: 1/2 each); b only {1} (ident_b: weight 1).
    expected_21 = torch.stack((ones, ones, torch.tensor([1, 1, 0.5, 1, 0.5]), ones, torch.tensor([0.5, 1, 1, 0.5, 1]),
                               torch.tensor([0.5, 1, 1, 0.5, 1])))
    torch.testing.assert_close(w[2], expected_21)


def test_mean_loss_is_the_sum_of_the_other_classes_plus_the_mean_of_the_present_negatives():
    # One pair, BCE, by hand: the disparate head of a, classes {shared 0, 1; a only 2; neither 3}.
    features, weight, bias, _, _, _ = make_six_head_inputs(2, 1, 6, 4, torch.float64, "cpu", True, "relu")
    targets = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float64)
    index_a, index_b = torch.tensor([0]), torch.tensor([1])
    args = (features, weight, bias, targets, index_a, index_b, "minmax", 1e-12, "bce", 0.0, 0.0, 0.0, 1e-8, False)
    disparate_a = reference.decompose(features[:1], features[1:])[2]
    per_class = torch.nn.functional.binary_cross_entropy_with_logits(
        disparate_a @ weight.T + bias, torch.tensor([[0.0, 0, 1, 0]], dtype=torch.float64), reduction="none")[0]
    want = per_class[2] + per_class[3] + (per_class[0] + per_class[1]) / 2
    got = reference.six_head_loss(*args, "mean")
    torch.testing.assert_close(got[0, 4], want)
    torch.testing.assert_close(reference.six_head_loss(*args, "sum")[0, 4], per_class.sum())
    torch.testing.assert_close(got[0, :2], reference.six_head_loss(*args, "sum")[0, :2])  # the original heads keep the sum


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda s: s[0])
def test_every_backend_matches_the_reference(backend, loss):
    device = _device(backend)
    op = _namespace(backend).six_head_loss
    for dtype in _dtypes(backend):
        for B, P, n, c in SHAPES:
            features, weight, bias, targets, index_a, index_b = _inputs(B, P, n, c, dtype, device)
            settings = (*loss, 1e-8, True, "mean")
            ours_in = [t.detach().clone().requires_grad_() for t in (features, weight, bias)]
            ref_in = [t.detach().clone().requires_grad_() for t in (features, weight, bias)]
            ours = op(*ours_in, targets, index_a, index_b, "minmax", 1e-12, *settings)
            ref = reference.six_head_loss(*ref_in, targets, index_a, index_b, "minmax", 1e-12, *settings)
            what = f"{dtype}, B={B} P={P} n={n} c={c}"
            assert_close(ours, ref, dtype, what=f"loss, {what}")
            upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(ref)
            for name, g, w in zip(("features", "weight", "bias"), torch.autograd.grad(ours, ours_in, upstream),
                                  torch.autograd.grad(ref, ref_in, upstream)):
                assert_close(g, w, dtype, backward=True, what=f"grad {name}, {what}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_opcheck(backend):
    features, weight, bias, targets, index_a, index_b = _inputs(4, 6, 5, 3, torch.float64, _device(backend))
    namespace = _namespace(backend)
    for loss in LOSSES:
        settings = (*loss, 1e-8, True, "mean")
        assert torch.autograd.gradcheck(
            lambda f, w, b: namespace.six_head_loss(f, w, b, targets, index_a, index_b, "minmax", 1e-12, *settings),
            tuple(t.detach().clone().requires_grad_() for t in (features, weight, bias)), fast_mode=backend == "triton",
        ), loss
    leaves = tuple(t.detach().clone().requires_grad_() for t in (features, weight, bias))
    torch.library.opcheck(namespace._six_head_loss_forward.default,
                          (*leaves, targets, index_a, index_b, "minmax", 1e-12, "asl", 4.0, 0.0, 0.05, 1e-8, False, "mean"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sum_is_the_default_and_unchanged(backend):
    features, weight, bias, targets, index_a, index_b = _inputs(7, 11, 13, 5, torch.float32, _device(backend))
    op = _namespace(backend).six_head_loss
    args = (features, weight, bias, targets, index_a, index_b, "minmax", 1e-12, "asl", 4.0, 0.0, 0.05, 1e-8, False)
    default, summed, mean = op(*args), op(*args, "sum"), op(*args, "mean")
    assert torch.equal(default, summed)
    assert torch.equal(mean[:, :2], summed[:, :2])  # the original heads
    assert (mean[:, 2:] <= summed[:, 2:] + 1e-6).all() and (mean[:, 4:] < summed[:, 4:]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_value_is_a_value_error(backend):
    features, weight, bias, targets, index_a, index_b = _inputs(3, 3, 4, 2, torch.float32, _device(backend))
    with pytest.raises(ValueError, match="present_negatives"):
        _namespace(backend).six_head_loss(features, weight, bias, targets, index_a, index_b, "minmax", 1e-12, "bce",
                                          0.0, 0.0, 0.0, 1e-8, False, "median")


@pytest.mark.parametrize("base", ["bce", "asl"])
def test_loss_fused_and_unfused_agree(base):
    # A non-Linear head runs unfused (reference math with present_negative_weights); an nn.Linear wrapped
    # in a Sequential gives the same numbers as the fused op on the same pairs.
    features = torch.randn(12, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).relu()
    targets = (torch.rand(12, 6, generator=torch.Generator().manual_seed(1)) < 0.6).double()
    linear = nn.Linear(8, 6).double()
    results = []
    for head in (linear, nn.Sequential(linear)):
        criterion = INDeeDLoss(base=base, present_negatives="mean")
        with pytest.warns(UserWarning, match="unfused") if head is not linear else contextlib.nullcontext():
            out = criterion(features, targets, head, torch.Generator().manual_seed(2))
        results.append(out)
    for fused, unfused in zip(results[0][:4], results[1][:4]):
        torch.testing.assert_close(fused, unfused)
    assert results[0].loss < INDeeDLoss(base=base)(features, targets, linear, torch.Generator().manual_seed(2)).loss


def test_loss_rejects_an_unknown_value():
    with pytest.raises(ValueError, match="present_negatives"):
        INDeeDLoss(present_negatives="max")
