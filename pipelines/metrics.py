"""Evaluation metrics per task: pure functions over numpy arrays (no I/O, no torch).

* classify: accuracy, macro-F1, ROC-AUC and PR-AUC (average precision; binary on the positive
  class, one-vs-rest macro over the classes present for more than two), log-loss and the
  expected calibration error (Guo et al., 2017, "On Calibration of Modern Neural Networks":
  equal-width bins on the max probability), plus the curve points behind the plots.
* next_event: top-1 / top-5 accuracy over real steps that have a target (id > 0) and
  perplexity = exp(mean negative log-likelihood).
* forecast: MAE, RMSE and sMAPE (percent, 0..200; Makridakis' symmetric form) per horizon step
  in the column's original units, and their mean over steps.

Baselines are scored by the same definitions: ``next_event_stats_from_table`` is
``next_event_stats`` for a predictor whose probabilities depend on the current id only (a
(V, V) table, looked up instead of materialised per step), and ``forecast_stats_dense`` is
``forecast_stats`` over one bucket's dense arrays already in original units. ``skill`` compares
a model's value of a metric with a baseline's, signed so that positive means the model is
better.

A metric that a slice cannot define (ROC-AUC with a single class present, top-k without a
target) is NaN here, and its reason is listed under the result's ``undefined`` key;
``pipelines.split_metrics`` turns NaN into JSON null. The per-step tasks reduce each example
to sufficient statistics first (``*_stats``), so overall, per-bucket and per-slice metrics
only sum rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

NAN = float("nan")
PROB_FLOOR = 1e-15
"""Probabilities are clipped here before a log (sklearn's log_loss convention)."""
MAX_CURVE_POINTS = 500


# --------------------------------------------------------------------------- classify


def _classes_present(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels)


def ovr_scores(labels: np.ndarray, probs: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class, y_true, score) per class ranked: the positive class only for binary."""
    if probs.shape[1] == 2:
        return [(1, (labels == 1).astype(int), probs[:, 1])]
    out = []
    for c in _classes_present(labels).tolist():
        y = (labels == c).astype(int)
        if 0 < y.sum() < len(y):
            out.append((int(c), y, probs[:, c]))
    return out


def _auc(labels: np.ndarray, probs: np.ndarray, scorer: Callable) -> tuple[float, str | None]:
    present = _classes_present(labels)
    if len(present) < 2:
        return NAN, f"only one class present ({present.tolist()})"
    per_class = [scorer(y, s) for _, y, s in ovr_scores(labels, probs)]
    return float(np.mean(per_class)), None


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> tuple[float, str | None]:
    """ROC-AUC (binary: positive class; else one-vs-rest macro), or (NaN, reason)."""
    from sklearn.metrics import roc_auc_score

    return _auc(np.asarray(labels), np.asarray(probs), roc_auc_score)


def pr_auc(labels: np.ndarray, probs: np.ndarray) -> tuple[float, str | None]:
    """Area under the precision-recall curve as average precision, or (NaN, reason)."""
    from sklearn.metrics import average_precision_score

    return _auc(np.asarray(labels), np.asarray(probs), average_precision_score)


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-probability of the true class (probabilities clipped at 1e-15)."""
    p_true = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p_true, PROB_FLOOR, 1.0))))


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int) -> list[dict[str, Any]]:
    """Non-empty equal-width bins of max probability: bounds, count, mean confidence, accuracy."""
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # 1.0 joins the last bin
    counts = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    hit_sum = np.bincount(which, weights=correct, minlength=bins)
    return [
        {
            "bin": b,
            "lower": b / bins,
            "upper": (b + 1) / bins,
            "count": int(counts[b]),
            "confidence": float(conf_sum[b] / counts[b]),
            "accuracy": float(hit_sum[b] / counts[b]),
        }
        for b in range(bins)
        if counts[b]
    ]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE = sum over bins of (share of examples) * |accuracy - mean confidence|."""
    n = len(labels)
    if not n:
        return NAN
    rows = reliability_bins(labels, probs, bins)
    return float(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows))


def classify_metrics(labels: np.ndarray, probs: np.ndarray, ece_bins: int = 10) -> dict[str, Any]:
    """All classify metrics over labelled examples (label >= 0); probs is (N, K)."""
    from sklearn.metrics import f1_score

    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64).reshape(len(labels), -1)
    keep = labels >= 0
    labels, probs = labels[keep], probs[keep]
    out: dict[str, Any] = {"labelled": int(len(labels))}
    if not len(labels):
        names = ("accuracy", "macro_f1", "roc_auc", "pr_auc", "log_loss", "ece")
        return {**out, **dict.fromkeys(names, NAN), "undefined": dict.fromkeys(names, "no labels")}
    predicted = probs.argmax(axis=1)
    undefined: dict[str, str] = {}
    out["accuracy"] = float(np.mean(predicted == labels))
    seen = np.union1d(labels, predicted)
    out["macro_f1"] = float(
        f1_score(labels, predicted, labels=seen, average="macro", zero_division=0)
    )
    for name, fn in (("roc_auc", roc_auc), ("pr_auc", pr_auc)):
        value, why = fn(labels, probs)
        out[name] = value
        if why:
            undefined[name] = why
    out["log_loss"] = log_loss(labels, probs)
    out["ece"] = expected_calibration_error(labels, probs, ece_bins)
    if undefined:
        out["undefined"] = undefined
    return out


def _thin(points: list[dict[str, Any]], limit: int = MAX_CURVE_POINTS) -> list[dict[str, Any]]:
    """At most ``limit`` points, evenly spaced, first and last kept (plots need no more)."""
    if len(points) <= limit:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, limit).round().astype(int))
    return [points[i] for i in keep.tolist()]


def _curve_points(
    labels: np.ndarray,
    probs: np.ndarray,
    curve: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]],
    names: tuple[str, ...],
) -> list[dict[str, Any]]:
    """One-vs-rest points of ``curve`` (its outputs named ``names``), thinned, with ``class``
    for more than two classes; none when fewer than two classes occur."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    out: list[dict[str, Any]] = []
    if len(_classes_present(labels)) < 2:
        return out
    multi = probs.shape[1] > 2
    for c, y, score in ovr_scores(labels, probs):
        columns = curve(y, score)[: len(names)]
        pts = [
            {**{n: float(v) for n, v in zip(names, values, strict=True)},
             **({"class": c} if multi else {})}
            for values in zip(*columns, strict=True)
        ]  # fmt: skip
        out += _thin(pts)
    return out


