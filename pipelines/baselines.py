"""Order-blind baselines, scored next to the model on the same windows with the same metrics.

A sequence model earns its cost only by beating what needs no sequence model, so every
evaluation fits a baseline on the train split of the shards (at most ``FIT_SAMPLE`` windows, a
seeded sample) and scores it on the evaluated split with the model's metrics
(``pipelines.metrics``):

* classify, ``order_blind_logistic_regression``: logistic regression on each window's bag of
  events: per categorical column the count of each vocabulary id divided by the length, per
  numeric channel the mean, std, min and max over real steps, and log(1 + length). It sees the
  events a model sees, in no order: on the generated data it cannot tell the "fraud" order
  (burst, then large payment) from the "decoy" order, which holds the same events. A train
  split with fewer than two classes cannot fit a classifier; the baseline is then
  ``class_prior``: the train label frequencies (add-one smoothed) for every window.
* next_event, ``transition_table``: the next id's frequencies given the current id, counted
  over the (current, next) pairs of train windows. Probabilities are those counts plus one
  pseudo-count spread as the overall next-id frequencies: the ranking (top-1, top-5) is by
  count, ties go to the overall more frequent id, a current id never seen in train gets the
  overall frequencies, and no target has probability 0 (perplexity stays finite).
* forecast, ``last_value``: the window's last observed value of the column, repeated over the
  horizon; ``train_mean``: the mean one-step target of the train windows. Both are in the
  column's original units, like the model's errors. MASE divides a mean absolute error (the
  mean over horizon steps) by Hyndman & Koehler's (2006) in-sample scale: the mean
  |y_t - y_(t-1)| over consecutive events of the train windows.

``baseline_report`` turns the scores into the ``baseline``, ``baselines`` (forecast),
``mase_scale`` and ``skill`` sections of reports/evaluation.json; ``order_blind_baseline`` is the
classify baseline's accuracy and ROC-AUC alone, for benchmarks/quality.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import metrics as M
from pipelines.params.gate import LOWER_IS_BETTER, PRIMARY_METRICS
from pipelines.predict import SplitPredictions
from seqcore.manifest import Manifest, load_manifest, part_path
from seqcore.store import locate

FIT_SAMPLE = 50_000
"""Most train windows a baseline is fitted on; a larger train split is sampled (seeded)."""
FIT_SPLIT = "train"


@dataclass
class Scored:
    """One baseline, fitted and run over the evaluated split (its metrics come from the
    task's stats or probabilities, as a model's do)."""

    name: str
    description: str
    fit: dict[str, Any]
    """What it was fitted on: split, windows, pairs or targets."""
    buckets: list[np.ndarray]
    """The padded length of each evaluated row, per block: checked against the model's rows."""
    probabilities: np.ndarray | None = None
    """classify: (N, K) per evaluated example (``read_split`` order)."""


# --------------------------------------------------------------------------- reading


def _sample(manifest: Manifest, split: str, cap: int, seed: int) -> dict[int, np.ndarray] | None:
    """Row positions within each bucket of a seeded sample of ``cap`` windows, or None for all."""
    counts = {b: e.examples for b, e in manifest.splits[split].buckets.items()}
    total = sum(counts.values())
    if total <= cap:
        return None
    pick = np.sort(np.random.default_rng(seed).choice(total, cap, replace=False))
    starts = np.cumsum([0, *counts.values()])
    return {
        b: pick[(pick >= lo) & (pick < hi)] - lo
        for b, lo, hi in zip(counts, starts[:-1].tolist(), starts[1:].tolist(), strict=True)
    }


