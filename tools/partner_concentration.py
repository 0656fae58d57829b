#!/usr/bin/env python3
"""How concentrated each pair strategy's partners are on co-occurring label sets.

    python tools/partner_concentration.py [SPEC ...] [--contrast K/MATE]
    (default: pairs:0.9 hub:0.9, the COCO-like mixture, pairs:0)

For each --cooccur SPEC: 8,000 training label sets of N = 4 of 10 classes (seed 0), the
co-occurrence statistic seeded from them (z = 3; "excess", the default before 2026-12-07, and
"lift", the default since), then 60 batches of 128 mined with "any", with "cooccur" without its
load cap (load_cap = 0, the draw before 2026-12-07) and with "cooccur" as it is (load_cap = 4). Prints, as means over the batches: how many samples the
most-used partner serves, the distinct partners of a batch, and the share of partners without
class 0 (the hub of hub:ρ) against that share in the batch; with --contrast K/MATE also the pairs of a
batch that share MATE and separate K (the pairs that teach K's classifier not to read MATE) and the
images of a batch with K and without MATE. docs/EXPERIMENTS.md ("A hub", "The weighted loss on the
mixture") quotes it.
"""
import argparse

import numpy as np
import torch

from indeed_ext.pairs import COOCCURRENCE_STATISTICS, CooccurrenceStatistic, mine_pairs
from indeed_ext.recipes.data.cooccur import Cooccurrence, CooccurSpec
from indeed_ext.reference import DEFAULT_LOAD_CAP

SETS, CLASSES, LABELS, BATCH, BATCHES = 8000, 10, 4, 128, 60
DRAWS = {"any": (None, {})} | {
    f"cooccur ({statistic}){label}": (statistic, settings) for statistic in reversed(COOCCURRENCE_STATISTICS)
    for label, settings in ((", no cap", {"load_cap": 0}), (f", cap {DEFAULT_LOAD_CAP}", {"load_cap": DEFAULT_LOAD_CAP}))}


def label_sets(spec: str, seed: int = 0) -> torch.Tensor:
    """SETS training label sets of LABELS of CLASSES classes drawn by --cooccur spec, as a bool (SETS, CLASSES)."""
    cooccurrence, rng = Cooccurrence(CooccurSpec.parse(spec), CLASSES), np.random.default_rng(seed)
    labels = torch.zeros(SETS, CLASSES, dtype=torch.bool)
    for i in range(SETS):
        labels[i, cooccurrence.sample(rng, LABELS)] = True
    return labels


def seeded_weights(labels: torch.Tensor, statistic: str) -> torch.Tensor:
    """The contrast weights of the statistic seeded from all of labels."""
    seeded = CooccurrenceStatistic(CLASSES, statistic)
    seeded.seed_from_labels(labels)
    return seeded.contrast_weights()


def main(specs, contrast: tuple[int, int] | None):
    torch.set_num_threads(1)
    k, mate = contrast or (None, None)
    extra = "" if contrast is None else f" pairs sharing {mate}, separating {k} | images with {k}, without {mate} |"
    print("| spec | pairs | weights > 0 | most-used partner serves | distinct partners | partners without class 0 "
          "| batch without class 0 |" + extra)
    print("|---|---|---|---|---|---|---|" + "---|" * (2 * (contrast is not None)))
    for text in specs:
        labels = label_sets(text)
        weights = {name: seeded_weights(labels, name) for name in COOCCURRENCE_STATISTICS}
        generator = torch.Generator().manual_seed(0)
        for name, (statistic, settings) in DRAWS.items():
            most, distinct, partners_hubless, batch_hubless, contrasting, exclusive = [], [], [], [], [], []
            for _ in range(BATCHES):
                batch = labels[torch.randperm(SETS, generator=generator)[:BATCH]]
                strategy = "any" if statistic is None else "cooccur"
                _, index_b, _ = mine_pairs(batch, strategy, generator, contrast_weights=weights.get(statistic), **settings)
                uses = torch.bincount(index_b, minlength=BATCH)
                most.append(uses.max().item())
                distinct.append((uses > 0).sum().item())
                partners_hubless.append((~batch[index_b, 0]).float().mean().item())
                batch_hubless.append((~batch[:, 0]).float().mean().item())
                if contrast is not None:
                    a, b = batch, batch[index_b]
                    contrasting.append((a[:, mate] & b[:, mate] & (a[:, k] ^ b[:, k])).sum().item())
                    exclusive.append((batch[:, k] & ~batch[:, mate]).sum().item())
            weighted = "" if statistic is None else int((weights[statistic] > 0).sum())
            counts = "" if contrast is None else f" {np.mean(contrasting):.1f} | {np.mean(exclusive):.1f} |"
            print(f"| `{text}` | {name} | {weighted} | {np.mean(most):.1f} "
                  f"| {np.mean(distinct):.0f} of {BATCH} | {np.mean(partners_hubless):.2f} | {np.mean(batch_hubless):.2f} |" + counts)


def contrast_pair(text: str) -> tuple[int, int]:
    """argparse type of --contrast K/MATE."""
    k, slash, mate = text.partition("/")
    if not (slash and k.isdigit() and mate.isdigit() and int(k) < CLASSES and int(mate) < CLASSES and k != mate):
        raise argparse.ArgumentTypeError(f"expected K/MATE, two different classes below {CLASSES}, got {text!r}")
    return int(k), int(mate)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", default=["pairs:0.9", "hub:0.9", "groups=5+6,7+8&hub=0@1+2+3&tail=0.3:0.9", "pairs:0"])
    parser.add_argument("--contrast", type=contrast_pair, help="K/MATE: count the pairs that share MATE and separate K")
    args = parser.parse_args()
    main(args.specs, args.contrast)
