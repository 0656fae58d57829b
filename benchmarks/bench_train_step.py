#!/usr/bin/env python3
"""Training-step time of the baseline against INDeeD with the eager and the fused head.

    python benchmarks/bench_train_step.py --out step.json            (full size, on a GPU)
    python benchmarks/bench_train_step.py --small --out step.json    (tiny sizes, CPU, seconds)

One step = forward, loss, backward and Adam step, on a fixed synthetic batch (no data
loading). Methods, each with its own copy of the same initial model:
  baseline          BCE on the original logits (INDeeDLoss(lam=0))
  indeed-reference  INDeeD with the eager reference head (backend="reference")
  indeed-fused      INDeeD with the fused head (--fused, default "auto": the CUDA kernels when
                    built, else Triton, on a GPU; the CPU kernels on the CPU)
Models: the simple CNN on ML-MNIST-7 shapes (1x84x84 canvases, 10 classes, 7 labels per
image, B=256, float32) and ResNet-50 at 224x224 (80 classes as COCO, about 3 labels per
image, B=128, bfloat16 autocast and channels_last on a GPU). --small: B=8 simple CNN and
B=2 ResNet-50 at 32x32, float32.

Timing: warm-up steps first (cuDNN autotuning, Triton compilation), then ROUNDS rounds in
which every method runs STEPS steps in turn, so slow drifts of the clock hit all methods
alike. Each step is timed alone (CUDA events on a GPU, perf_counter on the CPU) and the
median over all steps is reported, with the ratio to the baseline's median. Prints a
table and writes the numbers as JSON (--out). Needs only torch, torchvision, triton (on a
GPU, for the Triton backend) and this package; full size takes about a minute on an H100.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's indeed_ext, uninstalled too

from indeed_ext.recipes.backbones import build_backbone  # noqa: E402
from indeed_ext import ops, reference  # noqa: E402
from indeed_ext.losses import INDeeDLoss  # noqa: E402
from indeed_ext.model import INDeeD  # noqa: E402

METHODS = ("baseline", "indeed-reference", "indeed-fused")


@dataclass(frozen=True)
class Case:
    name: str
    backbone: str
    batch: int
    image: tuple[int, int, int]  # (C, H, W)
    classes: int
    labels_per_image: int
    amp: bool  # bfloat16 autocast and channels_last (GPU only)
    object_size: int | None = None  # px; sizes the simple CNN's pooling as the driver does


FULL = (
    Case("simple-cnn ML-MNIST-7", "simple-cnn", 256, (1, 84, 84), 10, 7, amp=False, object_size=28),
    Case("resnet50 224 COCO", "resnet50", 128, (3, 224, 224), 80, 3, amp=True),
)
SMALL = (
    Case("simple-cnn ML-MNIST-7 (small)", "simple-cnn", 8, (1, 84, 84), 10, 7, amp=False, object_size=28),
    Case("resnet50 32 COCO (small)", "resnet50", 2, (3, 32, 32), 80, 3, amp=False),
)


def make_model(case: Case, device: torch.device) -> INDeeD:
    torch.manual_seed(0)
    backbone, dim = build_backbone(case.backbone, case.image[0], object_size=case.object_size, image_size=case.image[1:])
    model = INDeeD(backbone, case.classes, dim).to(device)
    return model.to(memory_format=torch.channels_last) if case.amp and device.type == "cuda" else model


def make_batch(case: Case, device: torch.device):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(case.batch, *case.image, generator=g)
    scores = torch.rand(case.batch, case.classes, generator=g)
    targets = torch.zeros(case.batch, case.classes)
    targets.scatter_(1, scores.topk(case.labels_per_image, dim=1).indices, 1.0)  # exactly k labels per image
    if case.amp and device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(device), targets.to(device)


class Step:
    """One method's model, loss and optimizer; calling it runs one training step."""

    def __init__(self, case: Case, method: str, device: torch.device, fused: str):
        self.model = make_model(case, device).train()
        options = {"baseline": dict(lam=0.0), "indeed-reference": dict(backend="reference"), "indeed-fused": dict(backend=fused)}
        self.criterion = INDeeDLoss(**options[method])
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.generator = torch.Generator(device).manual_seed(2)
        self.device = device
        self.amp_dtype = torch.bfloat16 if case.amp and device.type == "cuda" else None

    def __call__(self, images, targets) -> None:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.criterion(self.model(images).features, targets, self.model.classifier, generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()


def time_steps(step: Step, batch, count: int, device: torch.device) -> list[float]:
    """Seconds of each of ``count`` steps."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for start, end in events:
            start.record()
            step(*batch)
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    times = []
    for _ in range(count):
        began = time.perf_counter()
        step(*batch)
        times.append(time.perf_counter() - began)
    return times


def bench_case(case: Case, device: torch.device, fused: str, warmup: int, rounds: int, steps: int) -> dict:
    batch = make_batch(case, device)
    runners = {method: Step(case, method, device, fused) for method in METHODS}
    for runner in runners.values():
        time_steps(runner, batch, warmup, device)
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(rounds):
        for method, runner in runners.items():
            times[method] += time_steps(runner, batch, steps, device)
    medians = {method: statistics.median(t) for method, t in times.items()}
    return {
        "case": case.name, "backbone": case.backbone, "batch": case.batch, "image": list(case.image), "classes": case.classes,
        "labels_per_image": case.labels_per_image, "amp": "bf16" if case.amp and device.type == "cuda" else "none",
        "steps_timed": rounds * steps,
        "methods": {
            method: {"median_ms": medians[method] * 1e3, "min_ms": min(times[method]) * 1e3, "max_ms": max(times[method]) * 1e3,
                     "ratio_to_baseline": medians[method] / medians["baseline"]}  # fmt: skip
            for method in METHODS
        },
    }


def table(results: list[dict]) -> str:
    lines = ["| case | method | median ms | min ms | / baseline |", "|---|---|---:|---:|---:|"]
    for r in results:
        for method, m in r["methods"].items():
            case = f"{r['case']} (B={r['batch']}, {r['amp']})"
            lines.append(f"| {case} | {method} | {m['median_ms']:.2f} | {m['min_ms']:.2f} | {m['ratio_to_baseline']:.3f} |")
    return "\n".join(lines)


def fused_kernels(fused: str, device: torch.device) -> str:
    """Which kernels the fused head runs: cpu, cuda, triton (or reference, when nothing else is there)."""
    namespace = ops.resolve_backend(fused, device, "_six_head_loss_forward")
    if namespace is reference:
        return "reference"
    return device.type if namespace is torch.ops.indeed else "triton"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes for a CPU (seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fused", default="auto", choices=[b for b in ops.BACKENDS if b != "reference"], help="backend of indeed-fused")
    parser.add_argument("--warmup", type=int, help="untimed steps per method (default 10, --small 1)")
    parser.add_argument("--rounds", type=int, help="rounds over the methods (default 5, --small 2)")
    parser.add_argument("--steps", type=int, help="timed steps per method and round (default 10, --small 2)")
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 10)
    rounds = args.rounds if args.rounds is not None else (2 if args.small else 5)
    steps = args.steps if args.steps is not None else (2 if args.small else 10)
    began = time.perf_counter()
    results = [bench_case(case, device, args.fused, warmup, rounds, steps) for case in (SMALL if args.small else FULL)]
    report = {
        "device": device_name(device), "torch": torch.__version__, "fused_kernels": fused_kernels(args.fused, device),
        "small": args.small, "warmup": warmup, "rounds": rounds, "steps": steps, "wall_s": time.perf_counter() - began,
        "results": results,
    }
    print(f"training-step times on {report['device']} (torch {torch.__version__}, fused head: {report['fused_kernels']} kernels), "
          f"medians of {rounds * steps} steps:\n")
    print(table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
