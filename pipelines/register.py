"""The register stage: a new registry version (``challenger``) and the promotion gate.

The new model is registered with a model card as its description and lineage/metric tags,
and gets the ``challenger`` alias. The gate then decides whether it replaces the ``champion``
(docs/architecture.md §6):

* both models are scored on the *same* test windows, through each model's own preprocessing
  from raw events (``predict_split_raw``): the champion is re-scored, never trusted from
  numbers logged when it was trained on other data;
* the challenger's primary metric must beat the champion's by ``min_improvement``;
* no length-bucket slice (with at least ``min_slice_examples`` examples) may regress by more
  than ``max_slice_regression``;
* the padding-invariance check of the evaluate stage must have passed.

With no champion yet, a version that passes the invariance check becomes the first champion.
A passed gate moves ``champion`` when ``auto_promote`` is on. Either way the decision, what was
compared, the numbers and the time go to ``reports/promotion.json`` and to tags on both
versions, so the MLflow UI shows the same audit trail.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import Params
from pipelines.params.gate import LOWER_IS_BETTER, RegisterConfig
from pipelines.predict import predict_split_raw
from pipelines.registry import CHAMPION, Registry, RegistryError, now_iso
from pipelines.split_metrics import evaluate_predictions
from pipelines.stage import stage_main
from seqcore.io import jsonable, write_json
from seqcore.loading import load_scorer
from seqcore.manifest import Manifest, load_manifest

log = logging.getLogger("seqops.register")


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    primary_metric: str
    higher_is_better: bool
    challenger_value: float | None
    champion_value: float | None
    delta: float | None
    slice_checks: list[dict[str, Any]] = field(default_factory=list)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def overall(result: dict[str, Any]) -> dict[str, Any]:
    """The overall metrics of an evaluation result."""
    return dict(result.get("overall") or result.get("metrics") or {})


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    invariance_passed: bool,
    primary: str,
    cfg: RegisterConfig,
) -> GateDecision:
    """The promotion gate as a pure function of two evaluations on the same test data."""
    higher = primary not in LOWER_IS_BETTER
    ours = _finite(overall(challenger).get(primary))
    reasons: list[str] = []
    if not invariance_passed:
        reasons.append("padding-invariance check failed")
    if ours is None:
        reasons.append(f"challenger's {primary} is undefined on the test data")
    if champion is None:
        passed = not reasons
        if passed:
            reasons.append("no champion yet: first version passing the checks becomes champion")
        return GateDecision(passed, reasons, primary, higher, ours, None, None)

    theirs = _finite(overall(champion).get(primary))
    delta = None if ours is None or theirs is None else (ours - theirs if higher else theirs - ours)
    if delta is not None and (delta < cfg.min_improvement or delta <= 0.0):  # a tie never wins
        reasons.append(
            f"{primary} {ours:.4f} does not beat champion {theirs:.4f} by {cfg.min_improvement} (delta {delta:+.4f})"
        )
    elif delta is None and theirs is not None:
        reasons.append("cannot compare: challenger metric undefined")
    checks = []
    ours_b, theirs_b = challenger.get("by_bucket", {}), champion.get("by_bucket", {})
    for bucket in sorted(set(ours_b) & set(theirs_b), key=lambda b: int(b)):
        n = int(ours_b[bucket].get("examples", 0))
        a, b = _finite(ours_b[bucket].get(primary)), _finite(theirs_b[bucket].get(primary))
        entry: dict[str, Any] = {
            "bucket": int(bucket),
            "examples": n,
            "challenger": a,
            "champion": b,
        }
        if n < cfg.min_slice_examples or a is None or b is None:
            entry["gated"] = False
        else:
            regression = (b - a) if higher else (a - b)
            entry.update(
                gated=True, regression=regression, ok=regression <= cfg.max_slice_regression
            )
            if not entry["ok"]:
                reasons.append(
                    f"bucket {bucket} {primary} regresses by {regression:.4f} (> {cfg.max_slice_regression})"
                )
        checks.append(entry)
    passed = not reasons
    if passed:
        reasons.append(
            f"{primary} {ours:.4f} beats champion {theirs:.4f} (delta {delta:+.4f}); no bucket regresses"
        )
    return GateDecision(passed, reasons, primary, higher, ours, theirs, delta, checks)


def model_card(
    summary: dict[str, Any],
    run: Any,
    manifest: Manifest,
    metrics: dict[str, Any],
    primary: str,
) -> str:
    params = run.data.params
    tags = run.data.tags
    keep = ("train.model.architecture", "train.task", "train.model.hidden_size", "train.model.num_layers", "train.epochs", "train.lr",
            "train.max_tokens", "train.num_workers", "shard.window.policy", "shard.window.length", "shard.split.method")  # fmt: skip
    rows = "\n".join(f"| {k} | {params[k]} |" for k in keep if k in params)
    scores = "\n".join(
        f"| {k} | {v:.4f} |" for k, v in sorted(overall(metrics).items()) if _finite(v) is not None
    )
    return f"""# seqops {summary["architecture"]} — {summary["task"]}

**Intended task:** {summary["task"]} on per-entity event sequences (most recent {manifest.window_len} events per entity); \
scores raw events through the shard manifest's preprocessing, which travels inside the model.

**Data:** shard manifest `{manifest.content_hash[:16]}`, events sha256 `{manifest.input.sha256[:16]}`, \
DVC shards `{tags.get("dvc_shards_md5", "?")}`, split `{manifest.split_method}`, {manifest.splits["test"].examples} test examples.

