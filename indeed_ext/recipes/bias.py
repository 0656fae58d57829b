"""indeed-bias: does a multi-label model judge objects by their context? A contextual-bias audit of any model.

    indeed-bias runs/demo/baseline/checkpoint.pt --out audit       # an indeed-train checkpoint: its own data settings
    indeed-bias model.pt2 --dataset voc2007 --root DATA --image-size 448 --out audit
    indeed-bias weights.pt --backbone resnet50 --dataset coco2014 --root DATA --rank-by annotations --out audit

MODEL is an indeed-train checkpoint, a TorchScript file (torch.jit.save), a torch.export program
(torch.export.save) or a state_dict of indeed_ext.INDeeD(backbone, c) or of its export (keys backbone.*
and classifier.*) with --backbone. It maps images (B, C, H, W), prepared as the data set's test images
(--image-size, ImageNet mean and std for photographs), to logits (B, c).

The audit follows Singh et al. (CVPR 2020, "Don't Judge an Object by Its Context"): the K most biased
category pairs (b, c) are ranked (--rank-by) by the model's bias on the training images (b's mean score
on the images with c over that on the images without c), by another model's (--bias-model, as
indeed-train's), or by how often c comes with b in the training labels (annotations; --train-labels FILE
gives other labels than the data set's). For each pair, b's AP on the evaluation images with b and
without c (exclusive) and with b and c (co-occur), each against all the images without b. Evaluation
images: the test images of voc2007/coco2014 (all of them, multi-label); for composites, whose test
canvases hold one object, --test-size canvases of the test objects drawn as the training canvases are,
and then on the single-object test canvases the mAP, the score of c on lone b and, with --cooccur, the
context score (as indeed-train reports it).

Writes OUT/bias.md (the table), OUT/bias.json (every number) and OUT/bias.png (exclusive against
co-occur AP per pair). Python: indeed_ext.metrics.bias_report(scores, targets, train_targets) on
scores a model already gave.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import zipfile

import numpy as np
import torch
from torch import nn

from . import engine
from .backbones import BACKBONES, build_backbone, read_state_dict
from .data import DATASETS, DataOptions, build_dataset
from .data.composite import SingleLabelCanvas
from .data.registry import PHOTO_DATASETS, TRAIN_SCHEMES, multilabel_test_set
from .train import _cooccur_spec, _number, resolve_device
from ..metrics import DEFAULT_PAIRS, RANKINGS, bias_report, context_score
from ..model import INDeeD

FORMATS = ("auto", "checkpoint", "state-dict", "torchscript", "export")
RANK_BY = ("scores", "annotations")
# The data settings an indeed-train checkpoint records, which the audit of that checkpoint takes unless given.
DATA_SETTINGS = ("dataset", "root", "split_test_set", "labels_per_image", "cooccur", "train_size", "test_size", "seed",
                 "image_size", "train_scheme")  # fmt: skip
TRAIN_LABEL_FILES = (".npy", ".pt", ".csv", ".txt")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="indeed-bias", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("model", metavar="MODEL", help="indeed-train checkpoint, TorchScript file, torch.export program, or state_dict (with --backbone)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="MODEL's format (auto: from its contents)")
    p.add_argument("--backbone", metavar="NAME", help=f"a state_dict's network: one of {', '.join(BACKBONES)}")
    data = p.add_argument_group("data (an indeed-train checkpoint's own settings, on its data set, unless given)")
    data.add_argument("--dataset", choices=sorted(DATASETS))
    data.add_argument("--root", metavar="PATH", help="folder of the data set (ml-mnist: the bundled digits without it)")
    data.add_argument("--split-test-set", action="store_true", default=None, help="composites: train and test objects from the test files")
    data.add_argument("--labels-per-image", metavar="N", type=_number(int, 1), help="composites: objects per canvas (default 3)")
    data.add_argument("--cooccur", metavar="SPEC", type=_cooccur_spec, help="composites: the co-occurrence of the label sets (indeed-train --cooccur)")
    data.add_argument("--train-size", metavar="IMAGES", type=_number(int, 1), help="composites: training canvases (default 8000)")
    data.add_argument("--test-size", metavar="IMAGES", type=_number(int, 1), help="composites: test canvases of each kind (default 2000)")
    data.add_argument("--seed", type=_number(int, 0), help="composites: the data seed (default 0)")
    data.add_argument("--image-size", metavar="PX", type=_number(int, 1), help="photographs: square side of the model's input (default 224)")
    data.add_argument("--train-scheme", choices=TRAIN_SCHEMES, help="photographs: the training images that rank the pairs (default all)")
    pairs = p.add_argument_group("biased pairs")
    pairs.add_argument("--biased-pairs", metavar="K", type=_number(int, 1), default=DEFAULT_PAIRS, help="pairs (b, c) to evaluate, at most one per class b")
    pairs.add_argument("--rank-by", choices=RANK_BY,
                       help="scores: the model's bias on the training images (Singh et al.); annotations: P(c | b) of the training labels "
                            "(default: scores, annotations with --train-labels)")
    pairs.add_argument("--bias-model", metavar="MODEL", help="rank by this model's bias instead (same formats; e.g. the baseline of an INDeeD model)")
    pairs.add_argument("--train-labels", metavar="FILE",
                       help=f"training labels (N, c) of 0/1 for the annotation ranking ({', '.join(TRAIN_LABEL_FILES)}), e.g. when MODEL was trained on other data")
    run = p.add_argument_group("run")
    run.add_argument("--batch-size", type=_number(int, 1), default=128)
    run.add_argument("--workers", type=_number(int, 0), default=0, help="DataLoader worker processes")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    run.add_argument("--out", metavar="PATH", default="bias", help="output folder")
    run.add_argument("--quiet", action="store_true", help="no progress bars (they show only when stderr is a terminal)")
    return p


# ----------------------------------------------------------------------------- models
class ExportedModule(nn.Module):
    """A torch.export program's module for inference: it refuses train() and eval(), which inference does not need."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> "ExportedModule":
        return self

    def forward(self, images: torch.Tensor):
        return self.module(images)


