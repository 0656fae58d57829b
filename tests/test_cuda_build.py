"""The CUDA side of the build without a GPU, and the GPU check's reading of test results.

Kernel resources: cuobjdump on indeed_ext/_C*.so, where the build holds CUDA code (CI builds with
INDEED_CUDA=1 and sets INDEED_EXPECT_CUDA=1, which turns every skip here into a failure). Every
__global__ kernel of csrc/cuda must be in the sm_90 code, and none may spill registers.
cuobjdump gives each kernel's registers and stack frame, not ptxas's spill bytes, so a kernel
counts as spilling when it uses every register its launch bounds allow (EIATTR_MAXREG_COUNT) and
still has a stack frame: below that cap ptxas takes more registers before it spills, and a frame
holds local arrays (six_head_loss_kernel<float> indexes its six sums by lane: 48 registers, 24 B of
stack, 0 B spilled per `ptxas -v`). On the sm_90 build of 2026-11-26 this flagged exactly the ten
kernels that `ptxas -v` reported spilling and none of the other 44.

benchmarks/gpu_check.py: its parsing of pytest's JUnit XML and -v log on synthetic text, one real
pytest run stopped at its time limit, and --help.
"""
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCH = "sm_90"
EXPECT_CUDA = os.environ.get("INDEED_EXPECT_CUDA") == "1"

# Kernels that spill in the sm_90 build (short demangled names). The test fails when another one
# spills, or when one listed here no longer does (then remove it). ptxas -v, 2026-11-26, CUDA 13.0:
# bytes of stack / spill stores / spill loads. PairMode 0 = Map, 1 = Decompose, 2 = Ident.
KNOWN_SPILLS = {
    "pair_rows_forward_kernel<double, 2, (PairMode)1>",  # 8 / 4 / 8
    "pair_rows_backward_kernel<float, 1, (PairMode)0>",  # 104 / 100 / 100
    "pair_rows_backward_kernel<c10::Half, 1, (PairMode)0>",  # 136 / 132 / 132
    "pair_rows_backward_kernel<c10::BFloat16, 1, (PairMode)0>",  # 136 / 132 / 132
    "pair_rows_backward_kernel<double, 1, (PairMode)0>",  # 320 / 340 / 328
    "pair_rows_backward_kernel<double, 1, (PairMode)1>",  # 136 / 492 / 728
    "pair_rows_backward_kernel<double, 1, (PairMode)2>",  # 8 / 20 / 12
    "pair_rows_backward_kernel<double, 2, (PairMode)0>",  # 40 / 32 / 24
    "pair_rows_backward_kernel<double, 2, (PairMode)1>",  # 208 / 624 / 828
    "pair_rows_backward_kernel<double, 2, (PairMode)2>",  # 56 / 120 / 188
}


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
cuda_env = _load("cuda_env", ROOT / "tools" / "cuda_env.py")


# ----------------------------------------------------------------------------- kernel resources
@dataclass
class Kernel:
    mangled: str
    name: str  # demangled, without namespaces and parameters
    registers: int
    stack: int
    shared: int
    register_cap: int

    @property
    def spills(self):
        return self.stack > 0 and self.registers >= self.register_cap

    def __str__(self):
        return f"{self.name}: {self.registers}/{self.register_cap} registers, {self.stack} B stack"


def skip_or_fail(reason):
    """Without INDEED_EXPECT_CUDA=1 a build without CUDA code is fine: skip. With it, fail."""
    if EXPECT_CUDA:
        pytest.fail(f"INDEED_EXPECT_CUDA=1 but {reason}")
    pytest.skip(f"{reason} (CI builds with INDEED_CUDA=1 and sets INDEED_EXPECT_CUDA=1)")


