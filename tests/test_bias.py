"""Contextual-bias audits: indeed_ext.metrics.bias_report against hand-computed cases, indeed-bias on an
indeed-train checkpoint (composites, a tiny VOC tree; every model format) with the numbers indeed-train
wrote, its errors, and the demo end to end at a tiny size."""
import json
import math

import pytest
import torch

from indeed_ext.metrics import RANKINGS, bias_report, biased_pairs_by_cooccurrence
from indeed_ext.recipes import bias, demo, engine, train
from indeed_ext.recipes.data import DataOptions, build_dataset
from indeed_ext.recipes.data.registry import multilabel_test_set
from test_train import BACKEND
from test_voc_coco import BIAS_TEST, BIAS_TRAINVAL, VOC_CLASSES, _colour, write_voc_tree

# ----------------------------------------------------------------------------- bias_report
# Classes A, B, C. Evaluation images: A with B (rows 0, 1), A alone (2, 3), B alone (4), C alone (5).
TARGETS = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
SCORES = torch.tensor([[0.9, 0.8, 0.1], [0.6, 0.7, 0.2], [0.7, 0.2, 0.1], [0.3, 0.1, 0.3], [0.5, 0.9, 0.2], [0.4, 0.3, 0.9]],
                      dtype=torch.float64)  # fmt: skip
# Training labels: B comes with A in 3 of A's 4 images; C never co-occurs.
TRAIN_TARGETS = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)


def test_bias_report_by_annotations_hand_computed():
    report = bias_report(SCORES, TARGETS, train_targets=TRAIN_TARGETS)
    # P(B | A) = 3/4, P(A | B) = 3/4: the first class wins the tie; C has no candidate.
    assert report.pairs.tolist() == [[0, 1], [1, 0]] and report.ranking == RANKINGS["train_targets"]
    torch.testing.assert_close(report.strength, torch.tensor([0.75, 0.75], dtype=torch.float64))
    # (A, B): negatives (no A) rows 4, 5 with A-scores 0.5, 0.4. Exclusive positives rows 2, 3 (0.7, 0.3):
    # ranking 0.7+, 0.5, 0.4, 0.3+ -> (1/1 + 2/4) / 2. Co-occur rows 0, 1 (0.9, 0.6): 0.9+, 0.6+ first -> 1.
    assert report.exclusive_ap[0].item() == pytest.approx(75.0) and report.cooccur_ap[0].item() == pytest.approx(100.0)
    # (B, A): negatives rows 2, 3, 5 (B-scores 0.2, 0.1, 0.3); exclusive row 4 (0.9) -> 1; co-occur rows 0, 1 (0.8, 0.7) -> 1.
    assert report.exclusive_ap[1].item() == pytest.approx(100.0) and report.cooccur_ap[1].item() == pytest.approx(100.0)
    assert report.exclusive_images.tolist() == [2, 1] and report.cooccur_images.tolist() == [2, 2]
    assert report.negative_images.tolist() == [2, 3]
    assert report.exclusive_mAP == pytest.approx(87.5) and report.cooccur_mAP == pytest.approx(100.0)
    exported = report.to_dict(["A", "B", "C"])
    json.dumps(exported, allow_nan=False)
    assert exported["pairs"][0] == {"b": "A", "c": "B", "strength": 0.75, "exclusive_ap": pytest.approx(75.0), "cooccur_ap": pytest.approx(100.0),
                                    "exclusive_images": 2, "cooccur_images": 2, "negative_images": 2}  # fmt: skip
    assert report.to_dict()["pairs"][1]["b"] == 1  # indices without names


def test_bias_report_rankings_by_scores():
    # The model's bias on its training images: A's mean score with B / without B.
    train_scores = torch.tensor([[0.8, 0.5, 0.1], [0.6, 0.5, 0.1], [0.7, 0.5, 0.1], [0.35, 0.5, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.9]],
                                dtype=torch.float64)  # fmt: skip
    report = bias_report(SCORES, TARGETS, TRAIN_TARGETS, train_scores=train_scores)
    # A: 0.7 / 0.35 = 2; B with A: 0.5, without A: 0.4 -> 1.25.
    assert report.pairs.tolist() == [[0, 1], [1, 0]] and report.strength.tolist() == pytest.approx([2.0, 1.25])
    assert report.ranking == RANKINGS["train_scores"]
    # Without training data the evaluation images rank themselves: A 0.75 / 0.5 = 1.5, B 0.75 / 0.9.
    report = bias_report(SCORES, TARGETS)
    assert report.ranking == RANKINGS["scores"] and report.strength.tolist() == pytest.approx([1.5, 0.75 / 0.9])
    # k keeps the most biased.
    assert bias_report(SCORES, TARGETS, TRAIN_TARGETS, k=1, train_scores=train_scores).pairs.tolist() == [[0, 1]]


