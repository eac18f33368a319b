"""The register stage: a new registry version (``challenger``) and the promotion gate.

The gate decides whether the new model replaces the ``champion`` (docs/architecture.md §6):

* both models are scored on the *same* test windows, through each model's own preprocessing
  from raw events (``predict_split_raw``): the champion is re-scored, never trusted from
  numbers logged when it was trained on other data;
* the challenger's primary metric must beat the champion's by ``min_improvement``;
* per range of true length (``evaluate.length_ranges``), a paired bootstrap of champion minus
  challenger on the same examples: a range blocks promotion only when its lower confidence
  bound exceeds ``max_slice_regression`` (the loss is real, not noise); ranges with fewer than
  ``min_slice_examples`` examples are reported, not gated;
* the challenger must beat the evaluate stage's baseline (``skill`` in
  reports/evaluation.json) unless ``require_beat_baseline`` is off;
* the padding-invariance check of the evaluate stage must have passed.

With no champion yet, a version that passes the other checks becomes the first champion. A
passed gate moves ``champion`` when ``auto_promote`` is on.

Which candidates become registry versions is ``register.versions``: ``passed`` (the default)
registers only those the gate passes, so a rejected candidate stays a logged model in its
MLflow run; ``all`` registers every candidate with its decision, rejected ones included.

Everything that can fail (reading the reports, loading and scoring both models, the decision)
happens before the registry is touched. Then, in one ``Registry.atomic()`` block, the version
is created with its model card (ending in a markdown ``Promotion gate`` section,
``pipelines.model_card``) and all its tags (lineage and the ``gate.*`` decision), gets the
``challenger`` alias, is promoted if the gate passed, and the champion it was compared with is
tagged; if any of these writes fails, the others are undone. The decision, what was compared,
the numbers and the time go to ``reports/promotion.json`` (the audit record), its summary to
``reports/gate.json`` (a DVC metric), and the decision to the training run's
``seqops.gate.*`` tags, registered or not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.config import Params
from pipelines.model_card import gate_section, model_card, plain, signed
from pipelines.params.gate import LOWER_IS_BETTER, RegisterConfig
from pipelines.predict import SplitPredictions, predict_split_raw
from pipelines.registry import (
    CHAMPION,
    GATE_PASSED,
    GATE_PROMOTED,
    GATE_REJECTED,
    Registry,
    RegistryError,
    VersionInfo,
    now_iso,
    tag_text,
)
from pipelines.split_metrics import compare_by_length, evaluate_predictions, finite_or_none
from pipelines.stage import stage_main
from seqcore.io import jsonable, write_json
from seqcore.loading import load_scorer
from seqcore.manifest import Manifest, load_manifest
from seqcore.store import read_events

log = logging.getLogger("seqops.register")

BASELINE_SWITCH = "register.require_beat_baseline"


class GateError(RuntimeError):
    """A model cannot be scored on the test windows; nothing was written to the registry."""


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str]
    """Blocking reasons first, then what was checked and found fine or not gated."""
    primary_metric: str
    higher_is_better: bool
    challenger_value: float | None
    champion_value: float | None
    delta: float | None
    slice_checks: list[dict[str, Any]] = field(default_factory=list)
    skill: dict[str, Any] | None = None
    """The challenger against the baseline, as the evaluate stage measured it (None: missing)."""


def overall(result: dict[str, Any]) -> dict[str, Any]:
    """The overall metrics of an evaluation result."""
    return dict(result.get("overall") or result.get("metrics") or {})


def _baseline_check(
    skill: dict[str, Any] | None, cfg: RegisterConfig, blocking: list[str], notes: list[str]
) -> None:
    required = cfg.require_beat_baseline
    unless = f"; set {BASELINE_SWITCH}: false to promote without it" if required else ""
    if not isinstance(skill, dict):
        (blocking if required else notes).append(
            "no baseline comparison: reports/evaluation.json has no `skill` (the evaluate "
            f"stage's challenger vs baseline){unless}"
        )
        return
    metric = skill.get("metric", "?")
    numbers = (
        f"{metric} {plain(finite_or_none(skill.get('model')))} vs baseline "
        f"{plain(finite_or_none(skill.get('baseline')))} (improvement "
        f"{signed(finite_or_none(skill.get('improvement')))})"
    )
    if skill.get("beats_baseline") is True:
        notes.append(f"beats the baseline: {numbers}")
    else:
        (blocking if required else notes).append(f"does not beat the baseline: {numbers}{unless}")


def _slice_check(row: dict[str, Any], primary: str, cfg: RegisterConfig) -> tuple[dict, str]:
    """One length range's check (``compare_by_length`` row + gated, ok) and its sentence."""
    n, regression = int(row["examples"]), finite_or_none(row.get("regression"))
    ci = row.get("regression_ci")
    entry = {**row, "gated": False, "ok": None}
    head = (
        f"length {row['range']} ({n} examples): {primary} {plain(finite_or_none(row.get('challenger')))}"
        f" vs champion {plain(finite_or_none(row.get('champion')))}, regression {signed(regression)}"
        + (f" (CI {ci[0]:+.4f}..{ci[1]:+.4f})" if ci else "")
    )
    if n < cfg.min_slice_examples:
        return (
            entry,
            f"{head}: not gated, fewer than register.min_slice_examples ({cfg.min_slice_examples})",
        )
    if regression is None:
        return entry, f"{head}: not gated, {primary} undefined for a model on this range"
    # without bootstrap intervals (evaluate.bootstrap_samples: 0) the point value is gated
    bound = float(ci[0]) if ci else regression
    entry.update(gated=True, ok=bound <= cfg.max_slice_regression)
    which = "lower bound" if ci else "regression"
    if entry["ok"]:
        return entry, f"{head}: ok, {which} {bound:+.4f} <= {cfg.max_slice_regression}"
    return (
        entry,
        f"{head}: regresses, {which} {bound:+.4f} > register.max_slice_regression "
        f"{cfg.max_slice_regression}",
    )


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    invariance_passed: bool,
    primary: str,
    cfg: RegisterConfig,
    *,
    slices: list[dict[str, Any]] | tuple[()] = (),
    skill: dict[str, Any] | None = None,
) -> GateDecision:
    """The promotion gate as a pure function of two evaluations on the same test data.

    ``slices`` are ``split_metrics.compare_by_length`` rows (the paired comparison by length
    range); ``skill`` is the evaluate stage's challenger-vs-baseline comparison, or None where
    evaluation.json has none.
    """
    higher = primary not in LOWER_IS_BETTER
    ours = finite_or_none(overall(challenger).get(primary))
    blocking: list[str] = []
    notes: list[str] = []
    if not invariance_passed:
        blocking.append("padding-invariance check failed")
    if ours is None:
        blocking.append(f"challenger's {primary} is undefined on the test data")
    _baseline_check(skill, cfg, blocking, notes)
    if champion is None:
        if not blocking:
            notes.insert(0, "no champion yet: first version passing the checks becomes champion")
        return GateDecision(not blocking, blocking + notes, primary, higher, ours, None, None,
                            skill=skill)  # fmt: skip

    theirs = finite_or_none(overall(champion).get(primary))
    delta = None if ours is None or theirs is None else (ours - theirs if higher else theirs - ours)
    if delta is not None and (delta < cfg.min_improvement or delta <= 0.0):  # a tie never wins
        blocking.append(
            f"{primary} {ours:.4f} does not beat champion {theirs:.4f} by {cfg.min_improvement} (delta {delta:+.4f})"
        )
    elif delta is None and ours is not None:  # e.g. a broken champion: nothing to defend
        notes.append(f"the champion's {primary} is undefined on the test data: not compared")
    checks = []
    for row in slices:
        entry, sentence = _slice_check(row, primary, cfg)
        checks.append(entry)
        (blocking if entry["ok"] is False else notes).append(sentence)
    if not blocking and delta is not None:
        notes.insert(
            0,
            f"{primary} {ours:.4f} beats champion {theirs:.4f} (delta {delta:+.4f}); "
            "no length range regresses with confidence",
        )
    return GateDecision(not blocking, blocking + notes, primary, higher, ours, theirs, delta,
                        checks, skill)  # fmt: skip


