"""indeed-train / indeed-predict end to end on tiny ml-digits, resume, and every bad CLI input."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from indeed_ext.recipes import engine, predict, train
from test_data import write_mnist

# The CPU kernels when the library has them, else the eager reference (same results).
BACKEND = "auto" if torch._C._dispatch_has_kernel_for_dispatch_key("indeed::_six_head_loss_forward", "CPU") else "reference"
TINY = ["--dataset", "ml-digits", "--labels-per-image", "3", "--train-size", "64", "--test-size", "40", "--batch-size", "32",
        "--epochs", "1", "--device", "cpu", "--quiet", "--backend", BACKEND]


def run(out, *extra):
    return train.main([*TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("both")
    assert run(out, "--method", "both", "--norm", "minmax", "l2", "--seed", "3") == 0
    return out


def test_end_to_end_results(both_run):
    results = json.loads((both_run / "results.json").read_text())
    assert [(r["method"], r["norm"]) for r in results] == [("baseline", None), ("indeed", "minmax"), ("indeed", "l2")]
    for r in results:
        assert 0 <= r["mAP"] <= 100 and len(r["per_class_ap"]) == 10
        assert r["mAP"] == pytest.approx(np.mean([ap for ap in r["per_class_ap"] if ap is not None]))
        assert r["seed"] == 3 and r["epochs"] == 1 and r["train_time_s"] > 0
        assert r["config"]["dataset"] == "ml-digits" and r["config"]["labels_per_image"] == 3
        assert [h["epoch"] for h in r["history"]] == [1] and r["history"][0]["mAP"] == r["mAP"]
        assert (both_run / f"confidence_{r['name']}.png").stat().st_size > 0
        assert engine.load_checkpoint(str(both_run / r["name"] / "checkpoint.pt"))["epoch"] == 1
    assert results[0]["lam"] == 0.0 and results[1]["lam"] == 1.0
    table = (both_run / "table.md").read_text()
    for title in ("Baseline", "INDeeD (Min-max)", "INDeeD (L2)"):
        assert title in table


def test_models_start_from_the_same_weights(tmp_path):
    """Baseline and INDeeD runs of one seed share the initial weights (the comparison is paired)."""
    run(tmp_path / "a", "--method", "baseline", "--lr", "1e-12", "--schedule", "none")
    run(tmp_path / "b", "--method", "indeed", "--lr", "1e-12", "--schedule", "none")
    a = engine.load_checkpoint(str(tmp_path / "a" / "baseline" / "checkpoint.pt"))["model"]
    b = engine.load_checkpoint(str(tmp_path / "b" / "indeed-minmax" / "checkpoint.pt"))["model"]
    conv = "backbone.features.0.weight"
    torch.testing.assert_close(a[conv], b[conv], atol=1e-9, rtol=0)


@pytest.mark.parametrize("warmup", [["--lam-warmup", "0"], ["--lam-warmup", "2"]], ids=["constant-lam", "lam-warmup"])
def test_resume_matches_uninterrupted_run(tmp_path, warmup):
    """2 epochs straight == 1 epoch, then --resume to 2; augmentation, shuffling, pairs and the λ ramp included."""
    common = ["--method", "indeed", "--cutout", "0.3", "--seed", "7", *warmup]
    assert run(tmp_path / "straight", *common, "--epochs", "2") == 0
    assert run(tmp_path / "split", *common, "--epochs", "1") == 0
    assert run(tmp_path / "split", *common, "--epochs", "2", "--resume") == 0
    a = engine.load_checkpoint(str(tmp_path / "straight" / "indeed-minmax" / "checkpoint.pt"))
    b = engine.load_checkpoint(str(tmp_path / "split" / "indeed-minmax" / "checkpoint.pt"))
    assert a["epoch"] == b["epoch"] == 2
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a["scheduler"] == b["scheduler"]
    assert [h["mAP"] for h in a["history"]] == [h["mAP"] for h in b["history"]]
    # Resuming a finished run trains nothing and reports the same result.
    assert run(tmp_path / "split", *common, "--epochs", "2", "--resume") == 0
    assert json.loads((tmp_path / "split" / "results.json").read_text())[0]["mAP"] == a["history"][-1]["mAP"]


def test_cooccur_pairs_resume_with_their_statistic(tmp_path):
    """--pairs cooccur: the checkpoint holds the loss's co-occurrence counts and a resumed run continues
    with them (z = 0: the weights, and so the pairs, depend on the counts); --blocks none trains the
    original heads of those pairs only."""
    common = ["--method", "indeed", "--pairs", "cooccur", "--cooccur-z", "0", "--blocks", "none", "--seed", "7"]
    assert run(tmp_path / "straight", *common, "--epochs", "2") == 0
    assert run(tmp_path / "split", *common, "--epochs", "1") == 0
    assert run(tmp_path / "split", *common, "--epochs", "2", "--resume") == 0
    a, b = (engine.load_checkpoint(str(tmp_path / f / "indeed-minmax" / "checkpoint.pt")) for f in ("straight", "split"))
    assert a["criterion"]["cooccurrence.samples"] == b["criterion"]["cooccurrence.samples"] == 2 * 64  # two epochs' rows
    assert torch.equal(a["criterion"]["cooccurrence.counts"], b["criterion"]["cooccurrence.counts"])
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    (result,) = json.loads((tmp_path / "split" / "results.json").read_text())
    assert result["title"] == "INDeeD (Min-max, cooccur, orig heads only)"
    assert (result["config"]["strategy"], result["config"]["cooccur_z"], result["config"]["blocks"]) == ("cooccur", 0.0, ["none"])
    assert all(h["ident"] == h["disp"] == 0 for h in result["history"])


def test_pair_flags_and_titles():
    parser = train.build_parser()

    def titles(*argv):
        return [r["title"] for r in train.planned_runs(train.parse_args(parser, ["--method", "both", *argv]))]

    assert titles() == ["Baseline", "INDeeD (Min-max)"]
    assert titles("--strategy", "matching") == ["Baseline", "INDeeD (Min-max, matching)"]
    assert titles("--pairs", "cooccur", "--blocks", "none", "--norm", "minmax", "l2") == [
        "Baseline", "INDeeD (Min-max, cooccur, orig heads only)", "INDeeD (L2, cooccur, orig heads only)"]
    assert train.loss_blocks(["none"]) == () and train.loss_blocks(["identical"]) == ("identical",)


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    """--compile (inductor on the CPU) trains the same model as eager, up to float rounding."""
    modes, compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or compile(model, mode=mode))
    common = ["--method", "indeed", "--seed", "5", "--epochs", "2"]
    assert run(tmp_path / "eager", *common) == 0
    assert modes == []
    assert run(tmp_path / "compiled", *common, "--compile") == 0
    assert modes == [None], "the CPU compiles in the default mode"
    eager, compiled = (json.loads((tmp_path / f / "results.json").read_text())[0] for f in ("eager", "compiled"))
    for a, b in zip(eager["history"], compiled["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["mAP"] == pytest.approx(a["mAP"], abs=1.0)


def test_compile_uses_cuda_graphs_on_one_gpu(monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode))
    engine.compile_model(torch.nn.Linear(2, 2), torch.device("cuda"))
    engine.compile_model(torch.nn.Linear(2, 2), torch.device("cpu"))
    monkeypatch.setattr(engine.distributed, "world_size", lambda: 2)
    engine.compile_model(torch.nn.Linear(2, 2), torch.device("cuda"))
    assert modes == ["reduce-overhead", None, None], "CUDA graphs on one GPU; not under DDP, not on the CPU"


def test_cuda_graph_steps_are_marked_for_compiled_models_only(monkeypatch):
    """cudagraph_mark_step_begin imports torch._inductor (seconds a process): only a torch.compile model, also under
    DistributedDataParallel's .module, marks its steps; an eager CPU run does not import its cudagraph_trees."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model = torch.nn.Linear(2, 2)
    wrapper = torch.nn.Module()
    wrapper.module = torch.compile(model)
    assert not engine.compiled(model) and engine.compiled(wrapper.module) and engine.compiled(wrapper)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(6, 2), torch.ones(6, 2)), batch_size=2)
    engine.predict_scores(model, loader, device=torch.device("cpu"))
    assert marks == []
    monkeypatch.setattr(engine, "compiled", lambda model: True)
    engine.predict_scores(model, loader, device=torch.device("cpu"))
    assert marks == [1, 1, 1]
    code = ("import sys, torch; from indeed_ext.recipes import engine; "
            "loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2), torch.ones(4, 2)), batch_size=2); "
            "engine.predict_scores(torch.nn.Linear(2, 2), loader, device=torch.device('cpu')); "
            "assert 'torch._inductor.cudagraph_trees' not in sys.modules, 'an eager CPU run imported cudagraph_trees'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lam_warmup_schedule():
    """Linear per step from 0 at the first batch to lam after warmup_epochs epochs, then constant."""
    lam = engine.warmed_up_lam
    assert [lam(0.5, 2, epoch, step, 4) for epoch in range(3) for step in range(4)] == pytest.approx(
        [0.5 * k / 8 for k in range(8)] + [0.5] * 4
    )
    assert lam(0.5, 2, 7, 3, 4) == 0.5
    assert [lam(0.5, 0, epoch, 1, 4) for epoch in range(2)] == [0.5, 0.5]  # 0 = off


def test_lam_warmup_changes_training(tmp_path):
    """The ramp reaches the loss: an epoch with λ ramping up from 0 trains other weights than one at constant λ."""
    common = ["--method", "indeed", "--seed", "7"]
    assert run(tmp_path / "constant", *common, "--lam-warmup", "0") == 0
    assert run(tmp_path / "warmup", *common, "--lam-warmup", "1") == 0
    a = engine.load_checkpoint(str(tmp_path / "constant" / "indeed-minmax" / "checkpoint.pt"))
    b = engine.load_checkpoint(str(tmp_path / "warmup" / "indeed-minmax" / "checkpoint.pt"))
    assert not torch.equal(a["model"]["classifier.weight"], b["model"]["classifier.weight"])
    assert b["fingerprint"]["lam_warmup"] == 1 and a["fingerprint"]["lam_warmup"] == 0


def test_present_negatives_reaches_the_loss_and_its_checkpoint(tmp_path):
    """--present-negatives mean trains other weights than the paper's sum, is recorded, and a run from before
    the flag (no such setting in its checkpoint) resumes as "sum"."""
    common = ["--method", "indeed", "--seed", "7"]
    assert run(tmp_path / "sum", *common) == 0
    assert run(tmp_path / "mean", *common, "--present-negatives", "mean") == 0
    a = engine.load_checkpoint(str(tmp_path / "sum" / "indeed-minmax" / "checkpoint.pt"))
    b = engine.load_checkpoint(str(tmp_path / "mean" / "indeed-minmax" / "checkpoint.pt"))
    assert not torch.equal(a["model"]["classifier.weight"], b["model"]["classifier.weight"])
    assert a["fingerprint"]["present_negatives"] == "sum" and b["fingerprint"]["present_negatives"] == "mean"
    old = {"fingerprint": {"lr": 0.001}}
    engine.check_resumable(old, {"lr": 0.001, "present_negatives": "sum"}, "c.pt", train.UNRECORDED_SETTINGS)
    with pytest.raises(engine.CheckpointError, match="present_negatives: 'sum' -> 'mean'"):
        engine.check_resumable(old, {"lr": 0.001, "present_negatives": "mean"}, "c.pt", train.UNRECORDED_SETTINGS)


def test_a_baseline_resumes_whatever_the_indeed_settings(tmp_path, capsys):
    """λ, its warm-up and the pair settings do not touch a baseline: its checkpoint resumes under others; INDeeD's does not."""
    assert run(tmp_path, "--method", "both", "--lam-warmup", "2") == 0
    assert run(tmp_path, "--method", "baseline", "--lam", "0.5", "--lam-warmup", "0", "--strategy", "matching", "--epochs", "2", "--resume") == 0
    assert "[baseline] resumed from" in capsys.readouterr().out
    assert run(tmp_path, "--method", "indeed", "--lam-warmup", "0", "--epochs", "2", "--resume") == 1
    assert "lam_warmup: 2 -> 0" in capsys.readouterr().err


def test_resume_with_other_settings_fails(tmp_path, capsys):
    assert run(tmp_path, "--method", "baseline") == 0
    assert run(tmp_path, "--method", "baseline", "--lr", "0.01", "--epochs", "2", "--resume") == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "lr: 0.001 -> 0.01" in err


def test_cooccur_reports_the_context_score_and_blocks_a_resume_with_another_spec(tmp_path, capsys):
    from indeed_ext.metrics import context_score
    from indeed_ext.recipes.data import CooccurSpec, DataOptions, build_dataset

    assert run(tmp_path, "--method", "baseline", "--cooccur", "pairs:0.90", "--ema", "0.9") == 0
    (result,) = json.loads((tmp_path / "results.json").read_text())
    assert result["config"]["cooccur"] == "pairs:0.9" and 0 < result["context_score"] < 1 and 0 < result["context_score_ema"] < 1
    bundle = build_dataset("ml-digits", DataOptions(labels_per_image=3, test_size=40, cooccur="pairs:0.9"))
    model, _ = predict.load_model(str(tmp_path / "baseline" / "checkpoint.pt"))
    with torch.no_grad():
        probabilities = torch.sigmoid(model(torch.stack([bundle.test[i][0] for i in range(40)])))
    labels = torch.tensor([int(bundle.test[i][1].argmax()) for i in range(40)])
    context = CooccurSpec.parse("pairs:0.9").resolve(10).context_matrix()
    assert result["context_score"] == pytest.approx(context_score(probabilities, labels, context), abs=1e-6)
    table = (tmp_path / "table.md").read_text()
    assert "Context score (pairs:0.9)" in table and f"| Baseline | {result['context_score']:.3f} | {result['context_score_ema']:.3f} |" in table
    capsys.readouterr()
    assert run(tmp_path, "--method", "baseline", "--cooccur", "hub:0.9", "--ema", "0.9", "--epochs", "2", "--resume") == 1
    assert "cooccur: 'pairs:0.9' -> 'hub:0.9'" in capsys.readouterr().err


def test_reweight_with_weight_one_trains_the_baseline(tmp_path, capsys):
    """Singh et al.'s weighted loss through the driver: weight 1 gives the baseline's weights exactly;
    weight 10 others, its pairs from the training labels in results.json; a resume needs the same weight."""
    common = ["--cooccur", "pairs:0.9", "--seed", "2"]
    assert run(tmp_path / "baseline", "--method", "baseline", *common) == 0
    assert run(tmp_path / "one", "--method", "reweight", "--exclusive-weight", "1", *common) == 0
    assert run(tmp_path / "ten", "--method", "reweight", *common) == 0
    weights = {f: engine.load_checkpoint(str(tmp_path / f / ("baseline" if f == "baseline" else "reweight") / "checkpoint.pt"))["model"]
               for f in ("baseline", "one", "ten")}  # fmt: skip
    assert all(torch.equal(weights["baseline"][k], weights["one"][k]) for k in weights["baseline"])
    assert not torch.equal(weights["baseline"]["classifier.weight"], weights["ten"]["classifier.weight"])
    (result,) = json.loads((tmp_path / "ten" / "results.json").read_text())
    assert result["method"] == "reweight" and result["title"] == "Weighted loss (Singh et al., w = 10)"
    assert sorted((p["b"], p["c"]) for p in result["biased_pairs"]) == [(str(k), str(k ^ 1)) for k in range(10)]  # the partners
    assert "annotation co-occurrence" in result["biased_pairs_ranking"] and "context_score" in result
    capsys.readouterr()
    assert run(tmp_path / "ten", "--method", "reweight", "--exclusive-weight", "5", "--epochs", "2", "--resume", *common) == 1
    assert "exclusive_weight: 10.0 -> 5.0" in capsys.readouterr().err


def test_featuresplit_through_the_driver(tmp_path, capsys):
    """Singh et al.'s feature-split method: its pairs from the training labels, its running mean in the
    checkpoint (resumed with the model), a model other than the baseline's, BCE only. N = 4: with an odd
    N every image holds a digit without its partner, and no row would update the mean."""
    common = ["--cooccur", "pairs:0.9", "--labels-per-image", "4", "--seed", "2"]
    assert run(tmp_path / "baseline", "--method", "baseline", *common) == 0
    assert run(tmp_path / "split", "--method", "featuresplit", *common) == 0
    checkpoint = engine.load_checkpoint(str(tmp_path / "split" / "featuresplit" / "checkpoint.pt"))
    baseline = engine.load_checkpoint(str(tmp_path / "baseline" / "baseline" / "checkpoint.pt"))
    assert not torch.equal(baseline["model"]["classifier.weight"], checkpoint["model"]["classifier.weight"])
    assert int(checkpoint["criterion"]["context_batches"]) > 0 and checkpoint["criterion"]["context_mean"].abs().sum() > 0
    (result,) = json.loads((tmp_path / "split" / "results.json").read_text())
    assert result["method"] == "featuresplit" and result["title"] == "Feature-split (Singh et al.)"
    partners = [int(p["c"]) == int(p["b"]) ^ 1 for p in result["biased_pairs"]]
    assert len(partners) == 10 and sum(partners) >= 8  # 64 images: a class's most frequent companion may be another
    assert run(tmp_path / "split", "--method", "featuresplit", "--epochs", "2", "--resume", *common) == 0
    resumed = engine.load_checkpoint(str(tmp_path / "split" / "featuresplit" / "checkpoint.pt"))
    assert int(resumed["criterion"]["context_batches"]) == 2 * int(checkpoint["criterion"]["context_batches"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(tmp_path / "asl", "--method", "featuresplit", "--loss", "asl", *common)
    assert "--method featuresplit is Singh et al.'s BCE method" in capsys.readouterr().err


def test_checkpoint_written_atomically(tmp_path):
    path = tmp_path / "c.pt"
    engine.save_checkpoint(str(path), {"x": torch.ones(2)})
    engine.save_checkpoint(str(path), {"x": torch.zeros(2)})
    assert torch.equal(engine.load_checkpoint(str(path))["x"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


def test_required_ml_mnist_command_flags(tmp_path):
    """The issue's command line, at tiny sizes, on MNIST files in torchvision's layout."""
    write_mnist(str(tmp_path / "data" / "MNIST" / "raw"), count=40)
    argv = ["--dataset", "ml-mnist", "--root", str(tmp_path / "data"), "--labels-per-image", "7", "--method", "both",
            "--norm", "minmax", "--backbone", "simple-cnn", "--epochs", "1", "--batch-size", "16", "--train-size", "32",
            "--test-size", "20", "--seed", "0", "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet", "--backend", BACKEND]
    assert train.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["method"], r["norm"]) for r in results] == [("baseline", None), ("indeed", "minmax")]


def test_predict_matches_the_model(both_run, tmp_path):
    """PNGs of test canvases through indeed-predict give the model's own probabilities."""
    from indeed_ext.recipes.data import DataOptions, build_dataset

    bundle = build_dataset("ml-digits", DataOptions(test_size=5))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(bundle.test.canvas(i)[0].numpy()).save(images / f"canvas{i}.png")
    checkpoint = both_run / "indeed-minmax" / "checkpoint.pt"
    assert predict.main([str(checkpoint), str(images), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["image"] + [str(d) for d in range(10)]
    assert [r[0] for r in rows[1:]] == [f"canvas{i}.png" for i in range(5)]
    model, _ = predict.load_model(str(checkpoint))
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.stack([bundle.test[i][0] for i in range(5)])))
    torch.testing.assert_close(torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]]), expected, atol=1e-5, rtol=0)


