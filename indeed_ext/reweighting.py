"""Two standard debiasing methods of Singh et al.: their weighted loss and their feature-split method.

Singh, Mahajan, Grauman, Lee, Feiszli, Ghadiyaram, "Don't Judge an Object by Its Context:
Learning to Overcome Contextual Bias", CVPR 2020.

The weighted loss (ExclusiveWeightedBCE), among their strong baselines: for each biased
category pair (b, c), the loss of class b is upweighted on the training images where b appears
without c (the "exclusive" images). We follow the ML Reproducibility Challenge 2020 code of
that paper (princetonvisualai/ContextualBias, classifier.py, ``train_weighted``): the per-entry
BCE weight of (image, b) is ``weight`` (default 10) where the image is exclusive for a pair
(b, c), else 1 (an entry exclusive for two pairs of the same b still gets ``weight``, not its
square). Their loss then averages over the entries; this one sums over classes and averages
over images, as INDeeDLoss's baseline does, so that weight 1 is exactly that baseline.

Feature-split (FeatureSplitBCE), their method and the nearest published relative of INDeeD's
decomposition: the feature vector is split in halves, x = (x_o, x_s), and so is the classifier,
W = (W_o, W_s). On an exclusive image of a biased pair (b, c) (b without c) the context half is
held at its running mean over the other images, so that neither x_s nor W_s learns from it and b
must be recognised from x_o alone; b's loss there is weighted by max(sqrt(co-occurring / exclusive
training images of (b, c)), 3). At test time the whole feature vector is used, as by any model.
Their reproduction (classifier.py, ``train_featuresplit``) takes two optimiser steps per batch,
one on the non-exclusive and one on the exclusive images, and zeroes W_s's gradient of the biased
classes in the second; this loss gives the same gradients in one step: the exclusive rows' logits
are x_o W_o^T + mean(x_s) W_s^T + bias with W_s detached there. Its running mean is an exponential
average (momentum 0.1: about their last ten batches) of the non-exclusive rows' x_s.

The pairs come from indeed_ext.metrics: biased_pairs_by_scores (a trained model's bias, their
way) or biased_pairs_by_cooccurrence (the annotations, their fallback).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import reference
from .losses import LossOutput, _linear_params


def _checked_pairs(pairs) -> torch.Tensor:
    """(K, 2) int64 class indices (b, c) with b != c, from a tensor or nested list (K = 0 allowed)."""
    pairs = torch.as_tensor(pairs)
    if pairs.is_floating_point() or pairs.dtype == torch.bool:
        raise TypeError(f"pairs must hold integer class indices, got {pairs.dtype}")
    pairs = pairs.reshape(0, 2) if pairs.numel() == 0 else pairs
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be a (K, 2) array of (b, c), got shape {tuple(pairs.shape)}")
    if pairs.numel() and (pairs.min() < 0 or (pairs[:, 0] == pairs[:, 1]).any()):
        raise ValueError("pairs must hold class indices >= 0 with b != c")
    return pairs.long().clone()


def _exclusive(targets: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: row i holds b and not c, for each pair (b, c)."""
    present = targets > 0.5
    b, c = pairs.to(targets.device).unbind(1)
    return present[:, b] & ~present[:, c]


def _loss_call(loss_fn, features, targets, classifier, needed_classes: int) -> LossOutput:
    """loss_fn(features, targets, weight, bias) for an nn.Linear classifier, at float32 under autocast (as INDeeDLoss)."""
    linear = _linear_params(features, targets, classifier)
    if linear is None:
        raise TypeError(f"classifier must be an nn.Linear, got {type(classifier).__name__}")
    if targets.shape[1] < needed_classes:
        raise ValueError(f"the biased pairs name class {needed_classes - 1}, but targets have c={targets.shape[1]} classes")
    if not targets.is_floating_point():
        targets = targets.to(torch.float32)
    device_type = features.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return loss_fn(features, targets, *linear)
    return loss_fn(features, targets, *linear)


