"""Class activation maps (Zhou et al. 2016; the INDeeD paper's Fig. 5) for backbones whose
last conv feature map is globally average-pooled into the features.

With features f = mean_xy A(x, y) of a conv map A (K, h, w) and logits W f + b, the
map of class k is M_k = sum_j W[k, j] A_j (h, w), and mean_xy M_k + b_k is exactly the
logit of k. Shown maps are ReLU(M_k) upsampled bilinearly to the image and divided by
their maximum, so they lie in [0, 1].

API
---
class_activation_maps(model, image, labels, layer=None, size=None) -> ClassActivationMaps
    model: anything with ``.backbone`` (images -> features (B, K)) and ``.classifier``
    (nn.Linear(K, c)), e.g. indeed_ext.model.INDeeD. image: a normalised (3, H, W) or
    (1, 3, H, W) tensor as the model was trained on. labels: class indices.
    layer: name (in ``model.backbone.named_modules()``) of the module whose output is
    the conv map, e.g. "layer4" for a torchvision ResNet; None (default) takes the input
    of the backbone's last global average pool (torchvision's AdaptiveAvgPool2d(1),
    timm's SelectAdaptivePool2d(pool_type="avg"|"fast")), which is layer4's output for a
    ResNet and the body's output for a TResNet. The map is checked against the features:
    if they are not its spatial mean (e.g. VGG's or the simple CNN's FC layers after the
    convs), a ValueError says so. size: (H, W) of the maps; None: the image's.
    Returns maps (L, H, W) in [0, 1], raw (L, h, w) (M_k before ReLU, without bias)
    and logits (L,) of the labels. The model's train/eval mode is restored afterwards.
overlay(image: PIL.Image, heat (H, W) in [0, 1], alpha=0.5) -> PIL.Image
    the image blended with the heat map in a jet colour map (no matplotlib needed).
save_cam_figure(image, maps, titles, path, alpha=0.5) -> None
    a PNG: the image, then one overlay per map, side by side, each under its title.
main(argv=None): the ``indeed-cam`` command,
    indeed-cam CHECKPOINT IMAGE [--labels NAME|INDEX ...] [--top-k 3] [--out cam.png]
               [--layer NAME] [--image-size N] [--alpha 0.5] [--device cpu]
    It rebuilds the model with ``indeed_ext.recipes.engine.load_model(CHECKPOINT)``, which
    returns (model, model_config); model_config holds "class_names", "image_shape"
    (C, H, W), "mean" and "std" of the training run. The image is squish-resized to
    (H, W) and normalised like the test images; without --labels the top-k scoring
    classes are shown.
"""
from __future__ import annotations

import argparse
import sys
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn


class ClassActivationMaps(NamedTuple):
    maps: torch.Tensor  # (L, H, W) in [0, 1]
    raw: torch.Tensor  # (L, h, w): sum_j W[k, j] A_j, no bias, no ReLU
    logits: torch.Tensor  # (L,)


