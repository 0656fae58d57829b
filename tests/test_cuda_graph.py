"""A whole training step captured in one CUDA graph: backbone (eager or torch.compile'd), INDeeDLoss
(mine_pairs, the fused six-head op, the reduction) and the optimizer; and indeed-train --compile,
whose model replays as CUDA graphs (mode reduce-overhead). Needs a GPU. Each replay draws a new
mine_pairs seed from the CUDA generator (its Philox offsets advance per replay); the step
stays finite, the optimizer steps, and every sample with a valid partner gets one."""
import json

import pytest
import torch
from torch import nn

from indeed_ext.recipes import train

from indeed_ext.losses import INDeeDLoss

from conftest import requires_cuda


@requires_cuda
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_training_step_replays_in_a_cuda_graph(backend, compiled):
    torch.manual_seed(0)
    B, n, c = 64, 32, 6
    backbone = nn.Sequential(nn.Linear(20, n), nn.ReLU()).cuda()
    if compiled:
        backbone = torch.compile(backbone)  # the README's step: compiled, then captured
    classifier = nn.Linear(n, c).cuda()
    params = list(backbone.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    criterion = INDeeDLoss(backend=backend)
    images = torch.randn(B, 20, device="cuda")
    targets = (torch.rand(B, c, device="cuda") < 0.3).float()
    captured = {}

    def step():
        optimizer.zero_grad(set_to_none=False)
        out = criterion(backbone(images), targets, classifier)
        out.loss.backward()
        optimizer.step()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the capture: cuBLAS, the optimizer's state, the loss's weights
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured["out"] = step()
    before = [p.detach().clone() for p in params]
    partials = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        out = captured["out"]
        assert torch.isfinite(out.loss) and out.loss > 0
        partials.append(int(out.num_partial))
    assert any(not torch.equal(b, p) for b, p in zip(before, params)), "the optimizer stepped"
    y = targets > 0.5
    valid = (y[:, None] & y[None]).any(-1) & ~(y[:, None] == y[None]).all(-1)
    assert partials[-1] == int(valid.any(1).sum()), "a real partner exactly where one exists"


@requires_cuda
def test_indeed_train_compile_replays_cuda_graphs(tmp_path):
    """indeed-train --compile on one GPU (CUDA graphs) trains as the eager run does, up to rounding."""
    from test_train import TINY

    cuda = [a if a != "cpu" else "cuda" for a in TINY] + ["--method", "indeed", "--seed", "5", "--epochs", "2"]
    assert train.main([*cuda, "--out", str(tmp_path / "eager")]) == 0
    assert train.main([*cuda, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    eager, compiled = (json.loads((tmp_path / f / "results.json").read_text())[0] for f in ("eager", "compiled"))
    for a, b in zip(eager["history"], compiled["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)
        assert b["mAP"] == pytest.approx(a["mAP"], abs=2.0)
