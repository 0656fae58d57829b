"""indeed-train: trains Baseline and/or INDeeD on a composite multi-label set and compares them.

    indeed-train --dataset ml-digits --labels-per-image 3 --method both --epochs 8 --out runs/demo

Wires data (indeed_ext.recipes.data) -> model (backbones + INDeeD) -> loop (engine) -> metrics,
and writes OUT/results.json (one object per trained model), OUT/table.md (per-class AP,
the paper's Table 1 layout; with --cooccur the context score under it; on voc2007/coco2014 with
--test-scheme entire, Singh et al.'s exclusive / co-occur AP of the most biased pairs),
OUT/confidence_<run>.png (paper Fig. 3) and the checkpoints OUT/<run>/checkpoint.pt. Flags avoid every prefix of a torchrun option, so the same
command line works after ``torchrun ... --no-python``:

    torchrun --nproc_per_node 2 --no-python indeed-train ... --device cpu --out OUT

trains with DistributedDataParallel (gloo on the CPU, nccl on GPUs; see distributed.py):
--batch-size is per process, rank 0 writes the outputs.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import torch

from . import distributed, engine
from .backbones import BACKBONES, INITS, build_backbone, initialize
from .data import DATASETS, DataOptions, build_dataset
from .data.cooccur import SYNTAX as COOCCUR_SYNTAX, canonical_spec
from .data.registry import PHOTO_DATASETS, TEST_SCHEMES, TRAIN_SCHEMES
from .ema import ModelEma
from ..losses import BASES, INDeeDLoss
from ..metrics import (
    DEFAULT_PAIRS,
    ap_table_markdown,
    biased_pairs_by_cooccurrence,
    biased_pairs_by_scores,
    context_score,
    exclusive_cooccur_ap,
)
from ..model import INDeeD
from ..ops import BACKENDS
from ..pairs import COOCCURRENCE_STATISTICS, DEFAULT_COOCCUR_REFRESH, STRATEGIES
from ..reference import DEFAULT_LOAD_CAP, NORMS, PRESENT_NEGATIVES
from ..reweighting import ExclusiveWeightedBCE, FeatureSplitBCE
from .viz import save_confidence_map

METHODS = ("baseline", "indeed", "both", "reweight", "featuresplit")
BLOCKS = ("identical", "disparate")
NO_BLOCKS = "none"  # --blocks none: the original heads of the mined pairs only (blocks=())
SELF_PAIR_DISPARATE = ("zero_target", "skip")
NORM_TITLES = {"minmax": "Min-max", "l2": "L2"}
LOSS_TITLES = {"bce": "", "asl": "ASL", "focal": "focal"}  # beside the run's title, for other bases than BCE
INIT_STREAM = 3  # seed stream of the model initialisation (engine uses 0-2 per epoch)
# Settings a resumed run may change; every other one must match the checkpoint.
RESUME_MAY_CHANGE = ("epochs", "out", "resume", "workers", "device", "compile", "quiet", "backend", "channels_last")
PER_RUN = ("method", "norm")  # the run's own method and norm replace the lists given on the command line
INDEED_ONLY = ("norm", "blocks", "lam", "lam_warmup", "strategy", "cooccur_statistic", "cooccur_z", "load_cap", "cooccur_refresh",
               "self_pair_disparate", "present_negatives", "global_pairs")  # no effect on a baseline
COOCCUR_ONLY = ("cooccur_statistic", "cooccur_z", "load_cap", "cooccur_refresh")  # no effect on other pairs
REWEIGHT_ONLY = ("exclusive_weight", "biased_pairs", "bias_model")  # train the weighted loss alone (the others' evaluation is recomputed)
DEBIASING_METHODS = ("reweight", "featuresplit")  # Singh et al.'s methods: BCE on the biased pairs' exclusive images
DEFAULT_BACKBONE = "simple-cnn"  # the paper's ML-MNIST network
# On 24 px ml-digits canvases the paper's network (no batch norm) stays at the label prior within a
# demo's budget (docs/EXPERIMENTS.md): the batch-normed, globally pooled one learns them.
DATASET_BACKBONES = {"ml-digits": "simple-cnn-gap"}
# The paper's simple CNN has no batch norm: with PyTorch's default init it sat at the label prior for
# epochs, with He's it learnt in the first (docs/EXPERIMENTS.md). Other backbones keep their own init.
BACKBONE_INITS = {"simple-cnn": "kaiming"}
# What a setting was before indeed-train recorded it: how a checkpoint or study cell without it ran.
UNRECORDED_SETTINGS = {"init": "torch", "cooccur_statistic": "excess",  # "lift" is the default since 2026-12-07
                       "cooccur_z": 3.0, "bias_model": None, "loss": "bce",
                       "gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "gamma": 2.0, "focal_grad": False,
                       "load_cap": 0, "cooccur_refresh": 1,  # "cooccur" before 2026-12-07: uncapped, weights at every step
                       "present_negatives": "sum"}


def _number(kind, low=None, low_inclusive=True, high=None):
    """argparse type: kind (int/float) within bounds, with a message that names the bound."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if value != value or (low is not None and (value < low if low_inclusive else value <= low)):
            raise argparse.ArgumentTypeError(f"must be {'>=' if low_inclusive else '>'} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {text}")
        return value

    return parse