def test_bias_report_given_pairs_and_missing_images():
    report = bias_report(SCORES, TARGETS, pairs=[[2, 0]])
    assert report.ranking == RANKINGS["pairs"] and math.isnan(report.strength[0].item())
    # C alone once: exclusive AP over rows without C; no image holds C and A.
    assert report.exclusive_ap[0].item() == pytest.approx(100.0) and math.isnan(report.cooccur_ap[0].item())
    exported = report.to_dict()
    json.dumps(exported, allow_nan=False)
    assert exported["pairs"][0]["strength"] is None and exported["pairs"][0]["cooccur_ap"] is None and exported["cooccur_mAP"] is None


def test_bias_report_errors():
    single = torch.eye(3, dtype=torch.float64).repeat(2, 1)  # every image holds one label
    with pytest.raises(ValueError, match=r"no biased pair among the 3 classes \(annotation co-occurrence"):
        bias_report(torch.rand(6, 3), single, train_targets=single)
    with pytest.raises(ValueError, match="no biased pair"):
        bias_report(torch.rand(6, 3), single)
    with pytest.raises(ValueError, match="train_targets must have the 3 classes of scores"):
        bias_report(SCORES, TARGETS, train_targets=torch.ones(4, 2))
    with pytest.raises(ValueError, match="give train_targets too"):
        bias_report(SCORES, TARGETS, train_scores=SCORES)
    with pytest.raises(ValueError, match="scores and targets must have the same shape"):
        bias_report(SCORES[:, :2], TARGETS)
    with pytest.raises(ValueError, match=r"pairs must hold classes in \[0, 3\)"):
        bias_report(SCORES, TARGETS, pairs=[[0, 3]])
    with pytest.raises(ValueError, match="k must be a positive int"):
        bias_report(SCORES, TARGETS, TRAIN_TARGETS, k=0)


# ----------------------------------------------------------------------------- indeed-bias on composites
COMPOSITE = ["--dataset", "ml-mnist-mini", "--labels-per-image", "2", "--cooccur", "pairs:0.9", "--train-size", "64", "--test-size", "60",
             "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--quiet", "--backend", BACKEND]  # fmt: skip


@pytest.fixture(scope="module")
def composite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("composite")
    assert train.main([*COMPOSITE, "--method", "both", "--pairs", "cooccur", "--out", str(out)]) == 0
    return out


def audit(argv, out):
    assert bias.main([*argv, "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "bias.json").read_text())


def test_audit_of_an_indeed_train_checkpoint_takes_its_data_settings(composite_run, tmp_path):
    """No data flags: the checkpoint's; the single-object numbers are indeed-train's, the pairs and APs the metrics'."""
    results = {r["name"]: r for r in json.loads((composite_run / "results.json").read_text())}
    checkpoint = composite_run / "indeed-minmax" / "checkpoint.pt"
    result = audit([str(checkpoint), "--rank-by", "annotations"], tmp_path)
    assert result["format"] == "checkpoint" and result["dataset"] == "ml-mnist-mini" and result["data"]["cooccur"] == "pairs:0.9"
    assert result["single_object_mAP"] == pytest.approx(results["indeed-minmax"]["mAP"], abs=1e-4)
    assert result["context_score"] == pytest.approx(results["indeed-minmax"]["context_score"], abs=1e-6)
    options = DataOptions(labels_per_image=2, train_size=64, test_size=60, cooccur="pairs:0.9")
    bundle = build_dataset("ml-mnist-mini", options)
    pairs, strength = biased_pairs_by_cooccurrence(bundle.train.targets)
    assert [(p["b"], p["c"]) for p in result["pairs"]] == [(str(b), str(c)) for b, c in pairs.tolist()]
    model, _ = engine.load_model(str(checkpoint))
    evaluation = multilabel_test_set(bundle, options)
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.stack([evaluation[i][0] for i in range(len(evaluation))])))
    expected = bias_report(scores, evaluation.targets, bundle.train.targets).to_dict([str(d) for d in range(10)])
    for ours, theirs in zip(result["pairs"], expected["pairs"]):
        assert {k: ours[k] for k in theirs} == pytest.approx(theirs, abs=1e-4)
    assert set(result["context_probability"]) == {str(d) for d in range(10)}
    for name in ("bias.md", "bias.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| b | c | strength |" in (tmp_path / "bias.md").read_text()


def test_every_model_format_gives_the_checkpoints_numbers(composite_run, tmp_path):
    """TorchScript, torch.export and a state_dict with --backbone: the same model, the same audit."""
    checkpoint = composite_run / "baseline" / "checkpoint.pt"
    model, config = engine.load_model(str(checkpoint))
    example = torch.zeros(2, *config["image_shape"])
    torch.jit.save(torch.jit.trace(model, example), str(tmp_path / "model.ts"))
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), str(tmp_path / "model.pt2"))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    data = COMPOSITE[:10]  # the data set flags: a file other than a checkpoint records none
    reference = audit([str(checkpoint), "--rank-by", "annotations"], tmp_path / "checkpoint")
    for name, extra, fmt in (("model.ts", [], "torchscript"), ("model.pt2", [], "export"), ("weights.pt", ["--backbone", "simple-cnn"], "state-dict")):
        result = audit([str(tmp_path / name), *data, *extra, "--rank-by", "annotations"], tmp_path / name.replace(".", "-"))
        assert result["format"] == fmt
        assert [pytest.approx(pair, abs=1e-5) for pair in reference["pairs"]] == result["pairs"], name
        for key in ("exclusive_mAP", "cooccur_mAP", "single_object_mAP", "context_score"):
            assert result[key] == pytest.approx(reference[key], abs=1e-5), (name, key)


