"""Every Triton kernel launch compiles for sm_90 and sm_80 without register spills, on any machine.

tools/triton_compile_check.py compiles the launches with a stand-in driver (no GPU needed):
the interpreter that runs the other Triton tests on CPU compiles nothing, so this is what
catches code that only the GPU compiler rejects (it rejected float64 tl.dot without
out_dtype on the H200) and tiles too large for the register file.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = {
    "_pair_forward_kernel", "_pair_backward_kernel", "_linear_kernel", "_six_head_forward_kernel",
    "_grad_logits_kernel", "_grad_m_kernel", "_grad_features_kernel", "_grad_weight_kernel",
    "_pack_labels_kernel", "_mine_pairs_kernel", "_co_counts_kernel", "_contrast_tables_kernel", "_row_totals_kernel",
    "_load_shares_kernel",
}


ARCHS = (90, 80)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The check's rows and failures for every arch (one process per arch, run side by side)."""
    pytest.importorskip("triton.backends.nvidia")
    out = tmp_path_factory.mktemp("triton_compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = {
        arch: subprocess.Popen([sys.executable, str(ROOT / "tools" / "triton_compile_check.py"), "--arch", str(arch),
                                "--json", str(out / f"sm_{arch}.json")],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for arch in ARCHS
    }
    result = {"rows": [], "failures": [], "logs": {}}
    for arch, proc in procs.items():
        log, _ = proc.communicate(timeout=1200)
        path = out / f"sm_{arch}.json"
        assert path.exists(), f"sm_{arch}: the check wrote no report (rc {proc.returncode}):\n{log[-4000:]}"
        arch_result = json.loads(path.read_text())
        result["rows"] += arch_result["rows"]
        result["failures"] += arch_result["failures"]
        result["logs"][arch] = (proc.returncode, log)
    return result


def test_every_launch_compiles(report):
    assert not report["failures"], "\n".join(report["failures"])
    for arch in ARCHS:
        compiled = {row["kernel"] for row in report["rows"] if row["arch"] == arch}
        assert compiled == KERNELS, f"sm_{arch}: compiled {sorted(compiled)}"


def test_no_register_spills(report):
    spills = [f"sm_{r['arch']} {r['kernel']}: {r['spill_stores']} B stored, {r['registers']} registers, {r['first_case']}"
              for r in report["rows"] if r["spill_stores"] or r["spill_loads"]]
    assert not spills, "\n".join(spills)
    for arch, (returncode, log) in report["logs"].items():
        assert returncode == 0, f"sm_{arch}:\n{log[-3000:]}"