def _cooccur_spec(text: str) -> str:
    """argparse type of --cooccur: the canonical SPEC, or the parser's usage error naming the problem."""
    try:
        return canonical_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="indeed-train", description=__doc__.split("\n\n")[0], allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="ml-digits", choices=sorted(DATASETS), help="composite set; ml-digits needs no files")
    data.add_argument("--root", metavar="PATH", help="folder of the source files (ml-mnist, ml-mnist-mini: MNIST/raw/ or the IDX files, else the bundled MNIST test digits; ml-cifar10: cifar-10-batches-py/)")
    data.add_argument("--split-test-set", action="store_true", help="build train and test objects from the test files only (disjoint 80/20 split), e.g. for the MNIST t10k files alone")
    data.add_argument("--labels-per-image", metavar="N", type=_number(int, 1), default=3, help="N objects of N distinct labels per training image (1..min(9, classes))")
    data.add_argument("--cooccur", metavar="SPEC", type=_cooccur_spec,
                      help=f"composites: training label sets that co-occur, one of {COOCCUR_SYNTAX}; a drawn class brings each "
                           "group-mate with probability RHO, or the hub joins an image with probability RHO; RHO = 0 gives the "
                           "uniform sets (README). Adds the context score to the results")
    data.add_argument("--train-size", metavar="IMAGES", type=_number(int, 1), default=8000, help="composite training images")
    data.add_argument("--test-size", metavar="IMAGES", type=_number(int, 1), default=2000, help="single-label test images")
    data.add_argument("--train-scheme", default="all", choices=TRAIN_SCHEMES, help="voc2007/coco2014: all training images or the multi-label ones")
    data.add_argument("--test-scheme", default="entire", choices=TEST_SCHEMES, help="voc2007/coco2014: all test images or the single-label ones")
    data.add_argument("--image-size", metavar="PX", type=_number(int, 1), default=224, help="voc2007/coco2014: square side images are resized to")
    data.add_argument("--cutout", metavar="FRACTION", type=_number(float, 0.0, high=1.0), default=0.0, help="Cutout square side as a fraction of the image (0 = off)")
    data.add_argument("--randaugment", action="store_true", help="RandAugment (torchvision) on training images")
    data.add_argument("--workers", type=_number(int, 0), default=0, help="DataLoader worker processes")
    method = p.add_argument_group("method")
    method.add_argument("--method", default="both", choices=METHODS,
                        help="both = baseline, then INDeeD; reweight = Singh et al.'s weighted loss (a debiasing baseline: "
                             "the loss of b weighted by --exclusive-weight on the images with b and without c, for the "
                             "--biased-pairs most biased pairs (b, c): see --bias-model); featuresplit = Singh et al.'s "
                             "feature-split method on the same pairs (the context half of the features held at its mean on "
                             "the exclusive images)")
    method.add_argument("--norm", nargs="+", default=["minmax"], choices=NORMS, help="identical-map normalisation(s); one INDeeD model each")
    method.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=BLOCKS + (NO_BLOCKS,),
                        help=f"INDeeD heads besides the originals (ablations: one of them; {NO_BLOCKS}: the original heads of the pairs only, the reweighting control)")
    method.add_argument("--lam", type=_number(float, 0.0), default=1.0, help="weight of the identical and disparate heads")
    method.add_argument("--lam-warmup", metavar="EPOCHS", type=_number(int, 0), default=0,
                        help="ramp λ linearly per step from 0 to --lam over the first EPOCHS epochs (0 = off, the paper's constant λ; "
                             "with simple-cnn a ramp kept INDeeD at the label prior: docs/EXPERIMENTS.md)")
    method.add_argument("--pairs", "--strategy", dest="strategy", default="any", choices=STRATEGIES,
                        help="pair mining: a uniform valid partner, a matching, or partners weighted by label co-occurrence")
    method.add_argument("--cooccur-statistic", default=COOCCURRENCE_STATISTICS[0], choices=COOCCURRENCE_STATISTICS,
                        help="--pairs cooccur: the null rate of the co-occurrence weights (lift: independence; excess: i's mean co-label rate)")
    method.add_argument("--cooccur-z", type=_number(float, 0.0), default=3.0, help="--pairs cooccur: the z of the weights' significance test")
    method.add_argument("--load-cap", type=_number(int, 0), default=DEFAULT_LOAD_CAP,
                        help="--pairs cooccur: the expected partner draws one image may keep per batch (0 = no cap; docs/SPEC.md)")
    method.add_argument("--cooccur-refresh", metavar="STEPS", type=_number(int, 1), default=DEFAULT_COOCCUR_REFRESH,
                        help="--pairs cooccur: recompute the co-occurrence weights every STEPS steps (eager mode)")
    method.add_argument("--self-pair-disparate", default="zero_target", choices=SELF_PAIR_DISPARATE, help="disparate heads of self-pairs")
    method.add_argument("--present-negatives", default="sum", choices=PRESENT_NEGATIVES,
                        help="a decomposed head's present negatives (its image's labels its target excludes): summed (the paper) "
                             "or averaged to one class's weight (docs/SPEC.md)")
    method.add_argument("--backend", default="auto", choices=BACKENDS, help="INDeeD operator backend")
    method.add_argument("--exclusive-weight", metavar="W", type=_number(float, 0.0, low_inclusive=False), default=10.0,
                        help="reweight: the weight of b's loss on its exclusive images (Singh et al.: 10)")
    method.add_argument("--biased-pairs", metavar="K", type=_number(int, 1), default=DEFAULT_PAIRS,
                        help="the K biased pairs (b, c) of reweight, featuresplit and of the exclusive / co-occur evaluation: each class b's "
                             "most biased c, then the top K (Singh et al.'s K; at most one per class)")
    method.add_argument("--bias-model", metavar="CHECKPOINT",
                        help="an indeed-train checkpoint (a baseline's) whose scores on the training images rank the biased pairs, "
                             "Singh et al.'s way (default: with --method both on voc2007/coco2014 this run's baseline, "
                             "else the annotations: P(c | b) of the training labels)")
    loss = p.add_argument_group("base loss (of the baseline and of every INDeeD head)")
    loss.add_argument("--loss", default="bce", choices=BASES,
                      help="bce; asl, the Asymmetric Loss (ASL's defaults below); focal, ASL with gamma_neg = gamma_pos = --gamma and no clip")
    loss.add_argument("--gamma-neg", type=_number(float, 0.0), default=4.0, help="asl: focusing exponent of the negatives")
    loss.add_argument("--gamma-pos", type=_number(float, 0.0), default=0.0, help="asl: focusing exponent of the positives")
    loss.add_argument("--clip", type=_number(float, 0.0), default=0.05,
                      help="asl: probability margin of the negatives, in [0, 1) (not --clip-grad)")
    loss.add_argument("--gamma", type=_number(float, 0.0), default=2.0, help="focal: focusing exponent")
    loss.add_argument("--focal-grad", action="store_true",
                      help="asl, focal: differentiate the focal weight too (ASL's default holds it constant in backward)")
    model = p.add_argument_group("model and optimisation")
    model.add_argument("--backbone", metavar="NAME", help=f"one of {', '.join(BACKBONES)} (default: {DEFAULT_BACKBONE} or, per data set, {DATASET_BACKBONES})")
    model.add_argument("--weights", metavar="PATH", help="local weights file for the backbone (nothing downloads)")
    model.add_argument("--init", choices=INITS,
                       help=f"from-scratch backbone weights: PyTorch's defaults or He's (kaiming) normal (default: {BACKBONE_INITS} per backbone, else torch)")
    model.add_argument("--epochs", type=_number(int, 1), default=3, help="training epochs")
    model.add_argument("--batch-size", type=_number(int, 1), default=128, help="training and test batch size")
    model.add_argument("--lr", type=_number(float, 0.0, low_inclusive=False), default=1e-3, help="Adam learning rate (peak LR for onecycle)")
    model.add_argument("--weight-decay", type=_number(float, 0.0), default=0.0, help="Adam weight decay")
    model.add_argument("--schedule", default="halving", choices=engine.SCHEDULES, help="halving: LR x 0.5 per epoch (the paper's ML-MNIST recipe)")
    model.add_argument("--amp", default="off", choices=tuple(engine.AMP_DTYPES), help="autocast dtype (fp16 adds a GradScaler)")
    model.add_argument("--channels-last", action="store_true", help="channels_last memory format for model and images (faster convs on GPUs)")
    model.add_argument("--ema", type=_number(float, 0.0, low_inclusive=False), metavar="DECAY", help="also evaluate an EMA of the weights (ASL: 0.9997)")
    model.add_argument("--clip-grad", type=_number(float, 0.0, low_inclusive=False), metavar="NORM", help="clip the gradients' total norm")
    model.add_argument("--compile", action="store_true", help="torch.compile the model; on one GPU with CUDA graphs (mode reduce-overhead)")
    model.add_argument("--global-pairs", action="store_true", help="torchrun: mine pairs over the gathered global batch")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    run.add_argument("--seed", type=_number(int, 0), default=0, help="seed of the data, the initial weights and every epoch's randomness")
    run.add_argument("--out", metavar="PATH", default="runs/latest", help="output folder")
    run.add_argument("--resume", action="store_true", help="continue each run from OUT/<run>/checkpoint.pt")
    run.add_argument("--quiet", action="store_true", help="no progress bars (they show only when stderr is a terminal)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed flags with the defaults that depend on other flags filled in (the backbone and its init)."""
    args = parser.parse_args(argv)
    if args.backbone is None:
        args.backbone = DATASET_BACKBONES.get(args.dataset, DEFAULT_BACKBONE)
    if args.init is None:
        args.init = "torch" if args.weights else BACKBONE_INITS.get(args.backbone, "torch")
    return args


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"unknown device {text!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {text} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {text!r}; expected auto, cpu, cuda or cuda:N")
    return device


