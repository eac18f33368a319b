"""The per-worker training loop that Ray Train's ``TorchTrainer`` runs on every DDP rank.

Each rank reads only its own shard parts (part ``k`` belongs to rank ``k % world_size``) and
draws token-budget batches from them with ``TokenBudgetBatchSampler``, which gives every rank
the same number of batches (so DDP's collectives never wait on a rank that ran out) and every
example exactly once per pass. Batches are trimmed to their longest example. An epoch is
``passes`` passes (the driver's plan: more than one only on data too small for one pass to
be a useful amount of training between two validations).

Fault tolerance follows Ray Train's checkpoint/restore contract: rank 0 writes a checkpoint
at the end of every epoch (weights, best weights so far, optimizer, scheduler, early-stopping
state); after a worker failure ``ray.train.get_checkpoint()`` returns the latest one and the
loop resumes at the next epoch, logging to the same MLflow run (its id is in the config).
Metrics go to MLflow from rank 0 only, batched into one ``log_batch`` call per epoch:
every MLflow call is a round trip and, on an SQL store, a transaction of its own.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from pipelines.sampler import BY_PART, TokenBudgetBatchSampler, bucket_plan, example_owners
from pipelines.shard_reader import read_index, read_split, to_numpy_batch
from seqcore.manifest import load_manifest
from seqmodels import ModelConfig, SequenceModel, build_model
from seqmodels.heads import classify_loss, forecast_loss, next_event_loss

FAIL_ENV = "SEQOPS_INJECT_FAILURE"
"""``epoch=E,rank=R,marker=PATH``: rank R raises once at the start of epoch E (for tests and
drills). Read by the driver and passed in the loop config, so it reaches workers of an
already running cluster."""


class ShardData:
    """One rank's examples of one split, addressed by global example index.

    ``labelled_only`` (classify) leaves out the examples without a label (-1): the shards keep
    every entity's windows for the per-step tasks, but for classify such an example carries
    no loss, and a batch of them would still move the weights through AdamW's momentum and
    weight decay. Global indices then number the labelled examples only.
    """

    def __init__(
        self,
        shard_dir: str,
        split: str,
        rank: int,
        world_size: int,
        labelled_only: bool = False,
        max_tokens: int = 1,
    ) -> None:
        index = read_index(shard_dir, split)
        keep = index["label"] >= 0 if labelled_only else np.ones(len(index["label"]), bool)
        plan = bucket_plan(index["bucket"][keep], index["part"][keep], max_tokens, world_size)
        owner = example_owners(index["bucket"], index["part"], plan, world_size)
        # Row of every example in this rank's table (read_split reads in the same order).
        row = np.cumsum(owner == rank) - 1
        self.unlabeled = int((~keep).sum())  # left out, over all ranks
        self.padded = index["bucket"][keep]
        self.lengths = index["length"][keep]
        self.owner = owner[keep]
        self.local_of_global = row[keep]
        self.mine = np.flatnonzero(self.owner == rank)
        # Every file of a bucket this rank owns whole, its parts' files of a shared one.
        parts = max(1, load_manifest(shard_dir).max_workers)
        files = {
            b: range(parts) if rank_ == rank else [k for k in range(parts) if k % world_size == rank]
            for b, rank_ in plan.items() if rank_ in (rank, BY_PART)
        }  # fmt: skip
        # A rank may own nothing of a split (no labelled val example): it never draws a batch.
        self.table = read_split(shard_dir, split, files=files) if files else pa.table({})

    def batch(
        self, indices: list[int] | np.ndarray, device: torch.device
    ) -> dict[str, torch.Tensor]:
        arrays = to_numpy_batch(self.table, self.local_of_global[np.asarray(indices)], trim=True)
        # np.require copies only read-only arrays (zero-copy Arrow buffers); torch needs writable.
        return {
            k: torch.from_numpy(np.require(v, requirements="W")).to(device, non_blocking=True)
            for k, v in arrays.items()
        }


def _lr_lambda(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine down to 10%

    return factor


def _maybe_fail(spec: str | None, epoch: int, rank: int) -> None:
    if not spec:
        return
    fields = dict(item.split("=", 1) for item in spec.split(","))
    marker = Path(fields["marker"])
    if int(fields["epoch"]) == epoch and int(fields["rank"]) == rank and not marker.exists():
        marker.write_text(f"failed once at epoch {epoch} on rank {rank}\n")
        raise RuntimeError(f"{FAIL_ENV}: injected worker failure at epoch {epoch}, rank {rank}")


def _sums(model: SequenceModel, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[float]:
    """[loss sum, target count, correct (or abs error) sum] of one batch."""
    task, lengths = model.config.task, batch["length"]
    if task == "classify":
        labels = batch["label"]
        keep = labels >= 0
        loss = classify_loss(out.float(), labels, reduction="sum")
        correct = (out.argmax(-1)[keep] == labels[keep]).sum()
        return [loss.item(), float(keep.sum()), float(correct)]
    steps = torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None]
    if task == "next_event":
        targets = batch["next_event"]
        keep = steps & (targets > 0)
        loss = next_event_loss(out.float(), targets, lengths, reduction="sum")
        correct = (out.argmax(-1)[keep] == targets[keep]).sum()
        return [loss.item(), float(keep.sum()), float(correct)]
    targets = batch["forecast"]
    keep = steps[..., None] & torch.isfinite(targets)
    cfg = model.config
    loss = forecast_loss(
        out.float(),
        targets,
        lengths,
        kind=cfg.forecast_loss,
        delta=cfg.huber_delta,
        reduction="sum",
    )
    abs_err = (out.float() - torch.nan_to_num(targets)).abs()[keep].sum()
    return [loss.item(), float(keep.sum()), float(abs_err)]


def _passes(sampler: TokenBudgetBatchSampler, epoch: int, passes: int) -> Iterator[list[int]]:
    """One epoch's batches: ``passes`` passes over the examples, each in a fresh order."""
    for p in range(passes):
        sampler.set_epoch(epoch * passes + p)
        yield from sampler


