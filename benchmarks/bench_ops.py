#!/usr/bin/env python3
"""Timings of the indeed ops on every backend of the machine, with the roofline of each case.

    python benchmarks/bench_ops.py --device cpu --preset small      (make bench)
    python benchmarks/bench_ops.py --device cuda --preset full      (make bench-gpu)
    python -m pytest benchmarks/bench_ops.py --benchmark-only       (pytest-benchmark, see below)

Cases: identical_map, decompose, six_head_bce and six_head_asl (six_head_loss with ASL's
training setting: gamma_neg 4, gamma_pos 0, clip 0.05; its reference is ASL's formula on the six
heads, reference.six_head_loss); forward (no grad) and forward+backward (torch.autograd.grad
with random upstream gradients); B = P pairs, n features, c classes (the six-head ops only),
the minmax norm. Backends: reference eager, torch.compile(reference)
(dynamic=False, one compile per shape), and the package's kernels through its public API:
cpu on CPU tensors, cuda and triton on CUDA tensors (triton never under the interpreter).
Presets: small = B in {256, 1024}, n = 2048, c = 80, float32 (the CPU goal case among them);
full = B in {256, 1024, 4096, 16384}, n in {512, 2048}, c in {20, 80}, float32 and bfloat16.
--ops/--modes/--sizes/--n/--c/--dtypes/--backends narrow or change a preset.

Timer: CPU, time.perf_counter around each call, warm-up calls excluded, the median of at
least 5 calls (more while under a second), twice the last-level cache written between calls
(as do_bench flushes the L2), OMP_WAIT_POLICY=PASSIVE unless the environment sets it (below);
GPU, triton.testing.do_bench (median, L2 flushed, warm-up excluded), or CUDA events without
triton. Peak memory: torch.cuda.max_memory_allocated above what was allocated before the call
(GPU); the peak RSS (VmHWM, reset through /proc/self/clear_refs after malloc_trim) above the
RSS before the call (CPU). Roofline: benchmarks/roofline.py, against the copy bandwidth and
GEMM rate measured at the start of the same run. --profile: torch.profiler of the goal cases
(device busy time against the timed median, device activities and aten ops per call, the top
ops), the evidence for benchmarks/NOTES.md.

Time budget (--budget): the timings without torch.compile come first, headline shapes
first; torch.compile cases follow, most interesting first (fwd+bwd, the goal size, then the
other sizes), while the budget lasts (--compile-cases caps their number). What the budget
cut is listed in the outputs as skipped. Writes ops_<device>.{json,csv,md}, one plot per op,
ops_<device>_<op>.png (speed-up over eager against B, per backend), and with --profile
profile_<device>_<case>_<backend>.txt into --out.
benchmarks/gpu_check.py runs the same code for its timing step.
"""
from __future__ import annotations

import argparse
import collections
import csv
import ctypes
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

# Read by OpenMP when torch loads it, so set before importing torch. Sleeping rather than spinning
# at the end of a parallel region: on a machine whose cores other processes share, spinning
# threads hold the cores that the threads they wait for need (measured with 2 threads under a
# load of 3: eager six_head_bce forward at B = 256, 217 ms spinning, 10 ms sleeping). Set
# OMP_WAIT_POLICY=ACTIVE to measure the other way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import indeed_ext  # noqa: E402  (registers torch.ops.indeed)
import roofline  # noqa: E402
from indeed_ext import reference  # noqa: E402

OPS = roofline.OPS
SIX_HEAD_OPS = roofline.SIX_HEAD_OPS
ASL = dict(loss="asl", gamma_neg=4.0, gamma_pos=0.0, clip=0.05)  # six_head_asl: ASL's training script
MODES = roofline.MODES
PAIR_OPS = ("identical_map", "decompose")
REFERENCE_BACKENDS = ("eager", "compile")
PRESETS = {
    "small": {"sizes": [256, 1024], "n": [2048], "c": [80], "dtypes": ["float32"]},
    "full": {"sizes": [256, 1024, 4096, 16384], "n": [512, 2048], "c": [20, 80], "dtypes": ["float32", "bfloat16"]},
}
DEFAULT_BUDGET_S = {"small": 270.0, "full": 340.0}
GOAL_SIZE = {"cpu": 1024, "cuda": 4096}  # the B of the goals, first in the compile order
COMPILE_SHARE = 0.4  # of the budget kept for torch.compile after the other timings
CPU_ROUNDS, CPU_MIN_SECONDS, CPU_MAX_ROUNDS, CPU_WARMUP = 5, 1.0, 100, 2
GPU_WARMUP_MS, GPU_REP_MS = 10, 50
NORM = "minmax"


