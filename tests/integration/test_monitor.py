"""``seqops monitor`` against a model trained by the real train stage: the model carries its
scores of the validation split, and a batch whose label rate changed shifts the scores it
gets, while a fresh batch of the training distribution does not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import merge_params, params_from_dict
from pipelines.monitor import main as monitor
from seqcore.loading import load_scorer
from seqcore.manifest import load_manifest
from seqcore.store import read_events
from tests.conftest import REPO
from tests.integration.conftest import _git

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Series.values returning"),
]

OVERRIDES = {
    "data": {"generate": {"n_entities": 2000, "median_length": 20}},
    "shard": {
        "split": {"fractions": [0.5, 0.2, 0.3]},  # a test split large enough to monitor
        "buckets": {"n_buckets": 6},
        "window": {"length": 64, "max_len": 64},
    },
    "train": {
        "model": {"hidden_size": 32, "embedding_dim": 8},
        "epochs": 8,
        "max_tokens": 4096,
    },
}


def _params():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return params_from_dict(merge_params(raw, OVERRIDES))


@pytest.fixture(scope="module")
def model(ray_cluster, tmp_path_factory):
    """A small classifier trained by the train stage on 1,000 of 2,000 generated entities,
    long enough to tell the planted pattern apart (about 40 s here): a model without skill
    gives every entity the prior, and no label rate moves its scores."""
    from pipelines import evaluate, ingest, shard, train, validate

    root = tmp_path_factory.mktemp("monitored")
    params = _params()
    ingest.run(params, root / "events")
    report = validate.run(params, root / "events", root / "validated",
                          root / "quarantine.parquet", root / "validation.json", root / "docs")  # fmt: skip
    assert not report.failed(), report.summary()
    shard.run(params, root / "validated", root / "shards")
    _git(root, "init", "-q")  # lineage reads the commit
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    # The stages set MLflow's process-wide URIs: later modules' fixtures resolve models with
    # them, so they are put back as they were.
    fluent = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        summary = train.run(params, root / "shards", root / "validated", root / "train.json",
                            root=root)  # fmt: skip
        evaluate.run(params, root / "train.json", root / "shards", root / "validated",
                     root / "metrics.json", root / "evaluation.json", root / "plots", root=root)  # fmt: skip
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
        mlflow.set_tracking_uri(fluent[0])
        mlflow.set_registry_uri(fluent[1])
    return {"root": root, "uri": uri, "model_uri": summary["model_uri"], "params": params}


def _fresh(model) -> pa.Table:
    """Entities of the training distribution the model never saw: the test split's."""
    from pipelines.shard_reader import read_split

    shards, validated = model["root"] / "shards", model["root"] / "validated"
    entities = pc.unique(read_split(shards, "test").column("entity"))
    events = read_events(validated)
    return events.filter(pc.is_in(pc.cast(events.column("account_id"), pa.string()),
                                  value_set=pc.cast(entities, pa.string())))  # fmt: skip


def _monitor(
    model, events: pa.Table, name: str, monkeypatch, *extra: str
) -> tuple[int, dict | None]:
    root: Path = model["root"]
    pq.write_table(events, root / f"{name}.parquet")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", model["uri"])
    params = root / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params.write_text(yaml.safe_dump(merge_params(raw, {"monitor": {"label_window": "120d"}})))
    report = root / f"{name}.json"
    report.unlink(missing_ok=True)
    code = monitor(["--events", str(root / f"{name}.parquet"), "--model", model["model_uri"],
                    "--params", str(params), "--report", str(report),
                    "--html", str(root / f"{name}.html"), *extra])  # fmt: skip
    return code, json.loads(report.read_text()) if report.exists() else None


def _score(result: dict) -> dict:
    return next(s for s in result["statistics"] if s["name"] == "score")


def test_the_model_carries_its_scores_of_the_validation_split(model):
    scorer = load_scorer(model["model_uri"], model["uri"])
    shards = load_manifest(model["root"] / "shards")
    scores = scorer.manifest.scores
    assert scores is not None and scores.total == shards.splits["val"].entities  # latest windows
    assert shards.scores is None  # the shards' own manifest: no model, no scores
    assert scorer.manifest.content_hash == shards.content_hash  # still names the shards
    reference = scorer.manifest.reference
    assert reference is not None and reference.score == scores


