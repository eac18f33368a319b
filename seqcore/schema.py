"""The events table's schema: which of the user's columns plays which role.

One row per event (docs/architecture.md §1). The column names come from ``params.yaml``
(``data.schema``), so a user maps their own table instead of renaming it. Every part that
reads events (ingest, the data contract, the shard stage, the scorer in serving) takes this
one type; the shard manifest stores it, so a model knows the columns it scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqcore.config import fail

ARRIVAL = "_arrival"
"""Column that ingest adds: each row's position in the source stream (its arrival order).

Ingest ranks the mapped ``arrival`` column into it; generated data is produced in arrival
order, so there it is the row position; a user's file without ``arrival`` gets its row
position too, which orders each entity's events but is not taken as the global arrival
order (the watermark check is skipped)."""


@dataclass(frozen=True)
class SchemaConfig:
    """Maps the user's column names onto the events-table roles (docs/architecture.md §1)."""

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
    arrival: str | None = None
    """Column holding the order rows reached the system, e.g. an ingestion timestamp or a
    log offset (integers, timestamps or ISO-8601 strings); ingest ranks it into ``_arrival``.
    Not a feature: the model never reads it. Null: a user's file row order is not taken as
    arrival order (late_events is skipped); generated data is produced in arrival order."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "categorical", tuple(self.categorical))
        names = self.event_columns
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise fail("data.schema", dupes, "a column is mapped to more than one role")
        if self.next_event and self.next_event not in self.categorical:
            raise fail(
                "data.schema.next_event", self.next_event, "must be one of data.schema.categorical"
            )
        if self.forecast and self.forecast not in self.numeric:
            raise fail("data.schema.forecast", self.forecast, "must be one of data.schema.numeric")
        if self.arrival is not None:
            taken = [key for key, column in self.roles() if column == self.arrival]
            if taken:
                raise fail(
                    "data.schema.arrival",
                    self.arrival,
                    f"is already mapped as data.schema.{taken[0]}; the arrival column records "
                    "when a row reached the system and must be a column of its own (or null)",
                )

    @property
    def event_columns(self) -> list[str]:
        """The columns a model reads from each event: key, time, seq, features."""
        return [
            self.entity,
            self.time,
            *([self.seq] if self.seq else []),
            *self.numeric,
            *self.categorical,
        ]

    @property
    def required_columns(self) -> list[str]:
        """The columns the stages after validate read: :attr:`event_columns` and the label."""
        return [*self.event_columns, *([self.label] if self.label else [])]

    @property
    def source_columns(self) -> list[str]:
        """Every mapped column of the source table: :attr:`required_columns` and ``arrival``,
        which only ingest reads (to rank it into ``_arrival``)."""
        return [*self.required_columns, *([self.arrival] if self.arrival else [])]

    def roles(self) -> list[tuple[str, str]]:
        """``(data.schema key, column)`` for every mapped column but ``arrival``, in schema
        order; a column mapped under two keys (``next_event`` is also categorical) twice."""
        pairs = [("entity", self.entity), ("time", self.time)]
        pairs += [("seq", self.seq)] if self.seq else []
        pairs += [("numeric", c) for c in self.numeric]
        pairs += [("categorical", c) for c in self.categorical]
        for key in ("label", "next_event", "forecast"):
            column = getattr(self, key)
            if column:
                pairs.append((key, column))
        return pairs
