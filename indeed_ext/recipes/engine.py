"""The training and evaluation loop, seeding and checkpoints.

``fit`` runs epochs of ``train_one_epoch`` + ``evaluate`` and writes a checkpoint after
each. Every random choice of epoch e is derived from (seed, e): the global torch/numpy/
python generators (augmentations, dropout), the loader's shuffling generator and the
pair-mining generator are reseeded at the start of each epoch, so a run resumed from
the checkpoint of epoch e continues exactly as the uninterrupted run would (on CPU,
where kernels are deterministic).

Under torchrun (see distributed.py) the same loop runs in every process: the model is
DDP-wrapped by the caller, the loaders carry DistributedSamplers, reported losses and
test scores are gathered over the processes, and only rank 0 writes checkpoints. Each
process draws its augmentations from its own stream; the pair generator is shared.
"""
from __future__ import annotations

import functools
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from . import distributed
from .backbones import build_backbone
from .ema import ModelEma
from ..metrics import confidence_map, mean_average_precision
from ..model import INDeeD

SCHEDULES = ("halving", "sgdr", "onecycle", "none")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}

PROGRESS_EVERY = 10  # batches between updates of the progress bar's mean loss
# Seed streams of one epoch (see derive_seed).
EPOCH_STREAM, SHUFFLE_STREAM, PAIR_STREAM = 0, 1, 2


# ----------------------------------------------------------------------------- seeding
def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, *keys), independent across keys (numpy's SeedSequence)."""
    return int(np.random.SeedSequence((seed, *keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(
    dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0, device: torch.device | None = None, sampler=None
) -> DataLoader:
    """Training loaders shuffle with their own generator (reseeded per epoch by fit) and drop the last partial batch.

    sampler: a DistributedSampler (see distributed.train_sampler/eval_sampler), which then does the shuffling.
    """
    shuffle = train and sampler is None
    generator = torch.Generator() if shuffle else None
    pin = device is not None and device.type == "cuda"
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=train, num_workers=workers,
        generator=generator, pin_memory=pin,
    )


# ----------------------------------------------------------------------------- optimisation
def build_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int):
    """(scheduler or None, steps per batch?): halving = LR x 0.5 per epoch (the paper's ML-MNIST recipe),
    sgdr = cosine with warm restarts after 1, 3, 7, ... epochs, onecycle = OneCycleLR (peak = the base LR)."""
    if name == "halving":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5), False
    if name == "sgdr":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=steps_per_epoch, T_mult=2), True
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=0.2), True
    if name == "none":
        return None, False
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")


