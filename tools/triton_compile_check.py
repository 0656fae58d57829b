#!/usr/bin/env python3
"""Compile every Triton kernel launch of indeed_ext for a GPU architecture, without a GPU.

    python tools/triton_compile_check.py [--arch 90 80] [--json OUT.json]

The interpreter (TRITON_INTERPRET=1, what CI runs the kernels with) neither compiles the
kernels nor checks what only the GPU compiler checks (tl.dot dtypes, for one), so a
kernel can pass every CPU test and fail to compile on a GPU. This script runs the Python
launch code of each op (the same wrappers the ops call, with the GPU block sizes) on CPU
tensors, with a stand-in Triton driver that reports the target architecture and compiles
each launch to a cubin instead of running it (ptxas included: Triton's bundled copy).
For each compiled kernel it reads ptxas's report (-v, which Triton passes; compiled into a
fresh cache so that nothing comes from an earlier run): registers, spill stores and loads,
and shared memory.

Cases: identical_map and decompose forward and backward, six_head_loss forward and
backward; float32 (IEEE and TF32 tl.dot), float64, bfloat16, float16; both norms; n and c
that give every block configuration the launch code chooses (one row per tile, several,
rows longer than a tile; one and several class blocks), bias or none, the atomic and the
deterministic dF reduction, the base losses BCE and ASL (ASL with and without focal_grad:
only the forward and _grad_logits_kernel depend on the loss, so ASL runs with a bias and
atomics only); mine_pairs and mine_pairs_cooccur for bool and every float dtype of targets.
Prints a table; exits 1 if a launch fails to compile or a kernel spills registers. The outputs
of the wrappers are garbage (nothing runs).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("triton_compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)")
# A cache hit skips ptxas and so its report: compile everything afresh.
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="indeed-triton-compile-check-")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from indeed_ext.triton import decompose as pair_kernels  # noqa: E402
from indeed_ext.triton import mine_pairs as mine_pairs_kernels  # noqa: E402
from indeed_ext.reference import DEFAULT_LOAD_CAP  # noqa: E402
from indeed_ext.triton import six_head_loss as six_head_kernels  # noqa: E402

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
NORMS = ("minmax", "l2")
PAIR_N = (1, 2047, 2048, 8200)  # one element, unaligned, aligned, longer than a tile
SIX_HEAD_SHAPES = ((24, 24, 2048, 80), (9, 24, 37, 3), (16, 40, 515, 130))  # B, P, n, c
SMS = 132  # multiprocessors of an H100 SXM: only sets how many programs share dW's pairs
BCE = ("bce", 0.0, 0.0, 0.0, 1e-8, False)  # six_head_loss's loss, gamma_neg, gamma_pos, clip, eps_log, focal_grad


def asl(focal_grad: bool) -> tuple:
    return ("asl", 4.0, 0.0, 0.05, 1e-8, focal_grad)


class OfflineDriver:
    """What JITFunction.run asks of the active driver, for a GPU that is not there."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.target.arch  # JITFunction caches per device: one cache per architecture

    def get_current_stream(self, device=None):
        return 0


class Recorder:
    """Compiles instead of launching (JITFunction.run with warmup=True); keeps each new kernel's ptxas report."""

    def __init__(self):
        self.case = ""
        self.kernels: dict[tuple[str, str], dict] = {}
        self._run = JITFunction.run

    def __enter__(self):
        recorder = self

        def run(jit_fn, *args, grid, warmup, **kwargs):
            with contextlib.redirect_stdout(io.StringIO()) as ptxas_log:
                kernel = recorder._run(jit_fn, *args, grid=grid, warmup=True, **kwargs)
            if (jit_fn.__name__, kernel.hash) not in recorder.kernels:
                recorder.kernels[(jit_fn.__name__, kernel.hash)] = {
                    "kernel": jit_fn.__name__, "first_case": recorder.case, "num_warps": kernel.metadata.num_warps,
                    "shared": kernel.metadata.shared, **ptxas_resources(ptxas_log.getvalue()),
                }
            return kernel

        triton.knobs.nvidia.dump_ptxas_log = True
        JITFunction.run = run
        return self

    def __exit__(self, *exc):
        JITFunction.run = self._run
        triton.knobs.nvidia.dump_ptxas_log = False


