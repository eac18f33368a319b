"""The data contract's per-event rules: one implementation for the validate stage and serving.

Five checks of the ordering contract (docs/architecture.md §2) judge an event by its own
values: ``value_ranges``, ``categorical_domain``, ``seq_negative``, ``future_timestamps`` and
``time_floor``. Each is one vectorised function here. The validate stage
(``data_checks.ordering``, ``data_checks.gx_suite``) runs it over a column of the events
table; the scoring endpoint runs it over the columns of one request's events
(:class:`EventRules`, on :class:`seqcore.encoding.EventColumns`) with the configuration the
served model carries (:class:`seqcore.manifest.DataContract`, written by the shard stage from
``validate``: :func:`serving_contract`). So an event the endpoint refuses is a row the validate
stage flags, for the same reason, and the sentence that tells a client why names the
``params.yaml`` key of the rule.

Serving differs where a request is not a table: a check with policy ``quarantine`` still
refuses (one request's event cannot be set aside), the tolerated share of unseen categories
(``max_unseen_fraction``, a statistic over a table) has no meaning for one event, and the
future check compares with the server's clock at request time, never ``validate.now``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from data_checks.config import ValidateConfig
from seqcore.encoding import EventColumns
from seqcore.manifest import DataContract
from seqcore.schema import SchemaConfig

SERVING_CHECKS = (
    "value_ranges",
    "categorical_domain",
    "seq_negative",
    "future_timestamps",
    "time_floor",
)
"""The checks a single event can fail on its own; the others need an entity's history or the
whole table, or are types, which the request validator checks itself."""
UNITS_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SHOWN_CHARS = 64
"""A value from the data is shown up to this many characters: an error never echoes a
client's megabytes back."""

# --------------------------------------------------------------------------- time units


def to_units(moment: datetime, unit: str) -> int:
    """``moment`` as an integer count of ``unit`` since the epoch (exact, no float rounding)."""
    delta = moment - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    scale = UNITS_PER_S[unit]
    return micros * scale // 1_000_000 if scale >= 1_000_000 else micros // (1_000_000 // scale)


def duration_units(seconds: float, unit: str) -> int:
    return int(round(seconds * UNITS_PER_S[unit]))


# --------------------------------------------------------------------------- the rules