def warmed_up_lam(lam: float, warmup_epochs: int, epoch: int, step: int, steps_per_epoch: int) -> float:
    """λ at batch ``step`` of ``epoch``: a linear ramp per step from 0 (the first batch) to ``lam``
    over the first ``warmup_epochs`` epochs, then ``lam``. A function of (epoch, step) alone, so
    a resumed run continues the ramp exactly."""
    if warmup_epochs <= 0:
        return lam
    return lam * min(1.0, (epoch * steps_per_epoch + step) / (warmup_epochs * steps_per_epoch))


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile for training. On one GPU in mode "reduce-overhead": the model's forward and
    backward replay as CUDA graphs (cudagraph trees), and the INDeeD loss after it (three ops,
    no host sync) and the optimizer are all the host does per step. Under torchrun, where DDP's
    hooks run between the graphs, and on the CPU: the default mode."""
    mode = "reduce-overhead" if device.type == "cuda" and distributed.world_size() == 1 else None
    return torch.compile(model, mode=mode)


def unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile / DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------- one epoch
def compiled(model: nn.Module) -> bool:
    """Whether model, or a module it wraps (DistributedDataParallel), is a torch.compile module."""
    while not hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None)
        if not isinstance(model, nn.Module):
            return False
    return True


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    *,
    device: torch.device,
    scheduler=None,
    amp_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "train",
    ema: ModelEma | None = None,
    clip_grad: float | None = None,
    memory_format: torch.memory_format = torch.preserve_format,
    lam_at: Callable[[int], float] | None = None,
) -> dict[str, float]:
    """One pass over loader; ``scheduler`` (if given) steps after every batch. Returns mean loss terms
    (means over the processes too, under torchrun).

    clip_grad: clip the gradients' total norm to this (after unscaling, with a scaler).
    ema: updated from the (unwrapped) model after every optimizer step.
    lam_at: λ of batch i (see warmed_up_lam), set as ``criterion.lam`` before the batch; None keeps it.
    """
    model.train()
    classifier = unwrap(model).classifier
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, orig, ident, disp; summed on the device
    batches = 0
    # A new step: CUDA graphs (torch.compile's reduce-overhead) may reuse the last step's outputs. Only for a compiled
    # model: the call imports torch._inductor, about 3 s a process on the CPU (a third of a make demo cell's start).
    mark_step = compiled(model)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress)
    for step, (images, targets) in enumerate(bar):
        if mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        if lam_at is not None:
            criterion.lam = lam_at(step)
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = criterion(model(images).features, targets, classifier, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        (out.loss if scaler is None else scaler.scale(out.loss)).backward()
        if clip_grad is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(unwrap(model))
        totals += torch.stack([out.loss.detach(), out.orig, out.ident, out.disp]).double()
        batches += 1
        if progress and batches % PROGRESS_EVERY == 0:  # reading the loss waits for the device: not every step
            bar.set_postfix(loss=f"{totals[0].item() / batches:.4f}")
    if batches == 0:
        raise ValueError("the training loader gave no batch: the training set is smaller than one batch")
    return dict(zip(("loss", "orig", "ident", "disp"), distributed.mean_over_processes(totals / batches).tolist()))


@torch.no_grad()
def predict_scores(
    model: nn.Module, loader: DataLoader, *, device: torch.device, amp_dtype: torch.dtype | None = None, progress: bool = False,
    memory_format: torch.memory_format = torch.preserve_format,
):
    """(sigmoid scores (N, c) float32, targets (N, c)) of a loader of (image, target) items, on the CPU.

    With a DistributedSampler each process predicts its shard and every process gets all N rows.
    """
    model.eval()
    scores, targets = [], []
    mark_step = compiled(model)  # as in train_one_epoch
    for images, target in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True, disable=not progress):
        if mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images.to(device, non_blocking=True, memory_format=memory_format))
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(target)
    scores, targets = torch.cat(scores), torch.cat(targets)
    if isinstance(loader.sampler, DistributedSampler):
        total = len(loader.dataset)
        scores, targets = distributed.gather_shards(scores, total), distributed.gather_shards(targets, total)
    return scores, targets


@dataclass
class Evaluation:
    mAP: float
    per_class_ap: list[float]
    confidence_map: torch.Tensor | None  # (c, c) when every test image has one label, else None
    scores: torch.Tensor  # (N, c) test probabilities, for the bias metrics (indeed_ext.metrics)
    targets: torch.Tensor  # (N, c) test targets


def evaluate(
    model: nn.Module, loader: DataLoader, *, device: torch.device, amp_dtype: torch.dtype | None = None, progress: bool = False,
    memory_format: torch.memory_format = torch.preserve_format,
) -> Evaluation:
    scores, targets = predict_scores(model, loader, device=device, amp_dtype=amp_dtype, progress=progress, memory_format=memory_format)
    mAP, per_class = mean_average_precision(scores, targets)
    single_label = bool((targets.sum(dim=1) == 1).all())
    conf = confidence_map(scores, targets.argmax(dim=1), targets.shape[1]) if single_label else None
    return Evaluation(float(mAP), [float(v) for v in per_class], conf, scores, targets)


# ----------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or cannot continue this run."""


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Writes atomically: a temporary file in the same folder, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location="cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e


