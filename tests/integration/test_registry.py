"""Registry operations and the review CLI against a real MLflow SQLite registry."""

from __future__ import annotations

import json

import pytest

from pipelines import cli
from pipelines.registry import CHALLENGER, CHAMPION, Registry, RegistryError

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
        reg.register(
            str(source), run.info.run_id, f"card {i}", {"metric.roc_auc": str(0.7 + i / 10)}
        )
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