def ptxas_resources(log: str) -> dict:
    """Registers, spill stores and loads (bytes) from a ptxas -v report of one kernel."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not registers or not spills:
        raise RuntimeError(f"no ptxas report in the compile output: {log[-500:]!r}")
    return {"registers": int(registers[1]), "spill_stores": int(spills[1]), "spill_loads": int(spills[2])}


def _launch_pair_op(fa, fb, norm, decompose):
    pair_kernels.pair_forward(fa, fb, norm, 1e-12, decompose)
    grads = [torch.rand_like(fa) for _ in range(4 if decompose else 1)]
    pair_kernels.pair_backward(grads, fa, fb, norm, 1e-12)


def _launch_six_head(inputs, norm, deterministic, loss_settings):
    loss, logits, ident = six_head_kernels.six_head_forward(*inputs, norm, 1e-12, *loss_settings[:-1])
    torch.use_deterministic_algorithms(deterministic)
    try:
        six_head_kernels.six_head_backward(torch.rand_like(loss), *inputs, logits, ident, norm, 1e-12, *loss_settings)
    finally:
        torch.use_deterministic_algorithms(False)


def cases(dtype, norm):
    """(label, launch) of every case of one dtype and norm."""
    for n in PAIR_N:
        fa, fb = torch.rand(4, n, dtype=dtype), torch.rand(4, n, dtype=dtype)
        for decompose in (False, True):
            name = "decompose" if decompose else "identical_map"
            yield f"{name} n={n}", functools.partial(_launch_pair_op, fa, fb, norm, decompose)
    for B, P, n, c in SIX_HEAD_SHAPES:
        features, weight, bias = torch.rand(B, n, dtype=dtype), torch.rand(c, n, dtype=dtype), torch.rand(c, dtype=dtype)
        targets = torch.rand(B, c, dtype=dtype)
        index_a, index_b = torch.arange(P) % B, torch.arange(P).flip(0) % B
        for with_bias in (True, False):
            inputs = (features, weight, bias if with_bias else None, targets, index_a, index_b)
            for deterministic in (False, True):
                label = f"six_head_loss bce B={B} P={P} n={n} c={c} bias={with_bias} deterministic={deterministic}"
                yield label, functools.partial(_launch_six_head, inputs, norm, deterministic, BCE)
        for focal_grad in (False, True):
            label = f"six_head_loss asl focal_grad={focal_grad} B={B} P={P} n={n} c={c}"
            inputs = (features, weight, bias, targets, index_a, index_b)
            yield label, functools.partial(_launch_six_head, inputs, norm, False, asl(focal_grad))


def mine_pairs_cases():
    """(label, launch) for mine_pairs and mine_pairs_cooccur: one kernel variant per targets dtype
    (W, B and c are runtime values), and "cooccur" with and without its load cap."""
    weights = torch.randint(0, 2**16 + 1, (130, 130))
    for dtype in DTYPES + (torch.bool,):
        targets = torch.rand(40, 130) < 0.3 if dtype == torch.bool else torch.rand(40, 130, dtype=dtype)
        name = str(dtype).removeprefix('torch.')
        yield f"mine_pairs {name}", functools.partial(mine_pairs_kernels.mine_pairs, targets, torch.tensor(1))
        for load_cap in (DEFAULT_LOAD_CAP,) if dtype != torch.float32 else (DEFAULT_LOAD_CAP, 0):  # capped, and without
            yield f"mine_pairs_cooccur {name} load_cap={load_cap}", functools.partial(
                mine_pairs_kernels.mine_pairs_cooccur, targets, torch.tensor(1), weights, load_cap)


def check(arch: int) -> tuple[list[dict], list[str]]:
    """(one row per distinct compiled kernel, the cases that failed to compile) for sm_<arch>."""
    driver.set_active(OfflineDriver(arch))
    six_head_kernels._multiprocessors = lambda device: SMS
    failures = []
    precision = torch.get_float32_matmul_precision()
    with Recorder() as recorder:

        def attempt(case, launch):
            recorder.case = case
            try:
                launch()
            except Exception as e:  # noqa: BLE001 (every failure is listed, then reported)
                failures.append(f"sm_{arch} {case}: {type(e).__name__}: {str(e)[:2000]}")

        for dtype in DTYPES:
            for setting in (("highest", "high") if dtype == torch.float32 else ("highest",)):
                torch.set_float32_matmul_precision(setting)
                for norm in NORMS:
                    for case, launch in cases(dtype, norm):
                        attempt(f"{str(dtype).removeprefix('torch.')} {setting} {norm} {case}", launch)
        for case, launch in mine_pairs_cases():
            attempt(case, launch)
    torch.set_float32_matmul_precision(precision)
    return [{"arch": arch, **row} for row in recorder.kernels.values()], failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities, e.g. 90 80")
    parser.add_argument("--json", type=Path, help="write the rows and failures here")
    args = parser.parse_args()
    rows, failures = [], []
    for arch in args.arch:
        arch_rows, arch_failures = check(arch)
        rows += arch_rows
        failures += arch_failures
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    print(f"{'arch':>4} {'kernel':<26} {'variants':>8} {'registers (max)':>15} {'spill bytes (max)':>17} "
          f"{'shared (max)':>12}")
    per_kernel = collections.defaultdict(list)
    for r in rows:
        per_kernel[(r["arch"], r["kernel"])].append(r)
    for (arch, name), group in sorted(per_kernel.items()):
        print(f"{arch:>4} {name:<26} {len(group):>8} {max(r['registers'] for r in group):>15} "
              f"{max(r['spill_stores'] + r['spill_loads'] for r in group):>17} {max(r['shared'] for r in group):>12}")
    for r in spills:
        print(f"SPILLS sm_{r['arch']} {r['kernel']}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded, "
              f"{r['registers']} registers ({r['first_case']})")
    for failure in failures:
        print(f"FAILED {failure}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "failures": failures}, indent=1))
    print(f"{len(rows)} distinct kernels compiled, {len(failures)} launches failed, {len(spills)} spill registers")
    return 1 if failures or spills else 0


if __name__ == "__main__":
    sys.exit(main())
