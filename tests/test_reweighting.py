"""Singh et al.'s weighted loss (indeed_ext.reweighting) against a loop that builds its weights
entry by entry as their code does, its limit weight = 1 (the baseline), gradients, autocast and errors."""
import pytest
import torch
import torch.nn.functional as F

from indeed_ext.losses import INDeeDLoss
from indeed_ext.reweighting import ExclusiveWeightedBCE


def problem(B=12, n=6, c=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(B, n, generator=g, dtype=dtype)
    classifier = torch.nn.Linear(n, c).to(dtype)
    targets = (torch.rand(B, c, generator=g) < 0.5).to(dtype)
    return features, targets, classifier


def looped_loss(features, targets, classifier, pairs, weight):
    """The weights as in the reproduction's train_weighted: 1, and `weight` at (image, b) when the image has b without c."""
    per_entry = F.binary_cross_entropy_with_logits(classifier(features), targets, reduction="none")
    weights = torch.ones_like(per_entry)
    for b, c in pairs:
        for i in range(targets.shape[0]):
            if targets[i, b] == 1 and targets[i, c] == 0:
                weights[i, b] = weight
    return (weights * per_entry).sum(1).mean()


@pytest.mark.parametrize("pairs", [[[0, 1], [2, 3]], [[0, 1], [0, 4], [3, 0]], []], ids=["two", "one-b-twice", "none"])
def test_matches_the_entrywise_weights(pairs):
    features, targets, classifier = problem()
    out = ExclusiveWeightedBCE(torch.tensor(pairs, dtype=torch.int64), weight=10.0)(features, targets, classifier)
    torch.testing.assert_close(out.loss, looped_loss(features, targets, classifier, pairs, 10.0))
    assert out.orig == out.loss and out.ident == 0 and out.disp == 0 and out.num_partial == 0
    if pairs:
        plain = looped_loss(features, targets, classifier, [], 1.0)
        assert out.loss > plain  # some exclusive entries were upweighted


def test_weight_one_is_the_baseline_loss():
    features, targets, classifier = problem(dtype=torch.float32)
    weighted = ExclusiveWeightedBCE([[0, 1], [2, 3]], weight=1.0)(features, targets, classifier).loss
    baseline = INDeeDLoss(lam=0.0)(features, targets, classifier).loss
    torch.testing.assert_close(weighted, baseline, atol=0, rtol=0)


def test_gradients_and_bool_targets():
    features, targets, classifier = problem()
    features.requires_grad_(True)
    loss = ExclusiveWeightedBCE([[1, 2]], weight=3.0)
    assert torch.autograd.gradcheck(lambda f: loss(f, targets, classifier).loss, (features,))
    torch.testing.assert_close(loss(features, targets.bool(), classifier).loss.double(), loss(features, targets, classifier).loss)


def test_autocast_keeps_the_loss_in_float32():
    features, targets, classifier = problem(dtype=torch.float32)
    loss = ExclusiveWeightedBCE([[0, 1]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(features.bfloat16(), targets, classifier)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, loss(features.bfloat16().float(), targets, classifier).loss, atol=0.05, rtol=0.01)


@pytest.mark.parametrize(
    "pairs, weight, error, message",
    [
        ([[0.0, 1.0]], 10.0, TypeError, "integer class indices"),
        ([[0, 1, 2]], 10.0, ValueError, r"\(K, 2\)"),
        ([[1, 1]], 10.0, ValueError, "b != c"),
        ([[-1, 1]], 10.0, ValueError, ">= 0"),
        ([[0, 1]], 0.0, ValueError, "weight must be a finite number > 0"),
        ([[0, 1]], float("inf"), ValueError, "weight must be a finite number > 0"),
    ],
)
def test_bad_settings(pairs, weight, error, message):
    with pytest.raises(error, match=message):
        ExclusiveWeightedBCE(torch.tensor(pairs), weight)


def test_pairs_beyond_the_classes_and_bad_inputs():
    features, targets, classifier = problem(c=5)
    with pytest.raises(ValueError, match="name class 7, but targets have c=5"):
        ExclusiveWeightedBCE([[7, 1]])(features, targets, classifier)
    with pytest.raises(ValueError, match="same batch size"):
        ExclusiveWeightedBCE([[0, 1]])(features[:3], targets, classifier)
