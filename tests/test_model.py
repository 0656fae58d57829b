"""INDeeD wrapper: feature_dim inference, train/eval outputs, export, the negative-feature
warning, and one training step through INDeeDLoss."""
import warnings

import pytest
import torch
from torch import nn

from indeed_ext.losses import INDeeDLoss
from indeed_ext.model import INDeeD, INDeeDOutput, infer_feature_dim


def tiny_cnn(channels=6):
    """Conv-BN-ReLU, global pooling: post-ReLU pooled features of width `channels`."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


def images(n=4, size=16, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_feature_dim_inferred_and_train_eval_outputs():
    model = INDeeD(tiny_cnn(6), num_classes=5)
    assert model.feature_dim == 6
    assert isinstance(model.classifier, nn.Linear) and tuple(model.classifier.weight.shape) == (5, 6)
    x = images()
    model.train()
    out = model(x)
    assert isinstance(out, INDeeDOutput)
    assert out.logits.shape == (4, 5) and out.features.shape == (4, 6)
    torch.testing.assert_close(out.logits, model.classifier(out.features))
    model.eval()
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (4, 5)


def test_inference_forward_leaves_backbone_state_alone():
    backbone = tiny_cnn()
    backbone.train()
    bn = backbone[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    assert infer_feature_dim(backbone) == 6
    assert backbone.training, "training mode restored"
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]


def test_given_feature_dim_skips_the_dummy_forward():
    class NoForward(nn.Module):
        def forward(self, x):
            raise AssertionError("no dummy forward when feature_dim is given")

    model = INDeeD(NoForward(), num_classes=3, feature_dim=7)
    assert model.feature_dim == 7 and model.classifier.in_features == 7


def test_input_shape_for_fixed_size_backbones():
    # Flattens an 8x8 single-channel map: the default (3, 224, 224) dummy cannot run.
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU())
    with pytest.raises(ValueError, match=r"dummy input of shape \(2, 3, 224, 224\).*input_shape="):
        INDeeD(fixed, num_classes=2)
    assert INDeeD(fixed, num_classes=2, input_shape=(1, 8, 8)).feature_dim == 10


def test_unpooled_backbone_is_rejected():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"pooled \(N, d\) features, got \(2, 4, 222, 222\)"):
        INDeeD(conv, num_classes=2)
    model = INDeeD(conv, num_classes=2, feature_dim=4)
    with pytest.raises(ValueError, match="INDeeD.forward: the backbone must return pooled"):
        model(images())


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_classes=0), "num_classes must be a positive int"), (dict(num_classes=2, feature_dim=-1), "feature_dim"),
     (dict(num_classes=2.0), "num_classes")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        INDeeD(tiny_cnn(), **kwargs)


def test_backbone_must_be_a_module():
    with pytest.raises(TypeError, match="backbone must be an nn.Module"):
        INDeeD(lambda x: x, num_classes=2)


def test_classifier_follows_backbone_dtype():
    model = INDeeD(tiny_cnn().double(), num_classes=3)
    assert model.classifier.weight.dtype == torch.float64
    assert model.eval()(images().double()).dtype == torch.float64


def test_export_is_the_plain_model():
    model = INDeeD(tiny_cnn(), num_classes=4)
    x = images()
    model.train()
    model(x)  # update BatchNorm statistics, so train and eval outputs differ
    exported = model.export()
    assert isinstance(exported, nn.Sequential) and not exported.training
    assert model.training, "export does not change the wrapper's mode"
    assert exported.state_dict().keys() == model.state_dict().keys()
    model.eval()
    torch.testing.assert_close(exported(x), model(x))
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    assert not torch.allclose(exported(x), model(x)), "the export is a copy"


def test_resnet18_without_fc():
    torchvision = pytest.importorskip("torchvision")
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = nn.Identity()
    model = INDeeD(backbone, num_classes=10)
    assert model.feature_dim == 512
    model.train()
    out = model(torch.rand(2, 3, 64, 64))
    assert out.features.shape == (2, 512) and out.logits.shape == (2, 10)
    assert (out.features >= 0).all(), "torchvision ResNets pool post-ReLU maps"
    assert model.export()(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_warns_once_on_negative_features():
    signed = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8))  # no ReLU: negative features
    model = INDeeD(signed, num_classes=2, input_shape=(3, 4, 4)).train()
    x = images(size=4)
    with pytest.warns(UserWarning, match="negative backbone features"):
        model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x)  # once per model
        model.eval()(x)


def test_no_warning_for_post_relu_features_or_in_eval():
    model = INDeeD(tiny_cnn(), num_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.train()(images())
        signed = INDeeD(nn.Sequential(nn.Flatten(), nn.Linear(48, 8)), num_classes=2, input_shape=(3, 4, 4))
        signed.eval()(images(size=4))


def test_one_training_step_with_the_loss():
    torch.manual_seed(0)
    model = INDeeD(tiny_cnn(), num_classes=4).train()
    loss_fn = INDeeDLoss(backend="reference")
    targets = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float32)
    out = model(images())
    result = loss_fn(out.features, targets, model.classifier, torch.Generator().manual_seed(0))
    result.loss.backward()
    assert int(result.num_partial) == 4
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.backbone[0].weight.grad.abs().sum() > 0
