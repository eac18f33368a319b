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

    def __post_init__(self) -> None:
        object.__setattr__(self, "slices", tuple(self.slices or ()))
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
    """No length-bucket slice may lose more than this on the primary metric."""
    min_slice_examples: int = 20
    """Slices with fewer test examples are reported but not gated (too noisy)."""
    auto_promote: bool = True
    """Move the champion alias when the gate passes; false = record the decision only."""

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

    def metric_for(self, task: str) -> str:
        return self.primary_metric or PRIMARY_METRICS[task]
