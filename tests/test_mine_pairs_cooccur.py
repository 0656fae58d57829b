"""torch.ops.indeed.mine_pairs_cooccur on every backend (CPU C++, CUDA C++, Triton, reference):
validity, equality with the reference for several seeds, load caps and odd sizes, zero weights
giving the "any" pairs bit for bit, partner frequencies against
reference.cooccur_partner_probabilities (chi-square, with and without the cap), the loads against
their definition, the cap's bound on a hub batch that the uncapped draw breaks, opcheck,
torch.compile, no host sync (a CUDA graph, on a GPU) and bad input.
"""
import statistics

import pytest
import scipy.stats
import torch

from indeed_ext import reference
from indeed_ext.ops import _triton_ops
from indeed_ext.pairs import CooccurrenceStatistic, mine_pairs
from indeed_ext.triton._common import INTERPRETING

from conftest import requires_cuda
from test_mine_pairs import BACKENDS, op_of, random_targets, valid_partners

SCALE = 2**16
SLOW = INTERPRETING  # the Triton interpreter: fewer draws


def random_weights(c, seed, zeros=0.5):
    """(c, c) int64 in [0, 2^16] with a fraction of zeros (and the whole range's ends)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randint(0, SCALE + 1, (c, c), generator=g)
    weights[torch.rand(c, c, generator=g) < zeros] = 0
    weights.view(-1)[:2] = torch.tensor([SCALE, 1])[: weights.numel()]
    return weights


# c = 1, one word exactly, one bit into the second word, three words; B = 1, 2, 33.
SHAPES = [(1, 1, 1.0), (9, 1, 0.5), (2, 3, 1.0), (33, 64, 0.1), (33, 65, 0.1), (9, 130, 0.2), (40, 6, 0.4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B, c, p", SHAPES)
@pytest.mark.parametrize("load_cap", [0, 1, reference.DEFAULT_LOAD_CAP])
def test_valid_and_equal_to_reference(backend, B, c, p, load_cap):
    name, device = backend
    targets = random_targets(B, c, p, seed=B + c)
    weights = random_weights(c, seed=c)
    probabilities = reference.cooccur_partner_probabilities(targets, weights, load_cap)
    valid = valid_partners(targets)
    for seed in (0, -1, 2**62 + 7):
        seed_tensor = torch.tensor(seed)
        got = op_of(name).mine_pairs_cooccur(targets.to(device), seed_tensor.to(device), weights.to(device), load_cap)
        index_a, index_b, is_partial = (t.cpu() for t in got)
        assert index_a.dtype == index_b.dtype == torch.int64 and is_partial.dtype == torch.bool
        assert torch.equal(index_a, torch.arange(B))
        assert torch.equal(is_partial, valid.any(1))
        assert (probabilities[index_a, index_b] > 0).all(), "only partners of positive weight (or the any draw)"
        assert torch.equal(index_b[~is_partial], index_a[~is_partial])
        expected = reference.mine_pairs_cooccur(targets, seed_tensor, weights, load_cap)
        for got_part, want in zip((index_a, index_b, is_partial), expected):
            assert torch.equal(got_part, want)


def test_the_default_load_cap_is_the_schemas():
    schema = torch.ops.indeed.mine_pairs_cooccur.default._schema
    (load_cap,) = [a for a in schema.arguments if a.name == "load_cap"]
    assert load_cap.default_value == reference.DEFAULT_LOAD_CAP


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weights_give_the_any_pairs(backend):
    """No weight at all, and weights only on a label that no row carries (every W_a = 0 with weighted
    labels): mine_pairs' draw, capped or not."""
    name, device = backend
    for B, c, p in ((33, 65, 0.1), (40, 6, 0.4), (2, 3, 1.0)):
        targets = random_targets(B, c, p, seed=B)
        targets[:, 0] = 0
        unused_label = torch.zeros((c, c), dtype=torch.int64)
        unused_label[0, 1:] = SCALE
        for weights in (torch.zeros((c, c), dtype=torch.int64), unused_label):
            for seed, load_cap in ((3, reference.DEFAULT_LOAD_CAP), (-5, 0)):
                seed_tensor = torch.tensor(seed, device=device)
                cooccur = op_of(name).mine_pairs_cooccur(targets.to(device), seed_tensor, weights.to(device), load_cap)
                for got, want in zip(cooccur, op_of(name).mine_pairs(targets.to(device), seed_tensor)):
                    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtypes_of_targets(backend):
    name, device = backend
    targets = random_targets(20, 7, 0.3, seed=1)
    weights = random_weights(7, seed=2)
    expected = reference.mine_pairs_cooccur(targets, torch.tensor(9), weights)
    for dtype in (torch.float64, torch.float16, torch.bfloat16, torch.bool):
        got = op_of(name).mine_pairs_cooccur(targets.to(device, dtype), torch.tensor(9, device=device), weights.to(device))
        assert all(torch.equal(x.cpu(), y) for x, y in zip(got, expected)), dtype


