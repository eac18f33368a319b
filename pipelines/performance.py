"""The model's performance on labels that arrive after it scored: ``seqops monitor --labels``.

Drift says the traffic changed; only labels say whether the model got worse. A labels file
holds one row per outcome: the entity key, the time the outcome applies to and the label
(columns named as ``data.schema`` names them). Each row is scored as the model would have
scored it then: the entity's events of the batch up to that time, its latest window, no
later event (what the endpoint answered at that moment). Rows are grouped into windows of
``monitor.label_window`` by their time, and each window gets the classify metrics the
evaluate stage computes (``pipelines.metrics``), beside the model's own evaluation metrics
read from its MLflow run.

A window is **degraded** when its primary metric (ROC-AUC) is below the evaluation's by more
than ``monitor.max_metric_drop`` and by more than its sampling error explains: the drop over
its standard error (Hanley and McNeil, 1982; per class, one-vs-rest, for more than two
classes) exceeds the one-sided normal quantile at ``monitor.alpha`` shared by the windows.
Windows with fewer than ``monitor.min_sequences`` labels, or one class only, are reported and
decide nothing.

Only classify models take labels: a next_event or forecast model's targets are the events
themselves, which the evaluate stage scores.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import norm

from pipelines.config import Params
from pipelines.ingest import normalise_user_table, open_dataset, source_batches
from pipelines.metrics import classify_metrics, ovr_scores
from pipelines.params.data import DataConfig
from pipelines.params.gate import PRIMARY_METRICS
from pipelines.shard import label_index
from seqcore.arrays import time_us
from seqcore.encoding import EncodedSequence
from seqcore.schema import SchemaConfig
from seqcore.scorer import SequenceScorer

log = logging.getLogger("seqops.monitor")

METRICS = ("roc_auc", "pr_auc", "accuracy", "macro_f1", "log_loss", "ece")


class LabelsError(ValueError):
    """A labels file the monitor cannot use; the message names it and the fix."""


def read_labels(where: str, params: Params, scorer: SequenceScorer) -> pa.Table:
    """The labels file's (entity, time, label) columns as the schema names them: times in
    UTC (naive ones in ``data.source_timezone``), labels as the model's class indexes."""
    schema = scorer.schema
    target = scorer.manifest.targets.label
    if scorer.config.task != "classify" or target is None:
        raise LabelsError(
            f"--labels: the model is a {scorer.config.task} model; delayed labels are for "
            "classify models (a next_event or forecast model's targets are in the events "
            "themselves: the evaluate stage scores them)"
        )
    mapped = dataclasses.replace(schema, seq=None, numeric=(), categorical=(), arrival=None,
                                 next_event=None, forecast=None, label=target.column)  # fmt: skip
    labels_file = dataclasses.replace(params.data, format="auto")  # not the events' format
    table = read_user_table(where, labels_file, mapped, "label", LabelsError)
    table = table.select([schema.entity, schema.time, target.column])
    index = class_index(table.column(target.column), target.classes, target.column)
    unknown = pc.filter(table.column(target.column), pa.array(index < 0))
    if len(unknown) == table.num_rows:
        raise LabelsError(
            f"{where}: none of the labels is a class the model knows ({target.column!r}: "
            f"{sorted(set(map(str, pc.unique(unknown).to_pylist())))[:5]}; the model's classes "
            f"are {list(target.classes)})"
        )
    return pa.table({
        "entity": pc.cast(table.column(schema.entity), pa.string()),
        "time_us": pa.array(time_us(table.column(schema.time))),
        "label": pa.array(index),
    })  # fmt: skip