def _reduce(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _evaluate(
    model: SequenceModel, data: ShardData, max_tokens: int, device: torch.device, amp: bool
) -> list[float]:
    model.eval()
    totals = [0.0, 0.0, 0.0]
    if len(data.mine):
        sampler = TokenBudgetBatchSampler(
            data.padded[data.mine], max_tokens, shuffle=False, lengths=data.lengths[data.mine]
        )
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for local in sampler:
                batch = data.batch(data.mine[np.asarray(local)], device)
                out = model(batch["cat"], batch["num"], batch["length"])
                totals = [a + b for a, b in zip(totals, _sums(model, out, batch), strict=True)]
    return _reduce(totals, device)


def train_metric(task: str) -> str:
    """The metric each epoch reports next to the loss (`train_<m>`, `val_<m>`)."""
    return {"classify": "accuracy", "next_event": "top1", "forecast": "mae"}[task]


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """One DDP rank of a Ray Train run (the train stage)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    fit(
        cfg,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        session=ray.train,
        prepare_model=ray.train.torch.prepare_model,
    )


def tune_trial_loop(cfg: dict[str, Any]) -> None:
    """A whole training in one process: a Ray Tune trial (``seqops tune``). Tune holds the
    trial's CPUs, and stopping the trial ends this process and all it holds, which a trial
    driving its own Ray Train run cannot promise (its workers' placement group outlives a
    stopped trial in Ray 2.60)."""
    import ray.tune

    device = torch.device("cuda" if cfg.get("use_gpu") and torch.cuda.is_available() else "cpu")
    fit(cfg, rank=0, world=1, device=device, session=ray.tune, prepare_model=None)


def fit(
    cfg: dict[str, Any],
    *,
    rank: int,
    world: int,
    device: torch.device,
    session: Any,
    prepare_model: Any,
) -> None:
    """The training loop; ``session`` is ``ray.train`` or ``ray.tune`` (the same ``report``,
    ``get_checkpoint`` and ``Checkpoint``)."""
    torch.set_num_threads(int(cfg["threads"]))
    amp = device.type == "cuda" and cfg["amp"] == "bf16"
    torch.manual_seed(int(cfg["seed"]))

    config = ModelConfig.from_dict(cfg["model"])
    labelled_only = config.task == "classify"
    tokens = int(cfg["max_tokens"])
    train = ShardData(cfg["shards"], "train", rank, world, labelled_only, tokens)
    val = ShardData(cfg["shards"], "val", rank, world, labelled_only, tokens)
    core = build_model(config)
    model = prepare_model(core) if world > 1 else core.to(device)
    core = core.to(device)  # prepare_model moved it in place; DDP wraps the same module
    optimizer = torch.optim.AdamW(core.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sampler = TokenBudgetBatchSampler(
        train.padded, cfg["max_tokens"], rank=rank, world_size=world, seed=int(cfg["seed"]),
        owner=train.owner, lengths=train.lengths,
    )  # fmt: skip
    passes = int(cfg.get("passes", 1))
    total_steps = max(1, len(sampler) * passes * int(cfg["epochs"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, cfg["warmup_fraction"])
    )
    state = {"epoch": -1, "best": math.inf, "best_epoch": -1, "bad_epochs": 0}

    checkpoint = session.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt:
            ckpt_dir = Path(ckpt)
            core.load_weights(ckpt_dir / "weights.safetensors")
            optimizer.load_state_dict(
                torch.load(ckpt_dir / "optimizer.pt", map_location=device, weights_only=True)
            )
            scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=True))
            state = json.loads((ckpt_dir / "state.json").read_text())
            best_dir = Path(tempfile.mkdtemp(prefix="seqops-best-"))
            shutil.copy(ckpt_dir / "best.safetensors", best_dir / "best.safetensors")
    else:
        best_dir = Path(tempfile.mkdtemp(prefix="seqops-best-"))

    logger = _MlflowLogger(cfg) if rank == 0 else None
    metric = train_metric(config.task)
    for epoch in range(int(state["epoch"]) + 1, int(cfg["epochs"])):
        _maybe_fail(cfg.get("inject_failure"), epoch, rank)
        model.train()
        started, sums, tokens, steps = time.perf_counter(), [0.0, 0.0, 0.0], 0, 0
        for indices in _passes(sampler, epoch, passes):
            batch = train.batch(indices, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(batch["cat"], batch["num"], batch["length"])
                loss = core.loss(out.float(), batch, batch["length"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(core.parameters(), cfg["grad_clip"])
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                sums = [a + b for a, b in zip(sums, _sums(core, out.detach(), batch), strict=True)]
            tokens += int(batch["length"].sum())
            steps += 1
        elapsed = time.perf_counter() - started
        train_totals = _reduce([*sums, float(tokens), float(steps)], device)
        val_totals = _evaluate(core, val, cfg["max_tokens"], device, amp)
        val_loss = val_totals[0] / max(val_totals[1], 1.0)
        metrics = {
            "epoch": epoch,
            "train_loss": train_totals[0] / max(train_totals[1], 1.0),
            f"train_{metric}": train_totals[2] / max(train_totals[1], 1.0),
            "val_loss": val_loss,
            f"val_{metric}": val_totals[2] / max(val_totals[1], 1.0),
            "tokens_per_s": train_totals[3] / max(elapsed, 1e-9),
            "steps_per_s": steps / max(elapsed, 1e-9),
            "steps_per_epoch": steps,
            "epoch_seconds": elapsed,
            "lr": scheduler.get_last_lr()[0],
        }
        if val_loss < state["best"] - 1e-6:
            state.update(best=val_loss, best_epoch=epoch, bad_epochs=0)
            if rank == 0:
                core.save_weights(best_dir / "best.safetensors")
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        stop = state["bad_epochs"] >= int(cfg["patience"]) or epoch == int(cfg["epochs"]) - 1
        metrics.update(
            best_epoch=state["best_epoch"],
            best_val_loss=state["best"],
            stopped_early=float(stop and epoch < int(cfg["epochs"]) - 1),
        )
        _report(session, metrics, state, core, optimizer, scheduler, best_dir, rank, logger)
        if stop:
            break


def _report(
    session: Any,
    metrics: dict,
    state: dict,
    core: SequenceModel,
    optimizer: Any,
    scheduler: Any,
    best_dir: Path,
    rank: int,
    logger: Any,
) -> None:
    if rank != 0:
        session.report(metrics, checkpoint=None)
        return
    logger.log(metrics)
    with tempfile.TemporaryDirectory(prefix="seqops-ckpt-") as tmp:
        out = Path(tmp)
        core.save_weights(out / "weights.safetensors")
        shutil.copy(best_dir / "best.safetensors", out / "best.safetensors")
        torch.save(optimizer.state_dict(), out / "optimizer.pt")
        torch.save(scheduler.state_dict(), out / "scheduler.pt")
        (out / "state.json").write_text(json.dumps(state))
        session.report(metrics, checkpoint=session.Checkpoint.from_directory(tmp))


class _MlflowLogger:
    """Rank 0's per-epoch metrics into the driver's MLflow run, one log_batch per epoch."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(cfg["tracking_uri"])
        self.run_id = cfg["run_id"]

    def log(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(metrics["epoch"])
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=batch)