def _output(loss: torch.Tensor) -> LossOutput:
    zero = loss.new_zeros(())
    return LossOutput(loss, loss.detach(), zero, zero, torch.zeros((), dtype=torch.int64, device=loss.device))


class ExclusiveWeightedBCE(nn.Module):
    """BCE with the entries (image, b) of the exclusive images of each biased pair (b, c) weighted by ``weight``.

    pairs: (K, 2) integer class indices (b, c), b != c; K = 0 gives the plain BCE.
    weight: the exclusive entries' weight (> 0; Singh et al.: 10).
    Same call as INDeeDLoss: (features (B, n), targets (B, c), classifier: nn.Linear(n, c),
    generator=None) -> LossOutput with orig = the loss and no identical or disparate terms.
    """

    def __init__(self, pairs, weight: float = 10.0):
        super().__init__()
        pairs = _checked_pairs(pairs)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight must be a finite number > 0, got {weight!r}")
        self.register_buffer("pairs", pairs, persistent=False)
        self.weight = float(weight)
        self._needed_classes = int(pairs.max()) + 1 if pairs.numel() else 0  # checked against c without a device sync

    def extra_repr(self) -> str:
        return f"pairs={self.pairs.shape[0]}, weight={self.weight}"

    def forward(self, features: torch.Tensor, targets: torch.Tensor, classifier: nn.Module, generator=None) -> LossOutput:
        """generator: unused (no pairs are mined); accepted for the engine's call."""
        return _loss_call(self._loss, features, targets, classifier, self._needed_classes)

    def _loss(self, features, targets, weight, bias) -> LossOutput:
        cd = reference.compute_dtype(features.dtype)
        logits = F.linear(features.to(cd), weight.to(cd), None if bias is None else bias.to(cd))
        per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(cd), reduction="none")
        exclusive = _exclusive(targets, self.pairs).to(cd)  # (B, K)
        upweighted = torch.zeros_like(per_entry).index_add_(1, self.pairs[:, 0].to(targets.device), exclusive) > 0
        return _output((per_entry * torch.where(upweighted, self.weight, 1.0)).sum(1).mean())


