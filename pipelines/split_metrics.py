"""A model's metrics over one shard split: overall, by length bucket and by slice.

The library half of evaluation, shared by the evaluate stage (a model on the shards it was
trained with) and the register stage's gate (champion and challenger re-scored from raw
events). It turns ``SplitPredictions`` (``pipelines.predict``) into the task's metrics
(``pipelines.metrics``), per length bucket and per value of each slice column (the category
of each window's last event), as a JSON-ready dict.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import metrics as M
from pipelines.params.gate import PRIMARY_METRICS, EvaluateConfig
from pipelines.predict import SplitPredictions, predict_split
from seqcore.io import jsonable
from seqcore.manifest import Manifest, load_manifest, part_path
from seqmodels import SequenceModel

SPECIAL_IDS = ("<PAD>", "<OOV>")  # vocabulary ids 0 and 1; category i of the vocab has id i + 2


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
    # read_split's order: buckets, then parts
    for bound, bucket in manifest.splits[split].buckets.items():
        for k in range(len(bucket.parts)):
            path = Path(shard_dir) / part_path(split, bound, k)
            table = pq.read_table(path, columns=["length", *(f"cat__{c}" for c in columns)])
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


def evaluate_predictions(
    preds: SplitPredictions,
    manifest: Manifest,
    task: str,
    config: EvaluateConfig,
    slice_values: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The task's metrics overall, by length bucket and by slice (JSON-ready: NaN -> None).

    ``slice_values`` maps a column to each example's value (``last_event_values``); empty
    buckets and slice values are skipped. Undefined metrics are None, with their reason under
    ``undefined`` keyed by their dotted path (e.g. ``by_bucket.16.roc_auc``).
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
