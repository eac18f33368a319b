"""The team profile (scripts/cluster.sh), brought up and down by this module: an S3-compatible
object store, MLflow's server on PostgreSQL, and two Ray nodes of one CPU each, the second of
which cannot see this repository or /tmp. ``make test-cluster``; not part of ``make test``.

What must hold there: code reaches the blind node only through Ray's runtime environment,
data only through the object store, metrics only through the MLflow server, and training
with two workers runs one on each node. A team's repository (data.store and a DVC remote on
the object store) runs the whole ``dvc repro``, pushes, and a fresh clone pulls the same data
and reproduces nothing; serving loads the champion from the MLflow server and follows a
promotion made by another process; training survives the loss of a node.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["schema"]
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
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        yield {**os.environ, **_env_file(), "PYTHONPATH": str(REPO), "PATH": path}
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


def _team_repository(where: Path, env: dict[str, str]) -> None:
    """This checkout's files (committed or not) as a team's repository in team mode: data.store
    on the object store, a DVC remote there too, committed."""
    where.mkdir()
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
        check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, where / name)
    params = yaml.safe_load((where / "params.yaml").read_text())
    params["data"].update(SMALL, store=env["SEQOPS_DATA_STORE"])
    params["train"].update(epochs=2, num_workers=2, cpus_per_worker=1)
    params["register"]["versions"] = "all"  # a second version, whatever the gate says
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        ["dvc", "remote", "add", "-d", "team", "s3://seqops-dvc/cache"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "team mode"],
    ):
        subprocess.run(command, cwd=where, env=env, check=True, capture_output=True)


def _run(env, *command: str, cwd: Path, timeout: int = 900) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command}: {(done.stdout + done.stderr)[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def repro(team, tmp_path_factory):
    """The whole ``dvc repro`` of a team's repository on the profile; its folder."""
    repo = tmp_path_factory.mktemp("team") / "a"
    _team_repository(repo, team)
    _run(team, "dvc", "repro", cwd=repo)
    return repo


def test_dvc_repro_runs_every_stage_across_both_nodes(team, repro):
    from mlflow.tracking import MlflowClient

    # Data on the store, locally only pointers.
    for output in ("events", "validated"):
        assert [p.name for p in (repro / "data" / output).iterdir()] == ["_STORE.json"]
    # Two workers of one CPU each on two nodes of one CPU each: one worker per node.
    report = json.loads((repro / "reports" / "train.json").read_text())
    client = MlflowClient(team["MLFLOW_TRACKING_URI"])
    assert client.get_run(report["run_id"]).data.params["train.num_workers"] == "2"
    assert len(client.get_metric_history(report["run_id"], "val_loss")) == 2
    assert report["workers"] == 2
    # Registered in the server's registry, the model's files in the object store.
    gate = json.loads((repro / "reports" / "gate.json").read_text())
    assert gate["registered"] and gate["version"] == 1
    store = pafs.S3FileSystem(
        endpoint_override=team["AWS_ENDPOINT_URL"].split("//")[1], scheme="http",
        region="us-east-1",
    )  # fmt: skip
    files = store.get_file_info(pafs.FileSelector("seqops-mlflow/artifacts", recursive=True))
    assert any(f.base_name == "weights.safetensors" for f in files)
    # Checkpoints in the data store (a worker on either node could resume from them).
    checkpoints = store.get_file_info(
        pafs.FileSelector("seqops-data/data/ray_results", recursive=True)
    )
    assert any(f.base_name == "optimizer.pt" for f in checkpoints)


