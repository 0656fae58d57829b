"""The report of an indeed-study grid: the paper's numbers, paired statistics, markdown and plots.

Each finished cell is one dict: n (labels per image), run (its name), seed, mAP (final),
epoch_mAP (after each epoch) and train_time_s. Runs are dicts {"name", "base", "flags"}
(see indeed_ext.recipes.study.parse_run); each run is compared with its reference run
(reference_run: the one named "baseline", or "asl" for INDeeD trained with ASL). Runs of one
seed start from the same weights and see the same data in the same order (indeed-train's
seeding), so run − reference is compared per seed (a paired difference) and its 95 % interval
is Student's t over seeds.
"""
from __future__ import annotations

import math
import os
import statistics

RUN_TITLES = {
    "baseline": "Baseline",
    "l2": "INDeeD (L2)",
    "minmax": "INDeeD (Min-max)",
    "identical-only": "Identical only",
    "disparate-only": "Disparate only",
    "asl": "Baseline (ASL)",
    "asl-minmax": "INDeeD (Min-max, ASL)",
}
# The run a run is paired with, by its base: INDeeD on ASL against the ASL baseline; every
# other run (the ASL baseline too) against "baseline".
REFERENCE_RUNS = {"asl-minmax": "asl"}

# mAP (%) of the paper: Table 1 (ML-MNIST, simple CNN, 30 epochs), Table 2 (ML-CIFAR-10,
# VGG-16, 300 epochs) and Table 4 (the ablations, per normalisation), by run and N.
PAPER = {
    "ml-mnist": {
        "baseline": {2: 94.04, 3: 92.47, 5: 86.40, 7: 78.84},
        "l2": {2: 97.66, 3: 97.72, 5: 95.14, 7: 97.73},
        "minmax": {2: 98.38, 3: 98.31, 5: 94.56, 7: 97.69},
        "identical-only/minmax": {2: 96.73, 3: 97.52, 5: 93.34, 7: 90.42},
        "identical-only/l2": {2: 97.19, 3: 95.55, 5: 90.15, 7: 90.03},
        "disparate-only/minmax": {2: 97.78, 3: 97.76, 5: 91.75, 7: 94.07},
        "disparate-only/l2": {2: 97.88, 3: 97.64, 5: 94.09, 7: 88.58},
    },
    "ml-cifar10": {
        "baseline": {2: 89.64, 3: 90.81, 5: 76.61, 7: 60.73},
        "l2": {2: 93.23, 3: 93.14, 5: 79.63, 7: 67.07},
        "minmax": {2: 93.67, 3: 93.61, 5: 82.55, 7: 71.22},
        "identical-only/minmax": {2: 92.51, 3: 94.12, 5: 83.51, 7: 57.17},
        "identical-only/l2": {2: 92.59, 3: 93.29, 5: 77.12, 7: 52.74},
        "disparate-only/minmax": {2: 93.13, 3: 92.60, 5: 84.92, 7: 73.93},
        "disparate-only/l2": {2: 92.05, 3: 91.42, 5: 67.90, 7: 63.69},
    },
}


def paper_map(dataset: str, run: dict, n: int, ablation_norm: str) -> float | None:
    """The paper's mAP for the run's base method at N, or None where it reports none."""
    table = PAPER.get(dataset, {})
    key = f"{run['base']}/{ablation_norm}" if run["base"].endswith("-only") else run["base"]
    return table.get(key, {}).get(n)


def reference_run(run: dict) -> str:
    """The name of the run that run is compared with, paired by seed."""
    return REFERENCE_RUNS.get(run["base"], "baseline")


def run_title(run: dict) -> str:
    if not run["flags"] and run["name"] == run["base"]:
        return RUN_TITLES[run["base"]]
    return f"{run['name']} ({RUN_TITLES[run['base']]} {' '.join(run['flags'])})".replace(" )", ")")


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with df degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean difference and its 95 % Student-t interval (NaN bounds for one value)."""
    k = len(differences)
    if k == 0:
        raise ValueError("no paired differences")
    mean = statistics.fmean(differences)
    if k == 1:
        return mean, math.nan, math.nan
    half = t_quantile_975(k - 1) * statistics.stdev(differences) / math.sqrt(k)
    return mean, mean - half, mean + half


def _by_key(cells: list[dict]) -> dict[tuple[int, str], dict[int, dict]]:
    grouped: dict[tuple[int, str], dict[int, dict]] = {}
    for cell in cells:
        grouped.setdefault((cell["n"], cell["run"]), {})[cell["seed"]] = cell
    return grouped


def summarize(cells: list[dict], runs: list[dict], dataset: str, ablation_norm: str) -> dict:
    """Per (N, run): mean/std over seeds and the paper's number; per (N, other run): the paired difference to its reference."""
    grouped = _by_key(cells)
    ns = sorted({cell["n"] for cell in cells})
    table, differences = [], []
    for n in ns:
        for run in runs:
            reference = reference_run(run)
            base = grouped.get((n, reference), {})
            seeds = grouped.get((n, run["name"]), {})
            values = [seeds[s]["mAP"] for s in sorted(seeds)]
            table.append({
                "n": n, "run": run["name"], "seeds": sorted(seeds), "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None, "paper": paper_map(dataset, run, n, ablation_norm),
            })
            paired = sorted(set(seeds) & set(base)) if run["name"] != reference else []
            if paired:
                mean, low, high = paired_interval([seeds[s]["mAP"] - base[s]["mAP"] for s in paired])
                differences.append({"n": n, "run": run["name"], "reference": reference, "seeds": paired, "mean": mean,
                                    "low": low, "high": high})
    return {"table": table, "differences": differences}


