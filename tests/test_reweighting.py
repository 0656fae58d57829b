"""Singh et al.'s weighted loss (indeed_ext.reweighting) against a loop that builds its weights
entry by entry as their code does, its limit weight = 1 (the baseline), gradients, autocast and errors."""
import pytest
import torch
import torch.nn.functional as F

from indeed_ext.losses import INDeeDLoss
from indeed_ext.reweighting import ExclusiveWeightedBCE, FeatureSplitBCE


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


# ----------------------------------------------------------------------------- feature-split
def exclusive_rows(targets, pairs):
    return torch.tensor([any(t[b] == 1 and t[c] == 0 for b, c in pairs) for t in targets])


def looped_featuresplit(features, targets, classifier, pairs, class_weights, context_mean):
    """Row by row, as the reproduction's train_featuresplit computes it: an exclusive row's context
    half replaced by context_mean, b's loss there weighted by class_weights[b]."""
    half = features.shape[1] // 2
    total = 0.0
    for i in range(features.shape[0]):
        x = features[i].clone()
        weights = torch.ones(targets.shape[1], dtype=features.dtype)
        if exclusive_rows(targets[i : i + 1], pairs)[0]:
            x = torch.cat((x[:half], context_mean.to(x.dtype)))
            for b, c in pairs:
                if targets[i, b] == 1 and targets[i, c] == 0:
                    weights[b] = class_weights[b]
        logits = classifier(x)
        total = total + (weights * F.binary_cross_entropy_with_logits(logits, targets[i], reduction="none")).sum()
    return total / features.shape[0]


def test_featuresplit_matches_the_rowwise_loss_and_its_running_mean():
    features, targets, classifier = problem(B=16, n=7, c=5)
    pairs, class_weights = [[0, 1], [2, 3]], torch.tensor([4.0, 1.0, 3.0, 1.0, 1.0])
    loss = FeatureSplitBCE(pairs, 7, class_weights)
    exclusive = exclusive_rows(targets, pairs)
    assert 0 < exclusive.sum() < 16
    out = loss(features, targets, classifier)  # training mode: the mean is the non-exclusive rows' mean, then used
    expected_mean = features[~exclusive, 3:].mean(0)
    torch.testing.assert_close(loss.context_mean, expected_mean.float())
    torch.testing.assert_close(out.loss, looped_featuresplit(features, targets, classifier, pairs, class_weights, loss.context_mean))
    # A second batch moves the mean half way (1 / (batches + 1) > momentum), a later one by the momentum.
    other = features.flip(0)
    loss(other, targets, classifier)
    torch.testing.assert_close(loss.context_mean, (expected_mean + other[~exclusive, 3:].mean(0)).float() / 2)
    loss.context_batches.fill_(50)
    before = loss.context_mean.clone()
    loss(features, targets, classifier)
    torch.testing.assert_close(loss.context_mean, before + 0.1 * (expected_mean.float() - before))
    loss.eval()
    before = loss.context_mean.clone()
    loss(other, targets, classifier)
    assert torch.equal(loss.context_mean, before) and int(loss.context_batches) == 51


def test_featuresplit_gradient_rule_on_exclusive_images():
    """Exclusive rows send no gradient into the context half of the features, nor into the context
    half of the classifier; every other row trains as with the weighted BCE."""
    features, targets, classifier = problem(B=16, n=8, c=5)
    pairs = [[0, 1], [2, 3]]
    exclusive = exclusive_rows(targets, pairs)
    loss = FeatureSplitBCE(pairs, 8, torch.full((5,), 3.0))
    loss(features, targets, classifier)  # a running mean != 0
    features.requires_grad_(True)
    loss(features, targets, classifier).loss.backward()
    assert torch.count_nonzero(features.grad[exclusive, 4:]) == 0
    assert torch.count_nonzero(features.grad[exclusive, :4]) > 0 and torch.count_nonzero(features.grad[~exclusive, 4:]) > 0
    context_grad = classifier.weight.grad[:, 4:].clone()
    classifier.zero_grad()
    # The context half of W learns from the non-exclusive rows alone: their part of the same mean.
    kept = ~exclusive
    (loss(features[kept], targets[kept], classifier).loss * kept.sum() / 16).backward()
    torch.testing.assert_close(context_grad, classifier.weight.grad[:, 4:])


def test_featuresplit_weights_from_labels():
    labels = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]])
    # (0, 1): 4 co-occurring, 1 exclusive -> sqrt(4) = 2 < 3 -> 3; (2, 0): 0 co-occurring -> 3; no pair of b = 1.
    loss = FeatureSplitBCE.from_labels([[0, 1], [2, 0]], labels, feature_dim=4, min_weight=1.5)
    torch.testing.assert_close(loss.class_weights, torch.tensor([2.0, 1.0, 1.5]))
    assert FeatureSplitBCE.from_labels([[0, 1]], labels, feature_dim=4).class_weights[0] == 3.0


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"feature_dim": 1}, ValueError, "feature_dim must be an int >= 2"),
        ({"class_weights": torch.tensor([1.0, 0.0, 1.0])}, ValueError, "finite weights > 0"),
        ({"class_weights": torch.tensor([1.0])}, ValueError, "class_weights has 1 classes"),
        ({"momentum": 0.0}, ValueError, "momentum must be in"),
        ({"pairs": [[0, 0]]}, ValueError, "b != c"),
    ],
)
def test_featuresplit_bad_settings(kwargs, error, message):
    settings = {"pairs": [[0, 1]], "feature_dim": 4, "class_weights": torch.ones(3)} | kwargs
    with pytest.raises(error, match=message):
        FeatureSplitBCE(**settings)


def test_featuresplit_bad_inputs():
    features, targets, classifier = problem(n=6, c=5)
    with pytest.raises(ValueError, match="features have n = 6, but the loss was built for feature_dim = 4"):
        FeatureSplitBCE([[0, 1]], 4, torch.ones(5))(features, targets, classifier)
    with pytest.raises(ValueError, match="name class 5, but targets have c=5"):
        FeatureSplitBCE([[5, 1]], 6, torch.ones(6))(features, targets, classifier)
    with pytest.raises(TypeError, match="must be an nn.Linear"):
        FeatureSplitBCE([[0, 1]], 6, torch.ones(5))(features, targets, torch.nn.Sequential(classifier))
