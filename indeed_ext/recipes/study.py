"""indeed-study: the paper's Table 1 / Table 4 grid (N x run x seed) in one command, resumable.

    indeed-study --dataset ml-mnist --root R --split-test-set --labels-per-image 2 3 5 7 \\
      --runs baseline l2 minmax --seeds 0 1 2 --epochs 3 --out S

Every cell (N, run, seed) is an ordinary indeed-train run in S/cells/n<N>-<run>-seed<S>/
(its results.json, table.md, confidence map, checkpoint and log.txt). --cooccur SPEC [SPEC ...]
adds the co-occurrence structure of the training label sets as an axis (cells
S/cells/<spec>-n<N>-<run>-seed<S>/, e.g. pairs-0.9-n4-baseline-seed0), and the report gains the
context score, the loss the bias causes (against the same structure at rho = 0) and the part of
it each run recovers; --compare A:B adds paired differences between two runs. Finished cells
(results.json written, with the same settings) are read back, not re-run; a cell that was stopped mid-way
continues from its last epoch's checkpoint (indeed-train --resume). So a killed study,
re-run with the same command, continues where it stopped. Runs: baseline, l2, minmax
(INDeeD with that identical-map normalisation), the paper's Table 4 ablations
identical-only and disparate-only (normalised with --ablation-norm); for co-occurring
data cooccur (INDeeD min-max with partners mined by co-occurrence), cooccur-orig (the same
partners, original heads only: the reweighting control), orig-heads (the "any" pairs with the
original heads only: what INDeeD's pairs do without its blocks), and Singh et al.'s debiasing
methods reweight (their weighted loss) and featuresplit (their feature-split method); and asl, asl-minmax, asl-cooccur (the baseline and INDeeD
with the Asymmetric Loss as the base loss). Cells of one seed share the data, the initial
weights and the data order, so run − baseline is paired (asl-* − asl for the ASL runs).

After every finished cell the study prints one line (its mAP and time, the study's ETA)
and rewrites S/study.json (settings and every cell's per-epoch mAP and context score), S/study.md (the
Table 1 layout with mean ± std over seeds beside the paper's numbers, and the paired
run − baseline differences with 95 % Student-t intervals), S/map_vs_n.png and
S/map_per_epoch.png. --jobs K runs K cells at once in separate processes.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import re
import os
import shlex
import signal
import subprocess
import sys
import time

from . import engine, study_report, train
from .backbones import BACKBONES
from .data import DATASETS
from ..reference import NORMS

RUN_ARGS = {
    "baseline": ["--method", "baseline"],
    "l2": ["--method", "indeed", "--norm", "l2"],
    "minmax": ["--method", "indeed", "--norm", "minmax"],
    "identical-only": ["--method", "indeed", "--blocks", "identical"],
    "disparate-only": ["--method", "indeed", "--blocks", "disparate"],
    "cooccur": ["--method", "indeed", "--norm", "minmax", "--pairs", "cooccur"],
    "cooccur-orig": ["--method", "indeed", "--pairs", "cooccur", "--blocks", "none"],
    "orig-heads": ["--method", "indeed", "--blocks", "none"],  # "any" pairs, original heads only
    "reweight": ["--method", "reweight"],
    "featuresplit": ["--method", "featuresplit"],
    "asl": ["--method", "baseline", "--loss", "asl"],  # issue 19: the baseline and INDeeD trained with ASL
    "asl-minmax": ["--method", "indeed", "--norm", "minmax", "--loss", "asl"],
    "asl-cooccur": ["--method", "indeed", "--norm", "minmax", "--pairs", "cooccur", "--loss", "asl"],
}
DEFAULT_RUNS = ("baseline", "l2", "minmax")  # the paper's Table 1
RUN_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")
POLL_S = 0.5
LOCK_FILE = ".study.lock"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="indeed-study", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    grid = p.add_argument_group("grid")
    grid.add_argument("--labels-per-image", metavar="N", nargs="+", type=train._number(int, 1), default=[2, 3, 5, 7], help="values of N")
    grid.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="RUN",
                      help=f"models per (N, seed): {', '.join(RUN_ARGS)}, or a variant NAME=RUN:FLAGS, e.g. 'minmax-lam0.5=minmax:--lam 0.5'")
    grid.add_argument("--seeds", nargs="+", type=train._number(int, 0), default=[0, 1, 2], help="seeds per (N, run)")
    grid.add_argument("--cooccur", nargs="+", metavar="SPEC", type=train._cooccur_spec,
                      help="co-occurrence structures of the training label sets (indeed-train --cooccur), one axis of the grid; "
                           "give the same structure at rho = 0 to measure the bias (without it: uniform sets only)")
    grid.add_argument("--ablation-norm", choices=NORMS, default="minmax", help="normalisation of identical-only and disparate-only")
    cell = p.add_argument_group("every cell (indeed-train flags)")
    cell.add_argument("--dataset", default="ml-digits", choices=sorted(DATASETS))
    cell.add_argument("--root", metavar="PATH", help="folder of the source files (see indeed-train --help)")
    cell.add_argument("--split-test-set", action="store_true", help="train and test objects from the test files only")
    cell.add_argument("--train-size", type=train._number(int, 1), default=8000)
    cell.add_argument("--test-size", type=train._number(int, 1), default=2000)
    cell.add_argument("--epochs", type=train._number(int, 1), default=3)
    cell.add_argument("--backbone", help=f"one of {', '.join(BACKBONES)} (default: indeed-train's)")
    cell.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    cell.add_argument("--train-args", metavar="ARGS", default="", help='any other indeed-train flags, one string (e.g. "--lam 0.5 --schedule none")')
    study = p.add_argument_group("study")
    study.add_argument("--out", metavar="PATH", required=True, help="study folder (re-run the same command to resume)")
    study.add_argument("--report-only", action="store_true", help="write the report of the finished cells, train nothing")
    study.add_argument("--jobs", type=train._number(int, 1), default=1, help="cells trained at once, each in its own process")
    study.add_argument("--compare", nargs="+", metavar="A:B", default=[],
                       help="paired differences A − B between two runs of the grid besides run − baseline, e.g. cooccur:minmax")
    return p


def parse_run(text: str) -> dict:
    """A run of the grid: {"name", "base" (a RUN_ARGS key), "flags" (extra indeed-train flags)}."""
    name, _, spec = text.partition("=")
    base, _, flags = (spec or name).partition(":")
    if base not in RUN_ARGS:
        raise ValueError(f"unknown run {base!r}; expected one of {', '.join(RUN_ARGS)} or NAME=RUN:FLAGS")
    if not RUN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r}: use lower-case letters, digits, '.' and '-'")
    return {"name": name, "base": base, "flags": shlex.split(flags)}


def train_args(args) -> list[str]:
    """The indeed-train flags shared by every cell."""
    shared = ["--dataset", args.dataset, "--train-size", str(args.train_size), "--test-size", str(args.test_size),
              "--epochs", str(args.epochs), "--device", args.device]  # fmt: skip
    if args.backbone:
        shared += ["--backbone", args.backbone]
    if args.root:
        shared += ["--root", args.root]
    if args.split_test_set:
        shared.append("--split-test-set")
    return shared + shlex.split(args.train_args)


def spec_tag(spec: str) -> str:
    """A co-occurrence SPEC as part of a folder name: pairs:0.9 -> pairs-0.9, groups=0+1,2+3:0.5 -> groups-0+1_2+3-0.5."""
    return spec.replace("=", "-").replace(":", "-").replace(",", "_").replace("&", "_").replace("@", "-at-")


def parse_compare(text: str, runs: list[dict]) -> tuple[str, str]:
    """An --compare item A:B as (A, B), two different runs of the grid."""
    a, colon, b = text.partition(":")
    names = [run["name"] for run in runs]
    if not colon or a == b or a not in names or b not in names:
        raise ValueError(f"--compare {text!r}: expected A:B with two different runs of --runs ({', '.join(names)})")
    return a, b


def planned_cells(args) -> list[dict]:
    """Every (seed, co-occurrence spec, N, run) cell with its folder and indeed-train arguments; runs of one
    (spec, N, seed) side by side. Without --cooccur the spec is None and the folders are n<N>-<run>-seed<S>."""
    shared = train_args(args)
    cells = []
    for seed in args.seeds:
        for spec in args.cooccur or [None]:
            for n in args.labels_per_image:
                for run in args.runs:
                    argv = shared + ["--labels-per-image", str(n), "--seed", str(seed)] + RUN_ARGS[run["base"]]
                    if run["base"].endswith("-only"):
                        argv += ["--norm", args.ablation_norm]
                    if spec is not None:
                        argv += ["--cooccur", spec]
                    name = ("" if spec is None else f"{spec_tag(spec)}-") + f"n{n}-{run['name']}-seed{seed}"
                    folder = os.path.join(args.out, "cells", name)
                    cells.append({"name": name, "cooccur": spec, "n": n, "run": run["name"], "seed": seed, "folder": folder,
                                  "argv": argv + run["flags"]})  # fmt: skip
    return cells


def read_cell(cell: dict) -> dict | None:
    """The finished cell's record (final and per-epoch mAP), or None when it has not finished.

    A cell trained with other settings (its results.json's config, defaults included; for a
    baseline cell, the INDeeD-only ones aside) is an error: its results would be mixed in. A stopped cell's checkpoint is checked the same
    way by indeed-train --resume.
    """
    results_path = os.path.join(cell["folder"], "results.json")
    if not os.path.exists(results_path):
        return None
    with open(results_path) as f:
        (result,) = json.load(f)
    expected = vars(train.parse_args(train.build_parser(), cell["argv"] + ["--out", cell["folder"]]))
    ignored = train.RESUME_MAY_CHANGE + train.unused_settings(expected["method"], expected["strategy"])
    compared = {k: v for k, v in expected.items() if k not in ignored}
    changes = engine.setting_changes(result["config"], compared, train.UNRECORDED_SETTINGS)
    if changes:
        raise ValueError(f"{cell['folder']} was trained with other settings ({changes}); re-run with those or choose another --out")
    return {
        "cooccur": cell["cooccur"], "n": cell["n"], "run": cell["run"], "seed": cell["seed"], "mAP": result["mAP"],
        "context_score": result.get("context_score"),  # with --cooccur
        "epoch_mAP": [h["mAP"] for h in result["history"]], "train_time_s": result["train_time_s"],
        "per_class_ap": result["per_class_ap"],
    }


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the study process dies (even by SIGKILL), so no cell trains on unwatched."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_cell(cell: dict, threads: int | None) -> subprocess.Popen:
    os.makedirs(cell["folder"], exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # log.txt shows each epoch as it ends
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    command = [sys.executable, "-m", "indeed_ext.recipes.train", *cell["argv"], "--out", cell["folder"], "--resume", "--quiet"]
    log = open(os.path.join(cell["folder"], "log.txt"), "a")
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
    finally:
        log.close()  # the child holds its own descriptor


def _log_tail(cell: dict, lines: int = 8) -> str:
    with open(os.path.join(cell["folder"], "log.txt")) as f:
        return "".join(f.readlines()[-lines:])


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def write_report(args, cells: list[dict], finished: dict[str, dict]) -> None:
    records = [finished[c["name"]] for c in cells if c["name"] in finished]
    settings = {"dataset": args.dataset, "epochs": args.epochs, "labels_per_image": args.labels_per_image, "runs": args.runs,
                "seeds": args.seeds, "ablation_norm": args.ablation_norm, "train_args": train_args(args),
                "cooccur": args.cooccur, "compare": args.compare}  # fmt: skip
    summary = study_report.summarize(records, args.runs, args.dataset, args.ablation_norm, args.cooccur, args.compare)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump({"settings": settings, "cells": records, "summary": summary, "planned": len(cells)}, f, indent=1)
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(study_report.markdown(summary, args.runs, settings, records))
    if records:
        study_report.save_plots(args.out, records, summary, args.runs, args.cooccur)


def lock_study(out: str):
    """An exclusive lock on the study folder, held while the study runs: two studies on one folder would train the same cells."""
    lock = open(os.path.join(out, LOCK_FILE), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ValueError(f"another indeed-study is running on {out}") from None
    return lock


def run_study(args, log=print) -> int:
    """Trains every unfinished cell (args.jobs at a time) and keeps the report current; 1 if a cell failed."""
    with lock_study(args.out):
        return _run_cells(args, log)


def _run_cells(args, log) -> int:
    cells = planned_cells(args)
    finished = {c["name"]: r for c in cells if (r := read_cell(c)) is not None}
    todo = [] if args.report_only else [c for c in cells if c["name"] not in finished]
    log(f"indeed-study: {len(cells)} cells, {len(finished)} finished (read back), {len(todo)} to train, {args.jobs} at a time")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    running: dict[str, tuple[dict, subprocess.Popen, float]] = {}
    failed, done_now, began = [], 0, time.perf_counter()
    try:
        while todo or running:
            while todo and len(running) < args.jobs:
                cell = todo.pop(0)
                running[cell["name"]] = (cell, start_cell(cell, threads), time.perf_counter())
            time.sleep(POLL_S)
            for name, (cell, process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                record = read_cell(cell) if process.returncode == 0 else None
                if record is None:
                    failed.append(name)
                    log(f"[{name}] failed (exit {process.returncode}); the end of {cell['folder']}/log.txt:\n{_log_tail(cell)}")
                    continue
                finished[name], done_now = record, done_now + 1
                eta = (time.perf_counter() - began) / done_now * (len(todo) + len(running))  # wall time per cell, jobs included
                context = "" if record["context_score"] is None else f", context score {record['context_score']:.3f}"
                log(f"[{len(finished)}/{len(cells)}] {name}: mAP {record['mAP']:.2f}{context} in {_duration(time.perf_counter() - started)}; "
                    f"ETA {_duration(eta)}")  # fmt: skip
                write_report(args, cells, finished)
    finally:
        for _, process, _ in running.values():
            process.terminate()
    write_report(args, cells, finished)
    log(f"study: {len(finished)}/{len(cells)} cells finished; {os.path.join(args.out, 'study.md')}")
    if failed:
        log(f"failed cells (re-run the command to retry them): {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.runs = [parse_run(text) for text in args.runs]
        if args.root is not None and not os.path.isdir(args.root):
            raise FileNotFoundError(f"--root {args.root!r} is not a folder")
        names = [run["name"] for run in args.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"--runs names a run twice: {names}")
        if args.cooccur and len(set(args.cooccur)) != len(args.cooccur):
            raise ValueError(f"--cooccur names a structure twice: {args.cooccur}")
        for text in args.compare:
            parse_compare(text, args.runs)
        for flag in ("--labels-per-image", "--seed", "--method", "--norm", "--blocks", "--cooccur", "--out", "--resume"):
            if flag in shlex.split(args.train_args) + [f for run in args.runs for f in run["flags"]]:
                raise ValueError(f"--train-args and run variants may not set {flag}: the study sets it per cell")
        for cell in planned_cells(args):  # indeed-train's own parser rejects a bad flag before anything trains
            train.build_parser().parse_args(cell["argv"])
        os.makedirs(args.out, exist_ok=True)
        return run_study(args)
    except (ValueError, OSError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