def _number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.1f}"


def markdown(summary: dict, runs: list[dict], settings: dict, cells: list[dict] = ()) -> str:
    """study.md: the Table 1 layout (ours and the paper's), the paired differences, then every cell's mAP."""
    per_seed = {(c["n"], c["run"], c["seed"]): c["mAP"] for c in cells}
    rows = {(r["n"], r["run"]): r for r in summary["table"]}
    titles = {run["name"]: run_title(run) for run in runs}
    ns = sorted({r["n"] for r in summary["table"]})
    header = ["N"] + [f"{titles[run['name']]} | paper" for run in runs]
    lines = [
        f"# indeed-study: {settings['dataset']}, {settings['epochs']} epochs",
        "",
        f"Settings: `{' '.join(settings['train_args'])}`",
        "",
        "mAP (%) after the last epoch, mean ± std over seeds (number of seeds); the paper's number beside it.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * (1 + 2 * len(runs)),
    ]
    for n in ns:
        cells = [str(n)]
        for run in runs:
            r = rows.get((n, run["name"]))
            ours = "–" if r is None or r["mean"] is None else f"{r['mean']:.1f} ± {_number(r['std'])} ({len(r['seeds'])})"
            cells += [ours, _number(None if r is None else r["paper"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    if summary["differences"]:
        lines += [
            "",
            "Run − its reference run, paired by seed (same initial weights and data order): mean and 95 % Student-t interval.",
            "",
            "| N | run | − run | seeds | mean difference | 95 % interval |",
            "|---|---|---|---|---|---|",
        ]
        for d in summary["differences"]:
            interval = "–" if math.isnan(d["low"]) else f"[{d['low']:+.1f}, {d['high']:+.1f}]"
            seeds = ", ".join(map(str, d["seeds"]))
            reference = titles.get(d["reference"], d["reference"])
            lines.append(f"| {d['n']} | {titles[d['run']]} | {reference} | {seeds} | {_signed(d['mean'])} | {interval} |")
    if per_seed:
        names = [run["name"] for run in runs]
        lines += ["", "mAP (%) per seed:", "", "| N | seed | " + " | ".join(titles[n] for n in names) + " |", "|---|---|" + "---|" * len(names)]
        for n, seed in sorted({(n, seed) for n, _, seed in per_seed}):
            lines.append(f"| {n} | {seed} | " + " | ".join(_number(per_seed.get((n, name, seed))) for name in names) + " |")
    lines += ["", "Plots: `map_vs_n.png` (mean ± std over seeds, the paper dashed), `map_per_epoch.png` (mean over seeds).", ""]
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_plots(out: str, cells: list[dict], summary: dict, runs: list[dict]) -> list[str]:
    """map_vs_n.png and map_per_epoch.png in out; returns their paths."""
    rows = summary["table"]
    ns = sorted({r["n"] for r in rows})
    names = [run["name"] for run in runs]
    titles = {run["name"]: run_title(run) for run in runs}
    colours = {name: f"C{i}" for i, name in enumerate(names)}

    figure = _figure(6.5, 4.5)
    axes = figure.add_subplot()
    for run in names:
        ours = [r for r in rows if r["run"] == run and r["mean"] is not None]
        axes.errorbar([r["n"] for r in ours], [r["mean"] for r in ours], yerr=[r["std"] or 0.0 for r in ours],
                      marker="o", capsize=3, color=colours[run], label=titles[run])  # fmt: skip
        paper = [r for r in rows if r["run"] == run and r["paper"] is not None]
        if paper:
            axes.plot([r["n"] for r in paper], [r["paper"] for r in paper], ls="--", marker="x", color=colours[run], alpha=0.6)
    axes.set_xticks(ns)
    axes.set_xlabel("labels per training image N")
    axes.set_ylabel("mAP (%)")
    axes.set_title("mAP vs N (solid: this study, mean ± std; dashed: the paper)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    vs_n = os.path.join(out, "map_vs_n.png")
    figure.savefig(vs_n, dpi=110, bbox_inches="tight")

    grouped = _by_key(cells)
    figure = _figure(3.6 * max(1, len(ns)), 3.4)
    for i, n in enumerate(ns):
        axes = figure.add_subplot(1, len(ns), i + 1)
        for run in names:
            seeds = grouped.get((n, run), {})
            if not seeds:
                continue
            curves = [seeds[s]["epoch_mAP"] for s in sorted(seeds)]
            epochs = min(map(len, curves))
            mean = [statistics.fmean(c[e] for c in curves) for e in range(epochs)]
            axes.plot(range(1, epochs + 1), mean, marker="o", color=colours[run], label=f"{titles[run]} ({len(curves)})")
        axes.set_title(f"N = {n}")
        axes.set_xlabel("epoch")
        if i == 0:
            axes.set_ylabel("mAP (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    per_epoch = os.path.join(out, "map_per_epoch.png")
    figure.savefig(per_epoch, dpi=110, bbox_inches="tight")
    return [vs_n, per_epoch]