def weighted_batch(heads):
    """`heads` rows with the set {0, 1}, whose valid partners are rows heads..heads+4, with
    weights w = S[0,1], S[1,0], S[0,2] + S[1,2], S[0,1] + S[0,2] + S[0,3], S[1,0] + S[1,3] =
    1000, 3000, 2500, 3250, 9000; then rows without a shared label."""
    head = torch.tensor([[1, 1, 0, 0]]).repeat(heads, 1)
    partners = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1], [0, 1, 0, 1]])
    others = torch.tensor([[0, 0, 1, 1]]).repeat(10, 1)
    weights = torch.tensor([[0, 1000, 2000, 250], [3000, 0, 500, 6000], [7, 0, 0, 9000], [0, 5, 0, 0]])
    return torch.cat((head, partners, others)).float(), weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("load_cap", [0, "half"])
def test_partner_frequencies_follow_the_weights(backend, load_cap):
    # Each head row draws with its own Philox counter, so one call gives `heads` draws. "half": a cap
    # at half the heaviest partner's load, which then keeps about half of its draws.
    name, device = backend
    heads, calls = (200, 4) if name == "triton" and SLOW else (400, 25)
    targets, weights = weighted_batch(heads)
    if load_cap == "half":
        load_cap = int(reference.partner_loads(targets, weights).max() / 2 ** reference.load_scale(heads + 15) / 2)
    expected = reference.cooccur_partner_probabilities(targets, weights, load_cap)[0, heads : heads + 5]
    assert sorted(expected.tolist()) == sorted(set(expected.tolist())), "distinct probabilities"
    seeds = torch.Generator().manual_seed(11)
    chosen = []
    for _ in range(calls):
        seed = torch.empty((), dtype=torch.int64).random_(generator=seeds)
        pairs = op_of(name).mine_pairs_cooccur(targets.to(device), seed.to(device), weights.to(device), load_cap)
        chosen.append(pairs[1][:heads].cpu())
    counts = torch.bincount(torch.cat(chosen), minlength=heads + 15)
    assert counts.sum() == counts[heads : heads + 5].sum(), "only valid partners"
    observed = counts[heads : heads + 5].double()
    p_value = scipy.stats.chisquare(observed.numpy(), (expected * observed.sum()).numpy()).pvalue
    assert p_value > 1e-4, (observed, expected * observed.sum())
    others = [reference.cooccur_partner_probabilities(targets, weights, 0)[0, heads : heads + 5], torch.full((5,), 0.2)]
    for other in others[1 if load_cap == 0 else 0 :]:  # the uncapped draw (for the cap) and the uniform one
        assert scipy.stats.chisquare(observed.numpy(), (other * observed.sum()).numpy()).pvalue < 1e-4, "the test tells them apart"


