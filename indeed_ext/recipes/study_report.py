"""The report of an indeed-study grid: the paper's numbers, paired statistics, markdown and plots.

Each finished cell is one dict: cooccur (the co-occurrence SPEC of its training data, None for
uniform label sets), n (labels per image), run (its name), seed, mAP (final), context_score
(None without a SPEC), epoch_mAP (after each epoch) and train_time_s. Runs are dicts {"name",
"base", "flags"} (see indeed_ext.recipes.study.parse_run); each run is compared with its reference
run (reference_run: the one named "baseline", or "asl" for INDeeD trained with ASL). Runs of one
seed start from the same weights and see the same data in the same order (indeed-train's
seeding), so run − reference is compared per seed (a paired difference) and its 95 % interval is
Student's t over seeds; so are the --compare pairs of runs and the bias the data causes (the
baseline at rho = 0, minus at the SPEC).
"""
from __future__ import annotations

import math
import os
import statistics

from .data.cooccur import CooccurSpec

RUN_TITLES = {
    "baseline": "Baseline",
    "l2": "INDeeD (L2)",
    "minmax": "INDeeD (Min-max)",
    "identical-only": "Identical only",
    "disparate-only": "Disparate only",
    "cooccur": "INDeeD (co-occurrence pairs)",
    "cooccur-orig": "Co-occurrence pairs, original heads only",
    "orig-heads": "INDeeD's pairs, original heads only",
    "reweight": "Weighted loss (Singh et al.)",
    "featuresplit": "Feature-split (Singh et al.)",
    "asl": "Baseline (ASL)",
    "asl-minmax": "INDeeD (Min-max, ASL)",
    "asl-cooccur": "INDeeD (co-occurrence pairs, ASL)",
}

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
    """The name of the run that run is compared with, paired by seed: a run trained with ASL (an asl-*
    run, or a variant with --loss asl) with the ASL baseline "asl"; every other run, "asl" too, with "baseline"."""
    flags = run["flags"]
    with_asl = run["base"].startswith("asl-") or any(
        flag == "--loss" and value == "asl" for flag, value in zip(flags, flags[1:])) or "--loss=asl" in flags
    return "asl" if with_asl and run["name"] != "asl" else "baseline"


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


def _by_key(cells: list[dict]) -> dict[tuple[str | None, int, str], dict[int, dict]]:
    grouped: dict[tuple[str | None, int, str], dict[int, dict]] = {}
    for cell in cells:
        grouped.setdefault((cell.get("cooccur"), cell["n"], cell["run"]), {})[cell["seed"]] = cell
    return grouped


