"""``monitor``: ``seqops monitor``'s thresholds for drift (``data_checks.drift``) and for the
model's performance on labels that arrive later (``pipelines.performance``)."""

from __future__ import annotations

from dataclasses import dataclass

from data_checks.drift import DriftThresholds
from seqcore.config import fail, parse_duration


@dataclass(frozen=True)
class MonitorConfig(DriftThresholds):
    label_window: str = "7d"
    """Delayed labels are grouped into windows of this length by their time ('1d', '7d', ...;
    windows start at multiples of it from 1970-01-01 UTC, so reports of different runs line
    up)."""
    max_metric_drop: float = 0.05
    """A window is degraded when its primary metric is worse than the model's evaluation by
    more than this, and by more than its sampling error explains at ``alpha``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if parse_duration("monitor.label_window", self.label_window) <= 0:
            raise fail("monitor.label_window", self.label_window, "must be longer than 0")
        drop = self.max_metric_drop
        if isinstance(drop, bool) or not isinstance(drop, int | float) or not 0 <= drop < 1:
            raise fail("monitor.max_metric_drop", drop, "expected a number in [0, 1)")

    @property
    def label_window_s(self) -> float:
        return parse_duration("monitor.label_window", self.label_window)
