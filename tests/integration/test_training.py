"""Ray Train DDP training (2 CPU workers, gloo) with MLflow lineage and fault tolerance."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import train
from pipelines.train_loop import FAIL_ENV
from seqcore.manifest import load_manifest
from tests.conftest import tiny_params
from tests.integration.conftest import stage_env

pytestmark = pytest.mark.integration


def _git_root(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def _raw_events(tiny_pipeline, rows: int) -> pd.DataFrame:
    """Raw events as a pyfunc user sends them (signature: strings, naive UTC datetimes)."""
    events = pq.read_table(tiny_pipeline["validated"]).slice(0, rows).to_pandas()
    for col in ("mcc", "channel", "country", "device"):
        events[col] = events[col].astype(str)
    events["event_time"] = events["event_time"].dt.tz_localize(None)
    return events.drop(columns=["label", "_arrival"])


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_two_workers_train_and_log_lineage_metrics_and_a_loadable_model(
    ray_cluster, mlflow_store, tiny_pipeline, tmp_path
):
    from mlflow.tracking import MlflowClient

    params = tiny_params()
    summary = train.run(
        params,
        tiny_pipeline["shards"],
        tiny_pipeline["validated"],
        tmp_path / "train.json",
        root=_git_root(tmp_path),
    )
    assert summary["workers"] == 2 and summary["epochs_run"] == 2
    assert json.loads((tmp_path / "train.json").read_text())["run_id"] == summary["run_id"]
    # The budget the workers used, and the examples classify left out (the generator labels all).
    assert summary["max_tokens_resolved"] == params.train.max_tokens
    assert summary["unlabeled_examples"] == {"train": 0, "val": 0, "test": 0}
    assert summary["last_epoch_metrics"]["steps_per_epoch"] == (
        summary["steps_per_pass"] * summary["passes_per_epoch"]
    )

    client = MlflowClient(mlflow_store)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.model.architecture"] == "lstm"
    assert run.data.params["train.num_workers"] == "2"
    assert run.data.params["model.vocab_sizes"]
    assert run.data.params["train.max_tokens_resolved"] == str(summary["max_tokens_resolved"])
    assert run.data.params["unlabeled_examples.train"] == "0"
    manifest = load_manifest(tiny_pipeline["shards"])
    tags = run.data.tags
    assert tags["shard_manifest_hash"] == manifest.content_hash
    assert tags["git_commit"] and "git_dirty" in tags and "dvc_shards_md5" in tags
    assert tags["version.torch"] and tags["version.ray"]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["shards"]
    assert [s for s, _ in _history(client, run.info.run_id, "val_loss")] == [0, 1]
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == [0, 1]

    # A fresh process loads the model by URI and scores raw events.
    events = _raw_events(tiny_pipeline, 400)
    raw = tmp_path / "raw.parquet"
    events.to_parquet(raw)
    script = (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({mlflow_store!r})\n"
        f"model = mlflow.pyfunc.load_model({summary['model_uri']!r})\n"
        f"out = model.predict(pd.read_parquet({str(raw)!r}))\n"
        f"out[['entity', 'score', 'n_events']].to_json({str(tmp_path / 'scores.json')!r}, orient='records')\n"
    )
    subprocess.run(
        [sys.executable, "-c", script], check=True, cwd=tmp_path, env=stage_env(), timeout=300
    )
    scores = pd.read_json(tmp_path / "scores.json")
    assert set(scores["entity"]) == set(events["account_id"])
    assert scores["score"].between(0, 1).all()


def test_a_worker_failure_resumes_from_the_checkpoint_in_the_same_run(
    ray_cluster, mlflow_store, tiny_pipeline, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_ENV, f"epoch=2,rank=1,marker={marker}")
    params = tiny_params()
    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, epochs=3, patience=5)
    )
    summary = train.run(
        params, tiny_pipeline["shards"], tiny_pipeline["validated"], None, root=_git_root(tmp_path)
    )
    assert marker.exists(), "the injected failure never happened"
    assert summary["epochs_run"] == 3
    client = MlflowClient(mlflow_store)
    runs = client.search_runs([summary["experiment_id"]])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]  # resumed, not a second run
    steps = [s for s, _ in _history(client, summary["run_id"], "val_loss")]
    assert steps == [0, 1, 2]


@pytest.mark.parametrize(
    ("architecture", "task"),
    [("gru", "next_event"), ("transformer", "forecast"), ("tcn", "next_event")],
)
def test_every_task_and_encoder_trains_with_ddp(
    ray_cluster, mlflow_store, tiny_pipeline, tmp_path, architecture, task
):
    """The params switch: per-step tasks and the other encoders train under DDP and log a model."""
    import mlflow

    params = tiny_params()
    params = dataclasses.replace(
        params,
        train=dataclasses.replace(
            params.train.with_model(architecture=architecture), task=task, epochs=1
        ),
    )
    summary = train.run(
        params, tiny_pipeline["shards"], tiny_pipeline["validated"], None, root=_git_root(tmp_path)
    )
    metrics = summary["last_epoch_metrics"]
    metric = "val_top1" if task == "next_event" else "val_mae"
    assert metrics["val_loss"] > 0 and metric in metrics
    events = _raw_events(tiny_pipeline, 300)
    scores = mlflow.pyfunc.load_model(summary["model_uri"]).predict(events)
    column = "top5" if task == "next_event" else "forecast"
    assert len(scores) == events["account_id"].nunique() and column in scores
    if task == "forecast":
        assert all(len(f) == params.shard.forecast_horizon for f in scores["forecast"])


def test_auto_budget_and_unlabelled_entities_left_out_of_classify(
    ray_cluster, mlflow_store, tiny_pipeline, tmp_path
):
    """max_tokens: auto resolves from the shards; examples without a label train nothing and
    are counted; a classify run with no labelled training example stops before Ray starts."""
    import shutil

    import numpy as np
    import pyarrow as pa

    shards = tmp_path / "shards"
    shutil.copytree(tiny_pipeline["shards"], shards)

    def relabel(drop) -> None:
        for path in sorted(shards.glob("*/bucket=*/part-*.parquet")):
            table = pq.read_table(path)
            labels = table.column("label").to_numpy().copy()
            labels[drop(np.arange(len(labels)))] = -1
            column = pa.array(labels, pa.int64())
            pq.write_table(
                table.set_column(table.schema.get_field_index("label"), "label", column), path
            )

    relabel(lambda rows: rows % 4 == 0)
    params = tiny_params()
    params = dataclasses.replace(
        params,
        train=dataclasses.replace(params.train, max_tokens="auto", epochs=1, min_epoch_tokens=1),
    )
    summary = train.run(params, shards, tiny_pipeline["validated"], None, root=_git_root(tmp_path))
    manifest = load_manifest(shards)
    unlabeled = summary["unlabeled_examples"]
    assert all(unlabeled[s] > 0 for s in ("train", "val", "test"))
    assert summary["examples"]["train"] + unlabeled["train"] == manifest.splits["train"].examples
    widest = max(manifest.splits["train"].buckets)
    assert widest <= summary["max_tokens_resolved"] <= 8192
    assert summary["passes_per_epoch"] == 1

    relabel(lambda rows: rows >= 0)
    with pytest.raises(train.TrainError, match="none of the .* training examples has a label"):
        train.run(params, shards, tiny_pipeline["validated"], None, root=tmp_path)
