"""Metrics by range of true length: the ranges, the vectorised bootstrap and its intervals,
the paired comparison the gate reads, and the by-length plot."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm

from pipelines.params.gate import EvaluateConfig
from pipelines.plots import LENGTH_PLOT_FILES, by_length_records, plot_data, render_plots
from pipelines.predict import SplitPredictions
from pipelines.split_metrics import (
    EvaluateError,
    _group_metrics,
    _weighted_auc,
    _weighted_metrics,
    compare_by_length,
    evaluate_predictions,
    length_ranges,
)
from seqcore.config import ConfigError
from seqcore.manifest import ForecastTarget, Targets
from tests.unit.test_metrics import _log1p_spec

NO_SLICES = EvaluateConfig(slices=())


def _classify(labels, probs, lengths) -> SplitPredictions:
    n = len(labels)
    return SplitPredictions(
        entity=np.array([f"e{i}" for i in range(n)], dtype=object),
        length=np.asarray(lengths, np.int64),
        bucket=2 ** np.ceil(np.log2(lengths)).astype(np.int64),  # few buckets, as the shards
        label=np.asarray(labels, np.int64),
        outputs=list(np.asarray(probs, np.float64)),
        next_event=[np.zeros(1)] * n,
        forecast=[np.zeros((1, 1))] * n,
    )


def _binary(labels, p1, lengths) -> SplitPredictions:
    p1 = np.asarray(p1, np.float64)
    return _classify(labels, np.stack([1 - p1, p1], axis=1), lengths)


def _noisy(n: int, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p1 = 1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, noise, n))))
    return labels, p1.round(3), rng.integers(2, 300, n)  # rounded: ties in the scores


# --------------------------------------------------------------------------- ranges


def test_explicit_ranges_start_at_the_shortest_example_and_drop_empty_ones():
    lengths = np.array([2, 3, 15, 16, 63, 64, 300, 1000])
    config = EvaluateConfig(length_ranges=(16, 64, 256))
    assert [r.label for r in length_ranges(lengths, config)] == ["2-15", "16-63", "64-255", "256+"]
    gap = np.array([2, 5, 300])
    assert [r.label for r in length_ranges(gap, config)] == ["2-15", "256+"]
    assert [r.label for r in length_ranges(np.array([20, 30]), config)] == ["20-63"]
    assert length_ranges(np.array([], np.int64), config) == []


def test_quantile_ranges_cover_every_example_once_and_merge_small_ones():
    lengths = np.random.default_rng(0).integers(1, 400, 2000)
    ranges = length_ranges(lengths, EvaluateConfig())
    assert len(ranges) == 4 and ranges[0].lo == lengths.min() and ranges[-1].hi is None
    members = np.concatenate([r.members(lengths) for r in ranges])
    assert sorted(members.tolist()) == list(range(len(lengths)))
    assert all(abs(len(r.members(lengths)) - 500) < 60 for r in ranges)
    # most windows at the window length (64): the quantiles coincide and ranges merge
    tied = np.r_[np.full(900, 64), np.arange(1, 101)]
    config = EvaluateConfig(min_range_examples=50)
    merged = length_ranges(tied, config)
    assert all(len(r.members(tied)) >= 50 for r in merged)
    assert merged[-1].label == "64+"
    # fewer examples than one range needs: one range
    assert [r.label for r in length_ranges(np.array([3, 9, 40]), config)] == ["3+"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("length_ranges", [64, 16]), ("length_ranges", [1]), ("length_ranges", [16.5]),
     ("bootstrap_samples", 3), ("confidence", 1.0), ("length_range_count", 0)],
)  # fmt: skip
def test_bad_length_range_params_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"evaluate.{key}"):
        EvaluateConfig(**{key: value})


# --------------------------------------------------------------------------- weighted metrics


def test_weighted_auc_is_sklearns_with_sample_weights_and_ties():
    labels, p1, _ = _noisy(600)
    rng = np.random.default_rng(1)
    weights = rng.integers(0, 4, size=(5, 600)).astype(np.float64)
    got = _weighted_auc(labels == 1, p1, weights)
    expected = [skm.roc_auc_score(labels, p1, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    one_class = _weighted_auc(np.ones(4, bool), np.arange(4.0), np.ones((1, 4)))
    assert np.isnan(one_class).all()


def _unit_weights_agree(preds, manifest, task, names, rel=1e-9):
    idx = np.arange(len(preds.length))
    weighted, known = _weighted_metrics(preds, manifest, task)
    assert set(names) <= known
    got = weighted(idx, np.ones((1, len(idx))))
    point = _group_metrics(preds, manifest, task, NO_SLICES)(idx)
    for name in names:
        assert got[name][0] == pytest.approx(point[name], rel=rel), name


def test_weighted_forms_with_unit_weights_are_the_metrics_themselves():
    labels, p1, lengths = _noisy(500)
    _unit_weights_agree(_binary(labels, p1, lengths), None, "classify",
                        ("roc_auc", "accuracy", "log_loss"))  # fmt: skip
    rng = np.random.default_rng(2)
    labels3 = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels3]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels3[:10] = -1  # unlabelled examples count nowhere
    _unit_weights_agree(_classify(labels3, probs, lengths[:300]), None, "classify",
                        ("roc_auc", "accuracy", "log_loss"))  # fmt: skip

    n, steps, vocab = 40, 5, 6
    outputs = [rng.dirichlet(np.ones(vocab), size=steps) for _ in range(n)]
    targets = [rng.integers(0, vocab, steps) for _ in range(n)]
    preds = SplitPredictions(entity=np.arange(n).astype(object), length=np.full(n, steps),
                             bucket=np.full(n, steps), label=np.full(n, -1), outputs=outputs,
                             next_event=targets, forecast=[np.zeros((1, 1))] * n)  # fmt: skip
    _unit_weights_agree(preds, None, "next_event", ("top1_accuracy", "top5_accuracy", "perplexity"))

    spec = _log1p_spec()
    target = ForecastTarget("amount", horizon=2, transform="log1p", mean=2.0, std=1.5)
    manifest = SimpleNamespace(features=spec, targets=Targets(forecast=target))
    fc_targets = [rng.normal(size=(steps, 2)) for _ in range(n)]
    fc_targets[0][:, 1] = np.nan  # a step with no target
    preds = SplitPredictions(entity=np.arange(n).astype(object), length=np.full(n, steps),
                             bucket=np.full(n, steps), label=np.full(n, -1),
                             outputs=[rng.normal(size=(steps, 2)) for _ in range(n)],
                             next_event=[np.zeros(steps)] * n, forecast=fc_targets)  # fmt: skip
    _unit_weights_agree(preds, manifest, "forecast", ("mae", "rmse", "smape"))


# --------------------------------------------------------------------------- by_length


def test_by_length_lists_ranges_in_order_with_counts_metrics_and_intervals():
    labels, p1, lengths = _noisy(2000)
    config = EvaluateConfig(slices=(), length_ranges=(16, 64, 256), bootstrap_samples=100)
    result = evaluate_predictions(_binary(labels, p1, lengths), None, "classify", config, {})
    rows = result["by_length"]
    assert [r["range"] for r in rows] == ["2-15", "16-63", "64-255", "256+"]
    assert [(r["lo"], r["hi"]) for r in rows] == [(2, 15), (16, 63), (64, 255), (256, None)]
    assert sum(r["examples"] for r in rows) == 2000
    for r in rows:
        assert set(r["ci"]) == {"roc_auc", "accuracy", "log_loss"}
        lo, hi = r["ci"]["roc_auc"]
        assert lo < r["metrics"]["roc_auc"] < hi and hi - lo < 0.2
        assert "examples" not in r["metrics"]
    assert result["length_ranges"] == {"source": "params", "bootstrap_samples": 100,
                                       "confidence": 0.9, "seed": result["length_ranges"]["seed"]}  # fmt: skip
    again = evaluate_predictions(_binary(labels, p1, lengths), None, "classify", config, {})
    assert again["by_length"] == rows  # seeded: the same intervals every run
    json.dumps(result, allow_nan=False)


def test_intervals_narrow_with_more_examples_and_widen_with_confidence():
    def width(n: int, confidence: float) -> float:
        labels, p1, lengths = _noisy(n, seed=4)
        config = EvaluateConfig(slices=(), length_ranges=(10_000,), confidence=confidence)
        (row,) = evaluate_predictions(_binary(labels, p1, lengths), None, "classify", config,
                                      {})["by_length"]  # fmt: skip
        lo, hi = row["ci"]["roc_auc"]
        return hi - lo

    assert width(4000, 0.9) < width(250, 0.9)
    assert width(1000, 0.99) > width(1000, 0.5)


def test_a_range_with_one_class_has_no_auc_interval_and_says_why():
    labels, p1, lengths = _noisy(400)
    labels[lengths < 16] = 1
    config = EvaluateConfig(slices=(), length_ranges=(16,))
    result = evaluate_predictions(_binary(labels, p1, lengths), None, "classify", config, {})
    short = result["by_length"][0]
    assert short["metrics"]["roc_auc"] is None and short["ci"]["roc_auc"] is None
    assert short["ci"]["accuracy"] is not None
    assert "one class" in result["undefined"]["by_length.2-15.roc_auc"]


def test_no_bootstrap_means_no_intervals():
    labels, p1, lengths = _noisy(300)
    config = EvaluateConfig(slices=(), bootstrap_samples=0)
    result = evaluate_predictions(_binary(labels, p1, lengths), None, "classify", config, {})
    assert all(r["ci"] == {} for r in result["by_length"])


# --------------------------------------------------------------------------- paired comparison


def test_paired_comparison_of_a_model_with_itself_is_exactly_zero():
    labels, p1, lengths = _noisy(1000)
    preds = _binary(labels, p1, lengths)
    rows = compare_by_length(preds, preds, None, "classify", "roc_auc", NO_SLICES)
    assert len(rows) == 4
    for r in rows:
        assert r["regression"] == 0.0 and r["regression_ci"] == [0.0, 0.0]
        assert r["challenger"] == r["champion"]


def test_paired_comparison_finds_a_regression_where_one_range_got_worse():
    labels, p1, lengths = _noisy(3000, noise=0.8)
    worse = np.where(lengths >= 150, _noisy(3000, seed=9, noise=3.0)[1], p1)
    config = EvaluateConfig(slices=(), length_ranges=(150,))
    rows = compare_by_length(_binary(labels, worse, lengths), _binary(labels, p1, lengths),
                             None, "classify", "roc_auc", config)  # fmt: skip
    short, long = rows
    assert short["regression_ci"] == [0.0, 0.0]
    assert long["regression"] > 0.05 and long["regression_ci"][0] > 0.02
    # lower is better: the sign follows, so positive still means "the challenger is worse"
    (ll_short, ll_long) = compare_by_length(
        _binary(labels, worse, lengths), _binary(labels, p1, lengths), None, "classify",
        "log_loss", config,
    )  # fmt: skip
    assert ll_long["regression"] > 0 and ll_long["regression_ci"][0] > 0


def test_a_metric_without_a_weighted_form_is_bootstrapped_one_resample_at_a_time():
    labels, p1, lengths = _noisy(300)
    other = np.clip(p1 + np.random.default_rng(5).normal(0, 0.2, 300), 0, 1)
    config = EvaluateConfig(slices=(), bootstrap_samples=20, length_ranges=(100,))
    rows = compare_by_length(_binary(labels, other, lengths), _binary(labels, p1, lengths),
                             None, "classify", "macro_f1", config)  # fmt: skip
    for r in rows:
        lo, hi = r["regression_ci"]
        assert lo <= hi


def test_comparing_predictions_of_different_examples_is_refused():
    labels, p1, lengths = _noisy(100)
    with pytest.raises(EvaluateError, match="different examples"):
        compare_by_length(_binary(labels, p1, lengths), _binary(labels, p1, lengths[::-1]),
                          None, "classify", "roc_auc", NO_SLICES)  # fmt: skip


def test_by_length_and_the_paired_bootstrap_take_seconds_on_50k_examples():
    labels, p1, lengths = _noisy(50_000)
    a, b = _binary(labels, p1, lengths), _binary(labels, p1[::-1].copy(), lengths)
    evaluate_predictions(_binary(labels[:500], p1[:500], lengths[:500]), None, "classify",
                         NO_SLICES, {})  # fmt: skip  # warm up sklearn's imports
    start = time.perf_counter()
    evaluate_predictions(a, None, "classify", NO_SLICES, {})
    compare_by_length(a, b, None, "classify", "roc_auc", NO_SLICES)
    assert time.perf_counter() - start < 20.0  # about 3 s on 2 CPUs


# --------------------------------------------------------------------------- plot


def test_the_by_length_plot_has_its_records_and_a_png(tmp_path):
    labels, p1, lengths = _noisy(800)
    labels[lengths >= 256] = 0  # one range without an AUC: drawn as n/a
    config = EvaluateConfig(slices=(), length_ranges=(16, 64, 256))
    result = evaluate_predictions(_binary(labels, p1, lengths), None, "classify", config, {})
    records = by_length_records(result)
    assert [r["range"] for r in records] == ["2-15", "16-63", "64-255", "256+"]
    first = records[0]
    assert (
        first["metric"] == "roc_auc"
        and first["value"] == result["by_length"][0]["metrics"]["roc_auc"]
    )
    assert [first["ci_lo"], first["ci_hi"]] == result["by_length"][0]["ci"]["roc_auc"]
    assert records[-1]["value"] is None and records[-1]["ci_lo"] is None
    data = plot_data(_binary(labels, p1, lengths), result, config)
    assert set(LENGTH_PLOT_FILES) <= set(data) and data["by_length"] == records
    written = render_plots(data, result, tmp_path)
    assert "by_length.png" in written
    assert (tmp_path / "by_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
