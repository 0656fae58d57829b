"""Shared test helpers: per-dtype tolerances, inputs with the awkward cases, backend lists."""
import os

import torch

# Without a CUDA GPU the Triton kernels run on CPU tensors through the Triton interpreter.
# triton reads TRITON_INTERPRET once, when first imported: set it before anything imports
# triton (importing torch does not).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import indeed_ext  # noqa: E402,F401  (registers the ops)

# Tolerances against reference.py on the same inputs, as (atol, rtol). Half dtypes: the
# kernels and the reference both accumulate in float32, so outputs differ by about one
# rounding of the output dtype; float32 differs by summation order (GEMMs over n, sums over c).
FORWARD_TOL = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}
BACKWARD_TOL = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (1e-4, 1e-3),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (5e-3, 5e-3),
}
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
NORMS = ("minmax", "l2")
# six_head_loss's (loss, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives): BCE, and ASL's
# training setting with the full focal gradient; the paper's sum over present negatives.
BCE = ("bce", 0.0, 0.0, 0.0, 1e-8, False, "sum")
ASL = ("asl", 4.0, 0.0, 0.05, 1e-8, True, "sum")


def assert_close(actual, expected, dtype, backward=False, what=""):
    atol, rtol = (BACKWARD_TOL if backward else FORWARD_TOL)[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def make_features(rows, n, dtype=torch.float32, device="cpu", kind="relu", seed=0):
    """Feature rows of a given kind.

    relu: post-ReLU (about half zeros, so min ties); ties: a few distinct values (max ties too);
    negative: signed values; zeros: all-zero rows mixed with relu rows.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g, dtype=torch.float64)
    if kind == "relu":
        x = x.relu()
    elif kind == "ties":
        x = torch.randint(0, 3, (rows, n), generator=g).double()
    elif kind == "zeros":
        x = x.relu()
        x[::2] = 0
    elif kind != "negative":
        raise ValueError(kind)
    return x.to(dtype=dtype, device=device)


def make_six_head_inputs(B, P, n, c, dtype=torch.float32, device="cpu", bias=True, kind="relu", seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    features = make_features(B, n, dtype, device, kind, seed)
    weight = (torch.randn(c, n, generator=g, dtype=torch.float64) / n**0.5).to(dtype=dtype, device=device)
    b = (torch.randn(c, generator=g, dtype=torch.float64) * 0.1).to(dtype=dtype, device=device) if bias else None
    targets = (torch.rand(B, c, generator=g) < 0.3).to(dtype=torch.float32, device=device)
    index_a = torch.randint(0, B, (P,), generator=g).to(device)
    index_b = torch.randint(0, B, (P,), generator=g).to(device)
    return features, weight, b, targets, index_a, index_b


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