SCORING_ERRORS = (KeyError, ValueError, IndexError, TypeError, pa.ArrowException)
"""What scoring a model on events it does not fit raises (e.g. a column its schema names that
the events lack); anything else is a bug and keeps its traceback."""


def _score(
    who: str, model_uri: str, store: str, events: pa.Table, shards: Path, manifest: Manifest,
    params: Params,
) -> tuple[SplitPredictions, dict[str, Any]]:  # fmt: skip
    """A model's predictions and metrics on the test windows, scored from raw events."""
    scorer = load_scorer(model_uri, store)
    split = params.evaluate.split
    try:
        preds = predict_split_raw(scorer, events, shards, split, manifest)
    except SCORING_ERRORS as exc:
        raise GateError(
            f"cannot score the {who} ({model_uri}) on the {split} windows: "
            f"{type(exc).__name__}: {exc}; nothing was registered"
        ) from exc
    # Only the overall metrics are read here: the per-range comparison bootstraps both
    # models paired (compare_by_length), so unpaired intervals would be computed for nothing.
    overall_only = replace(params.evaluate, bootstrap_samples=0)
    return preds, evaluate_predictions(preds, manifest, scorer.config.task, overall_only, {})


def _read_inputs(train_report: Path, evaluation_path: Path) -> tuple[dict, dict]:
    if not train_report.is_file():
        raise FileNotFoundError(f"{train_report} not found (run the train stage first)")
    if not evaluation_path.is_file():
        raise FileNotFoundError(
            f"{evaluation_path} not found: the gate reads the evaluate stage's full report "
            "(by length range, skill, invariance); run the evaluate stage first"
        )
    summary = json.loads(train_report.read_text())
    evaluation = json.loads(evaluation_path.read_text())
    missing = [k for k in ("run_id", "model_uri", "task", "architecture") if not summary.get(k)]
    if missing:
        raise RegistryError(f"train report {train_report} lacks {', '.join(missing)}")
    return summary, evaluation