def model_format(path: str) -> tuple[str, dict | None]:
    """(format of the file at path, the dict torch.load read for a checkpoint or a state_dict, else None)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} not found")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("/archive_format") for name in names):
            return "export", None
        if any(name.endswith("/constants.pkl") for name in names):
            return "torchscript", None
    state = engine.load_checkpoint(path)  # CheckpointError (a ValueError) naming the file when it is none of these
    if isinstance(state, dict) and "model_config" in state and "model" in state:
        return "checkpoint", state
    return "state-dict", state


def load_model(path: str, fmt: str, backbone: str | None, bundle) -> tuple[nn.Module, dict | None]:
    """(eval-mode model that gives logits, its indeed-train model_config or None), checked against the data set's classes."""
    names = list(bundle.class_names)
    if fmt == "checkpoint":
        model, config = engine.load_model(path)
        if list(config["class_names"]) != names:
            raise ValueError(f"{path} was trained on {len(config['class_names'])} classes ({', '.join(map(str, config['class_names'][:5]))}, ...), "
                             f"not on the data set's {len(names)} ({', '.join(map(str, names[:5]))}, ...)")  # fmt: skip
        return model, config
    try:
        if fmt == "torchscript":
            return torch.jit.load(path, map_location="cpu").eval(), None
        if fmt == "export":
            return ExportedModule(torch.export.load(path).module()), None
    except Exception as e:  # both loaders raise RuntimeError and others on a file of another kind
        raise ValueError(f"{path}: not a {fmt} file ({type(e).__name__}: {e})") from e
    if backbone is None:
        raise ValueError(f"{path} holds a state_dict: name its network with --backbone (one of {', '.join(BACKBONES)})")
    weights = read_state_dict(path)
    classifier = weights.get("classifier.weight")
    if classifier is None or not any(key.startswith("backbone.") for key in weights):
        raise ValueError(f"{path}: expected the state_dict of INDeeD(backbone, c) or of its export (keys backbone.* and classifier.*), "
                         f"got keys {', '.join(list(weights)[:4])}{', ...' if len(weights) > 4 else ''}")  # fmt: skip
    if classifier.dim() != 2 or classifier.shape[0] != len(names):
        raise ValueError(f"{path} scores {classifier.shape[0]} classes, the data set has {len(names)}")
    network, feature_dim = build_backbone(backbone, bundle.image_shape[0], None, bundle.object_size, bundle.image_shape[1:])
    model = INDeeD(network, len(names), feature_dim)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # missing, unexpected or mis-shaped keys
        raise ValueError(f"{path}: the weights do not fit --backbone {backbone}: {e}") from e
    return model.export(), None


