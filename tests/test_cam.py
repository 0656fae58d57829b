"""Class activation maps: the maps explain the logits, their shape and range, the layer lookup,
rejection of backbones without a global average pool, the PNG overlay and the indeed-cam CLI
(with a stand-in for the engine's load_model)."""
import copy
import sys
import types

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from indeed_ext.recipes.cam import _jet, class_activation_maps, main, overlay, save_cam_figure

NUM_CLASSES = 5


class ClassifierModel(nn.Module):
    """The INDeeD layout (backbone -> features, classifier: nn.Linear) without the method's forward."""

    def __init__(self, backbone, feature_dim, num_classes=NUM_CLASSES):
        super().__init__()
        self.backbone, self.classifier = backbone, nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        return self.classifier(self.backbone(x))


@pytest.fixture(scope="module")
def model():
    """resnet18 (weights=None) as the backbone; tests that change it take a deepcopy (building one takes seconds)."""
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = nn.Identity()
    return ClassifierModel(backbone, 512).eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(3, 96, 80, generator=torch.Generator().manual_seed(1))


def test_maps_explain_the_logits(model, image):
    labels = [4, 0, 2]
    cams = class_activation_maps(model, image, labels)
    assert cams.maps.shape == (3, 96, 80) and cams.raw.shape == (3, 3, 3) and cams.logits.shape == (3,)
    with torch.no_grad():
        logits = model(image.unsqueeze(0))[0]
    torch.testing.assert_close(cams.logits, logits[labels])
    # mean over the map + bias = logit: the defining property of a CAM
    torch.testing.assert_close(cams.raw.mean(dim=(1, 2)) + model.classifier.bias[labels].detach(), logits[labels], atol=1e-5, rtol=1e-4)


def test_maps_lie_in_unit_interval(model, image):
    cams = class_activation_maps(model, image, list(range(NUM_CLASSES)))
    assert cams.maps.min() >= 0
    peaks = cams.maps.amax(dim=(1, 2))
    has_positive = cams.raw.amax(dim=(1, 2)) > 0
    torch.testing.assert_close(peaks, has_positive.float())


def test_default_layer_is_layer4_and_mode_is_restored(model, image):
    model = copy.deepcopy(model).train()
    running_mean = model.backbone.bn1.running_mean.clone()
    default = class_activation_maps(model, image, [1, 3], size=(40, 30))
    named = class_activation_maps(model, image.unsqueeze(0), [1, 3], layer="layer4", size=(40, 30))
    assert default.maps.shape == (2, 40, 30)
    torch.testing.assert_close(default.maps, named.maps)
    assert model.training  # restored
    torch.testing.assert_close(model.backbone.bn1.running_mean, running_mean)  # ran in eval mode


def test_global_pool_found_inside_a_wrapped_backbone(model, image):
    model = ClassifierModel(nn.Sequential(nn.Identity(), copy.deepcopy(model.backbone)), 512)
    cams = class_activation_maps(model, image, [0])
    named = class_activation_maps(model, image, [0], layer="1.layer4")
    torch.testing.assert_close(cams.maps, named.maps)


def test_rejects_backbones_without_a_global_average_pool(image):
    grid_pooled = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(72, 16), nn.ReLU())
    with pytest.raises(ValueError, match="no global average pool"):
        class_activation_maps(ClassifierModel(grid_pooled, 16), image, [0])
    fc_after_pool = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="not the spatial mean"):
        class_activation_maps(ClassifierModel(fc_after_pool, 8), image, [0])
    with pytest.raises(ValueError, match="shape"):
        class_activation_maps(ClassifierModel(grid_pooled, 16), image, [0], layer="1")


def test_argument_errors(model, image):
    with pytest.raises(ValueError, match="labels"):
        class_activation_maps(model, image, [NUM_CLASSES])
    with pytest.raises(ValueError, match="labels"):
        class_activation_maps(model, image, [])
    with pytest.raises(ValueError, match="no module named"):
        class_activation_maps(model, image, [0], layer="layer9")
    with pytest.raises(ValueError, match="one image"):
        class_activation_maps(model, image.expand(2, 3, 96, 80), [0])


