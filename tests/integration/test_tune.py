"""``seqops tune`` on the session's Ray cluster: two trials on tiny shards, ASHA, MLflow child
runs under one parent, and the best trial written as params that load and apply."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import yaml

from pipelines import tune
from pipelines.config import load_params, merge_params
from pipelines.params.tune import TuneConfig
from tests.conftest import REPO, TINY_OVERRIDES, tiny_params

pytestmark = pytest.mark.integration


def test_two_trials_log_child_runs_and_write_the_best_as_params(
    ray_cluster, mlflow_store, tiny_pipeline, tmp_path
):
    from mlflow.tracking import MlflowClient

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    params = tiny_params()
    space = {"model.architecture": ["lstm", "tcn"], "lr": {"loguniform": [1e-3, 1e-2]}}
    params = dataclasses.replace(
        params,
        # One worker's CPU per trial, so a trial never waits on what other tests hold.
        train=dataclasses.replace(params.train, num_workers=1),
        tune=TuneConfig(
            trials=2, time_budget_s=600, grace_epochs=1, reduction_factor=2, space=space
        ),
    )
    report, out = tmp_path / "reports" / "tune.json", tmp_path / "reports" / "tune_params.yaml"
    report.parent.mkdir()
    target = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    target.write_text(yaml.safe_dump(merge_params(raw, TINY_OVERRIDES), sort_keys=False))

    summary = tune.run(params, tiny_pipeline["shards"], report, out, root=tmp_path, apply_to=target)

    written = json.loads(report.read_text())
    assert written["parent_run_id"] == summary["parent_run_id"]
    assert written["trials_run"] == 2 and len(written["trials"]) == 2
    assert written["ranked_by"] == "best_val_loss" and written["mode"] == "min"
    client = MlflowClient(mlflow_store)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["seqops.stage"] == "tune"
    assert parent.data.params["tune.trials"] == "2"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "tune.json",
        "tune_params.yaml",
    }
    for trial in written["trials"]:
        assert set(trial["config"]) == set(space)
        assert trial["outcome"] in {"all_epochs", "early_stopping", "stopped_by_scheduler"}
        child = client.get_run(trial["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
        assert child.data.tags["seqops.tune.outcome"] == trial["outcome"]
        assert child.info.status == "FINISHED"
        # Each epoch was logged by the training loop, and the trial's values as params.
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert len(history) == trial["epochs_run"] >= 1
        assert min(m.value for m in history) == pytest.approx(trial["best"])
        assert child.data.params["tune.lr"] == str(trial["config"]["lr"])
        assert child.data.params["train.lr"] == str(trial["config"]["lr"])
    best = written["best"]
    assert best["best"] == min(t["best"] for t in written["trials"])
    assert (
        yaml.safe_load(out.read_text())["train"]["model"]["architecture"]
        == (best["config"]["model.architecture"])
    )
    # --apply: the params file now trains the winner, checked as any params file is.
    applied = load_params(target).train
    assert applied.lr == best["config"]["lr"]
    assert applied.model.architecture == best["config"]["model.architecture"]
    assert written["dvc_exp_run"].startswith("dvc exp run -S 'train.lr=")