def check_logits(model: nn.Module, dataset, num_classes: int, path: str) -> None:
    """Runs the model on one image of the data set: a clear error now instead of a traceback mid-way."""
    image = dataset[0][0].unsqueeze(0)
    try:
        with torch.no_grad():
            out = model(image)
    except Exception as e:  # whatever the model raises on inputs it was not built for
        raise ValueError(f"{path} fails on the data set's images of shape {tuple(image.shape[1:])}: {type(e).__name__}: {e}") from e
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ValueError(f"{path} must give logits (B, {num_classes}) for the data set's {num_classes} classes; it gave {got}")


def read_train_labels(path: str, num_classes: int) -> torch.Tensor:
    """(N, c) float 0/1 labels from .npy, .pt (a tensor) or .csv/.txt (comma-separated rows)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--train-labels {path!r} is not a file")
    extension = os.path.splitext(path)[1].lower()
    if extension not in TRAIN_LABEL_FILES:
        raise ValueError(f"--train-labels {path}: expected one of {', '.join(TRAIN_LABEL_FILES)}")
    try:
        if extension == ".npy":
            labels = torch.from_numpy(np.load(path, allow_pickle=False))
        elif extension == ".pt":
            labels = torch.as_tensor(torch.load(path, map_location="cpu", weights_only=True))
        else:
            labels = torch.from_numpy(np.loadtxt(path, delimiter=",", ndmin=2))
    except Exception as e:  # numpy and torch raise many types on a malformed file
        raise ValueError(f"--train-labels {path}: cannot read ({type(e).__name__}: {e})") from e
    if labels.dim() != 2 or labels.shape[1] != num_classes:
        raise ValueError(f"--train-labels {path}: expected (N, {num_classes}) labels for the data set's classes, got shape {tuple(labels.shape)}")
    if not torch.isin(labels, torch.tensor([0, 1], dtype=labels.dtype)).all():
        raise ValueError(f"--train-labels {path}: labels must be 0 or 1")
    return labels.float()


# ----------------------------------------------------------------------------- the audit
def data_options(args, recorded: dict) -> tuple[str, DataOptions]:
    """(data set, DataOptions): each setting from the flags, else the checkpoint's record (for its own data set), else
    DataOptions' default; photographs are evaluated on their whole (multi-label) test set."""
    if args.dataset is not None and args.dataset != recorded.get("dataset"):
        recorded = {}
    values = {}
    for name in DATA_SETTINGS:
        given = getattr(args, name)
        values[name] = given if given is not None else recorded.get(name)
    dataset = values.pop("dataset")
    if dataset is None:
        raise ValueError("give --dataset: MODEL records no data set (only indeed-train checkpoints do)")
    defaults = DataOptions()
    options = {name: getattr(defaults, name) if value is None else value for name, value in values.items()}
    return dataset, DataOptions(**options, test_scheme="entire")


