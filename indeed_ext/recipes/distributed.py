"""Multi-process training under torchrun with DistributedDataParallel.

torchrun starts one process per device and describes the group in the environment
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). ``setup`` joins that group
(backend nccl for CUDA devices, gloo for the CPU); without torchrun everything here is
a no-op for one process, so the driver has one code path.

- Training: the model is wrapped in torch's DistributedDataParallel and each process
  reads its part of every epoch through torch's DistributedSampler (``set_epoch`` per
  epoch). ``--batch-size`` is per process; the global batch is world_size times it.
- Pairs: by default INDeeD mines pairs within each process's batch. ``GlobalPairsLoss``
  all-gathers the features and targets first, so pairs are mined over the global batch
  (every process mines the same pairs: their pair generators share a seed). Each
  process's rows keep their gradient (see ``gather_rows``), and with DDP's averaging of
  gradients the update equals a single-process step on the whole global batch, apart
  from BatchNorm, whose statistics stay per process as in any DDP run. A co-occurrence
  statistic (strategy "cooccur") all-reduces each batch's counts when pairs are mined per
  process, and counts the gathered batch once under GlobalPairsLoss: the same on every process.
- Evaluation: each process predicts its share of the test set (DistributedSampler
  without shuffling) and ``gather_shards`` puts the scores back in test-set order.
- Only rank 0 writes files (checkpoints, results, pictures); every rank reads a
  checkpoint it resumes from.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from ..pairs import CooccurrenceStatistic

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets


@dataclass(frozen=True)
class Context:
    """Where this process stands in the group; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # set up here (and so torn down here), not by a caller

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer (set by torchrun)") from None


def env_world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


def process_device(device: torch.device) -> torch.device:
    """The device of this process: under torchrun, "cuda" means cuda:LOCAL_RANK.

    An explicit index (cuda:1) with several processes would put them all on one GPU,
    so it is refused.
    """
    if device.type != "cuda" or env_world_size() == 1:
        return device
    if device.index is not None:
        raise ValueError(f"--device {device} names one GPU, but torchrun started {env_world_size()} processes; "
                         "give --device cuda (or auto): each process uses cuda:LOCAL_RANK")  # fmt: skip
    local_rank = _env_int("LOCAL_RANK", 0)
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
    return torch.device("cuda", local_rank)


def setup(device: torch.device) -> Context:
    """Joins torchrun's process group (nccl on CUDA, gloo on CPU) and returns this process's Context.

    A group the caller has already initialised is used as it is (and left to the caller).
    One process (no torchrun, or WORLD_SIZE=1) needs no group: Context().
    """
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    world_size = env_world_size()
    if world_size == 1:
        return Context()
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; start several processes with torchrun")
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run one process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Context(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), owns_group=True)


def teardown(context: Context) -> None:
    """Waits for every process, then leaves the group if ``setup`` joined it."""
    if is_initialized():
        dist.barrier()
        if context.owns_group:
            dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel(model) in a group of several processes, else the model itself."""
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def train_sampler(dataset: Dataset, seed: int) -> DistributedSampler | None:
    """Shuffled shards of equal size (the last partial share dropped); None for one process."""
    if world_size() == 1:
        return None
    return DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True)


def eval_sampler(dataset: Dataset) -> DistributedSampler | None:
    """Rows rank, rank + world, ... of the test set (the last ones repeated to even the shards out)."""
    if world_size() == 1:
        return None
    return DistributedSampler(dataset, shuffle=False, drop_last=False)


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (the tensor itself for one process)."""
    if world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total / world_size()


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """(world, *shape): every process's tensor, all of the same shape."""
    parts = [torch.empty_like(tensor, memory_format=torch.contiguous_format) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())  # the list form: gloo and every torch version take it
    return torch.stack(parts)


class _GatherRows(torch.autograd.Function):
    """Forward: the rows of every process, concatenated in rank order.

    Backward: the global loss depends on this process's rows through every process's
    copy of the gathered batch, so their gradient is the sum over processes of the
    gradient of this process's slice (all-reduce, then this process's slice).
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        ctx.rows = local.shape[0]
        return _all_gather(local).flatten(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """(world * B, ...) from each process's (B, ...), in rank order, with gradient to the local rows.

    Every process must pass the same shape (the training loader drops partial batches).
    """
    if world_size() == 1:
        return local
    if local.requires_grad:
        return _GatherRows.apply(local)
    return _all_gather(local).flatten(0, 1)


def gather_shards(shard: torch.Tensor, total: int) -> torch.Tensor:
    """The rows of a test set in its order, from each process's rows of an ``eval_sampler`` loader.

    Process r holds rows r, r + world, ...; interleaving the equal-sized shards gives
    rows 0, 1, 2, ... followed by the sampler's repeats, which are cut at ``total``.
    """
    if world_size() == 1:
        return shard
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else shard.device
    gathered = _all_gather(shard.to(device))  # (world, rows, ...)
    return gathered.transpose(0, 1).flatten(0, 1)[:total].to(shard.device)


class GlobalPairsLoss(nn.Module):
    """``criterion`` on the features and targets of the whole global batch (see the module docstring).

    Same call as INDeeDLoss: (features, targets, classifier, generator=None) -> LossOutput.
    The generator must be seeded alike on every process, so that all mine the same pairs.
    """

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion
        for module in criterion.modules():  # a co-occurrence statistic sees the global targets: no all-reduce
            if isinstance(module, CooccurrenceStatistic):
                module.sync = False

    @property
    def lam(self) -> float:  # the wrapped loss's λ, which fit's warm-up sets
        return self.criterion.lam

    @lam.setter
    def lam(self, value: float) -> None:
        self.criterion.lam = value

    def forward(self, features: torch.Tensor, targets: torch.Tensor, classifier: nn.Module, generator=None):
        return self.criterion(gather_rows(features), gather_rows(targets), classifier, generator=generator)
