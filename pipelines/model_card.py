"""What a reviewer reads on a registry version: its model card, ending in the promotion gate.

The MLflow UI renders a version's description as markdown, so the register stage writes there
what the model is (task, data, code, metrics by length range, the baseline comparison) and a
``## Promotion gate`` section: the decision, the primary metric against the champion, the
baseline, each length range's paired check as a table, the reasons and the thresholds. The
``gate.*`` tags hold the same decision for machines (docs/architecture.md §6); the card is
rendered from the same decision, so the two never disagree. Model cards follow Mitchell et
al. (2019), "Model Cards for Model Reporting".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.split_metrics import finite_or_none
from seqcore.manifest import Manifest

CARD_PARAMS = (
    "train.model.architecture", "train.task", "train.model.hidden_size", "train.model.num_layers",
    "train.epochs", "train.lr", "train.max_tokens", "train.max_tokens_resolved",
    "train.passes_per_epoch", "train.num_workers", "shard.window.policy", "shard.window.length",
    "shard.split.method",
)  # fmt: skip
"""The training run's params the card lists."""


def signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _overall(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    return dict(evaluation.get("overall") or evaluation.get("metrics") or {})


def baseline_line(evaluation: Mapping[str, Any]) -> str:
    skill = evaluation.get("skill")
    if not isinstance(skill, dict):
        return "**Baseline:** not compared (the evaluation has no `skill` entry)."
    name = (evaluation.get("baseline") or {}).get("name", "the baseline")
    metric = skill.get("metric", "?")
    model, base = finite_or_none(skill.get("model")), finite_or_none(skill.get("baseline"))
    improvement = finite_or_none(skill.get("improvement"))
    relative = finite_or_none(skill.get("relative"))
    if improvement is None:
        return f"**Baseline:** {name}: {metric} {plain(base)}; the comparison is undefined."
    verb = "beats it by" if skill.get("beats_baseline") is True else "misses it by"
    share = f" ({abs(relative):.1%} of the baseline's value)" if relative is not None else ""
    return (f"**Baseline:** {name}: {metric} {plain(base)}; this model {plain(model)}, "
            f"{verb} {abs(improvement):.4f}{share}.")  # fmt: skip


def _length_table(evaluation: Mapping[str, Any], primary: str) -> str:
    rows = evaluation.get("by_length") or []
    if not rows:
        return ""
    level = (evaluation.get("length_ranges") or {}).get("confidence")
    band = f"{level:.0%} CI" if level else "CI"
    lines = [f"| true length | examples | {primary} | {band} |", "|---|---|---|---|"]
    for r in rows:
        ci = (r.get("ci") or {}).get(primary)
        interval = f"{ci[0]:.4f}..{ci[1]:.4f}" if ci else "n/a"
        lines.append(
            f"| {r['range']} | {r['examples']} | "
            f"{plain(finite_or_none(r['metrics'].get(primary)))} | {interval} |"
        )
    return "\n" + "\n".join(lines) + "\n"


def model_card(
    summary: Mapping[str, Any],
    run: Any,
    manifest: Manifest,
    evaluation: Mapping[str, Any],
    primary: str,
) -> str:
    """The model card: what the model is for, its data, code, metrics and params."""
    params = run.data.params
    tags = run.data.tags
    rows = "\n".join(f"| {k} | {params[k]} |" for k in CARD_PARAMS if k in params)
    overall = _overall(evaluation)
    scores = "\n".join(
        f"| {k} | {v:.4f} |" for k, v in sorted(overall.items()) if finite_or_none(v) is not None
    )
    invariance = (evaluation.get("invariance") or {}).get("max_abs_diff")
    return f"""# seqops {summary["architecture"]} — {summary["task"]}

**Intended task:** {summary["task"]} on per-entity event sequences (most recent {manifest.window_len} events per entity); \
scores raw events through the shard manifest's preprocessing, which travels inside the model.

**Data:** shard manifest `{manifest.content_hash[:16]}`, events sha256 `{manifest.input.sha256[:16]}`, \
DVC shards `{tags.get("dvc_shards_md5", "?")}`, split `{manifest.split_method}`, {manifest.splits["test"].examples} test examples.

**Code:** git `{tags.get("git_commit", "?")[:12]}` (dirty: {tags.get("git_dirty", "?")}), run `{summary["run_id"]}`.

**Primary metric:** {primary} = {overall.get(primary)}; padding invariance max abs diff {invariance}.

{baseline_line(evaluation)}

| metric | test |
|---|---|
{scores}
{_length_table(evaluation, primary)}
| param | value |
|---|---|
{rows}

**Limitations:** trained on the data described above; scores for entities with event types unseen in training use the OOV id.
"""  # fmt: skip


# --------------------------------------------------------------------------- the gate


DECISION_TEXT = {
    "promoted": "**promoted**: this version is the champion",
    "passed": "**passed**, not promoted (`register.auto_promote: false`): the champion is "
    "unchanged; `seqops registry promote` makes it champion",
    "rejected": "**rejected**: the champion is unchanged",
}


def _range_row(check: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    ci = check.get("regression_ci")
    interval = f"{ci[0]:+.4f}..{ci[1]:+.4f}" if ci else "n/a"
    if check.get("ok") is False:
        verdict = "**regresses** (gated)"
    elif check.get("gated"):
        verdict = "ok (gated)"
    elif int(check["examples"]) < int(cfg["min_slice_examples"]):
        verdict = f"not gated (< {cfg['min_slice_examples']} examples)"
    else:
        verdict = "not gated (undefined)"
    return (
        f"| {check['range']} | {check['examples']} | "
        f"{plain(finite_or_none(check.get('challenger')))} | "
        f"{plain(finite_or_none(check.get('champion')))} | "
        f"{signed(finite_or_none(check.get('regression')))} | {interval} | {verdict} |"
    )


def gate_section(
    decision: Mapping[str, Any],
    outcome: str,
    compared_with: int | None,
    decided_at: str,
    thresholds: Mapping[str, Any],
    slice_test: Mapping[str, Any],
    invariance: Mapping[str, Any],
) -> str:
    """The ``## Promotion gate`` section of the card, in markdown.

    ``decision`` is the gate's decision as recorded in reports/promotion.json (``gate``),
    ``outcome`` its short form (promoted, passed, rejected), ``thresholds`` the register
    params and ``slice_test`` the evaluate params of the paired length-range test."""
    primary = decision["primary_metric"]
    better = "higher" if decision.get("higher_is_better", True) else "lower"
    ours, theirs = decision.get("challenger_value"), decision.get("champion_value")
    if compared_with is None:
        against = "no champion yet: nothing to compare with"
    else:
        delta = signed(finite_or_none(decision.get("delta")))
        against = (
            f"this version {plain(finite_or_none(ours))} vs champion v{compared_with} "
            f"{plain(finite_or_none(theirs))}, delta {delta} (positive: this version is better; "
            f"needs > 0 and >= `register.min_improvement` {thresholds['min_improvement']})"
        )
    skill = decision.get("skill")
    if isinstance(skill, Mapping):
        beats = {True: "beats", False: "does **not** beat"}[skill.get("beats_baseline") is True]
        baseline = (
            f"{beats} it: {skill.get('metric', primary)} "
            f"{plain(finite_or_none(skill.get('model')))} vs "
            f"{plain(finite_or_none(skill.get('baseline')))}, improvement "
            f"{signed(finite_or_none(skill.get('improvement')))}"
        )
    else:
        baseline = "not compared (the evaluation has no `skill`)"
    required = "required" if thresholds.get("require_beat_baseline") else "reported only"
    passed = invariance.get("passed")
    padding = "not recorded" if passed is None else "passed" if passed else "**failed**"
    padding += f" (max abs diff {_number(invariance.get('max_abs_diff'))})"
    lines = [
        "## Promotion gate",
        "",
        f"**Decision:** {DECISION_TEXT.get(outcome, outcome)} (decided {decided_at}).",
        "",
        f"**{primary}** ({better} is better): {against}.",
        "",
        f"**Baseline** ({required}, `register.require_beat_baseline`): {baseline}.",
        "",
        f"**Padding invariance:** {padding}.",
        "",
    ]
    checks = decision.get("slice_checks") or []
    if checks:
        level = slice_test.get("confidence")
        band = f"{level:.0%} interval" if level else "interval"
        lines += [
            f"**Length ranges** (paired bootstrap of champion minus challenger on {primary}, "
            f"sign-flipped where lower is better: positive = this version is worse; {band}):",
            "",
            "| true length | examples | this version | champion | regression | interval | check |",
            "|---|---|---|---|---|---|---|",
            *(_range_row(c, thresholds) for c in checks),
            "",
        ]
    reasons = [f"- {r}" for r in decision.get("reasons") or ()]
    lines += ["**Reasons** (blocking ones first):", "", *reasons, ""]
    keys = ("min_improvement", "max_slice_regression", "min_slice_examples",
            "require_beat_baseline", "auto_promote", "versions")  # fmt: skip
    used = ", ".join(f"`{k}` {_param(thresholds[k])}" for k in keys if k in thresholds)
    tests = ", ".join(
        f"`{k}` {_param(slice_test[k])}" for k in ("bootstrap_samples", "confidence")
        if k in slice_test
    )  # fmt: skip
    lines.append(f"**Thresholds:** register: {used}; evaluate: {tests}.")
    return "\n".join(lines) + "\n"


def _number(value: Any) -> str:
    number = finite_or_none(value)
    return "n/a" if number is None else f"{number:.3g}"


def _param(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
