"""mine_pairs: validity, fallback, uniformity, determinism and the "matching" strategy,
checked against a brute-force B×B partner matrix. The "any" op itself, on every backend,
is tested in test_mine_pairs.py; the proposal sampler here is the one "matching" uses."""
import pytest
import torch

from indeed_ext import pairs
from indeed_ext.pairs import mine_pairs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def valid_partners(targets):
    """(B, B) bool: b is a valid partner of a (shares a label, different label set)."""
    y = targets > 0.5
    overlap = (y[:, None, :] & y[None, :, :]).any(-1)
    same = (y[:, None, :] == y[None, :, :]).all(-1)
    return overlap & ~same


def random_targets(B, c, p, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, c, generator=g) < p).float().to(device)


def n_of_k(B, N, k=10, seed=0):
    """N distinct labels out of k per sample, like the composite ML-MNIST images."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(B, k, generator=g).argsort(1)
    return torch.zeros(B, k).scatter_(1, order[:, :N], 1.0)


def generator(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


LABEL_STATISTICS = {
    "sparse c=80": lambda: random_targets(300, 80, 0.05),
    # c > 64: labels in both packed words, so "lowest shared label" crosses a word boundary.
    "c=130": lambda: random_targets(300, 130, 0.03, seed=1),
    "c=64": lambda: random_targets(200, 64, 0.05, seed=2),
    "N=2 of 10": lambda: n_of_k(256, 2),
    "N=7 of 10": lambda: n_of_k(256, 7),
    "few label sets": lambda: n_of_k(64, 1, k=3).repeat(4, 1),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(LABEL_STATISTICS))
def test_any_pairs_are_valid_or_self(case, device):
    targets = LABEL_STATISTICS[case]().to(device)
    valid = valid_partners(targets)
    index_a, index_b, is_partial = mine_pairs(targets, generator=generator(0, device))
    B = targets.shape[0]
    assert index_a.dtype == index_b.dtype == torch.int64 and is_partial.dtype == torch.bool
    assert index_a.device == index_b.device == is_partial.device == targets.device
    assert torch.equal(index_a, torch.arange(B, device=device))
    assert torch.equal(is_partial, valid.any(1)), "a real partner exactly where one exists"
    assert valid[index_a[is_partial], index_b[is_partial]].all()
    assert torch.equal(index_b[~is_partial], index_a[~is_partial])


def test_self_pair_when_no_valid_partner():
    targets = torch.tensor(
        [
            [1, 0, 0, 0],  # only partner: row 1 ({0, 1})
            [1, 1, 0, 0],
            [0, 0, 0, 0],  # no labels
            [0, 0, 1, 0],  # label 2 alone and nobody else has it
            [0, 0, 0, 1],  # two identical sets and nothing else with label 3
            [0, 0, 0, 1],
        ],
        dtype=torch.float32,
    )
    index_a, index_b, is_partial = mine_pairs(targets, generator=generator(0))
    assert index_b.tolist() == [1, 0, 2, 3, 4, 5]
    assert is_partial.tolist() == [True, True, False, False, False, False]


def draw_partners(targets, g):
    """The proposal sampler of "matching", over the whole batch."""
    batch = pairs._LabelSets.of_batch(targets)
    return pairs._draw_partners(batch, batch, pairs._Candidates(batch), g)


def test_exact_fallback_path():
    # 300 rows {0}: their only valid partner is row 300 ({0, 1}); nearly every proposal
    # hits an identical set, so these rows go through the sampler's exact fallback.
    targets = torch.zeros(302, 2)
    targets[:301, 0] = 1
    targets[300:, 1] = 1
    for index_b in (draw_partners(targets, generator(0)), mine_pairs(targets, generator=generator(0))[1]):
        assert (index_b[:300] == 300).all()
        assert index_b[301] == 300  # {1}: row 300 is its only valid partner too
        assert index_b[300] != 300


def uniformity_batch():
    """Rows 0..39 share the set {0, 1}; their five valid partners (rows 40..44) share one
    or two labels with them and carry labels of different frequencies, so a sampler
    biased by shared-label count or label frequency would show."""
    head = torch.tensor([[1, 1, 0, 0]]).repeat(40, 1)
    partners = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1], [0, 1, 0, 1]])
    others = torch.tensor([[0, 0, 1, 1]]).repeat(10, 1)  # no shared label with the head
    return torch.cat((head, partners, others)).float()


def assert_uniform_over_partners(chosen):
    """chosen: partners drawn for head rows; uniform over rows 40..44 within 5 sd."""
    counts = torch.bincount(chosen, minlength=55).double()
    assert counts.sum() == counts[40:45].sum(), "only valid partners"
    n = counts.sum()
    sd = (n * 0.2 * 0.8) ** 0.5
    assert n > 1000 and ((counts[40:45] - n / 5).abs() < 5 * sd).all(), counts[40:45]


@pytest.mark.parametrize("draws", [1, 4])
def test_sampler_partner_is_uniform_among_valid(draws, monkeypatch):
    # draws=1 sends many rows to the exact fallback, the default few.
    monkeypatch.setattr(pairs, "_DRAWS", draws)
    targets = uniformity_batch()
    g = generator(1)
    chosen = torch.cat([draw_partners(targets, g)[:40] for _ in range(100)])
    assert_uniform_over_partners(chosen)


@pytest.mark.parametrize("kind", ["uniform", "slot"])
def test_each_proposal_kind_is_uniform_when_accepted(kind, monkeypatch):
    # The end-to-end test above mostly sees whichever kind accepts first; check each kind
    # on its own, on every accepted proposal.
    monkeypatch.setattr(pairs, "_DRAWS", 64)
    batch = pairs._LabelSets.of_batch(uniformity_batch())
    columns = slice(0, 64) if kind == "uniform" else slice(64, 128)
    g = generator(2)
    chosen = []
    for _ in range(15):
        proposals, slot_labels = pairs._propose(batch, pairs._Candidates(batch), g)
        accepted = pairs._accept(batch, batch, proposals, slot_labels)
        chosen.append(proposals[:40, columns][accepted[:40, columns]])
    assert_uniform_over_partners(torch.cat(chosen))


def strategy_args(strategy, c):
    """Random contrast weights for "cooccur" (its own pairs, not "any"'s), nothing for the others."""
    if strategy != "cooccur":
        return {}
    return {"contrast_weights": torch.randint(0, 2**16 + 1, (c, c), generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("strategy", pairs.STRATEGIES)
def test_seeded_generator_is_deterministic(strategy):
    targets = random_targets(500, 20, 0.15)
    first = mine_pairs(targets, strategy, generator=generator(7), **strategy_args(strategy, 20))
    second = mine_pairs(targets, strategy, generator=generator(7), **strategy_args(strategy, 20))
    other = mine_pairs(targets, strategy, generator=generator(8), **strategy_args(strategy, 20))
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert not torch.equal(first[1], other[1])


def test_global_rng_without_generator():
    targets = random_targets(200, 10, 0.3)
    torch.manual_seed(3)
    first = mine_pairs(targets)[1]
    torch.manual_seed(3)
    assert torch.equal(first, mine_pairs(targets)[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(LABEL_STATISTICS))
def test_matching_is_a_maximal_disjoint_matching(case, device):
    targets = LABEL_STATISTICS[case]().to(device)
    B = targets.shape[0]
    valid = valid_partners(targets)
    index_a, index_b, is_partial = mine_pairs(targets, "matching", generator=generator(0, device))
    # Each sample in exactly one pair: as a of a real pair, b of a real pair, or a self-pair.
    used = torch.cat((index_a, index_b[is_partial]))
    assert torch.equal(used.sort().values, torch.arange(B, device=device))
    assert valid[index_a[is_partial], index_b[is_partial]].all()
    assert torch.equal(index_a[~is_partial], index_b[~is_partial])
    assert torch.equal(index_a, index_a.sort().values), "sorted by index_a"
    left = index_a[~is_partial]
    assert not valid[left][:, left].any(), "no valid pair left among the self-paired samples"
    if valid.any():
        assert is_partial.any()


def test_soft_labels_threshold_at_half():
    soft = torch.tensor([[0.9, 0.5, 0.0], [0.6, 0.51, 0.0], [0.2, 0.7, 0.0]])
    # Binary: {0}, {0, 1}, {1}. Rows 0 and 2 can only pair with row 1.
    index_a, index_b, is_partial = mine_pairs(soft, generator=generator(0))
    assert index_b[0] == 1 and index_b[2] == 1 and index_b[1] in (0, 2)
    assert torch.equal(mine_pairs(soft > 0.5, generator=generator(0))[1], index_b)


@pytest.mark.parametrize("strategy", pairs.STRATEGIES)
def test_tiny_batches(strategy):
    for B in (0, 1):
        index_a, index_b, is_partial = mine_pairs(torch.ones(B, 3), strategy, generator=generator(0), **strategy_args(strategy, 3))
        assert index_a.tolist() == index_b.tolist() == list(range(B))
        assert not is_partial.any()
    two = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    index_a, index_b, is_partial = mine_pairs(two, strategy, generator=generator(0), **strategy_args(strategy, 2))
    assert is_partial.tolist() == ([True] if strategy == "matching" else [True, True])
    assert index_b.tolist() == ([1] if strategy == "matching" else [1, 0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown pair strategy 'best'"):
        mine_pairs(torch.ones(4, 3), "best")
    with pytest.raises(ValueError, match=r"2-D \(B, c\) tensor, got \(4,\)"):
        mine_pairs(torch.ones(4))
    with pytest.raises(ValueError, match="2-D"):
        mine_pairs([[1.0, 0.0]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
def test_generator_on_another_device():
    with pytest.raises(ValueError, match="generator is on cpu but targets are on cuda"):
        mine_pairs(torch.ones(4, 3, device="cuda"), generator=torch.Generator())
