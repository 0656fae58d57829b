"""torch.ops.indeed.mine_pairs on every backend (CPU C++, CUDA C++, Triton, reference):
validity, self-pair fallback, static shapes, determinism, uniformity (chi-square), odd
sizes, opcheck, torch.compile and bad input.

Every backend computes the same partner for the same seed (the rank-th valid partner,
rank from Philox), so each is also compared with reference.mine_pairs exactly. Triton runs
through the interpreter on CPU tensors without a GPU; CUDA needs one.
"""
import pytest
import scipy.stats
import torch

import indeed_ext  # noqa: F401  (registers the ops)
from indeed_ext import reference
from indeed_ext.ops import _triton_ops
from indeed_ext.pairs import mine_pairs
from indeed_ext.triton._common import INTERPRETING

from conftest import requires_cuda

TRITON_DEVICE = "cpu" if INTERPRETING else "cuda"
BACKENDS = [
    pytest.param(("cpu", "cpu"), id="cpu"),
    pytest.param(("reference", "cpu"), id="reference"),
    pytest.param(
        ("triton", TRITON_DEVICE),
        id="triton",
        marks=pytest.mark.skipif(TRITON_DEVICE == "cuda" and not torch.cuda.is_available(), reason="no GPU, no interpreter"),
    ),
    pytest.param(("cuda", "cuda"), id="cuda", marks=requires_cuda),
]


def op_of(backend):
    return {"cpu": torch.ops.indeed, "cuda": torch.ops.indeed, "reference": reference}.get(backend) or _triton_ops()


def valid_partners(targets):
    y = targets > 0.5
    overlap = (y[:, None, :] & y[None, :, :]).any(-1)
    same = (y[:, None, :] == y[None, :, :]).all(-1)
    return overlap & ~same


def random_targets(B, c, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, c, generator=g) < p).float()


# c = 1, one word exactly, one bit into the second word, three words; B = 1.
SHAPES = [(1, 1, 1.0), (9, 1, 0.5), (40, 64, 0.05), (33, 65, 0.05), (70, 130, 0.03), (1, 5, 0.5), (2, 3, 1.0)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B, c, p", SHAPES)
def test_valid_and_equal_to_reference(backend, B, c, p):
    name, device = backend
    targets = random_targets(B, c, p, seed=B + c).to(device)
    for seed in (0, -1, 2**62 + 7):
        seed_tensor = torch.tensor(seed, device=device)
        index_a, index_b, is_partial = op_of(name).mine_pairs(targets, seed_tensor)
        assert index_a.shape == index_b.shape == is_partial.shape == (B,)
        assert index_a.dtype == index_b.dtype == torch.int64 and is_partial.dtype == torch.bool
        valid = valid_partners(targets)
        assert torch.equal(index_a, torch.arange(B, device=device))
        assert torch.equal(is_partial, valid.any(1))
        assert valid[index_a[is_partial], index_b[is_partial]].all()
        assert torch.equal(index_b[~is_partial], index_a[~is_partial])
        expected = reference.mine_pairs(targets.cpu(), seed_tensor.cpu())
        for got, want in zip((index_a, index_b, is_partial), expected):
            assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_pair_when_no_valid_partner(backend):
    name, device = backend
    targets = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]], dtype=torch.float32
    )
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool):
        _, index_b, is_partial = op_of(name).mine_pairs(targets.to(device, dtype), torch.tensor(3, device=device))
        assert index_b.tolist() == [1, 0, 2, 3, 4, 5]
        assert is_partial.tolist() == [True, True, False, False, False, False]


