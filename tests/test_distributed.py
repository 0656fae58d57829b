"""DistributedDataParallel on the CPU with gloo and 2 processes.

One spawn of 2 workers (module fixture) runs every in-process scenario:
- --global-pairs: 3 SGD steps of DDP on 2 x 8 rows end with the same loss and weights as
  one process on the 16-row global batches (SGD, so a wrong gradient scale shows; a
  BatchNorm-free model, since BatchNorm statistics stay per process under DDP), and
  mining within each process's rows does not;
- strategy "cooccur": with and without --global-pairs both ranks end with the co-occurrence
  counts of all rows, each counted once;
- indeed_ext.recipes.train.main inside the workers' process group: 2 epochs straight equal 1
  epoch + --resume to 2 (bitwise, on CPU); rank 0 alone writes checkpoints and reports.
Then the issue's torchrun command line as a subprocess.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import indeed_ext
from indeed_ext.recipes import distributed, engine, train
from indeed_ext.losses import INDeeDLoss
from indeed_ext.model import INDeeD

BACKEND = "auto" if torch._C._dispatch_has_kernel_for_dispatch_key("indeed::_six_head_loss_forward", "CPU") else "reference"
WORLD = 2
LOCAL_BATCH, STEPS, IN_FEATURES, CLASSES = 8, 3, 12, 6
TINY = ["--dataset", "ml-digits", "--labels-per-image", "3", "--train-size", "128", "--test-size", "40", "--batch-size", "16",
        "--method", "indeed", "--seed", "5", "--device", "cpu", "--quiet", "--backend", BACKEND]  # fmt: skip


# ----------------------------------------------------------------------------- --global-pairs equivalence
def toy_data():
    g = torch.Generator().manual_seed(0)
    rows = WORLD * LOCAL_BATCH * STEPS
    targets = (torch.rand(rows, CLASSES, generator=g) < 0.4).float()
    targets[torch.arange(rows), torch.randint(0, CLASSES, (rows,), generator=g)] = 1.0  # >= 1 label each
    return torch.utils.data.TensorDataset(torch.randn(rows, IN_FEATURES, generator=g), targets)


def toy_model():
    torch.manual_seed(1)
    return INDeeD(nn.Sequential(nn.Linear(IN_FEATURES, 16), nn.ReLU()), CLASSES, feature_dim=16)


def train_steps(model, loader, criterion):
    """STEPS plain-SGD steps; (mean loss terms, final weights)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    pairs = torch.Generator().manual_seed(3)  # the same seed in every process: the same global pairs
    losses = engine.train_one_epoch(model, loader, criterion, optimizer, device=torch.device("cpu"), generator=pairs, progress=False)
    return losses, {k: v.clone() for k, v in engine.unwrap(model).state_dict().items()}


def ddp_steps(global_pairs: bool):
    dataset = toy_data()
    loader = torch.utils.data.DataLoader(dataset, LOCAL_BATCH, sampler=distributed.eval_sampler(dataset))  # rows rank::2, in order
    criterion = INDeeDLoss(backend=BACKEND)
    return train_steps(distributed.wrap(toy_model(), torch.device("cpu")), loader,
                       distributed.GlobalPairsLoss(criterion) if global_pairs else criterion)  # fmt: skip


def cooccur_counts(global_pairs: bool):
    """The co-occurrence counts of a "cooccur" loss after the DDP steps of ddp_steps."""
    dataset = toy_data()
    loader = torch.utils.data.DataLoader(dataset, LOCAL_BATCH, sampler=distributed.eval_sampler(dataset))
    criterion = INDeeDLoss(strategy="cooccur", num_classes=CLASSES, backend=BACKEND)
    train_steps(distributed.wrap(toy_model(), torch.device("cpu")), loader,
                distributed.GlobalPairsLoss(criterion) if global_pairs else criterion)  # fmt: skip
    return criterion.cooccurrence.counts


def single_process_steps():
    """The global batches DDP sees: rank 0's rows, then rank 1's."""
    batches = [[r + WORLD * (step * LOCAL_BATCH + j) for r in range(WORLD) for j in range(LOCAL_BATCH)] for step in range(STEPS)]
    loader = torch.utils.data.DataLoader(toy_data(), batch_sampler=batches)
    return train_steps(toy_model(), loader, INDeeDLoss(backend=BACKEND))


