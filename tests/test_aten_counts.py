"""Pinned host work: the aten ops one forward + backward dispatches on CPU, counted as every
aten:: event of a torch.profiler trace (nested ones included), on tiny tensors (B = 8, n = 16,
c = 5). A count above its pin fails: find what added the dispatches. A count below it is
progress: lower the pin. The baseline loss (Linear + BCE with logits summed over classes, mean)
is counted in the same run: the goals are the fused op <= the baseline, INDeeDLoss <= 2x.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

import indeed_ext
from indeed_ext.losses import INDeeDLoss

# torch 2.14.1, CPU build of 2026-12-01: baseline 78.
PINNED = {"six_head_bce": 57, "INDeeDLoss": 81}


def tiny_step_inputs():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(8, 16, generator=g).relu().requires_grad_()
    targets = (torch.rand(8, 5, generator=g) < 0.4).float()
    classifier = nn.Linear(16, 5)
    return features, targets, classifier


def count_aten_ops(step):
    step()  # warm-up: first calls initialise lazily
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def steps():
    features, targets, classifier = tiny_step_inputs()
    index_a = torch.arange(8)
    index_b = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    criterion = INDeeDLoss()

    def baseline():
        logits = classifier(features)
        F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean().backward()

    def six_head_bce():
        heads = indeed_ext.six_head_bce(features, classifier.weight, classifier.bias, targets, index_a, index_b)
        heads.sum().backward()

    def indeed_loss():
        criterion(features, targets, classifier).loss.backward()

    return {"baseline": baseline, "six_head_bce": six_head_bce, "INDeeDLoss": indeed_loss}


def test_aten_op_counts_do_not_grow():
    counts = {name: count_aten_ops(step) for name, step in steps().items()}
    for name, pin in PINNED.items():
        assert counts[name] <= pin, f"{name}: {counts[name]} aten ops per forward + backward, pinned at {pin}: {counts}"
    assert counts["six_head_bce"] <= counts["baseline"], counts
    assert counts["INDeeDLoss"] <= 2 * counts["baseline"], counts