def test_jet_endpoints_and_overlay():
    torch.testing.assert_close(torch.from_numpy(_jet(torch.tensor([0.0, 0.5, 1.0]).numpy())).float(),
                               torch.tensor([[0.0, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]]))  # fmt: skip
    picture = Image.new("RGB", (6, 4), (10, 20, 30))
    assert overlay(picture, torch.rand(4, 6), alpha=0.0).tobytes() == picture.tobytes()
    hot = overlay(picture, torch.ones(4, 6), alpha=1.0)
    assert hot.getpixel((0, 0)) == (128, 0, 0)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(picture, torch.ones(6, 4))


def test_save_cam_figure(tmp_path):
    picture = Image.new("RGB", (30, 20), "gray")
    path = tmp_path / "cam.png"
    save_cam_figure(picture, torch.rand(2, 20, 30), ["dog", "cat"], str(path))
    with Image.open(path) as written:
        assert written.format == "PNG" and written.width == 90 and written.height > 20


@pytest.fixture
def fake_engine(monkeypatch, model):
    """indeed_ext.recipes.engine.load_model as the training engine provides it: (model, model_config)."""
    config = {"class_names": ["cat", "dog", "car", "bus", "cow"], "image_shape": [3, 64, 64],
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # fmt: skip
    engine = types.ModuleType("indeed_ext.recipes.engine")
    engine.load_model = lambda path: (copy.deepcopy(model), config)
    monkeypatch.setitem(sys.modules, "indeed_ext.recipes.engine", engine)


def test_cli_writes_png(tmp_path, fake_engine, capsys):
    picture = tmp_path / "photo.jpg"
    Image.effect_noise((50, 40), 60).convert("RGB").save(picture)
    out = tmp_path / "cam.png"
    assert main(["ckpt.pt", str(picture), "--labels", "dog", "4", "--out", str(out)]) == 0
    assert "dog" in capsys.readouterr().out
    with Image.open(out) as written:
        assert written.format == "PNG" and written.width == 50 * 3
    assert main(["ckpt.pt", str(picture), "--top-k", "2", "--out", str(out)]) == 0
    with Image.open(out) as written:
        assert written.width == 50 * 3


def test_cli_errors(tmp_path, fake_engine, capsys):
    picture = tmp_path / "photo.png"
    Image.new("RGB", (20, 20)).save(picture)
    assert main(["ckpt.pt", str(picture), "--labels", "horse", "--out", str(tmp_path / "x.png")]) == 1
    assert "horse" in capsys.readouterr().err
    assert main(["ckpt.pt", str(tmp_path / "missing.jpg"), "--labels", "dog"]) == 1
    assert "missing.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("backbone", ["simple-cnn", "simple-cnn-gap"])
def test_cli_on_checkpoints_of_both_simple_cnns(tmp_path, capsys, backbone):
    """The flattening simple-cnn has no global pool: a clear error, not a traceback; simple-cnn-gap works."""
    from indeed_ext.recipes import train
    from indeed_ext.recipes.data import DataOptions, build_dataset

    argv = ["--dataset", "ml-digits", "--train-size", "32", "--test-size", "10", "--batch-size", "16", "--epochs", "1",
            "--method", "baseline", "--backbone", backbone, "--device", "cpu", "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert train.main(argv) == 0
    picture = tmp_path / "canvas.png"
    Image.fromarray(build_dataset("ml-digits", DataOptions(test_size=1)).test.canvas(0)[0].numpy()).save(picture)
    status = main([str(tmp_path / "baseline" / "checkpoint.pt"), str(picture), "--labels", "3", "--out", str(tmp_path / "cam.png")])
    if backbone == "simple-cnn":
        assert status == 1 and "train with --backbone simple-cnn-gap" in capsys.readouterr().err
    else:
        assert status == 0 and (tmp_path / "cam.png").exists()
