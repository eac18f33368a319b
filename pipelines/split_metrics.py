"""A model's metrics over one shard split: overall, by length range, bucket and slice.

The library half of evaluation, shared by the evaluate stage (a model on the shards it was
trained with) and the register stage's gate (champion and challenger re-scored from raw
events). It turns ``SplitPredictions`` (``pipelines.predict``) into the task's metrics
(``pipelines.metrics``), per length range (with percentile-bootstrap confidence intervals),
per length bucket and per value of each slice column (the category of each window's last
event), as a JSON-ready dict; and it compares two models' predictions on the same examples by
length range with a paired bootstrap (``compare_by_length``), which the gate reads.

The bootstrap draws resamples as per-example weights (counts), so each metric is computed
for all resamples at once: ROC-AUC from weighted rank sums, the others from weighted sums of
per-example terms. Metrics without such a form fall back to one call per resample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipelines import metrics as M
from pipelines.params.gate import LOWER_IS_BETTER, PRIMARY_METRICS, EvaluateConfig
from pipelines.predict import SplitPredictions, predict_split
from seqcore.io import jsonable
from seqcore.manifest import Manifest, load_manifest, part_path
from seqcore.store import locate
from seqmodels import SequenceModel

SPECIAL_IDS = ("<PAD>", "<OOV>")  # vocabulary ids 0 and 1; category i of the vocab has id i + 2
BOOTSTRAP_SEED = 20240611
"""Seed of every bootstrap (with the range's position mixed in): reruns give the same CIs."""
BOOTSTRAP_CELLS = 4_000_000
"""Resample weights held at once (resamples x examples); bounds the bootstrap's memory."""


class EvaluateError(RuntimeError):
    """Evaluation cannot run: a missing input or model; the message names it."""


class IncompatibleShardsError(EvaluateError):
    """The model's preprocessing (vocabularies, statistics) differs from the shards'."""


def last_event_values(
    shard_dir: str | Path, split: str, manifest: Manifest, columns: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Per example (``read_split`` order), the category string of its window's last event."""
    categorical = manifest.features.categorical
    unknown = [c for c in columns if c not in categorical]
    if unknown:
        raise EvaluateError(
            f"evaluate.slices: {unknown} not categorical features of the shards "
            f"(known: {', '.join(categorical)})"
        )
    names = {c: np.array([*SPECIAL_IDS, *manifest.vocab(c)], dtype=object) for c in columns}
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    folder = locate(shard_dir)
    # read_split's order: buckets, then parts
    for bound, bucket in manifest.splits[split].buckets.items():
        for k in range(len(bucket.parts)):
            table = folder.read_table(
                part_path(split, bound, k), columns=["length", *(f"cat__{c}" for c in columns)]
            )
            last = table.column("length").to_numpy().astype(np.int64) - 1
            for c in columns:
                flat = pc.list_flatten(table.column(f"cat__{c}")).to_numpy()
                ids = flat.reshape(len(table), bound)[np.arange(len(table)), last]
                parts[c].append(names[c][ids])
    return {c: np.concatenate(v) if v else np.empty(0, object) for c, v in parts.items()}


def _group_metrics(
    preds: SplitPredictions, manifest: Manifest, task: str, config: EvaluateConfig
) -> Callable[[np.ndarray], dict[str, Any]]:
    """A function: example indices -> the task's metrics over those examples."""
    if task == "classify":
        probs = preds.probabilities
        return lambda idx: M.classify_metrics(preds.label[idx], probs[idx], config.ece_bins)
    if task == "next_event":
        stats = M.next_event_stats(preds.outputs, preds.next_event)
        return lambda idx: M.next_event_from_stats(stats[idx])
    if task == "forecast" and manifest.targets.forecast is not None:
        spec, column = manifest.features, manifest.targets.forecast.column
        fstats = M.forecast_stats(
            preds.outputs, preds.forecast, lambda z: spec.inverse_standardise(column, z)
        )
        return lambda idx: M.forecast_from_stats(fstats[idx])
    raise EvaluateError(f"unknown task {task!r}; expected classify, next_event or forecast")


# --------------------------------------------------------------------------- length ranges


@dataclass(frozen=True)
class LengthRange:
    """True lengths ``lo`` to ``hi`` inclusive (``hi`` None: no upper end)."""

    lo: int
    hi: int | None

    @property
    def label(self) -> str:
        if self.hi is None:
            return f"{self.lo}+"
        return str(self.lo) if self.hi == self.lo else f"{self.lo}-{self.hi}"

    def members(self, lengths: np.ndarray) -> np.ndarray:
        """Indices of the examples whose true length falls in this range."""
        inside = lengths >= self.lo
        if self.hi is not None:
            inside &= lengths <= self.hi
        return np.flatnonzero(inside)


def _ranges_from_starts(starts: list[int]) -> list[LengthRange]:
    return [LengthRange(a, b - 1) for a, b in pairwise(starts)] + [LengthRange(starts[-1], None)]


def length_ranges(lengths: np.ndarray, config: EvaluateConfig) -> list[LengthRange]:
    """The ranges of true length that ``by_length`` and the gate report, in order.

    ``config.length_ranges`` gives their starts (empty ranges dropped); else quantiles of
    ``lengths`` cut them into ``length_range_count`` ranges, and any with fewer than
    ``min_range_examples`` examples merges into its smaller neighbour. The first starts at
    the shortest example and the last has no upper end.
    """
    lengths = np.asarray(lengths, np.int64)
    if not len(lengths):
        return []
    low = int(lengths.min())
    if config.length_ranges is not None:
        starts = [low, *(b for b in config.length_ranges if b > low)]
        return [r for r in _ranges_from_starts(starts) if len(r.members(lengths))]
    count = config.length_range_count
    cuts = np.ceil(np.quantile(lengths, np.arange(1, count) / count)).astype(np.int64)
    starts = sorted({low, *(int(c) for c in cuts if c > low)})
    sizes = [len(r.members(lengths)) for r in _ranges_from_starts(starts)]
    while len(starts) > 1 and min(sizes) < config.min_range_examples:
        i = int(np.argmin(sizes))
        # merge with the smaller neighbour: drop the start between them
        j = i + 1 if i == 0 or (i + 1 < len(sizes) and sizes[i + 1] < sizes[i - 1]) else i - 1
        drop = max(i, j)
        sizes[min(i, j)] += sizes[drop]
        del starts[drop], sizes[drop]
    return _ranges_from_starts(starts)


# --------------------------------------------------------------------------- bootstrap

WeightedMetrics = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
"""(example indices (n,), resample weights (B, n)) -> metric name -> its (B,) values."""


def _weighted_auc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC of each weight row: P(score of a positive > a negative's), ties count half."""
    order = np.argsort(score, kind="stable")
    ranked, pos = score[order], positive[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # groups of tied scores
    w = weights[:, order]
    p = np.add.reduceat(w * pos, starts, axis=1)
    q = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(q, axis=1) - q  # negative weight strictly below each score
    pairs = p.sum(1) * q.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (p * (below + 0.5 * q)).sum(1) / pairs, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _weighted_metrics(
    preds: SplitPredictions, manifest: Manifest, task: str
) -> tuple[WeightedMetrics, frozenset[str]]:
    """The task's metrics with a weighted (all resamples at once) form, and their names."""
    if task == "classify":
        labels, probs = preds.label, preds.probabilities.astype(np.float64)
        labelled = labels >= 0
        safe = np.where(labelled, labels, 0)
        correct = (probs.argmax(axis=1) == labels).astype(np.float64)
        nll = -np.log(np.clip(probs[np.arange(len(labels)), safe], M.PROB_FLOOR, 1.0))

        def classify(idx: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
            w = weights * labelled[idx]
            total = w.sum(1)
            y = labels[idx]
            if probs.shape[1] == 2:
                auc = _weighted_auc(y == 1, probs[idx, 1], w)
            else:  # one-vs-rest macro over the classes the range holds, as M.roc_auc
                known = y[y >= 0]
                present = [
                    c for c in np.unique(known).tolist() if 0 < (known == c).sum() < len(known)
                ]
                per_class = [_weighted_auc(y == c, probs[idx, c], w) for c in present]
                auc = _nanmean(per_class, len(idx), w.shape[0])
            return {
                "roc_auc": auc,
                "accuracy": _ratio(w @ correct[idx], total),
                "log_loss": _ratio(w @ nll[idx], total),
            }

        return classify, frozenset({"roc_auc", "accuracy", "log_loss"})
    if task == "next_event":
        stats = M.next_event_stats(preds.outputs, preds.next_event)

        def next_event(idx: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
            n, top1, top5, nll = (weights @ stats[idx]).T
            mean_nll = _ratio(nll, n)
            return {"top1_accuracy": _ratio(top1, n), "top5_accuracy": _ratio(top5, n),
                    "nll": mean_nll, "perplexity": np.exp(mean_nll)}  # fmt: skip

        return next_event, frozenset({"top1_accuracy", "top5_accuracy", "nll", "perplexity"})
    if task == "forecast" and manifest.targets.forecast is not None:
        spec, column = manifest.features, manifest.targets.forecast.column
        fstats = M.forecast_stats(
            preds.outputs, preds.forecast, lambda z: spec.inverse_standardise(column, z)
        )

        def forecast(idx: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
            sums = np.einsum("bn,nhk->bhk", weights, fstats[idx])  # (B, H, 4)
            n = sums[..., 0]
            steps = {"mae": _ratio(sums[..., 1], n),
                     "rmse": np.sqrt(_ratio(sums[..., 2], n)),
                     "smape": 100.0 * _ratio(sums[..., 3], n)}  # fmt: skip
            # mean over the horizon steps that have targets, as M.forecast_from_stats
            return {k: _nanmean(list(v.T), v.shape[1], v.shape[0]) for k, v in steps.items()}

        return forecast, frozenset({"mae", "rmse", "smape"})
    raise EvaluateError(f"unknown task {task!r}; expected classify, next_event or forecast")


def _nanmean(rows: list[np.ndarray], count: int, samples: int) -> np.ndarray:
    """Mean over ``rows`` ignoring NaN, NaN where all are NaN (no RuntimeWarning)."""
    if not rows or not count:
        return np.full(samples, np.nan)
    stacked = np.vstack(rows)
    defined = np.isfinite(stacked)
    total = np.where(defined, stacked, 0.0).sum(0)
    return _ratio(total, defined.sum(0).astype(np.float64))


def _resample_weights(n: int, samples: int, seed: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` examples as count weights, in chunks of rows (B, n)."""
    rng = np.random.default_rng([BOOTSTRAP_SEED, *seed])
    chunk = max(1, min(samples, BOOTSTRAP_CELLS // max(n, 1)))
    done = 0
    while done < samples:
        rows = min(chunk, samples - done)
        draws = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
        yield np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)
        done += rows


def _by_resample(
    metrics_of: Callable[[np.ndarray], dict[str, Any]], names: list[str]
) -> WeightedMetrics:
    """The weighted form of any metric: one call of ``metrics_of`` per resample (slow)."""

    def weighted(idx: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        out = {name: np.full(len(weights), np.nan) for name in names}
        for b, row in enumerate(weights.astype(np.int64)):
            values = metrics_of(np.repeat(idx, row))
            for name in names:
                value = values.get(name)
                out[name][b] = np.nan if value is None else float(value)
        return out

    return weighted


def _interval(values: np.ndarray, confidence: float) -> list[float] | None:
    """Percentile interval of bootstrap values; None when the metric is undefined in more
    than half of the resamples (e.g. ROC-AUC of a range that seldom holds both classes)."""
    finite = values[np.isfinite(values)]
    if len(finite) * 2 <= len(values):
        return None
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def _bootstrap(
    weighted: list[WeightedMetrics], idx: np.ndarray, samples: int, seed: tuple[int, ...]
) -> list[dict[str, np.ndarray]]:
    """Each model's metrics on the same resamples of ``idx``: name -> (samples,) values."""
    out: list[dict[str, list[np.ndarray]]] = [{} for _ in weighted]
    for weights in _resample_weights(len(idx), samples, seed):
        for values, fn in zip(out, weighted, strict=True):
            for name, v in fn(idx, weights).items():
                values.setdefault(name, []).append(v)
    return [{k: np.concatenate(v) for k, v in values.items()} for values in out]


def _bootstrap_ci(
    weighted: WeightedMetrics, idx: np.ndarray, config: EvaluateConfig, seed: tuple[int, ...]
) -> dict[str, list[float] | None]:
    if not config.bootstrap_samples or not len(idx):
        return {}
    (values,) = _bootstrap([weighted], idx, config.bootstrap_samples, seed)
    return {name: _interval(v, config.confidence) for name, v in sorted(values.items())}


def compare_by_length(
    challenger: SplitPredictions,
    champion: SplitPredictions,
    manifest: Manifest,
    task: str,
    metric: str,
    config: EvaluateConfig,
) -> list[dict[str, Any]]:
    """Challenger vs champion on ``metric`` per length range, on the same examples.

    Both predictions must hold the same examples in the same order (``predict_split_raw`` of
    one split). Per range: its examples, both models' values, their ``regression`` (champion
    minus challenger, sign-flipped for lower-is-better metrics, so positive means the
    challenger is worse) and ``regression_ci``, the percentile interval of that difference
    over paired bootstrap resamples (each resample scores both models on the same examples),
    or None without bootstrap or when it is undefined in most resamples. JSON-ready.
    """
    if not np.array_equal(challenger.length, champion.length) or not np.array_equal(
        challenger.label, champion.label
    ):
        raise EvaluateError("compare_by_length: the two predictions hold different examples")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    models = (challenger, champion)
    metrics_of = [_group_metrics(p, manifest, task, config) for p in models]
    weighted = []
    for preds, point in zip(models, metrics_of, strict=True):
        fn, names = _weighted_metrics(preds, manifest, task)
        weighted.append(fn if metric in names else _by_resample(point, [metric]))
    rows = []
    for position, span in enumerate(length_ranges(challenger.length, config)):
        idx = span.members(challenger.length)
        ours, theirs = (finite_or_none(m(idx).get(metric)) for m in metrics_of)
        regression = None if ours is None or theirs is None else sign * (theirs - ours)
        ci = None
        if config.bootstrap_samples and regression is not None:
            a, b = _bootstrap(weighted, idx, config.bootstrap_samples, (position, span.lo))
            ci = _interval(sign * (b[metric] - a[metric]), config.confidence)
        rows.append({
            "range": span.label, "lo": span.lo, "hi": span.hi, "examples": int(len(idx)),
            "challenger": ours, "champion": theirs, "regression": regression, "regression_ci": ci,
        })  # fmt: skip
    return jsonable(rows)


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (undefined)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


# --------------------------------------------------------------------------- evaluation


def evaluate_predictions(
    preds: SplitPredictions,
    manifest: Manifest,
    task: str,
    config: EvaluateConfig,
    slice_values: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The task's metrics overall, by length bucket and by slice (JSON-ready: NaN -> None).

    ``slice_values`` maps a column to each example's value (``last_event_values``); empty
    buckets and slice values are skipped. ``by_length`` lists the ranges of ``length_ranges``
    in order, each with its metrics and the percentile-bootstrap interval (``ci``) of every
    metric that has a weighted form; ``length_ranges`` says how they were chosen. Undefined
    metrics are None, with their reason under ``undefined`` keyed by their dotted path (e.g.
    ``by_bucket.16.roc_auc``, ``by_length.16-63.roc_auc``).
    """
    n = len(preds.length)
    if not n:
        raise EvaluateError(f"split {config.split!r} has no examples")
    metrics_of = _group_metrics(preds, manifest, task, config)
    undefined: dict[str, str] = {}

    def group(path: str, idx: np.ndarray, per_step: bool = False) -> dict[str, Any]:
        values = metrics_of(idx)
        for name, why in values.pop("undefined", {}).items():
            if per_step or "_h" not in name:
                undefined[f"{path}.{name}"] = why
        values.pop("labelled", None)
        if not per_step:  # forecast: the per-horizon breakdown is reported overall only
            values = {k: v for k, v in values.items() if "_h" not in k}
        return {**values, "examples": int(len(idx))}

    overall = group("overall", np.arange(n), per_step=True)
    by_bucket = {
        str(b): group(f"by_bucket.{b}", np.flatnonzero(preds.bucket == b))
        for b in np.unique(preds.bucket).tolist()
    }
    weighted, _ = _weighted_metrics(preds, manifest, task)
    by_length = []
    for position, span in enumerate(length_ranges(preds.length, config)):
        idx = span.members(preds.length)
        scores = group(f"by_length.{span.label}", idx)
        examples = scores.pop("examples")
        by_length.append({
            "range": span.label, "lo": span.lo, "hi": span.hi, "examples": examples,
            "metrics": scores, "ci": _bootstrap_ci(weighted, idx, config, (position, span.lo)),
        })  # fmt: skip
    slices: dict[str, dict[str, Any]] = {}
    for column, values in slice_values.items():
        values = np.asarray(values, dtype=object)
        if len(values) != n:
            raise EvaluateError(f"slice {column!r}: {len(values)} values for {n} examples")
        slices[column] = {
            str(v): group(f"slices.{column}.{v}", np.flatnonzero(values == v))
            for v in sorted({str(x) for x in values})
        }
    primary = PRIMARY_METRICS[task]
    result = {
        "task": task,
        "split": config.split,
        "examples": int(n),
        "primary_metric": primary,
        "primary_value": overall.get(primary),
        "overall": overall,
        "by_length": by_length,
        "length_ranges": {
            "source": "params" if config.length_ranges is not None else "quantiles",
            "bootstrap_samples": config.bootstrap_samples,
            "confidence": config.confidence,
            "seed": BOOTSTRAP_SEED,
        },
        "by_bucket": by_bucket,
        "slices": slices,
        "undefined": undefined,
    }
    return jsonable(result)


def _check_compatible(manifest: Manifest, shard_dir: str | Path) -> None:
    shards = load_manifest(shard_dir)
    if manifest.features != shards.features:
        raise IncompatibleShardsError(
            f"{shard_dir}: the model was trained with other preprocessing (vocabularies or "
            "normalisation) than these shards; score it from raw events instead"
        )


def evaluate_split(
    model: SequenceModel, manifest: Manifest, shard_dir: str | Path, config: EvaluateConfig
) -> tuple[dict[str, Any], SplitPredictions]:
    """Score ``config.split`` of the shards; its metrics and the predictions behind them.

    ``manifest`` is the model's own (its preprocessing); it must match the shards'
    features, else ``IncompatibleShardsError``. Deterministic: the same model and shards
    give the same result.
    """
    _check_compatible(manifest, shard_dir)
    preds = predict_split(model, shard_dir, config.split)
    values = last_event_values(shard_dir, config.split, manifest, config.slices)
    result = evaluate_predictions(preds, manifest, model.config.task, config, values)
    return result, preds


def evaluate_model(
    model: SequenceModel, manifest: Manifest, shard_dir: str | Path, config: EvaluateConfig
) -> dict[str, Any]:
    """The metrics of ``evaluate_split`` alone."""
    return evaluate_split(model, manifest, shard_dir, config)[0]
