#!/usr/bin/env python3
"""Is a class's contextual bias in the features or in the classifier?

    python tools/feature_probe.py --label 8 --against 7 CELL [CELL ...]

Each CELL is an indeed-study cell folder (its results.json and the run's checkpoint.pt, which the
study keeps beside them and git does not). On the run's single-object test canvases (rebuilt from
its recorded data settings and seed) it prints, for --label k: the AP of the trained classifier's
score for k, and the AP of a linear probe (logistic regression on the frozen backbone features,
fitted on one half of the test images and scored on the other, both ways); and the AUC of each
between images of k and of --against (k's context). A probe far above the classifier means the
features tell k from its context and the last layer does not use it. docs/EXPERIMENTS.md ("The
weighted loss on the mixture") quotes it.
"""
from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from indeed_ext.recipes.data.registry import DataOptions, build_dataset
from indeed_ext.recipes.engine import load_model

DATA_SETTINGS = ("root", "labels_per_image", "train_size", "test_size", "seed", "split_test_set", "cooccur")


def load_cell(cell: str):
    """(the exported model, its results.json config, its data bundle) of an indeed-study cell folder."""
    checkpoints = glob.glob(os.path.join(cell, "*", "checkpoint.pt"))
    if len(checkpoints) != 1:
        raise FileNotFoundError(f"{cell}: expected one */checkpoint.pt, found {len(checkpoints)}")
    with open(os.path.join(cell, "results.json")) as file:
        config = json.load(file)[0]["config"]
    bundle = build_dataset(config["dataset"], DataOptions(**{key: config[key] for key in DATA_SETTINGS}))
    return load_model(checkpoints[0])[0], config, bundle


def test_set(bundle) -> tuple[torch.Tensor, np.ndarray]:
    """The run's single-object test images and their classes."""
    images, targets = zip(*(bundle.test[i] for i in range(len(bundle.test))))
    return torch.stack(images), torch.stack(targets).argmax(1).numpy()


def cross_fitted_probe(features: np.ndarray, positive: np.ndarray, seed: int = 0) -> np.ndarray:
    """Logistic-regression scores of each image from the probe fitted on the other half."""
    order = np.random.default_rng(seed).permutation(len(positive))
    halves, scores = (order[::2], order[1::2]), np.zeros(len(positive))
    for fit, score in (halves, halves[::-1]):
        probe = LogisticRegression(max_iter=2000).fit(features[fit], positive[fit])
        scores[score] = probe.decision_function(features[score])
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", help="indeed-study cell folders")
    parser.add_argument("--label", type=int, required=True, help="the biased class")
    parser.add_argument("--against", type=int, required=True, help="its context class (for the AUC)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"| cell | classifier AP({args.label}) | probe AP({args.label}) | classifier AUC {args.label} vs {args.against} "
          f"| probe AUC {args.label} vs {args.against} |")
    print("|---|---|---|---|---|")
    for cell in args.cells:
        model, _, bundle = load_cell(cell)
        images, classes = test_set(bundle)
        with torch.no_grad():
            features = model.backbone(images)
            scores = model.classifier(features)[:, args.label].numpy()
        positive = classes == args.label
        probe = cross_fitted_probe(features.numpy(), positive)
        pair = positive | (classes == args.against)
        print(f"| {os.path.basename(os.path.normpath(cell))} | {100 * average_precision_score(positive, scores):.1f} "
              f"| {100 * average_precision_score(positive, probe):.1f} | {roc_auc_score(positive[pair], scores[pair]):.3f} "
              f"| {roc_auc_score(positive[pair], probe[pair]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
