#!/usr/bin/env python3
"""The GPU check of indeed-ext in one command: build, tests, memcheck, timings.

    python benchmarks/gpu_check.py OUT_DIR          (or: benchmarks/gpu_check.sh OUT_DIR)

Steps, each in a subprocess with a time limit; a failing step does not stop the others:
  build     python setup.py build_ext --inplace with INDEED_CUDA=1 and TORCH_CUDA_ARCH_LIST of the GPU
  tests     pytest tests/test_cuda_ops.py (2 processes), tests/test_triton_ops.py (6 processes, most
            of their time is compiling kernels), tests/test_mine_pairs.py and tests/test_cuda_graph.py
            (one each), each process on a contiguous slice of the file's collected
            tests, all at the same time with one limit (INDEED_EXPECT_CUDA=1, -v -rfE --tb=short): a log and
            a JUnit XML each (tests_cuda_1of2.log, .xml, ...). Near its limit a run gets SIGINT, so pytest
            still writes its summary and XML, then SIGKILL. The report gives each run's counts, its failed
            and errored test ids with their messages and its slowest tests; for a run stopped at its limit,
            how many tests had finished and which one was running (from the XML, else from the -v log)
  memcheck  compute-sanitizer --tool memcheck on forward + backward of every op at small sizes, with
            PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that out-of-bounds accesses reach allocation ends
  bench     benchmarks/bench_ops.py on forward + backward of six_head_bce and decompose: the eager
            reference, torch.compile(reference), the CUDA kernels and the Triton kernels (if
            indeed_ext.triton imports); B = P in {256, 4096, 16384}, n = 2048, c = 80, float32 and
            bfloat16; the copy bandwidth and GEMM rate measured in the same run, each case's roofline
            and peak memory, and the issues' goals.
Writes OUT_DIR/results.json, OUT_DIR/results.md and one log per step. Uses only the standard library,
torch and (optionally) triton; tests/test_cuda_build.py tests the parsing of the test results on CPU.
Sized to finish in under 8 minutes (--budget, 470 s) on one H100: the tests get at most 210 s while
30 s stay for memcheck and 60 s for the timings; the timings without torch.compile come first, then
torch.compile per shape in order of interest (B = 4096, 256, 16384) while the budget lasts; the
tables mark what was skipped.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 470.0  # all steps together, under 8 minutes
STEP_LIMITS_S = {"build": 240.0, "tests": 210.0, "memcheck": 120.0}
MEMCHECK_MIN_S = 30.0  # kept for memcheck whatever the tests took
BENCH_MIN_S = 60.0  # kept for the timings whatever the earlier steps took
# Test files and how many pytest processes share each one (contiguous slices of its collected tests),
# all run at the same time; -v puts each test's id and outcome in the log as it finishes, so a killed
# run still shows how far it got and what failed. The Triton tests are split most: their time is
# mostly compiling kernel variants, one CPU core per process (the GPU is shared and mostly idle).
TEST_RUNS = {
    "tests_cuda": ("tests/test_cuda_ops.py", 2),
    "tests_triton": ("tests/test_triton_ops.py", 6),
    "tests_mine_pairs": ("tests/test_mine_pairs.py", 1),
    "tests_cuda_graph": ("tests/test_cuda_graph.py", 1),
}
PYTEST_ARGS = ("-v", "-p", "no:cacheprovider", "-rfE", "--tb=short")
INTERRUPT_BEFORE_S = 15.0  # SIGINT this long before the kill: pytest still writes its summary and JUnit XML
LISTED_FAILURES = 20  # per run on stdout and in results.md; results.json has them all
SLOWEST_LISTED, SLOW_TEST_S = 5, 1.0  # the slowest tests of a run that took at least a second
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
def run_step(name: str, cmd: list[str], out_dir: Path, limit: float, env: dict | None = None, *,
             echo: bool = True, interrupt_before_s: float = 0.0, cwd: Path = ROOT) -> dict:
    """Runs cmd in cwd, logging its output to out_dir/<name>.log (and echoing it); kills it after `limit` s.

    With interrupt_before_s > 0 the command first gets SIGINT that many seconds before the limit:
    pytest then stops, prints its summary and writes its JUnit XML."""
    limit = max(1.0, limit)
    log(f"{name}: {' '.join(cmd)}  (limit {limit:.0f}s)")
    start = time.monotonic()
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    tail: collections.deque[str] = collections.deque(maxlen=60)
    killed = threading.Event()
    with open(out_dir / f"{name}.log", "w") as log_file:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", start_new_session=True)
        except OSError as e:
            return {"name": name, "status": "failed", "seconds": 0.0, "detail": f"could not start: {e}", "tail": ""}

        def stop(sig: int) -> None:
            killed.set()
            try:
                os.killpg(proc.pid, sig)  # the step's own process group
            except ProcessLookupError:
                pass

        timers = [threading.Timer(limit, stop, (signal.SIGKILL,))]
        if interrupt_before_s > 0:
            timers.append(threading.Timer(max(0.5, limit - interrupt_before_s), stop, (signal.SIGINT,)))
        for timer in timers:
            timer.start()
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
            log_file.write(line)
            tail.append(line)
        rc = proc.wait()
        for timer in timers:
            timer.cancel()
    seconds = time.monotonic() - start
    status = "timeout" if killed.is_set() else ("passed" if rc == 0 else "failed")
    log(f"{name}: {status} (rc {rc}, {seconds:.0f}s)")
    last_line = next((line.strip() for line in reversed(tail) if line.strip()), "")
    detail = "" if status == "passed" else last_line[:200]
    return {"name": name, "status": status, "rc": rc, "seconds": round(seconds, 1), "limit": round(limit),
            "detail": detail, "tail": "".join(tail), "log": str(out_dir / f"{name}.log")}


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


def run_pytest(name: str, targets: list[str], out_dir: Path, limit: float, env: dict | None = None,
               cwd: Path = ROOT) -> dict:
    """One pytest process on targets (files or test ids): out_dir/<name>.log and <name>.xml, summarized."""
    junit = out_dir / f"{name}.xml"
    junit.unlink(missing_ok=True)  # a stale XML from an earlier run must not stand in for this one
    cmd = [sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--junitxml={junit}", *targets]
    result = run_step(name, cmd, out_dir, limit, env, echo=False, cwd=cwd,
                      interrupt_before_s=min(INTERRUPT_BEFORE_S, limit / 4))
    summary = summarize_tests(result, junit.read_text(errors="replace") if junit.exists() else None,
                              step_output(result))
    log(f"{name}: {summary['status']}: {summary['detail']}")
    for failure in summary["failures"][:LISTED_FAILURES]:
        log(f"  {failure['outcome'].upper()} {failure['id']} - {failure['message']}")
    return summary


def collect_test_ids(test_file: str, env: dict | None = None, cwd: Path = ROOT) -> list[str]:
    """The ids pytest collects from test_file (empty if collection fails: the file then runs whole)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=cwd, env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=120)
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    return ids if proc.returncode == 0 else []