BAD_AUDITS = [
    (["{missing}"], "model file"),
    (["{checkpoint}", "--dataset", "voc2007", "--root", "{voc}"], "was trained on 10 classes (0, 1, 2, 3, 4, ...), not on the data set's 20"),
    (["{weights}", "--dataset", "voc2007", "--root", "{voc}", "--backbone", "simple-cnn"], "scores 10 classes, the data set has 20"),
    (["{checkpoint}", "--dataset", "ml-digits"], "fails on the data set's images of shape (1, 24, 24)"),
    (["{weights}", "--dataset", "ml-mnist-mini"], "holds a state_dict: name its network with --backbone"),
    (["{weights}", "--dataset", "voc2007", "--root", "{tmp}", "--backbone", "simple-cnn"], "no VOC2007 folder"),
    (["{checkpoint}", "--labels-per-image", "1"], "no biased pair"),
    (["{checkpoint}", "--bias-model", "{checkpoint}", "--rank-by", "annotations"], "--bias-model ranks the pairs by that model's scores"),
    (["{checkpoint}", "--train-labels", "{labels}"], "expected (N, 10) labels"),
    (["{junk}", "--dataset", "ml-mnist-mini"], "not a readable checkpoint"),
    (["{scripted3}", "--dataset", "ml-mnist-mini"], "must give logits (B, 10) for the data set's 10 classes; it gave shape (1, 3)"),
    (["{weights}", "--dataset", "ml-mnist-mini", "--backbone", "simple-cnn-gap"], "the weights do not fit --backbone simple-cnn-gap"),
    (["{checkpoint}", "--cooccur", "ring:0.5"], "unknown co-occurrence spec"),
]