def _outcome(decision: GateDecision, cfg: RegisterConfig) -> str:
    if not decision.passed:
        return GATE_REJECTED
    return GATE_PROMOTED if cfg.auto_promote else GATE_PASSED


def short_decision(outcome: str) -> str:
    """promoted, passed or rejected: the decision as reports/gate.json and the card say it."""
    return "passed" if outcome == GATE_PASSED else outcome


def _version_tags(
    evaluation: dict[str, Any], manifest: Manifest, run_info: Any, summary: dict[str, Any],
    decision: GateDecision, outcome: str, decided_at: str, rival: VersionInfo | None,
) -> dict[str, str]:  # fmt: skip
    """Lineage, metric and gate tags of the new version, all set when it is created."""
    skill = decision.skill or {}
    tags = {
        f"metric.{k}": str(v)
        for k, v in overall(evaluation).items()
        if finite_or_none(v) is not None
    }
    tags.update({
        "data.manifest_hash": manifest.content_hash,
        "data.events_sha256": manifest.input.sha256,
        "data.dvc_shards_md5": run_info.data.tags.get("dvc_shards_md5", "unknown"),
        "code.git_commit": run_info.data.tags.get("git_commit", "unknown"),
        "code.git_dirty": run_info.data.tags.get("git_dirty", "unknown"),
        "train.task": summary["task"],
        "train.architecture": summary["architecture"],
        "invariance.passed": str(bool(evaluation.get("invariance", {}).get("passed"))).lower(),
        "gate.decision": outcome, "gate.decided_at": decided_at,
        "gate.primary_metric": decision.primary_metric,
        "gate.challenger_value": str(decision.challenger_value),
        "gate.champion_value": str(decision.champion_value),
        "gate.compared_with": str(rival.version) if rival is not None else "none",
        "gate.beats_baseline": str(skill.get("beats_baseline", "unknown")).lower(),
        "gate.baseline_improvement": str(skill.get("improvement")),
        "gate.regressing_ranges": ",".join(
            c["range"] for c in decision.slice_checks if c["ok"] is False
        ) or "none",
        "gate.reasons": "; ".join(decision.reasons),
    })  # fmt: skip
    return tags


