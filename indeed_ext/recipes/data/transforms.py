"""Canvas transforms: uint8 (C, H, W) -> normalised float, with optional RandAugment and Cutout.

Random choices use torch's global generator, which the engine seeds from (seed, epoch)
in the main process and DataLoader seeds per worker from the loader's generator, so
augmented epochs are reproducible and a resumed run sees the same augmentations.
"""
from __future__ import annotations

from typing import Sequence

import torch


class Cutout:
    """Sets one random square of side ``fraction`` x min(H, W) to zero (empty background), clipped at the borders."""

    def __init__(self, fraction: float):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"cutout fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        side = max(1, round(self.fraction * min(h, w)))
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        image = image.clone()
        image[..., max(0, cy - side // 2) : cy + (side + 1) // 2, max(0, cx - side // 2) : cx + (side + 1) // 2] = 0
        return image


class CanvasTransform:
    """uint8 canvas -> [RandAugment] -> [Cutout] -> float in [0, 1] -> (x - mean) / std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], cutout: float = 0.0, randaugment: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.cutout = Cutout(cutout) if cutout > 0 else None
        if randaugment:
            from torchvision.transforms import v2

            self.randaugment = v2.RandAugment()
        else:
            self.randaugment = None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.randaugment is not None:
            image = self.randaugment(image)
        if self.cutout is not None:
            image = self.cutout(image)
        return (image.float() / 255.0 - self.mean) / self.std