@pytest.mark.parametrize("argv, message", BAD_AUDITS, ids=[" ".join(a) for a, _ in BAD_AUDITS])
def test_bad_audit_input_names_the_problem(composite_run, tmp_path, capsys, argv, message):
    checkpoint = composite_run / "baseline" / "checkpoint.pt"
    model, _ = engine.load_model(str(checkpoint))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save(torch.ones(5, 3), tmp_path / "labels.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 3))), str(tmp_path / "three.ts"))
    voc = write_voc_tree(tmp_path / "voc", BIAS_TRAINVAL, BIAS_TEST)
    files = {"missing": tmp_path / "none.pt", "checkpoint": checkpoint, "weights": tmp_path / "weights.pt", "tmp": tmp_path, "voc": voc,
             "labels": tmp_path / "labels.pt", "junk": tmp_path / "junk.pt", "scripted3": tmp_path / "three.ts"}  # fmt: skip
    with pytest.raises(SystemExit) as e:
        bias.main([a.format(**files) for a in argv] + ["--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "bias.json").exists()


# ----------------------------------------------------------------------------- indeed-bias on a tiny VOC tree
def test_audit_matches_indeed_train_on_voc(tmp_path):
    """indeed-train --method both ranks the pairs by its baseline's bias on the training images for both models:
    indeed-bias gives each model's exclusive / co-occur APs (the baseline ranking itself, the INDeeD model with
    --bias-model); a run without a baseline ranks by the annotations, and so does --rank-by annotations."""
    root = write_voc_tree(tmp_path / "data", BIAS_TRAINVAL, BIAS_TEST, colour=_colour)
    common = ["--dataset", "voc2007", "--root", str(root), "--image-size", "32", "--batch-size", "4", "--epochs", "1",
              "--device", "cpu", "--quiet", "--backend", BACKEND]  # fmt: skip
    assert train.main([*common, "--method", "both", "--out", str(tmp_path / "both")]) == 0
    results = {r["name"]: r for r in json.loads((tmp_path / "both" / "results.json").read_text())}
    baseline = str(tmp_path / "both" / "baseline" / "checkpoint.pt")
    for name, extra in (("baseline", []), ("indeed-minmax", ["--bias-model", baseline])):
        result = audit([str(tmp_path / "both" / name / "checkpoint.pt"), *extra], tmp_path / f"audit-{name}")
        written = results[name]["exclusive_cooccur"]
        assert [pytest.approx(pair, abs=1e-4) for pair in written["pairs"]] == [{k: p[k] for k in pair} for p, pair in zip(result["pairs"], written["pairs"])]
        assert len(result["pairs"]) == len(written["pairs"])
        assert (result["exclusive_mAP"], result["cooccur_mAP"]) == pytest.approx((written["exclusive_mAP"], written["cooccur_mAP"]), abs=1e-4)
        assert "single_object_mAP" not in result and result["evaluation_images"] == len(BIAS_TEST)
    assert train.main([*common, "--method", "indeed", "--out", str(tmp_path / "indeed")]) == 0
    (written,) = json.loads((tmp_path / "indeed" / "results.json").read_text())
    result = audit([str(tmp_path / "indeed" / "indeed-minmax" / "checkpoint.pt"), "--rank-by", "annotations"], tmp_path / "audit-annotations")
    assert result["ranking"] == written["exclusive_cooccur"]["ranking"]
    expected = written["exclusive_cooccur"]["pairs"]
    assert len(result["pairs"]) == len(expected) and [pytest.approx(pair, abs=1e-4) for pair in expected] == [
        {k: p[k] for k in pair} for p, pair in zip(result["pairs"], expected)]
    assert {(p["b"], p["c"]) for p in result["pairs"]} <= {(VOC_CLASSES[b], VOC_CLASSES[c]) for b, c in ((11, 14), (14, 11), (7, 17), (17, 7))}


# ----------------------------------------------------------------------------- make demo at a tiny size
def test_demo_end_to_end_at_a_tiny_size(tmp_path, capsys):
    """Both grids, the audits, demo.md and the PNG; the printed bias and recovery are the cells' paired differences."""
    assert demo.main(["--out", str(tmp_path), "--seeds", "0", "1", "--train-size", "64", "--test-size", "40", "--epochs", "1"]) == 0
    text = (tmp_path / "demo.md").read_text()
    assert text in capsys.readouterr().out
    maps = {}
    for (spec, run) in demo.MODELS:
        for seed in (0, 1):
            folder = demo.cell_folder(str(tmp_path), spec, run, seed)
            (maps[(spec, run, seed)],) = [r["mAP"] for r in json.loads(open(f"{folder}/results.json").read())]
    loss = [maps[("pairs:0", "baseline", s)] - maps[("pairs:0.9", "baseline", s)] for s in (0, 1)]
    gain = [maps[("pairs:0.9", "cooccur", s)] - maps[("pairs:0.9", "baseline", s)] for s in (0, 1)]
    assert f"the baseline's loss from co-occurrence:  {sum(loss) / 2:+.1f} [" in text
    assert f'recovered by INDeeD with "cooccur" pairs:      {sum(gain) / 2:+.1f} [' in text
    assert (tmp_path / "partner_scores.png").stat().st_size > 0
    assert any(line.startswith("  the bias ") and "; the recovery " in line for line in text.splitlines())
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--seeds", "0"])
    assert "at least 2 different seeds" in capsys.readouterr().err


def test_demo_says_whether_each_effect_is_beyond_seed_noise():
    assert demo.verdict("the bias", {"mean": 27.0, "low": 23.3, "high": 31.0}) == "the bias is beyond seed noise at this size (its interval excludes 0)"
    assert "is beyond seed noise" in demo.verdict("x", {"mean": -5.0, "low": -9.0, "high": -1.0})
    assert demo.verdict("the recovery", {"mean": 2.0, "low": -1.0, "high": 5.0}) == "the recovery is NOT beyond seed noise at this size (its interval holds 0)"
    assert demo.verdict("x", {"mean": 2.0, "low": math.nan, "high": math.nan}) == "x: no interval"