def not_registered(summary: dict[str, Any]) -> str:
    """What happened to a candidate the gate rejected under ``register.versions: passed``."""
    return (
        f"not registered (register.versions: passed): the model stays in MLflow run "
        f"{summary['run_id']} as {summary['model_uri']}. To register it anyway, for review: "
        "set register.versions: all and rerun the register stage (`dvc exp run -S "
        "register.versions=all`, or edit params.yaml and `dvc repro register`); the version "
        "then records gate.decision=rejected and becomes champion only through "
        "`seqops registry promote N --override-gate --reason ...`"
    )


def gate_summary(record: dict[str, Any]) -> dict[str, Any]:
    """reports/gate.json: the decision in a few scalars, for ``dvc metrics show`` and ``dvc exp
    show`` (reports/promotion.json is the full record)."""
    gate, champion = record["gate"], record["champion"]
    return {
        "decision": short_decision(record["decision"]),
        "passed": gate["passed"],
        "registered": record["challenger"]["version"] is not None,
        "version": record["challenger"]["version"],
        "primary_metric": gate["primary_metric"],
        "challenger_value": gate["challenger_value"],
        "champion_value": gate["champion_value"],
        "delta": gate["delta"],
        "compared_with": None if champion is None else champion["version"],
        "beats_baseline": (gate.get("skill") or {}).get("beats_baseline"),
        "regressing_ranges": sum(1 for c in gate["slice_checks"] if c["ok"] is False),
    }