def log(msg: str) -> None:
    print(f"[bench_ops {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    op: str
    mode: str
    B: int  # feature rows; P = B pairs
    n: int
    c: int | None  # classes, the six-head ops only
    dtype: str

    @property
    def label(self) -> str:
        c = f" c={self.c}" if self.c is not None else ""
        return f"{self.op} {self.mode} {self.dtype} B={self.B} n={self.n}{c}"


def select_cases(ops, modes, sizes, ns, cs, dtypes) -> list[Case]:
    """The case matrix in run order: the headline shape (the largest n and c) first, then the rest."""
    cases = {
        Case(op, mode, B, n, c if op in SIX_HEAD_OPS else None, dtype)
        for op in ops for mode in modes for B in sizes for n in ns for c in cs for dtype in dtypes
    }
    headline = max(ns), max(cs)
    return sorted(cases, key=lambda k: (not _is_headline(k, headline), -k.n, -(k.c or 0), OPS.index(k.op),
                                        k.dtype != "float32", k.B, MODES.index(k.mode)))


def _is_headline(case: Case, headline: tuple[int, int]) -> bool:
    return case.n == headline[0] and case.c in (None, headline[1])


def compile_order(cases: list[Case], device: str) -> list[Case]:
    """torch.compile cases, most interesting first: the headline shape, fwd+bwd, the goal size, then by B."""
    goal = GOAL_SIZE[device]
    headline = max(k.n for k in cases), max(k.c or 0 for k in cases)
    ops_first = ("six_head_bce", "six_head_asl", "decompose", "identical_map")
    return sorted(cases, key=lambda k: (not _is_headline(k, headline), -MODES.index(k.mode), k.B != goal, k.B,
                                        -k.n, -(k.c or 0), ops_first.index(k.op), k.dtype != "float32"))


def make_inputs(op: str, B: int, n: int, c: int | None, dtype: torch.dtype, device: torch.device) -> dict:
    """Positional arguments (without norm), the indices of the differentiable ones, upstream gradients."""
    gen = torch.Generator(device=device).manual_seed(B * 31 + n)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=gen)

    if op in PAIR_OPS:
        fa, fb = randn(B, n).relu_().to(dtype), randn(B, n).relu_().to(dtype)  # post-ReLU features
        grads = [randn(B, n).to(dtype) for _ in range(1 if op == "identical_map" else 4)]
        return {"args": [fa, fb], "leaves": [0, 1], "grads": grads}
    features = randn(B, n).relu_().to(dtype)
    weight = (randn(c, n) / n**0.5).to(dtype)
    bias = (randn(c) * 0.1).to(dtype)
    targets = (torch.rand(B, c, device=device, generator=gen) < 0.3).float()
    index_a = torch.randint(0, B, (B,), device=device, generator=gen)
    index_b = torch.randint(0, B, (B,), device=device, generator=gen)
    grads = [torch.rand(B, 6, device=device, generator=gen).to(reference.loss_dtype(dtype))]
    return {"args": [features, weight, bias, targets, index_a, index_b], "leaves": [0, 1, 2], "grads": grads}


def make_step(mode: str, impl: Callable, inputs: dict) -> Callable[[], object]:
    """One call of the case: the forward under no_grad, or forward + autograd.grad of the leaves."""
    if mode == "fwd":
        args = inputs["args"]

        def forward():
            with torch.no_grad():
                return impl(*args, NORM)

        return forward
    args = list(inputs["args"])
    for i in inputs["leaves"]:
        args[i] = args[i].detach().requires_grad_()
    leaves = [args[i] for i in inputs["leaves"]]

    def forward_backward():
        out = impl(*args, NORM)
        return torch.autograd.grad(out if isinstance(out, tuple) else (out,), leaves, inputs["grads"])

    return forward_backward


# ----------------------------------------------------------------------------- backends
_COMPILED: dict[str, Callable] = {}


def _compiled(op: str) -> Callable:
    if op not in _COMPILED:
        for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                      "accumulated_cache_size_limit"):  # one static graph per shape, dtype and mode
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 4096)
        _COMPILED[op] = torch.compile(_reference(op), dynamic=False)
    return _COMPILED[op]


def _reference(op: str) -> Callable:
    """The eager reference of op: reference.<op>, or for six_head_asl ASL's formula on the six heads."""
    if op == "six_head_asl":
        return functools.partial(reference.six_head_loss, **ASL)
    return getattr(reference, op)


def _package_api(backend: str) -> Callable[[str], Callable]:
    def for_op(op: str) -> Callable:
        # the indices are valid by construction: no host sync to check them
        if op == "six_head_bce":
            return lambda *args: indeed_ext.six_head_bce(*args, backend=backend, check_indices=False)
        if op == "six_head_asl":
            return lambda *args: indeed_ext.six_head_loss(*args, **ASL, backend=backend, check_indices=False)
        return lambda *args: getattr(indeed_ext, op)(*args, backend=backend)

    return for_op


def available_backends(device: torch.device, wanted: list[str] | None = None) -> tuple[dict, list[str]]:
    """{name: op -> callable} of the backends that run on device, and notes on those left out."""
    notes = []
    backends = {"eager": _reference, "compile": _compiled}
    if device.type == "cpu":
        backends["cpu"] = _package_api("cpu")
    else:
        if torch._C._dispatch_has_kernel_for_dispatch_key("indeed::decompose", "CUDA"):
            backends["cuda"] = _package_api("cuda")
        else:
            notes.append("cuda backend left out: indeed_ext was built without CUDA kernels (INDEED_CUDA)")
        try:
            from indeed_ext.triton import _common, ops  # noqa: F401  (ops registers torch.ops.indeed_triton)

            if _common.INTERPRETING:
                notes.append("triton backend left out: TRITON_INTERPRET is set (interpreter timings mean nothing)")
            else:
                backends["triton"] = _package_api("triton")
        except Exception as e:  # noqa: BLE001 (any import failure means: no triton backend)
            notes.append(f"triton backend left out: indeed_ext.triton does not import ({type(e).__name__}: {e})")
    if wanted:
        unknown = sorted(set(wanted) - {"eager", "compile", "cpu", "cuda", "triton"})
        if unknown:
            raise ValueError(f"unknown backends {unknown}")
        notes += [f"{name} backend not available on {device.type}" for name in wanted if name not in backends]
        backends = {name: make for name, make in backends.items() if name in wanted}
    return backends, notes


