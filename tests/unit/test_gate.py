"""The promotion gate as a pure decision over two evaluations on the same test data."""

from __future__ import annotations

import math
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np

from pipelines.model_card import gate_section, model_card
from pipelines.params.gate import EvaluateConfig, RegisterConfig
from pipelines.predict import SplitPredictions
from pipelines.register import GATE_PASSED, decide, gate_summary, short_decision
from pipelines.split_metrics import compare_by_length
from seqcore.io import jsonable

CFG = RegisterConfig(min_improvement=0.01, max_slice_regression=0.02, min_slice_examples=20)
BEATS = {"metric": "roc_auc", "model": 0.9, "baseline": 0.8, "improvement": 0.1,
         "relative": 0.125, "beats_baseline": True}  # fmt: skip
MISSES = {**BEATS, "model": 0.78, "improvement": -0.02, "relative": -0.025, "beats_baseline": False}


def _eval(auc: float) -> dict:
    return {"overall": {"roc_auc": auc}}


def _slice(label: str, n: int, ours: float, theirs: float, ci: list[float] | None) -> dict:
    """A ``compare_by_length`` row (regression: champion minus challenger)."""
    lo = int(label.split("-")[0].rstrip("+"))
    return {"range": label, "lo": lo, "hi": None, "examples": n, "challenger": ours,
            "champion": theirs, "regression": theirs - ours, "regression_ci": ci}  # fmt: skip


def test_first_version_becomes_champion_when_invariant_and_better_than_the_baseline():
    assert decide(_eval(0.7), None, True, "roc_auc", CFG, skill=BEATS).passed
    failed = decide(_eval(0.9), None, False, "roc_auc", CFG, skill=BEATS)
    assert not failed.passed and "invariance" in failed.reasons[0]


def test_better_challenger_passes_and_worse_or_marginal_fails():
    better = decide(_eval(0.90), _eval(0.85), True, "roc_auc", CFG, skill=BEATS)
    assert better.passed and math.isclose(better.delta, 0.05)
    assert "beats champion" in better.reasons[0]
    worse = decide(_eval(0.80), _eval(0.85), True, "roc_auc", CFG, skill=BEATS)
    assert not worse.passed and "does not beat champion" in worse.reasons[0]
    marginal = decide(_eval(0.855), _eval(0.85), True, "roc_auc", CFG, skill=BEATS)
    assert not marginal.passed  # below min_improvement
    tie = decide(_eval(0.85), _eval(0.85), True, "roc_auc", RegisterConfig(), skill=BEATS)
    assert not tie.passed  # "beats" means strictly better, even with no margin


def test_a_length_range_blocks_only_when_it_regresses_with_confidence():
    champion = _eval(0.85)
    # point regression 0.05 but the interval reaches below the threshold: noise, not gated out
    noisy = [_slice("2-15", 200, 0.80, 0.85, [-0.01, 0.11])]
    assert decide(_eval(0.90), champion, True, "roc_auc", CFG, slices=noisy, skill=BEATS).passed
    sure = [_slice("2-15", 200, 0.80, 0.85, [0.03, 0.07]), _slice("16+", 300, 0.95, 0.85, None)]
    blocked = decide(_eval(0.90), champion, True, "roc_auc", CFG, slices=sure, skill=BEATS)
    assert not blocked.passed
    assert blocked.reasons[0].startswith("length 2-15 (200 examples)")
    assert "lower bound +0.0300 > register.max_slice_regression" in blocked.reasons[0]
    first, second = blocked.slice_checks
    assert first["gated"] and first["ok"] is False and first["regression_ci"] == [0.03, 0.07]
    # without an interval (evaluate.bootstrap_samples: 0) the point value is gated
    assert second["gated"] and second["ok"] is True


