"""Loading a logged model runs no code from the artifact, and only files whose sha256 was
recorded (docs/architecture.md §10), against a real MLflow SQLite store.

Each test logs its own model with the train stage's ``_log_model`` (weights of an untrained
model for the tiny shards; no Ray), so it can alter the stored files freely.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipelines import cli
from pipelines.registry import Registry
from seqcore.io import sha256_file
from seqcore.loading import (
    FILES_TAG,
    FORMAT_KEY,
    FORMAT_TAG,
    ModelLoadError,
    file_record,
    load_scorer,
)
from seqcore.scorer import SequenceScorer
from tests.conftest import tiny_params

pytestmark = pytest.mark.integration

NAME = "loading-model"


@pytest.fixture(scope="module")
def model_files(tiny_pipeline, tmp_path_factory) -> dict:
    """Weights, config and manifest of a fresh model for the tiny shards, and a few entities'
    events to score."""
    from pipelines.train import model_config
    from seqcore.manifest import load_manifest
    from seqmodels import SequenceModel

    root = tmp_path_factory.mktemp("model-files")
    manifest = load_manifest(tiny_pipeline["shards"])
    config = model_config(tiny_params(), manifest)
    weights = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights[seed] = root / f"best-{seed}.safetensors"
        SequenceModel(config).save_weights(weights[seed])
    events = pq.read_table(tiny_pipeline["validated"])
    entity = manifest.schema.entity
    few = pc.unique(events[entity]).slice(0, 3)
    return {
        "config": config,
        "manifest": manifest,
        "weights": weights,
        "validated": tiny_pipeline["validated"],
        "events": events.filter(pc.is_in(events[entity], value_set=few)),
    }


@pytest.fixture
def logged(mlflow_store, model_files, tmp_path) -> dict:
    """One model logged as the train stage logs it, in a fresh store; ``folder`` is where the
    store keeps its files."""
    from mlflow.tracking import MlflowClient

    from pipelines.train import _log_model

    client = MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    experiment = client.create_experiment("loading", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment, tags={"git_commit": "test"}).info.run_id
    model_uri = _log_model(
        run_id, model_files["weights"][0], model_files["config"], model_files["manifest"],
        model_files["validated"], None,
    )  # fmt: skip
    model = client.get_logged_model(model_uri.removeprefix("models:/"))
    return {
        "store": mlflow_store,
        "client": client,
        "run_id": run_id,
        "model_uri": model_uri,
        "model": model,
        "folder": Path(unquote(urlparse(model.artifact_location).path)),
    }


def _scores(scorer: SequenceScorer, events) -> list[float]:
    return [row["score"] for row in scorer.score_rows(events)]


def _reference(model_files: dict, tmp_path: Path) -> list[float]:
    """Scores of the untampered files, built here without MLflow."""
    folder = tmp_path / "reference"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(model_files["weights"][0].read_bytes())
    (folder / "model_config.json").write_text(json.dumps(model_files["config"].to_dict()))
    (folder / "manifest.json").write_text(json.dumps(model_files["manifest"].to_json()))
    return _scores(SequenceScorer.from_dir(folder), model_files["events"])


def _register(logged: dict) -> Registry:
    registry = Registry(logged["client"], NAME)
    registry.register(logged["model_uri"], logged["run_id"], "card", {})
    return registry


def test_the_logged_model_records_its_format_and_files_and_its_version_gets_them(logged):
    mlmodel = yaml.safe_load((logged["folder"] / "MLmodel").read_text())
    assert mlmodel["metadata"][FORMAT_KEY] == 1
    assert mlmodel["metadata"]["git_commit"] == "test" and mlmodel["metadata"]["seqops_version"]
    recorded = json.loads(logged["model"].tags[FILES_TAG])
    assert sorted(recorded) == [
        "MLmodel",
        "artifacts/manifest.json",
        "artifacts/model_config.json",
        "artifacts/weights.safetensors",
    ]
    assert all(recorded[p] == sha256_file(logged["folder"] / p) for p in recorded)
    version = _register(logged).version(1)
    assert json.loads(version.tags[FILES_TAG]) == recorded


def test_code_in_the_artifact_never_runs_and_the_installed_code_scores(
    logged, model_files, tmp_path
):
    marker = tmp_path / "artifact-code-ran"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    folder = logged["folder"]
    hostile = [folder / "mlflow_model.py", folder / "code/seqcore/__init__.py",
               folder / "code/seqcore/scorer.py", folder / "code/seqmodels/__init__.py"]  # fmt: skip
    future = "from __future__ import annotations\n"  # must stay a file's first statement
    for path in hostile:
        text = path.read_text()
        head, sep, tail = text.partition(future)
        path.write_text(head + sep + payload + tail if sep else payload + text)
    _register(logged)
    expected = _reference(model_files, tmp_path)
    for uri in ("models:/loading-model/1", "models:/loading-model@challenger",
                logged["model_uri"], f"runs:/{logged['run_id']}/model"):  # fmt: skip
        scorer = load_scorer(uri, logged["store"])
        assert _scores(scorer, model_files["events"]) == expected
        assert not marker.exists(), f"{uri}: code from the artifact ran"
    # The same artifact loaded the MLflow way (which must keep working) does run it: the
    # payload above is live.
    pyfunc = f"import mlflow; mlflow.pyfunc.load_model({logged['model'].artifact_location!r})"
    subprocess.run([sys.executable, "-c", pyfunc], cwd=tmp_path, check=True, capture_output=True)
    assert marker.read_text() == "ran"


def test_a_tampered_file_is_refused_by_its_hash(logged, model_files):
    _register(logged)
    weights = logged["folder"] / "artifacts/weights.safetensors"
    recorded = sha256_file(weights)
    weights.write_bytes(model_files["weights"][1].read_bytes())  # a valid model, another one
    found = sha256_file(weights)
    for uri, holder in (("models:/loading-model/1", "version 1 of model 'loading-model'"),
                        (logged["model_uri"], f"logged model {logged['model'].model_id}")):  # fmt: skip
        with pytest.raises(ModelLoadError) as refused:
            load_scorer(uri, logged["store"])
        assert (
            f"artifacts/weights.safetensors has sha256 {found}, but {holder} recorded {recorded}"
            in str(refused.value)
        )
    # An MLmodel pointed at other files is refused before it is read.
    mlmodel = logged["folder"] / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("artifacts/weights", "artifacts/other"))
    with pytest.raises(ModelLoadError, match="MLmodel has sha256 .* but version 1 .* recorded"):
        load_scorer("models:/loading-model/1", logged["store"])


def _set_mlmodel(logged: dict, registry: Registry, edit) -> None:
    """Rewrite the stored MLmodel and record its new hash on version 1, so that only the
    format check stands between it and a load."""
    path = logged["folder"] / "MLmodel"
    mlmodel = yaml.safe_load(path.read_text())
    edit(mlmodel["metadata"])
    path.write_text(yaml.safe_dump(mlmodel))
    recorded = json.loads(registry.version(1).tags[FILES_TAG])
    recorded["MLmodel"] = sha256_file(path)
    registry.set_tags(1, {FILES_TAG: json.dumps(recorded)})
    if FORMAT_KEY not in mlmodel["metadata"]:  # as if logged before formats were recorded
        registry.client.delete_model_version_tag(NAME, "1", FORMAT_TAG)


def test_a_format_this_code_does_not_read_or_none_is_refused(logged, capsys):
    registry = _register(logged)
    _set_mlmodel(logged, registry, lambda meta: meta.update({FORMAT_KEY: 2}))
    with pytest.raises(ModelLoadError) as newer:
        load_scorer("models:/loading-model/1", logged["store"])
    assert "seqops model format 2 (logged by seqops" in str(newer.value)
    assert "reads model format 1. Train and register the model again" in str(newer.value)
    # a seal checks the files load before it vouches for them
    args = ["registry", "--model", NAME, "seal", "1", "--reason", "r", "--replace"]
    assert cli.main(args) == 2
    assert "cannot seal" in capsys.readouterr().err

    # Logged before formats were recorded: refused, until a seal finds that they load.
    _set_mlmodel(logged, registry, lambda meta: meta.pop(FORMAT_KEY))
    with pytest.raises(ModelLoadError, match="no seqops model format recorded"):
        load_scorer("models:/loading-model/1", logged["store"])
    assert cli.main(args) == 0
    assert registry.version(1).tags[FORMAT_TAG] == "1"
    load_scorer("models:/loading-model/1", logged["store"])


def test_a_version_without_a_record_is_refused_until_it_is_sealed(logged, model_files, capsys):
    client = logged["client"]
    client.create_registered_model(NAME)
    client.create_model_version(NAME, logged["model_uri"], logged["run_id"])  # not via seqops
    with pytest.raises(ModelLoadError) as refused:
        load_scorer("models:/loading-model/1", logged["store"])
    assert "no record of its files' sha256" in str(refused.value)
    assert "seqops registry seal 1 --reason" in str(refused.value)

    seal = ["registry", "--model", NAME, "seal", "1"]
    with pytest.raises(SystemExit):  # a seal is audited: no reason, no seal
        cli.main(seal)
    capsys.readouterr()
    assert cli.main([*seal, "--reason", "files checked against the training run"]) == 0
    out = capsys.readouterr().out
    weights = logged["folder"] / "artifacts/weights.safetensors"
    assert f"{sha256_file(weights)}  artifacts/weights.safetensors" in out
    scorer = load_scorer("models:/loading-model/1", logged["store"])
    assert _scores(scorer, model_files["events"]) == _scores(
        load_scorer(logged["model_uri"], logged["store"]), model_files["events"]
    )
    assert cli.main(["registry", "--model", NAME, "history"]) == 0
    entry = json.loads(capsys.readouterr().out)[-1]
    assert entry["action"] == "seal" and entry["version"] == 1 and entry["by"]
    assert entry["reason"] == "files checked against the training run"
    assert cli.main([*seal, "--reason", "again"]) == 2  # a record is not replaced silently
    assert "already has a record" in capsys.readouterr().err


def test_a_store_moved_with_its_files_loads_and_still_checks_them(
    mlflow_store, model_files, tmp_path, monkeypatch
):
    """A local store records absolute artifact paths; moved (or copied to another clone)
    together with its mlartifacts/, its models load from the files next to it, each still
    checked against its recorded sha256."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import ensure_experiment
    from pipelines.train import _log_model

    for name in ("DVC_ROOT", "SEQOPS_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    client = MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    experiment = ensure_experiment("moving", tmp_path)  # mlartifacts/ next to mlflow.db
    run_id = client.create_run(experiment).info.run_id
    model_uri = _log_model(
        run_id, model_files["weights"][0], model_files["config"], model_files["manifest"],
        model_files["validated"], None,
    )  # fmt: skip
    Registry(client, NAME).register(model_uri, run_id, "card", {})
    model = client.get_logged_model(model_uri.removeprefix("models:/"))
    recorded = Path(unquote(urlparse(model.artifact_location).path))
    assert recorded.is_relative_to(tmp_path / "mlartifacts/moving")
    expected = _reference(model_files, tmp_path)

    moved = tmp_path / "another-clone"
    moved.mkdir()
    for name in ("mlflow.db", "mlartifacts"):
        (tmp_path / name).rename(moved / name)
    store = f"sqlite:///{moved / 'mlflow.db'}"
    uris = ("models:/loading-model/1", "models:/loading-model@challenger", model_uri,
            f"runs:/{run_id}/model")  # fmt: skip
    for uri in uris:
        assert _scores(load_scorer(uri, store), model_files["events"]) == expected, uri
    assert file_record(model_uri, store)[FILES_TAG] == model.tags[FILES_TAG]  # what a seal reads

    here = moved / recorded.relative_to(tmp_path)
    weights = here / "artifacts/weights.safetensors"
    weights.write_bytes(model_files["weights"][1].read_bytes())  # a valid model, another one
    for uri in uris:
        with pytest.raises(ModelLoadError, match="weights.safetensors has sha256 .* recorded"):
            load_scorer(uri, store)

    (moved / "mlartifacts").rename(moved / "elsewhere")  # the files left behind
    with pytest.raises(ModelLoadError) as lost:
        load_scorer("models:/loading-model/1", store)
    message = str(lost.value)
    assert f"its files were recorded at {recorded}, which does not exist, nor does {here}" in (
        message
    )
    assert "move mlartifacts/ together with mlflow.db" in message