def load_model(checkpoint_path: str, ema: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """(exported eval-mode model, model_config) of an indeed-train checkpoint; ema=True takes the EMA weights.

    model_config holds backbone, in_channels, num_classes, feature_dim, image_shape (C, H, W),
    mean, std and class_names of the training run.
    """
    state = load_checkpoint(checkpoint_path)
    if "model_config" not in state or "model" not in state:
        raise CheckpointError(f"{checkpoint_path}: not an indeed-train checkpoint (no model_config/model)")
    if ema and state.get("ema") is None:
        raise CheckpointError(f"{checkpoint_path}: holds no EMA weights (the run was trained without --ema)")
    config = state["model_config"]
    backbone, feature_dim = build_backbone(
        config["backbone"], config["in_channels"], object_size=config.get("object_size"), image_size=config["image_shape"][1:]
    )
    model = INDeeD(backbone, config["num_classes"], feature_dim)
    model.load_state_dict(state["ema" if ema else "model"])
    return model.export().eval(), config


def setting_changes(recorded: dict[str, Any], expected: dict[str, Any], unrecorded: dict[str, Any] | None = None) -> str:
    """"key: recorded -> expected, ..." for the keys of ``expected`` whose recorded value differs; "" when none.
    ``unrecorded``: the values of settings that records written before they were recorded ran with."""
    recorded = (unrecorded or {}) | recorded
    return ", ".join(f"{k}: {recorded.get(k)!r} -> {expected[k]!r}" for k in sorted(expected) if recorded.get(k) != expected[k])


def check_resumable(checkpoint: dict[str, Any], fingerprint: dict[str, Any], path: str, unrecorded: dict[str, Any] | None = None) -> None:
    """A checkpoint may resume a run only with the settings it was trained with (those in ``fingerprint``:
    a setting the run does not depend on, such as λ for a baseline, may differ). ``unrecorded``: see
    setting_changes."""
    changes = setting_changes(checkpoint.get("fingerprint", {}), fingerprint, unrecorded)
    if changes:
        raise CheckpointError(f"cannot resume from {path}: settings differ from the checkpoint's ({changes})")


# ----------------------------------------------------------------------------- the loop
@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    evaluation: Evaluation | None = None
    evaluation_ema: Evaluation | None = None  # of the EMA weights, when fit had an ema
    train_time_s: float = 0.0


def fit(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    scheduler=None,
    scheduler_per_batch: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    checkpoint_path: str | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    name: str = "",
    ema: ModelEma | None = None,
    clip_grad: float | None = None,
    memory_format: torch.memory_format = torch.preserve_format,
    lam_schedule: Callable[[int, int], float] | None = None,
    unrecorded: dict[str, Any] | None = None,
) -> FitResult:
    """Trains for ``epochs`` epochs (continuing from ``checkpoint_path`` when ``resume``), evaluating after each.

    The checkpoint holds the model (unwrapped), optimizer, scheduler, scaler and EMA states,
    the criterion's state when it has one (INDeeDLoss "cooccur": its co-occurrence counts), the
    number of finished epochs, the history, ``fingerprint`` (settings a resume must match) and
    ``checkpoint_extra`` (what indeed-predict needs to rebuild the model).
    Under torchrun every process resumes from the checkpoint and rank 0 alone writes it.
    ema, clip_grad, memory_format: see train_one_epoch; the EMA weights are evaluated too.
    lam_schedule: λ of (epoch, batch) (see warmed_up_lam); None keeps the criterion's λ.
    unrecorded: see check_resumable.
    """
    result, start = FitResult(), 0
    fingerprint = fingerprint or {}
    if resume and checkpoint_path and os.path.exists(checkpoint_path):
        state = load_checkpoint(checkpoint_path)
        check_resumable(state, fingerprint, checkpoint_path, unrecorded)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if state.get("criterion"):
            criterion.load_state_dict(state["criterion"])
        start, result.history, result.train_time_s = state["epoch"], state["history"], state["train_time_s"]
        log(f"[{name}] resumed from {checkpoint_path} after epoch {start}")
    rank = distributed.rank()
    for epoch in range(start, epochs):
        # Rank 0 draws what a single process draws; the others their own augmentation streams.
        seed_everything(derive_seed(seed, epoch, EPOCH_STREAM, *([rank] if rank else [])))
        if train_loader.generator is not None:
            train_loader.generator.manual_seed(derive_seed(seed, epoch, SHUFFLE_STREAM))
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler
            train_loader.sampler.set_epoch(epoch)
        pairs = torch.Generator(device).manual_seed(derive_seed(seed, epoch, PAIR_STREAM))
        lr = optimizer.param_groups[0]["lr"]
        began = time.perf_counter()
        losses = train_one_epoch(
            model, train_loader, criterion, optimizer, scaler, device=device, scheduler=scheduler if scheduler_per_batch else None,
            amp_dtype=amp_dtype, generator=pairs, progress=progress, desc=f"{name} epoch {epoch + 1}/{epochs}",
            ema=ema, clip_grad=clip_grad, memory_format=memory_format,
            lam_at=None if lam_schedule is None else functools.partial(lam_schedule, epoch),
        )
        if scheduler is not None and not scheduler_per_batch:
            scheduler.step()
        train_time = time.perf_counter() - began
        result.train_time_s += train_time
        if not math.isfinite(losses["loss"]):
            raise FloatingPointError(f"[{name}] the loss is {losses['loss']} in epoch {epoch + 1}; lower the learning rate")
        result.evaluation, result.evaluation_ema = _evaluate_model_and_ema(model, ema, test_loader, device, amp_dtype, memory_format)
        scores = {"mAP": result.evaluation.mAP} | ({} if ema is None else {"mAP_ema": result.evaluation_ema.mAP})
        result.history.append({"epoch": epoch + 1, "lr": lr, **losses, **scores, "train_time_s": train_time})
        shown = "  ".join(f"{key} {value:.2f}" for key, value in scores.items())
        log(f"[{name}] epoch {epoch + 1}/{epochs}  loss {losses['loss']:.4f}  lr {lr:.2e}  {shown}  ({train_time:.1f}s)")
        if checkpoint_path and distributed.is_main():
            criterion_state = criterion.state_dict()  # a loss with state: the co-occurrence statistic
            save_checkpoint(checkpoint_path, {
                "epoch": epoch + 1,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "scaler": None if scaler is None else scaler.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                **({"criterion": criterion_state} if criterion_state else {}),
                "history": result.history,
                "train_time_s": result.train_time_s,
                "fingerprint": fingerprint,
                **(checkpoint_extra or {}),
            })
    if result.evaluation is None:  # resumed a finished run: nothing trained, evaluate the loaded model
        result.evaluation, result.evaluation_ema = _evaluate_model_and_ema(model, ema, test_loader, device, amp_dtype, memory_format)
    return result


def _evaluate_model_and_ema(model, ema, loader, device, amp_dtype, memory_format) -> tuple[Evaluation, Evaluation | None]:
    """The unwrapped model is evaluated: a DDP forward would synchronise buffers on every batch."""
    options = dict(device=device, amp_dtype=amp_dtype, memory_format=memory_format)
    return evaluate(unwrap(model), loader, **options), None if ema is None else evaluate(ema.module, loader, **options)