def find_cuobjdump():
    """PATH, the toolkit (CUDA_HOME or the root behind an nvcc wrapper, as setup.py finds it), triton's copy."""
    candidates = [shutil.which("cuobjdump")]
    cuda_home = cuda_env.find_cuda_home()
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", "cuobjdump"))
    triton = importlib.util.find_spec("triton")
    if triton and triton.origin:
        candidates.append(os.path.join(os.path.dirname(triton.origin), "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def source_kernel_names():
    """Names of the __global__ functions in csrc/cuda/*.cu and *.cuh."""
    declaration = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(")
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu")) + sorted((ROOT / "csrc" / "cuda").glob("*.cuh"))
    return sorted({name for path in sources for name in declaration.findall(path.read_text())})


def parse_resource_usage(text):
    """`cuobjdump --dump-resource-usage`: {function: {"REG": .., "STACK": .., ...}} of the ELFs for ARCH."""
    usage, arch, function = {}, None, None
    for line in text.splitlines():
        if m := re.match(r"arch = (\w+)", line):
            arch, function = m[1], None
        elif m := re.match(r"\s*Function (\S+):$", line):
            function = m[1] if arch == ARCH else None
        elif function:  # the function's resources
            usage[function] = {k: int(v) for k, v in re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", line)}
            function = None
    return usage


def parse_register_caps(text):
    """`cuobjdump -elf`: {function: EIATTR_MAXREG_COUNT}, the register limit ptxas worked under."""
    caps, function, attribute = {}, None, None
    for line in text.splitlines():
        if not line.startswith("\t"):  # a section header
            function = line[len(".nv.info."):].strip() if line.startswith(".nv.info.") else None
        elif function and (m := re.match(r"\tAttribute:\s+(\w+)", line)):
            attribute = m[1]
        elif function and attribute == "EIATTR_MAXREG_COUNT" and (m := re.match(r"\tValue:\s+(0x[0-9a-f]+)", line)):
            caps[function] = int(m[1], 16)
            attribute = None
    return caps


def short_names(mangled):
    """'void indeed::gpu::k<float, 1, (indeed::gpu::PairMode)0>(indeed::gpu::PairRowsArgs<float>, int)'
    -> 'k<float, 1, (PairMode)0>', by c++filt (binutils, there wherever the extension builds)."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        pytest.skip("c++filt (binutils) not found: cannot name the kernels")
    out = subprocess.run([cxxfilt], input="\n".join(mangled), capture_output=True, text=True, check=True).stdout
    names = []
    for full in out.splitlines():
        name = re.sub(r"indeed::gpu::|\(anonymous namespace\)::", "", full.removeprefix("void "))
        names.append(re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", name))  # the parameter list
    return names


@pytest.fixture(scope="module")
def kernels():
    """The sm_90 kernels of the built extension with their resources."""
    spec = importlib.util.find_spec("indeed_ext._C")
    if spec is None or not spec.origin:
        skip_or_fail("indeed_ext/_C*.so is not built")
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        skip_or_fail("cuobjdump not found (PATH, the CUDA toolkit, triton/backends/nvidia/bin)")

    def dump(*args):
        return subprocess.run([cuobjdump, "-arch", ARCH, *args, spec.origin], capture_output=True, text=True,
                              timeout=120)

    resources = dump("--dump-resource-usage")
    if "does not contain device code" in resources.stdout + resources.stderr:
        skip_or_fail(f"{Path(spec.origin).name} holds no CUDA code (built with INDEED_CUDA=0?)")
    assert resources.returncode == 0, f"{cuobjdump} failed: {resources.stderr}"
    usage = parse_resource_usage(resources.stdout)
    if not usage:
        skip_or_fail(f"{Path(spec.origin).name} holds no {ARCH} code (TORCH_CUDA_ARCH_LIST without 9.0?)")
    elf = dump("--dump-elf")
    assert elf.returncode == 0, f"{cuobjdump} --dump-elf failed: {elf.stderr}"
    caps = parse_register_caps(elf.stdout)
    assert caps.keys() >= usage.keys(), f"no EIATTR_MAXREG_COUNT for {sorted(usage.keys() - caps.keys())}"
    mangled = sorted(usage)
    return [Kernel(m, name, usage[m]["REG"], usage[m]["STACK"], usage[m]["SHARED"], caps[m])
            for m, name in zip(mangled, short_names(mangled))]


def test_every_kernel_is_built_for_sm90(kernels):
    names = source_kernel_names()
    assert len(names) >= 4, f"the __global__ pattern found only {names} in csrc/cuda"
    # Itanium mangling writes an identifier as <length><name>: an exact match, not a substring of another
    missing = [n for n in names if not any(f"{len(n)}{n}" in k.mangled for k in kernels)]
    assert not missing, f"not in the {ARCH} code: {missing}; built: {sorted({k.name for k in kernels})}"


def test_no_kernel_spills(kernels):
    table = "\n".join(sorted(map(str, kernels)))
    spilling = {k.name: k for k in kernels if k.spills}
    new = sorted(spilling.keys() - KNOWN_SPILLS)
    assert not new, f"spilling (stack at the register cap): {new}\nall {ARCH} kernels:\n{table}"
    fixed = sorted(KNOWN_SPILLS - spilling.keys())
    assert not fixed, f"no longer spill, remove them from KNOWN_SPILLS: {fixed}\nall {ARCH} kernels:\n{table}"
    if spilling:
        pytest.xfail("known spills: " + "; ".join(str(spilling[n]) for n in sorted(spilling)))


def test_parse_resource_usage_and_register_caps():
    usage = textwrap.dedent("""\
        Fatbin elf code:
        ================
        arch = sm_80
        Resource usage:
         Function _Z3oldv:
          REG:40 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:900 TEXTURE:0 SURFACE:0 SAMPLER:0
        Fatbin elf code:
        ================
        arch = sm_90
        Resource usage:
         Common:
          GLOBAL:153 CONSTANT[4]:312
         Function _Z4fastv:
          REG:128 STACK:136 SHARED:1536 LOCAL:0 CONSTANT[0]:940 TEXTURE:0 SURFACE:0 SAMPLER:0
        """)
    assert parse_resource_usage(usage) == {"_Z4fastv": {"REG": 128, "STACK": 136, "SHARED": 1536, "LOCAL": 0,
                                                        "CONSTANT[0]": 940, "TEXTURE": 0, "SURFACE": 0, "SAMPLER": 0}}
    elf = (".nv.info._Z4fastv\n\t<0x1>\n\tAttribute:\tEIATTR_REGCOUNT\n\tFormat:\tEIFMT_SVAL\n\tValue:\t0x55\n"
           "\t<0x2>\n\tAttribute:\tEIATTR_MAXREG_COUNT\n\tFormat:\tEIFMT_HVAL\n\tValue:\t0x80\n"
           ".text._Z4slowv\n\tAttribute:\tEIATTR_MAXREG_COUNT\n\tValue:\t0xff\n")
    assert parse_register_caps(elf) == {"_Z4fastv": 128}


# ----------------------------------------------------------------------------- gpu_check's test results
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="7">
<testcase classname="tests.test_x" name="test_ok[a b]" time="2.5" />
<testcase classname="tests.test_x" name="test_bad" time="0.2"><failure message="AssertionError: 3 != 4&#10;more">tb</failure></testcase>
<testcase classname="tests.test_x.TestGroup" name="test_setup" time="0.0"><error message="failed on setup with &quot;RuntimeError: no GPU&quot;">tb</error></testcase>
<testcase classname="tests.test_x" name="test_both" time="1.5"><failure message="assert 0">tb</failure><error message="failed on teardown">tb</error></testcase>
<testcase classname="tests.test_x" name="test_skip" time="0.0"><skipped type="pytest.skip" message="no">s</skipped></testcase>
<testcase classname="tests.test_x" name="test_known" time="0.0"><skipped type="pytest.xfail" message="known" /></testcase>
<testcase classname="" name="tests.test_broken" time="0.0"><error message="collection failure">ImportError</error></testcase>
<testcase time="0.000" />
</testsuite></testsuites>"""

# A -v log cut off by SIGKILL while tests/test_x.py::test_slow ran
KILLED_LOG = """============================= test session starts ==============================
platform linux -- Python 3.12.3, pytest-8.3.5, pluggy-1.5.0 -- /usr/bin/python3
collecting ... collected 6 items

tests/test_x.py::test_ok[a b] PASSED                                    [ 16%]
tests/test_x.py::test_bad FAILED                                        [ 33%]
tests/test_x.py::test_skip SKIPPED (no GPU)                             [ 50%]
tests/test_x.py::TestGroup::test_teardown PASSED                        [ 66%]
tests/test_x.py::TestGroup::test_teardown ERROR                         [ 66%]
tests/test_x.py::test_slow """

FINISHED_LOG = """============================= test session starts ==============================
collected 2 items

tests/test_x.py::test_ok PASSED                                         [ 50%]
tests/test_x.py::test_bad FAILED                                        [100%]

=================================== FAILURES ===================================
___________________________________ test_bad ___________________________________
tests/test_x.py:3: in test_bad
E   AssertionError: 3 != 4
=============================== warnings summary ===============================
tests/test_x.py::test_ok
  /x.py:1: UserWarning: careful
=========================== short test summary info ============================
FAILED tests/test_x.py::test_bad - AssertionError: 3 != 4
========================= 1 failed, 1 passed in 0.10s =========================="""


@pytest.mark.parametrize("classname,name,test_id", [
    ("tests.test_x", "test_a[1-x.y]", "tests/test_x.py::test_a[1-x.y]"),
    ("tests.test_x.TestY", "test_z", "tests/test_x.py::TestY::test_z"),
    ("tests.sub.test_x.TestY.TestInner", "test_z", "tests/sub/test_x.py::TestY::TestInner::test_z"),
    ("", "tests.test_broken", "tests/test_broken.py"),
])
def test_junit_test_id(classname, name, test_id):
    assert gpu_check.junit_test_id(classname, name) == test_id


def test_parse_junit():
    parsed = gpu_check.parse_junit(JUNIT)
    assert parsed["counts"] == {"passed": 1, "failed": 2, "error": 3, "skipped": 1, "xfailed": 1}
    assert parsed["finished"] == 7  # the nameless testcase of an interrupted run is not a test
    assert parsed["failures"] == [
        {"id": "tests/test_x.py::test_bad", "outcome": "failed", "message": "AssertionError: 3 != 4"},
        {"id": "tests/test_x.py::TestGroup::test_setup", "outcome": "error",
         "message": 'failed on setup with "RuntimeError: no GPU"'},
        {"id": "tests/test_x.py::test_both", "outcome": "failed", "message": "assert 0"},
        {"id": "tests/test_x.py::test_both", "outcome": "error", "message": "failed on teardown"},
        {"id": "tests/test_broken.py", "outcome": "error", "message": "collection failure"},
    ]
    assert parsed["slowest"] == [{"id": "tests/test_x.py::test_ok[a b]", "seconds": 2.5},
                                 {"id": "tests/test_x.py::test_both", "seconds": 1.5}]


def test_parse_log_of_a_killed_run():
    parsed = gpu_check.parse_pytest_log(KILLED_LOG)
    assert parsed["counts"] == {"passed": 2, "failed": 1, "skipped": 1, "error": 1}
    assert (parsed["finished"], parsed["collected"]) == (4, 6)
    assert parsed["running"] == "tests/test_x.py::test_slow"
    assert [(f["id"], f["outcome"]) for f in parsed["failures"]] == [
        ("tests/test_x.py::test_bad", "failed"), ("tests/test_x.py::TestGroup::test_teardown", "error")]


def test_parse_log_of_a_finished_run():
    parsed = gpu_check.parse_pytest_log(FINISHED_LOG)
    assert parsed["counts"] == {"passed": 1, "failed": 1}
    assert parsed["running"] is None  # the warnings summary names a test: not one that was running
    assert parsed["failures"] == [{"id": "tests/test_x.py::test_bad", "outcome": "failed",
                                   "message": "AssertionError: 3 != 4"}]


def test_summary_of_a_killed_run_without_xml():
    result = {"name": "tests_cuda", "status": "timeout", "rc": -9, "seconds": 150.0, "limit": 150, "detail": "x"}
    summary = gpu_check.summarize_tests(result, None, KILLED_LOG)
    assert summary["status"] == "timeout"
    assert "stopped at its 150 s limit after 4 of 6 tests" in summary["detail"]
    assert "running: tests/test_x.py::test_slow" in summary["detail"]
    assert "from the log (no JUnit XML)" in summary["detail"]
    assert [f["id"] for f in summary["failures"]] == ["tests/test_x.py::test_bad",
                                                     "tests/test_x.py::TestGroup::test_teardown"]


def test_summary_takes_the_xml_over_the_log():
    result = {"name": "tests_cuda", "status": "failed", "rc": 1, "seconds": 9.0, "limit": 150, "detail": "x"}
    summary = gpu_check.summarize_tests(result, JUNIT, FINISHED_LOG)
    assert summary["status"] == "failed"
    assert summary["counts"]["error"] == 3 and len(summary["failures"]) == 5
    assert summary["detail"].startswith("1 passed, 2 failed, 3 error, 1 skipped, 1 xfailed of 2 (from JUnit XML)")
    unreadable = gpu_check.summarize_tests(result, JUNIT[:200], FINISHED_LOG)
    assert unreadable["counts"] == {"passed": 1, "failed": 1} and "JUnit XML unreadable" in unreadable["detail"]


def test_summary_needs_a_passed_test_and_explains_a_bare_failure():
    passed = {"name": "tests_triton", "status": "passed", "rc": 0, "seconds": 1.0, "limit": 150, "detail": ""}
    all_skipped = '<testsuite><testcase classname="tests.t" name="test_a"><skipped message="no GPU"/></testcase></testsuite>'
    summary = gpu_check.summarize_tests(passed, all_skipped, "")
    assert summary["status"] == "failed" and "no test passed" in summary["detail"]
    usage_error = {**passed, "status": "failed", "rc": 4, "detail": "ERROR: file or directory not found: x.py"}
    summary = gpu_check.summarize_tests(usage_error, None, "ERROR: file or directory not found: x.py\n")
    assert summary["status"] == "failed" and "rc 4: ERROR: file or directory not found" in summary["detail"]


def test_report_lists_failed_ids():
    failures = [{"id": f"tests/test_x.py::test_{i}", "outcome": "failed", "message": "m"} for i in range(25)]
    step = {"name": "tests_triton", "detail": "25 failed", "failures": failures,
            "slowest": [{"id": "tests/test_x.py::test_0", "seconds": 3.0}]}
    text = "\n".join(gpu_check.test_report_lines([{"name": "build", "detail": ""}, step]))
    assert "## tests_triton: 25 failed" in text and "`tests/test_x.py::test_0` 3.0 s" in text
    assert "- FAILED `tests/test_x.py::test_19`: m" in text and "test_20`" not in text
    assert "5 more in results.json and tests_triton.xml" in text


def test_a_run_stopped_at_its_limit_still_writes_its_xml(tmp_path):
    """A real pytest process: SIGINT 1.5 s before the 6 s limit; pytest stops and writes its JUnit XML."""
    (tmp_path / "test_probe.py").write_text(textwrap.dedent("""\
        import time
        def test_ok(): pass
        def test_bad(): assert 3 == 4
        def test_slow(): time.sleep(60)
        def test_never(): pass
        """))
    # As gpu_check's main() does: a SIGINT ignored here (a background job) would be ignored by the child
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        summary = gpu_check.run_pytest("probe", ["test_probe.py"], tmp_path, 6.0,
                                       {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}, cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "probe.xml").exists() and summary["seconds"] < 6.0
    assert summary["status"] == "timeout"
    assert summary["counts"] == {"passed": 1, "failed": 1}
    assert summary["running"] == "test_probe.py::test_slow"
    assert [f["id"] for f in summary["failures"]] == ["test_probe.py::test_bad"]
    assert "stopped at its 6 s limit after 2 of 4 tests" in summary["detail"]


def test_split_contiguous():
    items = [f"t{i}" for i in range(11)]
    slices = gpu_check.split_contiguous(items, 4)
    assert [len(s) for s in slices] == [3, 3, 3, 2] and sum(slices, []) == items
    assert gpu_check.split_contiguous(items[:2], 6) == [["t0"], ["t1"]]
    assert gpu_check.split_contiguous(items, 1) == [items]


def test_collected_ids_run_in_slices(tmp_path):
    # what step_tests does with a file: collect its ids, run slices of them as separate processes
    (tmp_path / "test_probe.py").write_text(textwrap.dedent("""\
        import pytest
        @pytest.mark.parametrize("x", [1, 2, 3])
        def test_param(x): assert x != 3
        def test_plain(): pass
    """))
    env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    ids = gpu_check.collect_test_ids("test_probe.py", env, cwd=tmp_path)
    assert ids == ["test_probe.py::test_param[1]", "test_probe.py::test_param[2]", "test_probe.py::test_param[3]",
                   "test_probe.py::test_plain"]
    first, second = (gpu_check.run_pytest(f"probe_{i}", part, tmp_path, 60.0, env, cwd=tmp_path)
                     for i, part in enumerate(gpu_check.split_contiguous(ids, 2)))
    assert first["counts"] == {"passed": 2} and first["status"] == "passed"
    assert second["counts"] == {"passed": 1, "failed": 1} and second["status"] == "failed"
    assert [f["id"] for f in second["failures"]] == ["test_probe.py::test_param[3]"]
    assert gpu_check.collect_test_ids("missing_file.py", env, cwd=tmp_path) == []


def test_help():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--budget" in out.stdout and "tests_cuda_1of2.log" in out.stdout
