"""Co-occurring composites (--cooccur): the SPEC syntax, the rates the generator draws against their
closed forms and an independent simulation, rho = 0 as today's uniform sets, the context."""
import random

import numpy as np
import pytest
import torch

from indeed_ext.recipes.data import CompositeMultiLabel, CooccurSpec, DataOptions, build_dataset
from test_data import marked_pool

SETS = 4000  # label sets per measured rate: binomial standard errors of at most 0.008


def label_sets(spec: str, n: int, count: int = SETS, num_classes: int = 10, seed: int = 11) -> list[np.ndarray]:
    """Label sets as the training set draws them (one generator per (seed, index)), without painting."""
    structure = CooccurSpec.parse(spec).resolve(num_classes)
    return [structure.sample(np.random.default_rng((seed, index)), n) for index in range(count)]


def multi_hot(sets, num_classes=10) -> np.ndarray:
    out = np.zeros((len(sets), num_classes))
    for row, labels in enumerate(sets):
        out[row, labels] = 1
    return out


@pytest.mark.parametrize(
    "text, canonical, structure",
    [
        ("pairs:0.9", "pairs:0.9", dict(structure="pairs", group_size=2)),
        (" pairs:1 ", "pairs:1", dict(structure="pairs", group_size=2)),
        ("groups=3:0.50", "groups=3:0.5", dict(structure="groups", group_size=3)),
        ("groups=0+1,2+3+4:0.25", "groups=0+1,2+3+4:0.25", dict(structure="groups", groups=((0, 1), (2, 3, 4)))),
        ("hub:0.9", "hub:0.9", dict(structure="hub", hub=0)),
        ("hub=0:0.9", "hub:0.9", dict(structure="hub", hub=0)),
        ("hub=7:0", "hub=7:0", dict(structure="hub", hub=7)),
        ("tail=1&hub=0@1+2&groups=4+5,6+7:0.9", "groups=4+5,6+7&hub=0@1+2&tail=1:0.9",
         dict(structure="mix", groups=((4, 5), (6, 7)), hub=0, ties=(1, 2), tail=1.0)),
        ("pairs&hub:0.5", "pairs&hub=0:0.5", dict(structure="mix", group_size=2, hub=0, ties=None, tail=0.0)),
        ("hub=3@1&tail=0.5:0", "hub=3@1&tail=0.5:0", dict(structure="mix", hub=3, ties=(1,), tail=0.5)),
        ("groups=3&tail=2:0.7", "groups=3&tail=2:0.7", dict(structure="mix", group_size=3, hub=None, tail=2.0)),
    ],
)
def test_spec_syntax_and_canonical_text(text, canonical, structure):
    spec = CooccurSpec.parse(text)
    assert str(spec) == canonical and CooccurSpec.parse(canonical) == spec
    assert all(getattr(spec, key) == value for key, value in structure.items())
    assert str(spec.with_rho(0)) == canonical.rpartition(":")[0] + ":0"


@pytest.mark.parametrize(
    "text, message",
    [
        ("pairs", "has no strength"),
        ("pairs:high", "'high' is not a number"),
        ("pairs:1.5", r"must be in \[0, 1\]"),
        ("pairs:nan", r"must be in \[0, 1\]"),
        ("ring:0.5", "unknown co-occurrence spec 'ring:0.5'"),
        ("groups:0.5", "unknown co-occurrence spec"),
        ("groups=1:0.5", "at least 2 classes"),
        ("groups=0+1,1+2:0.5", "must be disjoint"),
        ("groups=0+1,2:0.5", r"a size G or classes like 0\+1,2\+3\+4"),
        ("hub=x:0.5", "must be a class index"),
        ("hub=0@1:0.5", "a tied hub is a mixture component"),
        ("hub=0@0+1&tail=1:0.5", "distinct and not the hub"),
        ("hub=0@1+x&tail=1:0.5", "takes the tied classes"),
        ("pairs&groups=3:0.5", "at most one grouping"),
        ("hub&hub=2:0.5", "at most one hub"),
        ("tail=1:0.5", "unknown co-occurrence spec"),
        ("tail=1&tail=2:0.5", "at most one tail"),
        ("pairs&tail=-1:0.5", "tail exponent must be a finite number >= 0"),
        ("pairs&tail=x:0.5", "tail='x' is not a number"),
        ("groups=0+1&hub=1:0.5", "the hub 1 is also in a group"),
    ],
)
def test_bad_specs_raise_a_value_error_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        CooccurSpec.parse(text)


@pytest.mark.parametrize(
    "text, classes, message",
    [
        ("hub=10:0.5", 10, "hub 10 is not one of the 10 classes"),
        ("groups=0+12:0.5", 10, "class 12 is not one of the 10 classes"),
        ("groups=4:0.5", 3, "groups of 4 need as many classes"),
        ("pairs:0.5", 1, "at least 2 classes"),
    ],
)
def test_specs_that_do_not_fit_the_classes(text, classes, message):
    with pytest.raises(ValueError, match=message):
        CooccurSpec.parse(text).resolve(classes)