def split_contiguous(items: list[str], parts: int) -> list[list[str]]:
    """items in at most `parts` contiguous slices of near-equal length (neighbouring tests share kernels)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    slices, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        slices.append(items[start:end])
        start = end
    return slices


def step_tests(out_dir: Path) -> list[dict]:
    """The CUDA and the Triton tests, each file split over several pytest processes, all at once."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return [{"name": "tests", "status": "failed", "seconds": 0.0, "detail": "pytest is not installed", "tail": ""}]
    env = {"INDEED_EXPECT_CUDA": "1"}
    runs, missing = {}, []
    for name, (test_file, processes) in TEST_RUNS.items():
        if not (ROOT / test_file).exists():
            missing.append({"name": name, "status": "failed", "seconds": 0.0, "detail": f"{test_file} not found",
                            "tail": ""})
            continue
        ids = collect_test_ids(test_file, env) if processes > 1 else []
        slices = split_contiguous(ids, processes) if ids else [[test_file]]
        for i, targets in enumerate(slices):
            runs[name if len(slices) == 1 else f"{name}_{i + 1}of{len(slices)}"] = targets
    limit = min(STEP_LIMITS_S["tests"], remaining() - MEMCHECK_MIN_S - BENCH_MIN_S)
    with concurrent.futures.ThreadPoolExecutor(max(1, len(runs))) as pool:
        futures = {name: pool.submit(run_pytest, name, targets, out_dir, limit, env) for name, targets in runs.items()}
    return [futures[name].result() for name in runs] + missing


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