def _paired(a: dict[int, dict], b: dict[int, dict]) -> dict | None:
    """The paired difference a − b over their common seeds: mAP and, where every cell has one, the context score."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    mean, low, high = paired_interval([a[s]["mAP"] - b[s]["mAP"] for s in seeds])
    result = {"seeds": seeds, "mean": mean, "low": low, "high": high, "context": None}
    if all(cells[s].get("context_score") is not None for cells in (a, b) for s in seeds):
        mean, low, high = paired_interval([a[s]["context_score"] - b[s]["context_score"] for s in seeds])
        result["context"] = {"mean": mean, "low": low, "high": high}
    return result


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(values) if values else None), (statistics.stdev(values) if len(values) > 1 else None)


def unbiased_reference(spec: str | None, specs: list[str | None]) -> str | None:
    """The grid's SPEC at rho = 0 for a SPEC with rho > 0: the same structure's, else another structure's (rho = 0
    draws the same uniform label sets whatever the structure, so its cells trained on the same data); None
    when the grid has no rho = 0 spec."""
    if spec is None or CooccurSpec.parse(spec).rho == 0:
        return None
    reference = str(CooccurSpec.parse(spec).with_rho(0.0))
    if reference in specs:
        return reference
    return next((other for other in specs if other is not None and CooccurSpec.parse(other).rho == 0), None)


def summarize(cells: list[dict], runs: list[dict], dataset: str, ablation_norm: str, specs=None, compare=()) -> dict:
    """The statistics of a grid, per (co-occurrence spec, N):

    table: per run, mean/std over seeds of the mAP and of the context score, and the paper's mAP
        (uniform label sets only: no spec, or rho = 0);
    differences: per run, the paired difference to its reference run (reference_run; mAP and context score);
    comparisons: per --compare "A:B", the paired difference A − B;
    bias: per spec with rho > 0 whose rho = 0 twin is in the grid, the baseline's loss (twin − spec, paired)
        and per run the part of it recovered: its mean paired gain over the baseline / the mean loss
        (over the seeds of all three; None where the data cost nothing).
    """
    specs = list(specs) if specs else [None]
    grouped = _by_key(cells)
    ns = sorted({cell["n"] for cell in cells})
    table, differences, comparisons, bias = [], [], [], []
    for spec in specs:
        uniform = spec is None or CooccurSpec.parse(spec).rho == 0
        for n in ns:
            base = grouped.get((spec, n, "baseline"), {})
            for run in runs:
                seeds = grouped.get((spec, n, run["name"]), {})
                mean, std = _mean_std([seeds[s]["mAP"] for s in sorted(seeds)])
                contexts = [seeds[s].get("context_score") for s in sorted(seeds)]
                context_mean, context_std = _mean_std(contexts) if contexts and None not in contexts else (None, None)
                table.append({
                    "cooccur": spec, "n": n, "run": run["name"], "seeds": sorted(seeds), "mean": mean, "std": std,
                    "paper": paper_map(dataset, run, n, ablation_norm) if uniform else None,
                    "context_mean": context_mean, "context_std": context_std,
                })
                reference = reference_run(run)
                paired = _paired(seeds, grouped.get((spec, n, reference), {})) if run["name"] != reference else None
                if paired:
                    differences.append({"cooccur": spec, "n": n, "run": run["name"], "reference": reference, **paired})
            for text in compare:
                a, _, b = text.partition(":")
                paired = _paired(grouped.get((spec, n, a), {}), grouped.get((spec, n, b), {}))
                if paired:
                    comparisons.append({"cooccur": spec, "n": n, "a": a, "b": b, **paired})
            reference = unbiased_reference(spec, specs)
            reference_base = grouped.get((reference, n, "baseline"), {})
            lost = _paired(reference_base, base) if reference else None
            if lost:
                recovered = {}
                for run in runs:
                    seeds = grouped.get((spec, n, run["name"]), {})
                    common = sorted(set(seeds) & set(lost["seeds"]))
                    if run["name"] == "baseline" or reference_run(run) != "baseline" or not common:
                        continue
                    gain = statistics.fmean(seeds[s]["mAP"] - base[s]["mAP"] for s in common)
                    loss = statistics.fmean(reference_base[s]["mAP"] - base[s]["mAP"] for s in common)
                    recovered[run["name"]] = {"seeds": common, "gain": gain, "loss": loss, "fraction": gain / loss if loss > 0 else None}
                bias.append({
                    "cooccur": spec, "n": n, "reference": reference,
                    "baseline_reference": statistics.fmean(reference_base[s]["mAP"] for s in lost["seeds"]),
                    "baseline": statistics.fmean(base[s]["mAP"] for s in lost["seeds"]),
                    "loss": {k: lost[k] for k in ("seeds", "mean", "low", "high")}, "recovered": recovered,
                })
    return {"table": table, "differences": differences, "comparisons": comparisons, "bias": bias}


def _number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:+.{digits}f}"


def _interval(low: float, high: float, digits: int = 1) -> str:
    return "–" if math.isnan(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _difference_cells(d: dict, with_context: bool) -> list[str]:
    """mean and interval of a paired mAP difference, and of the context score's when asked."""
    cells = [_signed(d["mean"]), _interval(d["low"], d["high"])]
    if with_context:
        context = d["context"]
        cells += ["–", "–"] if context is None else [_signed(context["mean"], 3), _interval(context["low"], context["high"], 3)]
    return cells