def read_user_table(
    where: str, data: DataConfig, schema: SchemaConfig, what: str, error: type[Exception]
) -> pa.Table:
    """A user's file or folder read as ingest reads one (``data.format``,
    ``data.source_timezone``, the mapped columns checked, times in UTC), in file order;
    ``error`` names ``where`` when it holds no row, or a row without entity key or time."""
    config = dataclasses.replace(data, source="file", path=where, schema=schema)
    batches, start, modes = [], 0, {}  # type: ignore[var-annotated]
    for batch in source_batches(open_dataset(config), config):
        batches.append(normalise_user_table(batch, config, start, modes))
        start += batch.num_rows
    if not start:
        raise error(f"{where}: no {what}s")
    table = pa.concat_tables(batches, promote_options="permissive")
    return check_keys(table, schema, where, what, error)


def check_keys(
    table: pa.Table, schema: SchemaConfig, where: str, what: str, error: type[Exception]
) -> pa.Table:
    """``table`` when it has rows and every row an entity key and a time, else ``error``."""
    if not table.num_rows:
        raise error(f"{where}: no {what}s")
    for role, name in (("entity key", schema.entity), ("time", schema.time)):
        nulls = table.column(name).null_count
        if nulls:
            raise error(
                f"{where}: {nulls} {what}(s) without a {role} ({name!r}); drop or fill them"
            )
    return table


def class_index(column: pa.ChunkedArray, classes: tuple[Any, ...], name: str) -> np.ndarray:
    """Each label's class index, -1 for a value training never saw. A file that writes the
    classes another way than training did (the text "1" for the integer 1; "true", "True"
    or 1 for True) is matched by the values' text."""
    try:
        index = label_index(column, classes, name)
    except (pa.ArrowException, TypeError, ValueError):
        index = np.full(len(column), -1, np.int64)
    if (index >= 0).all() or not len(classes):
        return index
    text = pc.utf8_lower(pc.cast(column, pa.string())).to_numpy(zero_copy_only=False)
    for i, value in enumerate(classes):
        names = {str(value).lower()}
        if isinstance(value, bool):
            names.add(str(int(value)))
        index = np.where((index < 0) & np.isin(text, list(names)), i, index)
    return index


def _prefix(seq: EncodedSequence, end: int) -> EncodedSequence:
    return EncodedSequence(seq.entity, seq.event_time_us[:end], seq.cat_ids[:end], seq.num[:end])


def score_as_of(
    scorer: SequenceScorer, sequences: list[EncodedSequence], labels: pa.Table
) -> tuple[np.ndarray, np.ndarray]:
    """Each label's probabilities from its entity's events up to the label's time (rows whose
    entity has no event by then get none): (rows scored, (n, K) probabilities)."""
    by_entity = {seq.entity: seq for seq in sequences}
    rows, prefixes = [], []
    entity = labels.column("entity").to_pylist()
    at = labels.column("time_us").to_numpy()
    for row, (key, t) in enumerate(zip(entity, at, strict=True)):
        seq = by_entity.get(key)
        if seq is None:
            continue
        end = int(np.searchsorted(seq.event_time_us, t, side="right"))
        if end:
            rows.append(row)
            prefixes.append(_prefix(seq, end))
    if not prefixes:
        return np.zeros(0, np.int64), np.zeros((0, scorer.config.num_classes))
    outputs = scorer.forward_sequences(prefixes, scorer.window_len)
    return np.asarray(rows, np.int64), np.stack(outputs).astype(np.float64)


