"""The whole `dvc repro` from events to a champion, in a temporary copy of the repository."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.integration.conftest import dvc

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
    # it); the baseline rule has tests of its own, this one follows the registry's workflow.
    "register": {"require_beat_baseline": False},
}
ALL = ("ingest", "validate", "shard", "train", "evaluate", "register")


def _ran(output: str) -> set[str]:
    return {stage for stage in ALL if f"Running stage '{stage}'" in output}


def _aliases(repo) -> dict[str, int]:
    with sqlite3.connect(repo / "mlflow.db") as db:
        rows = db.execute("select alias, version from registered_model_aliases").fetchall()
    return {alias: int(version) for alias, version in rows}


def test_repro_ends_with_a_champion_and_experiments_compare(repo_copy, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the repository's own SQLite store
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
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
