"""INDeeDLoss against a composition written with reference.py on the same mined pairs:
the full loss, the ablations, the self-pair options, the baseline, gradients and errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import indeed_ext  # noqa: F401  (registers the ops)
from indeed_ext import reference
from indeed_ext.losses import INDeeDLoss, LossOutput
from indeed_ext.pairs import mine_pairs

from conftest import assert_close, make_features

HAS_CPU_KERNEL = torch._C._dispatch_has_kernel_for_dispatch_key("indeed::_six_head_bce_forward", "CPU")
BACKENDS = [
    "reference",
    pytest.param(
        "auto",
        marks=pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no CPU kernel registered for indeed::_six_head_bce_forward"),
    ),
]


def make_batch(B=24, n=16, c=6, dtype=torch.float64, seed=0, lonely=True):
    """Post-ReLU features, 0/1 targets, a Linear classifier; with lonely=True the last two
    rows have label sets that no other row shares, so they become self-pairs."""
    g = torch.Generator().manual_seed(seed)
    features = make_features(B, n, dtype, seed=seed).requires_grad_()
    targets = (torch.rand(B, c, generator=g) < 0.35).to(dtype)
    targets[torch.arange(B), torch.arange(B) % (c - 1)] = 1  # at least one label each
    if lonely:
        targets[:, -1] = 0
        targets[-2:] = 0
        targets[-2:, -1] = 1  # two identical sets {c-1}: no valid partner for either
    classifier = nn.Linear(n, c).to(dtype)
    return features, targets, classifier


def expected_loss(features, targets, classifier, lam, blocks, self_pair_disparate, seed, norm="minmax", strategy="any"):
    """The loss composed by hand from reference.six_head_bce on the pairs mine_pairs gives for this seed."""
    index_a, index_b, is_partial = mine_pairs(targets, strategy, torch.Generator().manual_seed(seed))
    heads = reference.six_head_bce(features, classifier.weight, classifier.bias, targets, index_a, index_b, norm)
    P = heads.shape[0]
    orig = heads[:, 0].sum() + heads[:, 1].sum()
    ident = heads[:, 2].sum() + heads[:, 3].sum() if "identical" in blocks else heads.new_zeros(())
    disp_rows = heads[:, 4] + heads[:, 5]
    if self_pair_disparate == "skip":
        disp_rows = disp_rows[is_partial]
    disp = disp_rows.sum() if "disparate" in blocks else heads.new_zeros(())
    return (orig + lam * (ident + disp)) / P, orig / P, ident / P, disp / P, is_partial.sum()


CONFIGS = [
    dict(lam=1.0, blocks=("identical", "disparate"), self_pair_disparate="zero_target"),
    dict(lam=0.5, blocks=("identical", "disparate"), self_pair_disparate="skip"),
    dict(lam=1.0, blocks=("identical",), self_pair_disparate="zero_target"),
    dict(lam=1.0, blocks=("disparate",), self_pair_disparate="zero_target"),
    dict(lam=2.0, blocks=("disparate",), self_pair_disparate="skip"),
]


def config_id(config):
    return f"{config['lam']}-{'+'.join(config['blocks'])}-{config['self_pair_disparate']}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("norm", ["minmax", "l2"])
def test_loss_matches_reference_composition(config, norm, backend):
    features, targets, classifier = make_batch()
    out = INDeeDLoss(norm=norm, backend=backend, **config)(features, targets, classifier, torch.Generator().manual_seed(5))
    assert isinstance(out, LossOutput)
    f_ref = features.detach().clone().requires_grad_()
    ref_classifier = nn.Linear(16, 6).double()
    ref_classifier.load_state_dict(classifier.state_dict())
    lam, blocks, self_pair = config["lam"], config["blocks"], config["self_pair_disparate"]
    expected = expected_loss(f_ref, targets, ref_classifier, lam, blocks, self_pair, 5, norm)
    dtype = torch.float64
    for name, got, want in zip(LossOutput._fields, out, expected):
        assert_close(got, want, dtype, what=name)
    assert out.num_partial.dtype == torch.int64 and int(out.num_partial) == 22
    assert not any(t.requires_grad for t in out[1:])
    assert_close(out.loss, out.orig + config["lam"] * (out.ident + out.disp), dtype, what="loss = orig + lam (ident + disp)")

    out.loss.backward()
    expected[0].backward()
    assert_close(features.grad, f_ref.grad, dtype, backward=True, what="grad features")
    assert_close(classifier.weight.grad, ref_classifier.weight.grad, dtype, backward=True, what="grad weight")
    assert_close(classifier.bias.grad, ref_classifier.bias.grad, dtype, backward=True, what="grad bias")


def test_ablations_drop_the_other_block():
    features, targets, classifier = make_batch()
    runs = {
        blocks: INDeeDLoss(blocks=blocks, backend="reference")(features, targets, classifier, torch.Generator().manual_seed(1))
        for blocks in (("identical", "disparate"), ("identical",), ("disparate",))
    }
    both, ident_only, disp_only = runs.values()
    assert both.ident > 0 and both.disp > 0
    assert ident_only.disp == 0 and disp_only.ident == 0
    torch.testing.assert_close(ident_only.ident, both.ident)
    torch.testing.assert_close(disp_only.disp, both.disp)
    torch.testing.assert_close(ident_only.loss, both.orig + both.ident)
    torch.testing.assert_close(disp_only.loss, both.orig + both.disp)


def test_self_pair_options():
    features, targets, classifier = make_batch()
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    kept = INDeeDLoss(self_pair_disparate="zero_target", backend="reference")(features, targets, classifier, g())
    skipped = INDeeDLoss(self_pair_disparate="skip", backend="reference")(features, targets, classifier, g())
    index_a, index_b, is_partial = mine_pairs(targets, "any", g())
    assert is_partial.tolist() == [True] * 22 + [False] * 2
    heads = reference.six_head_bce(features, classifier.weight, classifier.bias, targets, index_a, index_b)
    self_disp = (heads[~is_partial, 4] + heads[~is_partial, 5]).sum() / 24
    assert self_disp > 0, "the self-pairs' disparate heads score against all-zero targets"
    torch.testing.assert_close(kept.disp - skipped.disp, self_disp)
    # Only the disparate terms of the self-pairs differ.
    torch.testing.assert_close(kept.orig, skipped.orig)
    torch.testing.assert_close(kept.ident, skipped.ident)


def test_self_pair_skip_has_no_gradient_from_self_disparate_heads():
    # One self-pair in a batch of one: with "skip" and only the disparate block, the
    # loss is just orig_a + orig_b, the plain BCE of the sample, counted twice.
    features, targets, classifier = make_batch(B=1, lonely=False)
    targets = torch.ones_like(targets)
    out = INDeeDLoss(blocks=("disparate",), self_pair_disparate="skip", backend="reference")(features, targets, classifier)
    plain = F.binary_cross_entropy_with_logits(classifier(features), targets, reduction="sum")
    torch.testing.assert_close(out.loss, 2 * plain)
    assert int(out.num_partial) == 0 and out.disp == 0


def test_matching_strategy_loss():
    features, targets, classifier = make_batch(B=30)
    loss = INDeeDLoss(strategy="matching", backend="reference")
    out = loss(features, targets, classifier, torch.Generator().manual_seed(3))
    blocks = ("identical", "disparate")
    expected = expected_loss(features, targets, classifier, 1.0, blocks, "zero_target", 3, strategy="matching")
    for name, got, want in zip(LossOutput._fields, out, expected):
        torch.testing.assert_close(got, want.detach() if name != "num_partial" else want, msg=name)


def test_baseline_is_plain_bce_without_mining():
    features, targets, classifier = make_batch()
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    out = INDeeDLoss(lam=0, backend="reference")(features, targets, classifier, g)
    assert torch.equal(g.get_state(), state), "lam=0 mines no pairs"
    plain = F.binary_cross_entropy_with_logits(classifier(features), targets, reduction="none").sum(1).mean()
    torch.testing.assert_close(out.loss, plain)
    torch.testing.assert_close(out.orig, plain.detach())
    assert out.ident == 0 and out.disp == 0 and int(out.num_partial) == 0
    out.loss.backward()
    assert features.grad is not None and classifier.weight.grad is not None


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_half_features_with_float32_classifier(lam):
    # As under autocast: bf16 features, float32 Linear. The loss is float32 and the
    # classifier's float32 parameters get gradients.
    features, targets, classifier = make_batch(dtype=torch.float32)
    features = features.detach().bfloat16().requires_grad_()
    out = INDeeDLoss(lam=lam, backend="reference")(features, targets, classifier, torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert classifier.weight.grad.dtype == torch.float32 and features.grad.dtype == torch.bfloat16
    reference_out = INDeeDLoss(lam=lam, backend="reference")(
        features.detach().float(), targets, classifier, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out.loss, reference_out.loss, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_autocast_does_not_lower_the_loss_precision(lam):
    features, targets, classifier = make_batch(dtype=torch.float32)
    loss = INDeeDLoss(lam=lam, backend="reference")
    plain = loss(features, targets, classifier, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss(features, targets, classifier, torch.Generator().manual_seed(0))
    assert torch.equal(autocast.loss, plain.loss)


def test_bool_and_soft_targets():
    features, targets, classifier = make_batch()
    loss = INDeeDLoss(backend="reference")
    from_bool = loss(features, targets.bool(), classifier, torch.Generator().manual_seed(0))
    from_float = loss(features, targets, classifier, torch.Generator().manual_seed(0))
    torch.testing.assert_close(from_bool.loss, from_float.loss)
    # Soft targets: pairs from targets > 0.5, the heads' targets from the soft values.
    soft = targets * 0.8 + 0.1
    out = loss(features, soft, classifier, torch.Generator().manual_seed(0))
    expected = expected_loss(features, soft, classifier, 1.0, ("identical", "disparate"), "zero_target", 0)
    torch.testing.assert_close(out.loss, expected[0])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lam=-0.1), ValueError, "lam must be a finite number >= 0"),
        (dict(lam=float("nan")), ValueError, "lam must be a finite number"),
        (dict(lam="1"), ValueError, "lam must be"),
        (dict(norm="l1"), ValueError, "unknown norm 'l1'"),
        (dict(eps=0.0), ValueError, "eps must be a positive"),
        (dict(blocks=("identical", "shared")), ValueError, "unknown block 'shared'"),
        (dict(blocks=("identical", "identical")), ValueError, "repeated"),
        (dict(blocks="identical"), TypeError, r"\('identical',\)"),
        (dict(self_pair_disparate="drop"), ValueError, "unknown self_pair_disparate 'drop'"),
        (dict(strategy="all"), ValueError, "unknown pair strategy 'all'"),
        (dict(backend="gpu"), ValueError, "unknown backend 'gpu'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        INDeeDLoss(**kwargs)


def test_lam_zero_allows_no_blocks():
    INDeeDLoss(lam=0, blocks=())


def test_bad_inputs():
    features, targets, classifier = make_batch()
    loss = INDeeDLoss(backend="reference")
    with pytest.raises(ValueError, match="same batch size, got 24 and 23"):
        loss(features, targets[:-1], classifier)
    with pytest.raises(ValueError, match="maps 16 features to 6 classes, but features have n=16 and targets c=5"):
        loss(features, targets[:, :5], classifier)
    with pytest.raises(ValueError, match=r"features must be \(B, n\)"):
        loss(features[0], targets, classifier)
    with pytest.raises(TypeError, match="classifier must be an nn.Linear"):
        loss(features, targets, nn.ReLU())
    with pytest.raises(ValueError, match="empty"):
        loss(features[:0], targets[:0], classifier)
