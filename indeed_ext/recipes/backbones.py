"""Backbones by name: modules that map images (B, C, H, W) to pooled features (B, n).

- ``simple-cnn``: the paper's ML-MNIST network, 3 conv + 2 FC over the flattened last map
  (sized from the canvas). The backbone is the conv stack and the first FC (post-ReLU
  features); the INDeeD classifier is the second FC.
- ``simple-cnn-gap``: 3 conv-BN-ReLU, a 1x1 conv + ReLU, global average pooling: any input size, and
  class activation maps (indeed-cam) work on it.
- ``vgg16``, ``resnet50``: torchvision models without their last Linear (features of
  4096 and 2048, post-ReLU), created with weights=None.
- ``timm:<name>``: any timm model with ``num_classes=0`` (timm is an optional extra).

Nothing downloads: pretrained weights come only from a local file (``weights=PATH``),
a state dict of the full torchvision/timm model (its head is dropped) or of the backbone
itself for the simple CNNs. Models expecting RGB get grayscale inputs repeated to 3 channels,
so pretrained first layers keep their weights.
"""
from __future__ import annotations

import os

import torch
from torch import nn

TORCHVISION_BACKBONES = ("vgg16", "resnet50")
BACKBONES = ("simple-cnn", "simple-cnn-gap") + TORCHVISION_BACKBONES + ("timm:<name>",)


class SimpleCNN(nn.Module):
    """The paper's ML-MNIST "simple CNN with three convolutional layers and two fully-connected layers".

    Layers: 3 x [conv 3x3 (padding 1) -> ReLU -> max-pool 2] with 32, 64, 64 channels, then
    flatten -> FC(64 * h/8 * w/8, 256) -> ReLU: the post-ReLU features (256). The second FC
    is the INDeeD classifier. No batch norm and no global pooling, as the paper describes it
    (read literally, the way Keras' MNIST CNN is built): the first FC sees every position of
    the last map, so the network is sized from the canvas (84x84 for ML-MNIST: a 10x10 map,
    6400 inputs; 24x24 for ml-digits: 3x3, 576; 96x96 for ML-CIFAR-10: 12x12, 9216).
    """

    WIDTHS = (32, 64, 64)
    MIN_SIDE = 2 ** len(WIDTHS)  # three pools of 2 need at least 8 px

    def __init__(self, in_channels: int, image_size: tuple[int, int], feature_dim: int = 256):
        super().__init__()
        height, width = image_size
        if min(height, width) < self.MIN_SIDE:
            raise ValueError(f"simple-cnn needs images of at least {self.MIN_SIDE}x{self.MIN_SIDE} px (three 2x2 pools), got {height}x{width}")
        layers, channels = [], in_channels
        for width_ in self.WIDTHS:
            layers += [nn.Conv2d(channels, width_, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width_
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(channels * height * width, feature_dim), nn.ReLU(inplace=True))
        self.image_size, self.feature_dim = tuple(image_size), feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"simple-cnn was built for {self.image_size[0]}x{self.image_size[1]} images, got {x.shape[-2]}x{x.shape[-1]}")
        return self.fc(self.features(x))