def test_context_of_each_structure():
    assert CooccurSpec.parse("pairs:0.5").resolve(5).context == ((1,), (0,), (3,), (2,), ())  # odd count: 4 alone
    assert CooccurSpec.parse("groups=3:0.5").resolve(5).context == ((1, 2), (0, 2), (0, 1), (4,), (3,))
    assert CooccurSpec.parse("groups=0+3,1+2+4:0.5").resolve(6).context == ((3,), (2, 4), (1, 4), (0,), (1, 2), ())
    mixture = CooccurSpec.parse("groups=1+2&hub=0@1+3&tail=1:0.9").resolve(5)
    assert mixture.context == ((), (2, 0), (1,), (0,), ())  # the mates, then the hub where it is tied
    assert CooccurSpec.parse("pairs&hub=4:0.9").resolve(5).context == ((1, 4), (0, 4), (3, 4), (2, 4), ())
    hub = CooccurSpec.parse("hub=2:0.9").resolve(4)
    assert hub.context == ((2,), (2,), (), (2,))
    assert hub.context_matrix().tolist() == [[False, False, True, False], [False, False, True, False], [False] * 4, [False, False, True, False]]


@pytest.mark.parametrize("spec", ["pairs:0", "groups=3:0", "groups=0+1,2+3+4:0", "hub=3:0", "groups=2+3&hub=0@1&tail=0:0"])
@pytest.mark.parametrize("n", [1, 3, 7])
def test_rho_zero_draws_todays_uniform_sets_exactly(spec, n):
    pool = marked_pool()
    uniform = CompositeMultiLabel(pool, n, size=60, seed=(4, 1))
    structured = CompositeMultiLabel(pool, n, size=60, seed=(4, 1), cooccurrence=CooccurSpec.parse(spec).resolve(10))
    for index in range(60):
        for a, b in zip(uniform.layout(index), structured.layout(index)):
            np.testing.assert_array_equal(a, b)  # labels, cells and objects
    assert torch.equal(uniform[59][0], structured[59][0]) and torch.equal(uniform.targets, structured.targets)


@pytest.mark.parametrize("spec", ["pairs:0.9", "hub:0.5", "groups=3:0.7"])
def test_items_depend_only_on_seed_and_index(spec):
    pool, structure = marked_pool(), CooccurSpec.parse(spec).resolve(10)
    a = CompositeMultiLabel(pool, 4, size=40, seed=(2, 1), cooccurrence=structure)
    b = CompositeMultiLabel(pool, 4, size=40, seed=(2, 1), cooccurrence=CooccurSpec.parse(spec).resolve(10))
    forward = [a[i] for i in range(40)]
    for i in reversed(range(40)):  # another instance, another order: the same items
        image, target = b[i]
        assert torch.equal(image, forward[i][0]) and torch.equal(target, forward[i][1])
        assert target.sum() == 4
    assert torch.equal(a.targets, torch.stack([t for _, t in forward]))


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9, 1.0])
def test_a_free_drawn_class_brings_its_partner_with_probability_rho(rho):
    """The first label is a free draw: the second is its partner when the partner joined (rho) or,
    failing that, when the next free draw hits it (1 of the 9 classes left)."""
    sets = label_sets(f"pairs:{rho}", 4)
    measured = np.mean([labels[1] == labels[0] ^ 1 for labels in sets])  # pairs (0, 1), (2, 3), ...: the mate is k xor 1
    expected = rho + (1 - rho) / 9
    assert measured == pytest.approx(expected, abs=4.5 * (expected * (1 - expected) / SETS) ** 0.5 + 1e-9)


