"""The large-run options of the driver on the CPU: AMP (bf16, fp16 with a GradScaler), channels_last,
EMA of the weights, gradient clipping; VOC-2007 and COCO-2014 through the data registry and
indeed-train (tiny generated trees from test_voc_coco), indeed-cam on the resulting checkpoint,
the console scripts, and the training-step benchmark at its --small size."""
import importlib
import importlib.util
import json
import os
import sys
import tomllib

import pytest
import torch
from PIL import Image
from torch import nn

from indeed_ext.recipes import cam, engine, train
from indeed_ext.recipes.data import DataOptions, build_dataset
from indeed_ext.recipes.data.images import IMAGENET_MEAN
from indeed_ext.recipes.ema import ModelEma
from test_voc_coco import COCO_COUNTS, COCO_ORDER, VOC_COUNTS, VOC_ORDER, coco_root, voc_root  # noqa: F401 (fixtures)

BACKEND = "auto" if torch._C._dispatch_has_kernel_for_dispatch_key("indeed::_six_head_loss_forward", "CPU") else "reference"
TINY = ["--dataset", "ml-digits", "--labels-per-image", "3", "--train-size", "64", "--test-size", "40", "--batch-size", "32",
        "--epochs", "1", "--device", "cpu", "--quiet", "--backend", BACKEND, "--method", "indeed"]  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- AMP, channels_last, EMA, clipping
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the GradScaler's skipped first steps
def test_amp_channels_last_ema_clip_run(tmp_path, amp):
    """One epoch under CPU autocast (fp16: with a GradScaler) with every large-run option; EMA weights evaluated and saved."""
    argv = [*TINY, "--amp", amp, "--channels-last", "--ema", "0.9", "--clip-grad", "1.0", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    (result,) = json.loads((tmp_path / "results.json").read_text())
    assert 0 <= result["mAP"] <= 100 and 0 <= result["mAP_ema"] <= 100 and len(result["per_class_ap_ema"]) == 10
    assert result["history"][0]["mAP_ema"] == result["mAP_ema"]
    checkpoint = engine.load_checkpoint(str(tmp_path / "indeed-minmax" / "checkpoint.pt"))
    assert (checkpoint["scaler"] is not None) == (amp == "fp16")
    model, _ = engine.load_model(str(tmp_path / "indeed-minmax" / "checkpoint.pt"))
    ema_model, config = engine.load_model(str(tmp_path / "indeed-minmax" / "checkpoint.pt"), ema=True)
    name = "backbone.features.0.weight"
    if amp == "bf16":  # fp16's GradScaler skips the first steps (its initial scale overflows), so weights may not move
        assert not torch.equal(model.state_dict()[name], ema_model.state_dict()[name])
    assert config["class_names"] == [str(d) for d in range(10)]


def test_load_model_without_ema_weights(tmp_path):
    assert train.main([*TINY, "--out", str(tmp_path)]) == 0
    with pytest.raises(engine.CheckpointError, match="without --ema"):
        engine.load_model(str(tmp_path / "indeed-minmax" / "checkpoint.pt"), ema=True)


def test_ema_update_math():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = ModelEma(model, decay=0.75)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    model.train()(torch.randn(8, 3))  # moves the BatchNorm statistics and counts one batch
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    for key, value in model.state_dict().items():
        expected = 0.75 * before[key] + 0.25 * value if value.is_floating_point() else value
        torch.testing.assert_close(ema.state_dict()[key], expected, atol=1e-6, rtol=0, msg=key)
    assert ema.state_dict()["1.num_batches_tracked"].item() == 1
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="decay must be in"):
            ModelEma(model, bad)


@pytest.mark.parametrize("clip, bounded", [(1e-3, True), (None, False)])
def test_clip_grad_bounds_the_step(clip, bounded):
    """Plain SGD with lr 1: one step moves the weights by the gradient, whose norm the flag caps."""
    torch.manual_seed(0)
    from indeed_ext.losses import INDeeDLoss
    from indeed_ext.model import INDeeD

    model = INDeeD(nn.Sequential(nn.Linear(5, 8), nn.ReLU()), 4, feature_dim=8)
    data = torch.utils.data.TensorDataset(torch.randn(16, 5) * 10, (torch.rand(16, 4) < 0.5).float())
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    engine.train_one_epoch(model, torch.utils.data.DataLoader(data, batch_size=16), INDeeDLoss(backend=BACKEND), optimizer,
                           device=torch.device("cpu"), progress=False, clip_grad=clip)  # fmt: skip
    moved = (torch.nn.utils.parameters_to_vector(model.parameters()).detach() - before).norm().item()
    assert (moved <= 1e-3 * (1 + 1e-4)) == bounded, moved


