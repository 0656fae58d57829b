"""pairs.CooccurrenceStatistic and INDeeDLoss(strategy="cooccur"): the statistic on a hand-computed
case for both null rates, the z threshold, partner groups and a hub (excess sees the hub, lift,
the default, does not and draws the "any" pairs), unequal class frequencies, no weights without co-occurrence, state_dict round trips, the all-reduce path, the
loss's use of the statistic, the reweighting control blocks=(), and (on a GPU) the loss in a CUDA graph.
"""
import pytest
import torch
import torch.distributed as dist
from torch import nn

from indeed_ext import reference
from indeed_ext.losses import INDeeDLoss
from indeed_ext.pairs import CooccurrenceStatistic, mine_pairs

from conftest import requires_cuda

SCALE = 2**16
# Counts: n = (4, 3, 2, 2) of 5 samples; co-counts (0, 1): 3, (0, 2): 1, (0, 3): 1, (1, 3): 1, (2, 3): 1.
LABELS = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]]).float()


def weights_of(labels, statistic="excess", z=0.0, repeats=1):
    s = CooccurrenceStatistic(labels.shape[1], statistic, z)
    for _ in range(repeats):
        s.update(labels)
    return s.contrast_weights()


def test_counts():
    s = CooccurrenceStatistic(4)
    s.update(LABELS[:2])
    s.update(LABELS[2:].bool())
    expected = torch.tensor([[4, 3, 1, 1], [3, 3, 0, 1], [1, 0, 2, 1], [1, 1, 1, 2]], dtype=torch.float64)
    assert torch.equal(s.counts, expected) and s.samples.item() == 5
    seeded = CooccurrenceStatistic(4)
    seeded.seed_from_labels(LABELS, chunk=2)
    assert torch.equal(seeded.counts, expected) and seeded.samples.item() == 5
    seeded.reset()
    assert not seeded.counts.any() and seeded.samples.item() == 0
    assert not seeded.contrast_weights().any(), "nothing seen, no weights"


def test_excess_by_hand():
    # Row i: P(j | i) for j != i, their mean p0, and d = P(j | i) - p0 where positive:
    # 0: (3/4, 1/4, 1/4), p0 = 5/12, d(0, 1) = 1/3;  1: (1, 0, 1/3), p0 = 4/9, d(1, 0) = 5/9;
    # 2: (1/2, 0, 1/2), p0 = 1/3, d(2, 0) = d(2, 3) = 1/6;  3: (1/2, 1/2, 1/2), p0 = 1/2, none.
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 1], expected[1, 0] = round(SCALE / 3), round(SCALE * 5 / 9)
    expected[2, 0] = expected[2, 3] = round(SCALE / 6)
    assert torch.equal(weights_of(LABELS, "excess"), expected)


def test_lift_by_hand():
    # P(j) = (4/5, 3/5, 2/5, 2/5); d = P(j | i) - P(j) where positive:
    # d(0, 1) = 3/4 - 3/5, d(1, 0) = 1 - 4/5, d(2, 3) = 1/2 - 2/5, d(3, 2) = 1/2 - 2/5.
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 1], expected[1, 0] = round(SCALE * 0.15), round(SCALE * 0.2)
    expected[2, 3] = expected[3, 2] = round(SCALE * 0.1)
    assert torch.equal(weights_of(LABELS, "lift"), expected)


def test_z_threshold():
    # excess: d / sqrt(p0 (1 - p0) / n_i) is 1.35 for (0, 1), 1.94 for (1, 0), 0.5 for (2, 0) and (2, 3).
    full = weights_of(LABELS, z=0)
    for z, kept in ((1.0, [(0, 1), (1, 0)]), (1.5, [(1, 0)]), (3.0, [])):
        expected = torch.zeros_like(full)
        for i, j in kept:
            expected[i, j] = full[i, j]
        assert torch.equal(weights_of(LABELS, z=z), expected), z
    # The same rates from 100 times the samples: the standard errors shrink tenfold, all pass z = 3.
    assert torch.equal(weights_of(LABELS, z=3.0, repeats=100), full)


def structured_labels(structure, rho, rows=4000, classes=10, seed=0):
    """Two labels per row uniformly; "partners": each brings its partner (k xor 1) with probability
    rho; "hub": class 0 joins with probability rho; "none": nothing more."""
    g = torch.Generator().manual_seed(seed)
    first = 1 if structure == "hub" else 0
    labels = torch.zeros(rows, classes)
    picks = torch.rand(rows, classes - first, generator=g).argsort(1)[:, :2] + first
    labels.scatter_(1, picks, 1.0)
    joins = torch.rand(rows, 2, generator=g) < rho
    if structure == "partners":
        labels[torch.arange(rows)[:, None].expand(-1, 2)[joins], (picks ^ 1)[joins]] = 1.0
    elif structure == "hub":
        labels[joins[:, 0], 0] = 1.0
    return labels


