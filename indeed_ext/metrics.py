"""Evaluation: per-class average precision, mAP, the confidence map, the AP table, and the
contextual-bias metrics: the context score, the biased category pairs and the exclusive /
co-occur AP of Singh et al. (CVPR 2020, "Don't Judge an Object by Its Context").

Average precision is the non-interpolated AP that ASL's evaluation computes: sort a
class's scores in descending order, take the precision at the rank of each positive,
and average over the positives. Ties: all samples with equal scores count at once, so
a positive inside a tie group gets the precision at the end of its group. This is
scikit-learn's average_precision_score convention; it makes AP independent of the
order of tied samples, and on tie-free scores equals ASL's number exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


# Singh et al.'s rule for candidate context classes z of b (the reproduction's biased_categories.py,
# princetonvisualai/ContextualBias): z appears in at least 10 % of b's images. Their bias ratio also
# needs images of b on both sides (with z, without z).
MIN_COOCCURRENCE = 0.1
DEFAULT_PAIRS = 20  # their K for COCO-Stuff; composites (10 classes) and VOC (20) get one pair per class


def _multi_hot(name: str, targets) -> torch.Tensor:
    """targets (N, c) as float64 0/1 (positives: > 0.5)."""
    return (_as_matrix(name, targets) > 0.5).to(torch.float64)


def _top_pairs(strength: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class b its z of the highest strength[b, z] among the valid ones (the first on ties),
    then the k classes of the highest such strengths (stable: the lower b on ties)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    strength = torch.where(valid, strength, -math.inf)
    partner = strength.argmax(dim=1)  # the first maximum
    best = strength.gather(1, partner[:, None]).squeeze(1)
    has_partner = torch.isfinite(best)
    order = torch.sort(torch.where(has_partner, best, -math.inf), descending=True, stable=True).indices[:k]
    order = order[has_partner[order]]
    return torch.stack([order, partner[order]], dim=1), best[order]


def _candidates(labels: torch.Tensor, min_cooccurrence: float, min_images: int):
    """(co (c, c) images with b and z, without (c, c) images with b and not z, valid (c, c) candidates z of b)."""
    if not 0.0 <= min_cooccurrence <= 1.0:
        raise ValueError(f"min_cooccurrence must be in [0, 1], got {min_cooccurrence}")
    if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
        raise ValueError(f"min_images must be an int >= 1, got {min_images!r}")
    co = labels.T @ labels
    count = co.diagonal()
    without = count[:, None] - co
    valid = (co >= min_images) & (without >= min_images) & (co >= min_cooccurrence * count[:, None])
    valid.fill_diagonal_(False)
    return co, without, valid


def biased_pairs_by_cooccurrence(targets, k: int = DEFAULT_PAIRS, min_cooccurrence: float = MIN_COOCCURRENCE, min_images: int = 1):
    """The k category pairs (b, c) of the strongest co-occurrence in the labels: for each class b its
    most co-occurring c by P(c | b), then the k of the highest P(c | b). Singh et al.'s ranking
    without a model. Candidates c of b: in at least ``min_cooccurrence`` of b's images, and
    ``min_images`` images of b with c and as many without.

    Returns (pairs (K, 2) int64 of (b, c), P(c | b) (K,) float64), strongest first; K <= k
    (classes without a candidate have no pair).
    """
    labels = _multi_hot("targets", targets)
    co, _, valid = _candidates(labels, min_cooccurrence, min_images)
    return _top_pairs(co / co.diagonal().clamp(min=1)[:, None], valid, k)


def biased_pairs_by_scores(scores, targets, k: int = DEFAULT_PAIRS, min_cooccurrence: float = MIN_COOCCURRENCE, min_images: int = 1):
    """The k most biased category pairs (b, c) of a model, Singh et al.'s way:

        bias(b -> z) = mean score of b over the images with b and z / mean score of b over those with b and without z

    scores (N, c): the model's probabilities on (training) images with targets (N, c). For each b
    its most biased z among the candidates (as in biased_pairs_by_cooccurrence; and a mean score
    without z above 0), then the k of the highest bias. Returns (pairs (K, 2) int64, bias (K,) float64).
    """
    scores = _as_matrix("scores", scores).to(torch.float64)
    labels = _multi_hot("targets", targets)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and targets must have the same shape, got {tuple(scores.shape)} and {tuple(labels.shape)}")
    co, without, valid = _candidates(labels, min_cooccurrence, min_images)
    with_sum = (labels * scores).T @ labels  # [b, z]: the sum of b's scores over the images with b and z
    without_sum = (labels * scores).sum(0)[:, None] - with_sum
    mean_with, mean_without = with_sum / co.clamp(min=1), without_sum / without.clamp(min=1)
    valid &= mean_without > 0
    return _top_pairs(mean_with / torch.where(valid, mean_without, 1.0), valid, k)


def exclusive_cooccur_ap(scores, targets, pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Singh et al.'s evaluation of biased pairs (b, c) on a multi-label test set: b's AP on the
    "exclusive" images (b without c) and on the "co-occur" images (b with c), each ranked against
    all the images without b as negatives (their evaluate.py).

    scores, targets (N, c); pairs (K, 2) of (b, c). Returns the exclusive and co-occur APs (K,)
    float64 in percent (NaN where a pair has no such test image) and the numbers of exclusive and
    co-occur images (K,) int64.
    """
    scores = _as_matrix("scores", scores).to(torch.float64)
    labels = _multi_hot("targets", targets).bool()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and targets must have the same shape, got {tuple(scores.shape)} and {tuple(labels.shape)}")
    pairs = torch.as_tensor(pairs).detach().cpu()
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be a (K, 2) array of (b, c), got shape {tuple(pairs.shape)}")
    if pairs.is_floating_point() or pairs.dtype == torch.bool:
        raise TypeError(f"pairs must hold integer class indices, got {pairs.dtype}")
    if pairs.numel() and (pairs.min() < 0 or pairs.max() >= labels.shape[1]):
        raise ValueError(f"pairs must hold classes in [0, {labels.shape[1]}), got values from {int(pairs.min())} to {int(pairs.max())}")
    results = torch.full((4, pairs.shape[0]), math.nan, dtype=torch.float64)
    for i, (b, c) in enumerate(pairs.tolist()):
        negatives = ~labels[:, b]
        for row, positives in enumerate((labels[:, b] & ~labels[:, c], labels[:, b] & labels[:, c])):
            keep = positives | negatives
            results[row, i] = 100 * average_precision(scores[keep, b : b + 1], positives[keep, None].to(torch.float64))[0]
            results[2 + row, i] = positives.sum()
    return results[0], results[1], results[2].long(), results[3].long()


