"""The evaluate stage on a model trained by the real train stage, logged in a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines import evaluate, invariance, split_metrics
from seqcore.loading import load_scorer
from seqcore.manifest import Manifest, load_manifest
from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.integration

CLASSIFY_METRICS = ("accuracy", "macro_f1", "roc_auc", "pr_auc", "log_loss", "ece")
PNGS = ("by_bucket.png", "roc.png", "pr.png", "reliability.png", "confusion_matrix.png")


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """The evaluate stage's run() once, into a temporary folder, against the trained run."""
    import mlflow

    out = tmp_path_factory.mktemp("evaluate")
    # The train stage's report, as `dvc repro` leaves it (trained_run["root"] is the shared
    # tiny-pipeline folder: the fixture's dict lets tiny_pipeline's "root" win).
    (out / "train.json").write_text(json.dumps(trained_run["summary"]))
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
        report = evaluate.run(
            tiny_params(),
            out / "train.json",
            trained_run["shards"],
            trained_run["validated"],
            out / "reports" / "metrics.json",
            out / "reports" / "plots",
            root=out,
        )
    mlflow.set_tracking_uri(previous)
    return {"report": report, "metrics": out / "reports" / "metrics.json",
            "plots": out / "reports" / "plots"}  # fmt: skip


@pytest.fixture(scope="module")
def scorer(trained_run):
    """The trained model loaded through MLflow, as the stage loads it."""
    return load_scorer(trained_run["summary"]["model_uri"], trained_run["tracking_uri"])


def test_metrics_json_has_classify_metrics_buckets_slices_and_invariance(evaluated, trained_run):
    metrics = json.loads(evaluated["metrics"].read_text())
    assert metrics == evaluated["report"]
    manifest = load_manifest(trained_run["shards"])
    split = metrics["split"]
    assert split == "test" and metrics["task"] == "classify"
    assert metrics["run_id"] == trained_run["summary"]["run_id"]
    assert metrics["model_uri"] == trained_run["summary"]["model_uri"]
    for name in CLASSIFY_METRICS:
        assert isinstance(metrics["overall"][name], float), name
    assert 0.0 <= metrics["overall"]["roc_auc"] <= 1.0 and metrics["overall"]["log_loss"] > 0
    assert metrics["primary_metric"] == "roc_auc"
    assert metrics["primary_value"] == metrics["overall"]["roc_auc"]

    expected = manifest.splits[split].examples
    assert metrics["examples"] == metrics["overall"]["examples"] == expected
    assert sum(b["examples"] for b in metrics["by_bucket"].values()) == expected
    assert set(metrics["by_bucket"]) <= {str(b) for b in manifest.bucket_boundaries}
    for values in metrics["by_bucket"].values():
        assert set(CLASSIFY_METRICS) <= set(values)
    channels = metrics["slices"]["channel"]
    assert set(channels) <= set(manifest.vocab("channel"))
    assert sum(v["examples"] for v in channels.values()) == expected

    invariance = metrics["invariance"]
    assert invariance["passed"] is True and invariance["max_abs_diff"] <= 1e-5
    assert invariance["entities"] > 1 and invariance["padded_sequences"] > 0


def test_plots_are_written_as_pngs_and_dvc_plot_data(evaluated):
    plots = evaluated["plots"]
    for name in PNGS:
        path = plots / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    roc = json.loads((plots / "roc.json").read_text())
    assert roc[0]["fpr"] == 0.0 and roc[-1]["tpr"] == 1.0
    by_bucket = json.loads((plots / "by_bucket.json").read_text())
    assert [r["bucket"] for r in by_bucket] == sorted(r["bucket"] for r in by_bucket)
    assert all("roc_auc" in r for r in by_bucket)
    reliability = json.loads((plots / "reliability.json").read_text())
    assert sum(r["count"] for r in reliability) == evaluated["report"]["examples"]
    assert json.loads((plots / "horizon.json").read_text()) == []  # not a forecast model
    assert not list(plots.glob(".*"))  # no temporary leftovers