@pytest.mark.parametrize("statistic", ["excess", "lift"])
def test_partner_groups(statistic):
    weights = weights_of(structured_labels("partners", 0.9), statistic, z=3.0)
    partner = torch.arange(10) ^ 1
    assert (weights[torch.arange(10), partner] > 0.3 * SCALE).all()
    others = torch.ones(10, 10, dtype=torch.bool)
    others[torch.arange(10), partner] = False
    assert not weights[others].any()


def test_excess_sees_the_hub_and_lift_does_not():
    labels = structured_labels("hub", 0.9)
    excess, lift = weights_of(labels, "excess", z=3.0), weights_of(labels, "lift", z=3.0)
    assert (excess[1:, 0] > 0.3 * SCALE).all(), "the hub separates: P(hub | i) far above i's other co-labels"
    assert excess[1:, 1:].sum() == 0 and excess[0].sum() == 0
    assert not lift.any(), "P(hub | i) = P(hub)"


def test_default_lift_ignores_unequal_class_frequencies_and_excess_does_not():
    """Independent labels, class k present with probability 0.1 + 0.05 k: no label is another's context.
    "excess" compares P(j | i) with i's mean co-label rate and so weighs every frequent j (docs/EXPERIMENTS.md,
    'The statistic'); the default, "lift", compares it with P(j) and weighs nothing."""
    rates = 0.1 + 0.05 * torch.arange(10)
    labels = (torch.rand(4000, 10, generator=torch.Generator().manual_seed(0)) < rates).float()
    default = CooccurrenceStatistic(10)
    default.update(labels)
    assert default.statistic == "lift" and not default.contrast_weights().any()
    excess = weights_of(labels, "excess", z=3.0)
    assert (excess[:, 9] > 0).sum() >= 8, "the most frequent class separates from nearly every other"


def test_default_cooccur_draws_the_any_pairs_with_a_hub_that_joins_every_class():
    """A hub at one rate with every class is a prior, not a context: the default statistic gives it no
    weight, so "cooccur" draws exactly the "any" pairs from the same generator state."""
    labels = structured_labels("hub", 0.9)
    statistic = CooccurrenceStatistic(10)
    for batch in labels.split(128):
        statistic.update(batch)
        assert not statistic.contrast_weights().any()
    batch = labels[:128]
    cooccur = mine_pairs(batch, "cooccur", torch.Generator().manual_seed(5), contrast_weights=statistic.contrast_weights())
    uniform = mine_pairs(batch, "any", torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(cooccur, uniform))
    excess = CooccurrenceStatistic(10, "excess", 3.0)
    excess.update(labels)
    weighted = mine_pairs(batch, "cooccur", torch.Generator().manual_seed(5), contrast_weights=excess.contrast_weights())
    assert not torch.equal(weighted[1], uniform[1]), "with excess's hub weights the draw differs"


@pytest.mark.parametrize("statistic", ["excess", "lift"])
def test_no_weights_without_cooccurrence(statistic):
    assert not weights_of(structured_labels("none", 0.0), statistic, z=3.0).any()


def test_state_dict_round_trip():
    s = CooccurrenceStatistic(4, "lift", 1.0)
    s.update(LABELS)
    copy = CooccurrenceStatistic(4, "lift", 1.0)
    copy.load_state_dict(s.state_dict())
    assert set(s.state_dict()) == {"counts", "samples", "_extra_state"}  # the extra state: the cached weights
    assert torch.equal(copy.counts, s.counts) and torch.equal(copy.samples, s.samples)
    assert torch.equal(copy.contrast_weights(), s.contrast_weights())


