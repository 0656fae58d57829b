"""Evaluation: per-class average precision, mAP, the confidence map, the AP table and the context score.

Average precision is the non-interpolated AP that ASL's evaluation computes: sort a
class's scores in descending order, take the precision at the rank of each positive,
and average over the positives. Ties: all samples with equal scores count at once, so
a positive inside a tie group gets the precision at the end of its group. This is
scikit-learn's average_precision_score convention; it makes AP independent of the
order of tied samples, and on tie-free scores equals ASL's number exactly.
"""
from __future__ import annotations

import math

import torch


def _as_matrix(name: str, values) -> torch.Tensor:
    t = torch.as_tensor(values)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (N, c) array, got shape {tuple(t.shape)}")
    return t.detach().cpu()


def average_precision(scores, targets) -> torch.Tensor:
    """Per-class AP (c,) float64 in [0, 1] of scores (N, c) against targets (N, c).

    Positives are targets > 0.5. NaN for a class with no positives.
    """
    scores = _as_matrix("scores", scores).to(torch.float64)
    targets = _as_matrix("targets", targets)
    if scores.shape != targets.shape:
        raise ValueError(f"scores and targets must have the same shape, got {tuple(scores.shape)} and {tuple(targets.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    N = scores.shape[0]
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    sorted_scores = scores.gather(0, order)
    positive = (targets > 0.5).to(torch.float64).gather(0, order)
    true_positives = torch.cumsum(positive, 0)
    # Rank (0-based) of the last sample in each position's tie group: the smallest j >= i
    # that ends a group, by a reversed running minimum.
    ends_group = torch.ones_like(sorted_scores, dtype=torch.bool)
    ends_group[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    rank = torch.arange(N).unsqueeze(1).expand_as(sorted_scores)
    group_end = torch.where(ends_group, rank, N).flip(0).cummin(0).values.flip(0)
    precision = true_positives.gather(0, group_end) / (group_end + 1)
    return (precision * positive).sum(0) / positive.sum(0)


def mean_average_precision(scores, targets) -> tuple[float, torch.Tensor]:
    """(mAP in percent over the classes with positives, per-class AP (c,) in percent, NaN for none)."""
    per_class = 100 * average_precision(scores, targets)
    has_positives = ~torch.isnan(per_class)
    mean = per_class[has_positives].mean().item() if has_positives.any() else math.nan
    return mean, per_class


def _class_indices(labels, rows: int, num_classes: int) -> torch.Tensor:
    """labels as int64 (rows,) class indices in [0, num_classes), or the error that names the problem."""
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() != 1 or labels.shape[0] != rows:
        raise ValueError(f"labels must be 1-D with one label per score row ({rows}), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values from {int(labels.min())} to {int(labels.max())}")
    return labels.long()


def confidence_map(scores, labels, num_classes: int) -> torch.Tensor:
    """(c, c) float64: row k is the mean score vector over the samples whose single label is k.

    scores (N, c): probabilities (sigmoid of the logits); labels (N,): ints in [0, c).
    The paper's Fig. 3: on a single-label test set, a model that separates the classes
    puts its mass on the diagonal. Rows of classes with no sample are NaN.
    """
    scores = _as_matrix("scores", scores).to(torch.float64)
    if scores.shape[1] != num_classes:
        raise ValueError(f"scores must have num_classes={num_classes} columns, got shape {tuple(scores.shape)}")
    labels = _class_indices(labels, scores.shape[0], num_classes)
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, labels, scores)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return sums / counts[:, None]


def context_score(probabilities, labels, context) -> float:
    """The mean probability a model gives to the context of the object it is shown (lower is better).

    probabilities (N, c): sigmoid scores of single-object images; labels (N,): their classes;
    context (c, c) bool: row k marks the classes that co-occur with k in training (its context).
    The score is the mean over the images whose class has a non-empty context of the mean
    probability over that context. NaN when no image has one.
    """
    probabilities = _as_matrix("probabilities", probabilities).to(torch.float64)
    labels = _class_indices(labels, probabilities.shape[0], probabilities.shape[1])
    context = torch.as_tensor(context).detach().cpu()
    c = probabilities.shape[1]
    if context.dtype != torch.bool:
        raise TypeError(f"context must be a bool (c, c) matrix, got {context.dtype}")
    if tuple(context.shape) != (c, c):
        raise ValueError(f"context must be ({c}, {c}) for {c} classes, got shape {tuple(context.shape)}")
    shown = context[labels].to(torch.float64)  # (N, c): the context of each image's class
    sizes = shown.sum(1)
    has_context = sizes > 0
    if not has_context.any():
        return math.nan
    per_image = (probabilities * shown).sum(1)[has_context] / sizes[has_context]
    return per_image.mean().item()


def ap_table_markdown(rows: dict, class_names) -> str:
    """Markdown table in the paper's Table 1 layout: one row per model, one column per
    class, then mAP (the mean over the classes with positives). Values in percent, as
    mean_average_precision returns them; n/a for classes without positives."""
    class_names = [str(name) for name in class_names]
    header = "| Model | " + " | ".join(class_names) + " | mAP |"
    rule = "|---|" + "---:|" * (len(class_names) + 1)
    lines = [header, rule]
    for model, per_class in rows.items():
        values = torch.as_tensor(per_class, dtype=torch.float64).flatten()
        if values.shape[0] != len(class_names):
            raise ValueError(f"row {model!r} has {values.shape[0]} per-class values for {len(class_names)} classes")
        known = values[~torch.isnan(values)]
        mean = known.mean().item() if known.numel() else math.nan
        cells = [_percent(v) for v in values.tolist()] + [_percent(mean)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"
