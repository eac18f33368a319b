"""Training throughput: bucketed batches against padding to the max, and Ray Train's overhead.

On the default train split (``data/shards``: generated data, 32 optimal buckets, ``last``
windows of 256), with the train section of params.yaml:

1. real (non-pad) tokens per second of forward + backward + clip + optimizer step, single
   process, for the LSTM and the Transformer: token-budget batches drawn by
   ``TokenBudgetBatchSampler`` over the bucket bounds with true lengths and trimmed to their
   longest (what ``train_loop_per_worker`` feeds the model) against random batches of the
   same mean number of examples padded to ``window_len`` (a typical DataLoader's
   pad-everything-to-the-max). A round holds one bucketed batch from each of ``--strata``
   length strata of an epoch (so every round has the epoch's mix of short and long batches)
   and ``--global-steps`` padded batches; the two arms' steps interleave inside the round
   (the arm further behind in its share goes next) so both see the same machine load. The
   figure is the median of the per-round ratios; batch assembly is not timed. Target: at
   least 2x with 2 threads (PERFORMANCE.md measured 3.9x); the same with 1 thread is
   reported beside it, since 2 threads on a busy 2-core machine can be the slower setting.
2. Ray Train's overhead: the real train stage (``pipelines.train.run``, MLflow in a temp
   folder) with ONE worker (1 CPU, so 1 thread, gloo) against a plain single-process loop with
   the same per-step body (batch assembly, step, scheduler, metric sums) on the same batches
   (same sampler, seed and epochs), 1 thread. Steady state is the loop's own per-epoch
   ``steps_per_s`` after the first epoch (from MLflow's metric history), never ``fit()``'s
   wall time. Order: plain, 1 worker, plain, 2 workers, plain, 1 worker, plain; each
   1-worker fit is compared with the plain epochs right before and after it, the median
   of those ratios is the figure. Start-up (``fit()`` called to the first training batch
   requested, stamped inside the worker, with the worker loop's start, the end of its data
   read and rank 0's MLflow logger set-up between) is reported on its own. Target: at least
   0.9x.
3. Two Ray Train workers (1 CPU each) against one on this 2-core machine: per-epoch steps/s
   per rank and examples/s of all ranks. Two budgets: the one ``auto`` resolves for each
   worker count (on data this small ``train.min_steps_per_pass`` halves each worker's batch
   when a worker is added, so a second worker can only share the same number of steps:
   reported), and the same per-worker budget for both (``max_tokens`` is per worker: scaling
   out), target at least 1.5x.

``--quick``: 2 rounds of 4 + 1 steps for 1; 3 epochs per fit, one 1-worker fit for 2-3.

    .venv/bin/python benchmarks/training.py [--quick] [--rounds 4] [--strata 7] [--epochs 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks._common import (
    OUT_DIR,
    PARAMS,
    REPO,
    median,
    print_table,
    run_child,
    verdict,
    write_result,
)
from pipelines.config import Params, load_params
from pipelines.sampler import TokenBudgetBatchSampler
from pipelines.shard_reader import to_numpy_batch
from pipelines.train import model_config
from pipelines.train import plan as train_plan
from pipelines.train_loop import ShardData, _lr_lambda, _sums
from seqcore.manifest import load_manifest
from seqmodels import SequenceModel, build_model

TARGET_BUCKETED_VS_MAX = 2.0
TARGET_RAY_VS_PLAIN = 0.9
TARGET_TWO_VS_ONE = 1.5
MARKS_ENV = "SEQOPS_BENCH_MARKS"
"""Folder where the timed worker loop stamps its start; set for the Ray workers by ray.init."""
CPU = torch.device("cpu")
Batch = dict[str, torch.Tensor]


def _params(arch: str | None = None, **train: Any) -> Params:
    params = load_params(PARAMS)
    fields = {"use_gpu": "never", **train}
    t = params.train.with_model(architecture=arch) if arch else params.train
    params = dataclasses.replace(params, train=dataclasses.replace(t, **fields))
    if params.train.max_tokens == "auto":  # the budget the train stage would resolve
        shards = REPO / "data/shards"
        budget = train_plan(params, load_manifest(shards), shards).max_tokens
        params = dataclasses.replace(
            params, train=dataclasses.replace(params.train, max_tokens=budget)
        )
    return params


# --------------------------------------------------------------------------- 1. padding


def padded_to_max(data: ShardData, window_len: int) -> Batch:
    """Every example of ``data`` padded to ``window_len`` (the shards' own pad values)."""
    fill = {"cat": 0, "num": 0.0, "next_event": 0, "forecast": np.nan}
    out: dict[str, list[np.ndarray]] = {}
    placed = []
    for bound in np.unique(data.padded):
        rows = np.flatnonzero(data.padded == bound)
        placed.append(rows)
        arrays = to_numpy_batch(data.table, data.local_of_global[rows])
        for key, value in arrays.items():
            if key in fill:  # (n, bound, ...) -> (n, window_len, ...)
                pad = [(0, 0), (0, window_len - value.shape[1])] + [(0, 0)] * (value.ndim - 2)
                value = np.pad(value, pad, constant_values=fill[key])
            out.setdefault(key, []).append(value)
    order = torch.from_numpy(np.argsort(np.concatenate(placed)))  # row g = global example g
    return {k: torch.from_numpy(np.concatenate(v))[order] for k, v in out.items()}


def train_step(
    model: SequenceModel, optimizer: torch.optim.Optimizer, batch: Batch, clip: float
) -> None:
    out = model(batch["cat"], batch["num"], batch["length"])
    loss = model.loss(out, batch, batch["length"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


@dataclasses.dataclass
class PaddingInputs:
    """The train split, its token-budget batches and the same examples padded to the max."""

    data: ShardData
    full: Batch
    """Every example padded to ``window_len``, row ``g`` = global example ``g``."""
    ours: list[np.ndarray]
    """One epoch of ``TokenBudgetBatchSampler`` batches, sorted by their longest example."""
    theirs: list[np.ndarray]
    """One epoch of random batches of the same mean size (a shuffled DataLoader's)."""

    @classmethod
    def load(cls, seed: int = 0) -> PaddingInputs:
        params = _params()
        manifest = load_manifest(REPO / "data/shards")
        data = ShardData(str(REPO / "data/shards"), "train", 0, 1)
        full = padded_to_max(data, manifest.window_len)
        sampler = TokenBudgetBatchSampler(
            data.padded, params.train.max_tokens, seed=params.seed, owner=data.owner,
            lengths=data.lengths,
        )  # fmt: skip
        ours = [np.asarray(b) for b in sampler]
        ours = [ours[i] for i in np.argsort([data.lengths[b].max() for b in ours], kind="stable")]
        per_batch = round(len(data.padded) / len(ours))
        perm = np.random.default_rng(seed).permutation(len(data.padded))
        theirs = np.array_split(perm, int(np.ceil(len(perm) / per_batch)))
        return cls(data, full, ours, theirs)

    def rounds(
        self, rounds: int, strata: int, global_steps: int
    ) -> Iterator[dict[str, list[np.ndarray]]]:
        """Per round: one bucketed batch from each of ``strata`` length strata (so every round
        holds the epoch's mix of short and long batches) and ``global_steps`` random ones."""
        bins = np.array_split(np.arange(len(self.ours)), strata)
        for r in range(rounds):
            ours = [self.ours[b[r % len(b)]] for b in bins if len(b)]
            theirs = [self.theirs[(r * global_steps + i) % len(self.theirs)]
                      for i in range(global_steps)]  # fmt: skip
            yield {"bucketed": ours, "global_max": theirs}

    def batch(self, arm: str, idx: np.ndarray) -> Batch:
        if arm == "bucketed":
            return self.data.batch(idx, CPU)  # what the worker loop feeds: trimmed
        return {k: v[torch.from_numpy(idx)] for k, v in self.full.items()}


def measure_padding(
    inputs: PaddingInputs, arch: str, threads: int, rounds: int, strata: int, global_steps: int
) -> dict[str, Any]:
    """Real tokens/s of both arms; inside a round the two arms' steps interleave, the arm
    further behind in its share of the round going next, so both see the same load."""
    params = _params(arch)
    t = params.train
    torch.set_num_threads(threads)
    models = {}
    for arm in ("bucketed", "global_max"):
        torch.manual_seed(params.seed)
        model = build_model(model_config(params, load_manifest(REPO / "data/shards"))).train()
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        first = (inputs.ours if arm == "bucketed" else inputs.theirs)[-1]
        train_step(model, opt, inputs.batch(arm, first), t.grad_clip)  # warm-up, not timed
        models[arm] = (model, opt)
    rates: dict[str, list[float]] = {arm: [] for arm in models}
    totals = {arm: {"seconds": 0.0, "real": 0, "padded": 0, "steps": 0} for arm in models}
    for r, plan in enumerate(inputs.rounds(rounds, strata, global_steps)):
        done = {arm: 0 for arm in plan}
        seconds, real = {arm: 0.0 for arm in plan}, {arm: 0 for arm in plan}
        order = list(plan) if r % 2 == 0 else list(plan)[::-1]  # ties: A first, then B first
        while any(done[a] < len(plan[a]) for a in plan):
            arm = min((a for a in order if done[a] < len(plan[a])),
                      key=lambda a: done[a] / len(plan[a]))  # fmt: skip
            batch = inputs.batch(arm, plan[arm][done[arm]])  # assembly is not timed
            model, opt = models[arm]
            started = time.perf_counter()
            train_step(model, opt, batch, t.grad_clip)
            seconds[arm] += time.perf_counter() - started
            real[arm] += int(batch["length"].sum())
            totals[arm]["padded"] += batch["cat"].shape[0] * batch["cat"].shape[1]
            done[arm] += 1
        for arm in plan:
            rates[arm].append(real[arm] / seconds[arm])
            totals[arm]["seconds"] += seconds[arm]
            totals[arm]["real"] += real[arm]
            totals[arm]["steps"] += done[arm]
        print(f"  {arch} {threads} thread(s) round {r}: bucketed {rates['bucketed'][-1]:,.0f} "
              f"tok/s, global max {rates['global_max'][-1]:,.0f} tok/s", flush=True)  # fmt: skip
    ratios = [a / b for a, b in zip(rates["bucketed"], rates["global_max"], strict=True)]
    return {
        "architecture": arch,
        "threads": threads,
        "load_average_1min": os.getloadavg()[0],
        "rounds": rounds,
        "steps_per_round": {"bucketed": strata, "global_max": global_steps},
        "examples_per_batch_global_max": round(len(inputs.data.padded) / len(inputs.ours)),
        "batches_per_epoch": {"bucketed": len(inputs.ours), "global_max": len(inputs.theirs)},
        "tokens_per_s": {k: median(v) for k, v in rates.items()},
        "tokens_per_s_rounds": rates,
        "real_token_share": {k: v["real"] / v["padded"] for k, v in totals.items()},
        "steps_per_s": {k: v["steps"] / v["seconds"] for k, v in totals.items()},
        "ratio_rounds": ratios,
        "ratio": median(ratios),
        "ratio_of_totals": (totals["bucketed"]["real"] / totals["bucketed"]["seconds"])
        / (totals["global_max"]["real"] / totals["global_max"]["seconds"]),
    }


# --------------------------------------------------------------------------- 2-3. Ray Train


def timed_train_loop(cfg: dict[str, Any]) -> None:
    """``train_loop_per_worker`` unchanged, stamped: start, data read, MLflow logger, 1st batch."""
    from pipelines import train_loop

    marks = {"loop_start": time.time()}
    batch_fn, init_fn = train_loop.ShardData.batch, train_loop.ShardData.__init__

    def init(self: ShardData, *args: Any, **kwargs: Any) -> None:
        init_fn(self, *args, **kwargs)
        marks["data_read"] = time.time()  # the last of the two (train, val) counts

    def batch(self: ShardData, indices: Any, device: torch.device) -> Batch:
        if "first_step" not in marks:  # the first call is the first training step's batch
            import ray.train

            marks["first_step"] = time.time()
            rank = ray.train.get_context().get_world_rank()
            folder = Path(os.environ[MARKS_ENV])
            (folder / f"{cfg['run_id']}-rank{rank}.json").write_text(json.dumps(marks))
        return batch_fn(self, indices, device)

    logger_cls = train_loop._MlflowLogger

    class StampedLogger(logger_cls):  # type: ignore[misc, valid-type]
        def __init__(self, config: dict[str, Any]) -> None:
            marks["logger_start"] = time.time()  # rank 0 only: imports mlflow here
            super().__init__(config)
            marks["logger_ready"] = time.time()

    cls = train_loop.ShardData
    cls.batch, cls.__init__ = batch, init  # type: ignore[method-assign]
    train_loop._MlflowLogger = StampedLogger  # type: ignore[misc, assignment]
    try:
        train_loop.train_loop_per_worker(cfg)
    finally:
        cls.batch, cls.__init__ = batch_fn, init_fn  # type: ignore[method-assign]
        train_loop._MlflowLogger = logger_cls  # type: ignore[misc]


def ray_fit(workers: int, epochs: int, work: Path, budget: int | None = None) -> dict[str, Any]:
    """One real train stage run; the loop's own per-epoch metrics and the start-up stamps.
    ``budget``: this per-worker ``max_tokens`` instead of what ``auto`` resolves to for this
    many workers."""
    from mlflow.tracking import MlflowClient
    from ray.train.torch import TorchTrainer

    from pipelines import train

    params = _params(
        epochs=epochs, patience=epochs + 1, num_workers=workers, cpus_per_worker=1,
        storage_path=str(work / "ray_results"), experiment="bench-training",
        **({"max_tokens": budget} if budget else {}),
    )  # fmt: skip
    fit_called: list[float] = []
    original_fit = TorchTrainer.fit

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        fit_called.append(time.time())
        return original_fit(self, *args, **kwargs)

    started = time.perf_counter()
    with (
        mock.patch.object(TorchTrainer, "fit", fit),
        mock.patch.object(train, "train_loop_per_worker", timed_train_loop),
    ):
        summary = train.run(params, REPO / "data/shards", REPO / "data/validated", None, root=work)
    total = time.perf_counter() - started
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    history = {
        name: [m.value for m in sorted(client.get_metric_history(summary["run_id"], name),
                                       key=lambda m: m.step)]
        for name in ("steps_per_s", "tokens_per_s", "epoch_seconds")
    }  # fmt: skip
    marks = [
        json.loads((work / "marks" / f"{summary['run_id']}-rank{r}.json").read_text())
        for r in range(workers)
    ]
    return {
        "workers": workers,
        "epochs": epochs,
        **history,
        "startup_s": max(m["first_step"] for m in marks) - fit_called[0],
        "startup_to_loop_s": max(m["loop_start"] for m in marks) - fit_called[0],
        "startup_to_data_s": max(m["data_read"] for m in marks) - fit_called[0],
        "mlflow_logger_s": marks[0]["logger_ready"] - marks[0]["logger_start"],
        "fit_s": summary["fit_seconds"],
        "run_s": total,
    }


class PlainLoop:
    """The worker loop's per-step body without Ray: 1 process, same batches, same work."""

    def __init__(self, epochs: int, threads: int = 1) -> None:
        params = _params(num_workers=1)  # the budget the 1-worker fit it is compared with gets
        self.t, self.seed = params.train, params.seed
        torch.set_num_threads(threads)
        self.data = ShardData(str(REPO / "data/shards"), "train", 0, 1)
        torch.manual_seed(self.seed)
        self.model = build_model(model_config(params, load_manifest(REPO / "data/shards")))
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.t.lr, weight_decay=self.t.weight_decay
        )
        self.sampler = TokenBudgetBatchSampler(
            self.data.padded, self.t.max_tokens, seed=self.seed, owner=self.data.owner,
            lengths=self.data.lengths,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(len(self.sampler) * epochs, self.t.warmup_fraction)
        )

    def epoch(self, epoch: int) -> dict[str, float]:
        model, data = self.model.train(), self.data
        self.sampler.set_epoch(epoch)
        started, sums, tokens, steps = time.perf_counter(), [0.0, 0.0, 0.0], 0, 0
        for indices in self.sampler:
            batch = data.batch(indices, CPU)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):  # as the loop
                out = model(batch["cat"], batch["num"], batch["length"])
                loss = model.loss(out.float(), batch, batch["length"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.t.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            with torch.no_grad():
                sums = [a + b for a, b in zip(sums, _sums(model, out.detach(), batch), strict=True)]
            tokens += int(batch["length"].sum())
            steps += 1
        elapsed = time.perf_counter() - started
        return {"steps_per_s": steps / elapsed, "tokens_per_s": tokens / elapsed,
                "epoch_seconds": elapsed}  # fmt: skip


def measure_ray(epochs: int, one_worker_fits: int, work: Path) -> dict[str, Any]:
    """Plain epochs, then fits alternating with plain epochs: P 1w P 2w P [1w P]."""
    import ray

    (work / "marks").mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env = {"PYTHONPATH": str(REPO), MARKS_ENV: str(work / "marks")}
    os.environ.update(env)
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
        object_store_memory=256 * 1024**2, runtime_env={"env_vars": env},
    )  # fmt: skip
    sessions: list[list[dict[str, float]]] = []
    fits: list[dict[str, Any]] = []
    loads: list[tuple[str, float]] = []
    # A fresh process per plain session, with the one OpenMP thread Ray gives a 1-CPU worker:
    # nothing left over from measurement 1 (2 threads, two models) or the Ray driver.
    os.environ["OMP_NUM_THREADS"] = "1"

    def plain_session() -> None:
        child = run_child([str(Path(__file__).resolve()), "--plain-session", str(epochs)])
        sessions.append(child.result["epochs"])
        loads.append(("plain", os.getloadavg()[0]))
        print(f"  plain: {[round(p['steps_per_s'], 2) for p in sessions[-1]]} steps/s, "
              f"load {loads[-1][1]:.1f}", flush=True)  # fmt: skip

    n_train = int(
        sum(
            b.examples for b in load_manifest(REPO / "data/shards").splits["train"].buckets.values()
        )
    )
    # Per worker, the budget auto gives one worker: 2 workers at the same per-worker batch
    # (what scaling out means), beside 2 workers at the smaller budget auto gives them on data
    # this small (train.min_steps_per_pass holds each worker's steps per pass).
    same = int(_params(num_workers=1).train.max_tokens)
    try:
        plain_session()
        for workers, budget in [(1, None), (2, None), (2, same), (1, None)][: 2 + one_worker_fits]:
            fit = ray_fit(workers, epochs, work, budget)
            fit["budget"] = budget
            fit["steady_steps_per_s"] = median(fit["steps_per_s"][1:])
            fit["steady_examples_per_s"] = median(n_train / s for s in fit["epoch_seconds"][1:])
            fits.append(fit)
            loads.append((f"ray {workers}", os.getloadavg()[0]))
            print(f"  ray {workers} worker(s): steps/s {[round(v, 2) for v in fit['steps_per_s']]}, "
                  f"start-up {fit['startup_s']:.1f} s, load {loads[-1][1]:.1f}", flush=True)  # fmt: skip
            plain_session()
    finally:
        ray.shutdown()
    plain_epochs = [e for session in sessions for e in session]
    # Each 1-worker fit against the plain epochs right before and after it (A B A).
    ones = [(i, f) for i, f in enumerate(fits) if f["workers"] == 1]
    ray_vs_plain = [
        f["steady_steps_per_s"] / median(e["steps_per_s"] for e in sessions[i] + sessions[i + 1])
        for i, f in ones
    ]
    one_steps = median(f["steady_steps_per_s"] for _, f in ones)
    one_examples = median(f["steady_examples_per_s"] for _, f in ones)
    two = next(f for f in fits if f["workers"] == 2 and f["budget"] is None)
    two_same = next(f for f in fits if f["workers"] == 2 and f["budget"] is not None)
    return {
        "train_examples": n_train,
        "plain_sessions": sessions,
        "load_average_1min": loads,
        "plain_steps_per_s": median(e["steps_per_s"] for e in plain_epochs),
        "plain_examples_per_s": median(n_train / e["epoch_seconds"] for e in plain_epochs),
        "plain_epoch_s": median(e["epoch_seconds"] for e in plain_epochs),
        "fits": fits,
        "one": {
            "steady_steps_per_s": one_steps,
            "steady_examples_per_s": one_examples,
            "startup_s": median(f["startup_s"] for _, f in ones),
            "startup_to_loop_s": median(f["startup_to_loop_s"] for _, f in ones),
            "startup_to_data_s": median(f["startup_to_data_s"] for _, f in ones),
            "mlflow_logger_s": median(f["mlflow_logger_s"] for _, f in ones),
        },
        "two": two,
        "two_same_budget": two_same,
        "same_budget": same,
        "ray_vs_plain_fits": ray_vs_plain,
        "ray_vs_plain": median(ray_vs_plain),
        "two_vs_one_steps": two["steady_steps_per_s"] / one_steps,
        "two_vs_one_examples": two["steady_examples_per_s"] / one_examples,
        "two_vs_one_examples_same_budget": two_same["steady_examples_per_s"] / one_examples,
    }


def report(padding: list[dict[str, Any]], ray_result: dict[str, Any] | None) -> str:
    rows = []
    for p in padding:
        tps, gated = p["tokens_per_s"], p["threads"] == 2  # the target is set for 2 threads
        rows.append([
            f"1. {p['architecture']} real tokens/s, bucketed vs global max ({p['threads']} thr)",
            f"{tps['global_max']:,.0f}", f"{tps['bucketed']:,.0f}", f"{p['ratio']:.2f}x",
            f">= {TARGET_BUCKETED_VS_MAX}x" if gated else "reported",
            verdict(p["ratio"] >= TARGET_BUCKETED_VS_MAX) if gated else "-",
        ])  # fmt: skip
    if ray_result is not None:
        r, one, two = ray_result, ray_result["one"], ray_result["two"]
        rows += [
            ["2. steady steps/s, Ray Train 1 worker vs plain loop (1 thread)",
             f"{r['plain_steps_per_s']:.3f}", f"{one['steady_steps_per_s']:.3f}",
             f"{r['ray_vs_plain']:.2f}x ("
             + ", ".join(f"{v:.2f}" for v in r["ray_vs_plain_fits"]) + ")",
             f">= {TARGET_RAY_VS_PLAIN}x",
             verdict(r["ray_vs_plain"] >= TARGET_RAY_VS_PLAIN)],
            ["2. start-up, fit() to first step, 1 worker (s; vs a plain epoch)",
             f"{r['plain_epoch_s']:.1f}", f"{one['startup_s']:.1f}",
             f"{one['startup_s'] / r['plain_epoch_s']:.2f}x", "reported", "-"],
            ["2. start-up parts: to worker loop / data read / (MLflow logger of) first step (s)",
             "-", f"{one['startup_to_loop_s']:.1f} / "
             f"{one['startup_to_data_s'] - one['startup_to_loop_s']:.1f} / "
             f"{one['startup_s'] - one['startup_to_data_s']:.1f} "
             f"({one['mlflow_logger_s']:.1f})", "-", "reported", "-"],
            ["3. steps/s per rank, 2 workers vs 1", f"{one['steady_steps_per_s']:.3f}",
             f"{two['steady_steps_per_s']:.3f}", f"{r['two_vs_one_steps']:.2f}x", "reported", "-"],
            ["3. examples/s, 2 workers vs 1 (auto budget for each)",
             f"{one['steady_examples_per_s']:.1f}",
             f"{two['steady_examples_per_s']:.1f}", f"{r['two_vs_one_examples']:.2f}x",
             "reported", "-"],
            [f"3. examples/s, 2 workers vs 1 (both {r['same_budget']} tokens per worker)",
             f"{one['steady_examples_per_s']:.1f}",
             f"{r['two_same_budget']['steady_examples_per_s']:.1f}",
             f"{r['two_vs_one_examples_same_budget']:.2f}x", f">= {TARGET_TWO_VS_ONE}x",
             verdict(r["two_vs_one_examples_same_budget"] >= TARGET_TWO_VS_ONE)],
            ["3. start-up, fit() to first step, 2 workers (s)", f"{one['startup_s']:.1f}",
             f"{two['startup_s']:.1f}", f"{two['startup_s'] / one['startup_s']:.2f}x",
             "reported", "-"],
        ]  # fmt: skip
    headers = ["measurement", "baseline", "ours", "ratio", "target", "verdict"]
    return print_table(headers, rows, "Training (medians of interleaved repetitions)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter: see the module doc")
    parser.add_argument("--rounds", type=int, default=4, help="A/B rounds (measurement 1)")
    parser.add_argument("--strata", type=int, default=7,
                        help="bucketed steps per round, one per length stratum (1)")  # fmt: skip
    parser.add_argument("--global-steps", type=int, default=2,
                        help="padded-to-max steps per round (1)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=6, help="epochs per Ray fit (>= 2)")
    parser.add_argument("--no-ray", action="store_true", help="measurement 1 only")
    # Internal: one plain-loop session in this (child) process.
    parser.add_argument("--plain-session", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_session:
        plain = PlainLoop(args.plain_session)
        plain.epoch(0)  # warm-up: the Ray worker's first epoch is left out too
        session = [plain.epoch(e) for e in range(1, args.plain_session)]
        write_result(args.result, {"epochs": session})
        return 0
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not (REPO / "data/shards/manifest.json").is_file():
        print("data/shards is missing: run `dvc repro shard` first", file=sys.stderr)
        return 2
    rounds, strata, global_steps = (
        (2, 4, 1) if args.quick else (args.rounds, args.strata, args.global_steps)
    )
    epochs = 3 if args.quick else max(2, args.epochs)
    started = time.perf_counter()
    inputs = PaddingInputs.load()
    padding = [
        measure_padding(inputs, arch, threads, rounds, strata, global_steps)
        for threads in (2, 1)
        for arch in ("lstm", "transformer")
    ]
    ray_result = None
    if not args.no_ray:
        with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
            ray_result = measure_ray(epochs, 1 if args.quick else 2, Path(tmp))
    table = report(padding, ray_result)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = {"quick": args.quick, "padding": padding, "ray": ray_result, "table": table,
           "wall_s": time.perf_counter() - started}  # fmt: skip
    (OUT_DIR / "training.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {OUT_DIR / 'training.json'} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
