#!/usr/bin/env python3
"""Host overhead of a training step's INDeeD part, and the pair-mining op.

    python benchmarks/bench_host.py [--out benchmarks/results] [--rounds 7]

1. Tiny CPU tensors (B = 8, n = 16, c = 5, one thread), forward + backward of: the baseline
   loss (Linear + BCE with logits summed over classes, mean), indeed_ext.six_head_bce (.sum()),
   INDeeDLoss (mine_pairs + six_head_loss + its reduction) with the BCE and the ASL base loss,
   INDeeDLoss with "cooccur" pairs (its co-occurrence statistic's update and weights besides),
   and ASL's own AsymmetricLoss on the baseline's logits (reference.asl_sum, eager). Aten ops: every aten:: event of
   a torch.profiler trace of one step (tests/test_aten_counts.py pins them). Host time: the
   steps take turns, `--calls` calls each per round, for `--rounds` rounds; per round the
   mean time per call, each step's ratio to the baseline within the round; the table gives
   the medians over rounds (a loaded machine slows all steps of a round alike).
2. mine_pairs at B = 4096, c = 80 for three label statistics (COCO-like sparse, 3 of 10
   classes per image, dense), through the public API (seed draw included): the CPU kernels
   of "any" and "cooccur" with 1 and with torch's default threads, and for comparison the
   batched Python sampler that the "any" strategy used before the op (now the "matching"
   rounds' sampler); with a GPU, the CUDA and Triton kernels (CUDA events). "cooccur" runs
   with random weights in [0, 2^16] on every contrast (every row takes the weighted draw, its
   full cost) and with zero weights (the "any" draw after the masses: what labels without
   co-occurrence cost); "no cap": the weighted draw without its load cap (load_cap = 0, the
   cap's loads and second draw aside). On the CPU the strategies take turns in rounds, and "× any" is the
   median over rounds of the ratio to "any" in the same round (issue 17's goal: <= 2 for the
   weighted draw). Medians of repeated calls.

Writes host_<device>.json and host_<device>.md into --out and prints the markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

# As in bench_ops.py: sleeping, not spinning, OpenMP threads on a machine whose cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import indeed_ext  # noqa: E402
from indeed_ext import pairs, reference  # noqa: E402
from indeed_ext.losses import INDeeDLoss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- tiny steps
def tiny_steps() -> dict:
    """{name: step()} for forward + backward of the baselines, six_head_bce and INDeeDLoss (B=8, n=16, c=5)."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(8, 16, generator=g).relu().requires_grad_()
    targets = (torch.rand(8, 5, generator=g) < 0.4).float()
    classifier = nn.Linear(16, 5)
    index_a = torch.arange(8)
    index_b = torch.randperm(8, generator=g)
    criterion = INDeeDLoss()
    cooccur = INDeeDLoss(strategy="cooccur", num_classes=5)
    asl_criterion = INDeeDLoss(base="asl")
    mean_criterion = INDeeDLoss(present_negatives="mean")

    def baseline():
        logits = classifier(features)
        F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean().backward()

    def six_head_bce():
        heads = indeed_ext.six_head_bce(features, classifier.weight, classifier.bias, targets, index_a, index_b)
        heads.sum().backward()

    def asl_baseline():
        reference.asl_sum(classifier(features), targets).mean().backward()

    def indeed_loss():
        criterion(features, targets, classifier).loss.backward()

    def cooccur_loss():  # the statistic's update and weights, then the "cooccur" op
        cooccur(features, targets, classifier).loss.backward()

    def indeed_asl_loss():
        asl_criterion(features, targets, classifier).loss.backward()

    def indeed_mean_loss():  # the present negatives' weights are computed inside the op
        mean_criterion(features, targets, classifier).loss.backward()

    return {"baseline": baseline, "six_head_bce": six_head_bce, "INDeeDLoss": indeed_loss, "INDeeDLoss cooccur": cooccur_loss,
            "ASL baseline": asl_baseline, "INDeeDLoss(base=asl)": indeed_asl_loss,
            "INDeeDLoss(present_negatives=mean)": indeed_mean_loss}


