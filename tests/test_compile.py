"""torch.compile(fullgraph=True) over the ops, forward and backward, against eager.

One compile (it takes seconds on two cores): a function that gathers pair rows, calls
torch.ops.indeed.decompose and the public six_head_bce, and mixes their outputs, so the
graph holds the ops' fake kernels, their autograd formulas and the backward ops.
"""
import torch

import indeed_ext

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