# How bias_report ranked its pairs, by the inputs it was given.
RANKINGS = {
    "pairs": "the pairs given",
    "train_scores": "the model's bias on the training images: b's mean score with c / without c",
    "train_targets": "annotation co-occurrence: P(c | b) of the training labels",
    "scores": "the model's bias on the evaluated images themselves: b's mean score with c / without c",
}


@dataclass(frozen=True)
class BiasReport:
    """Singh et al.'s exclusive / co-occur evaluation of K category pairs (b, c), the most biased first.

    pairs (K, 2) int64; strength (K,) float64, the ranking's measure (P(c | b) or the bias ratio);
    ranking: how the pairs were chosen (a RANKINGS value); exclusive_ap, cooccur_ap (K,) float64 in
    percent, NaN where a pair has no such image; exclusive_images, cooccur_images, negative_images (K,)
    int64: the positives of each AP and their common negatives (the images without b). An AP's chance
    level is its share of positives, so exclusive and co-occur APs compare across models, not with
    each other (co-occur images are usually the many).
    """

    pairs: torch.Tensor
    strength: torch.Tensor
    ranking: str
    exclusive_ap: torch.Tensor
    cooccur_ap: torch.Tensor
    exclusive_images: torch.Tensor
    cooccur_images: torch.Tensor
    negative_images: torch.Tensor

    @property
    def exclusive_mAP(self) -> float:
        """The mean exclusive AP (%) over the pairs that have exclusive images; NaN when none has."""
        return _nanmean(self.exclusive_ap)

    @property
    def cooccur_mAP(self) -> float:
        """The mean co-occur AP (%) over the pairs that have co-occur images; NaN when none has."""
        return _nanmean(self.cooccur_ap)

    def to_dict(self, class_names=None) -> dict:
        """JSON-ready: {"ranking", "pairs": [{"b", "c", "strength", "exclusive_ap", "cooccur_ap", "exclusive_images",
        "cooccur_images", "negative_images"}], "exclusive_mAP", "cooccur_mAP"}, NaN as None (indeed-train's
        "exclusive_cooccur" layout, and the negatives);
        b and c by class_names when given, else by index."""
        name = (lambda k: k) if class_names is None else (lambda k: class_names[k])
        rows = []
        for i, (b, c) in enumerate(self.pairs.tolist()):
            rows.append({
                "b": name(b), "c": name(c), "strength": _json_float(self.strength[i]),
                "exclusive_ap": _json_float(self.exclusive_ap[i]), "cooccur_ap": _json_float(self.cooccur_ap[i]),
                "exclusive_images": int(self.exclusive_images[i]), "cooccur_images": int(self.cooccur_images[i]),
                "negative_images": int(self.negative_images[i]),
            })  # fmt: skip
        return {"ranking": self.ranking, "pairs": rows, "exclusive_mAP": _json_float(self.exclusive_mAP),
                "cooccur_mAP": _json_float(self.cooccur_mAP)}  # fmt: skip


