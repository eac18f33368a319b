"""The team profile (scripts/cluster.sh), brought up and down by this module: an S3-compatible
object store, MLflow's server on PostgreSQL, and two Ray nodes of one CPU each, the second of
which cannot see this repository or /tmp. ``make test-cluster``; not part of ``make test``.

What must hold there: code reaches the blind node only through Ray's runtime environment,
data only through the object store, metrics only through the MLflow server, and training
with two workers runs one on each node.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "generate": {"n_entities": 400},
    "rows_per_part": 5000,
    "engine": "ray",
}


def _env_file() -> dict[str, str]:
    env = {}
    for line in (REPO / ".cluster" / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture(scope="module")
def team():
    up = subprocess.run(
        ["bash", "scripts/cluster.sh", "up"], cwd=REPO, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        yield {**os.environ, **_env_file(), "PYTHONPATH": str(REPO)}
    finally:
        subprocess.run(["bash", "scripts/cluster.sh", "down"], cwd=REPO, capture_output=True)


def _python(env, *args: str, cwd: Path, timeout: int = 600) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args}: {done.stderr[-4000:]}"
    return done.stdout


def test_the_blind_node_runs_shipped_code_and_cannot_see_the_repository(team, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        """
import json, os, sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from seqcore.ray_connect import connect
connect()
head = ray.get_runtime_context().get_node_id()
[other] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]

@ray.remote(num_cpus=1)
def look(repo):
    import pipelines.shard  # from the job's py_modules: the node has no checkout
    return {"sees_repo": os.path.exists(os.path.join(repo, "params.yaml")),
            "code_from": os.path.dirname(pipelines.shard.__file__)}

strategy = NodeAffinitySchedulingStrategy(other, soft=False)
print(json.dumps(ray.get(look.options(scheduling_strategy=strategy).remote(sys.argv[1]))))
"""
    )
    seen = json.loads(_python(team, str(probe), str(REPO), cwd=tmp_path).strip().splitlines()[-1])
    assert seen["sees_repo"] is False
    assert not seen["code_from"].startswith(str(REPO))


def test_data_stages_and_training_across_both_nodes(team, tmp_path):
    from mlflow.tracking import MlflowClient

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(SMALL, store=team["SEQOPS_DATA_STORE"])
    params["train"].update(
        epochs=2, num_workers=2, cpus_per_worker=1, storage_path=team["SEQOPS_TRAIN_STORAGE"]
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = ["-m", "pipelines.{}", "--params", "params.yaml"]
    stages = [
        ["ingest", "--out", "data/events", "--metrics", "reports/ingest.json"],
        ["validate", "--events", "data/events", "--out", "data/validated", "--quarantine",
         "data/quarantine/q.parquet", "--report", "reports/validation.json", "--docs",
         "reports/docs"],
        ["shard", "--events", "data/validated", "--out", "data/shards"],
        ["train", "--shards", "data/shards", "--events", "data/validated", "--report",
         "reports/train.json", "--model-dir", "models/model"],
    ]  # fmt: skip
    for name, *rest in stages:
        _python(team, *[a.format(name) for a in run], *rest, cwd=tmp_path)
    # Data on the store, locally only pointers.
    for output in ("events", "validated"):
        assert [p.name for p in (tmp_path / "data" / output).iterdir()] == ["_STORE.json"]
    # Two workers of one CPU each on two nodes of one CPU each: one worker per node.
    report = json.loads((tmp_path / "reports" / "train.json").read_text())
    client = MlflowClient(team["MLFLOW_TRACKING_URI"])
    logged = client.get_run(report["run_id"])
    assert logged.data.params["train.num_workers"] == "2"
    assert len(client.get_metric_history(report["run_id"], "val_loss")) == 2
    assert report["workers"] == 2
    # The model's files went to the object store, through the server.
    import pyarrow.fs as pafs

    store = pafs.S3FileSystem(
        endpoint_override=team["AWS_ENDPOINT_URL"].split("//")[1], scheme="http",
        region="us-east-1",
    )  # fmt: skip
    files = store.get_file_info(pafs.FileSelector("seqops-mlflow/artifacts", recursive=True))
    assert any(f.base_name == "weights.safetensors" for f in files)
    # Checkpoints on the store too (a worker on either node could resume from them).
    checkpoints = store.get_file_info(pafs.FileSelector("seqops-data/ray_results", recursive=True))
    assert any(f.base_name == "optimizer.pt" for f in checkpoints)


def test_training_survives_the_loss_of_a_node(team, tmp_path):
    """Kill every process of the blind node in the middle of training (a machine lost), then
    bring a node back: the run resumes from its last checkpoint on the store and completes
    in the same MLflow run."""
    import time

    from mlflow.tracking import MlflowClient

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(SMALL, store=team["SEQOPS_DATA_STORE"])
    epochs = 6
    params["train"].update(
        epochs=epochs, patience=epochs + 1, num_workers=2, cpus_per_worker=1,
        storage_path=team["SEQOPS_TRAIN_STORAGE"], experiment="node-loss",
    )  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    base = [sys.executable, "-m"]
    for stage, args in (
        ("pipelines.ingest", ["--out", "data/events"]),
        ("pipelines.validate", ["--events", "data/events", "--out", "data/validated",
                                "--quarantine", "data/q.parquet", "--report", "v.json",
                                "--docs", "docs"]),
        ("pipelines.shard", ["--events", "data/validated", "--out", "data/shards"]),
    ):  # fmt: skip
        _python(team, "-m", stage, "--params", "params.yaml", *args, cwd=tmp_path)
    log = open(tmp_path / "train.log", "w")  # noqa: SIM115 (closed below)
    training = subprocess.Popen(
        [*base, "pipelines.train", "--params", "params.yaml", "--shards", "data/shards",
         "--events", "data/validated", "--report", "train.json", "--model-dir", "model"],
        cwd=tmp_path, env=team, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = MlflowClient(team["MLFLOW_TRACKING_URI"])
    run_id, seen = None, 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and training.poll() is None:
        experiment = client.get_experiment_by_name("node-loss")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs:
            run_id = runs[0].info.run_id
            seen = len(client.get_metric_history(run_id, "val_loss"))
            if seen >= 1:
                break
        time.sleep(0.5)
    assert run_id and 1 <= seen < epochs, f"no epoch to resume from, or done: {seen}"
    lost = subprocess.run(
        ["bash", "scripts/cluster.sh", "restart-worker"], cwd=REPO, capture_output=True,
        text=True,
    )  # fmt: skip
    assert lost.returncode == 0, lost.stderr[-2000:]
    assert training.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-4000:]
    log.close()
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["run_id"] == run_id  # the same MLflow run, resumed
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run_id, "val_loss")}
    assert len(steps) == report["epochs_run"] == epochs