class FeatureSplitBCE(nn.Module):
    """Singh et al.'s feature-split method (module docstring): BCE where, on the exclusive images of the
    biased pairs, the second half of the features is held at its running mean and gets no gradient,
    nor does the second half of the classifier.

    pairs: (K, 2) class indices (b, c), b != c. feature_dim: n, the features' width (>= 2); the first
    n // 2 features are the object half x_o, the others the context half x_s. class_weights: (c,) the
    weight of b's loss on its exclusive images (from_labels computes Singh et al.'s); entries of classes
    that are no pair's b are unused. momentum: of the running mean of x_s (0.1: about the last ten batches).
    The running mean (``context_mean``, with ``context_batches``, the batches it has seen) is in the
    state_dict; it is updated in training mode from the rows that are exclusive for no pair. Until
    a batch has updated it, exclusive rows use x_o alone (the mean is 0).
    Same call as INDeeDLoss: (features (B, n), targets (B, c), classifier: nn.Linear(n, c)) -> LossOutput.
    """

    def __init__(self, pairs, feature_dim: int, class_weights, momentum: float = 0.1):
        super().__init__()
        pairs = _checked_pairs(pairs)
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 2:
            raise ValueError(f"feature_dim must be an int >= 2 (two halves), got {feature_dim!r}")
        class_weights = torch.as_tensor(class_weights, dtype=torch.float64)
        if class_weights.dim() != 1 or not torch.isfinite(class_weights).all() or (class_weights <= 0).any():
            raise ValueError("class_weights must be a 1-D tensor of finite weights > 0, one per class")
        if pairs.numel() and int(pairs.max()) >= class_weights.shape[0]:
            raise ValueError(f"the biased pairs name class {int(pairs.max())}, but class_weights has {class_weights.shape[0]} classes")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.register_buffer("pairs", pairs, persistent=False)
        self.register_buffer("class_weights", class_weights.float(), persistent=False)
        self.register_buffer("context_mean", torch.zeros(feature_dim - feature_dim // 2))
        self.register_buffer("context_batches", torch.zeros((), dtype=torch.int64))
        self.feature_dim, self.momentum = feature_dim, float(momentum)
        self._needed_classes = class_weights.shape[0]

    @classmethod
    def from_labels(cls, pairs, labels: torch.Tensor, feature_dim: int, min_weight: float = 3.0, momentum: float = 0.1):
        """With Singh et al.'s weights from the training labels (N, c): b's weight is max(sqrt(co / ex),
        min_weight), co and ex the training images with b and c and with b without c (ex = 0: min_weight)."""
        pairs = _checked_pairs(pairs)
        present = torch.as_tensor(labels) > 0.5
        if present.dim() != 2:
            raise ValueError(f"labels must be (N, c), got shape {tuple(present.shape)}")
        weights = torch.ones(present.shape[1], dtype=torch.float64)
        for b, c in pairs.tolist():
            cooccurring = (present[:, b] & present[:, c]).sum().item()
            exclusive = (present[:, b] & ~present[:, c]).sum().item()
            ratio = math.sqrt(cooccurring / exclusive) if exclusive else 0.0
            weights[b] = max(ratio, min_weight)
        return cls(pairs, feature_dim, weights, momentum)

    def extra_repr(self) -> str:
        return f"pairs={self.pairs.shape[0]}, feature_dim={self.feature_dim}, momentum={self.momentum}"

    def forward(self, features: torch.Tensor, targets: torch.Tensor, classifier: nn.Module, generator=None) -> LossOutput:
        """generator: unused (no pairs are mined); accepted for the engine's call."""
        if features.dim() == 2 and features.shape[1] != self.feature_dim:
            raise ValueError(f"features have n = {features.shape[1]}, but the loss was built for feature_dim = {self.feature_dim}")
        return _loss_call(self._loss, features, targets, classifier, self._needed_classes)

    def _loss(self, features, targets, weight, bias) -> LossOutput:
        cd = reference.compute_dtype(features.dtype)
        x, weight = features.to(cd), weight.to(cd)
        bias = None if bias is None else bias.to(cd)
        half = self.feature_dim // 2
        exclusive_pairs = _exclusive(targets, self.pairs)  # (B, K)
        exclusive = exclusive_pairs.any(1)
        if self.training:
            self._update_context_mean(x[:, half:].detach(), ~exclusive)
        held = F.linear(self.context_mean.to(cd), weight[:, half:].detach())  # (c,): the context half at its mean
        split_logits = F.linear(x[:, :half], weight[:, :half], bias) + held
        logits = torch.where(exclusive[:, None], split_logits, F.linear(x, weight, bias))
        per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(cd), reduction="none")
        b = self.pairs[:, 0].to(targets.device)
        upweighted = torch.zeros_like(per_entry).index_add_(1, b, exclusive_pairs.to(cd)) > 0
        entry_weights = torch.where(upweighted, self.class_weights.to(device=targets.device, dtype=cd), 1.0)
        return _output((per_entry * entry_weights).sum(1).mean())

    @torch.no_grad()
    def _update_context_mean(self, context: torch.Tensor, rows: torch.Tensor) -> None:
        """Moves the running mean towards the mean of the context halves of the rows (no host sync): by
        1 / (batches seen + 1) at first (a plain average), then by momentum."""
        self.context_mean = self.context_mean.to(context.device)
        self.context_batches = self.context_batches.to(context.device)
        count = rows.sum()
        batch_mean = (context * rows[:, None]).sum(0) / count.clamp_min(1)
        rate = (1.0 / (self.context_batches + 1)).clamp_min(self.momentum) * (count > 0)
        self.context_mean += (batch_mean.to(self.context_mean.dtype) - self.context_mean) * rate
        self.context_batches += (count > 0).long()