# ----------------------------------------------------------------------------- timers and memory
def make_timer(device: torch.device) -> tuple[Callable[[Callable], float], str]:
    """(seconds per call of fn, median with warm-up excluded; a description of the timer)."""
    if device.type == "cpu":
        # Like do_bench's L2 flush: the inputs come from memory, not from the last-level cache
        # (the roofline counts memory traffic), by writing twice the cache before each call.
        flush = torch.empty(2 * _last_level_cache_bytes(), dtype=torch.uint8)

        def measure_cpu(fn) -> float:
            for _ in range(CPU_WARMUP):
                fn()
            times: list[float] = []
            while len(times) < CPU_ROUNDS or (sum(times) < CPU_MIN_SECONDS and len(times) < CPU_MAX_ROUNDS):
                flush.zero_()
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        return measure_cpu, (f"time.perf_counter, median of >= {CPU_ROUNDS} calls (more while under "
                             f"{CPU_MIN_SECONDS:g} s, at most {CPU_MAX_ROUNDS}) after {CPU_WARMUP} warm-up calls, "
                             f"{flush.numel() >> 20} MiB written between calls to flush the caches")
    try:
        import triton.testing

        def measure_do_bench(fn) -> float:
            return triton.testing.do_bench(fn, warmup=GPU_WARMUP_MS, rep=GPU_REP_MS, return_mode="median") * 1e-3

        return measure_do_bench, (f"triton.testing.do_bench (warmup {GPU_WARMUP_MS} ms, rep {GPU_REP_MS} ms), "
                                  "median, L2 flushed between calls")
    except ImportError:
        def measure_events(fn) -> float:
            fn()
            times = []
            for _ in range(20):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3)
            return statistics.median(times)

        return measure_events, "CUDA events, median of 20 calls after one warm-up call (triton not importable)"


def _last_level_cache_bytes() -> int:
    """The largest CPU cache (sysfs), 32 MiB where it cannot be read."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text))
    return max(sizes, default=32 << 20)


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def peak_memory_bytes(fn: Callable, device: torch.device) -> int | None:
    """Peak memory of one call above the memory in use before it; None where it cannot be read."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        try:  # hand freed heap pages back, so that the call's allocations show in the RSS
            ctypes.CDLL(None).malloc_trim(0)
        except AttributeError:
            pass
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # VmHWM := VmRSS
        before = _proc_status_bytes("VmRSS")
        fn()
        return max(0, _proc_status_bytes("VmHWM") - before)
    except OSError:
        return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_error(impl: Callable, args: list, expected: tuple) -> float:
    """Largest |out - eager| relative to max |eager| over the outputs (a broken kernel shows here)."""
    with torch.no_grad():
        out = impl(*args, NORM)
    outs = out if isinstance(out, tuple) else (out,)
    return max(float((o.double() - e.double()).abs().max() / e.double().abs().max().clamp_min(1e-30))
               for o, e in zip(outs, expected))


# ----------------------------------------------------------------------------- machine
def machine_info(device: torch.device, timer_name: str) -> dict:
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "timer": timer_name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
        info.update(name=f"{model}, {os.cpu_count()} logical CPUs", load_average_start=os.getloadavg())
    return info


