"""Delayed-label performance (``pipelines.performance``): metrics by window, the sampling
error that keeps small or noisy windows from being called degraded, and labels written
another way than training wrote them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.params.monitor import MonitorConfig
from pipelines.performance import auc_standard_error, by_window, class_index
from seqcore.config import ConfigError

DAY_US = 86_400 * 10**6


def _sample(n: int, separation: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, n)
    logit = rng.normal(size=n) + separation * labels
    p = 1 / (1 + np.exp(-logit))
    return labels, np.stack([1 - p, p], axis=1)


def test_the_auc_standard_error_matches_the_spread_of_resampled_aucs():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels, probs = _sample(400, 1.5, rng)
    resampled = []
    for _ in range(300):
        i = rng.integers(0, len(labels), len(labels))
        resampled.append(roc_auc_score(labels[i], probs[i, 1]))
    assert auc_standard_error(labels, probs) == pytest.approx(np.std(resampled), rel=0.25)


def test_windows_worse_than_the_evaluation_beyond_their_error_are_degraded():
    rng = np.random.default_rng(1)
    good, good_p = _sample(600, 2.0, rng)
    bad, bad_p = _sample(600, 0.2, rng)  # the world changed: scores barely rank
    few, few_p = _sample(20, -1.0, rng)  # worse still, but 20 labels decide nothing
    labels = np.concatenate([good, bad, few])
    probs = np.concatenate([good_p, bad_p, few_p])
    times = np.concatenate([np.full(600, 1), np.full(600, 8), np.full(20, 15)]) * DAY_US
    config = MonitorConfig()
    section = by_window(labels, probs, times, {"roc_auc": 0.85}, config)
    windows = section["windows"]
    assert [w["labels"] for w in windows] == [600, 600, 20]
    assert [w["degraded"] for w in windows] == [False, True, False]
    assert all(type(w["degraded"]) is bool for w in windows)  # JSON true/false, not "True"
    assert windows[2]["drop"] is None and windows[2]["roc_auc"] < 0.5
    assert section["degraded"] == [windows[1]["start"]]
    assert all(w["end"] > w["start"] for w in windows)
    # without the model's evaluation nothing is judged
    assert by_window(labels, probs, times, {}, config)["degraded"] == []


def test_labels_written_another_way_than_training_wrote_them_are_matched():
    assert class_index(pa.chunked_array([["1", "0", "7"]]), (0, 1), "y").tolist() == [1, 0, -1]
    assert class_index(pa.chunked_array([[0, 1]]), (0, 1), "y").tolist() == [0, 1]
    assert class_index(pa.chunked_array([["true", "False", "1"]]), (False, True), "y").tolist() == [
        1,
        0,
        1,
    ]
    assert class_index(pa.chunked_array([[1, 0]]), (False, True), "y").tolist() == [1, 0]
    assert class_index(pa.chunked_array([["ok", "fraud"]]), ("fraud", "ok"), "y").tolist() == [
        1,
        0,
    ]


@pytest.mark.parametrize(
    ("key", "value"), [("label_window", "0d"), ("label_window", "soon"), ("max_metric_drop", 1.5)]
)
def test_monitor_params_are_checked_when_read(key, value):
    with pytest.raises(ConfigError, match=f"monitor.{key}"):
        MonitorConfig(**{key: value})
