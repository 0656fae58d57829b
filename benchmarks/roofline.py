"""The roofline of the indeed ops: what a case must move and compute, against what the machine does.

Minimum work of one case (`minimum_work`), the floor that no implementation can beat:
- bytes: every input read once and every output written once, per call. The forward and
  the backward are separate calls (the upstream gradient exists only after the forward), so
  fwd+bwd reads the inputs twice: once in the forward, once more with the upstream gradient
  in the backward; what an implementation saves between them is its own choice and not counted.
- FLOPs: the GEMM FLOPs of the structure in docs/SPEC.md, the fewest the math allows:
  forward L = F W^T (B rows) and [m fa; m fb] W^T (2P rows), 2 (B + 2P) n c; backward
  dF = G W, [dIA; dIB] = [Gia; Gib] W and dW over B + 2P rows, 4 (B + 2P) n c.
  The elementwise work (a few FLOPs per element of p = fa * fb) is far below the balance of
  both machines (FLOPs per byte the copy moves) and is left out: identical_map and decompose
  have 0 GEMM FLOPs and are bounded by bytes alone.

The machine (`measure_machine`): the copy bandwidth of a large device-to-device copy (bytes
read + written per second) and the GEMM rate of a large square matmul per dtype, both timed
with the same timer as the cases, in the same run. With fp32 inputs the GEMM rate is fp32's
(TF32 only if torch's matmul settings allow it, as for the ops); half inputs may use either
their own GEMM or fp32's, whichever is faster.

roofline time = max(bytes / copy bandwidth, FLOPs / GEMM rate);
% of roofline = 100 * roofline time / measured time.

`cuda_kernel_bytes` is a different thing: the bytes the CUDA kernels of this package move,
from the byte models in the headers of csrc/cuda/*.cu, to compare the kernels with the minimum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

OPS = ("identical_map", "decompose", "six_head_bce", "six_head_asl")
SIX_HEAD_OPS = ("six_head_bce", "six_head_asl")  # six_head_loss with BCE and with ASL: the same bytes and GEMMs
MODES = ("fwd", "fwd+bwd")
INDEX_BYTES = 8  # int64 pair indices


@dataclass(frozen=True)
class Work:
    bytes: int
    flops: int


def _sizes(dtype: torch.dtype) -> tuple[int, int]:
    """(input element bytes, accumulation element bytes): float64 accumulates in float64, the rest in float32."""
    elem = torch.finfo(dtype).bits // 8
    return elem, 8 if dtype == torch.float64 else 4


def _pair_op_rows(op: str) -> tuple[int, int]:
    """Rows of n elements read + written per pair: (forward, backward)."""
    outputs = 1 if op == "identical_map" else 4
    # forward: fa, fb in, outputs out; backward: outputs' grads and fa, fb in, dfa, dfb out
    return 2 + outputs, outputs + 2 + 2


def minimum_work(op: str, mode: str, B: int, n: int, c: int, dtype: torch.dtype, targets_bytes: int = 4) -> Work:
    """The bytes one call of `mode` must move and the GEMM FLOPs it must do (module docstring).

    identical_map and decompose take B = P rows of fa and fb; the six-head ops take B feature
    rows and P = B pairs, its targets are (B, c) elements of targets_bytes.
    """
    if op not in OPS or mode not in MODES:
        raise ValueError(f"unknown case {op!r} {mode!r}; expected an op of {OPS} and a mode of {MODES}")
    s, acc = _sizes(dtype)
    P = B
    if op not in SIX_HEAD_OPS:
        fwd_rows, bwd_rows = _pair_op_rows(op)
        rows = fwd_rows + (bwd_rows if mode == "fwd+bwd" else 0)
        return Work(bytes=rows * P * n * s, flops=0)
    inputs = B * n * s + c * n * s + c * s + B * c * targets_bytes + 2 * P * INDEX_BYTES
    loss = P * 6 * acc  # float32 for half inputs, the input dtype otherwise
    forward = Work(bytes=inputs + loss, flops=2 * (B + 2 * P) * n * c)
    if mode == "fwd":
        return forward
    # backward: the upstream gradient (shaped like the loss) and the inputs in; dF, dW, dbias out
    grads = B * n * s + c * n * s + c * s
    return Work(bytes=forward.bytes + loss + inputs + grads, flops=forward.flops + 4 * (B + 2 * P) * n * c)


def cuda_kernel_bytes(op: str, mode: str, B: int, n: int, c: int, dtype: torch.dtype) -> int:
    """Bytes the CUDA kernels move (the models in csrc/cuda/pair_rows.cuh and six_head_loss.cu)."""
    if op not in SIX_HEAD_OPS:
        return minimum_work(op, mode, B, n, c, dtype).bytes  # one pass, at the minimum
    s, acc = _sizes(dtype)
    P = B
    forward = (B + 4 * P) * n * s
    if mode == "fwd":
        return forward
    half = s != acc  # dF is accumulated in acc, then cast to the input dtype
    backward = (B + 10 * P) * n * s + 3 * B * n * acc + (B * n * (acc + s) if half else 0)
    return forward + backward


def roofline_seconds(work: Work, copy_bytes_per_s: float, gemm_flops_per_s: float) -> tuple[float, str]:
    """(the roofline time of `work`, which bound sets it: "memory" or "gemm")."""
    memory_s = work.bytes / copy_bytes_per_s
    gemm_s = work.flops / gemm_flops_per_s if work.flops else 0.0
    return (gemm_s, "gemm") if gemm_s > memory_s else (memory_s, "memory")


def gemm_rate_for(machine: dict, dtype: torch.dtype) -> float:
    """The GEMM rate (FLOP/s) available to inputs of dtype: their own GEMM or float32's."""
    rates = machine["gemm_flops_per_s"]
    own = rates.get(str(dtype).removeprefix("torch."))
    if dtype in (torch.float32, torch.float64):
        return own
    return max(r for r in (own, rates.get("float32")) if r)


def measure_machine(device: torch.device, dtypes: list[torch.dtype], measure: Callable[[Callable], float]) -> dict:
    """Copy bandwidth (bytes/s) and GEMM rate (FLOP/s) per dtype of `device`, timed by `measure`
    (seconds per call, warm-up excluded). Sizes are far beyond the caches: a 1 GiB copy and
    8192^3 GEMMs on a GPU, 256 MiB and 2048^3 on a CPU."""
    on_gpu = device.type == "cuda"
    x = torch.empty(2**28 if on_gpu else 2**26, dtype=torch.float32, device=device).fill_(1.0)
    y = torch.empty_like(x)
    copy_s = measure(lambda: y.copy_(x))
    machine = {"copy_bytes_per_s": 2 * x.nbytes / copy_s, "gemm_flops_per_s": {}}
    del x, y
    size = 8192 if on_gpu else 2048
    for dtype in dict.fromkeys([*dtypes, torch.float32]):  # float32 always: half inputs may use it
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        machine["gemm_flops_per_s"][str(dtype).removeprefix("torch.")] = 2 * size**3 / measure(lambda: torch.mm(a, b))
        del a, b
    return machine
