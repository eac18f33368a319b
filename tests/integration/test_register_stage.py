"""The register stage against the session's trained model in a real MLflow SQLite registry:
the decision lands with the version or not at all, in the version's description as markdown
and in reports/gate.json; ``register.versions`` decides whether a rejected candidate becomes a
version."""

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
BY_LENGTH = [{"range": "2-15", "lo": 2, "hi": 15, "examples": 40,
              "metrics": {"roc_auc": 0.81}, "ci": {"roc_auc": [0.7, 0.9]}}]  # fmt: skip
EVALUATION = {"overall": {"roc_auc": 0.9}, "invariance": {"passed": True, "max_abs_diff": 0.0},
              "baseline": {"name": "order_blind"}, "skill": SKILL, "by_length": BY_LENGTH,
              "length_ranges": {"confidence": 0.9}}  # fmt: skip
"""What the stage reads of reports/evaluation.json (the evaluate stage's full report)."""


@pytest.fixture
def stage(trained_run, tmp_path, monkeypatch, request):
    """run(name, evaluation=..., versions=...) calls the register stage for model ``name`` on
    the trained run; reports/gate.json lands beside promotion.json."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    request.addfinalizer(lambda: (mlflow.set_tracking_uri(previous[0]),
                                  mlflow.set_registry_uri(previous[1])))  # fmt: skip
    (tmp_path / "train.json").write_text(json.dumps(trained_run["summary"]))

    def run(name: str, evaluation: dict | None = None, events: Path | None = None,
            versions: str = "passed") -> dict:  # fmt: skip
        params = tiny_params()
        params = dataclasses.replace(
            params, register=dataclasses.replace(params.register, model_name=name,
                                                 versions=versions),
        )  # fmt: skip
        report = EVALUATION if evaluation is None else evaluation
        (tmp_path / "evaluation.json").write_text(json.dumps(report))
        return register.run(
            params, tmp_path / "train.json", tmp_path / "evaluation.json", trained_run["shards"],
            events or trained_run["validated"], tmp_path / "promotion.json",
            tmp_path / "gate.json", root=tmp_path,
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
    first = stage(name, versions="all")
    assert first["decision"] == "promoted" and first["champion"] is None
    assert json.loads((tmp_path / "gate.json").read_text()) == {
        "decision": "promoted", "passed": True, "registered": True, "version": 1,
        "primary_metric": "roc_auc", "challenger_value": first["gate"]["challenger_value"],
        "champion_value": None, "delta": None, "compared_with": None, "beats_baseline": True,
        "regressing_ranges": 0,
    }  # fmt: skip
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
    assert "| 2-15 | 40 | 0.8100 | 0.7000..0.9000 |" in card  # by_length of evaluation.json
    gate = card[card.index("## Promotion gate") :]
    assert "**Decision:** **promoted**: this version is the champion" in gate
    assert "no champion yet" in gate and "`require_beat_baseline` true" in gate
    assert "| true length |" not in gate  # nothing to compare by length range yet

    second = stage(
        name, versions="all"
    )  # the same model again: a tie, re-scored on the same windows
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
    gate_json = json.loads((tmp_path / "gate.json").read_text())
    assert gate_json["decision"] == "rejected" and gate_json["passed"] is False
    assert gate_json["version"] == 2 and gate_json["registered"] is True
    assert gate_json["compared_with"] == 1 and gate_json["delta"] == 0.0
    # the reviewer's view of the same decision: markdown in the version's description
    gate = reg.client.get_model_version(name, "2").description.split("## Promotion gate", 1)[1]
    assert "**Decision:** **rejected**: the champion is unchanged" in gate
    assert "vs champion v1" in gate and "delta +0.0000" in gate
    table = [line for line in gate.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| true length | examples | this version | champion |")
    assert len(table) == 1 + len(checks)  # header and one row per range
    assert all(row.endswith(("| ok (gated) |", "examples) |")) for row in table[1:])
    assert f"- {second['gate']['reasons'][0]}" in gate
    recorded = (tmp_path / "promotion.json").read_text()

    before = [(v.version, v.aliases, v.tags) for v in reg.versions()], reg.history()

    def broken(self, version, tags):
        raise RuntimeError("registry write failed")

    monkeypatch.setattr(Registry, "set_tags", broken)  # the last write: tagging the champion
    with pytest.raises(RuntimeError, match="registry write failed"):
        stage(name, versions="all")
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
    (tmp_path / "evaluation.json").write_text(json.dumps({"invariance": {"passed": True}}))
    events = pq.read_table(trained_run["validated"])
    pq.write_table(events.drop_columns(["channel"]), tmp_path / "events.parquet")
    try:
        code = register.main(["--params", str(tmp_path / "params.yaml"),
                              "--train-report", str(tmp_path / "train.json"),
                              "--evaluation", str(tmp_path / "evaluation.json"),
                              "--shards", str(trained_run["shards"]),
                              "--events", str(tmp_path / "events.parquet"),
                              "--out", str(tmp_path / "promotion.json"),
                              "--gate", str(tmp_path / "gate.json")])  # fmt: skip
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("register: failed: cannot score the challenger")


def test_without_a_baseline_comparison_the_gate_refuses_and_names_the_switch(stage, trained_run):
    name = "register-no-baseline"
    record = stage(name, evaluation={"overall": {"roc_auc": 0.9}, "invariance": {"passed": True}},
                   versions="all")  # fmt: skip
    assert record["decision"] == "rejected" and record["registered"]
    assert "register.require_beat_baseline" in record["gate"]["reasons"][0]
    reg = _registry(trained_run, name)
    assert reg.alias(CHAMPION) is None and reg.alias(CHALLENGER).version == 1
    assert reg.version(1).tags["gate.beats_baseline"] == "unknown"
    assert "not compared" in reg.client.get_model_version(name, "1").description


def test_with_versions_passed_a_rejected_candidate_stays_in_its_run(stage, trained_run, tmp_path):
    name = "register-passed-only"
    record = stage(name, evaluation={**EVALUATION, "skill": {**SKILL, "beats_baseline": False}})
    assert record["decision"] == "rejected" and record["registered"] is False
    assert record["challenger"]["version"] is None
    assert record["challenger"]["model_uri"] == trained_run["summary"]["model_uri"]
    assert "register.versions: all" in record["not_registered"]
    assert trained_run["summary"]["run_id"] in record["not_registered"]
    reg = _registry(trained_run, name)
    assert not reg.exists()  # no registered model, no version, no alias
    assert json.loads((tmp_path / "promotion.json").read_text())["decision"] == "rejected"
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["decision"] == "rejected" and gate["registered"] is False
    assert gate["version"] is None and gate["beats_baseline"] is False
    run = reg.client.get_run(trained_run["summary"]["run_id"])  # where the candidate stays
    assert run.data.tags["seqops.gate.decision"] == "rejected"
    assert run.data.tags["seqops.gate.version"] == "none"
    assert run.data.tags["seqops.gate.model_name"] == name
    assert "does not beat the baseline" in run.data.tags["seqops.gate.reasons"]


def test_a_missing_evaluation_report_is_named(trained_run, tmp_path, capsys):
    (tmp_path / "train.json").write_text(json.dumps(trained_run["summary"]))
    missing = tmp_path / "reports" / "evaluation.json"
    code = register.main(["--params", str(REPO / "params.yaml"),
                          "--train-report", str(tmp_path / "train.json"),
                          "--evaluation", str(missing), "--out", str(tmp_path / "p.json"),
                          "--gate", str(tmp_path / "g.json")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert "run the evaluate stage first" in err
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "g.json").exists()
