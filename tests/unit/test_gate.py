"""The promotion gate as a pure decision over two evaluations on the same test data."""

from __future__ import annotations

import math

from pipelines.params.gate import RegisterConfig
from pipelines.register import decide

CFG = RegisterConfig(min_improvement=0.01, max_slice_regression=0.02, min_slice_examples=20)


def _eval(auc: float, buckets: dict[int, tuple[float, int]] | None = None) -> dict:
    by_bucket = {str(b): {"roc_auc": v, "examples": n} for b, (v, n) in (buckets or {}).items()}
    return {"overall": {"roc_auc": auc}, "by_bucket": by_bucket}


def test_first_version_becomes_champion_when_invariant():
    assert decide(_eval(0.7), None, True, "roc_auc", CFG).passed
    failed = decide(_eval(0.9), None, False, "roc_auc", CFG)
    assert not failed.passed and "invariance" in failed.reasons[0]


def test_better_challenger_passes_and_worse_or_marginal_fails():
    better = decide(
        _eval(0.90, {16: (0.9, 50)}), _eval(0.85, {16: (0.88, 50)}), True, "roc_auc", CFG
    )
    assert better.passed and math.isclose(better.delta, 0.05)
    worse = decide(_eval(0.80), _eval(0.85), True, "roc_auc", CFG)
    assert not worse.passed and "does not beat" in worse.reasons[0]
    marginal = decide(_eval(0.855), _eval(0.85), True, "roc_auc", CFG)
    assert not marginal.passed  # below min_improvement
    tie = decide(_eval(0.85), _eval(0.85), True, "roc_auc", RegisterConfig(min_improvement=0.0))
    assert not tie.passed  # "beats" means strictly better, even with no margin


def test_a_regressing_length_bucket_blocks_promotion_unless_it_is_too_small():
    champion = _eval(0.85, {16: (0.90, 50), 256: (0.90, 5)})
    regress = decide(_eval(0.90, {16: (0.85, 50), 256: (0.95, 5)}), champion, True, "roc_auc", CFG)
    assert not regress.passed and "bucket 16" in " ".join(regress.reasons)
    small_only = decide(
        _eval(0.90, {16: (0.91, 50), 256: (0.50, 5)}), champion, True, "roc_auc", CFG
    )
    assert small_only.passed
    assert [c["gated"] for c in small_only.slice_checks] == [True, False]


def test_lower_is_better_metrics_compare_the_other_way():
    cfg = RegisterConfig(min_improvement=0.0)
    better = decide({"overall": {"mae": 1.0}}, {"overall": {"mae": 1.2}}, True, "mae", cfg)
    worse = decide({"overall": {"mae": 1.3}}, {"overall": {"mae": 1.2}}, True, "mae", cfg)
    assert better.passed and not better.higher_is_better and not worse.passed


def test_undefined_metric_never_passes():
    assert not decide(_eval(float("nan")), _eval(0.8), True, "roc_auc", CFG).passed