def _is_global_average_pool(module: nn.Module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return module.output_size in (1, (1, 1))
    # timm's SelectAdaptivePool2d(pool_type="fast"|"avg") wraps one of these two.
    return type(module).__name__ == "FastAdaptiveAvgPool"


def _hook_conv_map(backbone: nn.Module, layer: str | None, captured: list):
    """Registers the hook that stores the conv map in ``captured``; returns (handle, what it hooks, for messages)."""
    modules = dict(backbone.named_modules())
    if layer is None:
        pools = [name for name, module in modules.items() if _is_global_average_pool(module)]
        if not pools:
            raise ValueError(
                "the backbone has no global average pool (AdaptiveAvgPool2d(1) or timm's avg pool); "
                "CAM needs features that are the spatial mean of a conv map (pass layer= to name that map's module; "
                "indeed-train's simple-cnn flattens its map into an FC layer: train with --backbone simple-cnn-gap for CAMs)"
            )
        handle = modules[pools[-1]].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        return handle, f"the input of {pools[-1]!r}"
    if layer not in modules:
        raise ValueError(f"no module named {layer!r} in the backbone (see backbone.named_modules())")
    handle = modules[layer].register_forward_hook(lambda module, args, output: captured.append(output))
    return handle, f"the output of {layer!r}"


@torch.no_grad()
def class_activation_maps(
    model: nn.Module,
    image: torch.Tensor,
    labels: Sequence[int],
    layer: str | None = None,
    size: tuple[int, int] | None = None,
) -> ClassActivationMaps:
    backbone, classifier = model.backbone, model.classifier
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"model.classifier must be an nn.Linear, got {type(classifier).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.dim() != 1 or labels.numel() == 0 or labels.min() < 0 or labels.max() >= classifier.out_features:
        raise ValueError(f"labels must be a non-empty list of class indices in [0, {classifier.out_features}), got {labels.tolist()}")
    weight = classifier.weight
    image = image.to(device=weight.device, dtype=weight.dtype)

    captured: list[torch.Tensor] = []
    handle, source = _hook_conv_map(backbone, layer, captured)
    was_training = model.training
    model.eval()
    try:
        features = backbone(image)
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise ValueError(f"{source} was not called in the backbone's forward pass")
    conv_map = captured[-1]
    if conv_map.dim() != 4 or features.dim() != 2 or conv_map.shape[1] != features.shape[1]:
        raise ValueError(
            f"{source} has shape {tuple(conv_map.shape)} but the features have shape {tuple(features.shape)}; "
            "CAM needs features that are the spatial mean of a (1, K, h, w) conv map"
        )
    if not torch.allclose(conv_map.float().mean(dim=(2, 3)), features.float(), rtol=1e-3, atol=1e-5):
        raise ValueError(f"the features are not the spatial mean of {source}, so its class activation maps would not explain the logits")

    raw = torch.einsum("lk,khw->lhw", weight[labels].float(), conv_map[0].float())
    logits = classifier(features)[0, labels.to(weight.device)].float()
    heat = F.interpolate(raw.unsqueeze(1), size=size or tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    heat = heat.squeeze(1).relu()
    peak = heat.amax(dim=(1, 2), keepdim=True)
    maps = torch.where(peak > 0, heat / peak.clamp_min(torch.finfo(heat.dtype).tiny), heat)
    return ClassActivationMaps(maps.cpu(), raw.cpu(), logits.cpu())


def _jet(values: np.ndarray) -> np.ndarray:
    """The piecewise-linear jet colour map: [0, 1] -> RGB in [0, 1] (blue, cyan, yellow, red)."""
    v = values[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green and blue peak
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = heat.detach().cpu().float().numpy()
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heat map {heat.shape} and image {rgb.shape[:2]} differ in size")
    blended = (1.0 - alpha) * rgb + alpha * _jet(np.clip(heat, 0.0, 1.0))
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def save_cam_figure(image: Image.Image, maps: torch.Tensor, titles: Sequence[str], path: str, alpha: float = 0.5) -> None:
    if len(titles) != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {len(titles)} titles")
    image = image.convert("RGB")
    width, height = image.size
    font = ImageFont.load_default(size=max(12, width // 20))
    strip = int(font.size * 1.6)
    panels = [image] + [overlay(image, heat, alpha) for heat in maps]
    titles = ["input"] + list(titles)
    figure = Image.new("RGB", (width * len(panels), height + strip), "white")
    draw = ImageDraw.Draw(figure)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        figure.paste(panel, (i * width, strip))
        draw.text((i * width + width // 2, strip // 2), title, fill="black", font=font, anchor="mm")
    figure.save(path, format="PNG")


def _resolve_labels(requested: Sequence[str], class_names: Sequence[str]) -> list[int]:
    indices = []
    for label in requested:
        if label in class_names:
            indices.append(list(class_names).index(label))
        elif label.isdigit() and int(label) < len(class_names):
            indices.append(int(label))
        else:
            raise ValueError(f"unknown label {label!r}; expected a class name or index of {list(class_names)}")
    return indices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="indeed-cam", description="Class activation maps of a trained model as a PNG overlay.")
    parser.add_argument("checkpoint")
    parser.add_argument("image")
    parser.add_argument("--labels", nargs="+", help="class names or indices (default: the top-k scoring classes)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--out", default="cam.png")
    parser.add_argument("--layer", help="backbone module whose output is the conv map (default: the global pool's input)")
    parser.add_argument("--image-size", type=int, help="square input size (default: the training run's)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the heat map in the overlay")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from .data.images import eval_transform
    from .engine import load_model  # the checkpoint format belongs to the training engine

    try:
        model, config = load_model(args.checkpoint)
        class_names = list(config["class_names"])
        channels, height, width = config["image_shape"]
        size = (args.image_size, args.image_size) if args.image_size else (height, width)
        try:
            with Image.open(args.image) as file:
                picture = file.convert("RGB")
        except (FileNotFoundError, OSError) as e:
            raise ValueError(f"cannot read image {args.image!r}: {e}") from e
        model_input = eval_transform(size, config["mean"], config["std"])(picture.convert("L") if channels == 1 else picture)
        model = model.to(args.device)
        if args.labels:
            labels = _resolve_labels(args.labels, class_names)
        else:
            with torch.no_grad():
                scores = model.classifier(model.eval().backbone(model_input.unsqueeze(0).to(args.device)))[0]
            labels = scores.topk(min(args.top_k, len(class_names))).indices.tolist()
        cams = class_activation_maps(model, model_input, labels, layer=args.layer, size=(picture.height, picture.width))
    except (FileNotFoundError, ValueError) as e:
        print(f"indeed-cam: error: {e}", file=sys.stderr)
        return 1
    titles = [f"{class_names[k]} {torch.sigmoid(logit).item():.2f}" for k, logit in zip(labels, cams.logits)]
    save_cam_figure(picture, cams.maps, titles, args.out, args.alpha)
    print(f"wrote {args.out}: {', '.join(titles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