def test_small_or_undefined_ranges_are_reported_not_gated():
    rows = [_slice("2-15", 5, 0.10, 0.90, [0.5, 0.9]), _slice("16+", 300, 0.9, 0.88, [-0.04, 0.0])]
    rows.append({**_slice("64+", 50, 0.9, 0.9, None), "champion": None, "regression": None})
    decision = decide(_eval(0.90), _eval(0.85), True, "roc_auc", CFG, slices=rows, skill=BEATS)
    assert decision.passed
    assert [(c["gated"], c["ok"]) for c in decision.slice_checks] == [
        (False, None),
        (True, True),
        (False, None),
    ]
    text = "\n".join(decision.reasons)
    assert "length 2-15 (5 examples)" in text and "register.min_slice_examples (20)" in text
    assert "undefined for a model" in text


def test_lower_is_better_metrics_compare_the_other_way():
    cfg = RegisterConfig(min_improvement=0.0)
    skill = {**BEATS, "metric": "mae"}
    better = decide({"overall": {"mae": 1.0}}, {"overall": {"mae": 1.2}}, True, "mae", cfg,
                    skill=skill)  # fmt: skip
    worse = decide({"overall": {"mae": 1.3}}, {"overall": {"mae": 1.2}}, True, "mae", cfg,
                   skill=skill)  # fmt: skip
    assert better.passed and not better.higher_is_better and not worse.passed


def test_undefined_metric_never_passes_and_an_undefined_champion_is_replaced():
    assert not decide(_eval(float("nan")), _eval(0.8), True, "roc_auc", CFG, skill=BEATS).passed
    broken = decide(_eval(0.8), _eval(float("nan")), True, "roc_auc", CFG, skill=BEATS)
    assert broken.passed and "champion's roc_auc is undefined" in " ".join(broken.reasons)


def test_a_challenger_that_does_not_beat_the_baseline_is_refused_unless_allowed():
    missed = decide(_eval(0.78), None, True, "roc_auc", CFG, skill=MISSES)
    assert not missed.passed
    assert missed.reasons[0].startswith("does not beat the baseline: roc_auc 0.7800 vs baseline")
    assert "register.require_beat_baseline: false" in missed.reasons[0]
    assert missed.skill == MISSES
    lenient = RegisterConfig(require_beat_baseline=False)
    allowed = decide(_eval(0.78), None, True, "roc_auc", lenient, skill=MISSES)
    assert allowed.passed and any("does not beat the baseline" in r for r in allowed.reasons)


def test_a_missing_baseline_comparison_is_named_and_refused_when_required():
    missing = decide(_eval(0.9), _eval(0.8), True, "roc_auc", CFG)
    assert not missing.passed and missing.skill is None
    assert "no `skill`" in missing.reasons[0]
    assert "register.require_beat_baseline" in missing.reasons[0]
    lenient = decide(
        _eval(0.9), _eval(0.8), True, "roc_auc", RegisterConfig(require_beat_baseline=False)
    )
    assert lenient.passed and any("no `skill`" in r for r in lenient.reasons)


# --------------------------------------------------------------------------- with real slices


def _preds(labels: np.ndarray, p1: np.ndarray, lengths: np.ndarray) -> SplitPredictions:
    n = len(labels)
    return SplitPredictions(
        entity=np.array([f"e{i}" for i in range(n)], dtype=object),
        length=lengths,
        bucket=lengths,
        label=labels,
        outputs=list(np.stack([1 - p1, p1], axis=1)),
        next_event=[np.zeros(1)] * n,
        forecast=[np.zeros((1, 1))] * n,
    )