def audit(model: nn.Module, bundle, options: DataOptions, *, k: int, device: torch.device, batch_size: int = 128,
          workers: int = 0, rank_by: str = "scores", bias_model: nn.Module | None = None, bias_model_name: str = "",
          train_labels: torch.Tensor | None = None, progress: bool = False) -> dict:  # fmt: skip
    """The audit's numbers (bias.json without the run's settings): the bias report of the multi-label evaluation
    images and, for composites, the single-object canvases' mAP, the score of c on lone b and the context score."""

    def predict(network: nn.Module, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        loader = engine.make_loader(dataset, batch_size, train=False, workers=workers, device=device)
        return engine.predict_scores(network.to(device), loader, device=device, progress=progress)

    scores, targets = predict(model, multilabel_test_set(bundle, options))
    train_scores, train_targets = None, bundle.train.targets if train_labels is None else train_labels
    if bias_model is not None or rank_by == "scores":
        train_scores, train_targets = predict(model if bias_model is None else bias_model, bundle.train_eval)
    report = bias_report(scores, targets, train_targets, k, train_scores=train_scores)
    if bias_model is not None:
        report = dataclasses.replace(report, ranking=f"the bias of {bias_model_name} on the training images: b's mean score with c / without c")
    result = report.to_dict(list(bundle.class_names))
    result["evaluation_images"] = len(scores)
    if isinstance(bundle.test, SingleLabelCanvas):
        single = engine.evaluate(model, engine.make_loader(bundle.test, batch_size, train=False, workers=workers, device=device),
                                 device=device, progress=progress)  # fmt: skip
        result["single_object_mAP"] = single.mAP
        for row, (b, c) in zip(result["pairs"], report.pairs.tolist()):
            row["lone_score"] = _json(single.confidence_map[b, c].item())  # the mean score of c on the canvases that show b alone
        if bundle.context is not None:
            result["context_score"] = context_score(single.scores, single.targets.argmax(1), bundle.context)
            shown = bundle.context.to(torch.float64)
            per_class = (single.confidence_map * shown).sum(1) / shown.sum(1)  # NaN for a class without context
            result["context_probability"] = {str(name): _json(p) for name, p in zip(bundle.class_names, per_class.tolist())}
    return result


def chance_ap(pair: dict, kind: str) -> float | None:
    """The AP (%) of random scores on a pair's exclusive or co-occur images: their share among themselves and the negatives."""
    positives = pair[f"{kind}_images"]
    return 100 * positives / (positives + pair["negative_images"]) if positives else None


def _json(value: float) -> float | None:
    return None if math.isnan(value) else value


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def markdown(result: dict, title: str) -> str:
    """bias.md: the pairs with their exclusive and co-occur AP, then the single-object numbers of composites."""
    lone = "lone_score" in (result["pairs"][0] if result["pairs"] else {})
    lines = [
        f"# indeed-bias: {title}", "",
        f"The {len(result['pairs'])} most biased pairs (b, c) by {result['ranking']}. Exclusive AP: b's AP on the evaluation "
        "images with b and without c; co-occur AP: with b and c; each against all the evaluation images without b "
        f"(Singh et al., CVPR 2020). {result['evaluation_images']} evaluation images: {result['evaluation_description']}. "
        "Chance: an AP's level by chance, its share of positives (the two APs of a pair have different positives: "
        "compare each across models)." + (" Lone score: the mean score of c on the single-object test canvases of b." if lone else ""), "",
        "| b | c | strength | images: exclusive / co-occur / without b | exclusive AP | co-occur AP | chance: exclusive / co-occur |"
        + (" lone score |" if lone else ""),
        "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if lone else ""),
    ]  # fmt: skip
    for pair in result["pairs"]:
        strength = "n/a" if pair["strength"] is None else f"{pair['strength']:.2f}"
        chance = " / ".join(_percent(chance_ap(pair, kind)) for kind in ("exclusive", "cooccur"))
        lines.append(f"| {pair['b']} | {pair['c']} | {strength} | {pair['exclusive_images']} / {pair['cooccur_images']} / {pair['negative_images']} | "
                     f"{_percent(pair['exclusive_ap'])} | {_percent(pair['cooccur_ap'])} | {chance} |"
                     + (f" {'n/a' if pair['lone_score'] is None else format(pair['lone_score'], '.3f')} |" if lone else ""))  # fmt: skip
    lines.append(f"| mean | | | | {_percent(result['exclusive_mAP'])} | {_percent(result['cooccur_mAP'])} | |" + (" |" if lone else ""))
    if "single_object_mAP" in result:
        lines += ["", f"Single-object test canvases: mAP {result['single_object_mAP']:.1f}"
                  + ("" if "context_score" not in result else
                     f"; context score {result['context_score']:.3f} (the mean probability given to the shown object's "
                     "co-occurring classes, lower is better)") + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def save_chart(result: dict, path: str, title: str) -> None:
    """Exclusive against co-occur AP, one point per pair with both: above the diagonal, b is found better with c."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.6, 5.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = [p for p in result["pairs"] if p["exclusive_ap"] is not None and p["cooccur_ap"] is not None]
    axes.plot([0, 100], [0, 100], color="grey", lw=1, ls="--", label="co-occur = exclusive")
    axes.scatter([p["exclusive_ap"] for p in shown], [p["cooccur_ap"] for p in shown], color="C3", zorder=3)
    for p in shown:
        axes.annotate(f"{p['b']} | {p['c']}", (p["exclusive_ap"], p["cooccur_ap"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.set_xlim(0, 102)
    axes.set_ylim(0, 102)
    axes.set_xlabel("exclusive AP of b (images with b, without c), %")
    axes.set_ylabel("co-occur AP of b (images with b and c), %")
    left_out = len(result["pairs"]) - len(shown)
    chance = [np.mean([chance_ap(p, kind) for p in shown]) if shown else math.nan for kind in ("exclusive", "cooccur")]
    axes.set_title(f"{title}\n{len(shown)} pairs b | c" + (f" ({left_out} without both kinds of image left out)" if left_out else "")
                   + f"; AP by chance (mean): exclusive {chance[0]:.1f}, co-occur {chance[1]:.1f}", fontsize=8)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def evaluation_description(dataset: str, options: DataOptions) -> str:
    if dataset in PHOTO_DATASETS:
        return f"the {dataset} test set"
    structure = "uniform label sets" if options.cooccur is None else f"label sets {options.cooccur}"
    return f"canvases of the test objects with {options.labels_per_image} per canvas ({structure}), as in training"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.bias_model is not None and args.rank_by == "annotations":
            raise ValueError("--bias-model ranks the pairs by that model's scores: not with --rank-by annotations")
        if args.train_labels is not None and (args.rank_by == "scores" or args.bias_model is not None):
            raise ValueError("--train-labels rank the pairs by their co-occurrence: not with --rank-by scores or --bias-model")
        rank_by = args.rank_by or ("annotations" if args.train_labels is not None else "scores")
        device = resolve_device(args.device)
        fmt, state = (args.format, None) if args.format not in ("auto", "checkpoint") else model_format(args.model)
        if args.format == "checkpoint" and fmt != "checkpoint":
            raise ValueError(f"{args.model}: not an indeed-train checkpoint (no model_config/model)")
        dataset, options = data_options(args, state.get("fingerprint", {}) if fmt == "checkpoint" else {})
        if options.root is not None and not os.path.isdir(options.root):
            raise FileNotFoundError(f"data root {options.root!r} is not a folder" + (" (recorded in the checkpoint: give --root)" if args.root is None else ""))
        bundle = build_dataset(dataset, options)
        model, _ = load_model(args.model, fmt, args.backbone, bundle)
        check_logits(model, bundle.test, len(bundle.class_names), args.model)
        bias_model = None
        if args.bias_model is not None:
            bias_format, _ = model_format(args.bias_model)
            bias_model, _ = load_model(args.bias_model, bias_format, args.backbone, bundle)
            check_logits(bias_model, bundle.test, len(bundle.class_names), args.bias_model)
        train_labels = None if args.train_labels is None else read_train_labels(args.train_labels, len(bundle.class_names))
        progress = not args.quiet and sys.stderr.isatty()
        result = audit(model, bundle, options, k=args.biased_pairs, device=device, batch_size=args.batch_size, workers=args.workers,
                       rank_by=rank_by, bias_model=bias_model, bias_model_name=args.bias_model, train_labels=train_labels, progress=progress)  # fmt: skip
        os.makedirs(args.out, exist_ok=True)
    except (ValueError, OSError, ImportError) as e:  # bias_report's "no biased pair" too
        parser.error(str(e))
    title = f"{os.path.basename(os.path.dirname(os.path.abspath(args.model)))}/{os.path.basename(args.model)} on {dataset}"
    if options.cooccur:
        title += f" ({options.cooccur})"
    result = {"model": args.model, "format": fmt, "dataset": dataset, "data": dataclasses.asdict(options),
              "evaluation_description": evaluation_description(dataset, options), **result}  # fmt: skip
    table = markdown(result, title)
    with open(os.path.join(args.out, "bias.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "bias.md"), "w") as f:
        f.write(table)
    save_chart(result, os.path.join(args.out, "bias.png"), title)
    print(table)
    print(f"wrote {', '.join(os.path.join(args.out, name) for name in ('bias.md', 'bias.json', 'bias.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