# ----------------------------------------------------------------------------- the run
def run(cases: list[Case], device: torch.device, backend_names: list[str] | None = None, budget_s: float = 400.0,
        compile_cases: int | None = None, on_update: Callable[[dict], None] | None = None) -> dict:
    """Times every (case, backend) within budget_s; returns {"machine", "rows", "notes"}.

    on_update(report) is called after each measurement (for a partial record if the run is killed)."""
    deadline = time.monotonic() + budget_s
    backends, notes = available_backends(device, backend_names)
    measure, timer_name = make_timer(device)
    machine = machine_info(device, timer_name)
    machine["backends"] = list(backends)
    report = {"machine": machine, "rows": [], "notes": notes}
    dtypes = sorted({case.dtype for case in cases})
    machine.update(roofline.measure_machine(device, [getattr(torch, d) for d in dtypes], measure))
    log(f"{machine['name']}: copy {machine['copy_bytes_per_s'] / 1e9:.1f} GB/s, GEMM "
        + ", ".join(f"{d} {r / 1e12:.2f} TFLOP/s" for d, r in machine["gemm_flops_per_s"].items()))
    rows: dict[tuple[Case, str], dict] = {}
    for case in cases:
        for name in backends:
            rows[(case, name)] = new_row(case, name, machine)
    report["rows"] = list(rows.values())

    def updated() -> None:
        if on_update:
            on_update(report)

    def time_one(case: Case, name: str, inputs: dict, expected: tuple | None) -> None:
        row = rows[(case, name)]
        impl = backends[name](case.op)
        try:
            start = time.monotonic()
            step = make_step(case.mode, impl, inputs)
            step()  # compiles, for torch.compile
            _synchronize(device)
            row["first_call_s"] = round(time.monotonic() - start, 2)
            row["ms"] = measure(step) * 1e3
            peak = peak_memory_bytes(step, device)
            row["peak_mb"] = None if peak is None else peak / 1e6
            if expected is not None and name not in REFERENCE_BACKENDS:
                row["rel_err"] = forward_error(impl, inputs["args"], expected)
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 (recorded; the other cases still run)
            fail(row, e)
        derive(row, machine)
        log(f"{case.label} {name}: " + (f"{row['ms']:.3f} ms" if row["status"] == "ok" else row["detail"]))
        updated()

    def skip(case: Case, name: str, why: str) -> None:
        rows[(case, name)].update(status="skipped", detail=why)

    def fail(row: dict, error: Exception) -> None:
        first_line = str(error).splitlines()[0][:200] if str(error) else ""
        row["status"], row["detail"] = "error", f"{type(error).__name__}: {first_line}"
        try:
            _synchronize(device)
        except Exception:  # noqa: BLE001 (a sticky CUDA error: it is in the row already)
            pass

    def inputs_or_fail(cases_needing: list[Case], names: list[str], *args) -> dict | None:
        try:
            return make_inputs(*args)
        except Exception as e:  # noqa: BLE001 (e.g. out of memory, or a CUDA error left by an earlier case)
            for case in cases_needing:
                for name in names:
                    fail(rows[(case, name)], e)
            updated()
            return None

    # 1. every backend but torch.compile, one set of inputs per (op, shape, dtype)
    other_deadline = deadline - (COMPILE_SHARE * budget_s if "compile" in backends and compile_cases != 0 else 0.0)
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault((case.op, case.B, case.n, case.c, case.dtype), []).append(case)
    for (op, B, n, c, dtype), group in groups.items():
        names = [name for name in backends if name != "compile"]
        if time.monotonic() > other_deadline:
            for case in group:
                for name in names:
                    skip(case, name, "time budget")
            continue
        inputs = inputs_or_fail(group, names, op, B, n, c, getattr(torch, dtype), device)
        if inputs is None:
            continue
        try:
            with torch.no_grad():
                out = _reference(op)(*inputs["args"], NORM)
            expected = out if isinstance(out, tuple) else (out,)
        except Exception:  # noqa: BLE001 (eager's own row records the error; no accuracy check then)
            expected = None
        for case in group:
            for name in names:
                time_one(case, name, inputs, expected)
        del inputs, expected
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # 2. torch.compile, most interesting cases first, while the budget lasts
    if "compile" in backends:
        first_calls: list[float] = []
        for count, case in enumerate(compile_order(cases, device.type)):
            expected_s = 1.5 * max(first_calls, default=30.0 if device.type == "cpu" else 10.0)
            if compile_cases is not None and count >= compile_cases:
                skip(case, "compile", f"--compile-cases {compile_cases}")
            elif time.monotonic() + expected_s > deadline:
                skip(case, "compile", "time budget (compiling is the slow part)")
            else:
                inputs = inputs_or_fail([case], ["compile"], case.op, case.B, case.n, case.c,
                                        getattr(torch, case.dtype), device)
                if inputs is None:
                    continue
                time_one(case, "compile", inputs, None)
                first_calls.append(rows[(case, "compile")].get("first_call_s") or 0.0)
                del inputs
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        updated()
    if device.type == "cpu":
        machine["load_average_end"] = os.getloadavg()
    return report


def new_row(case: Case, backend: str, machine: dict) -> dict:
    row = {**asdict(case), "P": case.B, "backend": backend, "status": "not run", "detail": "", "ms": None,
           "peak_mb": None, "first_call_s": None, "rel_err": None}
    derive(row, machine)
    return row


def derive(row: dict, machine: dict) -> None:
    """The roofline columns of a row: minimum MB and GFLOP, roofline time and bound, % of roofline."""
    dtype = getattr(torch, row["dtype"])
    args = (row["op"], row["mode"], row["B"], row["n"], row["c"] or 0, dtype)
    work = roofline.minimum_work(*args)
    gemm_rate = roofline.gemm_rate_for(machine, dtype)
    seconds, bound = roofline.roofline_seconds(work, machine["copy_bytes_per_s"], gemm_rate)
    row.update(min_mb=work.bytes / 1e6, gflop=work.flops / 1e9, roofline_us=seconds * 1e6, bound=bound,
               roofline_pct=100 * seconds / (row["ms"] * 1e-3) if row["ms"] else None)
    if row["backend"] == "cuda":
        row["kernel_mb"] = roofline.cuda_kernel_bytes(*args) / 1e6


# ----------------------------------------------------------------------------- where the time goes
PROFILE_CALLS = 5


