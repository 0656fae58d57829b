#!/usr/bin/env python3
"""The GPU check of indeed-ext in one command: build, tests, memcheck, timings.

    python benchmarks/gpu_check.py OUT_DIR          (or: benchmarks/gpu_check.sh OUT_DIR)

Steps, each in a subprocess with a time limit; a failing step does not stop the others:
  build     python setup.py build_ext --inplace with INDEED_CUDA=1 and TORCH_CUDA_ARCH_LIST of the GPU
  tests     pytest tests/test_cuda_ops.py tests/test_triton_ops.py (those present), INDEED_EXPECT_CUDA=1
  memcheck  compute-sanitizer --tool memcheck on forward + backward of every op at small sizes, with
            PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that out-of-bounds accesses reach allocation ends
  bench     forward + backward median times of six_head_bce and decompose for the eager reference,
            torch.compile(reference), the CUDA kernels and the Triton kernels (if indeed_ext.triton.ops
            imports); B = P in {256, 4096, 16384}, n = 2048, c = 80, float32 and bfloat16; the measured
            device-to-device copy bandwidth and each case's time against the bytes its kernels move.
Writes OUT_DIR/results.json, OUT_DIR/results.md and one log per step. Uses only the standard library,
torch and (optionally) triton. Sized to finish in under 8 minutes on one H100: the timings without
torch.compile come first, then torch.compile per shape in order of interest (B = 4096, 256, 16384)
while the time budget lasts; the tables mark what was skipped.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 470.0  # all steps together, under 8 minutes
STEP_LIMITS_S = {"build": 240.0, "tests": 150.0, "memcheck": 120.0}
BENCH_MIN_S = 60.0  # kept for the timings whatever the earlier steps took
SIZES = (256, 4096, 16384)
COMPILE_ORDER = (4096, 256, 16384)
N_FEATURES, N_CLASSES = 2048, 80
DTYPES = ("float32", "bfloat16")
OPS = ("six_head_bce", "decompose")
IMPLS = ("eager", "compile", "cuda", "triton")

START = time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu_check {time.monotonic() - START:6.1f}s] {msg}", flush=True)


def remaining() -> float:
    return BUDGET_S - (time.monotonic() - START)


# ----------------------------------------------------------------------------- steps
def run_step(name: str, cmd: list[str], out_dir: Path, limit: float, env: dict | None = None) -> dict:
    """Runs cmd from the repository root, echoing and logging its output; kills it after `limit` s."""
    limit = max(1.0, limit)
    log(f"{name}: {' '.join(cmd)}  (limit {limit:.0f}s)")
    start = time.monotonic()
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    tail: collections.deque[str] = collections.deque(maxlen=60)
    killed = threading.Event()
    with open(out_dir / f"{name}.log", "w") as log_file:
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", start_new_session=True)
        except OSError as e:
            return {"name": name, "status": "failed", "seconds": 0.0, "detail": f"could not start: {e}", "tail": ""}

        def kill() -> None:
            killed.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group
            except ProcessLookupError:
                pass

        timer = threading.Timer(limit, kill)
        timer.start()
        for line in proc.stdout:
            sys.stdout.write(line)
            log_file.write(line)
            tail.append(line)
        rc = proc.wait()
        timer.cancel()
    seconds = time.monotonic() - start
    status = "timeout" if killed.is_set() else ("passed" if rc == 0 else "failed")
    log(f"{name}: {status} (rc {rc}, {seconds:.0f}s)")
    last_line = next((line.strip() for line in reversed(tail) if line.strip()), "")
    detail = "" if status == "passed" else last_line[:200]
    return {"name": name, "status": status, "rc": rc, "seconds": round(seconds, 1), "detail": detail, "tail": "".join(tail),
            "log": str(out_dir / f"{name}.log")}


def step_output(result: dict) -> str:
    return Path(result["log"]).read_text(errors="replace") if result.get("log") else ""


def gpu_arch() -> str:
    import torch

    if not torch.cuda.is_available():
        return "9.0"
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def step_build(out_dir: Path) -> dict:
    env = {"INDEED_CUDA": "1", "TORCH_CUDA_ARCH_LIST": gpu_arch(), "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count()))}
    result = run_step("build", [sys.executable, "setup.py", "build_ext", "--inplace"], out_dir,
                      min(STEP_LIMITS_S["build"], remaining() - BENCH_MIN_S), env)
    result["detail"] = f"TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}; {result['detail']}".rstrip("; ")
    return result


def step_tests(out_dir: Path) -> dict:
    files = [f for f in ("tests/test_cuda_ops.py", "tests/test_triton_ops.py") if (ROOT / f).exists()]
    missing = sorted({"tests/test_cuda_ops.py", "tests/test_triton_ops.py"} - set(files))
    if not files:
        return {"name": "tests", "status": "failed", "seconds": 0.0, "detail": "no test files found", "tail": ""}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"name": "tests", "status": "failed", "seconds": 0.0, "detail": "pytest is not installed", "tail": ""}
    result = run_step("tests", cmd, out_dir, min(STEP_LIMITS_S["tests"], remaining() - BENCH_MIN_S),
                      {"INDEED_EXPECT_CUDA": "1"})
    counts = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", result["tail"])
    result["detail"] = ", ".join(f"{k} {v}" for k, v in counts[-6:]) or result["detail"]
    result["detail"] += f"; missing {', '.join(missing)}" if missing else ""
    return result


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"] + sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for root in roots:
        for candidate in (Path(root) / "bin" / "compute-sanitizer", Path(root) / "compute-sanitizer" / "compute-sanitizer"):
            if root and candidate.exists():
                return str(candidate)
    return None


def step_memcheck(out_dir: Path) -> dict:
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return {"name": "memcheck", "status": "failed", "seconds": 0.0, "detail": "compute-sanitizer not found", "tail": ""}
    cmd = [sanitizer, "--tool", "memcheck", "--error-exitcode", "1", "--print-limit", "20",
           sys.executable, str(Path(__file__).resolve()), "--memcheck-case"]
    result = run_step("memcheck", cmd, out_dir, min(STEP_LIMITS_S["memcheck"], remaining() - BENCH_MIN_S),
                      {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    output = step_output(result)
    summary = re.findall(r"ERROR SUMMARY: \d+ errors?", output)
    done = "memcheck case finished" in output
    if result["status"] == "passed" and not done:
        result["status"] = "failed"
    result["detail"] = (summary[-1] if summary else "no error summary") + ("" if done else "; the case did not finish")
    return result


def step_bench(out_dir: Path) -> dict:
    bench_json = out_dir / "bench.json"
    limit = max(remaining(), BENCH_MIN_S)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bench", str(bench_json), "--seconds", str(limit - 15)]
    result = run_step("bench", cmd, out_dir, limit)
    result["bench"] = json.loads(bench_json.read_text()) if bench_json.exists() else None
    if result["bench"] is None and result["status"] == "passed":
        result["status"] = "failed"
    return result


# ----------------------------------------------------------------------------- child: memcheck case
def memcheck_case() -> None:
    """Forward + backward of every op at small sizes: vector and scalar loads, several tiles, P = 0.
    float16 takes the code paths of bfloat16 (8-element packs) and is left out to save time."""
    sys.path.insert(0, str(ROOT))
    import torch

    import indeed_ext  # noqa: F401

    ops = torch.ops.indeed
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for rows, n in ((3, 64), (5, 37), (2, 8200), (1, 1)):
            for norm in ("minmax", "l2"):
                fa = torch.randn(rows, n, device="cuda", dtype=dtype, generator=gen).relu_().requires_grad_()
                fb = torch.randn(rows, n, device="cuda", dtype=dtype, generator=gen).requires_grad_()
                for op in (ops.identical_map, ops.decompose):
                    out = op(fa, fb, norm, 1e-12)
                    outs = out if isinstance(out, tuple) else (out,)
                    torch.autograd.grad(outs, (fa, fb), [torch.randn_like(o) for o in outs])
        for B, P, n, c in ((8, 16, 64, 5), (5, 7, 33, 3), (4, 0, 16, 2)):
            for norm in ("minmax", "l2"):
                features = torch.randn(B, n, device="cuda", dtype=dtype, generator=gen).relu_().requires_grad_()
                weight = torch.randn(c, n, device="cuda", dtype=dtype, generator=gen).requires_grad_()
                bias = torch.randn(c, device="cuda", dtype=dtype, generator=gen).requires_grad_()
                targets = (torch.rand(B, c, device="cuda", generator=gen) < 0.3).float()
                index_a = torch.randint(0, B, (P,), device="cuda", generator=gen)
                index_b = torch.randint(0, B, (P,), device="cuda", generator=gen)
                loss = ops.six_head_bce(features, weight, bias, targets, index_a, index_b, norm, 1e-12)
                torch.autograd.grad(loss, (features, weight, bias), torch.rand_like(loss))
    torch.cuda.synchronize()
    print("memcheck case finished", flush=True)


# ----------------------------------------------------------------------------- child: timings
def bytes_moved(op: str, rows: int, elem: int, acc: int) -> int:
    """The bytes the CUDA kernels move for forward + backward (models in csrc/cuda/*.cu headers)."""
    n = N_FEATURES
    if op == "decompose":  # forward reads fa, fb, writes 4 outputs; backward reads 6 rows, writes 2
        return 14 * rows * n * elem
    B = P = rows
    forward = (B + 4 * P) * n * elem
    backward = (B + 10 * P) * n * elem + 3 * B * n * acc + (B * n * (acc + elem) if acc != elem else 0)
    return forward + backward


def bench_main(json_path: Path, seconds: float) -> None:
    sys.path.insert(0, str(ROOT))
    deadline = time.monotonic() + seconds
    import torch

    import indeed_ext
    from indeed_ext import reference

    for limit in ("recompile_limit", "cache_size_limit"):  # one static compile per (op, dtype, size)
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    notes: list[str] = []
    try:
        import triton.testing

        def measure(fn) -> float:
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))

        timer_name = "triton.testing.do_bench, median, L2 flushed between runs"
    except ImportError:
        def measure(fn) -> float:
            times = []
            for _ in range(20):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return sorted(times)[len(times) // 2]

        timer_name = "CUDA events, median of 20 (triton not importable)"
    try:
        from indeed_ext.triton import ops as _triton_ops  # noqa: F401

        have_triton = True
    except Exception as e:  # noqa: BLE001 (any import failure means: no Triton column)
        have_triton = False
        notes.append(f"triton column skipped: indeed_ext.triton.ops does not import ({type(e).__name__}: {e})")

    props = torch.cuda.get_device_properties(0)
    result = {
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": None,
        "timer": timer_name,
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shape": {"n": N_FEATURES, "c": N_CLASSES},
        "cases": [],
        "notes": notes,
    }
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        pass

    def save() -> None:
        json_path.write_text(json.dumps(result, indent=2))

    x = torch.empty(2**28, dtype=torch.float32, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    copy_ms = measure(lambda: y.copy_(x))
    result["copy_bandwidth_GBps"] = 2 * x.nbytes / (copy_ms * 1e-3) / 1e9
    del x, y
    log(f"copy bandwidth {result['copy_bandwidth_GBps']:.0f} GB/s")
    save()

    compiled = {"six_head_bce": torch.compile(reference.six_head_bce, dynamic=False),
                "decompose": torch.compile(reference.decompose, dynamic=False)}

    def make_case(op: str, dtype: torch.dtype, rows: int):
        """(impls, inputs, leaves, grads) for fwd + bwd of op at B = P = rows."""
        gen = torch.Generator(device="cuda").manual_seed(rows)
        n, c = N_FEATURES, N_CLASSES
        if op == "decompose":
            fa = torch.randn(rows, n, device="cuda", generator=gen).relu_().to(dtype).requires_grad_()
            fb = torch.randn(rows, n, device="cuda", generator=gen).relu_().to(dtype).requires_grad_()
            grads = [torch.randn(rows, n, device="cuda", generator=gen).to(dtype) for _ in range(4)]
            impls = {"eager": reference.decompose, "compile": compiled[op],
                     "cuda": lambda a, b: indeed_ext.decompose(a, b, backend="cuda"),
                     "triton": lambda a, b: indeed_ext.decompose(a, b, backend="triton")}
            return impls, (fa, fb), (fa, fb), grads
        features = torch.randn(rows, n, device="cuda", generator=gen).relu_().to(dtype).requires_grad_()
        weight = (torch.randn(c, n, device="cuda", generator=gen) / n**0.5).to(dtype).requires_grad_()
        bias = (torch.randn(c, device="cuda", generator=gen) * 0.1).to(dtype).requires_grad_()
        targets = (torch.rand(rows, c, device="cuda", generator=gen) < 0.3).float()
        index_a = torch.randint(0, rows, (rows,), device="cuda", generator=gen)
        index_b = torch.randint(0, rows, (rows,), device="cuda", generator=gen)
        grads = [torch.rand(rows, 6, device="cuda", generator=gen).to(reference.loss_dtype(dtype))]

        def api(backend):
            return lambda *args: indeed_ext.six_head_bce(*args, backend=backend, check_indices=False)

        impls = {"eager": reference.six_head_bce, "compile": compiled[op], "cuda": api("cuda"), "triton": api("triton")}
        return impls, (features, weight, bias, targets, index_a, index_b), (features, weight, bias), grads

    def fwd_bwd(impl, inputs, leaves, grads):
        def run():
            out = impl(*inputs)
            outs = out if isinstance(out, tuple) else (out,)
            torch.autograd.grad(outs, leaves, grads)

        return run

    def forward_error(impl, inputs, expected) -> float:
        with torch.no_grad():
            out = impl(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        return max(float((o.double() - e.double()).abs().max() / e.double().abs().max().clamp_min(1e-30))
                   for o, e in zip(outs, expected))

    def time_impl(case: dict, name: str, impl, inputs, leaves, grads, expected) -> None:
        try:
            start = time.monotonic()
            run = fwd_bwd(impl, inputs, leaves, grads)
            run()  # compiles, for torch.compile
            torch.cuda.synchronize()
            case["first_call_s"][name] = round(time.monotonic() - start, 2)
            case["ms"][name] = measure(run)
            if expected is not None and name != "eager":
                case["forward_rel_err"][name] = forward_error(impl, inputs, expected)
        except Exception as e:  # noqa: BLE001 (recorded; the other implementations still run)
            case["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            torch.cuda.synchronize()
        log(f"{case['op']} {case['dtype']} {case['rows']} {name}: "
            f"{case['ms'].get(name, case['errors'].get(name))}")
        save()

    cases = {}
    for op in OPS:
        for dtype_name in DTYPES:
            dtype = getattr(torch, dtype_name)
            elem, acc = torch.finfo(dtype).bits // 8, 4
            for rows in SIZES:
                case = {"op": op, "dtype": dtype_name, "rows": rows, "bytes": bytes_moved(op, rows, elem, acc),
                        "ms": {}, "first_call_s": {}, "forward_rel_err": {}, "errors": {}, "skipped": {}}
                cases[(op, dtype_name, rows)] = case
                result["cases"].append(case)
                if time.monotonic() > deadline - 10:
                    case["skipped"] = {name: "time budget" for name in IMPLS}
                    continue
                impls, inputs, leaves, grads = make_case(op, dtype, rows)
                with torch.no_grad():
                    expected = impls["eager"](*inputs)
                expected = expected if isinstance(expected, tuple) else (expected,)
                for name in ("eager", "cuda", "triton"):
                    if name == "triton" and not have_triton:
                        case["skipped"][name] = "indeed_ext.triton.ops does not import"
                        continue
                    time_impl(case, name, impls[name], inputs, leaves, grads, expected)
                del impls, inputs, leaves, grads, expected
                torch.cuda.empty_cache()

    # torch.compile last, per shape, most interesting shapes first, while the budget lasts.
    for rows in COMPILE_ORDER:
        for op in OPS:
            for dtype_name in DTYPES:
                case = cases[(op, dtype_name, rows)]
                if "eager" not in case["ms"]:
                    case["skipped"].setdefault("compile", "eager case did not run")
                    continue
                compile_times = [c["first_call_s"]["compile"] for c in cases.values() if "compile" in c["first_call_s"]]
                if time.monotonic() + 1.5 * max(compile_times, default=30.0) + 5 > deadline:
                    case["skipped"]["compile"] = "time budget (compile is the slow part)"
                    log(f"{op} {dtype_name} {rows} compile: skipped, time budget")
                    save()
                    continue
                impls, inputs, leaves, grads = make_case(op, getattr(torch, dtype_name), rows)
                time_impl(case, "compile", impls["compile"], inputs, leaves, grads, None)
                del impls, inputs, leaves, grads
                torch.cuda.empty_cache()
    save()


# ----------------------------------------------------------------------------- report
def fmt_ms(case: dict, name: str) -> str:
    if name in case["ms"]:
        return f"{case['ms'][name]:.3f}"
    if name in case["errors"]:
        return "error"
    return "skipped" if name in case["skipped"] else "-"


def ratio(case: dict, num: str, den: str) -> float | None:
    if num in case["ms"] and den in case["ms"] and case["ms"][den] > 0:
        return case["ms"][num] / case["ms"][den]
    return None


def goals(bench: dict | None) -> list[dict]:
    """The issue's goals: six_head_bce at B = 4096 >= 10x eager and >= 2x compile; decompose <= 1.5x copy time."""
    if not bench:
        return []
    out = []
    for case in bench["cases"]:
        if case["op"] == "six_head_bce" and case["rows"] == 4096:
            for base, target in (("eager", 10.0), ("compile", 2.0)):
                speedup = ratio(case, base, "cuda")
                out.append({"goal": f"six_head_bce {case['dtype']} B=4096 cuda >= {target:g}x {base}",
                            "value": None if speedup is None else f"{speedup:.1f}x",
                            "met": None if speedup is None else speedup >= target})
        if case["op"] == "decompose" and case["rows"] >= 4096 and "cuda" in case["ms"]:
            copy_ms = case["bytes"] / (bench["copy_bandwidth_GBps"] * 1e9) * 1e3
            slowdown = case["ms"]["cuda"] / copy_ms
            out.append({"goal": f"decompose {case['dtype']} B={case['rows']} cuda <= 1.5x copy time",
                        "value": f"{slowdown:.2f}x", "met": slowdown <= 1.5})
    return out


def write_report(out_dir: Path, steps: list[dict]) -> None:
    bench = next((s.get("bench") for s in steps if s["name"] == "bench"), None)
    goal_rows = goals(bench)
    (out_dir / "results.json").write_text(json.dumps(
        {"steps": [{k: v for k, v in s.items() if k not in ("tail", "bench")} for s in steps],
         "bench": bench, "goals": goal_rows}, indent=2))
    lines = ["# indeed-ext GPU check", ""]
    if bench:
        lines += [f"{bench['device']} (sm_{bench['capability'].replace('.', '')}), torch {bench['torch']}, "
                  f"CUDA {bench['cuda']}, triton {bench['triton']}, {bench['date']}", ""]
    lines += ["| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['detail']} |" for s in steps]
    if bench:
        bw = bench.get("copy_bandwidth_GBps")
        bw_text = f"{bw:.0f} GB/s (1 GiB copy, read + write)" if bw else "not measured"
        lines += ["", f"## Forward + backward, median ms (n = {N_FEATURES}, c = {N_CLASSES}, B = P)", "",
                  f"Timer: {bench['timer']}. TF32 matmul: {bench['allow_tf32']}. Device-to-device copy bandwidth: {bw_text}.",
                  "Roofline % = time to move the kernels' bytes at copy bandwidth / measured time.", "",
                  "| op | dtype | B=P | eager | compile | cuda | triton | cuda vs eager | cuda vs compile "
                  "| MB moved | cuda roofline % | triton roofline % |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for case in bench["cases"]:
            def speed(base):
                r = ratio(case, base, "cuda")
                return "-" if r is None else f"{r:.1f}x"

            def roof(name):
                if not bw or name not in case["ms"]:
                    return "-"
                return f"{100 * case['bytes'] / (bw * 1e9) / (case['ms'][name] * 1e-3):.0f}"

            lines.append(f"| {case['op']} | {case['dtype']} | {case['rows']} | " + " | ".join(fmt_ms(case, i) for i in IMPLS)
                         + f" | {speed('eager')} | {speed('compile')} | {case['bytes'] / 1e6:.0f} | {roof('cuda')} | {roof('triton')} |")
        problems = [(c, k, v) for c in bench["cases"] for d in ("errors", "skipped") for k, v in c[d].items()]
        errs = [(c, k, v) for c in bench["cases"] for k, v in c["forward_rel_err"].items() if v > 5e-2]
        if problems or errs or bench["notes"]:
            lines += ["", "Notes:"]
            lines += [f"- {n}" for n in bench["notes"]]
            lines += [f"- {c['op']} {c['dtype']} {c['rows']} {k}: {v}" for c, k, v in problems]
            lines += [f"- {c['op']} {c['dtype']} {c['rows']} {k}: forward differs from eager by {v:.2e} (relative to max)"
                      for c, k, v in errs]
    if goal_rows:
        lines += ["", "## Goals", "", "| goal | value | met |", "|---|---|---|"]
        lines += [f"| {g['goal']} | {g['value']} | {'-' if g['met'] is None else ('yes' if g['met'] else 'NO')} |"
                  for g in goal_rows]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    global BUDGET_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", help="folder for results.json, results.md and the logs")
    parser.add_argument("--memcheck-case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bench", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all steps together")
    args = parser.parse_args()
    BUDGET_S = args.budget
    if args.memcheck_case:
        memcheck_case()
        return 0
    if args.bench:
        bench_main(args.bench, args.seconds)
        return 0
    if not args.out_dir:
        parser.error("give an output folder")
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = []
    for step in (step_build, step_tests, step_memcheck, step_bench):
        try:
            steps.append(step(out_dir))
        except Exception as e:  # noqa: BLE001 (a broken step is reported, the next one still runs)
            steps.append({"name": step.__name__.removeprefix("step_"), "status": "failed", "seconds": 0.0,
                          "detail": f"{type(e).__name__}: {e}", "tail": ""})
        write_report(out_dir, steps)
    print("\n" + (out_dir / "results.md").read_text(), flush=True)
    failed = [s["name"] for s in steps if s["status"] != "passed"]
    log(f"summary: passed {[s['name'] for s in steps if s['status'] == 'passed']}, failed {failed}; "
        f"results in {out_dir} ({time.monotonic() - START:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
