"""``seqops metrics diff``: the workspace's DVC metrics against the commit or DVC experiment
that trained a registered version (a real git repository, DVC project and MLflow store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seqops.cli import main

DVC = str(Path(sys.executable).with_name("dvc"))


def _sh(repo: Path, *args: str) -> str:
    return subprocess.run(args, cwd=repo, check=True, capture_output=True, text=True).stdout


def _commit(repo: Path, auc: float, message: str) -> str:
    (repo / "reports/metrics.json").write_text(json.dumps({"roc_auc": auc}))
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message)
    return _sh(repo, "git", "rev-parse", "HEAD").strip()


@pytest.fixture
def project(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    _sh(repo, "git", "init", "-q")
    _sh(repo, DVC, "init", "-q")
    (repo / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n    metrics:\n"
        "      - reports/metrics.json:\n          cache: false\n"
    )
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return repo


def _version(tags: dict[str, str], alias: str | None = "champion") -> int:
    from mlflow.tracking import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not client.search_registered_models("name = 'm'"):
        client.create_registered_model("m")
    experiment = client.get_experiment_by_name("e") or client.get_experiment(
        client.create_experiment("e")
    )
    run = client.create_run(experiment.experiment_id, tags=tags)
    version = client.create_model_version("m", "file:///nowhere", run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias("m", alias, version.version)
    return int(version.version)


def test_diff_against_the_champions_commit(project, capfd):
    trained_at = _commit(project, 0.80, "champion's run")
    _version({"git_commit": trained_at, "git_dirty": "false"})
    _commit(project, 0.90, "a later candidate")
    assert main(["metrics", "diff", "--model", "m"]) == 0
    out, err = capfd.readouterr()
    assert f"came from commit {trained_at[:12]}: dvc metrics diff {trained_at}" in err
    assert "roc_auc" in out and "0.8" in out and "0.9" in out and "0.1" in out


def test_an_experiment_name_is_preferred_while_it_exists(project, capfd):
    baseline = _commit(project, 0.80, "baseline")
    experiment = _commit(project, 0.85, "the experiment's own result")
    _sh(project, "git", "reset", "-q", "--hard", baseline)
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/bold-crab"
    _sh(project, "git", "update-ref", ref, experiment)
    version = _version({"git_commit": baseline, "git_dirty": "true", "dvc.exp_name": "bold-crab"})
    assert main(["metrics", "diff", "--model", "m", "--against", str(version)]) == 0
    out, err = capfd.readouterr()
    assert "came from DVC experiment 'bold-crab': dvc metrics diff bold-crab" in err
    assert "0.85" in out
    _sh(project, "git", "update-ref", "-d", ref)
    assert main(["metrics", "diff", "--model", "m", "--against", str(version)]) == 0
    err = capfd.readouterr().err
    assert f"came from commit {baseline[:12]}" in err
    assert "uncommitted changes" in err and "no longer here" in err


def test_what_cannot_be_compared_is_one_line(project, capfd):
    _commit(project, 0.80, "only commit")
    assert main(["metrics", "diff", "--model", "m"]) == 2
    assert "no MLflow store at" in capfd.readouterr().err  # and none was created by asking
    _version({"git_commit": "0" * 40}, alias=None)
    assert main(["metrics", "diff", "--model", "m"]) == 2
    assert "no version with alias 'champion'" in capfd.readouterr().err
    assert main(["metrics", "diff", "--model", "m", "--against", "1"]) == 2
    err = capfd.readouterr().err
    assert "records commit '0000000000000000000000000000000000000000'" in err
    assert "which this repository does not have" in err