def test_loads_are_the_expected_weighted_draws():
    """partner_loads in fixed point against the definition: the sum over rows a of P(b | a) of the uncapped
    weighted draw (W_a > 0), up to the floors of 2^Q / W_a (a relative error below W_a / 2^Q)."""
    targets = random_targets(37, 6, 0.4, seed=8)
    weights = random_weights(6, seed=9, zeros=0.3)
    loads = reference.partner_loads(targets, weights).double() / 2 ** reference.load_scale(37)
    weighted = reference._pair_weights(reference._labels(targets), weights).double()
    totals = weighted.sum(1, keepdim=True)
    expected = torch.where(totals > 0, weighted / totals.clamp_min(1), 0).sum(0)
    assert expected.max() > 1.5, "some row carries more than one draw"
    torch.testing.assert_close(loads, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_cpu_threads_split_the_sets_and_give_the_reference_pairs(p):
    """The CPU kernel splits the label sets between threads and sums R (the loads' table) over one table
    per thread; it reads a small set's labels one by one and runs a large one's as a mask over c (p = 0.05:
    about 4 of 80 labels; 0.5: about 40). With two threads and more sets than one task takes, and a cap of
    1 under which loads decide many draws, the pairs are still the reference's."""
    targets, weights, seed = random_targets(700, 80, p, seed=3), random_weights(80, seed=5), torch.tensor(11)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = torch.ops.indeed.mine_pairs_cooccur(targets, seed, weights, 1)
    finally:
        torch.set_num_threads(threads)
    expected = reference.mine_pairs_cooccur(targets, seed, weights, 1)
    assert (got[1] != reference.mine_pairs_cooccur(targets, seed, weights, 0)[1]).sum() > 20, "the cap decides draws"
    for got_part, want in zip(got, expected):
        assert torch.equal(got_part, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("load_cap", [0, 1])
def test_partner_frequencies_per_row_on_random_labels(backend, load_cap):
    # Labels 3 and 4 weigh nothing: rows with only them draw uniformly, the others by weight (cap 1:
    # most rows' heaviest partners are then redrawn in part).
    name, device = backend
    targets = random_targets(24, 5, 0.4, seed=3)
    weights = random_weights(5, seed=4, zeros=0.2)
    weights[3:] = 0
    probabilities = reference.cooccur_partner_probabilities(targets, weights, load_cap)
    rows = valid_partners(targets).any(1).nonzero().squeeze(1)
    draws = 60 if name == "reference" or (name == "triton" and SLOW) else 300
    counts = torch.zeros(24, 24, dtype=torch.float64)
    seeds = torch.Generator().manual_seed(12)
    for _ in range(draws):
        seed = torch.empty((), dtype=torch.int64).random_(generator=seeds)
        index_b = op_of(name).mine_pairs_cooccur(targets.to(device), seed.to(device), weights.to(device), load_cap)[1].cpu()
        counts[rows, index_b[rows]] += 1
    support = probabilities > 0
    assert (counts[~support] == 0).all()
    statistic = sum(scipy.stats.chisquare(counts[r][support[r]].numpy(), draws * probabilities[r][support[r]].numpy()).statistic
                    for r in rows.tolist())
    dof = int(support[rows].sum() - rows.numel())
    assert scipy.stats.chi2.sf(statistic, dof) > 1e-4


def hub_label_sets(rows, seed, c=10, hub_rate=0.9):
    """Sets of 4 of c labels in which class 0 is a hub: with probability hub_rate the hub and 3 others,
    else 4 uniform labels (the composites' hub:0.9)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(rows, c)
    for row in range(rows):
        if torch.rand((), generator=g) < hub_rate:
            labels[row, 0] = 1
            labels[row, 1 + torch.randperm(c - 1, generator=g)[:3]] = 1
        else:
            labels[row, torch.randperm(c, generator=g)[:4]] = 1
    return labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cap_bounds_the_partners_of_a_hub_batch(backend):
    """With a hub nearly every pair shares it, and the uncapped draw sends most partners to the few rows
    without it (docs/EXPERIMENTS.md): the most-used partner of a batch of 128 serves about 25 rows. The
    cap bounds every row's expected weighted load by load_cap, and the most-used partner serves about 8."""
    name, device = backend
    statistic = CooccurrenceStatistic(10, "excess")  # the statistic that weighs such a hub (lift, the default, does not)
    statistic.seed_from_labels(hub_label_sets(4000, seed=1))
    weights = statistic.contrast_weights()
    targets = hub_label_sets(128, seed=2)
    cap = reference.DEFAULT_LOAD_CAP
    loads = {k: reference.cooccur_partner_probabilities(targets, weights, k).sum(0) for k in (0, cap)}
    assert loads[0].max() > 4 * cap and loads[cap].max() < cap + 1.5  # the uniform redraws add about 1
    seeds = torch.Generator().manual_seed(13)
    most_used = {0: [], cap: []}
    for _ in range(4 if name == "triton" and SLOW else 20):
        seed = torch.empty((), dtype=torch.int64).random_(generator=seeds)
        for k in most_used:
            index_b = op_of(name).mine_pairs_cooccur(targets.to(device), seed.to(device), weights.to(device), k)[1].cpu()
            assert valid_partners(targets)[torch.arange(128), index_b].all()
            most_used[k].append(torch.bincount(index_b, minlength=128).max().item())
    assert statistics.fmean(most_used[0]) > 15 and statistics.fmean(most_used[cap]) < 12, most_used


def test_public_api_backends_agree_and_the_generator_decides():
    targets = random_targets(50, 70, 0.05)
    weights = random_weights(70, seed=5)

    def pairs(backend, seed):
        return mine_pairs(targets, "cooccur", torch.Generator().manual_seed(seed), backend, contrast_weights=weights)

    results = [pairs(b, 1) for b in ("cpu", "reference") + (("triton",) if INTERPRETING else ())]
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(results[0], other))
    assert not torch.equal(pairs("cpu", 2)[1], results[0][1])


@pytest.mark.parametrize("namespace", ["indeed", "indeed_triton"])
def test_opcheck(namespace):
    if namespace == "indeed_triton" and not INTERPRETING:
        pytest.skip("the CPU-tensor opcheck of indeed_triton needs the interpreter")
    op = torch.ops.indeed.mine_pairs_cooccur if namespace == "indeed" else _triton_ops().mine_pairs_cooccur
    torch.library.opcheck(op.default, (random_targets(12, 70, 0.1), torch.tensor(4), random_weights(70, seed=1)))
    torch.library.opcheck(op.default, (random_targets(12, 3, 0.5).bool(), torch.tensor(-4), random_weights(3, seed=2), 0))
    torch.library.opcheck(op.default, (random_targets(9, 5, 0.5), torch.tensor(7), random_weights(5, seed=3), 1))


@torch._inductor.config.patch(fallback_random=True)  # the seed drawn as eager draws it
def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    targets = random_targets(20, 6, 0.3)
    weights = random_weights(6, seed=3)

    def pairs(targets, weights):
        return mine_pairs(targets, "cooccur", contrast_weights=weights)

    compiled = torch.compile(pairs, fullgraph=True)
    torch.manual_seed(2)
    eager = pairs(targets, weights)
    torch.manual_seed(2)
    assert all(torch.equal(x, y) for x, y in zip(compiled(targets, weights), eager))


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_no_host_sync_cuda_graph(backend):
    """Capture fails on a host sync; each replay draws a new seed and so new pairs."""
    targets = random_targets(64, 10, 0.3).cuda()
    weights = random_weights(10, seed=6).cuda()
    run = lambda: mine_pairs(targets, "cooccur", backend=backend, contrast_weights=weights)  # noqa: E731
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        index_a, index_b, is_partial = run()
    probabilities = reference.cooccur_partner_probabilities(targets.cpu(), weights.cpu())
    partners = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert (probabilities[index_a.cpu(), index_b.cpu()] > 0).all()
        partners.append(index_b.clone())
    assert not all(torch.equal(partners[0], p) for p in partners[1:])


@pytest.mark.parametrize(
    "weights, error, match",
    [
        (torch.zeros(3, 4, dtype=torch.int64), ValueError, r"contrast_weights must have shape \(c, c\) = \(3, 3\)"),
        (torch.zeros(3, 3, dtype=torch.int32), TypeError, "contrast_weights must be int64"),
        (torch.full((3, 3), SCALE + 1), ValueError, r"contrast_weights has values outside \[0, 2\^16\]"),
        (torch.full((3, 3), -1), ValueError, r"contrast_weights has values outside \[0, 2\^16\]"),
    ],
)
@pytest.mark.parametrize("namespace", ["indeed", "indeed_triton"])
def test_bad_input(namespace, weights, error, match):
    op = torch.ops.indeed if namespace == "indeed" else _triton_ops()
    with pytest.raises(error, match=match):
        op.mine_pairs_cooccur(torch.ones(4, 3), torch.tensor(0), weights)
    with pytest.raises(ValueError, match=r"load_cap must be .*>= 0"):
        op.mine_pairs_cooccur(torch.ones(4, 3), torch.tensor(0), torch.zeros(3, 3, dtype=torch.int64), -1)
    with pytest.raises(TypeError, match="seed must be int64"):
        op.mine_pairs_cooccur(torch.ones(4, 3), torch.tensor(0, dtype=torch.int32), torch.zeros(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("namespace", ["indeed", "indeed_triton"])
def test_masses_that_could_overflow_are_refused(namespace):
    # c (c - 1) B 2^16 >= 2^63 for c = 2^16, B = 2^15 + 1: stride-0 tensors, the shapes alone.
    c, B = 2**16, 2**15 + 1
    targets = torch.zeros((), dtype=torch.bool).expand(B, c)
    weights = torch.zeros((), dtype=torch.int64).expand(c, c)
    op = torch.ops.indeed if namespace == "indeed" else _triton_ops()
    with pytest.raises(ValueError, match=r"needs c \* \(c - 1\) \* B \* 2\^16 < 2\^63"):
        op.mine_pairs_cooccur(targets, torch.tensor(0), weights)


def test_bad_input_through_the_api():
    targets = torch.ones(4, 3)
    with pytest.raises(ValueError, match="strategy='cooccur' needs contrast_weights"):
        mine_pairs(targets, "cooccur")
    with pytest.raises(ValueError, match="contrast_weights are used by strategy='cooccur' only, not 'any'"):
        mine_pairs(targets, "any", contrast_weights=torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="outside"):  # the reference reads the values on the CPU
        mine_pairs(targets, "cooccur", backend="reference", contrast_weights=torch.full((3, 3), -2))
    with pytest.raises(ValueError, match="load_cap is a setting of strategy='cooccur', not 'any'"):
        mine_pairs(targets, "any", load_cap=2)
    with pytest.raises(ValueError, match="load_cap must be an int >= 0"):
        mine_pairs(targets, "cooccur", contrast_weights=torch.zeros(3, 3, dtype=torch.int64), load_cap=1.5)


@requires_cuda
def test_cuda_weights_on_another_device():
    with pytest.raises(ValueError, match="different devices"):
        torch.ops.indeed.mine_pairs_cooccur(torch.ones(4, 3, device="cuda"), torch.tensor(0, device="cuda"),
                                            torch.zeros(3, 3, dtype=torch.int64))
