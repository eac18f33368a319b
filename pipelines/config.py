"""Typed configuration: one frozen dataclass per ``params.yaml`` section.

Every value is validated on construction and errors name the dotted key and the bad value
(the habit of litgpt's ``args.py``). Stages receive these objects, never raw dicts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A params.yaml value is missing or invalid; the message names the dotted key."""


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"params: {key}={value!r}: {why}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(key: str, value: Any) -> float:
    """'90s', '5m', '1h', '1d', '2w' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise _fail(key, value, "expected a duration such as '5m', '1h', '1d' or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise _fail(key, value, "expected a duration such as '5m', '1h', '1d' or seconds")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise _fail(key, value, "a duration must not be negative")
    return seconds


def parse_time(key: str, value: Any) -> datetime:
    """ISO-8601 string (or datetime) -> timezone-aware UTC datetime; naive means UTC."""
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise _fail(
                key, value, "expected an ISO-8601 time such as 2025-01-01T00:00:00Z"
            ) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def _only_keys(key: str, raw: Mapping[str, Any], cls: type) -> None:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"params: {key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _build(cls: type, key: str, raw: Mapping[str, Any] | None, **nested: Any) -> Any:
    """Construct ``cls`` from a mapping, rejecting unknown keys; ``nested`` overrides fields."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise _fail(key, raw, "expected a mapping")
    _only_keys(key, raw, cls)
    raw.update(nested)
    try:
        return cls(**raw)
    except TypeError as exc:  # e.g. a list where a scalar belongs
        raise ConfigError(f"params: {key}: {exc}") from None


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SchemaConfig:
    """Maps the user's column names onto the events-table roles (ARCHITECTURE §1)."""

    entity: str = "account_id"
    """Entity key column (string or integer): whose sequence an event belongs to."""
    time: str = "event_time"
    """Event time column: the ordering key, stored as UTC timestamps."""
    seq: str | None = "seq_no"
    """Optional producer sequence-number column (integer); null when there is none."""
    numeric: tuple[str, ...] = ("amount",)
    """Numeric feature columns."""
    categorical: tuple[str, ...] = ("mcc", "channel", "country", "device")
    """Categorical feature columns (strings or integers)."""
    label: str | None = "label"
    """Entity-level label column for the classify task; null if the data has none."""
    next_event: str | None = "mcc"
    """Categorical column whose next value is the next_event task's target."""
    forecast: str | None = "amount"
    """Numeric column forecast per step by the forecast task."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "categorical", tuple(self.categorical))
        names = [
            self.entity,
            self.time,
            *([self.seq] if self.seq else []),
            *self.numeric,
            *self.categorical,
        ]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _fail("data.schema", dupes, "a column is mapped to more than one role")
        if self.next_event and self.next_event not in self.categorical:
            raise _fail(
                "data.schema.next_event", self.next_event, "must be one of data.schema.categorical"
            )
        if self.forecast and self.forecast not in self.numeric:
            raise _fail("data.schema.forecast", self.forecast, "must be one of data.schema.numeric")

    @property
    def required_columns(self) -> list[str]:
        cols = [
            self.entity,
            self.time,
            *([self.seq] if self.seq else []),
            *self.numeric,
            *self.categorical,
        ]
        if self.label:
            cols.append(self.label)
        return cols


FAULT_NAMES = (
    "out_of_order",
    "duplicates",
    "seq_gaps",
    "null_keys",
    "future_timestamps",
    "before_floor",
    "late_events",
    "nan_inf",
    "wrong_type",
    "missing_column",
    "unseen_categories",
    "empty",
)


@dataclass(frozen=True)
class GenerateConfig:
    """The seeded generator of card-transaction event logs (source ``generate``)."""

    n_entities: int = 3000
    """Number of accounts (entities)."""
    median_length: float = 30.0
    """Median events per entity; lengths are log-normal (heavy-tailed)."""
    length_sigma: float = 1.25
    """Sigma of log length: larger means a heavier tail."""
    max_length: int = 3000
    """Longest sequence (lengths are clipped to [1, max_length])."""
    start: str = "2025-01-01T00:00:00Z"
    """Earliest possible first event."""
    span_days: float = 365.0
    """Every event lies within this many days after ``start``; entities start in its first half."""
    pattern_rate: float = 0.5
    """Share of entities with a burst/large pattern: half in fraud order (label 1), half in decoy order."""
    label_noise: float = 0.02
    """Share of labels flipped at random."""
    faults: tuple[str, ...] = ()
    """Faults to plant (see FAULT_NAMES), or ('all',)."""
    fault_rate: float = 0.002
    """Share of rows (or entities) touched by each planted row fault."""

    def __post_init__(self) -> None:
        faults = tuple(self.faults or ())
        if faults == ("all",):
            faults = FAULT_NAMES
        bad = [f for f in faults if f not in FAULT_NAMES]
        if bad:
            raise _fail(
                "data.generate.faults", bad, f"unknown fault; known: {', '.join(FAULT_NAMES)}, all"
            )
        object.__setattr__(self, "faults", faults)
        if self.n_entities < 0:
            raise _fail("data.generate.n_entities", self.n_entities, "must be >= 0")
        if self.median_length < 1:
            raise _fail("data.generate.median_length", self.median_length, "must be >= 1")
        if self.max_length < 1:
            raise _fail("data.generate.max_length", self.max_length, "must be >= 1")
        for name in ("pattern_rate", "label_noise", "fault_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise _fail(f"data.generate.{name}", value, "must be within [0, 1]")
        parse_time("data.generate.start", self.start)


@dataclass(frozen=True)
class DataConfig:
    """Where events come from and how their columns map onto roles."""

    source: str = "generate"
    """``generate`` (the seeded generator) or ``file`` (a user's Parquet/CSV)."""
    path: str | None = None
    """For ``file``: a local path or pyarrow/fsspec URL (s3://, gs://, file://)."""
    format: str = "auto"
    """``auto`` (from the suffix), ``parquet`` or ``csv``."""
    source_timezone: str = "UTC"
    """Zone of naive timestamps in a user's file; times are stored as UTC."""
    rows_per_part: int = 2_000_000
    """Above this many rows the events output is split into entity-hash parts."""
    schema: SchemaConfig = field(default_factory=SchemaConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        if self.source not in ("generate", "file"):
            raise _fail("data.source", self.source, "expected 'generate' or 'file'")
        if self.source == "file" and not self.path:
            raise _fail("data.path", self.path, "data.source=file needs data.path")
        if self.format not in ("auto", "parquet", "csv"):
            raise _fail("data.format", self.format, "expected auto, parquet or csv")
        if self.rows_per_part < 1:
            raise _fail("data.rows_per_part", self.rows_per_part, "must be >= 1")


# --------------------------------------------------------------------------- validate

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
    "time_order",
    "duplicates",
    "seq_gaps",
    "future_timestamps",
    "time_floor",
    "late_events",
)


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

    def __post_init__(self) -> None:
        key = f"validate.checks.{self.name}"
        if self.name not in CHECK_NAMES:
            raise _fail(
                "validate.checks", self.name, f"unknown check; known: {', '.join(CHECK_NAMES)}"
            )
        if self.policy not in POLICIES:
            raise _fail(f"{key}.policy", self.policy, "expected 'fail' or 'quarantine'")
        if self.policy == "quarantine" and self.name in FAIL_ONLY_CHECKS:
            raise _fail(
                f"{key}.policy", self.policy, "this check has no rows to quarantine; use 'fail'"
            )
        if not 0.0 <= self.max_unseen_fraction <= 1.0:
            raise _fail(
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
    """The ordering contract (ARCHITECTURE §2)."""

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
            raise _fail("validate.gx_sample_rows", self.gx_sample_rows, "must be >= 1")
        object.__setattr__(self, "domains", {k: tuple(v) for k, v in dict(self.domains).items()})
        ranges = {}
        for col, bounds in dict(self.ranges).items():
            if not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise _fail(f"validate.ranges.{col}", bounds, "expected [min, max]")
            ranges[col] = (bounds[0], bounds[1])
        object.__setattr__(self, "ranges", ranges)
        checks = {}
        for name in CHECK_NAMES:
            value: Any = dict(self.checks).get(name, {})
            if isinstance(value, CheckConfig):
                checks[name] = value
            else:
                checks[name] = _build(CheckConfig, f"validate.checks.{name}", value, name=name)
        unknown = sorted(set(self.checks) - set(CHECK_NAMES))
        if unknown:
            raise _fail(
                "validate.checks", unknown, f"unknown check; known: {', '.join(CHECK_NAMES)}"
            )
        object.__setattr__(self, "checks", checks)


# --------------------------------------------------------------------------- shard


@dataclass(frozen=True)
class SplitConfig:
    """How examples are split into train/validation/test."""

    method: str = "entity"
    """``entity``: by a hash of the entity key; ``time``: by event-time cutoffs."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """entity method: shares of train/validation/test."""
    train_end: datetime | None = None
    """time method: training windows end at or before this time."""
    val_end: datetime | None = None
    """time method: validation windows end after train_end and at or before this time."""
    time_quantiles: tuple[float, float] = (0.8, 0.9)
    """time method without explicit cutoffs: cutoffs at these quantiles of event time."""

    def __post_init__(self) -> None:
        if self.method not in ("entity", "time"):
            raise _fail("shard.split.method", self.method, "expected 'entity' or 'time'")
        fr = tuple(float(x) for x in self.fractions)
        if len(fr) != 3 or any(x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6 or fr[0] == 0:
            raise _fail(
                "shard.split.fractions",
                self.fractions,
                "three non-negative shares summing to 1, train > 0",
            )
        object.__setattr__(self, "fractions", fr)
        q = tuple(float(x) for x in self.time_quantiles)
        if len(q) != 2 or not 0.0 < q[0] <= q[1] <= 1.0:
            raise _fail(
                "shard.split.time_quantiles", self.time_quantiles, "expected 0 < q1 <= q2 <= 1"
            )
        object.__setattr__(self, "time_quantiles", q)
        for name in ("train_end", "val_end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_time(f"shard.split.{name}", value))
        if (self.train_end is None) != (self.val_end is None):
            raise _fail("shard.split", "train_end/val_end", "give both cutoffs or neither")
        if self.train_end and self.val_end and self.val_end < self.train_end:
            raise _fail(
                "shard.split.val_end", self.val_end, "must not be before shard.split.train_end"
            )


@dataclass(frozen=True)
class WindowConfig:
    """How one entity's ordered events become training examples."""

    policy: str = "last"
    """``last``: the most recent ``length`` events; ``sliding``: windows of ``length`` every
    ``stride`` events, aligned on the most recent event; ``full``: the whole sequence,
    truncated to the most recent ``max_len``."""
    length: int = 256
    stride: int = 64
    max_len: int = 256
    min_length: int = 2
    """Windows shorter than this are dropped."""

    def __post_init__(self) -> None:
        if self.policy not in ("last", "sliding", "full"):
            raise _fail("shard.window.policy", self.policy, "expected last, sliding or full")
        for name in ("length", "stride", "max_len", "min_length"):
            if getattr(self, name) < 1:
                raise _fail(f"shard.window.{name}", getattr(self, name), "must be >= 1")
        if self.min_length > self.window_len:
            raise _fail(
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
    method: str = "optimal"
    """Derived boundaries: ``quantile`` (equal-count) or ``optimal`` (least padded tokens)."""
    n_buckets: int = 32

    def __post_init__(self) -> None:
        if self.boundaries is not None:
            b = tuple(int(x) for x in self.boundaries)
            if not b or any(x < 1 for x in b) or list(b) != sorted(set(b)):
                raise _fail(
                    "shard.buckets.boundaries",
                    self.boundaries,
                    "expected increasing positive integers",
                )
            object.__setattr__(self, "boundaries", b)
        if self.method not in ("quantile", "optimal"):
            raise _fail("shard.buckets.method", self.method, "expected quantile or optimal")
        if self.n_buckets < 1:
            raise _fail("shard.buckets.n_buckets", self.n_buckets, "must be >= 1")


@dataclass(frozen=True)
class FeatureConfig:
    """Preprocessing fitted on the training split and stored in the manifest."""

    numeric_transform: Mapping[str, str] = field(default_factory=dict)
    """Per numeric column: ``none`` or ``log1p`` (sign-preserving), then standardised."""
    time_delta: bool = True
    """Add log1p(seconds since the entity's previous event), standardised."""
    min_category_count: int = 1
    """Categories seen fewer times than this in train map to OOV."""

    def __post_init__(self) -> None:
        transforms = dict(self.numeric_transform)
        for col, t in transforms.items():
            if t not in ("none", "log1p"):
                raise _fail(f"shard.features.numeric_transform.{col}", t, "expected none or log1p")
        object.__setattr__(self, "numeric_transform", transforms)
        if self.min_category_count < 1:
            raise _fail(
                "shard.features.min_category_count", self.min_category_count, "must be >= 1"
            )


@dataclass(frozen=True)
class ShardConfig:
    """The shard stage (ARCHITECTURE §3)."""

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
            raise _fail("shard.forecast_horizon", self.forecast_horizon, "must be >= 1")
        if self.max_workers < 1:
            raise _fail("shard.max_workers", self.max_workers, "must be >= 1")


# --------------------------------------------------------------------------- train

TASKS = ("classify", "next_event", "forecast")
ARCHITECTURES = ("lstm", "gru", "transformer")


@dataclass(frozen=True)
class TrainConfig:
    """The train stage (ARCHITECTURE §5): model, optimisation, Ray Train scaling, MLflow."""

    task: str = "classify"
    """classify (entity label) | next_event (next category per step) | forecast (H steps)."""
    architecture: str = "lstm"
    """lstm | gru | transformer."""
    embedding_dim: int = 16
    """Embedding width per categorical feature."""
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.1
    num_heads: int = 4
    """transformer only."""
    ffn_size: int = 128
    """transformer only: feed-forward width."""
    epochs: int = 8
    lr: float = 3e-3
    """Peak learning rate (AdamW), reached after warmup, then cosine decay to 10%."""
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    """Share of all steps spent warming the learning rate up linearly."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    max_tokens: int = 8192
    """Token budget of one batch per worker (examples x padded length)."""
    patience: int = 3
    """Early stopping: epochs without improvement of the validation loss before stopping."""
    num_workers: int = 2
    """Ray Train workers (DDP ranks); at most shard.max_workers so each reads its own parts."""
    cpus_per_worker: int = 1
    use_gpu: str = "auto"
    """auto (GPUs when the cluster has them) | always | never."""
    amp: str = "bf16"
    """Mixed precision on GPU: bf16 | none. CPUs always run fp32."""
    max_failures: int = 2
    """Worker failures retried from the latest checkpoint (Ray Train FailureConfig)."""
    experiment: str = "seqops"
    """MLflow experiment name."""
    storage_path: str | None = None
    """Ray Train storage for checkpoints; null = .ray_results in the repository."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise _fail("train.task", self.task, f"expected one of {', '.join(TASKS)}")
        if self.architecture not in ARCHITECTURES:
            raise _fail(
                "train.architecture",
                self.architecture,
                f"expected one of {', '.join(ARCHITECTURES)}",
            )
        for name in (
            "embedding_dim",
            "hidden_size",
            "num_layers",
            "num_heads",
            "ffn_size",
            "epochs",
            "max_tokens",
            "patience",
            "num_workers",
            "cpus_per_worker",
        ):
            if getattr(self, name) < 1:
                raise _fail(f"train.{name}", getattr(self, name), "must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise _fail("train.dropout", self.dropout, "must be within [0, 1)")
        if self.lr <= 0:
            raise _fail("train.lr", self.lr, "must be > 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise _fail("train.warmup_fraction", self.warmup_fraction, "must be within [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise _fail(
                "train.grad_clip/weight_decay", (self.grad_clip, self.weight_decay), "must be >= 0"
            )
        if self.use_gpu not in ("auto", "always", "never"):
            raise _fail("train.use_gpu", self.use_gpu, "expected auto, always or never")
        if self.amp not in ("bf16", "none"):
            raise _fail("train.amp", self.amp, "expected bf16 or none")
        if self.max_failures < -1:
            raise _fail(
                "train.max_failures", self.max_failures, "must be >= -1 (-1 = retry forever)"
            )


# --------------------------------------------------------------------------- evaluate / register

PRIMARY_METRICS = {"classify": "roc_auc", "next_event": "top1_accuracy", "forecast": "mae"}
LOWER_IS_BETTER = frozenset({"mae", "rmse", "smape", "log_loss", "ece", "perplexity"})


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stage: metrics on a held-out split, slices, plots, invariance check."""

    split: str = "test"
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
            raise _fail("evaluate.split", self.split, "expected train, val or test")
        if self.ece_bins < 2:
            raise _fail("evaluate.ece_bins", self.ece_bins, "must be >= 2")
        if self.invariance_entities < 1:
            raise _fail("evaluate.invariance_entities", self.invariance_entities, "must be >= 1")
        if self.invariance_tolerance <= 0:
            raise _fail("evaluate.invariance_tolerance", self.invariance_tolerance, "must be > 0")


@dataclass(frozen=True)
class RegisterConfig:
    """The register stage and its promotion gate (ARCHITECTURE §6)."""

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
            raise _fail("register.model_name", self.model_name, "must not be empty")
        if self.min_improvement < 0 or self.max_slice_regression < 0:
            raise _fail(
                "register",
                (self.min_improvement, self.max_slice_regression),
                "tolerances must be >= 0",
            )
        if self.min_slice_examples < 1:
            raise _fail("register.min_slice_examples", self.min_slice_examples, "must be >= 1")

    def metric_for(self, task: str) -> str:
        return self.primary_metric or PRIMARY_METRICS[task]


# --------------------------------------------------------------------------- whole file


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    seed: int = 7
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Sections owned by later stages (train, evaluate, ...), kept raw until they are typed."""


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    raw = dict(raw or {})
    data_raw = dict(raw.get("data") or {})
    _only_keys("data", data_raw, DataConfig)
    data = _build(
        DataConfig,
        "data",
        data_raw,
        schema=_build(SchemaConfig, "data.schema", data_raw.get("schema")),
        generate=_build(GenerateConfig, "data.generate", data_raw.get("generate")),
    )
    validate = _build(ValidateConfig, "validate", raw.get("validate"))
    shard_raw = dict(raw.get("shard") or {})
    _only_keys("shard", shard_raw, ShardConfig)
    shard = _build(
        ShardConfig,
        "shard",
        shard_raw,
        split=_build(SplitConfig, "shard.split", shard_raw.get("split")),
        window=_build(WindowConfig, "shard.window", shard_raw.get("window")),
        buckets=_build(BucketConfig, "shard.buckets", shard_raw.get("buckets")),
        features=_build(FeatureConfig, "shard.features", shard_raw.get("features")),
    )
    train = _build(TrainConfig, "train", raw.get("train"))
    evaluate = _build(EvaluateConfig, "evaluate", raw.get("evaluate"))
    register = _build(RegisterConfig, "register", raw.get("register"))
    known = {"seed", "data", "validate", "shard", "train", "evaluate", "register"}
    extra = {k: v for k, v in raw.items() if k not in known}
    seed = raw.get("seed", 7)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _fail("seed", seed, "expected an integer")
    return Params(
        seed=seed,
        data=data,
        validate=validate,
        shard=shard,
        train=train,
        evaluate=evaluate,
        register=register,
        extra=extra,
    )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params: {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}") from None
    return params_from_dict(raw)


def to_jsonable(obj: Any) -> Any:
    """A config object as plain JSON types (for manifests, reports and MLflow params)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat().replace("+00:00", "Z")
    return obj