def loss_blocks(blocks: list[str]) -> tuple[str, ...]:
    """INDeeDLoss's blocks of --blocks: () for none."""
    if NO_BLOCKS in blocks and len(blocks) > 1:
        raise ValueError(f"--blocks {NO_BLOCKS} leaves the blocks out: give it alone, not with {', '.join(b for b in blocks if b != NO_BLOCKS)}")
    return () if blocks == [NO_BLOCKS] else tuple(blocks)


def planned_runs(args) -> list[dict]:
    """One dict per model to train: name, method, norm, lam and the table row title (which names
    the pairs other than "any", the original heads only for --blocks none, and a base loss other than BCE)."""
    loss = LOSS_TITLES[args.loss]
    runs = []
    if args.method in ("baseline", "both"):
        runs.append({"name": "baseline", "method": "baseline", "norm": None, "lam": 0.0, "title": f"Baseline ({loss})" if loss else "Baseline"})
    if args.method in ("indeed", "both"):
        variant = ([args.strategy] if args.strategy != "any" else []) + (["orig heads only"] if not loss_blocks(args.blocks) else [])
        for norm in dict.fromkeys(args.norm):
            title = f"INDeeD ({', '.join(filter(None, [NORM_TITLES[norm], *variant, loss]))})"
            runs.append({"name": f"indeed-{norm}", "method": "indeed", "norm": norm, "lam": args.lam, "title": title})
    if args.method == "reweight":
        runs.append({"name": "reweight", "method": "reweight", "norm": None, "lam": 0.0,
                     "title": f"Weighted loss (Singh et al., w = {args.exclusive_weight:g})"})  # fmt: skip
    if args.method == "featuresplit":
        runs.append({"name": "featuresplit", "method": "featuresplit", "norm": None, "lam": 0.0, "title": "Feature-split (Singh et al.)"})
    return runs