def profile_cases(cases: list[Case], device: torch.device) -> list[Case]:
    """The goal cases in the selection: fwd+bwd of the six-head ops and decompose at the goal size, n = 2048, c = 80."""
    return [k for k in cases if k.mode == "fwd+bwd" and k.op != "identical_map" and k.B == GOAL_SIZE[device.type]
            and k.n == 2048 and k.c in (None, 80)]


def profile(report: dict, cases: list[Case], device: torch.device, out_dir: Path) -> None:
    """torch.profiler over PROFILE_CALLS calls of each measured (goal case, backend): per call, the
    device busy time and the number of device activities (kernels, copies, memsets) against the
    timed median, the aten ops the host dispatched, and the top ops in a table per case and backend,
    written to out_dir/profile_<device>_<op>_<dtype>_B<B>_<backend>.txt. Adds report["profiles"]."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    sort_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    timed = {(_case_key(r), r["backend"]): r for r in report["rows"] if r["status"] == "ok"}
    report["profiles"] = []
    for case in cases:
        key = _case_key(asdict(case))
        inputs = make_inputs(case.op, case.B, case.n, case.c, getattr(torch, case.dtype), device)
        for name, make_impl in available_backends(device, report["machine"]["backends"])[0].items():
            if (key, name) not in timed:
                continue
            try:
                step = make_step(case.mode, make_impl(case.op), inputs)
                step()
                _synchronize(device)
                with torch_profile(activities=activities) as prof:
                    for _ in range(PROFILE_CALLS):
                        step()
                    _synchronize(device)
                averages = prof.key_averages()
                # self time per op name: the device activities' own durations on GPU (annotations
                # left out: they span other activities), the ops' self CPU time on CPU
                self_us: collections.Counter = collections.Counter()
                if on_gpu:
                    for e in prof.events():
                        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
                            self_us[e.name] += e.time_range.elapsed_us()
                else:
                    for a in averages:
                        self_us[a.key] += a.self_cpu_time_total
                top_name, top_us = self_us.most_common(1)[0] if self_us else ("-", 0.0)
                total_us = sum(self_us.values())
                summary = {
                    "case": case.label, "backend": name, "timed_ms": timed[(key, name)]["ms"],
                    "device_busy_ms": total_us / PROFILE_CALLS / 1e3 if on_gpu else None,
                    "device_activities": sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                                             and not getattr(e, "is_user_annotation", False)) / PROFILE_CALLS,
                    "aten_ops": sum(a.count for a in averages if a.key.startswith("aten::")) / PROFILE_CALLS,
                    "top_op": top_name, "top_op_share": top_us / max(total_us, 1e-9),
                }
                table = averages.table(sort_by=sort_key, row_limit=25)
            except Exception as e:  # noqa: BLE001 (a failed profile leaves the timings as they are)
                report["notes"].append(f"profile of {case.label} {name} failed: {type(e).__name__}: {e}")
                continue
            report["profiles"].append(summary)
            path = out_dir / f"profile_{device.type}_{case.op}_{case.dtype}_B{case.B}_{name}.txt"
            path.write_text(f"{case.label} {name}: torch.profiler over {PROFILE_CALLS} calls\n"
                            f"{json.dumps(summary, indent=1)}\n\n{table}\n")
            log(f"profile {case.label} {name}: {path.name}")
        del inputs


def profile_markdown(profiles: list[dict]) -> list[str]:
    if not profiles:
        return []
    lines = ["", "### Where the time goes (torch.profiler, per call)", "",
             "Device busy: the summed self time of the device activities (kernels, copies, memsets); "
             "far below the timed median means the host (Python, autograd, dispatch, launches) sets the "
             "time. aten ops: every level of nesting. Top op: the largest self time (device on GPU, CPU on CPU).",
             "", "| case | backend | timed ms | device busy ms | device activities | aten ops | top op (share) |",
             "|---|---|---|---|---|---|---|"]
    for p in profiles:
        lines.append(f"| {p['case']} | {p['backend']} | {p['timed_ms']:.3f} | {_fmt(p['device_busy_ms'], '.3f')} | "
                     f"{p['device_activities']:.0f} | {p['aten_ops']:.0f} | {p['top_op'][:60]} ({100 * p['top_op_share']:.0f}%) |")
    return lines


# ----------------------------------------------------------------------------- results
CSV_FIELDS = ("op", "mode", "dtype", "B", "P", "n", "c", "backend", "status", "ms", "speedup_vs_eager",
              "speedup_vs_compile", "peak_mb", "min_mb", "gflop", "roofline_us", "bound", "roofline_pct",
              "kernel_mb", "first_call_s", "rel_err", "detail")


def _case_key(row: dict) -> tuple:
    return row["op"], row["mode"], row["dtype"], row["n"], row["c"], row["B"]


def speedups(rows: list[dict]) -> None:
    """Adds speedup_vs_eager and speedup_vs_compile (ratios of medians of the same case and run)."""
    ms = {(_case_key(r), r["backend"]): r["ms"] for r in rows if r["ms"]}
    for row in rows:
        for base in REFERENCE_BACKENDS:
            base_ms = ms.get((_case_key(row), base))
            comparable = base_ms and row["ms"] and row["backend"] != base
            row[f"speedup_vs_{base}"] = base_ms / row["ms"] if comparable else None


def ordered(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (OPS.index(r["op"]), MODES.index(r["mode"]), r["dtype"] != "float32",
                                       -r["n"], -(r["c"] or 0), r["B"]))


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in ordered(rows):
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def machine_lines(machine: dict) -> list[str]:
    versions = f"torch {machine['torch']}" + (f", CUDA {machine['cuda']}" if machine.get("cuda") else "")
    versions += f", triton {machine['triton']}" if machine.get("triton") else ""
    lines = [f"- Machine: {machine['name']}" + (f" (sm_{machine['capability'].replace('.', '')})"
                                                 if machine.get("capability") else ""),
             f"- {versions}; {machine['threads']} torch threads (OMP_WAIT_POLICY={machine.get('omp_wait_policy')}); "
             f"date {machine['date']}",
             f"- Timer: {machine['timer']}"]
    if "load_average_start" in machine:
        load = "/".join(f"{x:.2f}" for x in machine["load_average_start"])
        end = "/".join(f"{x:.2f}" for x in machine.get("load_average_end", ()))
        lines.append(f"- Load average (1/5/15 min) at start {load}" + (f", at end {end}" if end else ""))
        if machine["threads"] > 1 and machine["load_average_start"][0] >= 1.5:  # this run itself adds about 1
            lines.append("- The machine was shared: with other runnable threads on the cores, each parallel region "
                         "of a multi-threaded call can wait for a descheduled thread, which hits ops with many "
                         "regions (eager) hardest. Compare ratios within one run; --threads 1 has no such waits.")
    if machine.get("allow_tf32") is not None:
        lines.append(f"- TF32 matmul: {machine['allow_tf32']}")
    gemm = ", ".join(f"{d} {r / 1e12:.3g} TFLOP/s" for d, r in machine["gemm_flops_per_s"].items())
    lines.append(f"- Measured in this run: copy bandwidth {machine['copy_bytes_per_s'] / 1e9:.1f} GB/s "
                 f"(read + write), GEMM {gemm}")
    return lines


def markdown(report: dict) -> str:
    """Per op: medians and speed-ups, then the roofline and peak memory, then goals and skipped cases."""
    rows = report["rows"]
    speedups(rows)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    ours = [b for b in backends if b not in REFERENCE_BACKENDS]
    by_case: dict[tuple, dict[str, dict]] = {}
    for row in ordered(rows):
        by_case.setdefault(_case_key(row), {})[row["backend"]] = row
    lines = ["Conditions:", "", *machine_lines(report["machine"]), "",
             "Times are medians in ms of one call (fwd: forward under no_grad; fwd+bwd: forward and "
             "autograd.grad). ×eager, ×compile: speed-up of the backend over reference eager and "
             "torch.compile(reference) in this run. Roofline: the minimum bytes and GEMM FLOPs of the "
             "case (benchmarks/roofline.py) at the measured copy bandwidth and GEMM rate; % = roofline "
             "time / measured time. Peak MB: memory allocated by one call above what was in use before."]
    for op in OPS:
        cases = {key: per for key, per in by_case.items() if key[0] == op}
        if not cases:
            continue
        shape = "n | c | B=P" if op in SIX_HEAD_OPS else "n | B=P"
        speed_cols = [f"{b} ×{base}" for b in ours for base in ("eager", "compile") if base in backends]
        lines += ["", f"### {op}", "", f"| mode | dtype | {shape} | " + " | ".join(f"{b} ms" for b in backends)
                  + "".join(f" | {c}" for c in speed_cols) + " |",
                  "|---" * (4 + (op in SIX_HEAD_OPS) + len(backends) + len(speed_cols)) + "|"]
        for (_, mode, dtype, n, c, B), per in cases.items():
            cells = [mode, dtype, str(n)] + ([str(c)] if op in SIX_HEAD_OPS else []) + [str(B)]
            cells += [_fmt(per[b]["ms"], ".3f", per[b]["status"] if per[b]["status"] != "ok" else "-") for b in backends]
            cells += [_fmt(per[b][f"speedup_vs_{base}"], ".2f") for b in ours for base in ("eager", "compile")
                      if base in backends]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"| mode | dtype | {shape} | min MB | GFLOP | roofline µs (bound) | "
                  + " | ".join(f"{b} % roofline" for b in backends) + " | "
                  + " | ".join(f"{b} peak MB" for b in backends) + " |",
                  "|---" * (7 + (op in SIX_HEAD_OPS) + 2 * len(backends)) + "|"]
        for (_, mode, dtype, n, c, B), per in cases.items():
            first = next(iter(per.values()))
            cells = [mode, dtype, str(n)] + ([str(c)] if op in SIX_HEAD_OPS else []) + [str(B)]
            cells += [f"{first['min_mb']:.1f}", f"{first['gflop']:.3g}", f"{first['roofline_us']:.0f} ({first['bound']})"]
            cells += [_fmt(per[b]["roofline_pct"], ".1f") for b in backends]
            cells += [_fmt(per[b]["peak_mb"], ".1f") for b in backends]
            lines.append("| " + " | ".join(cells) + " |")
    lines += profile_markdown(report.get("profiles", []))
    goal_rows = goals(rows)
    if goal_rows:
        lines += ["", "### Goals", "", "| goal | value | met |", "|---|---|---|"]
        lines += [f"| {g['goal']} | {g['value'] or '-'} | {'-' if g['met'] is None else ('yes' if g['met'] else 'NO')} |"
                  for g in goal_rows]
    problems = [r for r in ordered(rows) if r["status"] not in ("ok",)]
    wrong = [r for r in ordered(rows) if r["rel_err"] is not None and r["rel_err"] > 5e-2]
    if problems or wrong or report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
        skipped: dict[tuple, list[str]] = {}
        for r in problems:
            skipped.setdefault((r["backend"], r["status"], r["detail"]), []).append(
                f"{r['op']} {r['mode']} {r['dtype']} n={r['n']}" + (f" c={r['c']}" if r["c"] else "") + f" B={r['B']}")
        lines += [f"- {backend} {status}, {detail}: " + ("; ".join(which) if len(which) <= 8 else
                  f"{len(which)} cases (the CSV lists them), among them {'; '.join(which[:3])}")
                  for (backend, status, detail), which in skipped.items()]
        lines += [f"- {r['op']} {r['mode']} {r['dtype']} B={r['B']} {r['backend']}: forward differs from eager by "
                  f"{r['rel_err']:.2e} (relative to the largest value)" for r in wrong]
    return "\n".join(lines) + "\n"


# The issues' speed-up goals, fwd+bwd at n = 2048, c = 80: (op, device, B, dtypes, ((base, target), ...)).
GOALS = (
    ("six_head_bce", "cpu", 1024, ("float32",), (("eager", 3.0), ("compile", 1.5))),
    ("six_head_asl", "cpu", 1024, ("float32",), (("eager", 3.0), ("compile", 1.5))),  # issue 19
    ("decompose", "cpu", 1024, ("float32",), (("eager", 4.0),)),
    ("six_head_bce", "cuda", 4096, ("float32", "bfloat16"), (("eager", 10.0), ("compile", 2.0))),
)


def goals(rows: list[dict]) -> list[dict]:
    """Speed-up goals (fwd+bwd, n = 2048, c = 80) and, on GPU, the roofline goals of the issues:
    six_head_bce bfloat16 at B = 4096 >= 60 % of its roofline, decompose within 1.5x of the copy
    time of its bytes (B >= 4096, both dtypes)."""
    speedups(rows)
    out = []

    def add(goal: str, value: float | None, unit: str, met: Callable[[float], bool]) -> None:
        out.append({"goal": goal, "value": None if value is None else f"{value:.2f}{unit}",
                    "met": None if value is None else met(value)})

    for row in ordered(rows):
        if (row["mode"] != "fwd+bwd" or row["n"] != 2048 or row["c"] not in (None, 80)
                or row["backend"] in REFERENCE_BACKENDS):
            continue
        device = "cpu" if row["backend"] == "cpu" else "cuda"
        name = f"{row['op']} fwd+bwd {row['dtype']} B={row['B']} {row['backend']}"
        for op, goal_device, B, dtypes, targets in GOALS:
            if (row["op"], device, row["B"]) == (op, goal_device, B) and row["dtype"] in dtypes:
                for base, target in targets:
                    add(f"{name} >= {target:g}x {base}", row[f"speedup_vs_{base}"], "x", lambda v, t=target: v >= t)
        if device == "cuda" and row["op"] == "six_head_bce" and row["B"] == 4096 and row["dtype"] == "bfloat16":
            add(f"{name} >= 60% of roofline", row["roofline_pct"], "%", lambda v: v >= 60)
        if device == "cuda" and row["op"] == "decompose" and row["B"] >= 4096:
            # decompose has no GEMM: its roofline time is the copy time of its minimum bytes
            slowdown = row["ms"] * 1e3 / row["roofline_us"] if row["ms"] else None
            add(f"{name} <= 1.5x copy time of its bytes", slowdown, "x", lambda v: v <= 1.5)
    return out


def plot(report: dict, out_dir: Path, stem: str) -> list[Path]:
    """One figure per op: speed-up over eager against B, per backend, for each mode and dtype, at
    the largest n and c measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = report["rows"]
    speedups(rows)
    paths = []
    for op in OPS:
        op_rows = [r for r in rows if r["op"] == op and r["speedup_vs_eager"]]
        if not op_rows:
            continue
        n = max(r["n"] for r in op_rows)
        c = max((r["c"] for r in op_rows if r["n"] == n), default=None, key=lambda v: v or 0)
        op_rows = [r for r in op_rows if r["n"] == n and r["c"] == c]
        modes = [m for m in MODES if any(r["mode"] == m for r in op_rows)]
        dtypes = sorted({r["dtype"] for r in op_rows}, key=lambda d: d != "float32")
        fig, axes = plt.subplots(len(modes), len(dtypes), figsize=(5 * len(dtypes), 3.6 * len(modes)), squeeze=False)
        for (i, mode), (j, dtype) in ((im, jd) for im in enumerate(modes) for jd in enumerate(dtypes)):
            ax = axes[i][j]
            for backend in dict.fromkeys(r["backend"] for r in op_rows):
                points = sorted((r["B"], r["speedup_vs_eager"]) for r in op_rows
                                if (r["mode"], r["dtype"], r["backend"]) == (mode, dtype, backend))
                if points:
                    ax.plot(*zip(*points), marker="o", label=backend)
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")  # eager
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%gx"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            sizes = sorted({r["B"] for r in op_rows})
            ax.set_xticks(sizes, [str(B) for B in sizes])
            ax.set_xlabel("B = P")
            ax.set_ylabel("speed-up over eager")
            ax.set_title(f"{mode}, {dtype}")
            ax.legend(fontsize=8)
        shape = f"n={n}" + (f", c={c}" if c else "")
        fig.suptitle(f"{op} on {report['machine']['name']} ({shape})", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{stem}_{op}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_outputs(report: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    speedups(report["rows"])
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.csv", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=1))
    write_csv(report["rows"], paths[1])
    paths[2].write_text(f"# indeed ops on {report['machine']['name']}\n\n" + markdown(report))
    try:
        paths += plot(report, out_dir, stem)
    except ImportError:
        log("plots skipped: matplotlib is not installed")
    return paths


# ----------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", choices=tuple(PRESETS), default="small")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--sizes", nargs="+", type=int, help="B = P values (default: the preset's)")
    p.add_argument("--n", nargs="+", type=int, help="feature counts (default: the preset's)")
    p.add_argument("--c", nargs="+", type=int, help="class counts of the six-head ops (default: the preset's)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16", "float64"))
    p.add_argument("--backends", nargs="+", help="a subset of eager compile cpu cuda triton (default: all available)")
    p.add_argument("--budget", type=float, help="seconds for the whole run (default: small 270, full 340)")
    p.add_argument("--compile-cases", type=int, help="at most this many torch.compile cases")
    p.add_argument("--profile", action="store_true",
                   help="after the timings, torch.profiler of the goal cases (fwd+bwd, n = 2048, c = 80, "
                        "B = 1024 on CPU, 4096 on GPU) on every backend")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, one per core)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return p