def test_no_progress_bars_in_piped_output(tmp_path):
    """Without --quiet and with stderr a pipe: the epoch lines, but no tqdm bars."""
    argv = [a for a in TINY if a != "--quiet"] + ["--method", "baseline", "--out", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-m", "indeed_ext.recipes.train", *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "[baseline] epoch 1/1" in proc.stdout
    assert "it/s" not in proc.stderr + proc.stdout and "\r" not in proc.stderr


def test_predict_takes_files_and_folders(both_run, tmp_path, capsys):
    from indeed_ext.recipes.data import DataOptions, build_dataset

    bundle = build_dataset("ml-digits", DataOptions(test_size=3))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(bundle.test.canvas(i)[0].numpy()).save((folder if i else tmp_path) / f"canvas{i}.png")
    checkpoint = str(both_run / "baseline" / "checkpoint.pt")
    single = str(tmp_path / "canvas0.png")
    assert predict.main([checkpoint, single, str(folder), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert [r[0] for r in rows[1:]] == [single, str(folder / "canvas1.png"), str(folder / "canvas2.png")]
    model, _ = predict.load_model(checkpoint)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.stack([bundle.test[i][0] for i in range(3)])))
    torch.testing.assert_close(torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]]), expected, atol=1e-5, rtol=0)
    (tmp_path / "notes.txt").write_text("not an image")
    for bad, message in ((tmp_path / "missing.png", "not found"), (tmp_path / "notes.txt", "cannot read image")):
        with pytest.raises(SystemExit) as e:
            predict.main([checkpoint, str(bad), "--out", str(tmp_path / "q.csv")])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_predict_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        predict.main([str(tmp_path / "none.pt"), str(tmp_path)])
    assert e.value.code == 2 and "checkpoint" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "junk.pt"), str(tmp_path)])
    assert "not a readable checkpoint" in capsys.readouterr().err


