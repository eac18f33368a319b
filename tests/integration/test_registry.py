"""Registry operations and the review CLI against a real MLflow SQLite registry."""

from __future__ import annotations

import json

import pytest

from pipelines import cli
from pipelines.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_PASSED,
    GATE_PROMOTED,
    GATE_REJECTED,
    Registry,
    RegistryError,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(mlflow_store, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    experiment = client.create_experiment("reg-test", artifact_location=(tmp_path / "art").as_uri())
    reg = Registry(client, "unit-model")
    for i in range(3):
        run = client.create_run(experiment)
        source = tmp_path / f"model{i}"
        source.mkdir()
        (source / "MLmodel").write_text("flavors: {}\n")
        tags = {"metric.roc_auc": str(0.7 + i / 10), "gate.decision": GATE_PASSED}
        reg.register(str(source), run.info.run_id, f"card {i}", tags)
    return reg


def test_new_versions_become_challenger_and_promotions_are_recorded(registry):
    assert [v.version for v in registry.versions()] == [1, 2, 3]
    assert registry.alias(CHALLENGER).version == 3
    assert registry.alias(CHAMPION) is None
    registry.promote(1, "first")
    entry = registry.promote(2, "better on review")
    assert entry["previous"] == 1 and entry["version"] == 2 and entry["by"]
    assert registry.alias(CHAMPION).version == 2
    assert registry.version(1).tags["champion.replaced_by"] == "2"
    assert registry.version(2).tags["champion.reason"] == "better on review"
    assert [h["version"] for h in registry.history()] == [1, 2]


def test_rollback_returns_to_the_previous_champion(registry):
    registry.promote(1, "first")
    registry.promote(3, "newest")
    entry = registry.rollback("v3 misbehaves in production")
    assert entry["action"] == "rollback" and entry["version"] == 1
    assert registry.alias(CHAMPION).version == 1
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("again")


def test_bad_requests_name_what_is_wrong(registry, mlflow_store):
    with pytest.raises(RegistryError, match="no version 9; versions: 1, 2, 3"):
        registry.version(9)
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote(1, "  ")
    missing = Registry(registry.client, "nope")
    with pytest.raises(RegistryError, match="'nope' not found; known models: unit-model"):
        missing.versions()


def test_cli_lists_compares_promotes_and_fails_clearly(registry, capsys):
    assert (
        cli.main(["registry", "--model", "unit-model", "promote", "2", "--reason", "review ok"])
        == 0
    )
    assert cli.main(["registry", "--model", "unit-model", "list"]) == 0
    listing = capsys.readouterr().out
    assert "champion v2" in listing and "0.8" in listing
    assert cli.main(["registry", "--model", "unit-model", "compare", "1", "2"]) == 0
    assert "metric.roc_auc" in capsys.readouterr().out
    assert cli.main(["registry", "--model", "unit-model", "history"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["reason"] == "review ok"
    assert cli.main(["registry", "--model", "unit-model", "promote", "7", "--reason", "x"]) == 2
    assert "no version 7" in capsys.readouterr().err
    assert cli.main(["registry", "--model", "ghost", "list"]) == 2
    assert "'ghost' not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- all or nothing


def _state(reg: Registry) -> dict:
    """What a failed block must leave as it found: versions, aliases, tags, history."""
    return {
        "versions": [(v.version, v.aliases, v.tags) for v in reg.versions()],
        "history": reg.history(),
    }


def _source(tmp_path, name: str) -> str:
    source = tmp_path / name
    source.mkdir()
    (source / "MLmodel").write_text("flavors: {}\n")
    return str(source)


def test_a_failed_block_undoes_the_version_aliases_tags_and_history(registry, tmp_path):
    registry.promote(1, "first")
    registry.set_tags(2, {"note": "kept"})
    before = _state(registry)
    run_id = registry.version(1).run_id
    with pytest.raises(RuntimeError, match="boom"), registry.atomic():
        new = registry.register(
            _source(tmp_path, "m4"), run_id, "card", {"gate.decision": GATE_PROMOTED}
        )
        registry.promote(new.version, "gate passed")
        registry.set_tags(2, {"note": "changed", "gate.challenged_by.v4": {"decision": "x"}})
        raise RuntimeError("boom")
    assert _state(registry) == before
    assert registry.alias(CHAMPION).version == 1 and registry.alias(CHALLENGER).version == 3


def test_a_version_that_cannot_be_deleted_is_marked_incomplete(registry, tmp_path, monkeypatch):
    def refuse(name, version):
        raise RuntimeError("store refuses deletes")

    monkeypatch.setattr(registry.client, "delete_model_version", refuse)
    run_id = registry.version(1).run_id
    with pytest.raises(RuntimeError, match="boom"), registry.atomic():
        registry.register(_source(tmp_path, "m4"), run_id, "card", {"gate.decision": "promoted"})
        raise RuntimeError("boom")
    assert registry.version(4).tags["gate.decision"] == "incomplete"
    assert registry.alias(CHALLENGER).version == 3  # the alias went back all the same


def test_a_failed_first_registration_leaves_no_model_behind(mlflow_store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    experiment = client.create_experiment("first", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(experiment)
    reg = Registry(client, "fresh-model")

    def broken_history(entry):
        raise RuntimeError("history write failed")

    monkeypatch.setattr(reg, "_append_history", broken_history)
    with pytest.raises(RuntimeError, match="history"), reg.atomic():
        version = reg.register(
            _source(tmp_path, "m"), run.info.run_id, "card", {"gate.decision": GATE_PROMOTED}
        )
        reg.promote(version.version, "first champion")
    assert not reg.exists()


def test_a_promotion_that_fails_half_way_changes_nothing(registry, monkeypatch):
    registry.promote(1, "first")
    before = _state(registry)

    def broken_history(entry):
        raise RuntimeError("history write failed")

    monkeypatch.setattr(registry, "_append_history", broken_history)
    with pytest.raises(RuntimeError, match="history"):
        registry.promote(2, "review")
    assert _state(registry) == before


# --------------------------------------------------------------------------- the gate


REJECTED = {
    "gate.decision": GATE_REJECTED,
    "gate.decided_at": "2026-01-02T03:04:05Z",
    "gate.reasons": "roc_auc 0.7000 does not beat champion 0.8000 by 0.01 (delta -0.1000)",
}


def test_a_version_the_gate_rejected_is_promoted_only_with_a_recorded_override(
    registry, tmp_path, capsys
):
    registry.promote(1, "first")
    run_id = registry.version(1).run_id
    registry.register(_source(tmp_path, "m4"), run_id, "card 4", REJECTED)
    before = _state(registry)
    promote = ["registry", "--model", "unit-model", "promote", "4", "--reason", "hotfix #12"]

    assert cli.main(promote) == 2
    err = capsys.readouterr().err
    assert "version 4 of model 'unit-model' was not passed by the promotion gate" in err
    assert "'rejected' at 2026-01-02T03:04:05Z" in err and REJECTED["gate.reasons"] in err
    assert "--override-gate" in err
    assert _state(registry) == before  # nothing moved, nothing tagged, nothing in the history

    assert cli.main([*promote, "--override-gate"]) == 0
    assert "gate overridden: its decision was 'rejected'" in capsys.readouterr().out
    assert registry.alias(CHAMPION).version == 4
    tags = registry.version(4).tags
    assert tags["seqops.gate_override"] == "true"
    assert tags["seqops.gate_override_decision"] == GATE_REJECTED
    assert tags["seqops.gate_override_reason"] == "hotfix #12"
    assert tags["seqops.gate_override_by"] and tags["seqops.gate_override_at"]
    assert cli.main(["registry", "--model", "unit-model", "history"]) == 0
    entry = json.loads(capsys.readouterr().out)[-1]
    assert entry["action"] == "promote" and entry["version"] == 4 and entry["previous"] == 1
    assert entry["gate_override"] == GATE_REJECTED and entry["reason"] == "hotfix #12"
    assert entry["by"] and entry["at"] == tags["seqops.gate_override_at"]
    assert cli.main(["registry", "--model", "unit-model", "list"]) == 0
    assert "rejected (overridden)" in capsys.readouterr().out

    entry = registry.rollback("the hotfix misbehaves")  # a rollback is not gated again
    assert entry["version"] == 1 and "gate_override" not in entry


def test_a_version_the_gate_never_evaluated_needs_an_override_too(registry, tmp_path):
    run_id = registry.version(1).run_id
    registry.register(_source(tmp_path, "m4"), run_id, "registered by hand", {})
    with pytest.raises(RegistryError, match="version 4 .* has no gate decision .*--override-gate"):
        registry.promote(4, "looks fine")
    assert registry.alias(CHAMPION) is None and registry.history() == []
    entry = registry.promote(4, "first champion, evaluated by hand", override_gate=True)
    assert entry["gate_override"] == "none"
    assert registry.version(4).tags["seqops.gate_override_decision"] == "none"
    # a version the gate passed needs no override, and the flag records none
    assert "gate_override" not in registry.promote(2, "better", override_gate=True)
    assert "seqops.gate_override" not in registry.version(2).tags
