"""The evaluate stage: the trained model on a held-out split, by length bucket and by slice.

Reads ``reports/train.json``, loads the model through MLflow (the same pyfunc that serving
loads), scores ``evaluate.split`` of the shards and computes the task's metrics overall, per
length bucket and per value of each ``evaluate.slices`` column (``pipelines.split_metrics``).
An order-blind baseline (``pipelines.baselines``), fitted on the train split, is scored on the
same windows with the same metrics; ``baseline`` and ``skill`` (the model's improvement on the
primary metric, positive when the model is better) sit next to the model's metrics.
It checks that padding never changes a score (``pipelines.invariance``, docs/architecture.md
§4) on raw events of the first test entities. Outputs: ``reports/metrics.json`` (for ``dvc
metrics show`` and the register stage), plot data (JSON for ``dvc plots``) and PNGs in
``reports/plots`` (``pipelines.plots``); all of it is also logged to the training run in
MLflow under ``evaluation/``. Metrics follow sklearn; calibration follows Guo et al. (2017).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.baselines import baseline_report, class_names
from pipelines.config import Params
from pipelines.invariance import entity_events, invariance_check
from pipelines.plots import plot_data, render_plots
from pipelines.split_metrics import EvaluateError, evaluate_split
from pipelines.stage import stage_main
from seqcore.io import atomic_dir, jsonable, write_json
from seqcore.loading import ModelLoadError, load_scorer
from seqcore.manifest import load_manifest
from seqcore.scorer import SequenceScorer

log = logging.getLogger("seqops.evaluate")


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
    """``<split>_<metric>`` metrics in one batch (the baseline's as ``<split>_baseline_<metric>``,
    the skill as ``<split>_skill_improvement``), and the report and plots under evaluation/."""
    from mlflow.entities import Metric, RunTag

    now, prefix = int(time.time() * 1000), f"{report['split']}_"
    values = {**report["overall"], "invariance_max_abs_diff": report["invariance"]["max_abs_diff"]}
    counts = ("examples", "targets")  # the model's own, the same windows
    values |= {
        f"baseline_{k}": v for k, v in report["baseline"]["overall"].items() if k not in counts
    }
    for name, section in (report.get("baselines") or {}).items():  # forecast: both, aggregates
        values |= {
            f"baseline_{name}_{k}": v
            for k, v in section["overall"].items()
            if "_h" not in k and k not in counts
        }
    skill = report["skill"]
    values |= {"skill_improvement": skill["improvement"], "skill_relative": skill["relative"]}
    batch = [
        Metric(prefix + k, float(v), now, 0)
        for k, v in sorted(values.items())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    passed = str(report["invariance"]["passed"]).lower()
    tags = [
        RunTag("seqops.evaluate.split", report["split"]),
        RunTag("seqops.evaluate.invariance_passed", passed),
        RunTag("seqops.evaluate.baseline", report["baseline"]["name"]),
        RunTag("seqops.evaluate.beats_baseline", str(skill["beats_baseline"]).lower()),
    ]
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
    result, preds = evaluate_split(scorer.model, scorer.manifest, shards, config)
    task = result["task"]
    baseline = baseline_report(
        preds,
        load_manifest(shards),  # the shards' own: where their rows are
        task,
        shards,
        config.split,
        result["overall"],
        ece_bins=config.ece_bins,
        seed=params.seed,
    )
    result = {**result, **baseline.sections}
    result["overall"] = {**result["overall"], **baseline.model_overall}
    result["undefined"] = {**result["undefined"], **baseline.undefined}
    if task == "classify":  # the model's outputs in index order, named by their label value
        result["class_names"] = class_names(scorer.manifest, preds.probabilities.shape[1])

    entities = list(dict.fromkeys(str(e) for e in preds.entity))[: config.invariance_entities]
    events = entity_events(Path(validated), scorer, entities)
    invariance = invariance_check(scorer, events, entities, config.invariance_tolerance)
    if not invariance["passed"]:
        log.warning("padding invariance failed: %s", invariance)
    report = jsonable(
        {**result, "invariance": invariance, "run_id": run_id, "model_uri": model_uri}
    )
    result = jsonable(result)
    data = plot_data(preds, result, config, baseline.probabilities)
    with atomic_dir(plots_dir) as tmp:
        for name, records in data.items():
            write_json(tmp / f"{name}.json", records)
        render_plots(data, result, tmp)
    write_json(metrics_path, report)
    _log_to_run(client, run_id, report, Path(metrics_path), Path(plots_dir))
    return report


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-report", default="reports/train.json")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--events", default="data/validated/events.parquet")
    parser.add_argument("--metrics", default="reports/metrics.json")
    parser.add_argument("--plots", default="reports/plots")


def _command(params: Params, args: argparse.Namespace) -> int:
    report = run(params, Path(args.train_report), Path(args.shards), Path(args.events),
                 Path(args.metrics), Path(args.plots))  # fmt: skip
    log.info("%s %s = %s on %d %s examples; invariance max abs diff %s (%s)",
             report["task"], report["primary_metric"], report["primary_value"], report["examples"],
             report["split"], report["invariance"]["max_abs_diff"],
             "passed" if report["invariance"]["passed"] else "FAILED")  # fmt: skip
    skill = report["skill"]
    log.info("baseline %s: %s = %s; the model %s it (improvement %s)",
             report["baseline"]["name"], skill["metric"], skill["baseline"],
             "beats" if skill["beats_baseline"] else "does NOT beat", skill["improvement"])  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "evaluate", _arguments, _command, argv, doc=__doc__, input_errors=(EvaluateError,)
    )


if __name__ == "__main__":
    sys.exit(main())