def unused_settings(method: str, strategy: str = "cooccur") -> tuple[str, ...]:
    """The settings a run of this method (and pair strategy) does not depend on (a resume and indeed-study's
    read-back ignore them)."""
    unused = {"baseline": INDEED_ONLY + REWEIGHT_ONLY, "indeed": REWEIGHT_ONLY, "reweight": INDEED_ONLY,
              "featuresplit": INDEED_ONLY + ("exclusive_weight",)}[method]
    return unused + (COOCCUR_ONLY if method == "indeed" and strategy != "cooccur" else ())


def bias_pairs(args, bundle, device: torch.device, model: torch.nn.Module | None = None, source: str = "") -> tuple[torch.Tensor, torch.Tensor, str]:
    """(pairs (K, 2) of (b, c), their strengths, how they were ranked): by the model's bias on the training
    images (Singh et al.'s way; the model's scores, gathered under torchrun) when one is given, else by the
    co-occurrence of the training labels (their fallback without a model)."""
    if model is None:
        pairs, strength = biased_pairs_by_cooccurrence(bundle.train.targets, k=args.biased_pairs)
        return pairs, strength, "annotation co-occurrence: P(c | b) of the training labels"
    loader = engine.make_loader(
        bundle.train_eval, args.batch_size, train=False, workers=args.workers, device=device, sampler=distributed.eval_sampler(bundle.train_eval)
    )
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    scores, targets = engine.predict_scores(model.to(device, memory_format=memory_format), loader, device=device,
                                            amp_dtype=engine.AMP_DTYPES[args.amp], memory_format=memory_format)  # fmt: skip
    pairs, bias = biased_pairs_by_scores(scores, targets, k=args.biased_pairs)
    return pairs, bias, f"the bias of {source} on the training images: b's mean score with c / without c"