def test_a_fresh_clone_pulls_the_same_data_and_reproduces_nothing(team, repro, tmp_path):
    _run(team, "dvc", "push", cwd=repro)
    _run(team, "git", "add", "-A", cwd=repro)
    _run(team, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro",
         cwd=repro)  # fmt: skip
    clone = tmp_path / "b"
    _run(team, "git", "clone", "-q", str(repro), str(clone), cwd=tmp_path)
    _run(team, "dvc", "pull", cwd=clone)
    for output in ("events", "validated", "shards"):
        pointer = clone / "data" / output / "_STORE.json"
        assert pointer.read_bytes() == (repro / "data" / output / "_STORE.json").read_bytes()
    assert (clone / "models" / "model").is_dir()
    counted = _run(team, sys.executable, "-c",
                   "from seqcore.store import read_events; print(read_events('data/validated')"
                   ".num_rows)", cwd=clone)  # fmt: skip
    validation = json.loads((repro / "reports" / "validation.json").read_text())
    assert int(counted) == validation["rows_out"]
    assert "Data and pipelines are up to date" in _run(team, "dvc", "status", cwd=clone)
    rerun = _run(team, "dvc", "repro", cwd=clone)
    assert "Running stage" not in rerun and "up to date" in rerun


# One entity's events from the validated data on the store, as a scoring request (run with
# the profile's environment: the store's endpoint and keys).
REQUEST = """
import json, sys
from seqcore.store import read_events
entity_key, label = sys.argv[1:3]
rows = read_events("data/validated").slice(0, 200).to_pylist()
keep = [k for k in rows[0] if k not in (entity_key, label, "_arrival")]
entity = rows[0][entity_key]
events = [{k: r[k].isoformat() if hasattr(r[k], "isoformat") else r[k] for k in keep}
          for r in rows if r[entity_key] == entity]
print(json.dumps({"sequences": [{"entity": str(entity), "events": events}]}))
"""


def _score(port: int, body: bytes) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/score", body, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_serving_loads_the_champion_from_the_server_and_follows_a_promotion(team, repro, tmp_path):
    """``seqops serve`` on the cluster: the champion from the MLflow server (its files from the
    object store), replicas on the blind node too; a promotion made by another process moves
    the endpoint to the new version without a restart."""
    port = 8611
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    serving = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--alias", "champion", "--port",
         str(port), "--config", str(REPO / ".cluster" / "serve_config.yaml"),
         "--stream-store", "memory"],
        cwd=repro, env=team, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "serving models:/" not in (tmp_path / "serve.log").read_text():
            assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(1)
        body = _run(team, sys.executable, "-c", REQUEST, SCHEMA["entity"], SCHEMA["label"],
                    cwd=repro).encode()  # fmt: skip
        assert _score(port, body)["model"]["version"] == "1"
        placed = _run(team, sys.executable, "-c", PLACEMENT, cwd=tmp_path)
        assert "blind" in placed.split(), placed  # serving code reached the blind node
        # A second version, then its promotion, each from a process of its own.
        _run(team, "dvc", "repro", "-f", "-s", "register", cwd=repro)
        _run(team, sys.executable, "-m", "seqops", "registry", "promote", "2",
             "--override-gate", "--reason", "cluster test", cwd=repro)  # fmt: skip
        deadline = time.monotonic() + 90  # the replicas poll the alias every 10 s
        while _score(port, body)["model"]["version"] != "2":
            if time.monotonic() > deadline:
                registry = _run(team, sys.executable, "-m", "seqops", "registry", "list",
                                cwd=repro)  # fmt: skip
                pytest.fail(f"the promotion did not reach the endpoint; registry:\n{registry}")
            time.sleep(2)
    finally:
        serving.send_signal(signal.SIGTERM)  # deletes its application from the cluster
        serving.wait(timeout=60)
        log.close()


# Which node each Serve replica runs on (no dashboard on the profile, so no state API).
PLACEMENT = """
import ray
from ray._private.state import actors
ray.init(logging_level="ERROR")
head = ray.get_runtime_context().get_node_id()
for actor in actors().values():
    if actor["State"] == "ALIVE" and actor["ActorClassName"].startswith("ServeReplica:"):
        print("head" if actor["Address"]["NodeID"] == head else "blind")
"""


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
        experiment="node-loss",
    )  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    base = [sys.executable, "-m"]  # the stages one by one: train is started and watched
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
