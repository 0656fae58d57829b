"""INDeeDLoss against a composition written with reference.py on the same mined pairs:
the full loss, the ablations, the self-pair options, the baseline, gradients and errors."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import indeed_ext  # noqa: F401  (registers the ops)
from indeed_ext import reference
from indeed_ext.losses import INDeeDLoss, LossOutput
from indeed_ext.pairs import mine_pairs

from conftest import assert_close, make_features

HAS_CPU_KERNEL = torch._C._dispatch_has_kernel_for_dispatch_key("indeed::_six_head_loss_forward", "CPU")
BACKENDS = [
    "reference",
    pytest.param(
        "auto",
        marks=pytest.mark.skipif(not HAS_CPU_KERNEL, reason="no CPU kernel registered for indeed::_six_head_loss_forward"),
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


def expected_loss(features, targets, classifier, lam, blocks, self_pair_disparate, seed, norm="minmax", strategy="any",
                  loss_args=("bce",)):
    """The loss composed by hand from reference.six_head_loss (loss_args: its loss, gamma_neg, ...) on the pairs
    mine_pairs gives for this seed."""
    index_a, index_b, is_partial = mine_pairs(targets, strategy, torch.Generator().manual_seed(seed))
    heads = reference.six_head_loss(features, classifier.weight, classifier.bias, targets, index_a, index_b, norm,
                                    1e-12, *loss_args)
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
    with pytest.raises(TypeError, match="classifier must be a module"):
        loss(features, targets, "linear")
    with pytest.raises(ValueError, match=r"the classifier must map \(144, 16\) features to \(144, 6\) logits"):
        with pytest.warns(UserWarning, match="only a linear head"):
            loss(features, targets, nn.ReLU())  # 6 heads x 24 pairs
    with pytest.raises(ValueError, match="empty"):
        loss(features[:0], targets[:0], classifier)


# ----------------------------------------------------------------------------- base losses and heads
# INDeeDLoss settings and the reference.six_head_loss arguments they stand for.
BASE_LOSSES = [
    (dict(base="asl"), ("asl", 4.0, 0.0, 0.05, 1e-8, False)),  # ASL's training script
    (dict(base="asl", gamma_neg=3, gamma_pos=1, clip=0.1, focal_grad=True), ("asl", 3.0, 1.0, 0.1, 1e-8, True)),
    (dict(base="focal"), ("asl", 2.0, 2.0, 0.0, 1e-8, False)),
    (dict(base="focal", gamma=1.5, eps_log=1e-6, focal_grad=True), ("asl", 1.5, 1.5, 0.0, 1e-6, True)),
]


def base_id(case):
    return "-".join(f"{k}{v}" for k, v in case[0].items())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", BASE_LOSSES, ids=[base_id(c) for c in BASE_LOSSES])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_base_losses_match_reference_composition(base, lam, backend):
    kwargs, loss_args = base
    features, targets, classifier = make_batch()
    targets = targets * 0.9 + 0.05  # soft targets: pairs from targets > 0.5
    out = INDeeDLoss(lam=lam, backend=backend, **kwargs)(features, targets, classifier, torch.Generator().manual_seed(5))
    f_ref = features.detach().clone().requires_grad_()
    ref_classifier = nn.Linear(16, 6).double()
    ref_classifier.load_state_dict(classifier.state_dict())
    if lam == 0:  # the baseline: the same base loss on the original logits, mean over samples
        expected = reference.base_loss_sum(ref_classifier(f_ref), targets, *loss_args).mean()
        assert int(out.num_partial) == 0 and out.ident == 0 and out.disp == 0
    else:
        blocks = ("identical", "disparate")
        expected = expected_loss(f_ref, targets, ref_classifier, lam, blocks, "zero_target", 5, loss_args=loss_args)[0]
    assert_close(out.loss, expected, torch.float64, what="loss")
    out.loss.backward()
    expected.backward()
    assert_close(features.grad, f_ref.grad, torch.float64, backward=True, what="grad features")
    assert_close(classifier.weight.grad, ref_classifier.weight.grad, torch.float64, backward=True, what="grad weight")


def test_base_loss_changes_the_loss():
    # Guards the test above against a base loss that is silently BCE: every base gives another loss.
    features, targets, classifier = make_batch()
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    losses = [INDeeDLoss(base=b, backend="reference")(features, targets, classifier, generator()).loss.detach()
              for b in ("bce", "asl", "focal")]
    assert len({round(x.item(), 6) for x in losses}) == 3


class MLPHead(nn.Module):
    """A two-layer head, the kind that cannot be fused."""

    def __init__(self, n, c, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, c))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base", ["bce", "asl"])
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_mlp_head_matches_the_reference(base, lam, backend):
    features, targets, _ = make_batch()
    head = MLPHead(16, 6).double()
    loss_args = ("bce",) if base == "bce" else ("asl", 4.0, 0.0, 0.05, 1e-8, False)
    with pytest.warns(UserWarning, match="only a linear head is fused"):
        out = INDeeDLoss(lam=lam, base=base, backend=backend)(features, targets, head, torch.Generator().manual_seed(2))
    f_ref = features.detach().clone().requires_grad_()
    if lam == 0:
        expected = reference.base_loss_sum(head(f_ref), targets, *loss_args).mean()
    else:  # the six feature sets of the reference, through the head
        index_a, index_b, _ = mine_pairs(targets, "any", torch.Generator().manual_seed(2))
        fa, fb = f_ref[index_a], f_ref[index_b]
        six = torch.stack((fa, fb, *reference.decompose(fa, fb)), dim=1)
        heads = reference.base_loss_sum(head(six), reference.pair_targets(targets, index_a, index_b), *loss_args)
        expected = (heads[:, :2].sum() + lam * heads[:, 2:].sum()) / heads.shape[0]
    assert_close(out.loss, expected, torch.float64, what="loss")
    params = list(head.parameters())
    got = torch.autograd.grad(out.loss, [features, *params])
    want = torch.autograd.grad(expected, [f_ref, *params])
    for g, w in zip(got, want):
        assert_close(g, w, torch.float64, backward=True, what="grad")


@pytest.mark.parametrize("base", ["bce", "asl"])
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_linear_head_gives_the_same_loss_fused_and_unfused(base, lam):
    features, targets, classifier = make_batch()
    backend = "auto" if HAS_CPU_KERNEL else "reference"
    unfused = nn.Sequential(classifier)  # not an nn.Linear: the unfused path, same function
    runs = []
    for head in (classifier, unfused):
        f = features.detach().clone().requires_grad_()
        classifier.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = INDeeDLoss(lam=lam, base=base, backend=backend)(f, targets, head, torch.Generator().manual_seed(7))
        out.loss.backward()
        runs.append((out, f.grad, classifier.weight.grad.clone()))
    (fused, *fused_grads), (plain, *plain_grads) = runs
    for name, a, b in zip(LossOutput._fields, fused, plain):
        assert_close(a, b, torch.float64, what=name)
    for a, b in zip(fused_grads, plain_grads):
        assert_close(a, b, torch.float64, backward=True, what="grad")


def test_unfused_warning_is_given_once():
    features, targets, _ = make_batch()
    loss = INDeeDLoss(backend="reference")
    head = MLPHead(16, 6).double()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            loss(features, targets, head)
    assert [str(w.message).split(";")[0] for w in caught] == ["INDeeDLoss: the classifier is a MLPHead, not an nn.Linear"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(base="softmax"), ValueError, r"unknown base loss 'softmax'; expected one of \('bce', 'asl', 'focal'\)"),
        (dict(base="asl", gamma_neg=-1), ValueError, "gamma_neg must be a finite number >= 0"),
        (dict(base="asl", clip=1.0), ValueError, r"clip must be a number in \[0, 1\)"),
        (dict(base="focal", gamma=float("nan")), ValueError, "gamma must be a finite number >= 0"),
        (dict(base="asl", eps_log=0.0), ValueError, r"eps_log must be a number in \(0, 1\)"),
        (dict(base="asl", focal_grad=1), TypeError, "focal_grad must be a bool"),
    ],
)
def test_bad_base_loss_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        INDeeDLoss(**kwargs)
