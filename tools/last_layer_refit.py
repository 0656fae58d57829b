#!/usr/bin/env python3
"""Re-fit only the last layer of a trained run on its own training set, the backbone frozen: does
that remove a contextual bias that the features do not hold (tools/feature_probe.py)?

    python tools/last_layer_refit.py CELL [CELL ...] [--epochs 3] [--weight 10]

Each CELL is an indeed-study cell folder (results.json and the run's checkpoint.pt). The run's
training canvases (rebuilt from its recorded data settings and seed) go once through the frozen
backbone; the classifier, from its trained weights, is trained again for --epochs with the run's
Adam learning rate and batch size, in one data order, under Singh et al.'s weighted loss
(indeed_ext.reweighting.ExclusiveWeightedBCE on the biased pairs by annotation co-occurrence, as
`indeed-train --method reweight` without --bias-model) with weight 1 (plain BCE, the baseline's
loss: the control, the same steps without reweighting) and with weight --weight. Prints the mAP and per-class AP (%) on the run's test canvases of the
trained model and of both re-fits. A diagnostic: docs/EXPERIMENTS.md ("The weighted loss on the
mixture") quotes it.
"""
from __future__ import annotations

import argparse
import copy
import os

import torch

from feature_probe import load_cell  # this folder's tool
from indeed_ext.metrics import biased_pairs_by_cooccurrence, mean_average_precision
from indeed_ext.reweighting import ExclusiveWeightedBCE


def features_and_targets(backbone: torch.nn.Module, dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen backbone's features of every item of dataset, and the items' targets."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    features, targets = [], []
    with torch.no_grad():
        for images, target in loader:
            features.append(backbone(images))
            targets.append(target)
    return torch.cat(features), torch.cat(targets).float()


def refit(classifier: torch.nn.Linear, criterion: ExclusiveWeightedBCE, features, targets, epochs: int, lr: float, batch_size: int,
          seed: int) -> torch.nn.Linear:
    """A copy of classifier trained again on (features, targets) with Adam under criterion."""
    refitted = copy.deepcopy(classifier).train()
    optimizer = torch.optim.Adam(refitted.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(targets), generator=order).split(batch_size):
            optimizer.zero_grad()
            criterion(features[rows], targets[rows], refitted).loss.backward()
            optimizer.step()
    return refitted.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", help="indeed-study cell folders")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--weight", type=float, default=10.0, help="the weighted loss's weight on exclusive images")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    for cell in args.cells:
        model, config, bundle = load_cell(cell)
        train_features, train_targets = features_and_targets(model.backbone, bundle.train_eval)
        test_features, test_targets = features_and_targets(model.backbone, bundle.test)
        pairs, _ = biased_pairs_by_cooccurrence(bundle.train.targets, k=config["biased_pairs"])
        criteria = {"BCE re-fit": ExclusiveWeightedBCE(pairs, 1.0), f"weighted re-fit (×{args.weight:g})": ExclusiveWeightedBCE(pairs, args.weight)}
        classifiers = {"trained": model.classifier} | {
            name: refit(model.classifier, criterion, train_features, train_targets, args.epochs, config["lr"], config["batch_size"], config["seed"])
            for name, criterion in criteria.items()}
        print(f"{os.path.basename(os.path.normpath(cell))} (pairs: {', '.join(f'{b}-{c}' for b, c in pairs.tolist())})")
        print("| last layer | mAP | " + " | ".join(bundle.class_names) + " |")
        print("|---|---|" + "---|" * len(bundle.class_names))
        for name, classifier in classifiers.items():
            with torch.no_grad():
                mean_ap, per_class = mean_average_precision(classifier(test_features), test_targets)
            print(f"| {name} | {mean_ap:.1f} | " + " | ".join(f"{ap:.1f}" for ap in per_class.tolist()) + " |", flush=True)


if __name__ == "__main__":
    main()