def _nanmean(values: torch.Tensor) -> float:
    known = values[~values.isnan()]
    return known.mean().item() if known.numel() else math.nan


def _json_float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def bias_report(scores, targets, train_targets=None, k: int = DEFAULT_PAIRS, *, train_scores=None, pairs=None,
                min_cooccurrence: float = MIN_COOCCURRENCE, min_images: int = 1) -> BiasReport:  # fmt: skip
    """How much a multi-label model judges objects by their context, from scores it already gave.

    scores (N, c): the model's probabilities on evaluation images with multi-hot targets (N, c). The
    k most biased pairs (b, c) are ranked, in this order of preference, by:

    - ``pairs`` (K, 2) when given: those pairs, strength NaN;
    - ``train_scores`` with ``train_targets`` (M, c): the model's bias on its training images, Singh et
      al.'s way (biased_pairs_by_scores);
    - ``train_targets`` alone: the co-occurrence of the training labels, P(c | b)
      (biased_pairs_by_cooccurrence; "the co-occurrence statistic");
    - neither: the model's bias on the evaluation images themselves. The pairs are then chosen on the
      images they are measured on, which favours pairs whose co-occur AP is above their exclusive AP.

    Each pair gets b's exclusive and co-occur AP on the evaluation images (exclusive_cooccur_ap).
    ValueError when the ranking finds no pair (no class b has a candidate c: in at least
    ``min_cooccurrence`` of b's images, with ``min_images`` images of b with c and as many without).
    """
    classes = _as_matrix("scores", scores).shape[1]
    for name, values in (("train_targets", train_targets), ("train_scores", train_scores)):
        if values is not None and _as_matrix(name, values).shape[1] != classes:
            raise ValueError(f"{name} must have the {classes} classes of scores, got shape {tuple(torch.as_tensor(values).shape)}")
    if pairs is not None:
        pairs = torch.as_tensor(pairs).detach().cpu()
        ranking = "pairs"
    elif train_scores is not None:
        if train_targets is None:
            raise ValueError("train_scores rank the pairs against their images' labels: give train_targets too")
        pairs, strength = biased_pairs_by_scores(train_scores, train_targets, k, min_cooccurrence, min_images)
        ranking, ranked_on = "train_scores", train_targets
    elif train_targets is not None:
        pairs, strength = biased_pairs_by_cooccurrence(train_targets, k, min_cooccurrence, min_images)
        ranking, ranked_on = "train_targets", train_targets
    else:
        pairs, strength = biased_pairs_by_scores(scores, targets, k, min_cooccurrence, min_images)
        ranking, ranked_on = "scores", targets
    if ranking != "pairs" and pairs.shape[0] == 0:
        labels = _multi_hot("targets", ranked_on)
        raise ValueError(
            f"no biased pair among the {classes} classes ({RANKINGS[ranking]}): no class b has a class c in at least "
            f"{min_cooccurrence:.0%} of b's images, with at least {min_images} image(s) of b with c and as many without "
            f"(of {labels.shape[0]} images; e.g. each holds one label)"
        )
    exclusive, cooccur, n_exclusive, n_cooccur = exclusive_cooccur_ap(scores, targets, pairs)  # validates given pairs
    if ranking == "pairs":
        strength = torch.full((pairs.shape[0],), math.nan, dtype=torch.float64)
    negatives = (_multi_hot("targets", targets) < 0.5).sum(0)[pairs[:, 0].long()]
    return BiasReport(pairs.long(), strength, RANKINGS[ranking], exclusive, cooccur, n_exclusive, n_cooccur, negatives)


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
