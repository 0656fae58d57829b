"""torch.compile(fullgraph=True) over the ops and INDeeDLoss, forward and backward, against eager.

A function that gathers pair rows, calls torch.ops.indeed.decompose and the public
six_head_bce, and mixes their outputs, so the graph holds the ops' fake kernels, their
C++ autograd and the backward ops; and the loss itself, pair mining included (each compile
takes seconds on two cores).
"""
import pytest
import torch
from torch import nn

import indeed_ext
from indeed_ext.losses import INDeeDLoss

from conftest import assert_close, make_six_head_inputs


def test_compile_fullgraph_matches_eager():
    features, weight, bias, targets, index_a, index_b = make_six_head_inputs(8, 10, 16, 4, kind="negative")

    def loss_fn(features, weight, bias):
        ia, ib, da, db = torch.ops.indeed.decompose(features[index_a], features[index_b], "l2")
        heads = indeed_ext.six_head_bce(features, weight, bias, targets, index_a, index_b, "minmax")
        return heads.sum() + (ia * db).sum() - (ib * da).sum()

    compiled = torch.compile(loss_fn, fullgraph=True)
    eager_in = [t.clone().requires_grad_() for t in (features, weight, bias)]
    compiled_in = [t.clone().requires_grad_() for t in (features, weight, bias)]
    eager_loss, compiled_loss = loss_fn(*eager_in), compiled(*compiled_in)
    assert_close(compiled_loss, eager_loss, torch.float32, what="loss")
    eager_loss.backward()
    compiled_loss.backward()
    for e, c, what in zip(eager_in, compiled_in, ("features", "weight", "bias")):
        assert_close(c.grad, e.grad, torch.float32, backward=True, what=f"grad {what}")


# The seed of mine_pairs drawn as eager draws it, so that both mine the same pairs.
@torch._inductor.config.patch(fallback_random=True)
@pytest.mark.parametrize("self_pair_disparate", ["zero_target", "skip"])
def test_compile_loss_fullgraph_matches_eager(self_pair_disparate):
    torch._dynamo.reset()
    features, weight, bias, targets, _, _ = make_six_head_inputs(12, 1, 16, 5)
    criterion = INDeeDLoss(lam=0.7, self_pair_disparate=self_pair_disparate)
    classifier = nn.Linear(16, 5)
    compiled = torch.compile(lambda f, t: criterion(f, t, classifier), fullgraph=True)
    results = []
    for loss_fn in (lambda f, t: criterion(f, t, classifier), compiled):
        f = features.clone().requires_grad_()
        classifier.zero_grad()
        torch.manual_seed(4)
        out = loss_fn(f, targets)
        out.loss.backward()
        results.append((out, f.grad, classifier.weight.grad.clone(), classifier.bias.grad.clone()))
    (eager, *eager_grads), (compiled_out, *compiled_grads) = results
    assert torch.equal(compiled_out.num_partial, eager.num_partial)
    for name, e, c in zip(eager._fields[:4], eager, compiled_out):
        assert_close(c, e, torch.float32, what=name)
    for what, e, c in zip(("features", "weight", "bias"), eager_grads, compiled_grads):
        assert_close(c, e, torch.float32, backward=True, what=f"grad {what}")


@torch._inductor.config.patch(fallback_random=True)
def test_compile_cooccur_loss_fullgraph_matches_eager():
    """The statistic's update and weights, the "cooccur" op and the heads in one graph: no host sync. Compiled,
    the weights are computed at every step: the eager loss matches with cooccur_refresh = 1."""
    torch._dynamo.reset()
    features, weight, bias, targets, _, _ = make_six_head_inputs(12, 1, 16, 5)
    classifier = nn.Linear(16, 5)
    eager, compiled = (INDeeDLoss(strategy="cooccur", num_classes=5, cooccur_z=0.0, cooccur_refresh=1) for _ in range(2))
    step = torch.compile(lambda f, t: compiled(f, t, classifier), fullgraph=True)
    outs = []
    for loss_fn in (lambda f, t: eager(f, t, classifier), step):
        torch.manual_seed(4)
        for _ in range(3):  # later steps mine with the weights of the batches before
            out = loss_fn(features.clone().requires_grad_(), targets)
            out.loss.backward()
        outs.append(out)
    assert_close(outs[1].loss, outs[0].loss, torch.float32, what="loss")
    assert torch.equal(outs[1].num_partial, outs[0].num_partial)
    assert torch.equal(compiled.cooccurrence.counts, eager.cooccurrence.counts)
    assert compiled.cooccurrence.samples == 3 * 12 and compiled.cooccurrence.contrast_weights().any()
