"""Metrics against scikit-learn and ASL's formula, tie handling, the confidence map,
the AP table, the confidence-map PNG and the context score."""
import math

import numpy as np
import pytest
import torch

from indeed_ext.metrics import (
    ap_table_markdown,
    average_precision,
    biased_pairs_by_cooccurrence,
    biased_pairs_by_scores,
    confidence_map,
    context_score,
    mean_average_precision,
)
from indeed_ext.recipes.viz import save_confidence_map

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def asl_average_precision(scores, targets):
    """ASL's per-class AP (validate.py's average_precision): precision at each positive of
    the descending sort, averaged over the positives."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] == 1
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return precision_at_hit.mean()


def random_problem(N=200, c=7, seed=0, decimals=None):
    rng = np.random.default_rng(seed)
    targets = (rng.random((N, c)) < 0.3).astype(np.float32)
    scores = rng.random((N, c)) + 0.4 * targets  # informative, tie-free
    if decimals is not None:
        scores = np.round(scores, decimals)  # many ties
    return scores, targets


def test_matches_sklearn_and_asl_without_ties():
    scores, targets = random_problem()
    ap = average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert ap.dtype == torch.float64 and ap.shape == (7,)
    for k in range(7):
        assert ap[k].item() == pytest.approx(sklearn_metrics.average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)
        assert ap[k].item() == pytest.approx(asl_average_precision(scores[:, k], targets[:, k]), abs=1e-12)


def test_ties_are_grouped_like_sklearn():
    scores, targets = random_problem(decimals=1)
    ap = average_precision(scores, targets)
    for k in range(7):
        assert ap[k].item() == pytest.approx(sklearn_metrics.average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)


def test_tied_samples_count_at_once_whatever_their_order():
    # One positive tied with one negative: precision 1/2 at the tie, in either order.
    for targets in ([[1.0], [0.0]], [[0.0], [1.0]]):
        assert average_precision([[0.5], [0.5]], targets).item() == 0.5
    # Positive ranked first, then a tie of a positive and two negatives.
    ap = average_precision([[0.9], [0.2], [0.2], [0.2]], [[1.0], [0.0], [1.0], [0.0]]).item()
    assert ap == pytest.approx((1 + 2 / 4) / 2)


def test_known_values_and_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.1, 0.6, 0.1]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    ap = average_precision(scores, targets)
    assert ap[0].item() == pytest.approx((1 / 1 + 2 / 3) / 2)  # positives at ranks 1 and 3
    assert ap[1].item() == 1.0  # positives at ranks 1 and 2
    assert math.isnan(ap[2].item())
    mean, per_class = mean_average_precision(scores, targets)
    assert mean == pytest.approx(100 * (ap[0].item() + ap[1].item()) / 2)
    assert per_class[1].item() == 100.0 and math.isnan(per_class[2].item())


def test_map_without_any_positive_is_nan():
    mean, per_class = mean_average_precision(torch.rand(5, 3), torch.zeros(5, 3))
    assert math.isnan(mean) and torch.isnan(per_class).all()


def test_soft_targets_and_inputs_on_other_types():
    scores, targets = random_problem(N=50, c=3, seed=1)
    hard = average_precision(scores, targets)
    soft = average_precision(torch.from_numpy(scores).float(), torch.from_numpy(targets) * 0.8 + 0.1)
    torch.testing.assert_close(soft, hard, atol=1e-6, rtol=0)  # float32 scores: same order, no new ties


def test_average_precision_errors():
    with pytest.raises(ValueError, match="same shape"):
        average_precision(torch.rand(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="2-D"):
        average_precision(torch.rand(4), torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(torch.tensor([[float("nan")]]), torch.ones(1, 1))


def test_confidence_map_toy():
    scores = torch.tensor([[0.9, 0.2, 0.1], [0.7, 0.4, 0.3], [0.1, 0.8, 0.6]])
    labels = torch.tensor([0, 0, 1])
    matrix = confidence_map(scores, labels, 3)
    assert matrix.shape == (3, 3) and matrix.dtype == torch.float64
    torch.testing.assert_close(matrix[0], torch.tensor([0.8, 0.3, 0.2], dtype=torch.float64))
    torch.testing.assert_close(matrix[1], torch.tensor([0.1, 0.8, 0.6], dtype=torch.float64))
    assert torch.isnan(matrix[2]).all(), "no test image of class 2"


def test_confidence_map_errors():
    with pytest.raises(ValueError, match="num_classes=4 columns"):
        confidence_map(torch.rand(3, 3), torch.tensor([0, 1, 2]), 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        confidence_map(torch.rand(2, 3), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="one label per score row"):
        confidence_map(torch.rand(2, 3), torch.tensor([0]), 3)
    with pytest.raises(TypeError, match="integer class indices"):
        confidence_map(torch.rand(2, 3), torch.tensor([0.0, 1.0]), 3)


def test_ap_table_markdown():
    table = ap_table_markdown(
        {"Baseline": torch.tensor([90.0, 80.0, float("nan")]), "INDeeD (Min-max)": [95.25, 85.0, float("nan")]},
        ["0", "1", "2"],
    )
    assert table.splitlines() == [
        "| Model | 0 | 1 | 2 | mAP |",
        "|---|---:|---:|---:|---:|",
        "| Baseline | 90.0 | 80.0 | n/a | 85.0 |",
        "| INDeeD (Min-max) | 95.2 | 85.0 | n/a | 90.1 |",
    ]
    with pytest.raises(ValueError, match="row 'x' has 2 per-class values for 3 classes"):
        ap_table_markdown({"x": [1.0, 2.0]}, ["a", "b", "c"])


def test_confidence_map_png(tmp_path):
    pytest.importorskip("matplotlib")
    matrix = torch.eye(4) * 0.7 + 0.1
    matrix[3] = float("nan")
    path = tmp_path / "maps" / "baseline.png"
    save_confidence_map(matrix, path, class_names=["zero", "one", "two", "three"], title="Baseline")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 200


def test_confidence_map_png_errors(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="square"):
        save_confidence_map(torch.rand(2, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="class_names has 2 names for a 3x3 matrix"):
        save_confidence_map(torch.rand(3, 3), tmp_path / "x.png", class_names=["a", "b"])


def test_context_score_hand_computed():
    # Class 0's context is {1, 2}, class 1's {0}, class 2 has none (a hub's own images).
    context = torch.tensor([[False, True, True], [True, False, False], [False, False, False]])
    probabilities = torch.tensor([[0.9, 0.2, 0.4], [0.5, 0.8, 0.1], [0.3, 0.7, 0.9], [0.1, 0.6, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    # Images of classes 0, 1, 0: (0.2 + 0.4) / 2, 0.5, (0.6 + 0.0) / 2; the class-2 image does not count.
    assert context_score(probabilities, labels, context) == pytest.approx((0.3 + 0.5 + 0.3) / 3)
    assert math.isnan(context_score(probabilities[2:3], labels[2:3], context))


def test_context_score_errors():
    context = torch.eye(3, dtype=torch.bool)
    with pytest.raises(TypeError, match="bool"):
        context_score(torch.rand(2, 3), torch.tensor([0, 1]), context.float())
    with pytest.raises(ValueError, match=r"context must be \(3, 3\)"):
        context_score(torch.rand(2, 3), torch.tensor([0, 1]), torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        context_score(torch.rand(2, 3), torch.tensor([0, 3]), context)
    with pytest.raises(TypeError, match="integer class indices"):
        context_score(torch.rand(2, 3), torch.tensor([0.0, 1.0]), context)


# Classes A, B, C = 0, 1, 2 on eight images: A in 5 (3 with B, 1 with C), B in 5 (1 with C), C in 3.
BIAS_TARGETS = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 0]])


def test_biased_pairs_by_cooccurrence_hand_computed():
    # P(B | A) = P(A | B) = 3/5; P(A | C) = P(B | C) = 1/3, a tie: the first class (A) wins.
    pairs, strength = biased_pairs_by_cooccurrence(BIAS_TARGETS)
    assert pairs.tolist() == [[0, 1], [1, 0], [2, 0]] and pairs.dtype == torch.int64
    torch.testing.assert_close(strength, torch.tensor([0.6, 0.6, 1 / 3], dtype=torch.float64))
    assert biased_pairs_by_cooccurrence(BIAS_TARGETS, k=2)[0].tolist() == [[0, 1], [1, 0]]
    # At least 2 images of b with c and 2 without: C (1 image with A) has no pair left.
    assert biased_pairs_by_cooccurrence(BIAS_TARGETS, min_images=2)[0].tolist() == [[0, 1], [1, 0]]
    # c in at least 70 % of b's images: none.
    pairs, strength = biased_pairs_by_cooccurrence(BIAS_TARGETS, min_cooccurrence=0.7)
    assert pairs.shape == (0, 2) and strength.shape == (0,)
    # A pair whose b never appears without c has no exclusive images to weigh: not a candidate.
    assert biased_pairs_by_cooccurrence(torch.tensor([[1, 1, 0], [1, 1, 0], [0, 1, 1]]))[0].tolist() == [[1, 0]]


def test_biased_pairs_by_scores_hand_computed():
    scores = torch.full((8, 3), 0.5, dtype=torch.float64)
    scores[[0, 1, 2, 3, 6], 0] = torch.tensor([0.75, 0.75, 0.75, 0.25, 0.5], dtype=torch.float64)  # A's images
    scores[[0, 1, 2, 4, 7], 1] = torch.tensor([0.5, 0.5, 0.5, 0.25, 0.75], dtype=torch.float64)  # B's
    scores[[4, 5, 6], 2] = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)  # C's
    # bias(A -> B) = 0.75 / ((0.25 + 0.5) / 2) = 2, bias(A -> C) = 0.5 / 0.625 = 0.8;
    # bias(B -> A) = 0.5 / ((0.25 + 0.75) / 2) = 1, bias(B -> C) = 0.25 / 0.5625;
    # bias(C -> A) = 0.75 / ((0.25 + 0.5) / 2) = 2, bias(C -> B) = 0.25 / 0.625. Ties: the lower b first.
    pairs, bias = biased_pairs_by_scores(scores, BIAS_TARGETS)
    assert pairs.tolist() == [[0, 1], [2, 0], [1, 0]]
    torch.testing.assert_close(bias, torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64))
    assert biased_pairs_by_scores(scores, BIAS_TARGETS, k=1)[0].tolist() == [[0, 1]]
    scores[3, 0] = scores[6, 0] = 0.0  # A scores 0 on its images without B: bias(A -> B) has no ratio; bias(A -> C) = 0
    pairs, bias = biased_pairs_by_scores(scores, BIAS_TARGETS)
    assert pairs.tolist() == [[2, 0], [1, 0], [0, 2]] and bias[2] == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k must be a positive int"),
        (dict(min_images=0), "min_images must be an int >= 1"),
        (dict(min_cooccurrence=1.5), r"min_cooccurrence must be in \[0, 1\]"),
    ],
)
def test_biased_pairs_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        biased_pairs_by_cooccurrence(BIAS_TARGETS, **kwargs)
    with pytest.raises(ValueError, match=message):
        biased_pairs_by_scores(torch.rand(8, 3), BIAS_TARGETS, **kwargs)


def test_biased_pairs_by_scores_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        biased_pairs_by_scores(torch.rand(8, 2), BIAS_TARGETS)