# ----------------------------------------------------------------------------- test results
PROGRESS_LINE = re.compile(r"^(?P<id>\S+::.+?) (?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
SUMMARY_LINE = re.compile(r"^(?P<outcome>FAILED|ERROR) (?P<id>.+?)(?: - (?P<message>.*))?$")
COLLECTED_LINE = re.compile(r"collected (\d+) items?")
LOG_OUTCOMES = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped", "XFAIL": "xfailed",
                "XPASS": "xpassed"}
COUNT_ORDER = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def first_line(text: str | None, width: int = 160) -> str:
    line = next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
    return line if len(line) <= width else line[:width - 3] + "..."


def junit_test_id(classname: str, name: str) -> str:
    """pytest's node id of a JUnit testcase: ('tests.test_x.TestY', 'test_z[a]') -> 'tests/test_x.py::TestY::test_z[a]'.
    Classes are the trailing dotted parts that start with a capital; an empty classname is a collection error."""
    if not classname:
        return name.replace(".", "/") + ".py"
    parts = classname.split(".")
    n_module = len(parts)
    while n_module > 1 and parts[n_module - 1][:1].isupper():
        n_module -= 1
    return "::".join(["/".join(parts[:n_module]) + ".py", *parts[n_module:], name])


def parse_junit(xml_text: str) -> dict:
    """Counts (as pytest counts them), the failed and errored tests with their messages and the slowest tests."""
    counts: collections.Counter = collections.Counter()
    failures, durations = [], []
    # An interrupted session leaves a nameless <testcase/> behind: not a test
    cases = [case for case in ET.fromstring(xml_text).iter("testcase") if case.get("name")]
    for case in cases:
        test_id = junit_test_id(case.get("classname", ""), case.get("name", ""))
        durations.append((float(case.get("time") or 0.0), test_id))
        outcomes = []
        for tag, outcome in (("failure", "failed"), ("error", "error")):
            for element in case.findall(tag):
                outcomes.append(outcome)
                failures.append({"id": test_id, "outcome": outcome,
                                 "message": first_line(element.get("message") or element.text)})
        skipped = case.find("skipped")
        if skipped is not None:
            outcomes.append("xfailed" if skipped.get("type") == "pytest.xfail" else "skipped")
        counts.update(outcomes or ["passed"])
    slowest = [{"id": test_id, "seconds": round(seconds, 1)}
               for seconds, test_id in sorted(durations, reverse=True)[:SLOWEST_LISTED] if seconds >= SLOW_TEST_S]
    return {"counts": dict(counts), "finished": len(cases), "collected": None, "failures": failures,
            "slowest": slowest, "running": None}


