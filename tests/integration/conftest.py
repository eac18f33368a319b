"""Integration fixtures: a temporary copy of the repository as a real git + DVC project."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from pipelines.config import merge_params

REPO = Path(__file__).resolve().parents[2]
PROXY_MAX_BODY_BYTES = 200_000


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return [line for line in out.stdout.splitlines() if line and (REPO / line).is_file()]


def stage_env() -> dict[str, str]:
    """The environment of `dvc repro`: this interpreter's bin first, quiet tools."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["GX_ANALYTICS_ENABLED"] = "False"
    env.pop("VIRTUAL_ENV", None)
    return env


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Callable[[dict], Path]:
    """Copy the repository (code, params, dvc.yaml; no data) into a fresh git repo.

    The returned function takes params overrides as a nested dict and returns the copy.
    """

    def make(overrides: dict) -> Path:
        dest = tmp_path / "repo"
        for rel in _tracked_files():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, target)
        for stale in ("dvc.lock", "reports"):
            path = dest / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        update_params(dest, overrides)
        _git(dest, "init", "-q")
        _git(dest, "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
        _git(dest, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy")
        return dest

    return make


def update_params(repo: Path, overrides: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(merge_params(params, overrides), sort_keys=False))


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (2 CPUs, small object store)."""
    import ray

    from serving.cli import ALLOCATOR_ENV
    from serving.http_edge import proxy_env

    if not ray.is_initialized():
        # As the CLI's local cluster: its processes inherit these from this one. The proxy
        # reads no more of a body than the largest max_body_bytes of the applications the
        # tests serve here (test_serving's).
        for key, value in {**ALLOCATOR_ENV, **proxy_env(PROXY_MAX_BODY_BYTES)}.items():
            os.environ.setdefault(key, value)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A real MLflow SQLite tracking + registry store in a temporary folder.

    MLflow's fluent URIs are process-global: they are restored afterwards so that later
    tests do not resolve models against this (deleted) store.
    """
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="session")
def trained_run(ray_cluster, tiny_pipeline, tmp_path_factory) -> dict:
    """One tiny LSTM classify model trained with the real train stage, in its own MLflow store.

    Tests that use it must point MLflow at ``trained_run["tracking_uri"]``.
    """
    from pipelines import train
    from tests.conftest import tiny_params

    root = tmp_path_factory.mktemp("trained")
    _git(root, "init", "-q")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        summary = train.run(
            tiny_params(),
            tiny_pipeline["shards"],
            tiny_pipeline["validated"],
            root / "train.json",
            root=root,
        )
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {**tiny_pipeline, "summary": summary, "tracking_uri": uri, "root": root}


@contextlib.contextmanager
def serving(app, name: str) -> Iterator[str]:
    """Serve the bound application ``app`` as ``name`` at ``/`` on a free loopback port;
    yields the base URL once ``/healthz`` answers, and shuts Serve down afterwards."""
    import requests
    from ray import serve

    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app, name=name, route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while requests.get(f"{base}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the proxy never answered /healthz"
            time.sleep(0.5)
        yield base
    finally:
        serve.shutdown()


def register_versions(trained_run: dict, name: str, count: int = 1) -> dict:
    """The session's trained model registered ``count`` times as versions of ``name``.

    Through an ``MlflowClient`` for the run's store (no process-global MLflow URIs to restore);
    the scorer is loaded the way serving loads it (``serving.registry``), from the first version.
    """
    from mlflow.tracking import MlflowClient

    from seqcore.loading import logged_record
    from serving.config import ModelRef
    from serving.registry import load_model

    uri = trained_run["tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name)
    source, run_id = trained_run["summary"]["model_uri"], trained_run["summary"]["run_id"]
    # The files' hashes recorded at logging go with every version, as the register stage does.
    tags = logged_record(client, source)
    versions = [
        str(client.create_model_version(name, source, run_id, tags=tags).version)
        for _ in range(count)
    ]
    ref = ModelRef(name, version=int(versions[0]), tracking_uri=uri)
    return {
        "uri": uri,
        "client": client,
        "versions": versions,
        "run_id": run_id,
        "model_uri": source,
        "scorer": load_model(ref, 4096).scorer,
    }