def count_aten_ops(step, calls: int = 1) -> float:
    """aten:: events (nested ones included) per call, the mean over calls consecutive calls after a warm-up call
    (calls = INDeeDLoss's cooccur_refresh: the steps between two computations of the co-occurrence weights)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")) / calls


def host_times(steps: dict, rounds: int, calls: int) -> dict:
    """{name: (median µs per call, median ratio to the baseline)} over rounds of interleaved calls; the baseline
    is the first step of steps."""
    return {name: (ms * 1e3, ratio) for name, (ms, ratio) in interleaved_ms(steps, rounds, calls).items()}


# ----------------------------------------------------------------------------- mine_pairs
def label_statistics(B: int, c: int) -> dict:
    g = torch.Generator().manual_seed(0)
    three_of_ten = torch.zeros(B, c)
    three_of_ten.scatter_(1, torch.rand(B, 10, generator=g).argsort(1)[:, :3], 1.0)
    return {
        "sparse (p=0.05, ~4 labels)": (torch.rand(B, c, generator=g) < 0.05).float(),
        "3 of 10 classes": three_of_ten,
        "dense (p=0.5)": (torch.rand(B, c, generator=g) < 0.5).float(),
    }


def median_ms(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def python_sampler(targets):
    """The batched Python sampler "any" used before the op (now inside the "matching" rounds)."""
    batch = pairs._LabelSets.of_batch(targets)
    return pairs._draw_partners(batch, batch, pairs._Candidates(batch), None)


def interleaved_ms(fns: dict, rounds: int, calls: int = 3) -> dict:
    """{name: (median ms per call, median ratio to the first fn)} over rounds in which the fns take turns."""
    per_round = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            per_round[name].append((time.perf_counter() - t0) / calls * 1e3)
    first = next(iter(per_round.values()))
    return {name: (statistics.median(t), statistics.median(x / f for x, f in zip(t, first))) for name, t in per_round.items()}


def mine_pairs_times(B: int, c: int, repeats: int) -> list[dict]:
    rows = []
    default_threads = torch.get_num_threads()
    weighted = torch.randint(0, 2**16 + 1, (c, c), generator=torch.Generator().manual_seed(1))
    zero = torch.zeros_like(weighted)

    def strategies(targets, backend):
        return {"any": lambda: pairs.mine_pairs(targets, backend=backend),
                "cooccur, weighted": lambda: pairs.mine_pairs(targets, "cooccur", backend=backend, contrast_weights=weighted.to(targets.device)),
                "cooccur, weighted, no cap": lambda: pairs.mine_pairs(targets, "cooccur", backend=backend, contrast_weights=weighted.to(targets.device),
                                                                      load_cap=0),
                "cooccur, zero weights": lambda: pairs.mine_pairs(targets, "cooccur", backend=backend, contrast_weights=zero.to(targets.device))}

    for stats, targets in label_statistics(B, c).items():
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            times = interleaved_ms(strategies(targets, "cpu"), repeats)
            rows += [{"labels": stats, "impl": f"C++ {name}, {threads} thread{'s' * (threads > 1)}", "device": "cpu", "ms": ms,
                      "x_any": None if name == "any" else ratio} for name, (ms, ratio) in times.items()]
        rows.append({"labels": stats, "impl": f"Python sampler (old), {default_threads} threads", "device": "cpu",
                     "ms": median_ms(lambda: python_sampler(targets), torch.device("cpu"), repeats), "x_any": None})
        if torch.cuda.is_available():
            on_gpu = targets.cuda()
            for backend in ("cuda", "triton"):
                times = {name: median_ms(fn, on_gpu.device, repeats) for name, fn in strategies(on_gpu, backend).items()}
                rows += [{"labels": stats, "impl": f"{backend} {name}", "device": "cuda", "ms": ms,
                          "x_any": None if name == "any" else ms / times["any"]} for name, ms in times.items()]
    torch.set_num_threads(default_threads)
    return rows


# ----------------------------------------------------------------------------- report
def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "load_1min": os.getloadavg()[0], "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m.get('gpu', 'no GPU')}; "
             f"{m['utc']} UTC, load {m['load_1min']:.2f} at start", "",
             "| forward + backward (B=8, n=16, c=5, 1 thread) | aten ops | × baseline | host µs per call | × baseline |",
             "|---|---|---|---|---|"]
    base_count = report["aten_ops"]["baseline"]
    for name, count in report["aten_ops"].items():
        us, ratio = report["host_time"][name]
        lines.append(f"| {name} | {count} | {count / base_count:.2f} | {us:.0f} | {ratio:.2f} |")
    lines += ["", f"mine_pairs, B = {report['B']}, c = {report['c']}, public API (median ms):", "",
              "| labels | implementation | ms | × any |", "|---|---|---|---|"]
    for r in report["mine_pairs"]:
        ratio = "" if r["x_any"] is None else f"{r['x_any']:.2f}"
        lines.append(f"| {r['labels']} | {r['impl']} | {r['ms']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=200, help="calls per step and round")
    p.add_argument("--repeats", type=int, default=15, help="mine_pairs calls per case")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    report = {"machine": machine(), "B": 4096, "c": 80}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    steps = tiny_steps()
    report["aten_ops"] = {name: count_aten_ops(step) for name, step in steps.items()}
    report["host_time"] = host_times(steps, args.rounds, args.calls)
    torch.set_num_threads(threads)
    report["mine_pairs"] = mine_pairs_times(report["B"], report["c"], args.repeats)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"host_{device}.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / f"host_{device}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
