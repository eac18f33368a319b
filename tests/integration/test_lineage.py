"""`dvc exp run --temp` and queued experiments run their stages in temporary copies under
`.dvc/tmp/exps`; what they log must reach the repository's own MLflow store, tagged with the
experiment that made it (docs/architecture.md §5).

A one-stage DVC project whose stage logs a run as the train stage tags it
(``pipelines.tracking``), so the whole of DVC's experiment machinery (stash, temporary clone,
celery queue) runs for seconds; tests/integration/test_end_to_end.py runs the real pipeline
as a ``--temp`` experiment once.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import dvc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGE = '''"""Log one MLflow run as the train stage tags it, where the stage resolves the store."""

import json
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from pipelines.tracking import configure, ensure_experiment, lineage_tags

uri = configure(".")
client = MlflowClient(uri)
run = client.create_run(ensure_experiment("lineage", "."), tags=lineage_tags(".", "m", "e"))
lr = yaml.safe_load(Path("params.yaml").read_text())["lr"]
client.log_param(run.info.run_id, "lr", lr)
Path("note.txt").write_text(f"lr={lr}")
client.log_artifact(run.info.run_id, "note.txt")
Path("metrics.json").write_text(json.dumps({"lr": lr}))
'''

DVC_YAML = """stages:
  log:
    cmd: python log_run.py
    deps: [log_run.py]
    params: [lr]
    metrics:
      - metrics.json:
          cache: false
"""


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    for name in ("MLFLOW_TRACKING_URI", "SEQOPS_ARTIFACT_ROOT", "DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)  # the project's own default store
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / "log_run.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("lr: 1\n")
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\nmlruns/\nnote.txt\n")
    _git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "project")
    return repo


def _runs(repo: Path) -> dict[str, dict[str, str]]:
    """Tags of every run in the repository's store, by the DVC experiment that logged it."""
    assert (repo / "mlflow.db").is_file(), "nothing was logged to the repository's store"
    with sqlite3.connect(repo / "mlflow.db") as db:
        rows = db.execute("select run_uuid, key, value from tags").fetchall()
        uris = dict(db.execute("select run_uuid, artifact_uri from runs").fetchall())
    runs: dict[str, dict[str, str]] = {}
    for run, key, value in rows:
        runs.setdefault(run, {"run_id": run, "artifact_uri": uris[run]})[key] = value
    return {tags["dvc.exp_name"]: tags for tags in runs.values() if "dvc.exp_name" in tags}


def test_temporary_and_queued_experiments_log_to_the_repository_s_store(project):
    head = _git(project, "rev-parse", "HEAD")
    dvc(project, "exp", "run", "--temp", "-n", "in-temp", "-S", "lr=2")
    dvc(project, "exp", "run", "--queue", "-n", "queued", "-S", "lr=3")
    dvc(project, "exp", "run", "--run-all", "-j", "1")  # celery workers, then waits

    runs = _runs(project)
    assert set(runs) == {"in-temp", "queued"}, runs
    names = dvc(project, "exp", "list", "--name-only").stdout.split()
    for name, lr in (("in-temp", 2), ("queued", 3)):
        tags = runs[name]
        assert name in names  # the tag names an experiment DVC knows
        assert tags["dvc.exp_baseline_rev"] == head and tags["dvc.stage"] == "log"
        # Code lineage is the copy's: its HEAD is the baseline, its params edited by -S.
        assert tags["git_commit"] == tags["mlflow.source.git.commit"] == head
        assert tags["git_dirty"] == "true"
        assert tags["mlflow.source.name"] == "log_run.py"
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
        # The run's files are in the repository's mlartifacts/ too, not in the copy.
        note = Path(tags["artifact_uri"].removeprefix("file://")) / "note.txt"
        assert note.is_relative_to(project / "mlartifacts/lineage"), note
        assert note.read_text() == f"lr={lr}"
    metrics = json.loads(dvc(project, "exp", "show", "--json").stdout)
    assert "in-temp" in json.dumps(metrics) and "queued" in json.dumps(metrics)
    left = [p for p in (project / ".dvc/tmp").rglob("*") if p.name in ("mlflow.db", "mlartifacts")]
    assert left == []
    assert dvc(project, "queue", "status").stdout.count("Success") == 1
