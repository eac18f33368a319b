"""The evaluate stage: the trained model on a held-out split, by length bucket and by slice.

Reads ``reports/train.json``, loads the model through MLflow (the same pyfunc that serving
loads), scores ``evaluate.split`` of the shards and computes the task's metrics overall, per
length bucket and per value of each ``evaluate.slices`` column (``pipelines.split_metrics``).
An order-blind baseline (``pipelines.baselines``), fitted on the train split, is scored on the
same windows with the same metrics; ``baseline`` and ``skill`` (the model's improvement on the
primary metric, positive when the model is better) sit next to the model's metrics.
It checks that padding never changes a score (``pipelines.invariance``, docs/architecture.md
§4) on raw events of the first test entities. Outputs: ``reports/evaluation.json``, the full
report (by bucket, by length range, slices, undefined reasons, the baseline's metrics; what
the register stage and the plots read), ``reports/metrics.json``, its headline only (the DVC
metric: a few scalars that ``dvc metrics diff`` and ``dvc exp show`` can show, see
``headline``), plot data (JSON for ``dvc plots``) and PNGs in ``reports/plots``
(``pipelines.plots``); all of it is also logged to the training run in MLflow under
``evaluation/``. Metrics follow sklearn; calibration follows Guo et al. (2017).
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

from pipelines.baselines import BaselineReport, baseline_report, class_names
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

HEADLINE_METRICS = {
    "classify": ("roc_auc", "pr_auc", "accuracy", "macro_f1", "log_loss", "ece"),
    "next_event": ("top1_accuracy", "top5_accuracy", "perplexity", "nll", "targets"),
    "forecast": ("mae", "rmse", "smape", "mase", "targets"),
}
"""The model's overall metrics that reports/metrics.json keeps (forecast's per-step
``mae_h1``... stay in reports/evaluation.json)."""
HEADLINE_SKILL = ("improvement", "relative", "beats_baseline")
HEADLINE_INVARIANCE = ("passed", "max_abs_diff")


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


def with_baseline(result: dict[str, Any], baseline: BaselineReport) -> dict[str, Any]:
    """The model's metrics (``evaluate_predictions``) with the baseline's sections beside them:
    reports/evaluation.json less the invariance check and the lineage."""
    merged = {**result, **baseline.sections}
    merged["overall"] = {**result["overall"], **baseline.model_overall}
    merged["undefined"] = {**result["undefined"], **baseline.undefined}
    return merged


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reviewer compares across runs (reports/metrics.json): the split, the
    primary metric, the model's overall metrics (``HEADLINE_METRICS``), the baseline's primary
    value, the skill and the invariance check. Reasons for the undefined ones among them stay
    under ``undefined`` by their dotted path here too; everything else is in the full report."""
    task = report["task"]
    overall = report.get("overall") or {}
    baseline = report.get("baseline") or {}
    skill = report.get("skill") or {}
    invariance = report.get("invariance") or {}
    head: dict[str, Any] = {
        "task": task,
        "split": report["split"],
        "examples": report["examples"],
        "primary_metric": report["primary_metric"],
        "primary_value": report["primary_value"],
        "overall": {k: overall[k] for k in HEADLINE_METRICS.get(task, ()) if k in overall},
        "baseline": {"name": baseline.get("name"), "primary_value": baseline.get("primary_value")},
        "skill": {k: skill.get(k) for k in HEADLINE_SKILL},
        "invariance": {k: invariance.get(k) for k in HEADLINE_INVARIANCE},
    }
    # The full report's paths of the values kept here, by their path in the headline.
    paths = {f"overall.{k}": f"overall.{k}" for k in head["overall"]}
    paths |= {f"skill.{k}": f"skill.{k}" for k in HEADLINE_SKILL}
    paths["baseline.primary_value"] = f"baseline.overall.{baseline.get('primary_metric')}"
    paths["primary_value"] = f"overall.{report['primary_metric']}"
    undefined = report.get("undefined") or {}
    reasons = {ours: undefined[full] for ours, full in paths.items() if full in undefined}
    if reasons:
        head["undefined"] = dict(sorted(reasons.items()))
    return head


def _log_to_run(client: Any, run_id: str, report: dict, outputs: list[Path], plots: Path) -> None:
    """``<split>_<metric>`` metrics in one batch (the baseline's as ``<split>_baseline_<metric>``,
    the skill as ``<split>_skill_improvement``), and the reports and plots under evaluation/."""
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
    for path in outputs:
        client.log_artifact(run_id, str(path), "evaluation")
    client.log_artifacts(run_id, str(plots), "evaluation/plots")


def run(
    params: Params,
    train_report: Path,
    shards: Path,
    validated: Path,
    metrics_path: Path,
    evaluation_path: Path,
    plots_dir: Path,
    *,
    root: Path = Path("."),
) -> dict[str, Any]:
    """Evaluate the train stage's model; write the full report (``evaluation_path``), its
    headline (``metrics_path``) and the plots; log them to its run. Returns the full report."""
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
    result = with_baseline(result, baseline)
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
    write_json(evaluation_path, report)
    write_json(metrics_path, headline(report))
    outputs = [Path(evaluation_path), Path(metrics_path)]
    _log_to_run(client, run_id, report, outputs, Path(plots_dir))
    return report


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-report", default="reports/train.json")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--events", default="data/validated")
    parser.add_argument(
        "--metrics", default="reports/metrics.json", help="the headline (the DVC metric)"
    )
    parser.add_argument(
        "--evaluation", default="reports/evaluation.json", help="the full evaluation report"
    )
    parser.add_argument("--plots", default="reports/plots")


def _command(params: Params, args: argparse.Namespace) -> int:
    report = run(params, Path(args.train_report), Path(args.shards), Path(args.events),
                 Path(args.metrics), Path(args.evaluation), Path(args.plots))  # fmt: skip
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
