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
        (["--cooccur", "pairs:2"], "strength must be in [0, 1]"),
        (["--cooccur", "pairs:0.9", "pairs:0.90"], "names a structure twice"),
        (["--train-args", "--cooccur pairs:0.5"], "may not set --cooccur"),
        (["--runs", "baseline", "minmax", "--compare", "minmax:l2"], "--compare 'minmax:l2': expected A:B"),
        (["--runs", "baseline", "minmax", "--compare", "minmax"], "expected A:B"),
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


def test_cooccur_runs_and_cells_of_a_cooccur_axis():
    """The co-occurrence runs' indeed-train flags (their --pairs and --blocks none come with the pair-mining
    work), and a cell per (spec, N, run, seed) with the spec in its folder and flags."""
    args = study.build_parser().parse_args([*TINY, "--out", "s", "--labels-per-image", "4", "--seeds", "0",
                                            "--runs", "baseline", "minmax", "cooccur", "cooccur-orig",
                                            "--cooccur", "pairs:0.9", "groups=0+1,2+3+4:0.5", "hub=7:0"])  # fmt: skip
    args.runs = [study.parse_run(text) for text in args.runs]
    cells = study.planned_cells(args)
    assert [c["name"] for c in cells[:4]] == [f"pairs-0.9-n4-{run}-seed0" for run in ("baseline", "minmax", "cooccur", "cooccur-orig")]
    assert {c["name"].rsplit("-n4", 1)[0] for c in cells} == {"pairs-0.9", "groups-0+1_2+3+4-0.5", "hub-7-0"}
    argv = {c["run"]: c["argv"] for c in cells if c["cooccur"] == "hub=7:0"}
    assert argv["cooccur"][-8:] == ["--method", "indeed", "--norm", "minmax", "--pairs", "cooccur", "--cooccur", "hub=7:0"]
    assert argv["cooccur-orig"][-8:] == ["--method", "indeed", "--pairs", "cooccur", "--blocks", "none", "--cooccur", "hub=7:0"]
    assert argv["minmax"][-6:] == ["--method", "indeed", "--norm", "minmax", "--cooccur", "hub=7:0"]
    assert study_report.unbiased_reference("pairs:0.9", ["pairs:0", "pairs:0.9"]) == "pairs:0"
    assert study_report.unbiased_reference("pairs:0.9", ["hub:0", "pairs:0.9"]) is None


@pytest.fixture(scope="module")
def cooccur_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("cooccur-study")
    argv = [*TINY, "--epochs", "1", "--labels-per-image", "3", "--cooccur", "pairs:0", "pairs:0.9", "--runs", "baseline", "minmax",
            "--seeds", "0", "1", "--compare", "baseline:minmax", "--jobs", "2", "--out", str(out)]  # fmt: skip
    assert study.main(argv) == 0
    return out, argv


def test_a_tiny_cooccur_grid_reports_context_scores_bias_and_comparisons(cooccur_study, capsys):
    out, argv = cooccur_study
    report = json.loads((out / "study.json").read_text())
    assert report["planned"] == 8 and len(report["cells"]) == 8 and report["settings"]["cooccur"] == ["pairs:0", "pairs:0.9"]
    mAP, context = {}, {}
    for cell in report["cells"]:
        folder = out / "cells" / f"{cell['cooccur'].replace(':', '-')}-n3-{cell['run']}-seed{cell['seed']}"
        (result,) = json.loads((folder / "results.json").read_text())
        assert result["config"]["cooccur"] == cell["cooccur"] and cell["context_score"] == result["context_score"]
        key = cell["cooccur"], cell["run"], cell["seed"]
        mAP[key], context[key] = cell["mAP"], cell["context_score"]
    summary = report["summary"]
    for row in summary["table"]:
        values = [context[row["cooccur"], row["run"], s] for s in (0, 1)]
        assert row["context_mean"] == pytest.approx(statistics.fmean(values)) and row["context_std"] == pytest.approx(statistics.stdev(values))
    for d in summary["differences"]:
        paired = [context[d["cooccur"], "minmax", s] - context[d["cooccur"], "baseline", s] for s in (0, 1)]
        assert d["context"]["mean"] == pytest.approx(statistics.fmean(paired))
        (opposite,) = [c for c in summary["comparisons"] if c["cooccur"] == d["cooccur"]]
        assert (opposite["a"], opposite["b"]) == ("baseline", "minmax") and opposite["mean"] == pytest.approx(-d["mean"])
    (bias,) = summary["bias"]
    losses = [mAP["pairs:0", "baseline", s] - mAP["pairs:0.9", "baseline", s] for s in (0, 1)]
    gains = [mAP["pairs:0.9", "minmax", s] - mAP["pairs:0.9", "baseline", s] for s in (0, 1)]
    assert bias["cooccur"] == "pairs:0.9" and bias["reference"] == "pairs:0" and bias["loss"]["mean"] == pytest.approx(statistics.fmean(losses))
    recovered = bias["recovered"]["minmax"]
    assert recovered["gain"] == pytest.approx(statistics.fmean(gains)) and recovered["loss"] == pytest.approx(statistics.fmean(losses))
    fraction = statistics.fmean(gains) / statistics.fmean(losses) if statistics.fmean(losses) > 0 else None  # no loss: nothing to recover
    assert recovered["fraction"] == (None if fraction is None else pytest.approx(fraction))
    text = (out / "study.md").read_text()
    assert "| co-occurrence | N | Baseline | INDeeD (Min-max) |" in text and "recovered: INDeeD (Min-max)" in text
    assert f"| `pairs:0.9` | 3 | 1 | {mAP['pairs:0.9', 'baseline', 1]:.1f} | {mAP['pairs:0.9', 'minmax', 1]:.1f} |" in text
    assert "| `pairs:0.9` | 3 | baseline − minmax | 0, 1 |" in text
    capsys.readouterr()
    assert study.main(argv) == 0 and study.main(argv + ["--report-only"]) == 0  # resumed: every cell read back
    assert "8 finished (read back), 0 to train" in capsys.readouterr().out


def test_an_existing_study_reads_back(tmp_path):
    """docs/studies/ml-digits-demo, written before co-occurrence specs: its cells read back, its numbers unchanged."""
    committed = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "studies", "ml-digits-demo")
    for name in os.listdir(os.path.join(committed, "cells")):
        (tmp_path / "cells" / name).mkdir(parents=True)
        (tmp_path / "cells" / name / "results.json").write_bytes(open(os.path.join(committed, "cells", name, "results.json"), "rb").read())
    argv = ["--dataset", "ml-digits", "--labels-per-image", "7", "--runs", "baseline", "minmax", "identical-only", "disparate-only",
            "--seeds", "0", "1", "2", "3", "4", "--train-size", "2000", "--test-size", "2000", "--epochs", "5", "--device", "cpu",
            "--out", str(tmp_path), "--report-only"]  # fmt: skip
    assert study.main(argv) == 0
    ours, committed_md = (tmp_path / "study.md").read_text(), open(os.path.join(committed, "study.md")).read()
    assert len(json.loads((tmp_path / "study.json").read_text())["cells"]) == 20
    assert "| 7 | INDeeD (Min-max) | 0, 1, 2, 3, 4 | +24.7 | [+20.0, +29.5] |" in ours
    assert ours.splitlines()[4:9] == committed_md.splitlines()[4:9] and ours.splitlines()[12:] == committed_md.splitlines()[12:]