@pytest.mark.parametrize("sync", [True, False])
def test_update_all_reduces_when_distributed(monkeypatch, sync):
    """Two processes that saw the same batch: the all-reduced increment is twice the batch's."""
    reduced = []

    def all_reduce(tensor):
        reduced.append(tensor.shape)
        tensor.mul_(2)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    s = CooccurrenceStatistic(4)
    s.sync = sync
    s.update(LABELS)
    factor = 2 if sync else 1
    assert torch.equal(s.counts, factor * (LABELS.T @ LABELS).double()) and s.samples.item() == factor * 5
    assert reduced == ([torch.Size([17])] if sync else [])
    s.seed_from_labels(LABELS)  # every process seeds with the same labels: never reduced
    assert len(reduced) == (1 if sync else 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        CooccurrenceStatistic(0)
    with pytest.raises(ValueError, match="unknown co-occurrence statistic 'pmi'"):
        CooccurrenceStatistic(3, "pmi")
    with pytest.raises(ValueError, match="z must be a finite number >= 0"):
        CooccurrenceStatistic(3, z=-1.0)
    with pytest.raises(ValueError, match=r"targets must be \(N, num_classes\) = \(N, 3\), got \(2, 4\)"):
        CooccurrenceStatistic(3).update(torch.ones(2, 4))
    for refresh in (0, 1.5, True):
        with pytest.raises(ValueError, match="refresh must be an int >= 1"):
            CooccurrenceStatistic(3, refresh=refresh)


def test_soft_targets_count_above_one_half():
    """The update's labels are targets > 0.5, whatever the values (its rounding trick included)."""
    targets = torch.tensor([[0.5, 0.51, 1.5, -0.2, 2.5, 0.49, 1.0, 0.0]])
    s = CooccurrenceStatistic(8)
    s.update(targets)
    assert torch.equal(s.counts.diagonal(), (targets[0] > 0.5).double())


def test_weights_are_refreshed_every_refresh_updates():
    """weights() is contrast_weights() of at most refresh - 1 updates ago; seeding, resetting, loading and
    moving the statistic recompute them at the next call."""
    s = CooccurrenceStatistic(4, z=0.0, refresh=3)
    s.update(LABELS)
    first = s.weights()
    assert torch.equal(first, s.contrast_weights())
    for _ in range(2):
        s.update(LABELS[:2])
        assert s.weights() is first, "within the refresh period the weights are the cached ones"
    assert not torch.equal(s.contrast_weights(), first), "the statistic has moved"
    s.update(LABELS[:2])
    assert torch.equal(s.weights(), s.contrast_weights()), "refresh updates later they are recomputed"
    restored = CooccurrenceStatistic(4, z=0.0, refresh=3)
    restored.weights()  # cached: nothing seen
    restored.load_state_dict(s.state_dict())
    assert torch.equal(restored.weights(), s.contrast_weights())
    s = CooccurrenceStatistic(4, z=0.0, refresh=100)
    s.update(LABELS)
    cached = s.weights()
    s.update(LABELS[:2])
    moved = CooccurrenceStatistic(4, z=0.0, refresh=100)
    moved.load_state_dict(s.state_dict())
    moved.to(torch.float64)
    assert torch.equal(moved.weights(), cached), "a state_dict and a move keep the cache and its age"
    old_state = {k: v for k, v in s.state_dict().items() if k != "_extra_state"}  # before 2026-12-07
    moved.load_state_dict(old_state)
    assert torch.equal(moved.weights(), s.contrast_weights()), "no cache in the state: recomputed"
    for forget in (lambda: s.seed_from_labels(LABELS), s.reset):
        s.update(LABELS)
        s.weights()
        s.update(LABELS[:2])
        assert not torch.equal(s.weights(), s.contrast_weights()), "stale within the period"
        forget()
        assert torch.equal(s.weights(), s.contrast_weights())


# ----------------------------------------------------------------------------- the loss
def loss_inputs(B=24, n=10, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, n, generator=g).relu()
    targets = (torch.rand(B, c, generator=g) < 0.35).float()
    torch.manual_seed(seed)
    return features, targets, nn.Linear(n, c)


def test_loss_learns_the_statistic_in_training_mode_only():
    features, targets, classifier = loss_inputs()
    criterion = INDeeDLoss(strategy="cooccur", num_classes=6, backend="reference")
    criterion(features, targets, classifier)
    criterion.lam = 0.0  # the baseline's steps count too (a λ warm-up starts at 0)
    criterion(features, targets, classifier)
    assert torch.equal(criterion.cooccurrence.counts, 2 * (targets.T @ targets).double())
    criterion.eval()
    criterion(features, targets, classifier)
    assert criterion.cooccurrence.samples.item() == 2 * 24
    assert set(criterion.state_dict()) == {"cooccurrence.counts", "cooccurrence.samples", "cooccurrence._extra_state"}
    assert INDeeDLoss().state_dict() == {}


def heads_on_pairs(features, targets, classifier, index_a, index_b):
    return reference.six_head_bce(features, classifier.weight, classifier.bias, targets, index_a, index_b)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_loss_mines_with_the_updated_weights(backend):
    features, targets, classifier = loss_inputs()
    criterion = INDeeDLoss(strategy="cooccur", num_classes=6, backend=backend, cooccur_statistic="lift", cooccur_z=0.0)
    criterion.cooccurrence.seed_from_labels(structured_labels("partners", 0.9, classes=6))
    statistic = CooccurrenceStatistic(6, "lift", 0.0)
    statistic.load_state_dict(criterion.cooccurrence.state_dict())
    out = criterion(features, targets, classifier, generator=torch.Generator().manual_seed(3))
    statistic.update(targets)
    weights = statistic.contrast_weights()
    assert weights.any()
    index_a, index_b, is_partial = mine_pairs(targets, "cooccur", torch.Generator().manual_seed(3), backend, weights)
    heads = heads_on_pairs(features, targets, classifier, index_a, index_b)
    torch.testing.assert_close(out.loss, heads.sum(1).mean(), rtol=1e-5, atol=1e-5)
    assert out.num_partial == is_partial.sum()


def test_reweighting_control_keeps_the_original_heads_of_the_same_pairs():
    features, targets, classifier = loss_inputs()
    outs = []
    for blocks in (("identical", "disparate"), ()):
        criterion = INDeeDLoss(strategy="cooccur", num_classes=6, blocks=blocks, lam=0.5)
        criterion.cooccurrence.seed_from_labels(structured_labels("partners", 0.9, classes=6))
        outs.append(criterion(features, targets, classifier, generator=torch.Generator().manual_seed(1)))
    full, control = outs
    torch.testing.assert_close(control.loss, full.orig)
    assert control.orig == full.orig and control.ident == control.disp == 0
    assert control.num_partial == full.num_partial
    any_control = INDeeDLoss(blocks=())(features, targets, classifier, generator=torch.Generator().manual_seed(1))
    index_a, index_b, _ = mine_pairs(targets, "any", torch.Generator().manual_seed(1))
    heads = heads_on_pairs(features, targets, classifier, index_a, index_b)
    torch.testing.assert_close(any_control.loss, heads[:, :2].sum(1).mean(), rtol=1e-5, atol=1e-5)
    baseline = INDeeDLoss(lam=0.0, blocks=())(features, targets, classifier)
    assert baseline.num_partial == 0, "lam = 0 stays the baseline"


def test_loss_state_dict_round_trip_gives_the_same_pairs():
    features, targets, classifier = loss_inputs()
    trained = INDeeDLoss(strategy="cooccur", num_classes=6)
    trained.cooccurrence.seed_from_labels(structured_labels("partners", 0.9, classes=6))
    restored = INDeeDLoss(strategy="cooccur", num_classes=6)
    restored.load_state_dict(trained.state_dict())
    fresh = INDeeDLoss(strategy="cooccur", num_classes=6)
    pairs = [c(features, targets, classifier, generator=torch.Generator().manual_seed(2)) for c in (trained, restored, fresh)]
    assert pairs[0].loss == pairs[1].loss
    assert torch.equal(trained.cooccurrence.counts, restored.cooccurrence.counts)
    assert pairs[2].loss != pairs[0].loss, "the statistic changes the pairs"


def test_loss_bad_arguments():
    features, targets, classifier = loss_inputs()
    with pytest.raises(ValueError, match="strategy='cooccur' needs num_classes"):
        INDeeDLoss(strategy="cooccur")
    with pytest.raises(ValueError, match="cooccur_statistic, cooccur_z, load_cap and cooccur_refresh are settings of strategy='cooccur', not 'any'"):
        INDeeDLoss(cooccur_statistic="excess")
    with pytest.raises(ValueError, match="unknown co-occurrence statistic"):
        INDeeDLoss(strategy="cooccur", num_classes=6, cooccur_statistic="pmi")
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        INDeeDLoss(num_classes=0)
    for strategy in ("cooccur", "any"):
        with pytest.raises(ValueError, match="targets have c = 6 classes, but the loss has num_classes = 5"):
            INDeeDLoss(strategy=strategy, num_classes=5)(features, targets, nn.Linear(10, 6))


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_loss_replays_in_a_cuda_graph(backend):
    """Capture fails on a host sync; each replay adds the batch to the statistic and mines with it."""
    features, targets, classifier = (t.cuda() for t in loss_inputs())
    criterion = INDeeDLoss(strategy="cooccur", num_classes=6, backend=backend, cooccur_z=0.0)
    step = lambda: criterion(features, targets, classifier)  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert criterion.cooccurrence.samples.item() == 6 * 24  # warm-up and replays; the capture runs nothing
    assert torch.isfinite(out.loss) and out.num_partial > 0