def markdown(summary: dict, runs: list[dict], settings: dict, cells: list[dict] = ()) -> str:
    """study.md: the Table 1 layout (ours and the paper's; with co-occurrence specs, the context score too), the
    paired differences to the baseline and between the --compare runs, the bias and its recovery, every cell's mAP."""
    specs = settings.get("cooccur") or [None]
    with_specs = specs != [None]
    per_seed = {(c.get("cooccur"), c["n"], c["run"], c["seed"]): c["mAP"] for c in cells}
    rows = {(r.get("cooccur"), r["n"], r["run"]): r for r in summary["table"]}
    titles = {run["name"]: run_title(run) for run in runs}
    ns = sorted({r["n"] for r in summary["table"]})
    keys = [(spec, n) for spec in specs for n in ns]

    def key_cells(spec, n) -> list[str]:  # the first columns of a row: (co-occurrence,) N
        return ([f"`{spec}`"] if with_specs else []) + [str(n)]

    key_header = (["co-occurrence"] if with_specs else []) + ["N"]
    lines = [f"# indeed-study: {settings['dataset']}, {settings['epochs']} epochs", "", f"Settings: `{' '.join(settings['train_args'])}`", ""]
    if with_specs:
        lines += [
            "mAP (%) on single-object test canvases after the last epoch, mean ± std over seeds (number of seeds); "
            "co-occurrence: the structure of the training label sets (indeed-train --cooccur). "
            "The paper's numbers (uniform label sets) are in study.json for the ρ = 0 rows.",
            "",
            "| " + " | ".join(key_header + [titles[run["name"]] for run in runs]) + " |",
            "|" + "---|" * (len(key_header) + len(runs)),
        ]
    else:
        lines += [
            "mAP (%) after the last epoch, mean ± std over seeds (number of seeds); the paper's number beside it.",
            "",
            "| " + " | ".join(key_header + [f"{titles[run['name']]} | paper" for run in runs]) + " |",
            "|" + "---|" * (len(key_header) + 2 * len(runs)),
        ]
    for spec, n in keys:
        row = key_cells(spec, n)
        for run in runs:
            r = rows.get((spec, n, run["name"]))
            row.append("–" if r is None or r["mean"] is None else f"{r['mean']:.1f} ± {_number(r['std'])} ({len(r['seeds'])})")
            if not with_specs:
                row.append(_number(None if r is None else r["paper"], 2))
        lines.append("| " + " | ".join(row) + " |")
    if with_specs:
        lines += [
            "",
            "Context score: the mean probability given to the shown object's co-occurring classes (lower is better), "
            "mean ± std over seeds.",
            "",
            "| " + " | ".join(key_header + [titles[run["name"]] for run in runs]) + " |",
            "|" + "---|" * (len(key_header) + len(runs)),
        ]
        for spec, n in keys:
            row = key_cells(spec, n)
            for run in runs:
                r = rows.get((spec, n, run["name"]))
                row.append("–" if r is None or r["context_mean"] is None else f"{r['context_mean']:.3f} ± {_number(r['context_std'], 3)}")
            lines.append("| " + " | ".join(row) + " |")
    context_header = ["context-score difference", "95 % interval"] if with_specs else []
    if summary["differences"]:
        lines += [
            "",
            "Run − its reference run, paired by seed (same initial weights and data order): mean and 95 % Student-t interval.",
            "",
            "| " + " | ".join(key_header + ["run", "− run", "seeds", "mean difference", "95 % interval"] + context_header) + " |",
            "|" + "---|" * (len(key_header) + 5 + len(context_header)),
        ]
        for d in summary["differences"]:
            reference = titles.get(d["reference"], d["reference"])
            row = key_cells(d.get("cooccur"), d["n"]) + [titles[d["run"]], reference, ", ".join(map(str, d["seeds"]))]
            lines.append("| " + " | ".join(row + _difference_cells(d, with_specs)) + " |")
    if summary.get("comparisons"):
        lines += [
            "",
            "Paired differences between runs (--compare), as above.",
            "",
            "| " + " | ".join(key_header + ["A − B", "seeds", "mean difference", "95 % interval"] + context_header) + " |",
            "|" + "---|" * (len(key_header) + 4 + len(context_header)),
        ]
        for d in summary["comparisons"]:
            row = key_cells(d.get("cooccur"), d["n"]) + [f"{d['a']} − {d['b']}", ", ".join(map(str, d["seeds"]))]
            lines.append("| " + " | ".join(row + _difference_cells(d, with_specs)) + " |")
    if summary.get("bias"):
        others = [run["name"] for run in runs if run["name"] != "baseline" and reference_run(run) == "baseline"]
        lines += [
            "",
            "The bias the data causes: the baseline's mAP at ρ = 0 (the spec named, the same structure's where the grid "
            "has it: ρ = 0 draws the same uniform label sets for every structure) minus at the structure (paired by "
            "seed), and the part of that loss each run recovers (its mean paired gain over the baseline / the mean "
            "loss, over the seeds of both).",
            "",
            "| " + " | ".join(key_header + ["seeds", "ρ = 0 spec", "baseline at ρ = 0", "baseline", "loss", "95 % interval"]
                             + [f"recovered: {titles[name]}" for name in others]) + " |",  # fmt: skip
            "|" + "---|" * (len(key_header) + 6 + len(others)),
        ]
        for b in summary["bias"]:
            loss = b["loss"]
            row = key_cells(b["cooccur"], b["n"]) + [", ".join(map(str, loss["seeds"])), f"`{b['reference']}`", _number(b["baseline_reference"]),
                                                      _number(b["baseline"]), _signed(loss["mean"]), _interval(loss["low"], loss["high"])]  # fmt: skip
            for name in others:
                r = b["recovered"].get(name)
                row.append("–" if r is None else f"{_number(None if r['fraction'] is None else 100 * r['fraction'], 0)} % ({_signed(r['gain'])})")
            lines.append("| " + " | ".join(row) + " |")
    if per_seed:
        names = [run["name"] for run in runs]
        lines += ["", "mAP (%) per seed:", "", "| " + " | ".join(key_header + ["seed"] + [titles[n] for n in names]) + " |",
                  "|" + "---|" * (len(key_header) + 1 + len(names))]  # fmt: skip
        seeds = sorted({seed for *_, seed in per_seed})
        for spec, n in keys:
            for seed in seeds:
                values = [per_seed.get((spec, n, name, seed)) for name in names]
                if any(v is not None for v in values):
                    lines.append("| " + " | ".join(key_cells(spec, n) + [str(seed)] + [_number(v) for v in values]) + " |")
    panels = "; one panel per co-occurrence structure" if with_specs else ""
    lines += ["", f"Plots: `map_vs_n.png` (mean ± std over seeds, the paper dashed{panels}), `map_per_epoch.png` (mean over seeds).", ""]
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_plots(out: str, cells: list[dict], summary: dict, runs: list[dict], specs=None) -> list[str]:
    """map_vs_n.png (a panel per co-occurrence spec) and map_per_epoch.png (a row per spec, a panel per N) in out;
    returns their paths."""
    specs = list(specs) if specs else [None]
    rows = summary["table"]
    ns = sorted({r["n"] for r in rows})
    names = [run["name"] for run in runs]
    titles = {run["name"]: run_title(run) for run in runs}
    colours = {name: f"C{i}" for i, name in enumerate(names)}

    figure = _figure(6.5 * len(specs), 4.5)
    for i, spec in enumerate(specs):
        axes = figure.add_subplot(1, len(specs), i + 1)
        for run in names:
            ours = [r for r in rows if r.get("cooccur") == spec and r["run"] == run and r["mean"] is not None]
            axes.errorbar([r["n"] for r in ours], [r["mean"] for r in ours], yerr=[r["std"] or 0.0 for r in ours],
                          marker="o", capsize=3, color=colours[run], label=titles[run])  # fmt: skip
            paper = [r for r in rows if r.get("cooccur") == spec and r["run"] == run and r["paper"] is not None]
            if paper:
                axes.plot([r["n"] for r in paper], [r["paper"] for r in paper], ls="--", marker="x", color=colours[run], alpha=0.6)
        axes.set_xticks(ns)
        axes.set_xlabel("labels per training image N")
        axes.set_ylabel("mAP (%)")
        what = "mAP vs N" if spec is None else f"{spec}: mAP vs N"
        axes.set_title(f"{what} (solid: this study, mean ± std; dashed: the paper)", fontsize=9)
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    vs_n = os.path.join(out, "map_vs_n.png")
    figure.savefig(vs_n, dpi=110, bbox_inches="tight")

    grouped = _by_key(cells)
    figure = _figure(3.6 * max(1, len(ns)), 3.4 * len(specs))
    for row, spec in enumerate(specs):
        for i, n in enumerate(ns):
            axes = figure.add_subplot(len(specs), len(ns), row * len(ns) + i + 1)
            for run in names:
                seeds = grouped.get((spec, n, run), {})
                if not seeds:
                    continue
                curves = [seeds[s]["epoch_mAP"] for s in sorted(seeds)]
                epochs = min(map(len, curves))
                mean = [statistics.fmean(c[e] for c in curves) for e in range(epochs)]
                axes.plot(range(1, epochs + 1), mean, marker="o", color=colours[run], label=f"{titles[run]} ({len(curves)})")
            axes.set_title(f"N = {n}" if spec is None else f"{spec}, N = {n}")
            axes.set_xlabel("epoch")
            if i == 0:
                axes.set_ylabel("mAP (%)")
            axes.grid(alpha=0.3)
            if axes.get_legend_handles_labels()[0]:  # a panel with no finished cell yet has none
                axes.legend(fontsize=7)
    per_epoch = os.path.join(out, "map_per_epoch.png")
    figure.savefig(per_epoch, dpi=110, bbox_inches="tight")
    return [vs_n, per_epoch]
