"""The INDeeD training loss: mine pairs in the batch, score the six heads with one fused op.

Three ops per step ("any" strategy): torch.ops.indeed.mine_pairs, the fused six-head loss, and
one weighted sum whose per-head weights (mean, lam, blocks, self-pair rule) are built once per
setting; no host sync, so torch.compile(fullgraph=True) and CUDA graphs take the whole loss.

For pairs (a, b) the loss is the mean over pairs of

    orig_a + orig_b + lam * (ident_a + ident_b + disp_a + disp_b)

where each term is the summed-over-classes base loss (BCE, ASL or focal) of one head (see
docs/SPEC.md). With lam = 0 it is the baseline: the same base loss on the original features,
no pairs mined.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks, ops, reference
from .pairs import COOCCURRENCE_STATISTICS, DEFAULT_COOCCUR_REFRESH, STRATEGIES, CooccurrenceStatistic, mine_pairs

BLOCKS = ("identical", "disparate")
SELF_PAIR_OPTIONS = ("zero_target", "skip")
BASES = ("bce", "asl", "focal")


class LossOutput(NamedTuple):
    """loss: scalar with grad. orig, ident, disp: detached means over pairs of orig_a + orig_b,
    ident_a + ident_b and disp_a + disp_b as they enter the loss (so loss = orig + lam *
    (ident + disp)); 0 for a block left out. num_partial: int64 count of real (non-self) pairs."""

    loss: torch.Tensor
    orig: torch.Tensor
    ident: torch.Tensor
    disp: torch.Tensor
    num_partial: torch.Tensor


class INDeeDLoss(nn.Module):
    """INDeeD loss over a batch of pooled features and multi-label targets.

    lam: weight of the identical and disparate heads; 0 gives the baseline (the base loss on
        the original features, mean over samples of the sum over classes, no pairs).
    norm, eps: the identical map's normalisation ("minmax" or "l2") and its clamp.
    blocks: the head groups that enter the loss besides the originals; ("identical",)
        and ("disparate",) are the paper's ablations (its Tables 4 and 5). () keeps the
        original heads of the mined pairs only, the mean over pairs of orig_a + orig_b (lam > 0
        then only says "mine pairs"; lam = 0 is still the baseline): the reweighting control,
        the same pairs as full INDeeD without its decomposition.
    self_pair_disparate: what a self-pair (a, a) contributes, for a sample with no valid
        partner in the batch. Its disparate target ya * (1 - ya) is empty (all zeros for
        0/1 labels). "zero_target" keeps the disparate terms: they push the classifier's
        scores of the disparate features (1 - m) * fa towards "no class". "skip" drops
        them (they still count in the mean over pairs). Either way the self-pair keeps its
        original and identical terms (the identical target of (a, a) is ya itself). The
        paper uses the default pair (Xa, Xa) without saying which; "zero_target" is the
        plain reading of its formulas.
    strategy: pair mining, "any", "matching" or "cooccur" (see indeed_ext.pairs.mine_pairs).
    backend: passed to indeed_ext.ops.six_head_loss ("auto", "cpu", "cuda", "triton", "reference").
    num_classes: the c of the targets, checked when given; strategy "cooccur" needs it.
    cooccur_statistic, cooccur_z, load_cap, cooccur_refresh: strategy "cooccur" only ("lift", the default, or "excess",
        the z of its significance test: see pairs.CooccurrenceStatistic; the load cap of the partner
        draw, 0 for none: see pairs.mine_pairs; the weights are recomputed from the statistic every
        cooccur_refresh steps in eager mode, at every step when compiled). The loss owns that statistic,
        ``self.cooccurrence`` (its counts are in the loss's state_dict), updates it with each
        batch's targets in training mode (lam = 0 included) and mines with its contrast
        weights; ``self.cooccurrence.seed_from_labels(labels)`` starts it from a data set's labels.
    base: the base loss of every head. "bce"; "asl", the Asymmetric Loss (Ridnik et al. 2021)
        with gamma_neg, gamma_pos, clip (the defaults are ASL's training script's); "focal", the
        focal loss, ASL with gamma_neg = gamma_pos = gamma and clip = 0. eps_log: ASL's clamp of
        the probabilities inside the logs. focal_grad: False (ASL's default) treats the focal
        weight (1 - pt)^gamma as a constant in backward, True differentiates it too. See
        indeed_ext.reference.asl_sum for the formula.
    present_negatives: how a decomposed head counts its present negatives, the classes its image has
        that its target excludes (for ident_a the labels of a that b lacks, for the disparate heads
        the labels a and b share): "sum", the paper's sum over classes, or "mean", their base losses
        averaged, so that together they weigh as one class (docs/SPEC.md; docs/EXPERIMENTS.md, issue 26:
        with many labels per image the summed ones outweigh the rest of a head's loss).

    The classifier: an nn.Linear is fused into the six-head op. Any other head (an MLP, a
    per-class query decoder: a module mapping (rows, n) features to (rows, c) logits) is
    accepted and runs unfused, with a one-time warning: pairs mined as above, the decompose
    op, the head called on the six feature sets, the base loss of indeed_ext.reference.
    """

    def __init__(
        self,
        lam: float = 1.0,
        norm: str = "minmax",
        blocks=BLOCKS,
        self_pair_disparate: str = "zero_target",
        strategy: str = "any",
        backend: str = "auto",
        eps: float = 1e-12,
        num_classes: int | None = None,
        cooccur_statistic: str = COOCCURRENCE_STATISTICS[0],
        cooccur_z: float = 3.0,
        load_cap: int = reference.DEFAULT_LOAD_CAP,
        cooccur_refresh: int = DEFAULT_COOCCUR_REFRESH,
        base: str = "bce",
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        gamma: float = 2.0,
        eps_log: float = 1e-8,
        focal_grad: bool = False,
        present_negatives: str = "sum",
    ):
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        _checks.check_norm_eps(norm, eps)
        if isinstance(blocks, str):
            raise TypeError(f"blocks must be a tuple of block names such as ({blocks!r},), got the string {blocks!r}")
        blocks = tuple(blocks)
        unknown = [b for b in blocks if b not in BLOCKS]
        if unknown:
            raise ValueError(f"unknown block {unknown[0]!r} in blocks; expected names from {BLOCKS}")
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks has a repeated name: {blocks}")
        if self_pair_disparate not in SELF_PAIR_OPTIONS:
            raise ValueError(
                f"unknown self_pair_disparate {self_pair_disparate!r}; expected one of {SELF_PAIR_OPTIONS}"
            )
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown pair strategy {strategy!r}; expected one of {STRATEGIES}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {ops.BACKENDS}")
        self._loss_settings = _base_loss_settings(base, gamma_neg, gamma_pos, clip, gamma, eps_log, focal_grad)
        _checks.check_present_negatives(present_negatives)
        self.present_negatives = present_negatives
        self.lam, self.norm, self.eps = float(lam), norm, eps
        self.blocks, self.self_pair_disparate = blocks, self_pair_disparate
        self.strategy, self.backend = strategy, backend
        self.base, self.gamma_neg, self.gamma_pos, self.clip, self.gamma = base, gamma_neg, gamma_pos, clip, gamma
        self.eps_log, self.focal_grad = eps_log, focal_grad
        self._weights_key = self._weights = None  # see _head_weights
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if strategy == "cooccur" and num_classes is None:
            raise ValueError("strategy='cooccur' needs num_classes, the c of the targets (B, c)")
        _checks.check_load_cap(load_cap)
        if strategy != "cooccur" and (cooccur_statistic != COOCCURRENCE_STATISTICS[0] or cooccur_z != 3.0
                                      or load_cap != reference.DEFAULT_LOAD_CAP or cooccur_refresh != DEFAULT_COOCCUR_REFRESH):
            raise ValueError("cooccur_statistic, cooccur_z, load_cap and cooccur_refresh are settings of "
                             f"strategy='cooccur', not {strategy!r}")
        self.num_classes, self.load_cap = num_classes, load_cap
        self.cooccurrence = None
        if strategy == "cooccur":
            self.cooccurrence = CooccurrenceStatistic(num_classes, cooccur_statistic, cooccur_z, cooccur_refresh)
        self._warned_unfused = False

    def extra_repr(self) -> str:
        base = {"bce": "", "asl": f", gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}",
                "focal": f", gamma={self.gamma}"}[self.base]
        if self.base != "bce":
            base += f", eps_log={self.eps_log}, focal_grad={self.focal_grad}"
        return (
            f"lam={self.lam}, norm={self.norm!r}, blocks={self.blocks}, "
            f"self_pair_disparate={self.self_pair_disparate!r}, strategy={self.strategy!r}, backend={self.backend!r}, "
            f"base={self.base!r}{base}, present_negatives={self.present_negatives!r}"
            + ("" if self.num_classes is None else f", num_classes={self.num_classes}")
            + (f", load_cap={self.load_cap}, cooccur_refresh={self.cooccurrence.refresh}" if self.strategy == "cooccur" else "")
        )

    def forward(self, features: torch.Tensor, targets: torch.Tensor, classifier: nn.Module, generator=None) -> LossOutput:
        """features (B, n), targets (B, c) in [0, 1] (or bool), classifier: nn.Linear(n, c) (fused) or
        any module mapping (rows, n) features to (rows, c) logits (unfused; see the class docstring).

        generator: a torch.Generator on the targets' device for the pair mining (None: global RNG).
        """
        linear = _linear_params(features, targets, classifier)
        if not targets.is_floating_point():
            targets = targets.to(torch.float32)
        if linear is None:  # the head runs as the caller runs it (under autocast, if any); the loss in float32
            self._warn_unfused(classifier)
            return self._loss(features, targets, classifier, generator)
        # The loss runs at the ops' precision (half inputs accumulate in float32), not
        # autocast's: under autocast the reference's and the baseline's linear layers
        # would otherwise produce half logits.
        device_type = features.device.type
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self._loss(features, targets, linear, generator)
        return self._loss(features, targets, linear, generator)

    def _warn_unfused(self, classifier) -> None:
        if not self._warned_unfused:
            self._warned_unfused = True
            warnings.warn(
                f"INDeeDLoss: the classifier is a {type(classifier).__name__}, not an nn.Linear; only a linear head "
                "is fused, so this one runs unfused (the decompose op, the head on the six feature sets, the "
                "reference loss): slower, same loss",
                stacklevel=3,
            )

    def _loss(self, features, targets, head, generator) -> LossOutput:
        """head: (weight, bias) of an nn.Linear (fused op), or the classifier module (unfused)."""
        if self.num_classes is not None and targets.shape[1] != self.num_classes:
            raise ValueError(f"targets have c = {targets.shape[1]} classes, but the loss has num_classes = {self.num_classes}")
        contrast_weights = None
        if self.cooccurrence is not None:
            self.cooccurrence.follow(targets.device)
            if self.training:
                self.cooccurrence.update(targets)
            if self.lam != 0:
                contrast_weights = self.cooccurrence.weights()
        if self.lam == 0:
            return self._baseline(features, targets, head)
        index_a, index_b, is_partial = mine_pairs(targets, self.strategy, generator, self.backend, contrast_weights,
                                                  self.load_cap)
        if isinstance(head, tuple):
            per_head = ops.six_head_loss(
                features, *head, targets, index_a, index_b, self.norm, self.eps, *self._loss_settings,
                self.present_negatives, backend=self.backend, check_indices=False,
            )  # (P, 6): orig_a, orig_b, ident_a, ident_b, disp_a, disp_b
        else:
            per_head = self._unfused_heads(features, targets, head, index_a, index_b)
        P = per_head.shape[0]
        loss_weights, block_weights, self_pair_mask = self._head_weights(P, per_head.dtype, per_head.device)
        if self_pair_mask is not None:  # "skip": the self-pairs' disparate heads count 0
            per_head = per_head * torch.where(is_partial[:, None], 1.0, self_pair_mask)
        head_sums = per_head.sum(0)
        with torch.no_grad():
            orig, ident, disp = torch.mv(block_weights, head_sums).unbind()
        return LossOutput(torch.dot(head_sums, loss_weights), orig, ident, disp, torch.count_nonzero(is_partial))

    def _head_weights(self, P, dtype, device):
        """Weights of the heads' sums over the P pairs in the loss (6,) and in its blocks orig,
        ident, disp (3, 6), and the heads' factors for a self-pair under "skip" (6,), else None:
        the mean, lam, the blocks and the self-pair rule folded in, built once per setting (one
        for "any", whose P is the batch size) instead of as masks each step."""
        key = (P, self.lam, self.blocks, self.self_pair_disparate, dtype, device)
        if self._weights_key != key:
            block_weights = torch.zeros((3, len(reference.HEADS)), dtype=dtype, device=device)
            block_weights[0, 0:2] = 1 / P
            if "identical" in self.blocks:
                block_weights[1, 2:4] = 1 / P
            if "disparate" in self.blocks:
                block_weights[2, 4:6] = 1 / P
            loss_weights = block_weights.T @ torch.tensor([1.0, self.lam, self.lam], dtype=dtype, device=device)
            self_pair_mask = None
            if self.self_pair_disparate == "skip" and "disparate" in self.blocks:
                self_pair_mask = torch.tensor([1, 1, 1, 1, 0, 0], dtype=dtype, device=device)
            self._weights_key, self._weights = key, (loss_weights, block_weights, self_pair_mask)
        return self._weights

    def _unfused_heads(self, features, targets, head, index_a, index_b) -> torch.Tensor:
        """(P, 6) base losses of the six heads with any classifier: reference.six_head_loss with
        the head in place of its linear layer (and the decompose op of the chosen backend)."""
        fa, fb = features[index_a], features[index_b]
        ia, ib, da, db = ops.decompose(fa, fb, self.norm, self.eps, backend=self.backend)
        six = torch.stack((fa, fb, ia, ib, da, db), dim=1)  # (P, 6, n)
        logits = _head_logits(head, six.flatten(0, 1), targets.shape[1]).unflatten(0, six.shape[:2])
        y = reference.pair_targets(targets.to(logits.dtype), index_a, index_b)
        class_weights = None
        if self.present_negatives == "mean":
            class_weights = reference.present_negative_weights(targets.to(logits.dtype), index_a, index_b)
        return reference.base_loss_sum(logits, y, *self._loss_settings, class_weights)

    def _baseline(self, features, targets, head) -> LossOutput:
        if isinstance(head, tuple):
            # Logits accumulated and kept in float32 for half inputs, as the fused op's orig heads.
            weight, bias = head
            cd = reference.compute_dtype(features.dtype)
            logits = F.linear(features.to(cd), weight.to(cd), None if bias is None else bias.to(cd))
        else:
            logits = _head_logits(head, features, targets.shape[1])
        y = targets.to(logits.dtype)
        if self.base == "bce":
            per_sample = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
        else:
            per_sample = reference.base_loss_sum(logits, y, *self._loss_settings)
        loss = per_sample.mean()
        zero = loss.new_zeros(())
        return LossOutput(loss, loss.detach(), zero, zero, torch.zeros((), dtype=torch.int64, device=loss.device))


def _base_loss_settings(base, gamma_neg, gamma_pos, clip, gamma, eps_log, focal_grad) -> tuple:
    """six_head_loss's (loss, gamma_neg, gamma_pos, clip, eps_log, focal_grad) of a base loss; every
    parameter is checked, also those the base does not use."""
    if base not in BASES:
        raise ValueError(f"unknown base loss {base!r}; expected one of {BASES}")
    _checks.check_loss("asl", gamma_neg, gamma_pos, clip, eps_log)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if not isinstance(focal_grad, bool):
        raise TypeError(f"focal_grad must be a bool, got {focal_grad!r}")
    loss_params = {"bce": ("bce", 0.0, 0.0, 0.0), "asl": ("asl", float(gamma_neg), float(gamma_pos), float(clip)),
                   "focal": ("asl", float(gamma), float(gamma), 0.0)}[base]
    return (*loss_params, float(eps_log), focal_grad)


def _head_logits(head, x, c: int) -> torch.Tensor:
    """head(x) for x (rows, n), checked to be (rows, c) logits, in the accumulation dtype (float32 for half)."""
    logits = head(x)
    if not isinstance(logits, torch.Tensor) or logits.shape != (x.shape[0], c):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the classifier must map ({x.shape[0]}, {x.shape[1]}) features to ({x.shape[0]}, {c}) "
                         f"logits (c = targets.shape[1]), got {got}")
    return logits.to(reference.compute_dtype(logits.dtype))


def _linear_params(features, targets, classifier):
    """An nn.Linear classifier's weight and bias in the features' dtype (as autocast would cast a Linear);
    None for any other head, which runs unfused."""
    if features.dim() != 2 or targets.dim() != 2:
        raise ValueError(
            f"features must be (B, n) and targets (B, c), got shapes {tuple(features.shape)} and {tuple(targets.shape)}"
        )
    if features.shape[0] != targets.shape[0]:
        raise ValueError(f"features and targets must have the same batch size, got {features.shape[0]} and {targets.shape[0]}")
    if features.shape[0] == 0:
        raise ValueError("the batch is empty (B = 0)")
    if not isinstance(classifier, nn.Linear):
        if not callable(classifier):
            raise TypeError(f"classifier must be a module (an nn.Linear or any head), got {type(classifier).__name__}")
        return None
    weight = classifier.weight
    n, c = features.shape[1], targets.shape[1]
    if tuple(weight.shape) != (c, n):
        raise ValueError(
            f"classifier maps {weight.shape[1]} features to {weight.shape[0]} classes, "
            f"but features have n={n} and targets c={c}"
        )
    bias = classifier.bias
    def in_features_dtype(t):  # without an aten::to when it has it already
        return t if t is None or t.dtype == features.dtype else t.to(features.dtype)

    return in_features_dtype(weight), in_features_dtype(bias)
