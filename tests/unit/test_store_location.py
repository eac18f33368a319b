"""Where the MLflow store and its files are, whatever folder a DVC stage runs in, and what a
run records about its source (tests/integration/test_lineage.py runs real `dvc exp run`s;
tests/integration/test_model_loading.py loads from a moved store)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.tracking import artifact_location, ensure_experiment, lineage_tags
from seqcore.loading import (
    ModelLoadError,
    artifact_source,
    rebased,
    sqlite_path,
    store_root,
    tracking_uri,
)

ENV = ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")


@pytest.fixture
def clean_env(monkeypatch):
    for name in (*ENV, "MLFLOW_TRACKING_URI", "SEQOPS_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_the_store_is_the_dvc_repository_s_not_the_folder_a_stage_runs_in(tmp_path, clean_env):
    repo, work = tmp_path / "repo", tmp_path / "repo/.dvc/tmp/exps/tmp1"
    work.mkdir(parents=True)
    assert store_root(work) == work.resolve()
    assert tracking_uri(work) == f"sqlite:///{work.resolve() / 'mlflow.db'}"
    assert artifact_location("e", work) == (work / "mlartifacts/e").resolve().as_uri()

    clean_env.setenv("DVC_ROOT", str(repo))  # as `dvc exp run --temp` sets it
    assert store_root(work) == repo.resolve()
    assert tracking_uri(work) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert artifact_location("e", work) == (repo / "mlartifacts/e").resolve().as_uri()
    # A relative SQLite path in the environment is the repository's too; others are kept.
    clean_env.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db?timeout=20")
    assert tracking_uri(work) == f"sqlite:///{repo.resolve() / 'stores/team.db'}?timeout=20"
    assert artifact_location("e", work) == (repo / "stores/mlartifacts/e").resolve().as_uri()
    for kept in ("sqlite:////srv/mlflow.db", "http://mlflow:5000", "postgresql://h/db"):
        clean_env.setenv("MLFLOW_TRACKING_URI", kept)
        assert tracking_uri(work) == kept
    assert artifact_location("e", work) is None  # a server's own default
    assert sqlite_path("sqlite:////srv/mlflow.db") == Path("/srv/mlflow.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("sqlite://") is None

    clean_env.setenv("SEQOPS_ARTIFACT_ROOT", "s3://bucket/seqops/")
    assert artifact_location("e", work) == "s3://bucket/seqops/e"
    clean_env.setenv("SEQOPS_ARTIFACT_ROOT", "shared/artifacts")
    assert artifact_location("e", work) == (repo / "shared/artifacts/e").resolve().as_uri()

    clean_env.delenv("MLFLOW_TRACKING_URI")
    clean_env.setenv("DVC_ROOT", str(tmp_path / "moved-away"))
    with pytest.raises(FileNotFoundError, match="DVC_ROOT=.*moved-away is not a folder"):
        tracking_uri(work)


def test_recorded_files_are_found_under_a_moved_store_s_own_folder(tmp_path):
    old = Path("/gone/clone/mlartifacts/train/models/m-1/artifacts")
    db = tmp_path / "moved/mlflow.db"
    assert rebased(old, db) == [tmp_path / "moved/mlartifacts/train/models/m-1/artifacts"]
    twice = Path("/gone/mlartifacts/mlartifacts/models/m-1")  # an experiment named so
    assert rebased(twice, db) == [
        tmp_path / "moved/mlartifacts/models/m-1",
        tmp_path / "moved/mlartifacts/mlartifacts/models/m-1",
    ]
    assert rebased(Path("/elsewhere/art/m-1"), db) == []

    store = f"sqlite:///{db}"
    with pytest.raises(ModelLoadError) as missing:
        artifact_source(old.as_uri(), store, "cannot load models:/x/1")
    message = str(missing.value)
    assert message.startswith(f"cannot load models:/x/1: its files were recorded at {old}, ")
    assert f"nor does {rebased(old, db)[0]}" in message
    assert "move mlartifacts/ together with mlflow.db" in message
    assert "SEQOPS_ARTIFACT_ROOT" in message

    rebased(old, db)[0].mkdir(parents=True)
    assert artifact_source(old.as_uri(), store) == rebased(old, db)[0].as_uri()
    here = tmp_path / "moved/mlartifacts/train"
    assert artifact_source(here.as_uri(), store) == here.as_uri()  # present: as recorded
    assert artifact_source("s3://bucket/m-1/artifacts", store) == "s3://bucket/m-1/artifacts"
    # A server's store has no folder of its own to look in.
    with pytest.raises(ModelLoadError, match=r"does not exist\. A local MLflow store"):
        artifact_source(old.as_uri(), "http://mlflow:5000")


def test_a_run_records_mlflow_s_source_tags_and_its_dvc_experiment(tmp_path, clean_env):
    """Through a real MLflow store: the tags are the ones MLflow's UI reads as the run's
    source, user and git fields, and resuming the run (as the train stage does to log the
    model) keeps them."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_DIRTY,
        MLFLOW_GIT_REPO_URL,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    repo, work = tmp_path / "repo", tmp_path / "work"
    for folder in (repo, work):
        folder.mkdir()
        _git(folder, "init", "-q", "-b", "main")
        (folder / "a.txt").write_text(folder.name)
        _git(folder, "add", "a.txt")
        _git(folder, "commit", "-qm", folder.name)
    _git(repo, "remote", "add", "origin", "https://user:secret@example.com/team/seqops.git")
    _git(work, "checkout", "-q", "--detach")  # as in an experiment's temporary copy
    clean_env.setenv("DVC_ROOT", str(repo))
    clean_env.setenv("DVC_STAGE", "train")
    clean_env.setenv("DVC_EXP_NAME", "brave-lynx")
    clean_env.setenv("DVC_EXP_BASELINE_REV", "f" * 40)

    tags = lineage_tags(work, "h1", "h2")
    uri = tracking_uri(work)
    client = MlflowClient(uri)
    experiment = ensure_experiment("lineage", work)
    run_id = client.create_run(experiment, tags=tags).info.run_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_param("resumed", "yes")
    finally:
        mlflow.set_tracking_uri(previous)

    run = client.get_run(run_id)
    stored = run.data.tags
    assert (repo / "mlflow.db").is_file() and not (work / "mlflow.db").exists()
    assert client.get_experiment(experiment).artifact_location == (
        (repo / "mlartifacts/lineage").resolve().as_uri()
    )
    work_commit = _git(work, "rev-parse", "HEAD")  # lineage: the folder the stage ran in
    assert stored["git_commit"] == stored[MLFLOW_GIT_COMMIT] == work_commit
    assert stored[MLFLOW_GIT_DIRTY] == "false"
    assert MLFLOW_GIT_BRANCH not in stored  # detached: no branch to name
    # The copy has no remote; the repository's, without its credentials.
    assert stored[MLFLOW_GIT_REPO_URL] == "https://example.com/team/seqops.git"
    assert stored[MLFLOW_SOURCE_TYPE] == "LOCAL" and stored[MLFLOW_SOURCE_NAME]
    assert stored[MLFLOW_USER] and run.info.user_id == stored[MLFLOW_USER]
    assert stored["dvc.stage"] == "train" and stored["dvc.exp_name"] == "brave-lynx"
    assert stored["dvc.exp_baseline_rev"] == "f" * 40

    clean_env.delenv("DVC_ROOT")
    clean_env.delenv("DVC_EXP_NAME")
    on_branch = lineage_tags(repo, "h1", "h2")
    assert on_branch[MLFLOW_GIT_BRANCH] == "main" and "dvc.exp_name" not in on_branch
    assert on_branch[MLFLOW_GIT_REPO_URL] == "https://example.com/team/seqops.git"
    # The stage names its own file, whichever command (dvc, seqops run) started the process.
    named = lineage_tags(repo, "h1", "h2", source=repo / "a.txt")
    assert named[MLFLOW_SOURCE_NAME] == "a.txt"
