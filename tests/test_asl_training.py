"""The base loss in the recipes (issue 19): indeed-train's --loss flags, recorded and resumed, and a
tiny indeed-study with the asl and asl-minmax runs, each paired with its own baseline."""
import json
import statistics

import pytest

from indeed_ext.recipes import engine, study, study_report, train
from test_study import TINY as TINY_STUDY
from test_train import run


def test_loss_flags_reach_the_loss_results_and_checkpoints(tmp_path, capsys):
    asl = ["--loss", "asl", "--gamma-neg", "3", "--gamma-pos", "1", "--clip", "0.1", "--focal-grad"]
    assert run(tmp_path, "--method", "both", *asl) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["title"] for r in results] == ["Baseline (ASL)", "INDeeD (Min-max, ASL)"]
    for r in results:
        settings = {k: r["config"][k] for k in ("loss", "gamma_neg", "gamma_pos", "clip", "focal_grad")}
        assert settings == {"loss": "asl", "gamma_neg": 3.0, "gamma_pos": 1.0, "clip": 0.1, "focal_grad": True}
        fingerprint = engine.load_checkpoint(str(tmp_path / r["name"] / "checkpoint.pt"))["fingerprint"]
        assert (fingerprint["loss"], fingerprint["gamma_neg"], fingerprint["clip"]) == ("asl", 3.0, 0.1)
    # The base loss changes a baseline too: its checkpoint resumes only with the same one.
    assert run(tmp_path, "--method", "baseline", *asl[:-3], "--epochs", "2", "--resume") == 1
    assert "cannot resume" in capsys.readouterr().err
    assert run(tmp_path, "--method", "baseline", *asl, "--epochs", "2", "--resume") == 0
    assert "[baseline] resumed from" in capsys.readouterr().out
    # and the loss trained with is the one named: BCE's baseline of the same seed ends elsewhere
    assert run(tmp_path / "bce", "--method", "baseline") == 0
    bce = json.loads((tmp_path / "bce" / "results.json").read_text())[0]
    assert bce["per_class_ap"] != results[0]["per_class_ap"]


def test_a_checkpoint_without_loss_settings_resumes_as_bce():
    fingerprint = {"loss": "bce", "gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "gamma": 2.0, "focal_grad": False}
    assert engine.setting_changes({}, fingerprint, train.UNRECORDED_SETTINGS) == ""
    assert "loss: 'bce' -> 'asl'" in engine.setting_changes({}, {"loss": "asl"}, train.UNRECORDED_SETTINGS)


@pytest.mark.parametrize(
    "flags, message",
    [(["--loss", "softmax"], "invalid choice: 'softmax'"), (["--clip", "1"], "--clip must be below 1"),
     (["--gamma-neg", "-1"], "must be >= 0.0")],
)
def test_bad_loss_flags(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path, *flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_tiny_asl_study_pairs_each_run_with_its_baseline(tmp_path):
    out = tmp_path / "s"
    argv = [*TINY_STUDY, "--epochs", "1", "--labels-per-image", "3", "--runs", "asl", "asl-minmax",
            "--seeds", "0", "1", "--jobs", "2", "--out", str(out)]
    assert study.main(argv) == 0
    report = json.loads((out / "study.json").read_text())
    finals = {(c["run"], c["seed"]): c["mAP"] for c in report["cells"]}
    assert len(finals) == 4
    for run_name, method in (("asl", "baseline"), ("asl-minmax", "indeed")):
        (result,) = json.loads((out / "cells" / f"n3-{run_name}-seed0" / "results.json").read_text())
        assert result["config"]["loss"] == "asl" and result["method"] == method
    # asl-minmax is paired with asl; asl with the BCE baseline, which this grid has not trained
    (difference,) = report["summary"]["differences"]
    assert (difference["run"], difference["reference"], difference["seeds"]) == ("asl-minmax", "asl", [0, 1])
    paired = [finals["asl-minmax", s] - finals["asl", s] for s in (0, 1)]
    assert difference["mean"] == pytest.approx(statistics.fmean(paired))
    assert "| 3 | INDeeD (Min-max, ASL) | Baseline (ASL) | 0, 1 |" in (out / "study.md").read_text()
    references = {name: study_report.reference_run(study.parse_run(name))
                  for name in ("asl", "half=asl-minmax:--lam 0.5", "minmax", "baseline", "ident=identical-only:--loss asl",
                               "focal=minmax:--loss focal")}
    assert references == {"asl": "baseline", "half=asl-minmax:--lam 0.5": "asl", "minmax": "baseline",
                          "baseline": "baseline", "ident=identical-only:--loss asl": "asl", "focal=minmax:--loss focal": "baseline"}
