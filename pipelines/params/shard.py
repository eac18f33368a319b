"""``shard``: splitting, windowing, length buckets and features of the shard stage
(docs/architecture.md §3)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from seqcore.config import fail, parse_time
from seqcore.features import FeatureConfig


@dataclass(frozen=True)
class SplitConfig:
    """How examples are split into train/validation/test."""

    method: Literal["entity", "time", "column"] = "entity"
    """``entity``: by a hash of the entity key; ``time``: by event-time cutoffs; ``column``:
    a column of the events names each entity's split (a dataset's official split)."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """entity method: shares of train/validation/test."""
    train_end: datetime | None = None
    """time method: training windows end at or before this time."""
    val_end: datetime | None = None
    """time method: validation windows end after train_end and at or before this time."""
    time_quantiles: tuple[float, float] = (0.8, 0.9)
    """time method without explicit cutoffs: cutoffs at these quantiles of event time."""
    column: str | None = None
    """column method: the events column naming each entity's split (one value per entity)."""
    values: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "train": ("train",),
            "val": ("val", "valid", "validation"),
            "test": ("test",),
        }
    )
    """column method: the column's values (compared as strings) that mean train, val and test."""
    val_fraction: float = 0.1
    """column method: when no entity has a val value, this share of the train entities (by a
    hash of the key, as the entity method) is held out for validation."""

    def __post_init__(self) -> None:
        if self.method not in ("entity", "time", "column"):
            raise fail("shard.split.method", self.method, "expected 'entity', 'time' or 'column'")
        self._check_column_method()
        fr = tuple(float(x) for x in self.fractions)
        if len(fr) != 3 or any(x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6 or fr[0] == 0:
            raise fail(
                "shard.split.fractions",
                self.fractions,
                "three non-negative shares summing to 1, train > 0",
            )
        object.__setattr__(self, "fractions", fr)
        q = tuple(float(x) for x in self.time_quantiles)
        if len(q) != 2 or not 0.0 < q[0] <= q[1] <= 1.0:
            raise fail(
                "shard.split.time_quantiles", self.time_quantiles, "expected 0 < q1 <= q2 <= 1"
            )
        object.__setattr__(self, "time_quantiles", q)
        for name in ("train_end", "val_end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_time(f"shard.split.{name}", value))
        if (self.train_end is None) != (self.val_end is None):
            raise fail("shard.split", "train_end/val_end", "give both cutoffs or neither")
        if self.train_end and self.val_end and self.val_end < self.train_end:
            raise fail(
                "shard.split.val_end", self.val_end, "must not be before shard.split.train_end"
            )

    def _check_column_method(self) -> None:
        if self.method == "column" and not self.column:
            raise fail(
                "shard.split.column", self.column, "the column method needs the split column's name"
            )
        if not isinstance(self.values, Mapping):
            raise fail("shard.split.values", self.values, "expected a mapping {train: [...], ...}")
        unknown = sorted(set(self.values) - {"train", "val", "test"})
        if unknown:
            raise fail("shard.split.values", unknown, "keys are train, val and test")
        values = {k: tuple(str(x) for x in (v if isinstance(v, list | tuple) else [v]))
                  for k, v in self.values.items()}  # fmt: skip
        for needed in ("train", "test"):
            if not values.get(needed):
                raise fail(f"shard.split.values.{needed}", None, "name at least one value")
        seen: dict[str, str] = {}
        for split, names in values.items():
            for name in names:
                if seen.setdefault(name, split) != split:
                    raise fail("shard.split.values", name, f"means both {seen[name]} and {split}")
        object.__setattr__(self, "values", values)
        if not 0.0 <= self.val_fraction < 1.0:
            raise fail("shard.split.val_fraction", self.val_fraction, "must be within [0, 1)")


@dataclass(frozen=True)
class WindowConfig:
    """How one entity's ordered events become training examples."""

    policy: Literal["last", "sliding", "full"] = "last"
    """``last``: the most recent ``length`` events; ``sliding``: windows of ``length`` every
    ``stride`` events, aligned on the most recent event; ``full``: the whole sequence,
    truncated to the most recent ``max_len``."""
    length: int = 256
    """last/sliding: events per window."""
    stride: int = 64
    """sliding: step, in events, between consecutive windows."""
    max_len: int = 256
    """full: the most recent events kept of each sequence."""
    min_length: int = 2
    """Windows shorter than this are dropped."""

    def __post_init__(self) -> None:
        if self.policy not in ("last", "sliding", "full"):
            raise fail("shard.window.policy", self.policy, "expected last, sliding or full")
        for name in ("length", "stride", "max_len", "min_length"):
            if getattr(self, name) < 1:
                raise fail(f"shard.window.{name}", getattr(self, name), "must be >= 1")
        if self.min_length > self.window_len:
            raise fail(
                "shard.window.min_length", self.min_length, "must not exceed the window length"
            )

    @property
    def window_len(self) -> int:
        """Longest example this policy produces."""
        return self.max_len if self.policy == "full" else self.length


@dataclass(frozen=True)
class BucketConfig:
    """Length buckets: examples are padded to their bucket's upper bound only."""

    boundaries: tuple[int, ...] | None = None
    """Explicit increasing upper bounds; the last is raised to the window length if lower."""
    method: Literal["quantile", "optimal"] = "optimal"
    """Derived boundaries: ``quantile`` (equal-count) or ``optimal`` (least padded tokens)."""
    n_buckets: int = 32
    """Derived boundaries: how many buckets."""

    def __post_init__(self) -> None:
        if self.boundaries is not None:
            b = tuple(int(x) for x in self.boundaries)
            if not b or any(x < 1 for x in b) or list(b) != sorted(set(b)):
                raise fail(
                    "shard.buckets.boundaries",
                    self.boundaries,
                    "expected increasing positive integers",
                )
            object.__setattr__(self, "boundaries", b)
        if self.method not in ("quantile", "optimal"):
            raise fail("shard.buckets.method", self.method, "expected quantile or optimal")
        if self.n_buckets < 1:
            raise fail("shard.buckets.n_buckets", self.n_buckets, "must be >= 1")


@dataclass(frozen=True)
class ShardConfig:
    """The shard stage (docs/architecture.md §3)."""

    split: SplitConfig = field(default_factory=SplitConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    forecast_horizon: int = 3
    """Steps ahead predicted at every position by the forecast task."""
    max_workers: int = 2
    """Largest planned number of training workers: part files per bucket and split."""

    def __post_init__(self) -> None:
        if self.forecast_horizon < 1:
            raise fail("shard.forecast_horizon", self.forecast_horizon, "must be >= 1")
        if self.max_workers < 1:
            raise fail("shard.max_workers", self.max_workers, "must be >= 1")