**Code:** git `{tags.get("git_commit", "?")[:12]}` (dirty: {tags.get("git_dirty", "?")}), run `{summary["run_id"]}`.

**Primary metric:** {primary} = {overall(metrics).get(primary)}; padding invariance max abs diff {metrics.get("invariance", {}).get("max_abs_diff")}.

| metric | test |
|---|---|
{scores}

| param | value |
|---|---|
{rows}

**Limitations:** trained on the data described above; scores for entities with event types unseen in training use the OOV id.
"""


def _evaluate_on_test(
    model_uri: str, store: str, events: pa.Table, shards: Path, manifest: Manifest, params: Params
) -> dict[str, Any]:
    """A registered model's metrics on the test windows, scored from raw events."""
    scorer = load_scorer(model_uri, store)
    preds = predict_split_raw(scorer, events, shards, params.evaluate.split, manifest)
    return evaluate_predictions(preds, manifest, scorer.config.task, params.evaluate, {})


def run(
    params: Params,
    train_report: Path,
    metrics_path: Path,
    shards: Path,
    validated: Path,
    promotion_path: Path,
    root: Path = Path("."),
) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import configure

    cfg = params.register
    for path in (train_report, metrics_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run the train and evaluate stages first)")
    summary = json.loads(train_report.read_text())
    metrics = json.loads(metrics_path.read_text())
    manifest = load_manifest(shards)
    uri = configure(root)
    client = MlflowClient(uri)
    run_info = client.get_run(summary["run_id"])
    task = summary["task"]
    primary = cfg.metric_for(task)
    registry = Registry(client, cfg.model_name)

    version_tags = {
        f"metric.{k}": str(v) for k, v in overall(metrics).items() if _finite(v) is not None
    }
    version_tags.update({
        "data.manifest_hash": manifest.content_hash,
        "data.events_sha256": manifest.input.sha256,
        "data.dvc_shards_md5": run_info.data.tags.get("dvc_shards_md5", "unknown"),
        "code.git_commit": run_info.data.tags.get("git_commit", "unknown"),
        "code.git_dirty": run_info.data.tags.get("git_dirty", "unknown"),
        "train.task": task,
        "train.architecture": summary["architecture"],
        "invariance.passed": str(bool(metrics.get("invariance", {}).get("passed"))).lower(),
    })  # fmt: skip
    card = model_card(summary, run_info, manifest, metrics, primary)
    version = registry.register(summary["model_uri"], summary["run_id"], card, version_tags)
    log.info("registered %s version %s (alias challenger)", cfg.model_name, version.version)

    events = pq.read_table(validated)
    challenger_eval = _evaluate_on_test(
        f"models:/{cfg.model_name}/{version.version}", uri, events, shards, manifest, params
    )
    champion = registry.alias(CHAMPION)
    champion_eval: dict[str, Any] | None = None
    rival = champion if champion is not None and champion.version != version.version else None
    if rival is not None:
        champion_eval = _evaluate_on_test(
            f"models:/{cfg.model_name}/{rival.version}", uri, events, shards, manifest, params
        )
    invariance = bool(metrics.get("invariance", {}).get("passed"))
    decision = decide(challenger_eval, champion_eval, invariance, primary, cfg)
    decided_at = now_iso()
    outcome = "rejected"
    if decision.passed:
        outcome = (
            "promoted" if cfg.auto_promote else "passed (auto_promote off: champion unchanged)"
        )
    record = {
        "model_name": cfg.model_name,
        "decided_at": decided_at,
        "decision": outcome,
        "gate": asdict(decision),
        "challenger": {"version": version.version, "run_id": summary["run_id"], "metrics": overall(challenger_eval)},
        "champion": None if rival is None or champion_eval is None else {
            "version": rival.version, "run_id": rival.run_id, "metrics": overall(champion_eval), "rescored": True,
        },
        "test_data": {"split": params.evaluate.split, "manifest_hash": manifest.content_hash,
                      "examples": manifest.splits[params.evaluate.split].examples},
        "thresholds": asdict(cfg),
    }  # fmt: skip
    if decision.passed and cfg.auto_promote:
        registry.promote(
            version.version, reason="; ".join(decision.reasons), evidence={"gate": "passed"}
        )
    registry.set_tags(version.version, {
        "gate.decision": outcome, "gate.decided_at": decided_at, "gate.primary_metric": primary,
        "gate.challenger_value": str(decision.challenger_value), "gate.champion_value": str(decision.champion_value),
        "gate.compared_with": str(rival.version) if rival is not None else "none",
        "gate.reasons": "; ".join(decision.reasons),
    })  # fmt: skip
    if rival is not None:
        registry.set_tags(rival.version, {f"gate.challenged_by.v{version.version}": {
            "decision": outcome, "at": decided_at, primary: decision.champion_value, "challenger": decision.challenger_value,
        }})  # fmt: skip
    write_json(promotion_path, jsonable(record))
    return record


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-report", default="reports/train.json")
    parser.add_argument("--metrics", default="reports/metrics.json")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--events", default="data/validated/events.parquet")
    parser.add_argument("--out", default="reports/promotion.json")


def _command(params: Params, args: argparse.Namespace) -> int:
    record = run(params, Path(args.train_report), Path(args.metrics), Path(args.shards),
                 Path(args.events), Path(args.out))  # fmt: skip
    print(
        f"register: {record['model_name']} v{record['challenger']['version']}: {record['decision']}"
    )
    for reason in record["gate"]["reasons"]:
        print(f"  - {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "register", _arguments, _command, argv, doc=__doc__, input_errors=(RegistryError,)
    )


if __name__ == "__main__":
    sys.exit(main())