def test_a_changed_label_rate_shifts_the_scores_and_a_fresh_sample_does_not(model, monkeypatch):
    fresh = _fresh(model)
    code, result = _monitor(model, fresh, "fresh", monkeypatch)
    assert code == 0 and not _score(result)["drifted"], result["drifted"]

    labels = pc.equal(fresh.column("label"), 1)
    entities = fresh.filter(labels).column("account_id").unique()
    rate = len(entities) / len(fresh.column("account_id").unique())
    positives = fresh.filter(pc.is_in(fresh.column("account_id"), value_set=entities))
    others = fresh.filter(pc.invert(pc.is_in(fresh.column("account_id"), value_set=entities)))
    keep = others.column("account_id").unique()[: max(1, len(entities) // 3)]
    skewed = pa.concat_tables(
        [positives, others.filter(pc.is_in(others.column("account_id"), value_set=keep))]
    )
    assert rate < 0.4  # positives were the minority; now they are three entities in four
    code, result = _monitor(model, skewed, "skewed", monkeypatch)
    score = _score(result)
    assert code == 1 and score["drifted"], score
    assert score["current"]["upper_half_share"] > score["reference"]["upper_half_share"]
    assert np.isfinite(score["distance"])


def _labels(events: pa.Table, flip_after: str | None = None) -> pa.Table:
    """One label per entity at its last event: its true label, or a coin flip's for the
    entities whose last event falls after ``flip_after`` (the world changed; the model did
    not)."""
    last = events.group_by("account_id").aggregate([("event_time", "max"), ("label", "max")])
    label = last.column("label_max").to_numpy()
    times = last.column("event_time_max")
    if flip_after is not None:
        cut = np.datetime64(flip_after, "us").astype(np.int64)
        late = pc.cast(times, pa.int64()).to_numpy() >= cut
        label = np.where(late, np.random.default_rng(3).integers(0, 2, len(label)), label)
    return pa.table({"account_id": last.column("account_id"), "event_time": times,
                     "label": pa.array(label)})  # fmt: skip


def test_delayed_labels_give_metrics_by_window_and_flag_the_windows_that_got_worse(
    model, monkeypatch
):
    fresh = _fresh(model)
    pq.write_table(_labels(fresh), model["root"] / "labels.parquet")
    code, result = _monitor(model, fresh, "labelled", monkeypatch,
                            "--labels", str(model["root"] / "labels.parquet"))  # fmt: skip
    section = result["performance"]
    assert code == 0 and section["degraded"] == [], section
    evaluation = json.loads((model["root"] / "evaluation.json").read_text())
    assert section["evaluation"]["roc_auc"] == pytest.approx(evaluation["overall"]["roc_auc"])
    assert section["evaluation_split"] == "test"
    assert section["rows"]["scored"] == section["rows"]["read"] == len(fresh["account_id"].unique())
    assert sum(w["labels"] for w in section["windows"]) == section["rows"]["scored"]
    # the test split's own entities and labels: the evaluation, window by window
    assert section["overall"]["roc_auc"] == pytest.approx(
        evaluation["overall"]["roc_auc"], abs=0.02
    )

    pq.write_table(_labels(fresh, flip_after="2025-03-13"), model["root"] / "labels.parquet")
    code, result = _monitor(model, fresh, "labelled", monkeypatch,
                            "--labels", str(model["root"] / "labels.parquet"))  # fmt: skip
    section = result["performance"]
    late = [w for w in section["windows"] if w["start"] >= "2025-03-13"]
    early = [w for w in section["windows"] if w["end"][:10] <= "2025-03-13"]
    assert code == 1 and late[0]["degraded"] is True, section  # 120-day windows: 326 labels
    assert all(w["degraded"] is True for w in late if w["labels"] >= 30)
    assert early and all(w["degraded"] is False for w in early)
    assert "Delayed labels" in (model["root"] / "labelled.html").read_text()


def test_labels_the_model_cannot_use_are_refused_before_any_scoring(model, monkeypatch, capsys):
    fresh = _fresh(model)
    labels = _labels(fresh)
    unknown = labels.set_column(2, "label", pa.array(["fraud"] * labels.num_rows))
    pq.write_table(unknown, model["root"] / "unknown.parquet")
    code, result = _monitor(model, fresh, "refused", monkeypatch,
                            "--labels", str(model["root"] / "unknown.parquet"))  # fmt: skip
    assert code == 2 and result is None
    assert "none of the labels is a class the model knows" in capsys.readouterr().err
    pq.write_table(labels.drop_columns(["event_time"]), model["root"] / "timeless.parquet")
    code, _ = _monitor(model, fresh, "refused", monkeypatch,
                       "--labels", str(model["root"] / "timeless.parquet"))  # fmt: skip
    assert code == 2 and "event_time" in capsys.readouterr().err
    keys = pc.binary_join_element_wise("A-", pc.cast(labels["account_id"], pa.string()), "")
    pq.write_table(labels.set_column(0, "account_id", keys), model["root"] / "other.parquet")
    code, _ = _monitor(model, fresh, "refused", monkeypatch,
                       "--labels", str(model["root"] / "other.parquet"))  # fmt: skip
    assert code == 2 and "could be scored" in capsys.readouterr().err
