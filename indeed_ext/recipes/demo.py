"""make demo: contextual bias on real digits and what INDeeD's co-occurrence pairs give back, offline, in minutes.

    python -m indeed_ext.recipes.demo --out runs/demo [--seeds 0 1 2] [--jobs 2] [--train-size 8000 --epochs 3]

MNIST's test digits (bundled) at half size on a 2x2 grid (ml-mnist-mini), two digits per training
image. Two indeed-study grids: the baseline on uniform label sets (pairs:0), and the baseline and
INDeeD with --pairs cooccur (the study run "cooccur", the package's recommended setting for grouped
labels) where digits come in partner pairs (0, 1), (2, 3), ... (pairs:0.9). Seeds pair every run
(same data, initial weights, order). Printed: the bias (the baseline's mAP on single digits at
rho = 0 minus at rho = 0.9) and what INDeeD recovers of it, each with its paired 95 % Student-t
interval over the seeds; each model's audit (indeed-bias): a lone digit's score for its partner and
the exclusive / co-occur AP. Written: OUT/demo.md, OUT/partner_scores.png (for single digits, the
probability each model gives to the digit's partner), the two study folders. Re-running reads the
finished cells back (delete OUT to train again).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

from . import engine, study, study_report
from .bias import audit
from .data import DataOptions, build_dataset
from .train import _number

DATASET = "ml-mnist-mini"
LABELS_PER_IMAGE = 2
UNBIASED, BIASED = "pairs:0", "pairs:0.9"
REFERENCE, RECOMMENDED = "baseline", "cooccur"  # study runs: the recommended one is paired with the baseline
# Sized so that a fresh clone's make demo (venv, build, 9 cells, 9 audits) fits 5 minutes on 2 cores: README,
# "make demo", says what was measured and what this size changes against the full study (docs/studies/cooccur-mnist).
TRAIN_SIZE, TEST_SIZE, EPOCHS, BATCH_SIZE = 4000, 1000, 2, 32
PAIRS_AUDITED = 10  # one per digit
# The three models of each seed: (spec, run) and how the report names them.
MODELS = {(UNBIASED, REFERENCE): "baseline, uniform label sets (ρ = 0)",
          (BIASED, REFERENCE): "baseline, digits in partner pairs (ρ = 0.9)",
          (BIASED, RECOMMENDED): 'INDeeD with "cooccur" pairs (ρ = 0.9)'}  # fmt: skip


def study_argv(args, spec: str, runs: list[str]) -> list[str]:
    return ["--dataset", DATASET, "--labels-per-image", str(LABELS_PER_IMAGE), "--cooccur", spec, "--runs", *runs,
            "--seeds", *map(str, args.seeds), "--train-size", str(args.train_size), "--test-size", str(args.test_size),
            "--epochs", str(args.epochs), "--train-args", f"--batch-size {BATCH_SIZE}", "--device", "cpu", "--jobs", str(args.jobs),
            "--out", os.path.join(args.out, "biased" if spec == BIASED else "unbiased")]  # fmt: skip


def cell_folder(out: str, spec: str, run: str, seed: int) -> str:
    return os.path.join(out, "biased" if spec == BIASED else "unbiased", "cells", f"{study.spec_tag(spec)}-n{LABELS_PER_IMAGE}-{run}-seed{seed}")


def read_cells(out: str) -> list[dict]:
    """The finished cells of both grids as indeed-study records (study_report's input)."""
    records = []
    for folder in ("unbiased", "biased"):
        with open(os.path.join(out, folder, "study.json")) as f:
            records += json.load(f)["cells"]
    return records


def audit_models(args) -> dict[tuple[str, str], list[dict]]:
    """indeed-bias's audit of every model, per (spec, run), in seed order: all on the data of rho = 0.9 (the pairs ranked by its
    training labels, its two-digit test canvases), the baseline at rho = 0 as the unbiased reference."""
    audits = {key: [] for key in MODELS}
    for spec, run in MODELS:
        for seed in args.seeds:
            options = DataOptions(labels_per_image=LABELS_PER_IMAGE, train_size=args.train_size, test_size=args.test_size, seed=seed, cooccur=BIASED)
            folder = os.path.join(cell_folder(args.out, spec, run, seed), run if run == REFERENCE else "indeed-minmax")
            model, _ = engine.load_model(os.path.join(folder, "checkpoint.pt"))
            audits[(spec, run)].append(audit(model, build_dataset(DATASET, options), options, k=PAIRS_AUDITED, device=torch.device("cpu"),
                                             rank_by="annotations"))  # fmt: skip
    return audits


def partner_scores(result: dict) -> list[float]:
    """A lone digit's mean score for its partner, per digit (the audit's context probability; NaN for a digit without
    single-digit test canvases, which only tiny test sets miss)."""
    return [math.nan if p is None else p for p in result["context_probability"].values()]


def _mean(values) -> float:
    """The mean of the known values (the audit writes None for an AP without images), NaN if none is known."""
    known = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(known) if known else math.nan


def save_partner_chart(audits: dict, path: str, seeds: list[int]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.4, 3.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    digits = list(audits[(BIASED, REFERENCE)][0]["context_probability"])
    width = 0.27
    for i, (key, colour) in enumerate(zip(MODELS, ("0.65", "C3", "C0"))):
        per_digit = list(zip(*(partner_scores(result) for result in audits[key])))  # per digit, its scores over the seeds
        mean = [_mean(scores) for scores in per_digit]
        spread = [[m - min(s for s in scores if not math.isnan(s)) if not math.isnan(m) else 0 for m, scores in zip(mean, per_digit)],
                  [max(s for s in scores if not math.isnan(s)) - m if not math.isnan(m) else 0 for m, scores in zip(mean, per_digit)]]
        x = [d + (i - 1) * width for d in range(len(digits))]
        mAP = _mean(result["single_object_mAP"] for result in audits[key])
        axes.bar(x, mean, width, yerr=spread, capsize=2, color=colour,
                 label=f"{MODELS[key]}: mAP {mAP:.1f}, partner score {_mean(mean):.2f}")  # fmt: skip
    axes.set_xticks(range(len(digits)), [f"{d}\n({int(d) ^ 1})" for d in digits], fontsize=8)  # pairs (0, 1), (2, 3), ...
    axes.set_xlabel("digit shown alone (its partner)", fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("score for the partner digit")
    axes.set_title(f"A digit shown alone: the probability each model gives to its usual partner "
                   f"(mean over seeds {', '.join(map(str, seeds))}; bars: min to max)", fontsize=9)  # fmt: skip
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=1)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=110, bbox_inches="tight")


def _interval(d: dict, digits: int = 1) -> str:
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


def verdict(name: str, d: dict) -> str:
    """Whether a paired difference is beyond seed noise at this size: its 95 % interval excludes 0."""
    if math.isnan(d["low"]) or math.isnan(d["high"]):
        return f"{name}: no interval"
    if d["low"] > 0 or d["high"] < 0:
        return f"{name} is beyond seed noise at this size (its interval excludes 0)"
    return f"{name} is NOT beyond seed noise at this size (its interval holds 0)"


def report(cells: list[dict], audits: dict, args) -> str:
    seeds = args.seeds
    runs = [study.parse_run(REFERENCE), study.parse_run(RECOMMENDED)]
    summary = study_report.summarize(cells, runs, DATASET, "minmax", [UNBIASED, BIASED])
    (bias,) = [b for b in summary["bias"] if b["cooccur"] == BIASED]
    (gain,) = [d for d in summary["differences"] if d["cooccur"] == BIASED and d["run"] == RECOMMENDED]
    maps = {(c["cooccur"], c["run"], c["seed"]): c["mAP"] for c in cells}
    lines = [
        f"make demo: contextual bias on real MNIST digits ({DATASET}: 14 px digits on a 2x2 grid, {LABELS_PER_IMAGE} per training "
        f"image, {args.train_size} training images, {args.epochs} epochs; seeds {', '.join(map(str, seeds))}). mAP on single digits:",
        "",
    ]
    for key, name in MODELS.items():
        values = [maps[(*key, s)] for s in seeds]
        partner = _mean(_mean(partner_scores(r)) for r in audits[key])
        exclusive, cooccur = (_mean(r[k] for r in audits[key]) for k in ("exclusive_mAP", "cooccur_mAP"))
        lines.append(f"  {name:<46} {statistics.fmean(values):5.1f}  (seeds: {', '.join(f'{v:.1f}' for v in values)}); "
                     f"partner score {partner:.2f}; exclusive / co-occur AP {exclusive:.1f} / {cooccur:.1f}")  # fmt: skip
    fraction = gain["mean"] / bias["loss"]["mean"] if bias["loss"]["mean"] > 0 else float("nan")
    lines += [
        "",
        f"  bias, the baseline's loss from co-occurrence:  {_interval(bias['loss'])} mAP points (paired by seed, 95 % interval)",
        f"  recovered by INDeeD with \"cooccur\" pairs:      {_interval(gain)} mAP points ({100 * fraction:.0f} % of the bias)",
        f"  partner score, INDeeD − baseline at ρ = 0.9:    {_interval(gain['context'], 3)}",
        "",
        f"  {verdict('the bias', bias['loss'])}; {verdict('the recovery', gain)}.",
        "",
        "Partner score: the mean probability a model gives to a digit's partner on images of the digit alone (the context "
        "score; lower is better). Exclusive / co-occur AP: indeed-bias's audit, a digit's AP on test canvases that show it "
        "without / with its partner (chance levels differ: compare across models).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indeed_ext.recipes.demo", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", default="runs/demo", help="output folder (re-running reads its finished cells back)")
    parser.add_argument("--seeds", nargs="+", type=_number(int, 0), default=[0, 1, 2], help="at least 2, for the intervals")
    parser.add_argument("--jobs", type=_number(int, 1), default=2, help="cells trained at once")
    parser.add_argument("--train-size", type=_number(int, 1), default=TRAIN_SIZE, help="training images per cell")
    parser.add_argument("--test-size", type=_number(int, 1), default=TEST_SIZE, help="single-digit test images (and as many two-digit ones for the audit)")
    parser.add_argument("--epochs", type=_number(int, 1), default=EPOCHS)
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error(f"--seeds: give at least 2 different seeds for the paired intervals, got {args.seeds}")
    start = time.monotonic()
    for spec, runs in ((BIASED, [REFERENCE, RECOMMENDED]), (UNBIASED, [REFERENCE])):
        status = study.main(study_argv(args, spec, runs))
        if status:
            return status
    audits = audit_models(args)
    text = report(read_cells(args.out), audits, args)
    chart = os.path.join(args.out, "partner_scores.png")
    save_partner_chart(audits, chart, args.seeds)
    with open(os.path.join(args.out, "demo.md"), "w") as f:
        f.write(text)
    print("\n" + text + f"\n{time.monotonic() - start:.0f} s for the cells to train (or be read back) and the audits; written: {os.path.join(args.out, 'demo.md')}, {chart}; the grids: {args.out}/biased/study.md, {args.out}/unbiased/study.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