def out_of_range(values: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """value_ranges: True where a finite value lies outside the inclusive [low, high] (None:
    an open side). NaN and +-inf are numeric_finite's, nulls (NaN here) nobody's."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(values.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        if low is not None:
            out |= values < float(low)
        if high is not None:
            out |= values > float(high)
    return out & np.isfinite(values)


def domain_values(domain: Sequence[Any], kind: pa.DataType | None = None) -> tuple[Any, ...]:
    """A declared domain in the values of a column of type ``kind``: integers for an integer
    column (a value that is no integer can never occur there), strings otherwise."""
    if kind is not None and pa.types.is_dictionary(kind):
        kind = kind.value_type
    if kind is not None and pa.types.is_integer(kind):
        ints = []
        for value in domain:
            try:
                ints.append(int(value))
            except (TypeError, ValueError):
                continue
        return tuple(dict.fromkeys(ints))
    return tuple(dict.fromkeys(str(v) for v in domain))


def outside_domain(values: Sequence[Any], allowed: Collection[Any]) -> np.ndarray:
    """categorical_domain: True where a non-null value is not in ``allowed``. The validate stage
    passes a column's distinct values (its dictionary), the endpoint a request's values."""
    return np.fromiter((v is not None and v not in allowed for v in values), bool, len(values))


def negative(seq: np.ndarray) -> np.ndarray:
    """seq_negative: sequence numbers below 0. A producer's counter starts at 0; a negative
    one is a fault (a -1 meaning "unknown", a wrapped counter) that would also read as a gap."""
    return np.asarray(seq) < 0


def future_limit(unit: str, now: datetime, max_ahead_s: float) -> int:
    """The latest allowed event time, in ``unit``: ``now`` plus the tolerance."""
    return to_units(now, unit) + duration_units(max_ahead_s, unit)


def future(times: np.ndarray, unit: str, now: datetime, max_ahead_s: float) -> np.ndarray:
    """future_timestamps: event times (integers in ``unit``) after ``now + max_ahead_s``."""
    return np.asarray(times) > future_limit(unit, now, max_ahead_s)


def before_floor(times: np.ndarray, unit: str, floor: datetime) -> np.ndarray:
    """time_floor: event times (integers in ``unit``) before ``floor``."""
    return np.asarray(times) < to_units(floor, unit)


# --------------------------------------------------------------------------- sentences


def shown(value: Any) -> str:
    """A value from the data for a message: numbers as numbers, text quoted and clipped."""
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time_us(us: int) -> str:
    return _iso(EPOCH + timedelta(microseconds=int(us)))


def range_message(column: str, value: float, low: float | None, high: float | None) -> str:
    side, bound = (
        ("below the min", low) if low is not None and value < low else ("above the max", high)
    )
    return (
        f"value_ranges: {shown(float(value))} is {side} {shown(float(bound or 0))} of {column} "
        f"(validate.ranges.{column})"
    )


def domain_message(column: str, value: Any, domain: Sequence[Any]) -> str:
    listed = ", ".join(map(str, domain[:10])) + (", …" if len(domain) > 10 else "")
    return (
        f"categorical_domain: {shown(value)} is not in the domain of {column} ({listed}) "
        f"(validate.domains.{column})"
    )


def seq_message(column: str, value: int) -> str:
    return (
        f"seq_negative: {column}={int(value)} is below 0; sequence numbers count from 0 "
        "(validate.checks.seq_negative)"
    )


def floor_message(column: str, time_us: int, floor: datetime) -> str:
    return (
        f"time_floor: {column} {_time_us(time_us)} is before the floor {_iso(floor)} "
        "(validate.checks.time_floor.floor)"
    )


def future_message(column: str, time_us: int, now: datetime, max_ahead_s: float) -> str:
    return (
        f"future_timestamps: {column} {_time_us(time_us)} is more than {max_ahead_s:g} s after "
        f"the server's clock ({_iso(now)}) (validate.checks.future_timestamps.max_ahead)"
    )


# --------------------------------------------------------------------------- at serving


def serving_contract(
    config: ValidateConfig, schema: SchemaConfig, types: Mapping[str, pa.DataType]
) -> DataContract:
    """What the shard stage writes into the manifest: ``validate``'s per-event rules for the
    columns ``schema`` maps, domains as the strings a request carries (``types``: the Arrow
    type of each categorical column, so an integer column's domain matches as validate does)."""
    checks = [n for n in SERVING_CHECKS if config.checks[n].enabled]
    if schema.seq is None:
        checks = [n for n in checks if n != "seq_negative"]
    domains = {
        c: tuple(str(v) for v in domain_values(values, types.get(c)))
        for c, values in config.domains.items()
        if c in schema.categorical
    }
    floor = config.checks["time_floor"].floor
    assert floor is not None  # CheckConfig always fills the floor
    return DataContract(
        checks=tuple(checks),
        ranges={c: bounds for c, bounds in config.ranges.items() if c in schema.numeric},
        domains=domains,
        domain_policy=config.checks["categorical_domain"].unseen_at_serving,
        time_floor=floor,
        max_ahead_s=config.checks["future_timestamps"].max_ahead,
    )


@dataclass(frozen=True)
class Violation:
    """One event breaking one rule: its row in the columns checked, the column and the rule."""

    row: int
    column: str
    check: str
    message: str


@dataclass(frozen=True)
class Verdict:
    """The rules' answer for a request's events."""

    columns: EventColumns
    """The events to score: as given, or with out-of-domain categories made OOV (None)."""
    violations: list[Violation]
    """The first violations in event order (up to the limit asked for)."""
    count: int
    """Every violation found."""


class EventRules:
    """A served model's contract, ready to judge the events of each request.

    Built once per model (the allowed values become sets), so that a request pays only the
    rules' array comparisons and set lookups.
    """

    def __init__(self, contract: DataContract | None, schema: SchemaConfig) -> None:
        self.contract, self.schema = contract, schema
        self.position = {c: i for i, c in enumerate(schema.event_columns)}
        self.allowed: dict[str, frozenset[str]] = {}
        if contract is not None and contract.applies("categorical_domain"):
            self.allowed = {c: frozenset(v) for c, v in contract.domains.items()}

    def describe(self) -> dict[str, Any]:
        """What a model's info says about the rules its requests are held to."""
        if self.contract is None:
            return {
                "applied": False,
                "reason": "the model's manifest predates the data contract (it has no "
                "'contract'): requests are checked for types and limits only",
            }
        return {"applied": True, **self.contract.to_json()}

    def check(self, columns: EventColumns, now: datetime, limit: int) -> Verdict:
        """Judge every event; ``now`` is the server's clock at request time."""
        contract = self.contract
        if contract is None:
            return Verdict(columns, [], 0)
        schema, times = self.schema, columns.time_us
        found: list[_Found] = []
        if contract.applies("time_floor"):
            floor = contract.time_floor
            rows = before_floor(times, "us", floor)
            found.append(_Found(rows, schema.time, "time_floor", times, floor_message, (floor,)))
        if contract.applies("future_timestamps"):
            ahead = (now, contract.max_ahead_s)
            rows = future(times, "us", *ahead)
            found.append(
                _Found(rows, schema.time, "future_timestamps", times, future_message, ahead)
            )
        if contract.applies("seq_negative") and schema.seq and columns.seq is not None:
            seq = columns.seq
            found.append(_Found(negative(seq), schema.seq, "seq_negative", seq, seq_message, ()))
        if contract.applies("value_ranges"):
            for column, bounds in contract.ranges.items():
                if column in columns.numeric:
                    values = columns.numeric[column]
                    rows = out_of_range(values, *bounds)
                    found.append(
                        _Found(rows, column, "value_ranges", values, range_message, bounds)
                    )
        mapped = False
        categorical = dict(columns.categorical)
        for column, allowed in self.allowed.items():
            if column not in categorical:
                continue
            strings = categorical[column]
            bad = outside_domain(strings, allowed)
            if contract.domain_policy == "oov":
                if bad.any():  # None is what the encoder reads as OOV
                    categorical[column] = [
                        None if b else v for v, b in zip(strings, bad, strict=True)
                    ]
                    mapped = True
                continue
            domain = (contract.domains[column],)
            found.append(_Found(bad, column, "categorical_domain", strings, domain_message, domain))
        if mapped:
            columns = dataclasses.replace(columns, categorical=categorical)
        # The first violations in event order, then column order, whichever rule found them.
        keyed = [
            (int(row), self.position.get(f.column, 0), k)
            for k, f in enumerate(found)
            for row in np.flatnonzero(f.rows)
        ]
        keyed.sort()
        violations = [found[k].violation(row) for row, _, k in keyed[:limit]]
        return Verdict(columns, violations, len(keyed))


@dataclass(frozen=True)
class _Found:
    """One rule's verdict on one column: a mask over the events and how to tell each one."""

    rows: np.ndarray
    column: str
    check: str
    values: Any
    message: Callable[..., str]
    """``message(column, value, *args)``"""
    args: tuple[Any, ...]

    def violation(self, row: int) -> Violation:
        text = self.message(self.column, self.values[row], *self.args)
        return Violation(row, self.column, self.check, text)
