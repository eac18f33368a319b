"""reports/metrics.json, the evaluate stage's headline: a few scalars from the full report, with
the reasons for the undefined ones among them."""

from __future__ import annotations

from pipelines.evaluate import HEADLINE_METRICS, headline

ONE_CLASS = "only one class in the labels"


def _report() -> dict:
    """A classify report whose test split holds one class: AUCs and the skill undefined."""
    overall = {"roc_auc": None, "pr_auc": None, "accuracy": 0.9, "macro_f1": 0.47,
               "log_loss": 0.3, "ece": 0.05, "examples": 40}  # fmt: skip
    return {
        "task": "classify", "split": "test", "examples": 40, "primary_metric": "roc_auc",
        "primary_value": None, "overall": overall,
        "by_bucket": {str(b): dict(overall) for b in range(30)},
        "baseline": {"name": "class_prior", "primary_metric": "roc_auc", "primary_value": None,
                     "overall": dict(overall), "description": "...", "fit": {"windows": 9}},
        "skill": {"metric": "roc_auc", "model": None, "baseline": None, "improvement": None,
                  "relative": None, "beats_baseline": False},
        "invariance": {"passed": True, "max_abs_diff": 0.0, "entities": 8, "tolerance": 1e-5},
        "undefined": {"overall.roc_auc": ONE_CLASS, "overall.pr_auc": ONE_CLASS,
                      "by_bucket.3.roc_auc": ONE_CLASS, "baseline.overall.roc_auc": ONE_CLASS,
                      "skill.improvement": "the model's roc_auc is undefined"},
        "run_id": "r" * 32, "class_names": ["0", "1"],
    }  # fmt: skip


def test_the_headline_keeps_the_reasons_of_its_own_undefined_values_only():
    head = headline(_report())
    assert head["undefined"] == {
        "baseline.primary_value": ONE_CLASS,
        "overall.pr_auc": ONE_CLASS,
        "overall.roc_auc": ONE_CLASS,
        "primary_value": ONE_CLASS,
        "skill.improvement": "the model's roc_auc is undefined",
    }
    assert list(head["overall"]) == list(HEADLINE_METRICS["classify"])  # no examples twice
    assert head["baseline"] == {"name": "class_prior", "primary_value": None}
    assert head["skill"]["beats_baseline"] is False
    assert not {"by_bucket", "run_id", "class_names"} & set(head)


def test_a_headline_with_every_value_defined_has_no_undefined_section():
    report = _report()
    report["overall"] = {**report["overall"], "roc_auc": 0.8, "pr_auc": 0.7}
    report["undefined"] = {"by_bucket.3.roc_auc": ONE_CLASS}
    assert "undefined" not in headline(report)
