"""Does INDeeD's first epoch tell how its last will compare with the baseline?

Reads every cell (results.json) under the given study folders, pairs each INDeeD run with the
baseline run of the same data, base loss, network, schedule and seed (the same initial weights and
data order), and counts how often the sign of INDeeD − baseline after the first epoch is the sign
after the last (held-out mAP; a difference within --tie points counts as either sign).

    python tools/early_sign.py docs/studies/*
"""
from __future__ import annotations

import argparse
import glob
import json
import os

# What makes two runs comparable: everything but the method's own settings.
SHARED = ("dataset", "split_test_set", "labels_per_image", "cooccur", "train_size", "test_size", "image_size",
          "loss", "gamma_neg", "gamma_pos", "clip", "gamma", "backbone", "init", "epochs", "batch_size", "lr",
          "weight_decay", "schedule", "seed")


def runs_of(study: str) -> list[dict]:
    runs = []
    for path in sorted(glob.glob(os.path.join(study, "cells", "*", "results.json"))):
        with open(path) as f:
            for run in json.load(f):
                if len(run.get("history", ())) >= 2:
                    runs.append({**run, "cell": os.path.basename(os.path.dirname(path))})
    return runs


def paired(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(INDeeD run, its baseline) pairs; studies copy each other's cells, so a run counts once: a copy has
    the same data settings and per-epoch history (a run whose code differed but whose settings did not,
    such as docs/studies/gradient-paths' diagnostic variants, has its own history and counts apart)."""
    key = lambda run: json.dumps([run["config"].get(k) for k in SHARED])  # noqa: E731
    baselines = {key(r): r for r in runs if r["method"] == "baseline"}
    out, seen = [], set()
    for run in runs:
        base = baselines.get(key(run))
        ident = (key(run), json.dumps(run["history"]))
        if run["method"] == "indeed" and base is not None and ident not in seen:
            seen.add(ident)
            out.append((run, base))
    return out


def agrees(first: float, last: float, tie: float) -> bool:
    return abs(first) <= tie or abs(last) <= tie or (first > 0) == (last > 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("studies", nargs="+", help="study folders (each with cells/*/results.json)")
    p.add_argument("--tie", type=float, default=0.0, help="differences within this many mAP points agree with either sign")
    args = p.parse_args(argv)
    runs = [{**run, "study": os.path.basename(study.rstrip("/"))} for study in args.studies for run in runs_of(study)]
    rows = []
    for run, base in paired(runs):
        first = run["history"][0]["mAP"] - base["history"][0]["mAP"]
        rows.append((run["study"], run["cell"], first, run["mAP"] - base["mAP"]))
    if not rows:
        raise SystemExit("no INDeeD run with a matching baseline in those folders")
    misses = [r for r in rows if not agrees(r[2], r[3], args.tie)]
    print(f"{len(rows)} INDeeD runs paired with their baselines; the first epoch's sign is the last's in "
          f"{len(rows) - len(misses)} ({100 * (len(rows) - len(misses)) / len(rows):.0f} %)")
    if misses:
        print("\n| study | cell | after epoch 1 | after the last |\n|---|---|---|---|")
        for study, cell, first, last in sorted(misses, key=lambda r: -abs(r[3])):
            print(f"| {study} | {cell} | {first:+.1f} | {last:+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