def roc_points(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """ROC curve points {fpr, tpr, threshold} (with ``class`` for more than two classes)."""
    from sklearn.metrics import roc_curve

    return _curve_points(labels, probs, roc_curve, ("fpr", "tpr", "threshold"))


def pr_points(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, Any]]:
    """Precision-recall curve points {recall, precision} (with ``class`` beyond binary)."""
    from sklearn.metrics import precision_recall_curve

    def recall_precision(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, ...]:
        precision, recall, _ = precision_recall_curve(y, score)
        return recall, precision

    return _curve_points(labels, probs, recall_precision, ("recall", "precision"))


def confusion_matrix(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K, K) counts: rows are the true class, columns the predicted (argmax) class."""
    probs = np.asarray(probs)
    k = probs.shape[1]
    predicted = probs.argmax(axis=1)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), predicted), 1)
    return matrix


# --------------------------------------------------------------------------- next_event

NEXT_EVENT_STATS = ("targets", "top1", "top5", "nll")


def next_event_stats(outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 4) per example: target steps, top-1 hits, top-5 hits, summed NLL.

    ``outputs[i]`` is (T, V) probabilities per step, ``targets[i]`` (T,) next-event ids; steps
    whose target is 0 (PAD: the window's last event, or none visible) count nowhere. Ties rank
    the lower id first, as ``argmax`` does, so a uniform predictor is not always "right".
    """
    stats = np.zeros((len(outputs), len(NEXT_EVENT_STATS)), dtype=np.float64)
    for i, (probs, target) in enumerate(zip(outputs, targets, strict=True)):
        target = np.asarray(target, np.int64)
        real = target > 0
        if not real.any():
            continue
        p = np.asarray(probs, np.float64)[: len(target)][real]  # (n, V)
        t = target[real]
        p_true = p[np.arange(len(t)), t]
        ids = np.arange(p.shape[1])
        rank = (p > p_true[:, None]).sum(1) + ((p == p_true[:, None]) & (ids < t[:, None])).sum(1)
        nll = -np.log(np.clip(p_true, PROB_FLOOR, 1.0))
        stats[i] = (len(t), (rank < 1).sum(), (rank < 5).sum(), nll.sum())
    return stats


