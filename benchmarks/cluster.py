"""Cluster mode on this machine: the team profile (scripts/cluster.sh; needs root, as it does).

1. The profile's time to come up (object store, PostgreSQL, MLflow server, two Ray nodes) and
   to go down: ``scripts/cluster.sh up`` and ``down``, wall time, each cycle.
2. Two training workers on two nodes against two on one node, on the same cluster: the
   profile with two CPUs per node, ``train.placement_strategy`` STRICT_SPREAD (one worker per
   node) against STRICT_PACK (both on one node), fits in the order pack, spread, spread,
   pack, ...; data on the profile's object store, metrics through its MLflow server. The
   figure is real tokens per second of all ranks (the train loop's ``tokens_per_s``) after
   the first epoch, median over each arm's epochs; the ratio spread / pack. Both arms run the
   same steps on the same two cores: what the ratio shows is the price of the nodes' boundary
   (DDP's all-reduce over TCP between raylets instead of within one), not more hardware.
3. MLflow logging per epoch: rank 0's one ``log_batch`` of an epoch's metrics (the train
   loop's own ``_MlflowLogger``, with the metrics of a real epoch) against the profile's
   MLflow server (PostgreSQL) and against a SQLite store, alternated, median of --logs each.

    .venv/bin/python benchmarks/cluster.py [--quick] [--rounds 2] [--epochs 4] [--logs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from benchmarks._common import PARAMS, REPO, median, print_table

CLUSTER = ["bash", str(REPO / "scripts" / "cluster.sh")]


def _profile(command: str, node_cpus: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [*CLUSTER, command], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "SEQOPS_NODE_CPUS": str(node_cpus)},
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"cluster.sh {command} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def _team_env() -> dict[str, str]:
    env = dict(os.environ)
    for line in (REPO / ".cluster" / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    env["PYTHONPATH"] = str(REPO)
    return env


def _stage(env: dict[str, str], work: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=work, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{(done.stdout + done.stderr)[-3000:]}")


def _params(work: Path, env: dict[str, str], epochs: int, strategy: str) -> None:
    params = yaml.safe_load(PARAMS.read_text())
    params["data"].update(store=env["SEQOPS_DATA_STORE"], engine="ray")
    params["train"].update(
        epochs=epochs, patience=epochs + 1, num_workers=2, cpus_per_worker=1,
        placement_strategy=strategy, experiment="cluster-benchmark",
    )  # fmt: skip
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _fit(env: dict[str, str], work: Path, epochs: int, strategy: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    _params(work, env, epochs, strategy)
    _stage(env, work, "pipelines.train", "--params", "params.yaml", "--shards", "data/shards",
           "--events", "data/validated", "--report", "train.json", "--model-dir", "model")  # fmt: skip
    report = json.loads((work / "train.json").read_text())
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    history = {
        name: [m.value for m in sorted(client.get_metric_history(report["run_id"], name),
                                       key=lambda m: m.step)]
        for name in ("tokens_per_s", "epoch_seconds")
    }  # fmt: skip
    return {"strategy": strategy, **history, "steady_tokens_per_s": median(history["tokens_per_s"][1:]),
            "last_epoch_metrics": report["last_epoch_metrics"]}  # fmt: skip


def _logging(env: dict[str, str], metrics: dict[str, float], calls: int) -> dict[str, float]:
    """Median seconds of one epoch's log_batch: the MLflow server against a SQLite store."""
    from mlflow.tracking import MlflowClient

    from pipelines.train_loop import _MlflowLogger

    loggers = {}
    with tempfile.TemporaryDirectory(prefix="seqops-mlflow-") as tmp:
        for name, uri in (("server", env["MLFLOW_TRACKING_URI"]),
                          ("sqlite", f"sqlite:///{tmp}/mlflow.db")):  # fmt: skip
            client = MlflowClient(uri)
            experiment = client.create_experiment(f"logging-{time.time_ns()}")
            run = client.create_run(experiment)
            loggers[name] = _MlflowLogger({"tracking_uri": uri, "run_id": run.info.run_id})
        times: dict[str, list[float]] = {name: [] for name in loggers}
        for epoch in range(calls):
            for name, logger in loggers.items():
                started = time.perf_counter()
                logger.log({**metrics, "epoch": epoch})
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 3 epochs, 20 logs")
    parser.add_argument("--rounds", type=int, default=2, help="pack+spread pairs of fits")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--logs", type=int, default=40, help="log_batch calls per store")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.epochs, args.logs = 1, 3, 20
    if os.geteuid() != 0:
        raise SystemExit("the team profile needs root (PostgreSQL, a mount namespace)")
    # What a team profile can be up while this runs: none (it would be taken down).
    _profile("down", 2)
    up = [_profile("up", 2)]
    work = Path(tempfile.mkdtemp(prefix="seqops-cluster-bench-"))
    try:
        env = _team_env()
        _params(work, env, args.epochs, "STRICT_PACK")
        print("data stages on the profile (ingest, validate, shard; data on the store)", flush=True)
        _stage(env, work, "pipelines.ingest", "--params", "params.yaml", "--out", "data/events")
        _stage(env, work, "pipelines.validate", "--params", "params.yaml", "--events",
               "data/events", "--out", "data/validated", "--quarantine", "data/q.parquet",
               "--report", "validation.json", "--docs", "docs")  # fmt: skip
        _stage(env, work, "pipelines.shard", "--params", "params.yaml", "--events",
               "data/validated", "--out", "data/shards")  # fmt: skip
        order = ["STRICT_PACK", "STRICT_SPREAD", "STRICT_SPREAD", "STRICT_PACK"] * args.rounds
        fits = []
        for strategy in order[: 2 * args.rounds]:
            fits.append(_fit(env, work, args.epochs, strategy))
            print(f"  {strategy}: tokens/s {[round(v) for v in fits[-1]['tokens_per_s']]}",
                  flush=True)  # fmt: skip
        logged = _logging(env, fits[-1]["last_epoch_metrics"], args.logs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        down = [_profile("down", 2)]
    # A second cycle for the up/down figures, at the profile's own size (one CPU a node).
    up.append(_profile("up", 1))
    down.append(_profile("down", 1))

    pack = median(f["steady_tokens_per_s"] for f in fits if f["strategy"] == "STRICT_PACK")
    spread = median(f["steady_tokens_per_s"] for f in fits if f["strategy"] == "STRICT_SPREAD")
    print()
    print_table(
        ["measure", "figure"],
        [
            ["profile up (s), each cycle", ", ".join(f"{v:.1f}" for v in up)],
            ["profile down (s), each cycle", ", ".join(f"{v:.1f}" for v in down)],
            ["2 workers on 1 node: tokens/s (median, after epoch 1)", f"{pack:,.0f}"],
            ["2 workers on 2 nodes: tokens/s", f"{spread:,.0f}"],
            ["2 nodes / 1 node", f"{spread / pack:.2f}x"],
            ["log_batch per epoch, MLflow server (ms)", f"{logged['server'] * 1e3:.1f}"],
            ["log_batch per epoch, SQLite (ms)", f"{logged['sqlite'] * 1e3:.1f}"],
            ["server / SQLite", f"{logged['server'] / logged['sqlite']:.2f}x"],
        ],
        title="Cluster mode on this machine (team profile)",
    )


if __name__ == "__main__":
    main()
