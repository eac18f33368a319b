"""``evaluate`` and ``register``: what is measured on held-out data and the promotion gate
that reads it (docs/architecture.md §6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from seqcore.config import fail

PRIMARY_METRICS = {"classify": "roc_auc", "next_event": "top1_accuracy", "forecast": "mae"}
LOWER_IS_BETTER = frozenset({"mae", "rmse", "smape", "log_loss", "ece", "perplexity"})


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stage: metrics on a held-out split, slices, plots, invariance check."""

    split: Literal["train", "val", "test"] = "test"
    """Split scored (test by default; val for model selection experiments)."""
    slices: tuple[str, ...] = ("channel",)
    """Categorical columns to slice metrics by (value at each window's last event)."""
    ece_bins: int = 10
    """Bins of the expected calibration error and the reliability diagram."""
    invariance_entities: int = 64
    """Test entities scored alone and padded in a batch by the invariance check."""
    invariance_tolerance: float = 1e-5
    """Max abs difference allowed between alone and batched scores."""
    length_ranges: tuple[int, ...] | None = None
    """Where true-length ranges start, after the first, which starts at the shortest example:
    e.g. [16, 64, 256] gives 2-15, 16-63, 64-255 and 256+ when the shortest is 2; null =
    quantiles of the split's lengths (``length_range_count``)."""
    length_range_count: int = 4
    """Quantile ranges of true length when ``length_ranges`` is null (before merging)."""
    min_range_examples: int = 50
    """Quantile ranges with fewer examples are merged into a neighbour (explicit ranges are
    kept as given)."""
    bootstrap_samples: int = 200
    """Percentile-bootstrap resamples for the confidence intervals by length range and for
    the gate's paired slice comparison; 0 = no intervals (the gate then uses point values)."""
    confidence: float = 0.9
    """Two-sided confidence of those intervals."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "slices", tuple(self.slices or ()))
        if self.length_ranges is not None:
            bounds = tuple(self.length_ranges)
            object.__setattr__(self, "length_ranges", bounds)
            if not bounds or any(
                not isinstance(b, int) or isinstance(b, bool) or b < 2 for b in bounds
            ):
                raise fail(
                    "evaluate.length_ranges", list(bounds), "expected integers >= 2, or null"
                )
            if list(bounds) != sorted(set(bounds)):
                raise fail("evaluate.length_ranges", list(bounds), "must be strictly increasing")
        if self.length_range_count < 1:
            raise fail("evaluate.length_range_count", self.length_range_count, "must be >= 1")
        if self.min_range_examples < 1:
            raise fail("evaluate.min_range_examples", self.min_range_examples, "must be >= 1")
        if self.bootstrap_samples != 0 and self.bootstrap_samples < 10:
            raise fail("evaluate.bootstrap_samples", self.bootstrap_samples, "must be 0 or >= 10")
        if not 0 < self.confidence < 1:
            raise fail("evaluate.confidence", self.confidence, "must be between 0 and 1")
        if self.split not in ("train", "val", "test"):
            raise fail("evaluate.split", self.split, "expected train, val or test")
        if self.ece_bins < 2:
            raise fail("evaluate.ece_bins", self.ece_bins, "must be >= 2")
        if self.invariance_entities < 1:
            raise fail("evaluate.invariance_entities", self.invariance_entities, "must be >= 1")
        if self.invariance_tolerance <= 0:
            raise fail("evaluate.invariance_tolerance", self.invariance_tolerance, "must be > 0")


@dataclass(frozen=True)
class RegisterConfig:
    """The register stage and its promotion gate (docs/architecture.md §6)."""

    model_name: str = "seqops-classifier"
    """Registered model name in the MLflow registry."""
    primary_metric: str | None = None
    """Metric the gate compares; null = the task's default (roc_auc, top1_accuracy, mae)."""
    min_improvement: float = 0.0
    """The challenger must beat the champion's primary metric by at least this much."""
    max_slice_regression: float = 0.02
    """A length range (``evaluate.length_ranges``) blocks promotion only when its loss on the
    primary metric exceeds this with confidence: the lower bound of the paired-bootstrap
    interval (``evaluate.confidence``) of champion minus challenger is above it."""
    min_slice_examples: int = 20
    """Length ranges with fewer test examples are reported but not gated (too noisy)."""
    require_beat_baseline: bool = True
    """Refuse a challenger that does not beat the evaluate stage's baseline (``skill`` in
    reports/evaluation.json); false = report the comparison only."""
    auto_promote: bool = True
    """Move the champion alias when the gate passes; false = record the decision only."""
    versions: Literal["all", "passed"] = "passed"
    """Which candidates become registry versions: ``passed`` = only those the gate passes (a
    rejected one stays a logged model in its MLflow run; reports/promotion.json and
    reports/gate.json record the decision); ``all`` = every candidate, rejected ones included,
    each with its decision (an audit trail in the registry)."""

    def __post_init__(self) -> None:
        if not self.model_name or not str(self.model_name).strip():
            raise fail("register.model_name", self.model_name, "must not be empty")
        if self.min_improvement < 0 or self.max_slice_regression < 0:
            raise fail(
                "register",
                (self.min_improvement, self.max_slice_regression),
                "tolerances must be >= 0",
            )
        if self.min_slice_examples < 1:
            raise fail("register.min_slice_examples", self.min_slice_examples, "must be >= 1")
        if self.versions not in ("all", "passed"):
            raise fail("register.versions", self.versions, "expected all or passed")

    def metric_for(self, task: str) -> str:
        return self.primary_metric or PRIMARY_METRICS[task]
