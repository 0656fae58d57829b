#!/usr/bin/env python3
"""What each INDeeD head does to the network during a real training run: the numbers behind
docs/EXPERIMENTS.md's "No loss on many labels" hypotheses.

    python tools/head_gradients.py --every 10 --json OUT.json -- INDEED-TRAIN FLAGS

Runs ``indeed-train`` with the flags after ``--`` (one INDeeD run: --method indeed) and, every
``--every`` training steps, before the step, splits the batch's loss into the original heads
L_O = mean(orig_a + orig_b), the identical heads L_I and the disparate heads L_S (the same pairs as
the step's, the same base loss) and records:

- the losses, and the norms of their gradients w.r.t. the network's parameters (backbone and
  classifier) and their cosines: cos(g_O, g_I), cos(g_O, g_S), cos(g_O, g_I + g_S), where g_X is the
  gradient of the term as it enters the loss (lam * L_I, lam * L_S);
- the pairs' label counts: |ya|, |ya ∩ yb| (the identical target), |ya − yb| (the disparate target);
- the identical map: the share of the features it keeps, Σ m ⊙ fa / Σ fa, and the cosine of the
  disparate features (1 − m) ⊙ fa with fa;
- on the labels a and b share, the mean probability the classifier gives on fa (target 1) and on
  the disparate features (target 0 there).

Prints the means per epoch as a table, and writes every record to --json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from indeed_ext import ops, reference
from indeed_ext.losses import INDeeDLoss
from indeed_ext.pairs import mine_pairs
from indeed_ext.recipes import train

RECORDS: list[dict] = []  # one per recorded step, with its training step "call" (counted over the whole run)


def leaf_parameters(output: torch.Tensor) -> list[torch.Tensor]:
    """The parameters output depends on: the variables of the AccumulateGrad nodes of its graph."""
    found, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            found.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def cosine(x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
    dot = sum((a * b).sum() for a, b in zip(x, y))
    return (dot / (norm(x) * norm(y) + 1e-30)).item()


def norm(x: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((a * a).sum() for a in x))


class RecordingLoss(INDeeDLoss):
    """INDeeDLoss that records the split of every ``every``-th training call (see the module docstring)."""

    every = 10
    total_calls = 0  # training calls of the run (one INDeeD run per process)

    def forward(self, features, targets, classifier, generator=None):
        if self.training and self.lam > 0:
            if RecordingLoss.total_calls % self.every == 0:
                RECORDS.append({"call": RecordingLoss.total_calls, **self.split(features, targets, classifier, generator)})
            RecordingLoss.total_calls += 1
        return super().forward(features, targets, classifier, generator)

    def split(self, features, targets, classifier, generator) -> dict:
        replay = None
        if generator is not None:  # the step's own pairs: the same draw from a copy of its generator
            replay = torch.Generator(generator.device).set_state(generator.get_state())
        weights = None if self.cooccurrence is None else self.cooccurrence.weights()
        index_a, index_b, _ = mine_pairs(targets, self.strategy, replay, self.backend, weights, self.load_cap)
        heads = ops.six_head_loss(features, classifier.weight, classifier.bias, targets, index_a, index_b, self.norm,
                                  self.eps, *self._loss_settings, self.present_negatives, backend=self.backend)
        terms = {"O": heads[:, 0:2].sum(1).mean(), "I": self.lam * heads[:, 2:4].sum(1).mean(),
                 "S": self.lam * heads[:, 4:6].sum(1).mean()}
        params = leaf_parameters(heads)
        grads = {k: torch.autograd.grad(v, params, retain_graph=True) for k, v in terms.items()}
        extra = [gi + gs for gi, gs in zip(grads["I"], grads["S"])]
        with torch.no_grad():
            fa, fb = features[index_a].float(), features[index_b].float()
            m = reference.identical_map(fa, fb, self.norm, self.eps)
            ya, yb = targets[index_a] > 0.5, targets[index_b] > 0.5
            shared = ya & yb
            orig_p = torch.sigmoid(F.linear(fa, classifier.weight.float(), classifier.bias.float()))
            disp_p = torch.sigmoid(F.linear((1 - m) * fa, classifier.weight.float(), classifier.bias.float()))
            on_shared = shared.float().sum().clamp_min(1)
            return {
                **{f"L_{k}": v.item() for k, v in terms.items()},
                **{f"|g_{k}|": norm(g).item() for k, g in grads.items()},
                "cos(g_O,g_I)": cosine(grads["O"], grads["I"]), "cos(g_O,g_S)": cosine(grads["O"], grads["S"]),
                "cos(g_O,g_I+g_S)": cosine(grads["O"], extra),
                "|ya|": ya.sum(1).float().mean().item(), "|ya&yb|": shared.sum(1).float().mean().item(),
                "|ya-yb|": (ya & ~yb).sum(1).float().mean().item(),
                "mass": ((m * fa).sum(1) / fa.sum(1).clamp_min(1e-12)).mean().item(),
                "cos(disp,f)": F.cosine_similarity((1 - m) * fa, fa, dim=1).mean().item(),
                "p_orig(shared)": ((orig_p * shared).sum() / on_shared).item(),
                "p_disp(shared)": ((disp_p * shared).sum() / on_shared).item(),
            }


def main() -> int:
    if "--" not in sys.argv:
        sys.exit("usage: head_gradients.py [--every K] [--json OUT] -- INDEED-TRAIN FLAGS")
    cut = sys.argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=10, help="record every K-th training step")
    parser.add_argument("--json", help="write every record here")
    args = parser.parse_args(sys.argv[1:cut])
    train_argv = sys.argv[cut + 1 :]
    RecordingLoss.every = args.every
    train.INDeeDLoss = RecordingLoss  # indeed-train builds its loss from this name
    status = train.main(train_argv)
    epochs = train.parse_args(train.build_parser(), train_argv).epochs
    steps_per_epoch = max(1, RecordingLoss.total_calls // epochs)
    keys = [k for k in RECORDS[0] if k != "call"] if RECORDS else []
    print("| epoch | records | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
    for epoch in range(epochs):
        part = [r for r in RECORDS if r["call"] // steps_per_epoch == epoch]
        if part:
            print(f"| {epoch + 1} | {len(part)} | " + " | ".join(f"{statistics.fmean(r[k] for r in part):.3g}" for k in keys) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": train_argv, "every": args.every, "records": RECORDS}, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
