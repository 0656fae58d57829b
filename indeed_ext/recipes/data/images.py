"""Shared pieces of the real-image multi-label readers (VOC-2007, MS-COCO 2014).

API
---
SCHEMES: ("all", "split", "single", "entire")
    ``all``: every image of the training subset; ``split``: training images with >= 2
    distinct classes (multi-label only); ``single``: test images with exactly one
    distinct class; ``entire``: every image of the test subset.
SCHEME_SUBSET: scheme -> "train" | "test", the subset a scheme draws from.
scheme_indices(targets (N, c), scheme) -> list[int]
    the rows of the subset that a scheme keeps, in the subset's order.
MultiLabelImages(paths, targets, class_names, image_ids, transform=None)
    Dataset; item i = (transform(PIL RGB image), float multi-hot target (c,)). The image
    is opened and decoded on access. Attributes: class_names, num_classes, image_ids,
    paths, targets (N, c) float tensor.
require_files(folder, file_names, layout)
    raises FileNotFoundError naming the folder, the missing files and the expected layout.
Cutout(fraction=0.5)
    on uint8 images (C, H, W): one rectangle of fraction*H x fraction*W at a uniformly
    random centre (clipped at the borders) filled with one random colour, as ASL's
    CutoutPIL does for photographs (the composite sets' Cutout fills with zero background).
train_transform(size, cutout=0.5, randaugment=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
eval_transform(size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    PIL image -> float (C, H, W); size is a square side or (H, W). Squish resize (the
    aspect ratio is not kept, as in ASL and the paper's recipes), then for training
    Cutout and RandAugment on uint8, then scaling to [0, 1] and, unless mean and std
    are None, (x - mean) / std.

Random choices use torch's global generator (RandAugment does too), so the loader's
worker seeding makes augmentation reproducible.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SCHEME_SUBSET = {"all": "train", "split": "train", "single": "test", "entire": "test"}
SCHEMES = tuple(SCHEME_SUBSET)


def scheme_indices(targets: torch.Tensor, scheme: str) -> list[int]:
    if scheme not in SCHEME_SUBSET:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    classes_per_image = (targets > 0.5).sum(dim=1)
    if scheme == "split":
        keep = classes_per_image >= 2
    elif scheme == "single":
        keep = classes_per_image == 1
    else:
        return list(range(targets.shape[0]))
    return keep.nonzero().flatten().tolist()


def require_files(folder: str, file_names: Sequence[str], layout: str) -> None:
    """One directory listing instead of a stat per file: COCO's train2014 holds 82,783 images."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} not found; expected layout:\n{layout}")
    present = set(os.listdir(folder))
    missing = [name for name in file_names if name not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(file_names)} images missing from {folder!r}: {shown}")


class MultiLabelImages(Dataset):
    def __init__(
        self,
        paths: Sequence[str],
        targets: torch.Tensor,
        class_names: Sequence[str],
        image_ids: Sequence,
        transform: Callable | None = None,
    ):
        if not (len(paths) == targets.shape[0] == len(image_ids)):
            raise ValueError(f"{len(paths)} paths, {targets.shape[0]} targets and {len(image_ids)} image ids differ in number")
        if targets.shape[1] != len(class_names):
            raise ValueError(f"targets have {targets.shape[1]} classes but {len(class_names)} class names were given")
        self.paths = list(paths)
        self.targets = targets.float()
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.image_ids = list(image_ids)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as file:
            image = file.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class Cutout:
    def __init__(self, fraction: float = 0.5):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"cutout fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction={self.fraction})"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8:
            raise TypeError(f"Cutout expects a uint8 image (C, H, W), got {image.dtype}")
        h, w = image.shape[-2:]
        cut_h, cut_w = int(self.fraction * h + 0.5), int(self.fraction * w + 0.5)
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        top, bottom = max(0, cy - cut_h // 2), min(h, cy + (cut_h + 1) // 2)
        left, right = max(0, cx - cut_w // 2), min(w, cx + (cut_w + 1) // 2)
        colour = torch.randint(0, 256, (image.shape[-3], 1, 1), dtype=torch.uint8)
        image = image.clone()
        image[..., top:bottom, left:right] = colour
        return image


def _output_size(size) -> tuple[int, int]:
    """(H, W) from a square side or an (H, W) pair."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(side, int) and side >= 1 for side in pair):
        raise ValueError(f"image size must be a positive int or an (H, W) pair of them, got {size!r}")
    return pair


def _to_float(mean: Sequence[float] | None, std: Sequence[float] | None) -> list:
    from torchvision.transforms import v2

    steps = [v2.ToDtype(torch.float32, scale=True)]
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (no normalisation)")
    if mean is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    return steps


def train_transform(
    size: int | tuple[int, int],
    cutout: float = 0.5,
    randaugment: bool = True,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
):
    from torchvision.transforms import v2

    steps = [v2.PILToTensor(), v2.Resize(_output_size(size), antialias=True)]
    if cutout:  # 0 turns it off; Cutout rejects values outside (0, 1]
        steps.append(Cutout(cutout))
    if randaugment:
        steps.append(v2.RandAugment())
    return v2.Compose(steps + _to_float(mean, std))


def eval_transform(size: int | tuple[int, int], mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD):
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.Resize(_output_size(size), antialias=True)] + _to_float(mean, std))
