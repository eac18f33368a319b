"""The evaluate stage on a model trained by the real train stage, logged in a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines import baselines, evaluate, invariance, split_metrics
from pipelines import metrics as M
from pipelines.predict import split_targets
from seqcore.io import jsonable
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
            out / "reports" / "evaluation.json",
            out / "reports" / "plots",
            root=out,
        )
    mlflow.set_tracking_uri(previous)
    return {"report": report, "metrics": out / "reports" / "metrics.json",
            "evaluation": out / "reports" / "evaluation.json",
            "plots": out / "reports" / "plots"}  # fmt: skip


def _leaves(value, path=""):
    """Dotted paths of the values DVC shows one column each (a list is not one of them)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, f"{path}.{key}" if path else key)
    else:
        yield path


@pytest.fixture(scope="module")
def scorer(trained_run):
    """The trained model loaded through MLflow, as the stage loads it."""
    return load_scorer(trained_run["summary"]["model_uri"], trained_run["tracking_uri"])


def test_evaluation_json_has_classify_metrics_buckets_slices_and_invariance(evaluated, trained_run):
    metrics = json.loads(evaluated["evaluation"].read_text())
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


def test_evaluation_json_has_a_baseline_scored_like_the_model_and_the_skill(evaluated, trained_run):
    metrics = json.loads(evaluated["evaluation"].read_text())
    baseline, skill = metrics["baseline"], metrics["skill"]
    assert baseline["name"] in ("order_blind_logistic_regression", "class_prior")
    assert baseline["description"] and baseline["fit"]["split"] == "train"
    assert (
        baseline["fit"]["windows"] == load_manifest(trained_run["shards"]).splits["train"].examples
    )
    assert baseline["primary_metric"] == metrics["primary_metric"] == "roc_auc"
    assert baseline["primary_value"] == baseline["overall"]["roc_auc"]
    assert set(baseline["overall"]) == set(metrics["overall"])  # the same metric names
    for name in CLASSIFY_METRICS:
        assert isinstance(baseline["overall"][name], float), name
    assert baseline["overall"]["examples"] == metrics["examples"]
    assert skill["metric"] == "roc_auc"
    assert skill["model"] == metrics["primary_value"]
    assert skill["baseline"] == baseline["primary_value"]
    assert skill["improvement"] == pytest.approx(skill["model"] - skill["baseline"])
    assert skill["relative"] == pytest.approx(skill["improvement"] / abs(skill["baseline"]))
    assert skill["beats_baseline"] is (skill["improvement"] > 0)
    assert "baselines" not in metrics  # forecast only
    assert metrics["class_names"] == ["0", "1"]
    assert not [k for k in metrics["undefined"] if k.startswith(("baseline.", "skill."))]


def test_metrics_json_is_the_headline_of_the_evaluation(evaluated):
    """What `dvc metrics diff` and `dvc exp show` show: a few scalars, all from the report."""
    headline = json.loads(evaluated["metrics"].read_text())
    report = evaluated["report"]
    leaves = list(_leaves(headline))
    assert len(leaves) <= 30, leaves
    assert not [k for k in leaves if isinstance(_get(headline, k), list)]
    assert set(headline) == {"task", "split", "examples", "primary_metric", "primary_value",
                             "overall", "baseline", "skill", "invariance"}  # fmt: skip
    assert set(headline["overall"]) == set(CLASSIFY_METRICS)
    for key in leaves:  # every headline value is the report's own, at the same path
        assert _get(report, key) == _get(headline, key), key
    assert headline["baseline"]["primary_value"] == report["baseline"]["overall"]["roc_auc"]
    skill, invariance = report["skill"], report["invariance"]
    assert headline["skill"] == {k: skill[k] for k in ("improvement", "relative", "beats_baseline")}
    assert headline["invariance"] == {"passed": True, "max_abs_diff": invariance["max_abs_diff"]}
    # the detail stays in evaluation.json only
    assert {"by_bucket", "by_length", "slices", "class_names", "run_id"} <= set(report)
    assert not {"by_bucket", "by_length", "slices", "class_names", "run_id"} & set(headline)


def _get(obj, dotted):
    for key in dotted.split("."):
        obj = obj[key]
    return obj