class SimpleCNNGap(nn.Module):
    """Three conv(3x3)-BN-ReLU stages with max pooling between them, a 1x1 conv to the features with ReLU, global average pooling.

    ``pool`` (2 or 3) is the max-pool size after the first two convs; it sets the receptive
    field of the last conv, 18 px for 2 and 35 px for 3, which should cover one object:
    ``pool_for`` picks it (2 for 8 px sklearn digits, 3 for 28 px MNIST digits and 32 px
    CIFAR images). Global pooling makes any input size work and lets an object learnt in one
    grid cell be recognised in every other. Batch norm: without it the network sits at the
    label prior for the first epochs on the mostly empty canvases. The features are the
    spatial mean of the last (post-ReLU) conv map, so class activation maps are exact on it.
    (Until 2026-12 the features were an FC + ReLU after the pool, the ``simple-cnn`` of the
    earlier studies in docs/EXPERIMENTS.md.)
    """

    RECEPTIVE_FIELD = {2: 18, 3: 35}

    def __init__(self, in_channels: int = 1, pool: int = 2, widths: tuple[int, int, int] = (32, 64, 128), feature_dim: int = 256):
        super().__init__()
        if pool not in self.RECEPTIVE_FIELD:
            raise ValueError(f"pool must be one of {tuple(self.RECEPTIVE_FIELD)}, got {pool}")
        layers, channels = [], in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(pool))
            channels = width
        layers += [nn.Conv2d(channels, feature_dim, 1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.pool, self.feature_dim = pool, feature_dim

    @classmethod
    def pool_for(cls, object_size: int | None) -> int:
        """The smallest pool whose receptive field covers objects of object_size px (2 when unknown)."""
        if object_size is None:
            return 2
        return next((p for p, field in cls.RECEPTIVE_FIELD.items() if field >= object_size), max(cls.RECEPTIVE_FIELD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


INITS = ("torch", "kaiming")


def initialize(backbone: nn.Module, scheme: str) -> None:
    """Re-draw a from-scratch backbone's weights: "torch" keeps PyTorch's defaults; "kaiming" draws
    every conv and linear weight from He et al.'s normal for ReLU (std sqrt(2 / fan_in)), biases 0.

    PyTorch's default (uniform, std sqrt(1 / (3 fan_in))) shrinks a plain ReLU stack's activations
    by about 1/sqrt(6) per layer; the paper's simple CNN (no batch norm) then starts with features
    near 0 and its logits at the label prior (docs/EXPERIMENTS.md).
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; expected one of {INITS}")
    if scheme == "torch":
        return
    for module in backbone.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class RepeatChannels(nn.Module):
    """Grayscale (B, 1, H, W) -> (B, 3, H, W) for models built for RGB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file: a plain one, or one under "state_dict"/"model" (training checkpoints)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a PyTorch weights file ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (parameter name -> tensor)")
    return state


def load_weights(module: nn.Module, path: str) -> None:
    try:
        module.load_state_dict(read_state_dict(path))
    except RuntimeError as e:  # load_state_dict's report of missing/unexpected/mis-shaped keys
        raise ValueError(f"{path}: weights do not fit the model: {e}") from e


def _torchvision_backbone(name: str, weights: str | None) -> tuple[nn.Module, int]:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if weights:
        load_weights(model, weights)
    if name == "resnet50":
        feature_dim, model.fc = model.fc.in_features, nn.Identity()
    else:  # vgg: classifier = [Linear, ReLU, Dropout] x 2 + Linear; the features follow the last ReLU/Dropout
        feature_dim, model.classifier[-1] = model.classifier[-1].in_features, nn.Identity()
    return model, feature_dim


def _timm_backbone(name: str, in_channels: int, weights: str | None) -> tuple[nn.Module, int]:
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"backbone timm:{name} needs timm (pip install 'indeed-ext[timm]' or pip install timm)") from e
    if name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file {weights!r} not found")
        # timm's own loader for a local file: it adapts the head and the input channels.
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights}, num_classes=0, in_chans=in_channels)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    return model, model.num_features


def build_backbone(
    name: str, in_channels: int, weights: str | None = None, object_size: int | None = None, image_size: tuple[int, int] | None = None
) -> tuple[nn.Module, int]:
    """(backbone, feature_dim) for a backbone name (see BACKBONES) and input channels.

    object_size: side in px of the objects to recognise, when known (composite sets: one
    grid cell); simple-cnn-gap sizes its pooling from it.
    image_size: (H, W) of the inputs; simple-cnn needs it (its first FC sees the whole map).
    """
    if name in ("simple-cnn", "simple-cnn-gap"):
        if name == "simple-cnn":
            if image_size is None:
                raise ValueError("simple-cnn flattens its last conv map: give the input image_size (H, W)")
            model = SimpleCNN(in_channels, tuple(image_size))
        else:
            model = SimpleCNNGap(in_channels, SimpleCNNGap.pool_for(object_size))
        if weights:
            load_weights(model, weights)
        return model, model.feature_dim
    if name in TORCHVISION_BACKBONES:
        if in_channels not in (1, 3):
            raise ValueError(f"backbone {name} takes 1- or 3-channel images, got {in_channels} channels")
        model, feature_dim = _torchvision_backbone(name, weights)
        return (nn.Sequential(RepeatChannels(), model) if in_channels == 1 else model), feature_dim
    if name.startswith("timm:") and len(name) > len("timm:"):
        return _timm_backbone(name[len("timm:") :], in_channels, weights)
    raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