def test_group_mates_join_each_with_probability_rho():
    rho, groups = 0.6, [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    sets = [labels for labels in label_sets(f"groups=3:{rho}", 5) if labels[0] != 9]  # class 9 has no group
    group_of = {k: group for group in groups for k in group}
    second_is_mate = np.mean([labels[1] in group_of[labels[0]] for labels in sets])
    expected = 1 - (1 - rho) ** 2 + (1 - rho) ** 2 * 2 / 9  # either mate joined, else the next free draw hit one
    assert second_is_mate == pytest.approx(expected, abs=4.5 * (expected * (1 - expected) / len(sets)) ** 0.5)


@pytest.mark.parametrize("rho, n", [(0.5, 2), (0.9, 4), (0.5, 7)])
def test_hub_rates_match_the_closed_forms(rho, n):
    c, Y = 10, multi_hot(label_sets(f"hub=4:{rho}", n))
    p_hub = rho + (1 - rho) * n / c
    assert Y[:, 4].mean() == pytest.approx(p_hub, abs=4.5 * (p_hub * (1 - p_hub) / SETS) ** 0.5)
    others = [k for k in range(c) if k != 4]
    p_hub_given_k = (n - 1) * (rho * c + (1 - rho) * n) / (rho * c * (n - 1) + (1 - rho) * n * (c - 1))
    with_k = Y[:, others].sum()
    measured = (Y[:, others] * Y[:, [4]]).sum() / with_k
    assert measured == pytest.approx(p_hub_given_k, abs=4.5 * (p_hub_given_k * (1 - p_hub_given_k) / with_k) ** 0.5 * 2)
    assert (Y.sum(1) == n).all()


def independent_partner_sets(rho, n, count, c=10, seed=0):
    """The partner process as the README states it, written again with Python's random module."""
    rng, sets = random.Random(seed), []
    for _ in range(count):
        labels = []
        while len(labels) < n:
            k = rng.choice([j for j in range(c) if j not in labels])
            labels.append(k)
            if len(labels) < n and (k ^ 1) not in labels and rng.random() < rho:
                labels.append(k ^ 1)
        sets.append(labels)
    return sets


@pytest.mark.parametrize("rho, n", [(0.5, 4), (0.9, 3), (0.9, 5)])
def test_partner_rates_match_an_independent_simulation(rho, n):
    """The distribution of the number of complete partner pairs per image (P(mate | k) = 2 E[pairs] / N),
    the generator's against an independent one's; odd N: the room runs out."""

    def complete_pairs(sets):
        return np.array([sum(int(k ^ 1 in set(labels)) for k in labels) // 2 for labels in sets])

    ours, theirs = complete_pairs(label_sets(f"pairs:{rho}", n)), complete_pairs(independent_partner_sets(rho, n, SETS))
    for pairs in range(n // 2 + 1):
        a, b = (ours == pairs).mean(), (theirs == pairs).mean()
        p = (a + b) / 2
        assert a == pytest.approx(b, abs=4.5 * (p * (1 - p) * 2 / SETS) ** 0.5 + 1e-9), pairs
    assert ours.mean() > 0.7 * rho * (n // 2)  # far above chance: rho drives it


def test_bundles_keep_the_single_object_test_sets():
    base = DataOptions(labels_per_image=3, train_size=20, test_size=20, seed=1)
    uniform = build_dataset("ml-digits", base)
    biased = build_dataset("ml-digits", DataOptions(**{**base.__dict__, "cooccur": "pairs:0.9"}))
    assert uniform.context is None and biased.context.sum() == 10
    for i in range(20):
        assert torch.equal(uniform.test[i][0], biased.test[i][0]) and torch.equal(uniform.test[i][1], biased.test[i][1])
    assert not torch.equal(uniform.train.targets, biased.train.targets)
    with pytest.raises(ValueError, match="composite sets only"):
        build_dataset("voc2007", DataOptions(root="/nowhere", cooccur="pairs:0.5"))
    with pytest.raises(ValueError, match="over 4 classes, the pool has 10"):
        CompositeMultiLabel(marked_pool(), 2, size=4, seed=0, cooccurrence=CooccurSpec.parse("pairs:0.5").resolve(4))


def test_a_tail_draws_free_classes_by_their_frequencies():
    """One label (N = 1) is one free draw: P(k) = (k + 1)^-T / sum_j (j + 1)^-T; at rho = 0 only the tail acts."""
    Y = multi_hot(label_sets("pairs&tail=1:0", 1))
    expected = 1 / np.arange(1, 11) / (1 / np.arange(1, 11)).sum()
    assert (np.abs(Y.mean(0) - expected) < 4.5 * (expected * (1 - expected) / SETS) ** 0.5).all(), (Y.mean(0), expected)


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_a_tied_hub_joins_its_tied_classes_only(rho):
    """N = 2, uniform free draws, hub 0 tied to 1: {0, 1} is drawn when 1 comes first and brings the hub
    (rho) or the second free draw hits 0, or when 0 comes first and the second free draw hits 1; {0, 2}
    only by two free draws. Groups 2+3: the mate joins with rho, as in pairs:RHO."""
    c, sets = 10, label_sets(f"groups=2+3&hub=0@1:{rho}", 2)
    pairs = {frozenset(map(int, labels)) for labels in sets}
    assert all(len(p) == 2 for p in pairs)
    rates = {frozenset(k): np.mean([frozenset(map(int, labels)) == frozenset(k) for labels in sets]) for k in ((0, 1), (0, 4), (2, 3))}
    expected = {frozenset((0, 1)): (rho + (1 - rho) / (c - 1)) / c + 1 / (c * (c - 1)),
                frozenset((0, 4)): 2 / (c * (c - 1)),
                frozenset((2, 3)): 2 * (rho + (1 - rho) / (c - 1)) / c}
    for key, p in expected.items():
        assert rates[key] == pytest.approx(p, abs=4.5 * (p * (1 - p) / SETS) ** 0.5), sorted(key)
    Y = multi_hot(label_sets(f"groups=5+6,7+8&hub=0@1+2+3&tail=0.3:{rho}", 4))
    given = lambda k: (Y[:, 0] * Y[:, k]).sum() / Y[:, k].sum()  # noqa: E731
    assert min(given(k) for k in (1, 2, 3)) > max(given(k) for k in (4, 9)) + 0.05, "tied far more than untied"
    assert (Y.sum(1) == 4).all()