def test_baseline_plots_are_written(evaluated):
    plots = evaluated["plots"]
    bars = json.loads((plots / "baseline.json").read_text())
    report = evaluated["report"]
    assert {r["scorer"] for r in bars} == {"model", report["baseline"]["name"]}
    roc_auc = {r["scorer"]: r["value"] for r in bars if r["metric"] == "roc_auc"}
    assert roc_auc["model"] == report["overall"]["roc_auc"]
    roc = json.loads((plots / "baseline_roc.json").read_text())
    assert roc[0]["fpr"] == 0.0 and roc[-1]["tpr"] == 1.0
    assert (plots / "baseline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    confusion = json.loads((plots / "confusion.json").read_text())
    assert {r["actual"] for r in confusion} <= set(report["class_names"])


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
    report = evaluated["report"]
    baseline = report["baseline"]["overall"]
    assert run.data.metrics["test_baseline_roc_auc"] == pytest.approx(baseline["roc_auc"])
    skill = report["skill"]
    assert run.data.metrics["test_skill_improvement"] == pytest.approx(skill["improvement"])
    assert run.data.tags["seqops.evaluate.beats_baseline"] == str(skill["beats_baseline"]).lower()
    assert run.data.tags["seqops.evaluate.baseline"] == report["baseline"]["name"]
    top = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/evaluation.json", "evaluation/plots"} <= top
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
              "--evaluation", str(tmp_path / "e.json"),
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
    assert not (tmp_path / "e.json").exists()


def _targets_only(shards):
    """The test split's rows and targets (``read_split`` order), outputs to be filled."""
    return split_targets(shards, "test")[1]


def test_next_event_baseline_on_real_shards_scores_like_a_model(tiny_pipeline):
    shards = tiny_pipeline["shards"]
    manifest = load_manifest(shards)
    preds = _targets_only(shards)
    size = manifest.targets.next_event.vocab_size
    preds.outputs = [np.full((len(t), size), 1.0 / size) for t in preds.next_event]  # uniform
    model = M.next_event_metrics(preds.outputs, preds.next_event)
    report = baselines.baseline_report(preds, manifest, "next_event", shards, "test", model)
    base, skill = report.sections["baseline"], report.sections["skill"]
    assert base["name"] == "transition_table" and base["primary_metric"] == "top1_accuracy"
    assert base["overall"]["targets"] == model["targets"] > 0
    assert set(base["overall"]) == {*model, "examples"}
    # A uniform predictor ranks by id; the most frequent next value given the current does better.
    assert base["overall"]["top1_accuracy"] > model["top1_accuracy"]
    assert base["overall"]["top5_accuracy"] >= base["overall"]["top1_accuracy"]
    assert skill["beats_baseline"] is False and skill["improvement"] < 0
    assert np.isfinite(base["overall"]["perplexity"])


def test_forecast_baselines_on_real_shards_are_in_original_units(tiny_pipeline):
    shards = tiny_pipeline["shards"]
    manifest = load_manifest(shards)
    target = manifest.targets.forecast
    preds = _targets_only(shards)
    preds.outputs = [np.zeros_like(f) for f in preds.forecast]  # the standardised mean
    inverse = lambda z: manifest.features.inverse_standardise(target.column, z)  # noqa: E731
    model = M.forecast_from_stats(M.forecast_stats(preds.outputs, preds.forecast, inverse))
    report = baselines.baseline_report(preds, manifest, "forecast", shards, "test", model)
    sections = report.sections
    assert set(sections["baselines"]) == {"last_value", "train_mean"}
    chosen = sections["baseline"]
    maes = {k: b["overall"]["mae"] for k, b in sections["baselines"].items()}
    assert chosen["primary_value"] == min(maes.values())
    assert chosen == sections["baselines"][chosen["name"]]
    for section in sections["baselines"].values():
        assert set(section["overall"]) == {*model, "examples", "mase"} - {"undefined"}
        assert section["overall"]["targets"] == model["targets"] > 0
    scale = sections["mase_scale"]
    assert scale["method"] == "in_sample_naive" and scale["value"] > 0
    assert report.model_overall["mase"] == pytest.approx(model["mae"] / scale["value"])
    mean = sections["baselines"]["train_mean"]["fit"]["mean"]
    amounts = pq.read_table(tiny_pipeline["validated"], columns=["amount"]).column(0).to_numpy()
    assert 0.2 * amounts.mean() < mean < 5 * amounts.mean()  # dollars, not standardised units
    skill = sections["skill"]
    assert skill["metric"] == "mae"
    assert skill["improvement"] == pytest.approx(chosen["primary_value"] - model["mae"])


@pytest.mark.parametrize("task", ["next_event", "forecast"])
def test_the_headline_of_the_other_tasks_stays_small(tiny_pipeline, task):
    """The same assembly as the stage (metrics, baseline, invariance), on real shards with a
    constant predictor: the headline keeps the task's overall set, not the per-step detail."""
    shards = tiny_pipeline["shards"]
    manifest = load_manifest(shards)
    preds = _targets_only(shards)
    if task == "next_event":
        size = manifest.targets.next_event.vocab_size
        preds.outputs = [np.full((len(t), size), 1.0 / size) for t in preds.next_event]
    else:
        preds.outputs = [np.zeros_like(f) for f in preds.forecast]
    config = tiny_params().evaluate
    values = split_metrics.last_event_values(shards, "test", manifest, config.slices)
    result = split_metrics.evaluate_predictions(preds, manifest, task, config, values)
    base = baselines.baseline_report(preds, manifest, task, shards, "test", result["overall"])
    invariance_report = {"passed": True, "max_abs_diff": 0.0, "entities": 4, "tolerance": 1e-5}
    report = jsonable({**evaluate.with_baseline(result, base), "invariance": invariance_report})
    headline = evaluate.headline(report)
    leaves = list(_leaves(headline))
    assert len(leaves) <= 30, leaves
    assert len(list(_leaves(report))) > 2 * len(leaves)  # the detail is where it was
    assert list(headline["overall"]) == list(evaluate.HEADLINE_METRICS[task])
    assert not [k for k in leaves if "_h" in k]  # forecast's per-step metrics stay out
    assert headline["primary_value"] == report["overall"][headline["primary_metric"]]
    baseline = report["baseline"]
    assert headline["baseline"] == {"name": baseline["name"],
                                    "primary_value": baseline["primary_value"]}  # fmt: skip
    assert headline["skill"]["beats_baseline"] is report["skill"]["beats_baseline"]
    for key in leaves:
        if key != "undefined" and not key.startswith("undefined."):
            assert _get(report, key) == _get(headline, key), key
