#!/usr/bin/env python3
"""What the identical map does on real batches: the numbers behind docs/EXPERIMENTS.md's hypotheses.

    python tools/identical_map_stats.py CHECKPOINT [CHECKPOINT ...] --root MNIST --labels-per-image 3

For each indeed-train checkpoint (or "init:<backbone>[:<init>]" for freshly initialised weights),
a few training batches of ML-MNIST-N (the checkpoint's data settings: --split-test-set,
seed 0) go through the backbone in training mode, pairs are mined as in training, and per pair:

- range: max − min of p = fa ⊙ fb (min-max's denominator; its gradient scales as 1/range),
  and the fraction of pairs with range below 1e-3 and 1e-6;
- mass: Σ m ⊙ fa / Σ fa, the share of the features that the identical part keeps;
- the cosine of the disparate features (1 − m) ⊙ fa with fa: near 1 means the disparate
  head sees almost the original features while its target drops the shared labels;
- |shared| / |ya|: the identical target's share of a's labels, and the fraction of self-pairs;
- gradient norms w.r.t. the features of the original heads and of the identical + disparate
  heads (λ = 1), per batch.
Prints one table row per checkpoint and norm.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from indeed_ext import reference  # noqa: E402
from indeed_ext.recipes import engine, train  # noqa: E402
from indeed_ext.recipes.backbones import build_backbone, initialize  # noqa: E402
from indeed_ext.recipes.data import DataOptions, build_dataset  # noqa: E402
from indeed_ext.model import INDeeD  # noqa: E402
from indeed_ext.pairs import mine_pairs  # noqa: E402


def load(spec: str, bundle) -> torch.nn.Module:
    """A module with .backbone and .classifier: a checkpoint's exported model, or fresh weights (seed 0) for
    "init:<backbone>[:<init>]" (torch or kaiming; indeed-train's default init when omitted)."""
    if not spec.startswith("init:"):
        return engine.load_model(spec)[0]
    name, _, scheme = spec[5:].partition(":")
    torch.manual_seed(0)
    backbone, dim = build_backbone(name, bundle.image_shape[0], object_size=bundle.object_size, image_size=bundle.image_shape[1:])
    initialize(backbone, scheme or train.BACKBONE_INITS.get(name, "torch"))  # indeed-train's default when not named
    return INDeeD(backbone, len(bundle.class_names), dim)


def pair_stats(model: torch.nn.Module, images, targets, norm: str, generator) -> dict[str, float]:
    model.train()
    features = model.backbone(images).detach().requires_grad_(True)
    index_a, index_b, is_partial = mine_pairs(targets, "any", generator)
    fa, fb = features[index_a], features[index_b]
    p = fa * fb
    m = reference.identical_map(fa, fb, norm)
    ya, yb = targets[index_a] > 0.5, targets[index_b] > 0.5
    heads = reference.six_head_bce(features, model.classifier.weight, model.classifier.bias, targets, index_a, index_b, norm)
    grad_orig = torch.autograd.grad(heads[:, :2].sum(1).mean(), features, retain_graph=True)[0]
    grad_extra = torch.autograd.grad(heads[:, 2:].sum(1).mean(), features)[0]
    span = (p.amax(1) - p.amin(1)).detach()
    disparate = ((1 - m) * fa).detach()
    return {
        "range_median": span.median().item(), "range<1e-3": (span < 1e-3).float().mean().item(), "range<1e-6": (span < 1e-6).float().mean().item(),
        "mass": ((m * fa).sum(1) / fa.sum(1).clamp_min(1e-12)).detach().mean().item(),
        "cos(disp,f)": torch.nn.functional.cosine_similarity(disparate, fa.detach(), dim=1).mean().item(),
        "shared/|ya|": ((ya & yb).sum(1).float() / ya.sum(1).clamp_min(1)).mean().item(),
        "self-pairs": (~is_partial).float().mean().item(),
        "|grad| orig": grad_orig.norm().item(), "|grad| ident+disp": grad_extra.norm().item(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="indeed-train checkpoints, or init:<backbone>")
    parser.add_argument("--root", required=True, help="folder of the MNIST IDX files")
    parser.add_argument("--labels-per-image", type=int, default=3)
    parser.add_argument("--norm", nargs="+", default=["minmax", "l2"])
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    options = DataOptions(root=args.root, labels_per_image=args.labels_per_image, train_size=128 * args.batches, split_test_set=True)
    bundle = build_dataset("ml-mnist", options)
    loader = engine.make_loader(bundle.train, 128, train=True)
    loader.generator.manual_seed(0)
    batches = list(loader)
    rows = []
    for spec in args.checkpoints:
        model = load(spec, bundle)
        for norm in args.norm:
            generator = torch.Generator().manual_seed(0)
            stats = [pair_stats(model, images, targets, norm, generator) for images, targets in batches]
            rows.append((spec, norm, {k: statistics.fmean(s[k] for s in stats) for k in stats[0]}))
    keys = list(rows[0][2])
    print("| model | norm | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for spec, norm, values in rows:
        print(f"| {spec} | {norm} | " + " | ".join(f"{values[k]:.3g}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
