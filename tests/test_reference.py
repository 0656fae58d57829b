"""reference.py against values worked out by hand from docs/SPEC.md."""
import math

import pytest
import torch

from indeed_ext import reference

FA = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
FB = torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64)  # p = [3, 2, 0]


def test_identical_map_minmax_by_hand():
    m = reference.identical_map(FA, FB, "minmax")
    torch.testing.assert_close(m, torch.tensor([[1.0, 2 / 3, 0.0]], dtype=torch.float64))


def test_identical_map_l2_by_hand():
    m = reference.identical_map(FA, FB, "l2")
    s = math.sqrt(13)
    torch.testing.assert_close(m, torch.tensor([[3 / s, 2 / s, 0.0]], dtype=torch.float64))


def test_decompose_by_hand():
    ia, ib, da, db = reference.decompose(FA, FB, "minmax")
    t = lambda *v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(ia, t(1.0, 4 / 3, 0.0))
    torch.testing.assert_close(ib, t(3.0, 2 / 3, 0.0))
    torch.testing.assert_close(da, t(0.0, 2 / 3, 0.0))
    torch.testing.assert_close(db, t(0.0, 1 / 3, 0.0))


def test_all_zero_row_is_clamped_to_zero_map():
    z = torch.zeros(1, 4, dtype=torch.float64)
    for norm in reference.NORMS:
        ia, ib, da, db = reference.decompose(z, z + 1, norm)
        assert torch.equal(reference.identical_map(z, z + 1, norm), z)
        torch.testing.assert_close(db, z + 1)


def _sp(x):
    return math.log1p(math.exp(x))


def test_six_head_bce_by_hand():
    features = torch.cat([FA, FB])  # rows 0, 1
    weight = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    bias = torch.tensor([0.0, 0.5], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    ia, ib = torch.tensor([0]), torch.tensor([1])
    loss = reference.six_head_bce(features, weight, bias, targets, ia, ib, "minmax")
    # feature vectors: fa=[1,2,0] fb=[3,1,0] ia=[1,4/3,0] ib=[3,2/3,0] da=[0,2/3,0] db=[0,1/3,0]
    logits = {
        "orig_a": (1.0, 2.5), "orig_b": (3.0, 1.5), "ident_a": (1.0, 4 / 3 + 0.5),
        "ident_b": (3.0, 2 / 3 + 0.5), "disp_a": (0.0, 2 / 3 + 0.5), "disp_b": (0.0, 1 / 3 + 0.5),
    }
    # ya=[1,0], yb=[1,1]: ident [1,0], disp_a [0,0], disp_b [0,1]
    targets_by_head = {
        "orig_a": (1, 0), "orig_b": (1, 1), "ident_a": (1, 0), "ident_b": (1, 0), "disp_a": (0, 0), "disp_b": (0, 1),
    }
    expected = [sum(_sp(z) - y * z for z, y in zip(logits[h], targets_by_head[h])) for h in reference.HEADS]
    torch.testing.assert_close(loss, torch.tensor([expected], dtype=torch.float64))


def test_minmax_gradient_splits_evenly_among_ties():
    # p = [0, 0, 2, 2, 1] (two min ties, two max ties); dm = e_4 (only m_4 = 0.5 matters)
    fa = torch.tensor([[0.0, 0.0, 2.0, 2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    fb = torch.ones(1, 5, dtype=torch.float64)
    m = reference.identical_map(fa, fb, "minmax")
    m[0, 4].backward()
    # dp_4 = 1/r = 0.5; g_min = (m_4 - 1)/r = -0.25 split over 2; g_max = -m_4/r = -0.25 split over 2
    torch.testing.assert_close(fa.grad, torch.tensor([[-0.125, -0.125, -0.125, -0.125, 0.5]], dtype=torch.float64))


@pytest.mark.parametrize("norm", reference.NORMS)
def test_clamped_denominator_is_constant(norm):
    # p = eps/2 * e_0 has range and norm below eps: m = p / eps, so dm_0/dp_0 = 1/eps exactly
    eps = 1e-3
    fa = torch.tensor([[5e-4, 0.0]], dtype=torch.float64, requires_grad=True)
    fb = torch.ones(1, 2, dtype=torch.float64)
    m = reference.identical_map(fa, fb, norm, eps)
    m[0, 0].backward()
    assert m[0, 0].item() == pytest.approx(0.5)
    assert fa.grad[0, 0].item() == pytest.approx(1 / eps)
    # minmax: g_min = -dm_0/eps goes to the minimum (the second entry); l2: no extreme terms
    assert fa.grad[0, 1].item() == pytest.approx(-1 / eps if norm == "minmax" else 0.0)