def load_bias_model(path: str, class_names) -> torch.nn.Module:
    """The eval-mode model of an indeed-train checkpoint (--bias-model), checked against the data set's classes."""
    model, config = engine.load_model(path)
    if list(config["class_names"]) != list(class_names):
        raise ValueError(f"--bias-model {path} was trained on other classes ({len(config['class_names'])}) than this data set's ({len(class_names)})")
    return model


def _named_pairs(pairs: torch.Tensor, strength: torch.Tensor, class_names) -> list[dict]:
    return [{"b": class_names[b], "c": class_names[c], "strength": float(v)} for (b, c), v in zip(pairs.tolist(), strength)]


def exclusive_cooccur(ev: engine.Evaluation, pairs: torch.Tensor, strength: torch.Tensor, ranking: str, class_names) -> dict:
    """Singh et al.'s evaluation of one model on the pairs: per pair b's exclusive and co-occur AP (%) and
    their numbers of test images, and the means over the pairs (those with such images)."""
    exclusive, cooccur, exclusive_images, cooccur_images = exclusive_cooccur_ap(ev.scores, ev.targets, pairs)
    rows = _named_pairs(pairs, strength, class_names)
    for row, values in zip(rows, zip(exclusive.tolist(), cooccur.tolist(), exclusive_images.tolist(), cooccur_images.tolist())):
        row.update(zip(("exclusive_ap", "cooccur_ap"), map(_json_number, values[:2])), exclusive_images=values[2], cooccur_images=values[3])

    def mean(values: torch.Tensor) -> float | None:
        known = values[~values.isnan()]
        return known.mean().item() if known.numel() else None

    return {"ranking": ranking, "pairs": rows, "exclusive_mAP": mean(exclusive), "cooccur_mAP": mean(cooccur)}