# ----------------------------------------------------------------------------- VOC and COCO through the registry
@pytest.mark.parametrize("train_scheme, test_scheme", [("all", "entire"), ("split", "single")])
def test_voc2007_builder(voc_root, train_scheme, test_scheme):  # noqa: F811
    options = DataOptions(root=str(voc_root), image_size=32, train_scheme=train_scheme, test_scheme=test_scheme)
    bundle = build_dataset("voc2007", options)
    assert len(bundle.train) == VOC_COUNTS["train"][train_scheme] and len(bundle.test) == VOC_COUNTS["test"][test_scheme]
    assert list(bundle.class_names) == VOC_ORDER and bundle.image_shape == (3, 32, 32) and bundle.mean == IMAGENET_MEAN
    image, target = bundle.test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and target.shape == (20,)
    assert image[1].mean() < -1.0  # normalised: green 30/255 of the generated JPEGs is (0.12 - 0.456) / 0.224 = -1.5


def test_coco2014_builder(coco_root):  # noqa: F811
    bundle = build_dataset("coco2014", DataOptions(root=str(coco_root), image_size=24, train_scheme="split", test_scheme="single"))
    assert len(bundle.train) == COCO_COUNTS["train"]["split"] and len(bundle.test) == COCO_COUNTS["test"]["single"]
    assert list(bundle.class_names) == COCO_ORDER
    assert bundle.train[0][0].shape == (3, 24, 24)


@pytest.mark.parametrize(
    "options, message",
    [
        (DataOptions(), "give their folder as root"),
        (DataOptions(root="ROOT", train_scheme="single"), "unknown training scheme 'single'"),
        (DataOptions(root="ROOT", test_scheme="all"), "unknown test scheme 'all'"),
    ],
)
def test_photo_builder_errors(voc_root, options, message):  # noqa: F811
    if options.root:
        options = DataOptions(**{**options.__dict__, "root": str(voc_root)})
    with pytest.raises(ValueError, match=message):
        build_dataset("voc2007", options)


def test_voc_end_to_end(voc_root, tmp_path, capsys):  # noqa: F811
    """indeed-train on the tiny VOC tree: simple CNN at 32x32, Cutout + RandAugment, OneCycle, single-label test images."""
    out = tmp_path / "out"
    argv = ["--dataset", "voc2007", "--root", str(voc_root), "--image-size", "32", "--test-scheme", "single", "--batch-size", "3",
            "--epochs", "1", "--method", "both", "--cutout", "0.5", "--randaugment", "--schedule", "onecycle",
            "--device", "cpu", "--quiet", "--backend", BACKEND, "--out", str(out)]  # fmt: skip
    assert train.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results] == ["baseline", "indeed"]
    assert all(len(r["per_class_ap"]) == 20 and r["class_names"] == VOC_ORDER for r in results)
    assert (out / "confidence_indeed-minmax.png").exists()  # every "single" test image has one label
    assert "voc2007: 6 training / 3 test images" in capsys.readouterr().out


def test_coco_resnet50_run_then_cam(coco_root, tmp_path):  # noqa: F811
    """One ResNet-50 step on the tiny COCO tree (its 3 annotated training images), then indeed-cam on the checkpoint."""
    out = tmp_path / "out"
    argv = ["--dataset", "coco2014", "--root", str(coco_root), "--image-size", "32", "--backbone", "resnet50", "--batch-size", "3",
            "--epochs", "1", "--method", "indeed", "--device", "cpu", "--quiet", "--backend", BACKEND, "--out", str(out)]  # fmt: skip
    assert train.main(argv) == 0
    assert json.loads((out / "results.json").read_text())[0]["class_names"] == COCO_ORDER
    picture = tmp_path / "photo.jpg"
    Image.new("RGB", (48, 40), (10, 120, 200)).save(picture)
    checkpoint = out / "indeed-minmax" / "checkpoint.pt"
    assert cam.main([str(checkpoint), str(picture), "--labels", "dog", "car", "--out", str(tmp_path / "cam.png")]) == 0
    assert Image.open(tmp_path / "cam.png").size[0] == 3 * 48  # the photo and one overlay per label


def test_photo_set_smaller_than_a_batch(voc_root, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        train.main(["--dataset", "voc2007", "--root", str(voc_root), "--batch-size", "7", "--out", str(tmp_path), "--device", "cpu"])
    assert "the training set (6 images) is smaller than one batch" in capsys.readouterr().err


# ----------------------------------------------------------------------------- console scripts and the benchmark
def test_console_scripts_resolve():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["indeed-cam"] == "indeed_ext.recipes.cli:cam"  # checks the train extra, then cam.main
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_train_step_benchmark_small(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_train_step", os.path.join(ROOT, "benchmarks", "bench_train_step.py"))
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "SMALL", bench.SMALL[:1])  # the simple CNN only: ResNet-50 steps are slow on CI's CPUs
    assert bench.main(["--small", "--device", "cpu", "--warmup", "0", "--rounds", "1", "--steps", "1", "--out", str(tmp_path / "s.json")]) == 0
    report = json.loads((tmp_path / "s.json").read_text())
    (case,) = report["results"]
    assert set(case["methods"]) == {"baseline", "indeed-reference", "indeed-fused"}
    assert case["methods"]["baseline"]["ratio_to_baseline"] == 1.0 and all(m["median_ms"] > 0 for m in case["methods"].values())
    assert "| indeed-fused |" in capsys.readouterr().out