def cases_from(args: argparse.Namespace) -> list[Case]:
    preset = PRESETS[args.preset]
    return select_cases(args.ops, args.modes, args.sizes or preset["sizes"], args.n or preset["n"],
                        args.c or preset["c"], args.dtypes or preset["dtypes"])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    cases = cases_from(args)
    budget = args.budget or DEFAULT_BUDGET_S[args.preset]
    stem = f"ops_{device.type}"
    log(f"{len(cases)} cases on {device.type}, budget {budget:.0f} s, results in {args.out}")
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(cases, device, args.backends, budget, args.compile_cases,
                 on_update=lambda r: (args.out / f"{stem}.json").write_text(json.dumps(r, indent=1)))
    if args.profile:
        profile(report, profile_cases(cases, device), device, args.out)
    paths = write_outputs(report, args.out, stem)
    print("\n" + paths[2].read_text(), flush=True)
    log(f"done in {time.monotonic() - start:.0f} s: " + ", ".join(str(p) for p in paths))
    return 0


# ----------------------------------------------------------------------------- pytest-benchmark
# python -m pytest benchmarks/bench_ops.py --benchmark-only times the cases of
# INDEED_BENCH_ARGS (options of the command line above; default: the six-head ops and decompose
# fwd+bwd, float32, B = 1024, n = 2048, c = 80 on CPU, the goal cases) with pytest-benchmark's
# timer; benchmarks/conftest.py prints the ratios of the medians at the end of the session.
PYTEST_DEFAULT_ARGS = "--ops six_head_bce six_head_asl decompose --modes fwd+bwd --sizes 1024"
PYTEST_ROUNDS, PYTEST_WARMUP = 10, 2


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    args = parser().parse_args(os.environ.get("INDEED_BENCH_ARGS", PYTEST_DEFAULT_ARGS).split())
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backends, _ = available_backends(device, args.backends)
    params = [(case, name, device) for case in cases_from(args) for name in backends]
    metafunc.parametrize(("bench_case", "backend", "device"), params,
                         ids=[f"{case.label.replace(' ', '-')}-{name}" for case, name, _ in params])


_PYTEST_INPUTS: dict[tuple, dict] = {}


def test_bench_ops(benchmark, record_median, bench_case: Case, backend: str, device: torch.device):
    key = (bench_case.op, bench_case.B, bench_case.n, bench_case.c, bench_case.dtype)
    if key not in _PYTEST_INPUTS:  # one set of inputs per shape, shared by its backends
        _PYTEST_INPUTS.clear()
        _PYTEST_INPUTS[key] = make_inputs(*key[:4], getattr(torch, bench_case.dtype), device)
    backends, _ = available_backends(device, [backend])
    step = make_step(bench_case.mode, backends[backend](bench_case.op), _PYTEST_INPUTS[key])

    def synchronized_step():
        step()
        _synchronize(device)

    benchmark.group = bench_case.label
    benchmark.pedantic(synchronized_step, rounds=PYTEST_ROUNDS, warmup_rounds=PYTEST_WARMUP)
    record_median(benchmark, benchmark.group, backend)


if __name__ == "__main__":
    sys.exit(main())