BAD_INPUTS = [
    (["--dataset", "ml-cifar10"], "give their folder as root"),
    (["--dataset", "ml-mnist", "--root", "/nonexistent/folder"], "is not a folder"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--backbone", "alexnet"], "unknown backbone 'alexnet'"),
    (["--backbone", "timm:no_such_model"], "unknown timm model"),
    (["--labels-per-image", "0"], "must be >= 1"),
    (["--labels-per-image", "10"], "between 1 and 9"),
    (["--labels-per-image", "three"], "expected an integer"),
    (["--epochs", "0"], "must be >= 1"),
    (["--batch-size", "-4"], "must be >= 1"),
    (["--lr", "0"], "must be > 0.0"),
    (["--lam", "-1"], "must be >= 0.0"),
    (["--lam", "nan"], "must be >= 0.0"),
    (["--cutout", "1.5"], "must be <= 1.0"),
    (["--method", "magic"], "invalid choice: 'magic'"),
    (["--norm", "l1"], "invalid choice: 'l1'"),
    (["--blocks", "both"], "invalid choice: 'both'"),
    (["--present-negatives", "max"], "invalid choice: 'max'"),
    (["--schedule", "cosine"], "invalid choice: 'cosine'"),
    (["--strategy", "all"], "invalid choice: 'all'"),
    (["--pairs", "all"], "invalid choice: 'all'"),
    (["--cooccur-statistic", "pmi"], "invalid choice: 'pmi'"),
    (["--cooccur-z", "-1"], "must be >= 0.0"),
    (["--cooccur-z", "inf"], "--cooccur-z must be finite"),
    (["--blocks", "none", "identical"], "--blocks none leaves the blocks out: give it alone, not with identical"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
    (["--amp", "fp8"], "invalid choice: 'fp8'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "cuda"),
    (["--weights", "/nonexistent/w.pt"], "is not a file"),
    (["--train-size", "16"], "smaller than one batch"),
    (["--n", "3"], "unrecognized arguments"),
    (["--cooccur", "pairs:1.5"], "strength must be in [0, 1]"),
    (["--cooccur", "ring:0.5"], "unknown co-occurrence spec 'ring:0.5'"),
    (["--cooccur", "hub=12:0.5"], "hub 12 is not one of the 10 classes"),
    (["--exclusive-weight", "0"], "must be > 0.0"),
    (["--biased-pairs", "0"], "must be >= 1"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_cli_input(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, *extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_missing_timm_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(SystemExit):
        run(tmp_path, "--backbone", "timm:resnet18")
    assert "needs timm" in capsys.readouterr().err


def test_bad_weights_file(tmp_path, capsys):
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "w.pt")
    with pytest.raises(SystemExit):
        run(tmp_path, "--weights", str(tmp_path / "w.pt"))
    assert "weights do not fit the model" in capsys.readouterr().err


def test_no_flag_is_a_prefix_of_a_torchrun_option():
    from torch.distributed.run import get_args_parser

    torchrun = [s for a in get_args_parser()._actions for s in a.option_strings if s not in ("-h", "--help")]
    ours = [s for a in train.build_parser()._actions for s in a.option_strings if s not in ("-h", "--help")]
    clashes = [(mine, theirs) for mine in ours for theirs in torchrun if theirs.startswith(mine)]
    assert not clashes


def test_module_entry_point_exit_status():
    """python -m indeed_ext.recipes.train: bad input exits 2 with a message and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "indeed_ext.recipes.train", "--labels-per-image", "12", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "between 1 and 9" in proc.stderr and "Traceback" not in proc.stderr


def test_simple_cnn_gap_pooling_covers_one_object():
    from indeed_ext.recipes.backbones import SimpleCNNGap

    assert [SimpleCNNGap.pool_for(size) for size in (None, 8, 18, 19, 28, 32, 60)] == [2, 2, 2, 3, 3, 3, 3]
    torch.manual_seed(0)
    for pool, field in SimpleCNNGap.RECEPTIVE_FIELD.items():
        conv_stack = SimpleCNNGap(1, pool).features[:-2].eval()  # up to the last conv map, before the global pool
        x = torch.randn(1, 1, 99, 99, requires_grad=True)
        out = conv_stack(x)
        out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
        rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
        assert rows.max() - rows.min() + 1 == field


@pytest.mark.parametrize(
    "name, channels, size",
    [("simple-cnn", 1, 24), ("simple-cnn-gap", 1, 24), ("resnet50", 1, 64), ("vgg16", 3, 32), ("timm:resnet18", 3, 32)],
)
def test_backbones_give_pooled_nonnegative_features(name, channels, size):
    from indeed_ext.recipes.backbones import build_backbone

    torch.manual_seed(0)
    backbone, feature_dim = build_backbone(name, channels, image_size=(size, size))
    features = backbone.eval()(torch.randn(2, channels, size, size))
    assert features.shape == (2, feature_dim) and (features >= 0).all()


# (channels, side) of the composite canvases: 3 x 3 cells of 8 px digits, 28 px MNIST digits, 32 px CIFAR images.
@pytest.mark.parametrize("channels, side", [(1, 24), (1, 84), (3, 96)], ids=["ml-digits", "ml-mnist", "ml-cifar10"])
def test_simple_cnn_is_the_papers_network_for_every_canvas(channels, side):
    """3 x (conv 3x3, ReLU, max-pool 2) of 32/64/64 channels, flatten, FC 256 + ReLU, sized from the canvas."""
    from indeed_ext.recipes.backbones import build_backbone

    backbone, feature_dim = build_backbone("simple-cnn", channels, image_size=(side, side))
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [(channels, 32, (3, 3)), (32, 64, (3, 3)), (64, 64, (3, 3))]
    assert [(m.in_features, m.out_features) for m in fcs] == [(64 * (side // 8) ** 2, 256)]
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.AdaptiveAvgPool2d)) for m in backbone.modules())
    features = backbone(torch.randn(3, channels, side, side))
    assert feature_dim == 256 and features.shape == (3, 256) and (features >= 0).all()
    with pytest.raises(ValueError, match=f"built for {side}x{side} images, got {side + 8}x{side + 8}"):
        backbone(torch.randn(1, channels, side + 8, side + 8))


def test_default_backbone_per_dataset():
    parser = train.build_parser()
    assert train.parse_args(parser, ["--dataset", "ml-mnist"]).backbone == "simple-cnn"
    assert train.parse_args(parser, ["--dataset", "ml-digits"]).backbone == "simple-cnn-gap"
    assert train.parse_args(parser, ["--dataset", "ml-digits", "--backbone", "simple-cnn"]).backbone == "simple-cnn"


def test_kaiming_init_draws_he_normal_weights_and_zero_biases():
    from indeed_ext.recipes.backbones import build_backbone, initialize

    torch.manual_seed(0)
    backbone, _ = build_backbone("simple-cnn", 1, image_size=(84, 84))
    initialize(backbone, "torch")
    conv = backbone.features[3]  # the 32 -> 64 conv: fan_in 288
    assert conv.weight.std().item() == pytest.approx((1 / (3 * 288)) ** 0.5, rel=0.1) and conv.bias.abs().max() > 0
    initialize(backbone, "kaiming")
    assert conv.weight.std().item() == pytest.approx((2 / 288) ** 0.5, rel=0.1) and conv.bias.abs().max() == 0
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        initialize(backbone, "xavier")


def test_init_flag_trains_and_refuses_weights(tmp_path, capsys):
    assert run(tmp_path, "--method", "baseline", "--init", "kaiming") == 0
    (result,) = json.loads((tmp_path / "results.json").read_text())
    assert result["config"]["init"] == "kaiming"
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        run(tmp_path / "b", "--init", "kaiming", "--weights", str(tmp_path / "w.pt"))
    assert "would overwrite the --weights" in capsys.readouterr().err


def test_a_setting_added_after_a_checkpoint_compares_as_it_was():
    """A checkpoint written before --init existed ran with PyTorch's init: it resumes as "torch", not as "kaiming"."""
    old = {"fingerprint": {"lr": 0.001}}
    engine.check_resumable(old, {"lr": 0.001, "init": "torch"}, "c.pt", train.UNRECORDED_SETTINGS)
    with pytest.raises(engine.CheckpointError, match="init: 'torch' -> 'kaiming'"):
        engine.check_resumable(old, {"lr": 0.001, "init": "kaiming"}, "c.pt", train.UNRECORDED_SETTINGS)


def test_init_default_per_backbone():
    parser = train.build_parser()
    assert train.parse_args(parser, ["--dataset", "ml-mnist"]).init == "kaiming"
    assert train.parse_args(parser, ["--dataset", "ml-digits"]).init == "torch"  # simple-cnn-gap
    assert train.parse_args(parser, ["--backbone", "resnet50"]).init == "torch"
    assert train.parse_args(parser, ["--backbone", "simple-cnn", "--weights", "w.pt"]).init == "torch"


def test_simple_cnn_rejects_tiny_or_unknown_canvases():
    from indeed_ext.recipes.backbones import build_backbone

    with pytest.raises(ValueError, match="at least 8x8"):
        build_backbone("simple-cnn", 1, image_size=(7, 24))
    with pytest.raises(ValueError, match="image_size"):
        build_backbone("simple-cnn", 1)


def test_torchvision_weights_from_a_local_file(tmp_path):
    import torchvision

    from indeed_ext.recipes.backbones import build_backbone

    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    backbone, _ = build_backbone("resnet50", 3, str(tmp_path / "resnet50.pth"))
    assert torch.equal(backbone.conv1.weight, reference.conv1.weight)
    assert isinstance(backbone.fc, torch.nn.Identity)