def test_the_training_run_gets_test_metrics_and_evaluation_artifacts(evaluated, trained_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained_run["tracking_uri"])
    run = client.get_run(trained_run["summary"]["run_id"])
    overall = evaluated["report"]["overall"]
    assert run.data.metrics["test_roc_auc"] == pytest.approx(overall["roc_auc"])
    assert run.data.metrics["test_ece"] == pytest.approx(overall["ece"])
    assert "test_invariance_max_abs_diff" in run.data.metrics
    assert run.data.tags["seqops.evaluate.invariance_passed"] == "true"
    top = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/plots"} <= top
    plots = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "evaluation/plots")}
    assert set(PNGS) <= plots and "roc.json" in plots


def test_evaluate_model_is_deterministic_and_matches_the_stage(evaluated, trained_run, scorer):
    config = tiny_params().evaluate
    first = split_metrics.evaluate_model(
        scorer.model, scorer.manifest, trained_run["shards"], config
    )
    second = split_metrics.evaluate_model(
        scorer.model, scorer.manifest, trained_run["shards"], config
    )
    assert first == second
    assert first["overall"] == evaluated["report"]["overall"]
    assert first["by_bucket"] == evaluated["report"]["by_bucket"]


def test_evaluate_model_refuses_shards_with_other_preprocessing(trained_run, scorer):
    raw = json.loads(json.dumps(scorer.manifest.to_json()))
    raw["features"]["categorical"]["channel"]["vocab"].reverse()
    manifest = Manifest.from_json(raw)
    with pytest.raises(split_metrics.IncompatibleShardsError, match="other preprocessing"):
        split_metrics.evaluate_model(
            scorer.model, manifest, trained_run["shards"], tiny_params().evaluate
        )


class _PaddingLeak(torch.nn.Module):
    """Wraps a model and lets the padded width leak into its output (a padding bug)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, categorical, numeric, lengths, state=None):
        out = self.inner(categorical, numeric, lengths)  # (B, K) logits
        # Softmax ignores a constant shift, so the leak must differ between classes.
        return out + 1e-3 * categorical.shape[1] * torch.arange(out.shape[-1])


def test_invariance_check_catches_a_model_that_padding_changes(trained_run, scorer):
    from seqcore.scorer import SequenceScorer

    table = pq.read_table(trained_run["validated"])
    entities = list(dict.fromkeys(str(e) for e in table.column("account_id").to_pylist()))[:16]
    ok = invariance.invariance_check(scorer, table, entities, 1e-5)
    assert ok["passed"] and ok["entities"] == 16
    assert ok["padded_sequences"] >= 8  # random groups of four: most sequences really padded
    leaky = SequenceScorer(_PaddingLeak(scorer.model), scorer.manifest)
    bad = invariance.invariance_check(leaky, table, entities, 1e-5)
    assert not bad["passed"] and bad["max_abs_diff"] > 1e-5
    assert np.isfinite(bad["max_abs_diff"])


def test_cli_errors_name_what_is_missing(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["tracking_uri"])
    common = ["--params", str(REPO / "params.yaml"), "--shards", str(trained_run["shards"]),
              "--events", str(trained_run["validated"]), "--metrics", str(tmp_path / "m.json"),
              "--plots", str(tmp_path / "plots")]  # fmt: skip
    missing = tmp_path / "nope" / "train.json"
    assert evaluate.main(["--train-report", str(missing), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "train report" in err

    report = tmp_path / "train.json"
    summary = trained_run["summary"]
    report.write_text(json.dumps({**summary, "model_uri": "models:/m-0123456789abcdef"}))
    assert evaluate.main(["--train-report", str(report), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models:/m-0123456789abcdef" in err

    report.write_text(json.dumps({**summary, "run_id": "0" * 32}))
    assert evaluate.main(["--train-report", str(report), *common]) == 2
    assert "0" * 32 in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "plots").exists()