def uniformity_batch(heads):
    """`heads` rows with the set {0, 1}, whose valid partners are rows heads..heads+4: they
    share one or two labels and carry labels of different frequencies, so a draw biased by
    either would show; then rows without a shared label."""
    head = torch.tensor([[1, 1, 0, 0]]).repeat(heads, 1)
    partners = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [1, 0, 1, 1], [0, 1, 0, 1]])
    others = torch.tensor([[0, 0, 1, 1]]).repeat(10, 1)
    return torch.cat((head, partners, others)).float()


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_over_valid_partners(backend):
    # Each head row draws with its own Philox counter, so one call gives `heads` draws.
    name, device = backend
    heads, calls = (200, 8) if name == "triton" and INTERPRETING else (400, 25)
    targets = uniformity_batch(heads).to(device)
    seeds = torch.Generator().manual_seed(11)
    chosen = []
    for _ in range(calls):
        seed = torch.empty((), dtype=torch.int64).random_(generator=seeds).to(device)
        chosen.append(op_of(name).mine_pairs(targets, seed)[1][:heads].cpu())
    counts = torch.bincount(torch.cat(chosen), minlength=heads + 15)
    assert counts.sum() == counts[heads : heads + 5].sum(), "only valid partners"
    p_value = scipy.stats.chisquare(counts[heads : heads + 5].numpy()).pvalue
    assert p_value > 1e-4, counts[heads : heads + 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_per_row_on_random_labels(backend):
    # Rows with different numbers of valid partners: one chi-square over every row's counts.
    name, device = backend
    targets = random_targets(24, 5, 0.4, seed=3).to(device)
    valid = valid_partners(targets).cpu()
    rows = valid.any(1).nonzero().squeeze(1)
    draws = 60 if name == "triton" and INTERPRETING else 300
    counts = torch.zeros(24, 24, dtype=torch.int64)
    seeds = torch.Generator().manual_seed(12)
    for _ in range(draws):
        seed = torch.empty((), dtype=torch.int64).random_(generator=seeds).to(device)
        index_b = op_of(name).mine_pairs(targets, seed)[1].cpu()
        counts[rows, index_b[rows]] += 1
    assert (counts[~valid] == 0).all()
    statistic = sum(scipy.stats.chisquare(counts[r][valid[r]].numpy()).statistic for r in rows.tolist())
    dof = int(valid[rows].sum() - rows.numel())
    assert scipy.stats.chi2.sf(statistic, dof) > 1e-4


@pytest.mark.parametrize("backend", ["cpu", "reference"] + (["cuda"] if torch.cuda.is_available() else []))
def test_public_api_is_deterministic_for_a_generator_state(backend):
    device = "cuda" if backend == "cuda" else "cpu"
    targets = random_targets(200, 20, 0.15).to(device)
    g = torch.Generator(device=device).manual_seed(7)
    state = g.get_state()
    first = mine_pairs(targets, generator=g, backend=backend)
    second = mine_pairs(targets, generator=g, backend=backend)
    g.set_state(state)
    again = mine_pairs(targets, generator=g, backend=backend)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[1], second[1]), "the generator advances"


def test_public_api_backends_agree():
    targets = random_targets(50, 70, 0.05)
    results = [mine_pairs(targets, generator=torch.Generator().manual_seed(1), backend=b) for b in ("cpu", "reference")]
    if INTERPRETING:
        results.append(mine_pairs(targets, generator=torch.Generator().manual_seed(1), backend="triton"))
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(results[0], other))


def test_non_contiguous_targets():
    targets = random_targets(30, 12, 0.2).T.contiguous().T
    seed = torch.tensor(5)
    expected = reference.mine_pairs(targets.contiguous(), seed)
    assert all(torch.equal(x, y) for x, y in zip(torch.ops.indeed.mine_pairs(targets, seed), expected))


@pytest.mark.parametrize("namespace", ["indeed", "indeed_triton"])
def test_opcheck(namespace):
    if namespace == "indeed_triton" and not INTERPRETING:
        pytest.skip("the CPU-tensor opcheck of indeed_triton needs the interpreter")
    op = torch.ops.indeed.mine_pairs if namespace == "indeed" else _triton_ops().mine_pairs
    torch.library.opcheck(op.default, (random_targets(12, 70, 0.1), torch.tensor(4)))
    torch.library.opcheck(op.default, (random_targets(12, 3, 0.5).bool(), torch.tensor(-4)))


@torch._inductor.config.patch(fallback_random=True)  # the seed drawn as eager draws it
def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    targets = random_targets(20, 6, 0.3)

    def pairs(targets):
        return mine_pairs(targets)

    compiled = torch.compile(pairs, fullgraph=True)
    torch.manual_seed(2)
    eager = pairs(targets)
    torch.manual_seed(2)
    assert all(torch.equal(x, y) for x, y in zip(compiled(targets), eager))


@pytest.mark.parametrize(
    "targets, seed, error, match",
    [
        (torch.ones(4), torch.tensor(0), ValueError, r"targets must be 2-D \(B, c\)"),
        (torch.ones(4, 3, dtype=torch.int64), torch.tensor(0), TypeError, "targets must be bool or float"),
        (torch.ones(4, 3), torch.tensor(0, dtype=torch.int32), TypeError, "seed must be int64"),
        (torch.ones(4, 3), torch.tensor([0, 1]), ValueError, "seed must have one element"),
    ],
)
@pytest.mark.parametrize("namespace", ["indeed", "indeed_triton"])
def test_bad_input(namespace, targets, seed, error, match):
    op = torch.ops.indeed if namespace == "indeed" else _triton_ops()
    with pytest.raises(error, match=match):
        op.mine_pairs(targets, seed)


def test_bad_input_through_the_api():
    with pytest.raises(TypeError, match="targets must be bool or float"):
        mine_pairs(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        mine_pairs(torch.ones(4, 3), backend="gpu")


@requires_cuda
def test_cuda_seed_on_another_device():
    with pytest.raises(ValueError, match="different devices"):
        torch.ops.indeed.mine_pairs(torch.ones(4, 3, device="cuda"), torch.tensor(0))
