"""A standard debiasing baseline: Singh et al.'s weighted loss.

Singh, Mahajan, Grauman, Lee, Feiszli, Ghadiyaram, "Don't Judge an Object by Its Context:
Learning to Overcome Contextual Bias", CVPR 2020, among their strong baselines: for each biased
category pair (b, c), the loss of class b is upweighted on the training images where b appears
without c (the "exclusive" images). We follow the ML Reproducibility Challenge 2020 code of
that paper (princetonvisualai/ContextualBias, classifier.py, ``train_weighted``): the per-entry
BCE weight of (image, b) is ``weight`` (default 10) where the image is exclusive for a pair
(b, c), else 1 (an entry exclusive for two pairs of the same b still gets ``weight``, not its
square). Their loss then averages over the entries; this one sums over classes and averages
over images, as INDeeDLoss's baseline does, so that weight 1 is exactly that baseline.

The pairs come from indeed_ext.metrics: biased_pairs_by_scores (a trained model's bias, their
way) or biased_pairs_by_cooccurrence (the annotations, their fallback).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import reference
from .losses import LossOutput, _classifier_params


class ExclusiveWeightedBCE(nn.Module):
    """BCE with the entries (image, b) of the exclusive images of each biased pair (b, c) weighted by ``weight``.

    pairs: (K, 2) integer class indices (b, c), b != c; K = 0 gives the plain BCE.
    weight: the exclusive entries' weight (> 0; Singh et al.: 10).
    Same call as INDeeDLoss: (features (B, n), targets (B, c), classifier: nn.Linear(n, c),
    generator=None) -> LossOutput with orig = the loss and no identical or disparate terms.
    """

    def __init__(self, pairs, weight: float = 10.0):
        super().__init__()
        pairs = torch.as_tensor(pairs)
        if pairs.is_floating_point() or pairs.dtype == torch.bool:
            raise TypeError(f"pairs must hold integer class indices, got {pairs.dtype}")
        pairs = pairs.reshape(0, 2) if pairs.numel() == 0 else pairs
        if pairs.dim() != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must be a (K, 2) array of (b, c), got shape {tuple(pairs.shape)}")
        if pairs.numel() and (pairs.min() < 0 or (pairs[:, 0] == pairs[:, 1]).any()):
            raise ValueError("pairs must hold class indices >= 0 with b != c")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be a finite number > 0, got {weight!r}")
        self.register_buffer("pairs", pairs.long().clone(), persistent=False)
        self.weight = float(weight)
        self._needed_classes = int(pairs.max()) + 1 if pairs.numel() else 0  # checked against c without a device sync

    def extra_repr(self) -> str:
        return f"pairs={self.pairs.shape[0]}, weight={self.weight}"

    def forward(self, features: torch.Tensor, targets: torch.Tensor, classifier: nn.Module, generator=None) -> LossOutput:
        """generator: unused (no pairs are mined); accepted for the engine's call."""
        weight, bias = _classifier_params(features, targets, classifier)
        if targets.shape[1] < self._needed_classes:
            raise ValueError(f"the biased pairs name class {self._needed_classes - 1}, but targets have c={targets.shape[1]} classes")
        if not targets.is_floating_point():
            targets = targets.to(torch.float32)
        device_type = features.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):  # the loss at float32, as INDeeDLoss's
                return self._loss(features, targets, weight, bias)
        return self._loss(features, targets, weight, bias)

    def _loss(self, features, targets, weight, bias) -> LossOutput:
        cd = reference.compute_dtype(features.dtype)
        logits = F.linear(features.to(cd), weight.to(cd), None if bias is None else bias.to(cd))
        per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(cd), reduction="none")
        present = targets > 0.5
        b, c = self.pairs.to(targets.device).unbind(1)
        exclusive = (present[:, b] & ~present[:, c]).to(cd)  # (B, K)
        upweighted = torch.zeros_like(per_entry).index_add_(1, b, exclusive) > 0  # (B, c): exclusive for some pair of b
        loss = (per_entry * torch.where(upweighted, self.weight, 1.0)).sum(1).mean()
        zero = loss.new_zeros(())
        return LossOutput(loss, loss.detach(), zero, zero, torch.zeros((), dtype=torch.int64, device=loss.device))