# ----------------------------------------------------------------------------- the workers
def _worker(rank, init_file, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert distributed.world_size() == WORLD
        scenarios = {"global": ddp_steps(global_pairs=True), "local": ddp_steps(global_pairs=False)}
        if rank == 0:
            torch.save(scenarios, os.path.join(out, "steps.pt"))
        counts = {"global": cooccur_counts(global_pairs=True), "local": cooccur_counts(global_pairs=False)}
        torch.save(counts, os.path.join(out, f"cooccur_rank{rank}.pt"))

        writes = {"checkpoints": 0, "reports": 0}
        save_checkpoint, write_report = engine.save_checkpoint, train.write_report

        def counted(kind, write):
            def call(*args, **kwargs):
                writes[kind] += 1
                return write(*args, **kwargs)

            return call

        engine.save_checkpoint, train.write_report = counted("checkpoints", save_checkpoint), counted("reports", write_report)
        statuses = [
            train.main([*TINY, "--epochs", "2", "--global-pairs", "--out", os.path.join(out, "straight")]),
            train.main([*TINY, "--epochs", "1", "--global-pairs", "--out", os.path.join(out, "split")]),
            train.main([*TINY, "--epochs", "2", "--global-pairs", "--resume", "--out", os.path.join(out, "split")]),
        ]
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"statuses": statuses, "writes": writes}, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
    return out


# ----------------------------------------------------------------------------- tests
def test_global_pairs_match_one_process_on_the_global_batch(spawned):
    steps = torch.load(spawned / "steps.pt")
    losses, weights = single_process_steps()
    ddp_losses, ddp_weights = steps["global"]
    assert ddp_losses == pytest.approx(losses, rel=1e-5, abs=1e-6)
    for name, value in weights.items():
        torch.testing.assert_close(ddp_weights[name], value, atol=1e-5, rtol=1e-5, msg=name)
    # Pairs mined within each process's 8 rows train something else.
    local_weights = steps["local"][1]
    assert any(not torch.allclose(local_weights[name], value, atol=1e-4) for name, value in weights.items())


def test_cooccurrence_counts_are_the_same_on_every_rank(spawned):
    """Each rank counts the whole global batch once: all-reduced per process, or gathered by --global-pairs."""
    ranks = [torch.load(spawned / f"cooccur_rank{r}.pt") for r in range(WORLD)]
    targets = toy_data().tensors[1]
    expected = (targets.T @ targets).double()  # every row is in one process's batch once
    for pairs in ("global", "local"):
        for counts in ranks:
            assert torch.equal(counts[pairs], expected), pairs


def test_ddp_resume_matches_uninterrupted_run(spawned):
    straight = engine.load_checkpoint(str(spawned / "straight" / "indeed-minmax" / "checkpoint.pt"))
    split = engine.load_checkpoint(str(spawned / "split" / "indeed-minmax" / "checkpoint.pt"))
    assert straight["epoch"] == split["epoch"] == 2
    assert straight["fingerprint"]["world_size"] == WORLD
    for name, value in straight["model"].items():
        assert torch.equal(value, split["model"][name]), name
    assert [h["mAP"] for h in straight["history"]] == [h["mAP"] for h in split["history"]]
    results = json.loads((spawned / "split" / "results.json").read_text())
    assert len(results) == 1 and results[0]["world_size"] == WORLD and results[0]["mAP"] == split["history"][-1]["mAP"]


def test_only_rank_0_writes(spawned):
    ranks = [json.loads((spawned / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["statuses"] for r in ranks] == [[0, 0, 0]] * WORLD
    assert ranks[0]["writes"] == {"checkpoints": 2 + 1 + 1, "reports": 3}
    assert ranks[1]["writes"] == {"checkpoints": 0, "reports": 0}


def test_gather_rows_is_the_identity_for_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    assert distributed.gather_rows(x) is x
    assert distributed.world_size() == 1 and distributed.is_main()


def test_explicit_gpu_index_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="each process uses cuda:LOCAL_RANK"):
        distributed.process_device(torch.device("cuda", 1))
    assert distributed.process_device(torch.device("cpu")) == torch.device("cpu")


def test_missing_torchrun_variables_are_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        distributed.setup(torch.device("cpu"))


def test_torchrun_command_line(tmp_path):
    """The issue's command, as `torchrun --no-python indeed-train ...` when the console script is
    installed beside this Python, else as `--no-python python -m indeed_ext.recipes.train` (same parsing)."""
    script = shutil.which("indeed-train", path=os.path.dirname(sys.executable))
    program = [script] if script else [sys.executable, "-m", "indeed_ext.recipes.train"]
    out = tmp_path / "OUT"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--no-python", *program,
               "--dataset", "ml-digits", "--labels-per-image", "3", "--method", "indeed", "--epochs", "1",
               "--train-size", "256", "--test-size", "128", "--batch-size", "32", "--device", "cpu", "--out", str(out),
               "--backend", BACKEND]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(indeed_ext.__file__)))  # this checkout's build, in the workers too
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results in ") == 1  # one report, from rank 0
    results = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["world_size"]) for r in results] == [("indeed", 2)]
    assert sorted(os.listdir(out)) == ["confidence_indeed-minmax.png", "indeed-minmax", "results.json", "table.md"]