def _tag_run(client: Any, record: dict[str, Any]) -> None:
    """The decision on the training run too, where a candidate that was not registered stays.
    A view, not the record: a failure here is logged and does not fail the stage, whose
    registry writes have landed."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    version = record["challenger"]["version"]
    tags = {
        "seqops.gate.decision": short_decision(record["decision"]),
        "seqops.gate.decided_at": record["decided_at"],
        "seqops.gate.model_name": record["model_name"],
        "seqops.gate.version": "none" if version is None else str(version),
        "seqops.gate.reasons": tag_text("; ".join(record["gate"]["reasons"])),
    }
    try:
        client.log_batch(record["challenger"]["run_id"],
                         tags=[RunTag(k, v) for k, v in tags.items()])  # fmt: skip
    except MlflowException as exc:
        log.warning("could not tag training run %s with the decision: %s",
                    record["challenger"]["run_id"], exc)  # fmt: skip


def run(
    params: Params,
    train_report: Path,
    evaluation_path: Path,
    shards: Path,
    validated: Path,
    promotion_path: Path,
    gate_path: Path,
    root: Path = Path("."),
) -> dict[str, Any]:
    """Gate the train stage's model against the champion; register it (every candidate, or
    only a passed one: ``register.versions``); write reports/promotion.json and gate.json."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import configure

    cfg = params.register
    summary, evaluation = _read_inputs(train_report, evaluation_path)
    manifest = load_manifest(shards)
    uri = configure(root)
    client = MlflowClient(uri)
    try:
        run_info = client.get_run(summary["run_id"])
    except MlflowException:
        raise RegistryError(
            f"training run {summary['run_id']} not found in MLflow at {uri}"
        ) from None
    task = summary["task"]
    primary = cfg.metric_for(task)
    registry = Registry(client, cfg.model_name)

    # Everything that can fail, before the registry is written.
    events = read_events(validated)
    challenger_preds, challenger_eval = _score(
        "challenger", summary["model_uri"], uri, events, shards, manifest, params
    )
    rival = registry.alias(CHAMPION)
    champion_eval: dict[str, Any] | None = None
    slices: list[dict[str, Any]] = []
    if rival is not None:
        champion_preds, champion_eval = _score(
            f"champion v{rival.version}", f"models:/{cfg.model_name}/{rival.version}", uri,
            events, shards, manifest, params,
        )  # fmt: skip
        slices = compare_by_length(
            challenger_preds, champion_preds, manifest, task, primary, params.evaluate
        )
    invariance = evaluation.get("invariance") or {}
    decision = decide(challenger_eval, champion_eval, bool(invariance.get("passed")), primary,
                      cfg, slices=slices, skill=evaluation.get("skill"))  # fmt: skip
    decided_at = now_iso()
    outcome = _outcome(decision, cfg)
    evaluate = params.evaluate
    slice_test = {"length_ranges": evaluate.length_ranges, "paired": True,
                  "bootstrap_samples": evaluate.bootstrap_samples,
                  "confidence": evaluate.confidence}  # fmt: skip

    version: int | None = None
    if decision.passed or cfg.versions == "all":
        tags = _version_tags(evaluation, manifest, run_info, summary, decision, outcome,
                             decided_at, rival)  # fmt: skip
        card = model_card(summary, run_info, manifest, evaluation, primary) + "\n" + gate_section(
            jsonable(asdict(decision)), short_decision(outcome),
            None if rival is None else rival.version, decided_at, asdict(cfg), slice_test,
            invariance,
        )  # fmt: skip
        # The version, its aliases and the champion's tags land together or not at all.
        with registry.atomic():
            created = registry.register(summary["model_uri"], summary["run_id"], card, tags)
            if decision.passed and cfg.auto_promote:
                registry.promote(created.version, reason="; ".join(decision.reasons),
                                 evidence={"gate": "passed"})  # fmt: skip
            if rival is not None:
                registry.set_tags(rival.version, {f"gate.challenged_by.v{created.version}": {
                    "decision": outcome, "at": decided_at, primary: decision.champion_value,
                    "challenger": decision.challenger_value,
                }})  # fmt: skip
        version = created.version
        log.info("registered %s version %s: %s", cfg.model_name, version, outcome)
    else:
        log.info("%s: %s, not registered (register.versions: passed)", cfg.model_name, outcome)
    record = {
        "model_name": cfg.model_name,
        "decided_at": decided_at,
        "decision": outcome,
        "registered": version is not None,
        "gate": asdict(decision),
        "challenger": {"version": version, "run_id": summary["run_id"],
                       "model_uri": summary["model_uri"], "metrics": overall(challenger_eval)},
        "champion": None if rival is None or champion_eval is None else {
            "version": rival.version, "run_id": rival.run_id, "metrics": overall(champion_eval), "rescored": True,
        },
        "test_data": {"split": evaluate.split, "manifest_hash": manifest.content_hash,
                      "examples": manifest.splits[evaluate.split].examples},
        "thresholds": asdict(cfg),
        "slice_test": slice_test,
    }  # fmt: skip
    if version is None:
        record["not_registered"] = not_registered(summary)
    record = jsonable(record)
    write_json(promotion_path, record)
    write_json(gate_path, gate_summary(record))
    _tag_run(client, record)
    return record


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-report", default="reports/train.json")
    parser.add_argument(
        "--evaluation",
        default="reports/evaluation.json",
        help="the evaluate stage's full report (by length range, skill, invariance)",
    )
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--events", default="data/validated")
    parser.add_argument("--out", default="reports/promotion.json", help="the full audit record")
    parser.add_argument("--gate", default="reports/gate.json", help="the decision, a DVC metric")


def _command(params: Params, args: argparse.Namespace) -> int:
    record = run(params, Path(args.train_report), Path(args.evaluation), Path(args.shards),
                 Path(args.events), Path(args.out), Path(args.gate))  # fmt: skip
    version = record["challenger"]["version"]
    if version is None:
        print(f"register: {record['model_name']}: {record['decision']}")
        print(f"  {record['not_registered']}")
    else:
        print(f"register: {record['model_name']} v{version}: {record['decision']}")
    for reason in record["gate"]["reasons"]:
        print(f"  - {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "register", _arguments, _command, argv, doc=__doc__,
        input_errors=(RegistryError,), failures=(GateError,),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
