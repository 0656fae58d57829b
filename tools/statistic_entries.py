#!/usr/bin/env python3
"""Which contrasts each co-occurrence statistic weighs, on the studies' label sets.

    python tools/statistic_entries.py [SPEC ...]   (default: pairs:0, pairs:0.9, hub:0.9, the mixture at 0 and 0.9)

For each --cooccur SPEC and seed 0-2: the 8,000 training label sets of N = 4 of 10 classes that
tools/partner_concentration.py draws, then for each statistic ("excess", "lift"; z = 3):
- replayed: the statistic updated batch by batch over 3 epochs of batches of 128 (a shuffled order
  per epoch), as INDeeDLoss does in training; how many of the 189 steps had a weight > 0, and the
  mean number of weighted contrasts per step;
- seeded: the statistic seeded from all 8,000 sets; the weighted contrasts (i shared, j separates).
docs/EXPERIMENTS.md ('The statistic: "lift" instead of "excess"') quotes it.
"""
import sys

import numpy as np
import torch

from indeed_ext.pairs import COOCCURRENCE_STATISTICS, CooccurrenceStatistic
from partner_concentration import BATCH, CLASSES, SETS, label_sets, seeded_weights  # this folder's tool

EPOCHS, SEEDS = 3, (0, 1, 2)
MIXTURE = "groups=5+6,7+8&hub=0@1+2+3&tail=0.3"


def replay(labels: torch.Tensor, statistic: str, seed: int) -> tuple[int, int, float]:
    """(steps with a weight > 0, steps, mean weighted contrasts per step) over EPOCHS epochs."""
    tracked, generator, counts = CooccurrenceStatistic(CLASSES, statistic), torch.Generator().manual_seed(seed), []
    for _ in range(EPOCHS):
        order = torch.randperm(SETS, generator=generator)
        for start in range(0, SETS, BATCH):
            tracked.update(labels[order[start:start + BATCH]])
            counts.append(int((tracked.contrast_weights() > 0).sum()))
    return sum(c > 0 for c in counts), len(counts), float(np.mean(counts))


def seeded_contrasts(labels: torch.Tensor, statistic: str) -> list[tuple[int, int]]:
    return [tuple(pair) for pair in (seeded_weights(labels, statistic) > 0).nonzero().tolist()]


def main(specs) -> None:
    torch.set_num_threads(1)
    print("| spec | statistic | steps with a weight > 0 (seeds 0-2) | weighted contrasts per step | "
          "weighted contrasts, seeded from seed 0's sets (i shared, j separates) |")
    print("|---|---|---|---|---|")
    for spec in specs:
        sets = {seed: label_sets(spec, seed) for seed in SEEDS}
        for statistic in COOCCURRENCE_STATISTICS:
            replays = [replay(sets[seed], statistic, seed) for seed in SEEDS]
            steps = ", ".join(f"{hit} of {total}" for hit, total, _ in replays)
            contrasts = seeded_contrasts(sets[0], statistic)
            listed = " ".join(f"{i}→{j}" for i, j in contrasts) or "none"
            print(f"| `{spec}` | {statistic} | {steps} | {np.mean([r[2] for r in replays]):.1f} | {len(contrasts)}: {listed} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["pairs:0", "pairs:0.9", "hub:0.9", f"{MIXTURE}:0", f"{MIXTURE}:0.9"])
