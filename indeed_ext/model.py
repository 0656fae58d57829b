"""INDeeD as a model wrapper: any feature backbone plus one linear classifier.

The backbone maps images to pooled feature vectors (N, d): a torchvision model with its
``fc``/``classifier`` replaced by ``nn.Identity()``, a timm model created with
``num_classes=0``, or any nn.Module. In training the wrapper returns the features as
well as the logits, for INDeeDLoss; in eval mode it is just backbone + classifier, and
``export()`` gives that plain model.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

DEFAULT_INPUT_SHAPE = (3, 224, 224)


class INDeeDOutput(NamedTuple):
    logits: torch.Tensor  # (N, num_classes)
    features: torch.Tensor  # (N, feature_dim), what INDeeDLoss takes


def _first_tensor(module: nn.Module):
    return next(itertools.chain(module.parameters(), module.buffers()), None)


def _check_features(features, where: str) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"{where}: the backbone must return pooled (N, d) features, got {got}; remove its "
            f"classification head (e.g. model.fc = nn.Identity(), timm's num_classes=0) and "
            f"make sure it pools and flattens"
        )


def infer_feature_dim(backbone: nn.Module, input_shape=DEFAULT_INPUT_SHAPE) -> int:
    """Width of the backbone's features, from one forward of zeros of shape (2, *input_shape).

    The forward runs in eval mode under no_grad (BatchNorm running statistics are not
    touched), on the device and floating dtype of the backbone's first parameter or buffer.
    """
    first = _first_tensor(backbone)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    shape = (2, *input_shape)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            features = backbone(torch.zeros(shape, device=device, dtype=dtype))
    except Exception as e:
        raise ValueError(
            f"could not infer feature_dim from a dummy input of shape {shape}: {type(e).__name__}: {e}. "
            f"Pass feature_dim=..., or input_shape=(channels, height, width) that the backbone accepts"
        ) from e
    finally:
        backbone.train(was_training)
    _check_features(features, f"dummy input of shape {shape}")
    return features.shape[1]


class INDeeD(nn.Module):
    """Backbone + nn.Linear(feature_dim, num_classes), trained with INDeeDLoss.

    feature_dim: the backbone's feature width; when None, inferred by one forward of a
        dummy batch of shape (2, *input_shape) (see infer_feature_dim). input_shape
        defaults to (3, 224, 224); give the real one for backbones that need it (e.g. a
        CNN that flattens a fixed-size map).
    forward(x): training mode -> INDeeDOutput(logits, features); eval mode -> logits.

    INDeeD multiplies features elementwise and min-max/L2 normalises the product, which
    assumes non-negative (post-ReLU) features. The first NEGATIVE_CHECK_STEPS training
    forwards look for negative features (one device sync each) and warn once if any.
    """

    NEGATIVE_CHECK_STEPS = 8

    def __init__(self, backbone: nn.Module, num_classes: int, feature_dim: int | None = None, input_shape=DEFAULT_INPUT_SHAPE):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        for name, value in (("num_classes", num_classes), ("feature_dim", feature_dim)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.backbone = backbone
        if feature_dim is None:
            feature_dim = infer_feature_dim(backbone, input_shape)
        first = _first_tensor(backbone)
        factory = {} if first is None or not first.is_floating_point() else dict(device=first.device, dtype=first.dtype)
        self.classifier = nn.Linear(feature_dim, num_classes, **factory)
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self._negative_checks_left = self.NEGATIVE_CHECK_STEPS

    def forward(self, x):
        features = self.backbone(x)
        _check_features(features, "INDeeD.forward")
        logits = self.classifier(features)
        if not self.training:
            return logits
        if self._negative_checks_left > 0 and not torch.compiler.is_compiling():
            self._warn_if_negative(features)
        return INDeeDOutput(logits, features)

    def _warn_if_negative(self, features: torch.Tensor) -> None:
        self._negative_checks_left -= 1
        if bool((features.detach() < 0).any()):
            self._negative_checks_left = 0
            warnings.warn(
                "INDeeD got negative backbone features; the identical/disparate decomposition "
                "assumes non-negative (post-ReLU) features. End the backbone with a ReLU "
                "before pooling, and check that its classification head was removed.",
                stacklevel=3,
            )

    def export(self) -> nn.Sequential:
        """The plain model for inference: nn.Sequential(backbone, classifier), a deep copy
        in eval mode (later training of this wrapper does not change it). Its state_dict
        keys ("backbone.*", "classifier.*") are the wrapper's."""
        parts = OrderedDict(backbone=copy.deepcopy(self.backbone), classifier=copy.deepcopy(self.classifier))
        return nn.Sequential(parts).eval()