def test_the_gate_blocks_a_challenger_that_is_worse_on_long_sequences_only():
    rng = np.random.default_rng(3)
    n = 4000
    labels = rng.integers(0, 2, n)
    lengths = rng.integers(2, 200, n)
    signal = labels + rng.normal(0, 0.6, n)
    good = 1 / (1 + np.exp(-2 * signal))
    long = lengths >= 100
    worse = np.where(long, 1 / (1 + np.exp(-2 * (labels + rng.normal(0, 2.0, n)))), good)
    champion, challenger = _preds(labels, good, lengths), _preds(labels, worse, lengths)
    config = EvaluateConfig(slices=(), length_ranges=(100,))
    rows = compare_by_length(challenger, champion, None, "classify", "roc_auc", config)
    assert [r["range"] for r in rows] == ["2-99", "100+"]
    short, longer = rows
    assert short["regression"] == 0.0 and short["regression_ci"] == [0.0, 0.0]
    assert longer["regression_ci"][0] > 0.02
    # the overall numbers say "better" (as if a new model won elsewhere): the slice still blocks
    decision = decide(_eval(0.95), _eval(0.90), True, "roc_auc", CFG, slices=rows, skill=BEATS)
    assert not decision.passed and decision.reasons[0].startswith("length 100+")


# --------------------------------------------------------------------------- model card


def _card(metrics: dict) -> str:
    summary = {"architecture": "lstm", "task": "classify", "run_id": "r" * 32}
    run = SimpleNamespace(data=SimpleNamespace(params={"train.epochs": "2"}, tags={}))
    manifest = SimpleNamespace(
        window_len=64, content_hash="c" * 64, input=SimpleNamespace(sha256="e" * 64),
        split_method="entity_hash", splits={"test": SimpleNamespace(examples=300)},
    )  # fmt: skip
    return model_card(summary, run, manifest, metrics, "roc_auc")


def test_the_model_card_says_by_how_much_the_model_beats_or_misses_the_baseline():
    base = {"overall": {"roc_auc": 0.9}, "baseline": {"name": "order_blind"}}
    beats = _card({**base, "skill": BEATS})
    assert (
        "**Baseline:** order_blind: roc_auc 0.8000; this model 0.9000, beats it by 0.1000" in beats
    )
    assert "(12.5% of the baseline's value)" in beats
    misses = _card({**base, "skill": MISSES})
    assert "this model 0.7800, misses it by 0.0200" in misses
    assert "not compared" in _card({"overall": {"roc_auc": 0.9}})
    by_length = [{"range": "2-15", "lo": 2, "hi": 15, "examples": 40,
                  "metrics": {"roc_auc": 0.81}, "ci": {"roc_auc": [0.7, 0.9]}}]  # fmt: skip
    card = _card({**base, "skill": BEATS, "by_length": by_length,
                  "length_ranges": {"confidence": 0.9}})  # fmt: skip
    assert "| true length | examples | roc_auc | 90% CI |" in card
    assert "| 2-15 | 40 | 0.8100 | 0.7000..0.9000 |" in card


def test_only_the_decisions_of_a_passed_gate_promote_without_an_override():
    from pipelines.register import _outcome
    from pipelines.registry import gate_passed

    passed = decide(_eval(0.7), None, True, "roc_auc", CFG, skill=BEATS)
    rejected = decide(_eval(0.7), None, False, "roc_auc", CFG, skill=BEATS)
    manual = RegisterConfig(auto_promote=False)
    assert gate_passed(_outcome(passed, CFG)) and gate_passed(_outcome(passed, manual))
    assert not gate_passed(_outcome(rejected, CFG)) and not gate_passed(_outcome(rejected, manual))
    for never in (None, "incomplete", ""):  # never evaluated, or a registration that failed
        assert not gate_passed(never)


# --------------------------------------------------------------------------- for reviewers

SLICE_TEST = {"bootstrap_samples": 200, "confidence": 0.9}


def _blocked_by_a_range():
    rows = [
        _slice("2-15", 200, 0.80, 0.85, [0.03, 0.07]),  # regresses with confidence
        _slice("16-63", 5, 0.90, 0.50, [-0.5, -0.1]),  # too small to gate
        _slice("64+", 300, 0.95, 0.85, [-0.12, -0.08]),
    ]
    return decide(_eval(0.90), _eval(0.85), True, "roc_auc", CFG, slices=rows, skill=BEATS)


