"""``data``: where events come from (the seeded generator or a user's file) and their schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from seqcore.config import fail, parse_time
from seqcore.schema import SchemaConfig

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
            raise fail(
                "data.generate.faults", bad, f"unknown fault; known: {', '.join(FAULT_NAMES)}, all"
            )
        object.__setattr__(self, "faults", faults)
        if self.n_entities < 0:
            raise fail("data.generate.n_entities", self.n_entities, "must be >= 0")
        if self.median_length < 1:
            raise fail("data.generate.median_length", self.median_length, "must be >= 1")
        if self.max_length < 1:
            raise fail("data.generate.max_length", self.max_length, "must be >= 1")
        for name in ("pattern_rate", "label_noise", "fault_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise fail(f"data.generate.{name}", value, "must be within [0, 1]")
        parse_time("data.generate.start", self.start)


STORE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")
"""URL schemes pyarrow's filesystems open (``pyarrow.fs.FileSystem.from_uri``)."""


def check_store_url(url: object) -> None:
    """``data.store`` is a local path or a URL pyarrow opens; reaching it is checked when a
    stage starts (``seqcore.store.check_store``)."""
    if not isinstance(url, str) or not url.strip():
        raise fail("data.store", url, "expected an object-store URL or a local folder (or null)")
    scheme = url.split("://", 1)[0] if "://" in url else None
    if scheme is not None and scheme not in STORE_SCHEMES:
        raise fail(
            "data.store",
            url,
            f"unknown scheme {scheme}://; expected one of "
            + ", ".join(f"{s}://" for s in STORE_SCHEMES)
            + " or a local folder",
        )


@dataclass(frozen=True)
class DataConfig:
    """Where events come from and how their columns map onto roles."""

    source: Literal["generate", "file"] = "generate"
    """``generate`` (the seeded generator) or ``file`` (a user's Parquet/CSV)."""
    path: str | None = None
    """For ``file``: a local path or pyarrow/fsspec URL (s3://, gs://, file://)."""
    format: Literal["auto", "parquet", "csv"] = "auto"
    """``auto`` (from the suffix), ``parquet`` or ``csv``."""
    source_timezone: str = "UTC"
    """Zone of naive timestamps in a user's file; times are stored as UTC."""
    rows_per_part: int = 2_000_000
    """Above this many rows the events output is split into entity-hash parts."""
    part_size_mb: float | None = None
    """Instead of ``rows_per_part``: parts of about this many MB in Arrow (the size each part
    takes in memory when a later stage reads it), rows per part estimated from the first
    rows read."""
    engine: Literal["auto", "ray", "local"] = "auto"
    """How the data stages run their parts: ``ray`` as Ray tasks, on the cluster in
    ``RAY_ADDRESS`` or a local one; ``local`` one after another in the stage's own process
    (for debugging: breakpoints and tracebacks as usual); ``auto`` Ray when there is more than
    one part."""
    workers: int | None = None
    """Most parts processed at once (null: one per CPU of the Ray cluster)."""
    task_retries: int = 2
    """Times a failed part task is retried before the stage fails naming the part."""
    store: str | None = None
    """Where the events, validated events and shards are written: null = the local folders
    (data/events, ...); or an object-store root (``s3://bucket/prefix``, pyarrow's options as
    a query such as ``?endpoint_override=host:port&scheme=http``; credentials from the
    environment) or a shared mount. Each run writes a new snapshot under it and the local
    folder keeps a ``_STORE.json`` pointer that DVC versions (README, "Data on an object
    store")."""
    schema: SchemaConfig = field(default_factory=SchemaConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        if self.source not in ("generate", "file"):
            raise fail("data.source", self.source, "expected 'generate' or 'file'")
        if self.source == "file" and not self.path:
            raise fail("data.path", self.path, "data.source=file needs data.path")
        if self.format not in ("auto", "parquet", "csv"):
            raise fail("data.format", self.format, "expected auto, parquet or csv")
        if self.rows_per_part < 1:
            raise fail("data.rows_per_part", self.rows_per_part, "must be >= 1")
        if self.engine not in ("auto", "ray", "local"):
            raise fail("data.engine", self.engine, "expected auto, ray or local")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise fail("data.workers", self.workers, "must be an integer >= 1 (or null)")
        if self.task_retries < 0:
            raise fail("data.task_retries", self.task_retries, "must be >= 0")
        if self.store is not None:
            check_store_url(self.store)
        if self.part_size_mb is not None and (
            isinstance(self.part_size_mb, bool)
            or not isinstance(self.part_size_mb, int | float)
            or not self.part_size_mb > 0
        ):
            raise fail("data.part_size_mb", self.part_size_mb, "must be a number > 0 (or null)")
