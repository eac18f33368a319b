"""The register stage against the session's trained model in a real MLflow SQLite registry:
the decision lands with the version or not at all."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines import register
from pipelines.registry import CHALLENGER, CHAMPION, Registry, RegistryError
from seqcore.loading import FILES_TAG, FORMAT_TAG
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.integration

SKILL = {"metric": "roc_auc", "model": 0.9, "baseline": 0.7, "improvement": 0.2,
         "relative": 0.2857, "beats_baseline": True}  # fmt: skip


@pytest.fixture
def stage(trained_run, tmp_path, monkeypatch, request):
    """run(name, metrics=...) calls the register stage for model ``name`` on the trained run."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    request.addfinalizer(lambda: (mlflow.set_tracking_uri(previous[0]),
                                  mlflow.set_registry_uri(previous[1])))  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(trained_run["summary"]))

    def run(name: str, metrics: dict | None = None, events: Path | None = None) -> dict:
        params = tiny_params()
        params = dataclasses.replace(
            params, register=dataclasses.replace(params.register, model_name=name)
        )
        default = {"overall": {"roc_auc": 0.9}, "invariance": {"passed": True},
                   "baseline": {"name": "order_blind"}, "skill": SKILL}  # fmt: skip
        (tmp_path / "metrics.json").write_text(json.dumps(default if metrics is None else metrics))
        return register.run(
            params, tmp_path / "train.json", tmp_path / "metrics.json", trained_run["shards"],
            events or trained_run["validated"], tmp_path / "promotion.json", root=tmp_path,
        )  # fmt: skip

    return run


def _registry(trained_run, name: str) -> Registry:
    from mlflow.tracking import MlflowClient

    uri = trained_run["tracking_uri"]
    return Registry(MlflowClient(tracking_uri=uri, registry_uri=uri), name)


def test_the_decision_lands_with_the_version_and_a_failed_write_leaves_nothing(
    stage, trained_run, tmp_path, monkeypatch
):
    name = "register-stage-model"
    reg = _registry(trained_run, name)
    first = stage(name)
    assert first["decision"] == "promoted" and first["champion"] is None
    v1 = reg.version(1)
    assert v1.aliases == (CHALLENGER, CHAMPION)
    assert v1.tags["gate.decision"] == "promoted" and v1.tags["gate.beats_baseline"] == "true"
    assert v1.tags["data.manifest_hash"] and v1.tags["gate.compared_with"] == "none"
    # the files' record travels from the logged model to the version (what a load checks)
    logged = reg.client.get_logged_model(trained_run["summary"]["model_uri"].split("/")[-1])
    assert v1.tags[FILES_TAG] == logged.tags[FILES_TAG] and v1.tags[FORMAT_TAG] == "1"
    card = reg.client.get_model_version(name, "1").description
    assert (
        "**Baseline:** order_blind: roc_auc 0.7000; this model 0.9000, beats it by 0.2000" in card
    )

    second = stage(name)  # the same model again: a tie, re-scored on the same windows
    assert second["challenger"]["version"] == 2 and second["champion"]["rescored"]
    assert second["decision"] == "rejected"
    assert second["gate"]["reasons"][0].startswith("roc_auc")  # a tie never wins
    checks = second["gate"]["slice_checks"]
    assert checks and sum(c["examples"] for c in checks) == second["test_data"]["examples"]
    for check in checks:
        assert check["regression"] == 0.0
        assert check["regression_ci"] in ([0.0, 0.0], None)
        assert check["gated"] == (check["examples"] >= 20) and check["ok"] in (True, None)
    assert {"range", "lo", "hi", "challenger", "champion"} <= set(checks[0])
    assert reg.alias(CHAMPION).version == 1 and reg.alias(CHALLENGER).version == 2
    assert reg.version(2).tags["gate.decision"] == "rejected"
    with pytest.raises(RegistryError, match="version 2 .* not passed by the promotion gate"):
        reg.promote(2, "the gate said no")
    assert json.loads(reg.version(1).tags["gate.challenged_by.v2"])["decision"] == "rejected"
    recorded = (tmp_path / "promotion.json").read_text()

    before = [(v.version, v.aliases, v.tags) for v in reg.versions()], reg.history()

    def broken(self, version, tags):
        raise RuntimeError("registry write failed")

    monkeypatch.setattr(Registry, "set_tags", broken)  # the last write: tagging the champion
    with pytest.raises(RuntimeError, match="registry write failed"):
        stage(name)
    monkeypatch.undo()
    assert ([(v.version, v.aliases, v.tags) for v in reg.versions()], reg.history()) == before
    assert (tmp_path / "promotion.json").read_text() == recorded


def test_a_model_that_cannot_be_scored_fails_before_anything_is_written(
    stage, trained_run, tmp_path
):
    name = "register-unscorable"
    events = pq.read_table(trained_run["validated"])
    broken = tmp_path / "events.parquet"
    pq.write_table(events.drop_columns(["channel"]), broken)
    with pytest.raises(register.GateError, match="cannot score the challenger .*nothing was"):
        stage(name, events=broken)
    assert not _registry(trained_run, name).exists()
    assert not (tmp_path / "promotion.json").exists()


def test_the_cli_reports_a_scoring_failure_in_one_line(trained_run, tmp_path, monkeypatch, capsys):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["register"]["model_name"] = "register-cli"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "train.json").write_text(json.dumps(trained_run["summary"]))
    (tmp_path / "metrics.json").write_text(json.dumps({"invariance": {"passed": True}}))
    events = pq.read_table(trained_run["validated"])
    pq.write_table(events.drop_columns(["channel"]), tmp_path / "events.parquet")
    try:
        code = register.main(["--params", str(tmp_path / "params.yaml"),
                              "--train-report", str(tmp_path / "train.json"),
                              "--metrics", str(tmp_path / "metrics.json"),
                              "--shards", str(trained_run["shards"]),
                              "--events", str(tmp_path / "events.parquet"),
                              "--out", str(tmp_path / "promotion.json")])  # fmt: skip
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("register: failed: cannot score the challenger")


def test_without_a_baseline_comparison_the_gate_refuses_and_names_the_switch(stage, trained_run):
    name = "register-no-baseline"
    record = stage(name, metrics={"overall": {"roc_auc": 0.9}, "invariance": {"passed": True}})
    assert record["decision"] == "rejected"
    assert "register.require_beat_baseline" in record["gate"]["reasons"][0]
    reg = _registry(trained_run, name)
    assert reg.alias(CHAMPION) is None and reg.alias(CHALLENGER).version == 1
    assert reg.version(1).tags["gate.beats_baseline"] == "unknown"
    assert "not compared" in reg.client.get_model_version(name, "1").description