def parse_pytest_log(text: str) -> dict:
    """What the log of `pytest -v -rfE` shows, also when the process was killed mid-run: the per-test
    outcome lines, the short summary (messages), 'collected N items' and the test that was running."""
    counts: collections.Counter = collections.Counter()
    finished: dict[str, None] = {}
    messages: dict[tuple[str, str], str] = {}
    running = None
    in_sections = False  # past the per-test lines: failures, warnings (which name tests too), summary
    for line in text.splitlines():
        if line.startswith("=") and "test session starts" not in line:
            in_sections = True
        progress = None if in_sections else PROGRESS_LINE.match(line)
        summary = None if progress else SUMMARY_LINE.match(line)
        if progress:
            outcome = LOG_OUTCOMES[progress["outcome"]]
            counts[outcome] += 1
            finished[progress["id"]] = None
            if outcome in ("failed", "error"):
                messages.setdefault((progress["id"], outcome), "")
            running = None
        elif summary:
            messages[(summary["id"], LOG_OUTCOMES[summary["outcome"]])] = first_line(summary["message"])
        elif not in_sections and "::" in line.split(" ", 1)[0]:  # a node id with no outcome: stopped mid-run
            running = line.split(" ", 1)[0]
    collected = COLLECTED_LINE.search(text)
    return {"counts": dict(counts), "finished": len(finished), "collected": int(collected[1]) if collected else None,
            "failures": [{"id": i, "outcome": o, "message": m} for (i, o), m in messages.items()],
            "slowest": [], "running": running}


def format_counts(counts: dict) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in COUNT_ORDER if counts.get(k)) or "no tests"


def summarize_tests(result: dict, junit_text: str | None, log_text: str) -> dict:
    """The run_step result of one pytest process plus what its JUnit XML (None: not written) and log say:
    status (passed only if some test passed and none failed), counts, failures, a one-line detail."""
    from_log = parse_pytest_log(log_text)
    parsed, source = from_log, "the log (no JUnit XML)"
    if junit_text:
        try:
            parsed, source = parse_junit(junit_text), "JUnit XML"
        except ET.ParseError as e:
            source = f"the log (JUnit XML unreadable: {e})"
    parsed["collected"] = from_log["collected"]
    parsed["running"] = from_log["running"]
    counts = parsed["counts"]
    of = f" of {parsed['collected']}" if parsed["collected"] is not None else ""
    notes = [f"{format_counts(counts)}{of} (from {source})"]
    if result["status"] == "timeout":
        status = "timeout"
        notes.append(f"stopped at its {result.get('limit', '?')} s limit after {parsed['finished']}{of} tests")
        if parsed["running"]:
            notes.append(f"running: {parsed['running']}")
    elif result["status"] == "passed" and not counts.get("passed"):
        status = "failed"
        notes.append("no test passed")
    else:
        status = result["status"]
        if status != "passed" and not parsed["failures"]:
            notes.append(f"rc {result.get('rc')}: {result['detail']}")
    return {**{k: v for k, v in result.items() if k != "detail"}, "status": status, "detail": "; ".join(notes),
            "counts": counts, "finished": parsed["finished"], "collected": parsed["collected"],
            "failures": parsed["failures"], "slowest": parsed["slowest"], "running": parsed["running"]}


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
def test_report_lines(steps: list[dict]) -> list[str]:
    """Markdown: per pytest run its slowest tests and its failed/errored tests (LISTED_FAILURES at most)."""
    lines = []
    for step in steps:
        if "failures" not in step:
            continue
        lines += ["", f"## {step['name']}: {step['detail']}", ""]
        if step["slowest"]:
            lines.append("Slowest: " + ", ".join(f"`{t['id']}` {t['seconds']:.1f} s" for t in step["slowest"]))
        lines += [f"- {f['outcome'].upper()} `{f['id']}`: {f['message']}" for f in step["failures"][:LISTED_FAILURES]]
        if len(step["failures"]) > LISTED_FAILURES:
            lines.append(f"- ... {len(step['failures']) - LISTED_FAILURES} more in results.json and {step['name']}.xml")
    return lines


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
    lines += test_report_lines(steps)
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
    # Children inherit an ignored SIGINT (a shell's background job): with a handler here, exec resets
    # it to the default, so the pytest runs can be stopped with SIGINT and still write their XML.
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
            result = step(out_dir)
            steps.extend(result if isinstance(result, list) else [result])
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
