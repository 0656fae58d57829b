#!/usr/bin/env python3
"""The GPU check of indeed-ext in one command: build, tests, memcheck, timings.

    python benchmarks/gpu_check.py OUT_DIR          (or: benchmarks/gpu_check.sh OUT_DIR)

Steps, each in a subprocess with a time limit; a failing step does not stop the others:
  build     python setup.py build_ext --inplace with INDEED_CUDA=1 and TORCH_CUDA_ARCH_LIST of the GPU
  tests     pytest tests/test_cuda_ops.py tests/test_triton_ops.py (those present), INDEED_EXPECT_CUDA=1
  memcheck  compute-sanitizer --tool memcheck on forward + backward of every op at small sizes, with
            PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that out-of-bounds accesses reach allocation ends
  bench     benchmarks/bench_ops.py on forward + backward of six_head_bce and decompose: the eager
            reference, torch.compile(reference), the CUDA kernels and the Triton kernels (if
            indeed_ext.triton imports); B = P in {256, 4096, 16384}, n = 2048, c = 80, float32 and
            bfloat16; the copy bandwidth and GEMM rate measured in the same run, each case's roofline
            and peak memory, and the issues' goals.
Writes OUT_DIR/results.json, OUT_DIR/results.md and one log per step. Uses only the standard library,
torch and (optionally) triton. Sized to finish in under 8 minutes on one H100: the timings without
torch.compile come first, then torch.compile per shape in order of interest (B = 4096, 256, 16384)
while the time budget lasts; the tables mark what was skipped.
"""
from __future__ import annotations

import argparse
import collections
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
N_FEATURES, N_CLASSES = 2048, 80
DTYPES = ("float32", "bfloat16")
OPS = ("six_head_bce", "decompose")

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
def bench_main(json_path: Path, seconds: float) -> None:
    """The timings of benchmarks/bench_ops.py for this check's cases; JSON with its markdown and goals."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_ops  # first: it sets the OpenMP environment before torch loads
    import torch

    def save(report: dict) -> None:
        report = {**report, "markdown": bench_ops.markdown(report), "goals": bench_ops.goals(report["rows"])}
        json_path.write_text(json.dumps(report, indent=1))

    cases = bench_ops.select_cases(OPS, ["fwd+bwd"], SIZES, [N_FEATURES], [N_CLASSES], DTYPES)
    save(bench_ops.run(cases, torch.device("cuda"), budget_s=seconds, on_update=save))


# ----------------------------------------------------------------------------- report
def write_report(out_dir: Path, steps: list[dict]) -> None:
    bench = next((s.get("bench") for s in steps if s["name"] == "bench"), None)
    (out_dir / "results.json").write_text(json.dumps(
        {"steps": [{k: v for k, v in s.items() if k not in ("tail", "bench")} for s in steps],
         "bench": bench, "goals": bench["goals"] if bench else []}, indent=2))
    lines = ["# indeed-ext GPU check", ""]
    if bench:
        m = bench["machine"]
        lines += [f"{m['name']} (sm_{m['capability'].replace('.', '')}), torch {m['torch']}, "
                  f"CUDA {m['cuda']}, triton {m['triton']}, {m['date']}", ""]
    lines += ["| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['detail']} |" for s in steps]
    if bench:
        lines += ["", f"## Forward + backward (n = {N_FEATURES}, c = {N_CLASSES}, B = P; benchmarks/bench_ops.py)",
                  "", bench["markdown"]]
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
