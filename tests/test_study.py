"""indeed-study: a tiny grid end to end on ml-digits, resume after a kill, and the interval arithmetic."""
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from indeed_ext.recipes import study, study_report
from test_train import BACKEND

TINY = ["--dataset", "ml-digits", "--train-size", "64", "--test-size", "40", "--epochs", "2",
        "--train-args", f"--batch-size 32 --backend {BACKEND}"]  # fmt: skip


def test_paired_interval_against_a_hand_computed_case():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t(0.975, df=2) = 4.302653 -> half width 2.484138
    mean, low, high = study_report.paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert low == pytest.approx(2 - 2.484138, abs=1e-6) and high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert study_report.t_quantile_975(4) == pytest.approx(2.776445, abs=1e-6)
    mean, low, high = study_report.paired_interval([-0.5])
    assert mean == -0.5 and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="no paired differences"):
        study_report.paired_interval([])


def test_run_variants_parse_and_bad_ones_are_rejected():
    assert study.parse_run("minmax") == {"name": "minmax", "base": "minmax", "flags": []}
    assert study.parse_run("half=minmax:--lam 0.5") == {"name": "half", "base": "minmax", "flags": ["--lam", "0.5"]}
    with pytest.raises(ValueError, match="unknown run 'softmax'"):
        study.parse_run("softmax")
    with pytest.raises(ValueError, match="run name 'Bad Name'"):
        study.parse_run("Bad Name=minmax")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train-args", "--seed 3"], "may not set --seed"),
        (["--runs", "baseline", "b=minmax:--labels-per-image 4"], "may not set --labels-per-image"),
        (["--runs", "minmax", "minmax"], "names a run twice"),
        (["--runs", "softmax"], "unknown run 'softmax'"),
        (["--root", "/no/such/folder"], "is not a folder"),
    ],
)
def test_bad_study_settings_exit_with_a_message(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        study.main([*TINY, "--out", str(tmp_path / "s"), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    argv = [*TINY, "--labels-per-image", "2", "3", "--runs", "baseline", "minmax", "--seeds", "0", "1", "--jobs", "2", "--out", str(out)]
    assert study.main(argv) == 0
    return out, argv


def test_tiny_grid_end_to_end(tiny_study):
    out, _ = tiny_study
    report = json.loads((out / "study.json").read_text())
    assert report["planned"] == 8 and len(report["cells"]) == 8
    finals = {}
    for cell in report["cells"]:
        folder = out / "cells" / f"n{cell['n']}-{cell['run']}-seed{cell['seed']}"
        (result,) = json.loads((folder / "results.json").read_text())  # an ordinary indeed-train run folder
        run_name = "baseline" if cell["run"] == "baseline" else "indeed-minmax"
        assert (folder / run_name / "checkpoint.pt").exists() and (folder / "table.md").exists()
        assert result["seed"] == cell["seed"] and result["config"]["labels_per_image"] == cell["n"]
        assert cell["mAP"] == result["mAP"] and cell["epoch_mAP"] == [h["mAP"] for h in result["history"]]
        assert len(cell["epoch_mAP"]) == 2
        finals[cell["n"], cell["run"], cell["seed"]] = cell["mAP"]
    summary = report["summary"]
    for row in summary["table"]:
        values = [finals[row["n"], row["run"], s] for s in (0, 1)]
        assert row["seeds"] == [0, 1] and row["mean"] == pytest.approx(statistics.fmean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values)) and row["paper"] is None  # the paper has no ml-digits
    for d in summary["differences"]:
        paired = [finals[d["n"], "minmax", s] - finals[d["n"], "baseline", s] for s in (0, 1)]
        assert d["run"] == "minmax" and d["mean"] == pytest.approx(statistics.fmean(paired))
        assert (d["low"], d["high"]) == pytest.approx(study_report.paired_interval(paired)[1:])
    assert len(summary["differences"]) == 2
    text = (out / "study.md").read_text()
    assert "| N | Baseline | paper | INDeeD (Min-max) | paper |" in text and "95 % interval" in text
    assert f"| 3 | 1 | {finals[3, 'baseline', 1]:.1f} | {finals[3, 'minmax', 1]:.1f} |" in text
    for png in ("map_vs_n.png", "map_per_epoch.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_cells_are_read_back_and_other_settings_refused(tiny_study, capsys):
    out, argv = tiny_study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/results.json")}
    assert study.main(argv) == 0
    assert "8 finished (read back), 0 to train" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/results.json")} == stamps
    baseline_only = [a.replace("--batch-size 32", "--batch-size 32 --lam 0.5 --lam-warmup 1") for a in argv]
    baseline_only[baseline_only.index("minmax")] = "baseline"  # runs: baseline baseline -> refused as a repeat
    with pytest.raises(SystemExit):
        study.main(baseline_only)
    assert "names a run twice" in capsys.readouterr().err
    baseline_only.remove("baseline")
    assert study.main(baseline_only) == 0  # a baseline does not depend on λ: its cells are read back
    assert "4 finished (read back), 0 to train" in capsys.readouterr().out
    assert study.main([a.replace("minmax", "l2") for a in argv] + ["--report-only"]) == 0  # l2 cells: none trained
    assert not list(out.glob("cells/*l2*")) and "| N | Baseline | paper | INDeeD (L2) | paper |" in (out / "study.md").read_text()
    assert study.main(argv) == 0  # the report of the grid again
    capsys.readouterr()
    changed = [a.replace("--batch-size 32", "--batch-size 16") for a in argv]
    with pytest.raises(SystemExit):
        study.main(changed)
    assert "trained with other settings (batch_size: 32 -> 16)" in capsys.readouterr().err


def test_the_paper_column_for_ml_mnist():
    run = study.parse_run("minmax")
    assert study_report.paper_map("ml-mnist", run, 7, "minmax") == 97.69
    assert study_report.paper_map("ml-mnist", study.parse_run("identical-only"), 5, "l2") == 90.15
    assert study_report.paper_map("ml-cifar10", study.parse_run("baseline"), 2, "minmax") == 89.64
    assert study_report.paper_map("ml-mnist", run, 4, "minmax") is None


def test_a_killed_study_continues_where_it_stopped(tmp_path):
    """SIGKILL the study while its second cell trains: that cell's process dies with it, and
    the re-run reads the first cell back and resumes the second from its checkpoint."""
    out = tmp_path / "s"
    argv = [*TINY, "--epochs", "3", "--labels-per-image", "3", "--runs", "baseline", "minmax", "--seeds", "0", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "indeed_ext.recipes.study", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first, second = out / "cells" / "n3-baseline-seed0", out / "cells" / "n3-minmax-seed0"
    deadline = time.monotonic() + 240
    while not (second / "indeed-minmax" / "checkpoint.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_mid_cell = not (second / "results.json").exists()
    first_stamp = (first / "results.json").stat().st_mtime_ns
    time.sleep(1.0)  # were the cell still training, its next epoch's log line or results would appear
    log_size = (second / "log.txt").stat().st_size
    time.sleep(2.0)
    assert (second / "log.txt").stat().st_size == log_size, "the cell went on training after the study was killed"

    assert study.main(argv) == 0
    assert (first / "results.json").stat().st_mtime_ns == first_stamp
    report = json.loads((out / "study.json").read_text())
    assert len(report["cells"]) == 2 and all(len(c["epoch_mAP"]) == 3 for c in report["cells"])
    if stopped_mid_cell:
        assert "resumed from" in (second / "log.txt").read_text()
    (result,) = json.loads((second / "results.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert os.path.getsize(out / "study.md") > 0


def test_two_studies_on_one_folder_are_refused(tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    with study.lock_study(str(out)):
        with pytest.raises(SystemExit):
            study.main([*TINY, "--runs", "baseline", "--seeds", "0", "--labels-per-image", "2", "--out", str(out)])
    assert "another indeed-study is running on" in capsys.readouterr().err