def train_run(run: dict, args, bundle, device: torch.device, log, progress: bool, bias_model: torch.nn.Module | None = None) -> dict:
    """Trains one model; returns its results.json entry (plus "_"-keys for the table, the picture, the bias
    evaluation and the model). bias_model: ranks the weighted loss's pairs (see bias_pairs)."""
    config = vars(args)
    num_classes = len(bundle.class_names)
    torch.manual_seed(engine.derive_seed(args.seed, INIT_STREAM))  # every run starts from the same weights
    backbone, feature_dim = build_backbone(args.backbone, bundle.image_shape[0], args.weights, bundle.object_size, bundle.image_shape[1:])
    initialize(backbone, args.init)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    model = INDeeD(backbone, num_classes, feature_dim).to(device, memory_format=memory_format)
    ema = ModelEma(model, args.ema) if args.ema else None
    weighted = {}  # the debiasing method's pairs, for its results.json entry
    if run["method"] in DEBIASING_METHODS:
        pairs, strength, ranking = bias_pairs(args, bundle, device, bias_model, args.bias_model)
        weighted = {"biased_pairs": _named_pairs(pairs, strength, bundle.class_names), "biased_pairs_ranking": ranking}
        if run["method"] == "reweight":
            criterion = ExclusiveWeightedBCE(pairs, args.exclusive_weight)
            what = f"weight {args.exclusive_weight:g} on"
        else:
            criterion = FeatureSplitBCE.from_labels(pairs, bundle.train.targets, feature_dim)
            what = f"the context half of {feature_dim} features held at its mean on"
        log(f"[{run['name']}] {what} the exclusive images of {len(pairs)} pairs (b, c) by {ranking}: "
            + ", ".join(f"{p['b']}-{p['c']}" for p in weighted["biased_pairs"]))  # fmt: skip
    else:
        pair_settings = {}  # a baseline mines no pairs
        if run["method"] != "baseline":
            pair_settings = {"strategy": args.strategy}
            if args.strategy == "cooccur":
                pair_settings |= {"num_classes": num_classes, "cooccur_statistic": args.cooccur_statistic, "cooccur_z": args.cooccur_z,
                                  "load_cap": args.load_cap, "cooccur_refresh": args.cooccur_refresh}
        criterion = INDeeDLoss(
            lam=run["lam"], norm=run["norm"] or "minmax", blocks=loss_blocks(args.blocks), self_pair_disparate=args.self_pair_disparate,
            backend=args.backend, base=args.loss, gamma_neg=args.gamma_neg, gamma_pos=args.gamma_pos, clip=args.clip,
            gamma=args.gamma, focal_grad=args.focal_grad, present_negatives=args.present_negatives, **pair_settings,
        )
    if args.global_pairs:
        criterion = distributed.GlobalPairsLoss(criterion)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    train_loader = engine.make_loader(
        bundle.train, args.batch_size, train=True, workers=args.workers, device=device, sampler=distributed.train_sampler(bundle.train, args.seed)
    )
    test_loader = engine.make_loader(
        bundle.test, args.batch_size, train=False, workers=args.workers, device=device, sampler=distributed.eval_sampler(bundle.test)
    )
    scheduler, per_batch = engine.build_scheduler(optimizer, args.schedule, args.epochs, len(train_loader))
    amp_dtype = engine.AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    ignored = RESUME_MAY_CHANGE + PER_RUN + unused_settings(run["method"], args.strategy)
    fingerprint = {k: v for k, v in config.items() if k not in ignored}
    fingerprint |= {"run": run, "world_size": distributed.world_size()}  # the global batch and the steps per epoch
    if args.schedule == "onecycle":  # its steps are laid out over the planned epochs
        fingerprint["epochs"] = args.epochs
    meta = {
        "model_config": {
            "backbone": args.backbone, "in_channels": bundle.image_shape[0], "object_size": bundle.object_size,
            "num_classes": num_classes, "feature_dim": feature_dim,
            "image_shape": list(bundle.image_shape), "mean": list(bundle.mean), "std": list(bundle.std),
            "class_names": list(bundle.class_names),
        },
        "run": run,
    }
    lam_schedule = None  # λ per (epoch, step): the warm-up ramp
    if args.lam_warmup and run["lam"]:
        lam_schedule = functools.partial(engine.warmed_up_lam, run["lam"], args.lam_warmup, steps_per_epoch=len(train_loader))
    trained = distributed.wrap(model, device)
    result = engine.fit(
        engine.compile_model(trained, device) if args.compile else trained, criterion, optimizer, train_loader, test_loader,
        epochs=args.epochs, seed=args.seed, device=device, scheduler=scheduler, scheduler_per_batch=per_batch, scaler=scaler,
        amp_dtype=amp_dtype, checkpoint_path=os.path.join(args.out, run["name"], "checkpoint.pt"), resume=args.resume,
        fingerprint=fingerprint, checkpoint_extra=meta, progress=progress, log=log, name=run["name"],
        ema=ema, clip_grad=args.clip_grad, memory_format=memory_format,
        lam_schedule=lam_schedule, unrecorded=UNRECORDED_SETTINGS,
    )
    ev, ev_ema = result.evaluation, result.evaluation_ema
    context_scores = {}  # the context score of composites with a co-occurrence structure, of the model and its EMA
    if bundle.context is not None:
        context_scores["context_score"] = _json_number(context_score(ev.scores, ev.targets.argmax(1), bundle.context))
        if ev_ema is not None:
            context_scores["context_score_ema"] = _json_number(context_score(ev_ema.scores, ev_ema.targets.argmax(1), bundle.context))
    return {
        "name": run["name"], "method": run["method"], "norm": run["norm"], "lam": run["lam"], "title": run["title"],
        "mAP": _json_number(ev.mAP), "per_class_ap": [_json_number(v) for v in ev.per_class_ap],
        **({} if ev_ema is None else {"mAP_ema": _json_number(ev_ema.mAP), "per_class_ap_ema": [_json_number(v) for v in ev_ema.per_class_ap]}),
        **context_scores, **weighted,
        "class_names": list(bundle.class_names),
        "seed": args.seed, "epochs": args.epochs, "world_size": distributed.world_size(), "train_time_s": result.train_time_s,
        "history": result.history, "config": config, "_per_class_ap": torch.tensor(ev.per_class_ap), "_confidence": ev.confidence_map,
        "_evaluations": (ev, ev_ema), "_model": model,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN (a class without test images)


def context_table(results: list[dict], spec: str) -> str:
    """The markdown lines of the runs' context scores (under the AP table, for --cooccur)."""
    ema = any("context_score_ema" in r for r in results)
    lines = [
        f"Context score ({spec}): the mean probability given to the shown object's co-occurring classes "
        "on the single-object test images; lower is better.",
        "",
        "| Model | context score |" + (" EMA |" if ema else ""),
        "|---|---:|" + ("---:|" if ema else ""),
    ]
    for r in results:
        values = [r["context_score"]] + ([r.get("context_score_ema")] if ema else [])
        lines.append(f"| {r['title']} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def exclusive_table(results: list[dict]) -> str:
    """The markdown lines of the runs' exclusive / co-occur APs (under the AP table, on voc2007/coco2014)."""
    first = results[0]["exclusive_cooccur"]
    lines = [
        f"Exclusive / co-occur AP (%) of Singh et al. (CVPR 2020) on the {len(first['pairs'])} most biased pairs (b, c) "
        f"(ranking: {first['ranking']}). Exclusive: b's AP on the test images with b and without c; co-occur: with b and c; "
        "each against all the test images without b.",
        "",
        "| b | c | strength | test images: exclusive / co-occur | " + " | ".join(f"{r['title']}: exclusive | co-occur" for r in results) + " |",
        "|---|---|---:|---:|" + "---:|---:|" * len(results),
    ]
    for i, pair in enumerate(first["pairs"]):
        values = [_percent(r["exclusive_cooccur"]["pairs"][i][key]) for r in results for key in ("exclusive_ap", "cooccur_ap")]
        lines.append(f"| {pair['b']} | {pair['c']} | {pair['strength']:.2f} | {pair['exclusive_images']} / {pair['cooccur_images']} | "
                     + " | ".join(values) + " |")  # fmt: skip
    means = [_percent(r["exclusive_cooccur"][key]) for r in results for key in ("exclusive_mAP", "cooccur_mAP")]
    lines.append("| mean | | | | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: str, results: list[dict], class_names, cooccur: str | None = None) -> str:
    """results.json, table.md and the confidence-map PNGs; returns the markdown of table.md."""
    table = ap_table_markdown({r["title"]: r["_per_class_ap"] for r in results}, list(class_names))
    if any("context_score" in r for r in results):
        table += "\n" + context_table(results, cooccur)
    if any("exclusive_cooccur" in r for r in results):
        table += "\n" + exclusive_table(results)
    for r in results:
        if r["_confidence"] is not None:
            save_confidence_map(r["_confidence"], os.path.join(out, f"confidence_{r['name']}.png"), list(class_names), r["title"])
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump([{k: v for k, v in r.items() if not k.startswith("_")} for r in results], f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        device = distributed.process_device(resolve_device(args.device))
        if args.root is not None and not os.path.isdir(args.root):
            raise FileNotFoundError(f"--root {args.root!r} is not a folder")
        if args.weights is not None and not os.path.isfile(args.weights):
            raise FileNotFoundError(f"--weights {args.weights!r} is not a file")
        if args.weights is not None and args.init != "torch":  # only when --init was given
            raise ValueError(f"--init {args.init} would overwrite the --weights; use one of them")
        if args.bias_model is not None and not os.path.isfile(args.bias_model):
            raise FileNotFoundError(f"--bias-model {args.bias_model!r} is not a file")
        options = DataOptions(
            root=args.root, labels_per_image=args.labels_per_image, train_size=args.train_size, test_size=args.test_size,
            seed=args.seed, split_test_set=args.split_test_set, cutout=args.cutout, randaugment=args.randaugment,
            image_size=args.image_size, train_scheme=args.train_scheme, test_scheme=args.test_scheme, cooccur=args.cooccur,
        )
        bundle = build_dataset(args.dataset, options)
        build_backbone(args.backbone, bundle.image_shape[0], args.weights, bundle.object_size, bundle.image_shape[1:])  # fail before any training on a bad backbone
        processes = distributed.env_world_size()
        if len(bundle.train) // processes < args.batch_size:
            size = f"--train-size {args.train_size}" if args.dataset not in PHOTO_DATASETS else f"the training set ({len(bundle.train)} images)"
            shared = f" shared by {processes} processes" if processes > 1 else ""
            raise ValueError(f"{size}{shared} is smaller than one batch (--batch-size {args.batch_size})")
        if args.ema is not None and args.ema >= 1.0:
            raise ValueError(f"--ema must be below 1, got {args.ema}")
        loss_blocks(args.blocks)
        if not math.isfinite(args.cooccur_z):
            raise ValueError(f"--cooccur-z must be finite, got {args.cooccur_z}")
        if args.strategy != "cooccur" and (args.load_cap != DEFAULT_LOAD_CAP or args.cooccur_refresh != DEFAULT_COOCCUR_REFRESH):
            raise ValueError(f"--load-cap and --cooccur-refresh are settings of --pairs cooccur, not --pairs {args.strategy}")
        if args.clip >= 1.0:
            raise ValueError(f"--clip must be below 1, got {args.clip}")
        if args.method in DEBIASING_METHODS and args.loss != "bce":
            raise ValueError(f"--method {args.method} is Singh et al.'s BCE method; --loss {args.loss} is not available with it")
        bias_model = None if args.bias_model is None else load_bias_model(args.bias_model, bundle.class_names)
        os.makedirs(args.out, exist_ok=True)
    except (ValueError, OSError, ImportError) as e:
        parser.error(str(e))  # exits with status 2 and the usage line, no traceback
    try:
        context = distributed.setup(device)
    except ValueError as e:  # WORLD_SIZE > 1 without the rest of torchrun's environment
        parser.error(str(e))
    status = _train_and_report(args, bundle, device, context, parser.prog, bias_model)
    distributed.teardown(context)  # not after an exception: the process ends, and torchrun stops the others
    return status


def _train_and_report(args, bundle, device: torch.device, context: distributed.Context, prog: str, bias_model=None) -> int:
    """Every planned run, then on voc2007/coco2014 (test scheme entire) Singh et al.'s exclusive / co-occur
    evaluation of each, on pairs ranked by --bias-model, else this run's baseline, else the annotations;
    rank 0 logs and writes the report."""
    log = print if context.is_main else lambda *_: None
    title = args.dataset if args.dataset in PHOTO_DATASETS else f"{args.dataset}-{args.labels_per_image}"
    if args.cooccur:
        title += f" ({args.cooccur})"
    processes = f" x {context.world_size} processes" if context.world_size > 1 else ""
    log(f"{title}: {len(bundle.train)} training / {len(bundle.test)} test images of shape {tuple(bundle.image_shape)}, "
        f"{len(bundle.class_names)} classes; backbone {args.backbone} on {device}{processes}")  # fmt: skip
    results, baseline_model = [], None
    progress = context.is_main and not args.quiet and sys.stderr.isatty()  # tqdm's bars would litter piped logs
    began = time.perf_counter()
    exclusive = args.dataset in PHOTO_DATASETS and args.test_scheme == "entire"  # a multi-label test set
    try:
        for run in planned_runs(args):
            results.append(train_run(run, args, bundle, device, log, progress=progress, bias_model=bias_model))
            model = results[-1].pop("_model")
            if exclusive and run["method"] == "baseline" and bias_model is None:
                baseline_model = model  # kept to rank the pairs for every run
    except (engine.CheckpointError, FloatingPointError) as e:  # a checkpoint of other settings, a diverged loss
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    if exclusive:
        ranker, source = (bias_model, args.bias_model) if bias_model is not None else (baseline_model, "this run's baseline")
        pairs, strength, ranking = bias_pairs(args, bundle, device, ranker, source)
        for r in results:
            ev, ev_ema = r["_evaluations"]
            r["exclusive_cooccur"] = exclusive_cooccur(ev, pairs, strength, ranking, bundle.class_names)
            if ev_ema is not None:
                r["exclusive_cooccur_ema"] = exclusive_cooccur(ev_ema, pairs, strength, ranking, bundle.class_names)
            log(f"[{r['name']}] exclusive / co-occur AP of {len(pairs)} biased pairs (by {ranking}): "
                f"{_percent(r['exclusive_cooccur']['exclusive_mAP'])} / {_percent(r['exclusive_cooccur']['cooccur_mAP'])}")  # fmt: skip
    if context.is_main:
        table = write_report(args.out, results, bundle.class_names, args.cooccur)
        log(f"\nAP per class and mAP (%), {title}, seed {args.seed}, {args.epochs} epochs:\n\n{table}\n")
        log(f"trained in {time.perf_counter() - began:.1f}s; results in {os.path.join(args.out, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