def test_the_gate_section_of_the_card_is_markdown_a_reviewer_can_read():
    decision = _blocked_by_a_range()
    invariance = {"passed": True, "max_abs_diff": 1e-7}
    text = gate_section(jsonable(asdict(decision)), "rejected", 3, "2026-01-02T03:04:05Z",
                        asdict(CFG), SLICE_TEST, invariance)  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "## Promotion gate"
    assert (
        "**Decision:** **rejected**: the champion is unchanged (decided 2026-01-02T03:04:05Z)."
        in lines
    )
    assert any(line.startswith("**roc_auc** (higher is better): this version 0.9000 vs champion v3 "
                               "0.8500, delta +0.0500") for line in lines)  # fmt: skip
    assert "beats it: roc_auc 0.9000 vs 0.8000" in text
    header = "| true length | examples | this version | champion | regression | interval | check |"
    table = lines[lines.index(header) :][:5]
    assert table[2:] == [
        "| 2-15 | 200 | 0.8000 | 0.8500 | +0.0500 | +0.0300..+0.0700 | **regresses** (gated) |",
        "| 16-63 | 5 | 0.9000 | 0.5000 | -0.4000 | -0.5000..-0.1000 | not gated (< 20 examples) |",
        "| 64+ | 300 | 0.9500 | 0.8500 | -0.1000 | -0.1200..-0.0800 | ok (gated) |",
    ]
    bullets = [line[2:] for line in lines if line.startswith("- ")]
    assert bullets == decision.reasons and bullets[0].startswith("length 2-15")
    thresholds = lines[-1]
    assert thresholds.startswith("**Thresholds:** register: `min_improvement` 0.01")
    assert "`max_slice_regression` 0.02" in thresholds and "`versions` passed" in thresholds
    assert "`confidence` 0.9" in thresholds


def test_the_gate_section_without_a_champion_or_a_baseline_comparison():
    first = decide(_eval(0.7), None, False, "roc_auc", RegisterConfig(require_beat_baseline=False))
    text = gate_section(jsonable(asdict(first)), "rejected", None, "t", asdict(CFG), SLICE_TEST,
                        {"passed": False, "max_abs_diff": 0.3})  # fmt: skip
    assert "no champion yet" in text and "not compared (the evaluation has no `skill`)" in text
    assert "**Padding invariance:** **failed** (max abs diff 0.3)" in text
    assert "| true length |" not in text  # nothing compared by length range
    assert "- padding-invariance check failed" in text


def test_gate_json_is_the_decision_in_a_few_scalars():
    decision = _blocked_by_a_range()
    record = jsonable({"decision": "rejected", "gate": asdict(decision),
                       "challenger": {"version": None}, "champion": {"version": 3}})  # fmt: skip
    summary = gate_summary(record)
    assert summary == {
        "decision": "rejected", "passed": False, "registered": False, "version": None,
        "primary_metric": "roc_auc", "challenger_value": 0.9, "champion_value": 0.85,
        "delta": decision.delta, "compared_with": 3, "beats_baseline": True,
        "regressing_ranges": 1,
    }  # fmt: skip
    assert all(not isinstance(v, dict | list) for v in summary.values())  # one DVC column each
    first = decide(_eval(0.7), None, True, "roc_auc", CFG, skill=BEATS)
    record = jsonable({"decision": GATE_PASSED, "gate": asdict(first),
                       "challenger": {"version": 1}, "champion": None})  # fmt: skip
    summary = gate_summary(record)
    assert summary["decision"] == "passed" == short_decision(GATE_PASSED)
    assert summary["registered"] is True and summary["version"] == 1
    assert summary["compared_with"] is None and summary["regressing_ranges"] == 0


def test_a_logged_models_id_goes_with_its_version_as_an_mlflow_server_requires():
    from pipelines.registry import logged_model_id

    assert logged_model_id("models:/m-570167069a99400c99c96a74c497d8a2") == (
        "m-570167069a99400c99c96a74c497d8a2"
    )
    for other in ("models:/seqops-classifier/3", "models:/seqops-classifier@champion",
                  "runs:/abc/model", "m-123"):  # fmt: skip
        assert logged_model_id(other) is None