def _blocks(
    shard_dir: str | Path,
    manifest: Manifest,
    split: str,
    columns: list[str],
    rows: Mapping[int, np.ndarray] | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """(padded length, rows) per bucket in ``read_split`` order (buckets ascending, then parts),
    only those of ``columns`` the files have, and only the bucket positions ``rows`` holds."""
    folder = locate(shard_dir)
    for bound, bucket in manifest.splits[split].buckets.items():
        if rows is not None and not len(rows.get(bound, ())):
            continue
        paths = [part_path(split, bound, k) for k in range(len(bucket.parts))]
        if not paths:
            continue
        names = set(pq.read_schema(folder.path(paths[0]), filesystem=folder.fs).names)
        tables = [folder.read_table(p, columns=[c for c in columns if c in names]) for p in paths]
        table = pa.concat_tables(tables)
        if rows is not None:
            table = table.take(pa.array(rows[bound], pa.int64()))
        yield bound, table


def _dense(table: pa.Table, name: str, width: int) -> np.ndarray:
    """A fixed-size list column -> (n, width, k), k values per step (0 allowed)."""
    values = pc.list_flatten(table.column(name).combine_chunks()).to_numpy(zero_copy_only=False)
    n = len(table)
    per_step = len(values) // (n * width) if n * width else 0
    return np.asarray(values).reshape(n, width, per_step)


def _lengths(table: pa.Table) -> np.ndarray:
    return table.column("length").to_numpy().astype(np.int64)


def _check_aligned(preds: SplitPredictions, scored: Scored) -> None:
    bucket = np.concatenate(scored.buckets) if scored.buckets else np.empty(0, np.int64)
    if len(bucket) != len(preds.bucket) or not np.array_equal(bucket, preds.bucket):
        raise ValueError(
            f"baseline {scored.name}: the evaluated split's rows differ from the model's predictions "
            f"({len(bucket)} rows against {len(preds.bucket)})"
        )


# --------------------------------------------------------------------------- classify


def bag_features(table: pa.Table, width: int, manifest: Manifest) -> np.ndarray:
    """Order-blind features of one bucket's windows -> (n, D).

    Per categorical column the count of each vocabulary id divided by the length (PAD left
    out), per numeric channel mean, std, min and max over real steps, then log(1 + length).
    """
    length = _lengths(table)
    n, steps = len(length), np.maximum(length, 1).astype(np.float64)
    real = np.arange(width)[None, :] < length[:, None]  # (n, L)
    parts = []
    for column in manifest.features.categorical:
        size = manifest.features.vocab_size(column)
        ids = np.where(real, _dense(table, f"cat__{column}", width)[..., 0], 0)
        ids = np.clip(ids, 0, size - 1)
        flat = (np.arange(n)[:, None] * size + ids).ravel()
        counts = np.bincount(flat, minlength=n * size).reshape(n, size).astype(np.float64)
        counts[:, 0] = 0.0
        parts.append(counts / steps[:, None])
    has_num = "num" in table.column_names  # no numeric channel at all: no column
    num = _dense(table, "num", width).astype(np.float64) if has_num else np.zeros((n, width, 0))
    if num.shape[2]:
        mask = real[..., None]
        mean = np.where(mask, num, 0.0).sum(1) / steps[:, None]
        var = np.where(mask, (num - mean[:, None, :]) ** 2, 0.0).sum(1) / steps[:, None]
        low = np.where(mask, num, np.inf).min(1)
        high = np.where(mask, num, -np.inf).max(1)
        parts += [mean, np.sqrt(var), low, high]
    parts.append(np.log1p(length.astype(np.float64))[:, None])
    return np.nan_to_num(np.concatenate(parts, axis=1), posinf=0.0, neginf=0.0)


def _bags(
    shard_dir: str | Path,
    manifest: Manifest,
    split: str,
    rows: Mapping[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(features (N, D), labels (N,), bucket of each row per block) of a split."""
    columns = ["length", "num", "label", *(f"cat__{c}" for c in manifest.features.categorical)]
    xs, ys, buckets = [], [], []
    for bound, table in _blocks(shard_dir, manifest, split, columns, rows):
        xs.append(bag_features(table, bound, manifest))
        ys.append(table.column("label").to_numpy().astype(np.int64))
        buckets.append(np.full(len(table), bound, np.int64))
    if not xs:
        return np.zeros((0, 0)), np.zeros(0, np.int64), buckets
    return np.concatenate(xs), np.concatenate(ys), buckets


def fit_order_blind(
    x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0
) -> tuple[Any, np.ndarray | None]:
    """(fitted classifier, None), or (None, class prior) when ``y`` holds fewer than two classes.

    The prior is the label frequencies with one pseudo-count per class, so no class gets
    probability 0 (log-loss stays finite).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = (y >= 0) & (y < num_classes)
    x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        prior = (np.bincount(y, minlength=num_classes) + 1.0) / (len(y) + num_classes)
        return None, prior
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    clf.fit(x, y)
    return clf, None


def predict_order_blind(
    clf: Any, prior: np.ndarray | None, x: np.ndarray, num_classes: int
) -> np.ndarray:
    """(N, K) probabilities; classes the fit never saw get 0."""
    probs = np.zeros((len(x), num_classes))
    if clf is None:
        probs[:] = prior
    elif len(x):
        probs[:, clf[-1].classes_] = clf.predict_proba(x)
    return probs


def classify_baseline(
    shard_dir: str | Path,
    manifest: Manifest,
    split: str,
    num_classes: int,
    *,
    seed: int = 0,
    fit_sample: int = FIT_SAMPLE,
) -> Scored:
    """The order-blind logistic regression (or the class prior), fitted on train; its (N, K)
    probabilities for ``split`` in ``read_split`` order (metrics are left to the caller)."""
    rows = _sample(manifest, FIT_SPLIT, fit_sample, seed)
    x_fit, y_fit, _ = _bags(shard_dir, manifest, FIT_SPLIT, rows)
    x_eval, _, buckets = _bags(shard_dir, manifest, split)
    clf, prior = fit_order_blind(x_fit, y_fit, num_classes, seed)
    labelled = y_fit[(y_fit >= 0) & (y_fit < num_classes)]
    fit = {"split": FIT_SPLIT, "windows": int(len(y_fit)), "labelled": int(len(labelled)),
           "sampled": rows is not None, "features": int(x_fit.shape[1])}  # fmt: skip
    if clf is None:
        seen = np.unique(labelled).tolist()
        name = "class_prior"
        description = (
            f"the class prior: the train split's label frequencies, add-one smoothed, for every "
            f"window (the train split holds {len(seen)} class(es) {seen}, too few to fit the "
            "order-blind logistic regression)"
        )
    else:
        name = "order_blind_logistic_regression"
        description = (
            "logistic regression on each window's events in no order: per categorical column "
            "the count of each vocabulary id divided by the length, per numeric channel "
            f"mean/std/min/max, and log(1 + length); fitted on {len(labelled)} labelled train "
            "windows"
        )
    return Scored(
        name, description, fit, buckets, predict_order_blind(clf, prior, x_eval, num_classes)
    )


def order_blind_baseline(shard_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Fit on train, score test: accuracy and ROC-AUC of the order-blind logistic regression."""
    manifest = load_manifest(shard_dir)
    label = manifest.targets.label
    num_classes = 2 if label is None else label.num_classes
    scored = classify_baseline(shard_dir, manifest, "test", num_classes, seed=seed)
    _, y_test, _ = _bags(shard_dir, manifest, "test")
    assert scored.probabilities is not None  # classify_baseline always scores probabilities
    values = M.classify_metrics(y_test, scored.probabilities)
    return {"accuracy": float(values["accuracy"]), "roc_auc": float(values["roc_auc"])}


# --------------------------------------------------------------------------- next_event


def fit_transitions(current: np.ndarray, following: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V, V) probabilities of the next id given the current id, from (current, next) pairs.

    Pairs whose next id is 0 (no target) are left out. Row c is (count(c, j) + overall_j) /
    (count(c) + 1), with overall_j the overall next-id frequency (half a pseudo-count per id
    1..V-1), so a row ranks by count, then by overall frequency, and an unseen current id gets
    the overall frequencies.
    """
    size = int(vocab_size)
    current = np.clip(np.asarray(current, np.int64).ravel(), 0, size - 1)
    following = np.asarray(following, np.int64).ravel()
    real = (following > 0) & (following < size)
    pairs = current[real] * size + following[real]
    counts = np.bincount(pairs, minlength=size * size).reshape(size, size).astype(np.float64)
    overall = counts.sum(0) + 0.5
    overall[0] = 0.0  # PAD is never a target
    overall /= overall.sum()
    return (counts + overall[None, :]) / (counts.sum(1, keepdims=True) + 1.0)


def transition_baseline(
    shard_dir: str | Path,
    manifest: Manifest,
    split: str,
    *,
    seed: int = 0,
    fit_sample: int = FIT_SAMPLE,
) -> tuple[Scored, np.ndarray]:
    """The transition table fitted on train; its ``next_event_stats`` rows (N, 4) for
    ``split`` in ``read_split`` order."""
    target = manifest.targets.next_event
    if target is None:
        raise ValueError("the shards have no next_event target")
    columns = ["length", "next_event", f"cat__{target.column}"]

    def pairs(split_: str, rows: Mapping[int, np.ndarray] | None = None) -> Iterator[tuple]:
        for bound, table in _blocks(shard_dir, manifest, split_, columns, rows):
            current = _dense(table, f"cat__{target.column}", bound)[..., 0].astype(np.int64)
            following = _dense(table, "next_event", bound)[..., 0].astype(np.int64)
            yield bound, current, following

    rows = _sample(manifest, FIT_SPLIT, fit_sample, seed)
    fitted = [(c.ravel(), f.ravel()) for _, c, f in pairs(FIT_SPLIT, rows)]
    current = np.concatenate([c for c, _ in fitted]) if fitted else np.zeros(0, np.int64)
    following = np.concatenate([f for _, f in fitted]) if fitted else np.zeros(0, np.int64)
    table = fit_transitions(current, following, target.vocab_size)
    stats, buckets = [], []
    for bound, cur, nxt in pairs(split):
        stats.append(M.next_event_stats_from_table(table, cur, nxt))
        buckets.append(np.full(len(cur), bound, np.int64))
    n_pairs = int((following > 0).sum())
    description = (
        f"the most frequent next {target.column} given the current one (top-5: the five most "
        f"frequent), from {n_pairs} (current, next) pairs of train windows; a current value "
        "never seen in train falls back to the overall most frequent next values"
    )
    fit = {"split": FIT_SPLIT, "windows": _windows(manifest, FIT_SPLIT, rows), "pairs": n_pairs,
           "sampled": rows is not None}  # fmt: skip
    out = np.concatenate(stats) if stats else np.zeros((0, len(M.NEXT_EVENT_STATS)))
    return Scored("transition_table", description, fit, buckets), out


def _windows(manifest: Manifest, split: str, rows: Mapping[int, np.ndarray] | None) -> int:
    if rows is None:
        return int(manifest.splits[split].examples)
    return int(sum(len(r) for r in rows.values()))


# --------------------------------------------------------------------------- forecast


def _forecast_block(
    table: pa.Table, width: int, manifest: Manifest
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(targets (n, L, H), value at each step (n, L), lengths (n,)), in original units.

    The value at step t is the target one step ahead of step t - 1 (NaN where the column was
    missing), and at step 0 the window's first numeric feature value.
    """
    target = manifest.targets.forecast
    if target is None:
        raise ValueError("the shards have no forecast target")
    spec, column = manifest.features, target.column
    y = spec.inverse_standardise(column, _dense(table, "forecast", width))  # (n, L, H)
    first = _dense(table, "num", width)[:, 0, spec.numeric_order.index(column)]
    value = np.concatenate([spec.inverse_standardise(column, first)[:, None], y[:, :-1, 0]], 1)
    return y, value, _lengths(table)


def _carry_forward(values: np.ndarray) -> np.ndarray:
    """Each NaN replaced by the last finite value before it in its row (column 0 is finite)."""
    seen = np.where(np.isfinite(values), np.arange(values.shape[1])[None, :], 0)
    np.maximum.accumulate(seen, axis=1, out=seen)
    return np.take_along_axis(values, seen, axis=1)


def forecast_baselines(
    shard_dir: str | Path,
    manifest: Manifest,
    split: str,
    *,
    seed: int = 0,
    fit_sample: int = FIT_SAMPLE,
) -> tuple[dict[str, tuple[Scored, np.ndarray]], dict[str, Any]]:
    """``last_value`` and ``train_mean`` with their ``forecast_stats`` rows (N, H, 4) for
    ``split`` (``read_split`` order), and the MASE scale fitted on train."""
    target = manifest.targets.forecast
    if target is None:
        raise ValueError("the shards have no forecast target")
    columns = ["length", "num", "forecast"]
    rows = _sample(manifest, FIT_SPLIT, fit_sample, seed)
    total, count, diff_sum, diff_count = 0.0, 0, 0.0, 0
    for bound, table in _blocks(shard_dir, manifest, FIT_SPLIT, columns, rows):
        y, _, length = _forecast_block(table, bound, manifest)
        real = np.arange(bound)[None, :] < length[:, None]
        ahead = np.where(real, y[..., 0], np.nan)  # the value at step t + 1
        finite = np.isfinite(ahead)
        total, count = total + float(ahead[finite].sum()), count + int(finite.sum())
        step = np.abs(ahead[:, 1:] - ahead[:, :-1])
        ok = np.isfinite(step)
        diff_sum, diff_count = diff_sum + float(step[ok].sum()), diff_count + int(ok.sum())
    mean = total / count if count else float("nan")
    scale = diff_sum / diff_count if diff_count else float("nan")

    last, flat, buckets = [], [], []
    for bound, table in _blocks(shard_dir, manifest, split, columns):
        y, value, length = _forecast_block(table, bound, manifest)
        last.append(M.forecast_stats_dense(_carry_forward(value)[..., None], y, length))
        flat.append(M.forecast_stats_dense(np.asarray(mean), y, length))
        buckets.append(np.full(len(table), bound, np.int64))
    shape = (0, target.horizon, len(M.FORECAST_STATS))
    windows = _windows(manifest, FIT_SPLIT, rows)
    unit = f"{target.column} (original units)"
    scored = {
        "last_value": Scored(
            "last_value",
            f"the window's last observed {unit}, repeated over the {target.horizon}-step horizon",
            {"fitted": False},
            buckets,
        ),
        "train_mean": Scored(
            "train_mean",
            f"the mean one-step target {unit} of the train windows, at every step",
            dict(
                split=FIT_SPLIT, windows=windows, targets=count, mean=mean, sampled=rows is not None
            ),
            buckets,
        ),
    }
    stats = {"last_value": last, "train_mean": flat}
    out = {
        k: (s, np.concatenate(stats[k]) if stats[k] else np.zeros(shape)) for k, s in scored.items()
    }
    mase_scale = {
        "method": "in_sample_naive",
        "description": (
            "Hyndman & Koehler (2006): the mean |y_t - y_(t-1)| over consecutive events of the "
            f"train windows, in {unit}; MASE = the mean-over-horizon MAE / this scale"
        ),
        "value": scale,
        "pairs": diff_count,
        "windows": windows,
    }
    return out, mase_scale


# --------------------------------------------------------------------------- the report


@dataclass
class BaselineReport:
    """What the evaluate stage adds to its report, its plots and its MLflow run."""

    sections: dict[str, Any]
    """``baseline``, ``skill`` and for forecast ``baselines`` and ``mase_scale``."""
    undefined: dict[str, str]
    """Reasons for undefined values, by dotted path (``baseline.overall.roc_auc``)."""
    model_overall: dict[str, Any]
    """Metrics to add to the model's ``overall`` (forecast: ``mase``)."""
    probabilities: np.ndarray | None = None
    """classify: the baseline's (N, K) probabilities, for the plots."""


def _overall(values: dict[str, Any], n: int, path: str, undefined: dict[str, str]) -> dict:
    """As ``split_metrics`` reports a model's overall: reasons moved out, ``examples`` added."""
    values = dict(values)
    for name, why in values.pop("undefined", {}).items():
        undefined[f"{path}.{name}"] = why
    values.pop("labelled", None)
    return {**values, "examples": int(n)}


def _section(scored: Scored, primary: str, overall: dict[str, Any]) -> dict[str, Any]:
    return {"name": scored.name, "description": scored.description, "fit": dict(scored.fit),
            "primary_metric": primary, "primary_value": overall.get(primary),
            "overall": overall}  # fmt: skip


def _mase(mae: Any, scale: float) -> tuple[float, str | None]:
    if mae is None or not np.isfinite(mae):
        return M.NAN, "mae is undefined"
    if not np.isfinite(scale) or scale <= 0:
        return M.NAN, "the in-sample naive scale is 0 or undefined (constant or no train pairs)"
    return float(mae) / scale, None


def baseline_report(
    preds: SplitPredictions,
    manifest: Manifest,
    task: str,
    shard_dir: str | Path,
    split: str,
    model_overall: Mapping[str, Any],
    *,
    ece_bins: int = 10,
    seed: int = 0,
    fit_sample: int = FIT_SAMPLE,
) -> BaselineReport:
    """Fit and score the task's baseline(s) on the rows of ``preds``; compare with the model.

    ``manifest`` is the shards' own (it says where their rows are); ``model_overall`` is the
    model's overall metrics on the same rows (``split_metrics.evaluate_predictions``).
    """
    primary, n = PRIMARY_METRICS[task], len(preds.length)
    undefined: dict[str, str] = {}
    sections: dict[str, Any] = {}
    model_extra: dict[str, Any] = {}
    probabilities = None
    if task == "classify":
        num_classes = preds.probabilities.shape[1] if n else 2
        scored = classify_baseline(shard_dir, manifest, split, num_classes, seed=seed,
                                   fit_sample=fit_sample)  # fmt: skip
        _check_aligned(preds, scored)
        probabilities = scored.probabilities
        assert probabilities is not None  # classify_baseline always scores probabilities
        values = M.classify_metrics(preds.label, probabilities, ece_bins)
        chosen = _section(scored, primary, _overall(values, n, "baseline.overall", undefined))
    elif task == "next_event":
        scored, stats = transition_baseline(shard_dir, manifest, split, seed=seed,
                                            fit_sample=fit_sample)  # fmt: skip
        _check_aligned(preds, scored)
        values = M.next_event_from_stats(stats)
        chosen = _section(scored, primary, _overall(values, n, "baseline.overall", undefined))
    elif task == "forecast":
        both, mase_scale = forecast_baselines(shard_dir, manifest, split, seed=seed,
                                              fit_sample=fit_sample)  # fmt: skip
        scale = float(mase_scale["value"])
        sections["mase_scale"] = mase_scale
        baselines: dict[str, Any] = {}
        for key, (scored, stats) in both.items():
            _check_aligned(preds, scored)
            path = f"baselines.{key}.overall"
            overall = _overall(M.forecast_from_stats(stats), n, path, undefined)
            overall["mase"], why = _mase(overall.get("mae"), scale)
            if why:
                undefined[f"{path}.mase"] = why
            baselines[key] = _section(scored, primary, overall)
        model_extra["mase"], why = _mase(model_overall.get("mae"), scale)
        if why:
            undefined["overall.mase"] = why
        # The stronger baseline on these windows (ties and both undefined: last value).
        key = min(baselines, key=lambda k: (_sort_key(baselines[k]["primary_value"]), k))
        chosen = baselines[key]
        for name, why in list(undefined.items()):
            if name.startswith(f"baselines.{key}.overall."):
                undefined["baseline.overall." + name.split(".overall.", 1)[1]] = why
        sections["baselines"] = baselines
    else:
        raise ValueError(f"unknown task {task!r}; expected classify, next_event or forecast")
    sections["baseline"] = chosen
    skill = M.skill(primary, model_overall.get(primary), chosen["primary_value"],
                    primary in LOWER_IS_BETTER)  # fmt: skip
    for name, why in skill.pop("undefined", {}).items():
        undefined[f"skill.{name}"] = why
    sections["skill"] = skill
    return BaselineReport(sections, undefined, model_extra, probabilities)


def _sort_key(value: Any) -> float:
    """Lower error first; an undefined value last."""
    return float(value) if value is not None and np.isfinite(value) else float("inf")


def class_names(manifest: Manifest, count: int) -> list[str]:
    """The name of each of ``count`` class indices: the label value the manifest gives it
    (``str``), else a placeholder for an index training never saw."""
    label = manifest.targets.label
    return [str(label.name(i)) if label else f"<class {i}>" for i in range(count)]