def auc_standard_error(labels: np.ndarray, probs: np.ndarray) -> float:
    """Hanley-McNeil standard error of ROC-AUC (binary: the positive class; else the mean of
    the one-vs-rest AUCs, their errors taken as independent)."""
    from sklearn.metrics import roc_auc_score

    errors = []
    for _, y, s in ovr_scores(labels, probs):
        a = float(roc_auc_score(y, s))
        n1, n2 = int(y.sum()), int(len(y) - y.sum())
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        variance = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)
        errors.append(max(variance, 0.0))
    return math.sqrt(sum(errors)) / max(len(errors), 1)


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def by_window(
    labels: np.ndarray,
    probs: np.ndarray,
    times_us: np.ndarray,
    evaluation: dict[str, float],
    config: Any,
) -> dict[str, Any]:
    """Metrics per ``config.label_window`` of label time, each against ``evaluation``."""
    width = int(config.label_window_s * 1e6)
    start = (times_us // width) * width
    starts = np.unique(start)
    primary = PRIMARY_METRICS["classify"]
    reference = evaluation.get(primary)
    windows = []
    for first in starts:
        member = start == first
        metrics = classify_metrics(labels[member], probs[member])
        value = _finite(metrics.get(primary))
        window: dict[str, Any] = {
            "start": _iso(int(first)),
            "end": _iso(int(first) + width),
            "labels": int(member.sum()),
            "positives": int((labels[member] == probs.shape[1] - 1).sum()),
            **{k: _finite(metrics.get(k)) for k in METRICS},
            "drop": None,
            "standard_error": None,
            "degraded": False,
        }
        decides = value is not None and reference is not None
        decides = decides and window["labels"] >= config.min_sequences
        if decides:
            error = auc_standard_error(labels[member], probs[member])
            drop = float(reference) - float(value)  # type: ignore[arg-type]
            window["drop"], window["standard_error"] = drop, error
            z = norm.isf(config.alpha / len(starts))
            window["degraded"] = bool(drop > config.max_metric_drop and drop > z * error)
        windows.append(window)
    overall = classify_metrics(labels, probs)
    return {
        "metric": primary,
        "evaluation": evaluation,
        "window": config.label_window,
        "overall": {"labels": int(len(labels)), **{k: _finite(overall.get(k)) for k in METRICS}},
        "windows": windows,
        "degraded": [w["start"] for w in windows if w["degraded"]],
    }


def _iso(t_us: int) -> str:
    return np.datetime64(t_us, "us").astype("datetime64[s]").item().isoformat() + "Z"


def evaluation_metrics(run_id: str | None, store: str) -> tuple[str | None, dict[str, float]]:
    """The split the evaluate stage scored and the model's metrics on it, from its run; (None,
    {}) when the model was never evaluated."""
    if run_id is None:
        return None, {}
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=store).get_run(run_id)
    except MlflowException as exc:
        raise LabelsError(f"the model's run {run_id} cannot be read at {store}: {exc}") from None
    split = run.data.tags.get("seqops.evaluate.split")
    if not split:
        return None, {}
    prefix = f"{split}_"
    metrics = {k.removeprefix(prefix): v for k, v in run.data.metrics.items()
               if k.startswith(prefix) and k.removeprefix(prefix) in METRICS}  # fmt: skip
    return split, metrics


def performance(
    scorer: SequenceScorer,
    sequences: list[EncodedSequence],
    labels: pa.Table,
    run_id: str | None,
    store: str,
    config: Any,
) -> dict[str, Any]:
    """The ``performance`` section of the monitor's report."""
    known = labels.filter(pc.greater_equal(labels.column("label"), 0))
    rows, probs = score_as_of(scorer, sequences, known)
    if not len(rows):
        raise LabelsError(
            f"none of the {labels.num_rows} labels could be scored: "
            f"{labels.num_rows - known.num_rows} name a class the model does not know, and the "
            "rest name entities without an event of the batch at or before the label's time "
            "(are the entity keys written as in the events? are the labels' times the "
            "outcomes' times, after the events?)"
        )
    split, evaluation = evaluation_metrics(run_id, store)
    if not evaluation:
        log.warning("the model's run holds no evaluation metrics (the evaluate stage never ran "
                    "on it): windows are reported, none is judged")  # fmt: skip
    section = by_window(
        known.column("label").to_numpy()[rows],
        probs,
        known.column("time_us").to_numpy()[rows],
        evaluation,
        config,
    )
    section["evaluation_split"] = split
    section["rows"] = {
        "read": labels.num_rows,
        "unknown_class": labels.num_rows - known.num_rows,
        "no_events_before": known.num_rows - len(rows),
        "scored": len(rows),
    }
    return section
