"""The evaluate stage: the trained model on a held-out split, by length bucket and by slice.

Reads ``reports/train.json``, loads the model through MLflow (the same pyfunc that serving
loads), scores ``evaluate.split`` of the shards with ``pipelines.predict.predict_split`` and
computes the task's metrics (``pipelines.metrics``) overall, per length bucket and per value
of each ``evaluate.slices`` column (the category of each window's last event). It checks
that padding never changes a score (ARCHITECTURE §4) on raw events of the first test
entities, scored alone and in padded batches. Outputs: ``reports/metrics.json`` (for
``dvc metrics show`` and the register stage), plot data (JSON for ``dvc plots``) and PNGs in
``reports/plots``; all of it is also logged to the training run in MLflow under
``evaluation/``. Metrics follow sklearn; calibration follows Guo et al. (2017).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import metrics as M
from pipelines.config import Params, load_params
from pipelines.params.gate import PRIMARY_METRICS, EvaluateConfig
from pipelines.predict import SplitPredictions, predict_split
from seqcore.config import ConfigError
from seqcore.io import atomic_dir, jsonable, write_json
from seqcore.loading import ModelLoadError, load_scorer
from seqcore.manifest import Manifest, load_manifest, part_path
from seqcore.scorer import SequenceScorer
from seqmodels import SequenceModel

log = logging.getLogger("seqops.evaluate")
SPECIAL_IDS = ("<PAD>", "<OOV>")  # vocabulary ids 0 and 1; category i of the vocab has id i + 2


class EvaluateError(RuntimeError):
    """Evaluation cannot run: a missing input or model; the message names it."""


class IncompatibleShardsError(EvaluateError):
    """The model's preprocessing (vocabularies, statistics) differs from the shards'."""


# --------------------------------------------------------------------------- metrics


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


def _evaluate(
    model: SequenceModel, manifest: Manifest, shard_dir: str | Path, config: EvaluateConfig
) -> tuple[dict[str, Any], SplitPredictions]:
    _check_compatible(manifest, shard_dir)
    preds = predict_split(model, shard_dir, config.split)
    values = last_event_values(shard_dir, config.split, manifest, config.slices)
    result = evaluate_predictions(preds, manifest, model.config.task, config, values)
    return result, preds


def evaluate_model(
    model: SequenceModel, manifest: Manifest, shard_dir: str | Path, config: EvaluateConfig
) -> dict[str, Any]:
    """Score ``config.split`` of the shards and compute every metric (deterministic).

    ``manifest`` is the model's own (its preprocessing); it must match the shards'
    features, else ``IncompatibleShardsError``.
    """
    return _evaluate(model, manifest, shard_dir, config)[0]


# --------------------------------------------------------------------------- invariance


def invariance_check(
    scorer: SequenceScorer, validated_events: pa.Table, entities: list[str], tolerance: float
) -> dict[str, Any]:
    """Score each entity's raw events alone and together in padded batches; compare.

    Compares classify probabilities, and the last step's outputs of per-step tasks. The
    sequences are scored together in random groups of four (fixed seed), not in the length
    groups serving would choose, so most of them are really padded (``padded_sequences``
    counts them).
    """
    column = scorer.schema.entity
    wanted = pa.array(sorted({str(e) for e in entities}), pa.string())
    keys = pc.cast(validated_events.column(column), pa.string())
    seqs = scorer.encode(validated_events.filter(pc.is_in(keys, value_set=wanted)))
    if not seqs:
        return {"max_abs_diff": None, "entities": 0, "passed": False, "tolerance": tolerance,
                "padded_sequences": 0, "reason": "none of the entities has events"}  # fmt: skip
    lengths = np.array([min(len(s.cat_ids), scorer.window_len) for s in seqs], dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(seqs))
    groups = [order[k : k + 4] for k in range(0, len(order), 4)]
    together = scorer.forward_sequences(seqs, batches=groups)
    alone = [scorer.forward_sequences([s])[0] for s in seqs]
    last = (lambda x: x) if scorer.config.task == "classify" else (lambda x: x[-1])
    diff = max(
        float(np.max(np.abs(last(a) - last(b)))) for a, b in zip(alone, together, strict=True)
    )
    padded = sum(int((lengths[b] < lengths[b].max()).sum()) for b in groups)
    return {
        "max_abs_diff": diff,
        "entities": len(seqs),
        "passed": bool(diff <= tolerance),
        "tolerance": tolerance,
        "padded_sequences": padded,
    }


def _entity_events(validated: Path, scorer: SequenceScorer, entities: list[str]) -> pa.Table:
    import pyarrow.dataset as ds

    entity = scorer.schema.entity
    wanted = pa.array(entities, pa.string())
    dataset = ds.dataset(str(validated), format="parquet")
    cols = [c for c in scorer.required_columns if c in dataset.schema.names]
    return dataset.to_table(columns=cols, filter=pc.field(entity).cast(pa.string()).isin(wanted))


# --------------------------------------------------------------------------- plots


PLOT_FILES = ("by_bucket", "roc", "pr", "reliability", "confusion", "topk_by_bucket", "horizon")
"""Plot data files, each written for every task (empty where it does not apply) so that the
``dvc plots`` definitions in dvc.yaml always find their files."""


def plot_data(
    preds: SplitPredictions, result: dict[str, Any], config: EvaluateConfig
) -> dict[str, list[dict]]:
    """Plot-ready records (``PLOT_FILES``) from predictions and their metrics."""
    task, primary = result["task"], result["primary_metric"]
    buckets = sorted(result["by_bucket"].items(), key=lambda kv: int(kv[0]))
    data: dict[str, list[dict]] = {name: [] for name in PLOT_FILES}
    data["by_bucket"] = [
        {"bucket": int(b), "examples": m["examples"], primary: m.get(primary)} for b, m in buckets
    ]
    if task == "classify":
        keep = preds.label >= 0
        labels, probs = preds.label[keep], preds.probabilities[keep]
        data["roc"] = M.roc_points(labels, probs)
        data["pr"] = M.pr_points(labels, probs)
        data["reliability"] = M.reliability_bins(labels, probs, config.ece_bins)
        data["confusion"] = [  # one row per example: the shape of DVC's confusion template
            {"actual": int(a), "predicted": int(p)}
            for a, p in zip(labels, probs.argmax(axis=1), strict=True)
        ]
    elif task == "next_event":
        data["topk_by_bucket"] = [
            {"bucket": int(b), "top1_accuracy": m.get("top1_accuracy"),
             "top5_accuracy": m.get("top5_accuracy"), "examples": m["examples"]}
            for b, m in buckets
        ]  # fmt: skip
    else:
        overall, h = result["overall"], 1
        while f"mae_h{h}" in overall:
            data["horizon"].append(
                {"step": h, **{k: overall[f"{k}_h{h}"] for k in ("mae", "rmse", "smape")}}
            )
            h += 1
    return jsonable(data)


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    """A figure on the Agg canvas (no pyplot: no global backend state, safe off the main thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig, ax


def _value(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _bars(ax: Any, labels: list[str], series: dict[str, list[Any]]) -> None:
    x, width = np.arange(len(labels)), 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width, [_value(v) for v in values], width, label=name)
        for j in [j for j, v in enumerate(values) if v is None]:  # undefined, e.g. one class
            ax.text(x[j] + i * width, 0, "n/a", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(
        x + width * (len(series) - 1) / 2,
        labels,
        rotation=0 if len(labels) <= 10 else 90,
        fontsize=7,
    )
    if len(series) > 1:
        ax.legend(fontsize=8)


def render_plots(data: dict[str, list[dict]], result: dict[str, Any], folder: Path) -> list[str]:
    """PNG files for the task into ``folder``; returns their names."""
    primary, written = result["primary_metric"], []

    def save(fig: Any, name: str) -> None:
        fig.savefig(folder / name, metadata={"Software": None})
        written.append(name)

    buckets = [f"{r['bucket']}\nn={r['examples']}" for r in data["by_bucket"]]
    fig, ax = _figure(f"{primary} by length bucket", "bucket (padded length)", primary)
    _bars(ax, buckets, {primary: [r[primary] for r in data["by_bucket"]]})
    save(fig, "by_bucket.png")
    if data["roc"]:
        fig, ax = _figure(f"ROC (AUC {_value(result['overall']['roc_auc']):.3f})", "FPR", "TPR")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        for c in sorted({r.get("class", 1) for r in data["roc"]}):
            pts = [r for r in data["roc"] if r.get("class", 1) == c]
            ax.plot([p["fpr"] for p in pts], [p["tpr"] for p in pts], label=f"class {c}")
        ax.legend(fontsize=8)
        save(fig, "roc.png")
    if data["pr"]:
        fig, ax = _figure(
            f"PR (AUC {_value(result['overall']['pr_auc']):.3f})", "recall", "precision"
        )
        for c in sorted({r.get("class", 1) for r in data["pr"]}):
            pts = [r for r in data["pr"] if r.get("class", 1) == c]
            ax.plot([p["recall"] for p in pts], [p["precision"] for p in pts], label=f"class {c}")
        ax.legend(fontsize=8)
        save(fig, "pr.png")
    if data["confusion"]:
        k = max(2, 1 + max(max(r["actual"], r["predicted"]) for r in data["confusion"]))
        matrix = np.zeros((k, k), dtype=np.int64)
        for r in data["confusion"]:
            matrix[r["actual"], r["predicted"]] += 1
        fig, ax = _figure("confusion matrix", "predicted", "actual")
        ax.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black")  # fmt: skip
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        save(fig, "confusion_matrix.png")
    if data["reliability"]:
        ece = _value(result["overall"].get("ece"))
        fig, ax = _figure(
            f"reliability (ECE {ece:.3f})", "confidence (max probability)", "accuracy"
        )
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        rows = data["reliability"]
        ax.bar([r["lower"] for r in rows], [r["accuracy"] for r in rows], align="edge",
               width=[r["upper"] - r["lower"] for r in rows], edgecolor="black", alpha=0.7)  # fmt: skip
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o-", c="C1")
        ax.set(xlim=(0, 1), ylim=(0, 1))
        save(fig, "reliability.png")
    if data["topk_by_bucket"]:
        rows = data["topk_by_bucket"]
        fig, ax = _figure("top-k accuracy by length bucket", "bucket (padded length)", "accuracy")
        _bars(ax, [str(r["bucket"]) for r in rows],
              {k: [r[k] for r in rows] for k in ("top1_accuracy", "top5_accuracy")})  # fmt: skip
        save(fig, "topk_by_bucket.png")
    if data["horizon"]:
        rows = data["horizon"]
        fig, ax = _figure("forecast error by horizon step", "steps ahead", "error (original units)")
        for k in ("mae", "rmse"):
            ax.plot([r["step"] for r in rows], [_value(r[k]) for r in rows], "o-", label=k)
        ax.set_xticks([r["step"] for r in rows])
        ax.legend(fontsize=8)
        save(fig, "horizon.png")
    return written


# --------------------------------------------------------------------------- the stage


def _read_train_report(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EvaluateError(f"train report {path} not found (run the train stage first)")
    report = json.loads(path.read_text())
    missing = [k for k in ("run_id", "model_uri") if not report.get(k)]
    if missing:
        raise EvaluateError(f"train report {path} lacks {', '.join(missing)}")
    return report


def _load_scorer(client: Any, run_id: str, model_uri: str, uri: str) -> SequenceScorer:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise EvaluateError(f"training run {run_id} not found in MLflow at {uri}") from None
    try:
        return load_scorer(model_uri, uri)
    except ModelLoadError as exc:
        raise EvaluateError(str(exc)) from None


def _log_to_run(client: Any, run_id: str, report: dict, metrics_path: Path, plots: Path) -> None:
    """``<split>_<metric>`` metrics in one batch, and the report and plots under evaluation/."""
    from mlflow.entities import Metric, RunTag

    now, prefix = int(time.time() * 1000), f"{report['split']}_"
    values = {**report["overall"], "invariance_max_abs_diff": report["invariance"]["max_abs_diff"]}
    batch = [
        Metric(prefix + k, float(v), now, 0)
        for k, v in sorted(values.items())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    tags = [RunTag("seqops.evaluate.split", report["split"]),
            RunTag("seqops.evaluate.invariance_passed", str(report["invariance"]["passed"]).lower())]  # fmt: skip
    client.log_batch(run_id, metrics=batch, tags=tags)
    client.log_artifact(run_id, str(metrics_path), "evaluation")
    client.log_artifacts(run_id, str(plots), "evaluation/plots")


def run(
    params: Params,
    train_report: Path,
    shards: Path,
    validated: Path,
    metrics_path: Path,
    plots_dir: Path,
    *,
    root: Path = Path("."),
) -> dict[str, Any]:
    """Evaluate the train stage's model; write metrics and plots; log them to its run."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import configure

    config = params.evaluate
    summary = _read_train_report(Path(train_report))
    run_id, model_uri = str(summary["run_id"]), str(summary["model_uri"])
    uri = configure(root)
    client = MlflowClient(uri)
    scorer = _load_scorer(client, run_id, model_uri, uri)
    result, preds = _evaluate(scorer.model, scorer.manifest, shards, config)

    entities = list(dict.fromkeys(str(e) for e in preds.entity))[: config.invariance_entities]
    events = _entity_events(Path(validated), scorer, entities)
    invariance = invariance_check(scorer, events, entities, config.invariance_tolerance)
    if not invariance["passed"]:
        log.warning("padding invariance failed: %s", invariance)
    report = jsonable(
        {**result, "invariance": invariance, "run_id": run_id, "model_uri": model_uri}
    )
    data = plot_data(preds, result, config)
    with atomic_dir(plots_dir) as tmp:
        for name, records in data.items():
            write_json(tmp / f"{name}.json", records)
        render_plots(data, result, tmp)
    write_json(metrics_path, report)
    _log_to_run(client, run_id, report, Path(metrics_path), Path(plots_dir))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train-report", default="reports/train.json")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--events", default="data/validated/events.parquet")
    parser.add_argument("--metrics", default="reports/metrics.json")
    parser.add_argument("--plots", default="reports/plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        report = run(params, Path(args.train_report), Path(args.shards), Path(args.events),
                     Path(args.metrics), Path(args.plots))  # fmt: skip
    except (ConfigError, EvaluateError, FileNotFoundError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    log.info("%s %s = %s on %d %s examples; invariance max abs diff %s (%s)",
             report["task"], report["primary_metric"], report["primary_value"], report["examples"],
             report["split"], report["invariance"]["max_abs_diff"],
             "passed" if report["invariance"]["passed"] else "FAILED")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
