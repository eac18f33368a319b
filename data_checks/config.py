"""``validate``: the ordering contract's configuration, owned by the contract itself.

Which checks run, their policy (``fail`` or ``quarantine``) and thresholds
(docs/architecture.md §2). ``pipelines.config`` places this section in ``Params``; the checks
in this package read it directly, so the data contract depends on nothing above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from seqcore.config import build, fail, parse_duration, parse_time
from seqcore.manifest import DOMAIN_POLICIES

POLICIES = ("fail", "quarantine")
# Checks whose failure leaves no row-level offender to set aside: they can only fail.
FAIL_ONLY_CHECKS = ("non_empty", "schema", "types")
CHECK_NAMES = (
    "non_empty",
    "schema",
    "types",
    "key_nulls",
    "numeric_finite",
    "value_ranges",
    "categorical_domain",
    "seq_negative",
    "time_order",
    "duplicates",
    "seq_gaps",
    "seq_order",
    "future_timestamps",
    "time_floor",
    "late_events",
    "label_consistency",
)
"""Every check, in the order the report lists them and quarantine attributes rows (the first
quarantining check that flags a row is its reason). The per-event ones (``data_checks.rules``)
also hold at the scoring endpoint, as the served model's manifest records them. What each
catches:

- ``non_empty``, ``schema``, ``types``: an empty table, a missing mapped column, a mapped column
  of a type its role cannot hold (labels: strings, integers or booleans);
- ``key_nulls``, ``numeric_finite``, ``value_ranges``, ``categorical_domain``: null entity keys or
  times, NaN/inf features, values outside ``ranges``, categories outside ``domains``;
- ``seq_negative``: sequence numbers below 0 (a producer's counter starts at 0); those rows are
  left out of ``seq_gaps`` and ``seq_order``, so each is this check's fault alone; skipped when
  ``data.schema.seq`` is null;
- ``time_order``: an entity's event time decreasing in arrival order;
- ``duplicates``: repeated (entity, time, seq) events;
- ``seq_gaps``: missing sequence numbers within an entity (the whole entity is the offender);
- ``seq_order``: sequence numbers that disagree with time and arrival: within an entity, in
  arrival order and among rows time_order accepts, a seq below one seen before (a seq that
  decreases while time increases, or runs backwards among equal times); skipped when
  ``data.schema.seq`` is null;
- ``future_timestamps``, ``time_floor``: times after ``now + max_ahead`` or before ``floor``;
- ``late_events``: events behind the watermark by more than ``allowed_lateness``; needs an
  arrival order (skipped for a user's file without ``data.schema.arrival``);
- ``label_consistency``: entities whose non-null label differs between their events (the whole
  entity is the offender); entities without any label are counted, not failed; skipped when
  ``data.schema.label`` is null.
"""


@dataclass(frozen=True)
class CheckConfig:
    """One check of the ordering contract: on/off, policy and its thresholds."""

    name: str
    enabled: bool = True
    policy: str = "fail"
    """``fail``: the stage exits non-zero; ``quarantine``: offenders are set aside and excluded."""
    max_unseen_fraction: float = 0.01
    """categorical_domain: share of values outside the declared domain tolerated per column."""
    max_ahead: float = 300.0
    """future_timestamps: seconds an event may lie ahead of ``validate.now``."""
    floor: datetime | None = None
    """time_floor: events before this time are violations."""
    allowed_lateness: float = 86400.0
    """late_events: seconds an event may arrive behind the watermark (max event time seen so far)."""
    unseen_at_serving: Literal["refuse", "oov"] = "refuse"
    """categorical_domain: what the scoring endpoint does with a value outside the domain:
    ``refuse`` it (422), or score it as an out-of-vocabulary category (``oov``)."""

    def __post_init__(self) -> None:
        key = f"validate.checks.{self.name}"
        if self.name not in CHECK_NAMES:
            raise fail(
                "validate.checks", self.name, f"unknown check; known: {', '.join(CHECK_NAMES)}"
            )
        if self.policy not in POLICIES:
            raise fail(f"{key}.policy", self.policy, "expected 'fail' or 'quarantine'")
        if self.policy == "quarantine" and self.name in FAIL_ONLY_CHECKS:
            raise fail(
                f"{key}.policy", self.policy, "this check has no rows to quarantine; use 'fail'"
            )
        if self.unseen_at_serving not in DOMAIN_POLICIES:
            raise fail(
                f"{key}.unseen_at_serving",
                self.unseen_at_serving,
                f"expected one of {', '.join(DOMAIN_POLICIES)}",
            )
        if not 0.0 <= self.max_unseen_fraction <= 1.0:
            raise fail(
                f"{key}.max_unseen_fraction", self.max_unseen_fraction, "must be within [0, 1]"
            )
        object.__setattr__(self, "max_ahead", parse_duration(f"{key}.max_ahead", self.max_ahead))
        object.__setattr__(
            self,
            "allowed_lateness",
            parse_duration(f"{key}.allowed_lateness", self.allowed_lateness),
        )
        floor = self.floor if self.floor is not None else "2000-01-01T00:00:00Z"
        object.__setattr__(self, "floor", parse_time(f"{key}.floor", floor))


@dataclass(frozen=True)
class ValidateConfig:
    """The ordering contract (docs/architecture.md §2)."""

    now: datetime | None = None
    """Reference time of the future check; None means the wall clock at run time."""
    gx_sample_rows: int = 200_000
    """The GX column suite runs on a deterministic sample of at most this many rows."""
    sample_offenders: int = 5
    """How many offending rows/entities each check reports."""
    domains: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    """Allowed values per categorical column (columns without one are not domain-checked)."""
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Inclusive [min, max] per numeric column (null for an open side)."""
    checks: Mapping[str, CheckConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.now is not None:
            object.__setattr__(self, "now", parse_time("validate.now", self.now))
        if self.gx_sample_rows < 1:
            raise fail("validate.gx_sample_rows", self.gx_sample_rows, "must be >= 1")
        object.__setattr__(self, "domains", {k: tuple(v) for k, v in dict(self.domains).items()})
        ranges = {}
        for col, bounds in dict(self.ranges).items():
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise fail(f"validate.ranges.{col}", bounds, "expected [min, max]")
            ranges[col] = (bounds[0], bounds[1])
        object.__setattr__(self, "ranges", ranges)
        checks = {}
        for name in CHECK_NAMES:
            value: Any = dict(self.checks).get(name, {})
            if isinstance(value, CheckConfig):
                checks[name] = value
            else:
                checks[name] = build(CheckConfig, f"validate.checks.{name}", value, name=name)
        unknown = sorted(set(self.checks) - set(CHECK_NAMES))
        if unknown:
            raise fail(
                "validate.checks", unknown, f"unknown check; known: {', '.join(CHECK_NAMES)}"
            )
        object.__setattr__(self, "checks", checks)