def next_event_from_stats(stats: np.ndarray) -> dict[str, Any]:
    """Metrics from summed ``next_event_stats`` rows."""
    total = np.asarray(stats, np.float64).reshape(-1, len(NEXT_EVENT_STATS)).sum(axis=0)
    n, top1, top5, nll = total.tolist()
    if n == 0:
        names = ("top1_accuracy", "top5_accuracy", "perplexity", "nll")
        return {"targets": 0, **dict.fromkeys(names, NAN),
                "undefined": dict.fromkeys(names, "no next-event targets")}  # fmt: skip
    return {
        "targets": int(n),
        "top1_accuracy": top1 / n,
        "top5_accuracy": top5 / n,
        "nll": nll / n,
        "perplexity": float(np.exp(nll / n)),
    }


def rank_table(probs: np.ndarray) -> np.ndarray:
    """(V, V) rank of each id within each row of a probability table: 0 for the most
    probable; ties rank the lower id first, as ``next_event_stats`` ranks them."""
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")  # stable: equal values keep id order
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(probs.shape[1])[None, :], axis=1)
    return ranks


def next_event_stats_from_table(
    table: np.ndarray, current: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """``next_event_stats`` of a predictor whose step-t probabilities are ``table[current[t]]``.

    ``table`` is (V, V) probabilities of the next id given the current id; ``current`` and
    ``targets`` are (N, T) ids (targets 0 count nowhere). Returns the same (N, 4) rows that
    ``next_event_stats`` returns for the materialised (T, V) outputs, without building them.
    """
    table = np.asarray(table, np.float64)
    ranks = rank_table(table)
    current = np.asarray(current, np.int64)
    targets = np.asarray(targets, np.int64)
    real = targets > 0
    p_true = np.where(real, table[current, targets], 1.0)
    rank = ranks[current, targets]
    nll = -np.log(np.clip(p_true, PROB_FLOOR, 1.0))  # 0 where not real (p_true 1)
    hits = [(real & (rank < k)).sum(1) for k in (1, 5)]
    stats = np.stack([real.sum(1), *hits, nll.sum(1)], axis=1)
    return stats.astype(np.float64).reshape(len(targets), len(NEXT_EVENT_STATS))


def next_event_metrics(
    outputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]
) -> dict[str, Any]:
    """top1_accuracy, top5_accuracy, nll, perplexity and the number of target steps."""
    return next_event_from_stats(next_event_stats(outputs, targets))


# --------------------------------------------------------------------------- forecast

FORECAST_STATS = ("count", "abs", "sq", "smape")


