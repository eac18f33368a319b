"""Evaluation metrics against hand-computed values and sklearn; edge cases; grouping."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm

from pipelines import metrics as M
from pipelines.params.gate import EvaluateConfig
from pipelines.predict import SplitPredictions
from pipelines.split_metrics import evaluate_predictions
from seqcore.features import FeatureSpec
from seqcore.io import jsonable
from seqcore.manifest import ForecastTarget, Targets


def _binary(p1):
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p1, p1], axis=1)


# --------------------------------------------------------------------------- classify


def test_binary_metrics_by_hand():
    labels = np.array([0, 1, 1, 0])
    probs = _binary([0.1, 0.8, 0.4, 0.6])
    m = M.classify_metrics(labels, probs)
    assert m["accuracy"] == 0.5  # argmax: 0, 1, 0, 1
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (positive, negative) pairs ordered
    expected_ll = -np.mean(np.log([0.9, 0.8, 0.4, 0.4]))
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert "undefined" not in m
    assert M.confusion_matrix(labels, probs).tolist() == [[1, 1], [1, 1]]


def test_binary_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    p1 = np.clip(0.3 * labels + rng.uniform(0, 0.7, 500), 0, 1)
    probs = _binary(p1)
    m = M.classify_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, probs.argmax(1), average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, p1))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(labels, p1))
    assert m["log_loss"] == pytest.approx(skm.log_loss(labels, probs))


def test_multiclass_auc_is_one_vs_rest_macro():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + 1.5 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = M.classify_metrics(labels, probs)
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )
    one_hot = np.eye(3)[labels]
    assert m["pr_auc"] == pytest.approx(
        skm.average_precision_score(one_hot, probs, average="macro")
    )
    assert m["log_loss"] == pytest.approx(skm.log_loss(labels, probs))
    assert {p["class"] for p in M.roc_points(labels, probs)} == {0, 1, 2}


def test_a_single_class_makes_auc_undefined_with_a_reason():
    m = M.classify_metrics(np.array([1, 1, 1]), _binary([0.9, 0.4, 0.7]))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["pr_auc"])
    assert "one class" in m["undefined"]["roc_auc"]
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert M.roc_points(np.array([1, 1]), _binary([0.9, 0.4])) == []


def test_unlabelled_examples_are_ignored_and_none_labelled_is_undefined():
    m = M.classify_metrics(np.array([0, -1, 1]), _binary([0.2, 0.99, 0.7]))
    assert m["labelled"] == 2 and m["accuracy"] == 1.0
    empty = M.classify_metrics(np.array([-1]), _binary([0.5]))
    assert math.isnan(empty["accuracy"]) and empty["undefined"]["accuracy"] == "no labels"


def test_ece_is_zero_when_calibrated_and_positive_when_overconfident():
    # 10 predictions at 0.9 with 9 right, 10 at 0.6 with 6 right: accuracy = confidence per bin.
    labels = np.array([1] * 9 + [0] + [1] * 6 + [0] * 4)
    probs = _binary([0.9] * 10 + [0.6] * 10)
    assert M.expected_calibration_error(labels, probs, 10) == pytest.approx(0.0, abs=1e-12)
    # Always 99% sure, right half the time.
    labels = np.array([0, 1] * 50)
    probs = _binary([0.99] * 100)
    assert M.expected_calibration_error(labels, probs, 10) == pytest.approx(0.49)
    bins = M.reliability_bins(labels, probs, 10)
    assert [(b["bin"], b["count"]) for b in bins] == [(9, 100)]
    assert bins[0]["lower"] == pytest.approx(0.9) and bins[0]["accuracy"] == 0.5


def test_ece_bins_weight_by_share_of_examples():
    # Bin 0.5-0.6: 2 examples at 0.55, both right (gap 0.45); bin 0.9-1.0: 2 at 0.95, both right.
    labels = np.array([1, 1, 1, 1])
    probs = _binary([0.55, 0.55, 0.95, 0.95])
    assert M.expected_calibration_error(labels, probs, 10) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert M.expected_calibration_error(labels, probs, 2) == pytest.approx(0.25)  # one bin [.5, 1]


def test_roc_and_pr_points_span_the_curve_and_are_thinned():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 5000)
    probs = _binary(rng.uniform(size=5000))
    roc = M.roc_points(labels, probs)
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0)
    assert (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    pr = M.pr_points(labels, probs)
    assert len(pr) <= M.MAX_CURVE_POINTS and len(roc) <= M.MAX_CURVE_POINTS
    assert all(0.0 <= p["precision"] <= 1.0 for p in pr)


# --------------------------------------------------------------------------- next_event


def test_next_event_top_k_and_perplexity_by_hand():
    probs = np.array(
        [
            [0.0, 0.1, 0.6, 0.2, 0.1],  # target 2: top-1
            [0.0, 0.5, 0.1, 0.3, 0.1],  # target 3: 2nd
            [0.0, 0.2, 0.2, 0.2, 0.4],  # target 0: no target, ignored
        ]
    )
    targets = np.array([2, 3, 0])
    m = M.next_event_metrics([probs], [targets])
    assert m["targets"] == 2
    assert m["top1_accuracy"] == 0.5 and m["top5_accuracy"] == 1.0
    assert m["perplexity"] == pytest.approx(math.exp(-(math.log(0.6) + math.log(0.3)) / 2))


def test_uniform_predictor_has_perplexity_vocab_size_and_top5_at_least_top1():
    rng = np.random.default_rng(3)
    vocab = 12
    outputs = [np.full((t, vocab), 1 / vocab) for t in (5, 9, 1)]
    targets = [rng.integers(0, vocab, len(o)) for o in outputs]
    m = M.next_event_metrics(outputs, targets)
    assert m["perplexity"] == pytest.approx(vocab)
    assert m["top5_accuracy"] >= m["top1_accuracy"]
    peaked = [np.eye(vocab)[np.maximum(t, 1)] * 0.9 + 0.1 / vocab for t in targets]
    sharp = M.next_event_metrics(peaked, targets)
    assert sharp["top1_accuracy"] == 1.0 and sharp["perplexity"] < vocab


def test_next_event_stats_sum_over_groups():
    rng = np.random.default_rng(4)
    outputs = [rng.dirichlet(np.ones(8), size=6) for _ in range(10)]
    targets = [rng.integers(0, 8, 6) for _ in range(10)]
    stats = M.next_event_stats(outputs, targets)
    whole = M.next_event_metrics(outputs, targets)
    assert M.next_event_from_stats(stats) == pytest.approx(whole)
    assert M.next_event_from_stats(stats[:3]) == pytest.approx(
        M.next_event_metrics(outputs[:3], targets[:3])
    )


def test_no_next_event_target_is_undefined():
    m = M.next_event_metrics([np.full((2, 4), 0.25)], [np.array([0, 0])])
    assert m["targets"] == 0 and math.isnan(m["perplexity"])
    assert "perplexity" in m["undefined"]


# --------------------------------------------------------------------------- forecast


def _log1p_spec(mean=2.0, std=1.5):
    return FeatureSpec.from_dict(
        {
            "entity": "e",
            "time": "t",
            "categorical": {},
            "categorical_order": [],
            "numeric": {"amount": {"transform": "log1p", "mean": mean, "std": std}},
            "numeric_order": ["amount"],
            "time_delta": False,
        }  # fmt: skip
    )


def test_forecast_errors_are_in_original_units():
    spec = _log1p_spec()
    y = np.array([[10.0, 100.0], [50.0, np.nan], [0.0, 20.0]])  # (T, H) amounts
    y_hat = np.array([[12.0, 80.0], [50.0, 7.0], [0.0, 30.0]])
    z, z_hat = spec.standardise("amount", y, np.nan), spec.standardise("amount", y_hat)
    inverse = lambda v: spec.inverse_standardise("amount", v)  # noqa: E731
    m = M.forecast_metrics([z_hat], [z], inverse)
    assert m["mae_h1"] == pytest.approx((2 + 0 + 0) / 3, rel=1e-5)
    assert m["mae_h2"] == pytest.approx((20 + 10) / 2, rel=1e-5)  # the NaN target is skipped
    assert m["rmse_h2"] == pytest.approx(math.sqrt((400 + 100) / 2), rel=1e-5)
    smape_h1 = 100 * (2 * 2 / 22 + 0 + 0) / 3  # 0 vs 0 counts as no error
    assert m["smape_h1"] == pytest.approx(smape_h1, rel=1e-5)
    assert m["mae"] == pytest.approx((m["mae_h1"] + m["mae_h2"]) / 2)
    assert m["targets"] == 5
    # In standardised units the error would be different: the inverse really is applied.
    assert M.forecast_metrics([z_hat], [z])["mae_h2"] != pytest.approx(m["mae_h2"], rel=1e-2)


def test_smape_is_symmetric_and_bounded():
    y, y_hat = np.array([[100.0], [3.0]]), np.array([[50.0], [-3.0]])
    forward = M.forecast_metrics([y_hat], [y])
    backward = M.forecast_metrics([y], [y_hat])
    assert forward["smape"] == pytest.approx(backward["smape"])
    assert forward["mae"] == pytest.approx(backward["mae"])
    assert forward["smape"] == pytest.approx(100 * (2 * 50 / 150 + 2.0) / 2)
    assert 0 <= forward["smape"] <= 200


def test_forecast_without_targets_is_undefined():
    m = M.forecast_metrics([np.zeros((3, 2))], [np.full((3, 2), np.nan)])
    assert m["targets"] == 0 and math.isnan(m["mae"])
    assert "mae" in m["undefined"] and "mae_h2" in m["undefined"]


# --------------------------------------------------------------------------- grouping


def _classify_preds(labels, p1, buckets):
    n = len(labels)
    return SplitPredictions(
        entity=np.array([f"e{i}" for i in range(n)], dtype=object),
        length=np.minimum(np.asarray(buckets), 3),
        bucket=np.asarray(buckets, dtype=np.int64),
        label=np.asarray(labels, dtype=np.int64),
        outputs=list(_binary(p1)),
        next_event=[np.zeros(1)] * n,
        forecast=[np.zeros((1, 1))] * n,
    )


def test_evaluate_predictions_groups_by_bucket_and_slice_and_is_json_safe():
    preds = _classify_preds(
        [0, 1, 1, 0, 1, 1], [0.2, 0.7, 0.9, 0.4, 0.6, 0.3], [8, 8, 8, 8, 16, 16]
    )
    slices = {"channel": np.array(["pos", "pos", "online", "online", "atm", "atm"], dtype=object)}
    result = evaluate_predictions(preds, {}, "classify", EvaluateConfig(), slices)
    assert result["primary_metric"] == "roc_auc" and result["examples"] == 6
    assert result["primary_value"] == result["overall"]["roc_auc"]
    assert {b: v["examples"] for b, v in result["by_bucket"].items()} == {"8": 4, "16": 2}
    assert result["by_bucket"]["8"]["roc_auc"] == pytest.approx(1.0)
    assert result["by_bucket"]["16"]["roc_auc"] is None  # only class 1 there: null, not NaN
    assert "one class" in result["undefined"]["by_bucket.16.roc_auc"]
    assert set(result["slices"]["channel"]) == {"pos", "online", "atm"}
    assert sum(v["examples"] for v in result["slices"]["channel"].values()) == 6
    json.dumps(result, allow_nan=False)  # raises on NaN


def test_evaluate_predictions_reports_length_ranges_next_to_buckets():
    preds = _classify_preds(
        [0, 1, 1, 0, 1, 0], [0.2, 0.7, 0.9, 0.4, 0.6, 0.3], [8, 8, 8, 8, 16, 16]
    )
    config = EvaluateConfig(slices=(), length_ranges=(3,), bootstrap_samples=50)
    result = evaluate_predictions(preds, {}, "classify", config, {})
    assert set(result["by_bucket"]) == {"8", "16"}  # kept for those who read buckets
    (only,) = result["by_length"]  # every true length here is 3
    assert only["range"] == "3+" and only["examples"] == 6
    assert only["metrics"]["roc_auc"] == result["overall"]["roc_auc"]
    assert set(only["ci"]) == {"roc_auc", "accuracy", "log_loss"}
    json.dumps(result, allow_nan=False)


def test_evaluate_predictions_forecast_keeps_horizon_detail_overall_only():
    spec = _log1p_spec()
    preds = SplitPredictions(
        entity=np.array(["a", "b"], dtype=object),
        length=np.array([2, 1]),
        bucket=np.array([2, 2]),
        label=np.array([-1, -1]),
        outputs=[np.zeros((2, 2)), np.ones((1, 2))],
        next_event=[np.zeros(2), np.zeros(1)],
        forecast=[np.full((2, 2), 0.5), np.array([[np.nan, np.nan]])],
    )
    target = ForecastTarget("amount", horizon=2, transform="none", mean=0.0, std=1.0)
    # evaluate_predictions reads a manifest's features and targets only
    manifest = SimpleNamespace(features=spec, targets=Targets(forecast=target))
    result = evaluate_predictions(preds, manifest, "forecast", EvaluateConfig(slices=()), {})
    assert result["primary_metric"] == "mae" and "mae_h2" in result["overall"]
    assert "mae_h2" not in result["by_bucket"]["2"] and result["by_bucket"]["2"]["examples"] == 2
    expected = abs(spec.inverse_standardise("amount", 0.5) - spec.inverse_standardise("amount", 0))
    assert result["overall"]["mae"] == pytest.approx(float(expected))
    assert result["slices"] == {}
    assert [r["examples"] for r in result["by_length"]] == [2]
    assert set(result["by_length"][0]["ci"]) == {"mae", "rmse", "smape"}


def test_jsonable_turns_nan_into_null_and_numpy_into_python():
    out = jsonable({"a": np.float32(0.5), "b": float("nan"), "c": [np.int64(3), np.inf]})
    assert out == {"a": 0.5, "b": None, "c": [3, None]}
    assert type(out["c"][0]) is int
