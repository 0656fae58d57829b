"""tools/early_sign.py pairs each INDeeD run with its own baseline and counts sign agreements."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("early_sign", Path(__file__).resolve().parents[1] / "tools" / "early_sign.py")
early_sign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(early_sign)


def run(method, seed, first, last, n=7, **config):
    return {"name": method, "method": method, "title": method, "mAP": last,
            "history": [{"epoch": 1, "mAP": first}, {"epoch": 2, "mAP": last}],
            "config": {"labels_per_image": n, "seed": seed, "norm": "minmax", "blocks": ["identical", "disparate"],
                       **config}}


def write_cell(study: Path, name: str, runs: list) -> None:
    (study / "cells" / name).mkdir(parents=True)
    (study / "cells" / name / "results.json").write_text(json.dumps(runs))


def test_pairs_by_seed_and_data_and_counts_once(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_cell(a, "n7-baseline-seed0", [run("baseline", 0, 50.0, 90.0)])
    write_cell(a, "n7-baseline-seed1", [run("baseline", 1, 40.0, 80.0)])
    write_cell(a, "n3-baseline-seed0", [run("baseline", 0, 70.0, 60.0, n=3)])
    write_cell(a, "n7-minmax-seed0", [run("indeed", 0, 45.0, 85.0)])  # behind at both: agrees
    write_cell(a, "n7-minmax-seed1", [run("indeed", 1, 45.0, 79.5)])  # ahead, then behind by 0.5
    write_cell(a, "n3-minmax-seed0", [run("indeed", 0, 68.5, 62.0, n=3)])  # paired with n3, not n7
    write_cell(b, "n7-minmax-seed0", [run("indeed", 0, 45.0, 85.0)])  # a copied cell: counted once
    write_cell(b, "n7-variant-seed0", [run("indeed", 0, 55.0, 95.0)])  # same settings, another run: counted
    assert early_sign.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 INDeeD runs paired with their baselines; the first epoch's sign is the last's in 2 (50 %)")
    assert "| a | n7-minmax-seed1 | +5.0 | -0.5 |" in out and "| a | n3-minmax-seed0 | -1.5 | +2.0 |" in out
    assert early_sign.main([str(a), "--tie", "1"]) == 0
    assert "in 2 (67 %)" in capsys.readouterr().out


def test_no_pairs_is_an_error(tmp_path):
    write_cell(tmp_path, "n7-minmax-seed0", [run("indeed", 0, 45.0, 85.0)])
    with pytest.raises(SystemExit, match="no INDeeD run with a matching baseline"):
        early_sign.main([str(tmp_path)])
