"""The whole `dvc repro` from events to a champion, in a temporary copy of the repository."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from tests.integration.conftest import dvc, stage_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = {
    "data": {"generate": {"n_entities": 240, "median_length": 20}},
    "shard": {
        "max_workers": 2,
        "buckets": {"n_buckets": 6},
        "window": {"length": 64, "max_len": 64},
    },
    "train": {
        "model": {"hidden_size": 16, "embedding_dim": 4, "ffn_size": 32},
        "epochs": 2,
        "max_tokens": 2048,
        "min_epoch_tokens": 1,
    },
    "evaluate": {"invariance_entities": 16},
    # Two epochs on 240 entities need not beat the order-blind baseline (20 test windows tie
    # it); the baseline rule has tests of its own, this one follows the registry's workflow,
    # where every candidate becomes a version (a rejected one too), so versions count runs.
    "register": {"require_beat_baseline": False, "versions": "all"},
}
ALL = ("ingest", "validate", "shard", "train", "evaluate", "register")


def _ran(output: str) -> set[str]:
    return {stage for stage in ALL if f"Running stage '{stage}'" in output}


def _aliases(repo) -> dict[str, int]:
    with sqlite3.connect(repo / "mlflow.db") as db:
        rows = db.execute("select alias, version from registered_model_aliases").fetchall()
    return {alias: int(version) for alias, version in rows}


def _version_run_tags(repo, version: int) -> dict[str, str]:
    """The tags of the training run behind registry version ``version``."""
    with sqlite3.connect(repo / "mlflow.db") as db:
        sql = "select run_id from model_versions where version = ?"
        run_id = db.execute(sql, (version,)).fetchone()[0]
        rows = db.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall()
    return dict(rows)


def _git_out(repo, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_repro_ends_with_a_champion_and_experiments_compare(repo_copy, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the repository's own SQLite store
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in ("DVC_ROOT", "SEQOPS_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    repo = repo_copy(TINY)
    first = dvc(repo, "repro")
    assert _ran(first.stdout) == set(ALL)
    promotion = json.loads((repo / "reports/promotion.json").read_text())
    assert promotion["decision"] == "promoted" and promotion["champion"] is None
    assert _aliases(repo) == {"challenger": 1, "champion": 1}
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["invariance"]["passed"] and metrics["overall"]["roc_auc"] is not None
    assert (repo / "reports/plots/roc.json").exists()

    second = dvc(repo, "repro")
    assert _ran(second.stdout) == set(), second.stdout

    shown = dvc(repo, "metrics", "show")
    assert "reports/metrics.json" in shown.stdout
    dvc(repo, "plots", "show", "--json")

    exp = dvc(repo, "exp", "run", "-S", "train.model.architecture=transformer")
    assert {"train", "evaluate", "register"} <= _ran(exp.stdout) and "ingest" not in _ran(
        exp.stdout
    )
    promotion = json.loads((repo / "reports/promotion.json").read_text())
    assert promotion["challenger"]["version"] == 2
    assert promotion["champion"]["version"] == 1 and promotion["champion"]["rescored"]
    assert promotion["decision"] in ("promoted", "rejected")
    assert _aliases(repo)["challenger"] == 2
    diff = dvc(repo, "metrics", "diff")
    assert "roc_auc" in diff.stdout

    # In a temporary copy (as queued experiments run): the repository's registry gets it.
    dvc(repo, "exp", "run", "--temp", "-n", "one-epoch", "-S", "train.epochs=1")
    version = _aliases(repo)["challenger"]
    assert version == 3
    tags = _version_run_tags(repo, version)
    assert tags["dvc.exp_name"] == "one-epoch" and tags["dvc.stage"] == "train"
    head = _git_out(repo, "rev-parse", "HEAD")
    assert tags["dvc.exp_baseline_rev"] == tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.name"] == "pipelines/train.py"
    assert not [p for p in (repo / ".dvc/tmp").rglob("mlflow.db")]

    # A reviewer compares the workspace with where a version came from: here an experiment.
    diffed = subprocess.run(
        [sys.executable, "-m", "seqops", "metrics", "diff", "--against", str(version), "--all"],
        cwd=repo, env=stage_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert diffed.returncode == 0, diffed.stderr
    assert "came from DVC experiment 'one-epoch': dvc metrics diff one-epoch" in diffed.stderr
    assert "reports/gate.json" in diffed.stdout and "primary_value" in diffed.stdout