def forecast_stats(
    outputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    inverse: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """(N, H, 4) per example and horizon step: target count, sum |e|, sum e^2, sum sMAPE terms.

    ``outputs[i]`` and ``targets[i]`` are (T, H) standardised values (targets NaN where none);
    ``inverse`` maps them back to the column's original units before any error is taken.
    """
    inverse = inverse or (lambda z: np.asarray(z, np.float64))
    horizon = next((np.shape(t)[-1] for t in targets if np.ndim(t) == 2), 1)
    stats = np.zeros((len(outputs), horizon, len(FORECAST_STATS)), dtype=np.float64)
    for i, (pred, target) in enumerate(zip(outputs, targets, strict=True)):
        target = np.asarray(target, np.float64).reshape(-1, horizon)
        if not len(target):
            continue
        y = inverse(target)
        y_hat = inverse(np.asarray(pred, np.float64).reshape(-1, horizon)[: len(target)])
        real = np.isfinite(y) & np.isfinite(y_hat)
        err = np.where(real, np.abs(y - y_hat), 0.0)
        denom = np.abs(y) + np.abs(y_hat)
        with np.errstate(invalid="ignore", divide="ignore"):
            smape = np.where(real & (denom > 0), 2.0 * err / denom, 0.0)  # 0/0: both exactly 0
        stats[i, :, 0] = real.sum(0)
        stats[i, :, 1] = err.sum(0)
        stats[i, :, 2] = (err**2).sum(0)
        stats[i, :, 3] = smape.sum(0)
    return stats


def forecast_stats_dense(
    predicted: np.ndarray, target: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """``forecast_stats`` of one bucket at once: ``predicted`` and ``target`` (N, L, H) in
    original units (target NaN where none), steps at or past ``lengths`` (N,) ignored."""
    y = np.asarray(target, np.float64)
    y_hat = np.broadcast_to(np.asarray(predicted, np.float64), y.shape)
    steps = np.arange(y.shape[1])[None, :, None] < np.asarray(lengths)[:, None, None]
    real = steps & np.isfinite(y) & np.isfinite(y_hat)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(real, np.abs(y - y_hat), 0.0)
        denom = np.abs(y) + np.abs(y_hat)
        smape = np.where(real & (denom > 0), 2.0 * err / denom, 0.0)
    return np.stack([real.sum(1), err.sum(1), (err**2).sum(1), smape.sum(1)], axis=-1)


def forecast_from_stats(stats: np.ndarray) -> dict[str, Any]:
    """mae/rmse/smape per step (``mae_h1``...) and their mean over steps with targets."""
    total = np.asarray(stats, np.float64).sum(axis=0)  # (H, 4)
    out: dict[str, Any] = {"targets": int(total[:, 0].sum())}
    per_step: dict[str, list[float]] = {"mae": [], "rmse": [], "smape": []}
    undefined: dict[str, str] = {}
    for h, (n, abs_sum, sq_sum, smape_sum) in enumerate(total.tolist(), start=1):
        values = (
            {"mae": abs_sum / n, "rmse": float(np.sqrt(sq_sum / n)), "smape": 100.0 * smape_sum / n}
            if n
            else dict.fromkeys(per_step, NAN)
        )
        for name, value in values.items():
            out[f"{name}_h{h}"] = value
            if n:
                per_step[name].append(value)
            else:
                undefined[f"{name}_h{h}"] = f"no targets {h} step(s) ahead"
    for name, steps in per_step.items():
        out[name] = float(np.mean(steps)) if steps else NAN
        if not steps:
            undefined[name] = "no forecast targets"
    if undefined:
        out["undefined"] = undefined
    return out


def forecast_metrics(
    outputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    inverse: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """MAE, RMSE, sMAPE (%) per horizon step in original units, and their means."""
    return forecast_from_stats(forecast_stats(outputs, targets, inverse))


# --------------------------------------------------------------------------- skill


def skill(
    metric: str, model: float | None, baseline: float | None, lower_is_better: bool
) -> dict[str, Any]:
    """How much a model beats a baseline on ``metric``.

    ``improvement`` is model minus baseline, negated for a metric where lower is better, so
    that it is positive when the model is better; ``relative`` divides it by ``|baseline|``;
    ``beats_baseline`` is true only for a strictly positive improvement. A value that is
    missing or not finite makes the comparison undefined (NaN, reason under ``undefined``,
    and ``beats_baseline`` false).
    """
    out: dict[str, Any] = {"metric": metric, "model": _finite(model),
                           "baseline": _finite(baseline)}  # fmt: skip
    undefined: dict[str, str] = {}
    if math.isnan(out["model"]) or math.isnan(out["baseline"]):
        which = "model" if math.isnan(out["model"]) else "baseline"
        why = f"the {which}'s {metric} is undefined"
        out.update(improvement=NAN, relative=NAN, beats_baseline=False)
        undefined = {"improvement": why, "relative": why}
    else:
        diff = out["model"] - out["baseline"]
        out["improvement"] = -diff if lower_is_better else diff
        if out["baseline"] == 0:
            out["relative"] = NAN
            undefined["relative"] = f"the baseline's {metric} is 0"
        else:
            out["relative"] = out["improvement"] / abs(out["baseline"])
        out["beats_baseline"] = bool(out["improvement"] > 0)
    if undefined:
        out["undefined"] = undefined
    return out


def _finite(value: float | None) -> float:
    return NAN if value is None or not math.isfinite(float(value)) else float(value)
