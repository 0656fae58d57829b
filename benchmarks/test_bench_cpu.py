"""CPU forward+backward timings: the CPU kernels against reference.py, eager and compiled.

    python -m pytest benchmarks/test_bench_cpu.py --benchmark-only

fp32, B = P = 1024 pairs, n = 2048 features, c = 80 classes, torch's default thread count
(INDEED_BENCH_THREADS=k sets it). The session summary prints the ratios of the medians of
this run. Not a timed test: nothing here fails on speed (timings on a shared machine vary;
compare ratios within one run).
"""
import os

import pytest
import torch

import indeed_ext  # noqa: F401  (registers torch.ops.indeed)
from indeed_ext import reference

B = P = 1024
N, C = 2048, 80
ROUNDS, WARMUP = 10, 2
if os.environ.get("INDEED_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["INDEED_BENCH_THREADS"]))


@pytest.fixture(scope="module")
def six_head_inputs():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(B, N, generator=g).relu()  # post-ReLU, like a backbone's pooled features
    weight = torch.randn(C, N, generator=g) / N**0.5
    bias = torch.randn(C, generator=g) * 0.1
    targets = (torch.rand(B, C, generator=g) < 0.1).float()
    index_a = torch.randint(0, B, (P,), generator=g)
    index_b = torch.randint(0, B, (P,), generator=g)
    return features, weight, bias, targets, index_a, index_b


@pytest.fixture(scope="module")
def pair_inputs(six_head_inputs):
    features, _, _, _, index_a, index_b = six_head_inputs
    fa, fb = features[index_a], features[index_b]
    g = torch.Generator().manual_seed(1)
    upstream = [torch.randn(P, N, generator=g) for _ in range(4)]
    return fa, fb, upstream


IMPLS = {
    "ours (cpu)": lambda name: getattr(torch.ops.indeed, name),
    "reference eager": lambda name: getattr(reference, name),
    "torch.compile(reference)": lambda name: torch.compile(getattr(reference, name)),
}


@pytest.mark.parametrize("impl", IMPLS)
def test_six_head_bce_forward_backward(benchmark, record_median, six_head_inputs, impl):
    features, weight, bias, targets, index_a, index_b = six_head_inputs
    op = IMPLS[impl]("six_head_bce")
    leaves = [t.clone().requires_grad_() for t in (features, weight, bias)]

    def step():
        loss = op(*leaves, targets, index_a, index_b, "minmax")
        return torch.autograd.grad(loss.sum(), leaves)

    benchmark.group = "six_head_bce fwd+bwd"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)
    record_median(benchmark, benchmark.group, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_decompose_forward_backward(benchmark, record_median, pair_inputs, impl):
    fa, fb, upstream = pair_inputs
    op = IMPLS[impl]("decompose")
    leaves = [t.clone().requires_grad_() for t in (fa, fb)]

    def step():
        return torch.autograd.grad(op(*leaves, "minmax"), leaves, upstream)

    benchmark.group = "decompose fwd+bwd"
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP)
    record_median(benchmark, benchmark.group, impl)
