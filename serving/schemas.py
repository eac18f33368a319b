"""The HTTP contract of online scoring: request validation and the JSON error body.

A request holds ``sequences``: ``[{"entity": str, "events": [event, ...]}, ...]``, where an
event carries the columns of the model's shard manifest schema (docs/architecture.md §1): the
time as an ISO-8601 string (a zone offset or ``Z``; naive times are UTC, as in the events
table), the sequence number as an integer, numeric features as finite JSON numbers and
categorical features as strings. The request type is built per served model as
``TypedDict``s with ``extra="forbid"`` (pydantic docs, "TypedDict" and "TypeAdapter"), whose
keys are the columns themselves, so unknown and missing features are caught by the same
validator that checks types, and the JSON is parsed and validated in one pass by pydantic-core
(``TypeAdapter.validate_json``), which reads ``NaN``/``Infinity`` as floats that the
``allow_inf_nan=False`` constraint then rejects. Validated events are plain dicts (cheaper than
a model instance per event), turned in one pass into :class:`seqcore.encoding.EventColumns`,
the one container the encoder takes (docs/architecture.md §7): what the scorer, the
challenger and the streaming state holder all receive.

Then the data contract (docs/architecture.md §2, §10): the validate stage's per-event rules
(value ranges, categorical domains, negative sequence numbers, the time floor, timestamps
ahead of the server's clock), as the served model's manifest records them, applied by the
same functions the validate stage runs (``data_checks.rules``). A model whose manifest
predates the contract is held to types and limits only. Every problem becomes a
:class:`RequestError`: an HTTP 4xx with ``{"error": ..., "field":
"sequences[3].events[7].amount"}``; no error echoes more than ``MAX_ENTITY_CHARS`` of what a
client sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Required

import numpy as np
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from data_checks.rules import EventRules
from seqcore.encoding import EventColumns
from seqcore.manifest import DataContract
from seqcore.schema import SchemaConfig
from serving.config import Limits

MAX_REPORTED_ERRORS = 20
MAX_ENTITY_CHARS = 256
"""The longest entity key a route takes (a sequence's ``entity``, a URL's ``entity_id``), and
the most of any client text an error repeats."""
ENTITY_RULE = f"1 to {MAX_ENTITY_CHARS} printable characters"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RequestError(Exception):
    """A bad request: the HTTP status and a JSON body that names the offending field."""

    def __init__(self, status: int, error: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.extra = status, error, field, extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "field": self.field, **self.extra}


def clip(text: str) -> str:
    """Client text as an error may repeat it: at most ``MAX_ENTITY_CHARS`` characters."""
    return text if len(text) <= MAX_ENTITY_CHARS else text[: MAX_ENTITY_CHARS - 1] + "…"


def field_path(loc: Sequence[str | int]) -> str:
    """pydantic's error location -> ``sequences[3].events[7].amount`` (a key the client made
    up, e.g. an unknown feature, clipped)."""
    path = ""
    for part in loc:
        name = clip(str(part))
        path += f"[{part}]" if isinstance(part, int) else (f".{name}" if path else name)
    return path


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError(f"entity must be {ENTITY_RULE}")
    return value


def _time_us(value: str) -> int:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("expected an ISO-8601 time such as 2025-01-01T00:00:00Z") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - _EPOCH  # exact integer microseconds, no float rounding
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Time = Annotated[str, Field(strict=True), AfterValidator(_time_us)]
Entity = Annotated[
    str, Field(strict=True, min_length=1, max_length=MAX_ENTITY_CHARS), AfterValidator(_printable)
]


def feature_columns(schema: SchemaConfig) -> list[str]:
    """The keys of one event: every column the model reads but the entity key, which a
    request carries once per sequence (or in the URL)."""
    return [c for c in schema.event_columns if c != schema.entity]


def _typed_dict(name: str, fields: dict[str, Any], total: bool = True) -> Any:
    """A ``TypedDict`` that refuses unknown keys; keys may be any column name. (typing_extensions'
    on Python < 3.12, as pydantic requires; built at run time, out of the type checker's sight.)"""
    make: Any = TypedDict
    typed = make(name, fields, total=total)
    typed.__pydantic_config__ = _FORBID
    return typed


_FORBID = ConfigDict(extra="forbid")


def event_model(schema: SchemaConfig) -> Any:
    """The ``TypedDict`` of one raw event of a model's schema."""
    fields: dict[str, Any] = {schema.time: Time}
    if schema.seq:
        fields[schema.seq] = Annotated[int, Field(strict=True, ge=-(2**63), lt=2**63)]
    for col in schema.numeric:
        fields[col] = FiniteNumber
    for col in schema.categorical:
        fields[col] = Annotated[str, Field(strict=True)]
    return _typed_dict("Event", fields)


@dataclass(frozen=True)
class RequestModel:
    """A route's validator for one served model: the body's types (pydantic) and the rules of
    the model's data contract."""

    adapter: TypeAdapter
    rules: EventRules


def request_model(
    schema: SchemaConfig, limits: Limits, contract: DataContract | None = None
) -> RequestModel:
    """The validator of ``POST /v1/score`` bodies for one model schema, limits and contract
    (None: the model's manifest has none, and only types and limits are checked)."""
    event = event_model(schema)
    sequence = _typed_dict(
        "ScoredSequence",
        {
            "entity": Entity,
            "events": Annotated[
                list[event],  # type: ignore[valid-type]
                Field(min_length=1, max_length=limits.max_events_per_sequence),
            ],
        },
    )
    sequences = Annotated[
        list[sequence],  # type: ignore[valid-type]
        Field(min_length=1, max_length=limits.max_sequences_per_request),
    ]
    adapter = TypeAdapter(_typed_dict("ScoreRequest", {"sequences": sequences}))
    return RequestModel(adapter, EventRules(contract, schema))


def stream_request_model(
    schema: SchemaConfig, limits: Limits, contract: DataContract | None = None
) -> RequestModel:
    """``POST /v1/stream/{entity_id}``: new events, and optionally the history to rebuild from.

    ``expect_events_seen`` is the ``state.events_seen`` of the client's previous reply: a
    replica without that state then answers ``reset`` instead of ``new``. ``reset`` drops the
    entity's state first.
    """
    event = event_model(schema)
    events = Annotated[
        list[event],  # type: ignore[valid-type]
        Field(min_length=1, max_length=limits.max_events_per_sequence),
    ]
    adapter = TypeAdapter(
        _typed_dict(
            "StreamRequest",
            {
                "events": Required[events],
                # Not Optional[...]: a union would put its branch name into error locations.
                "history": events,
                "expect_events_seen": Annotated[int | None, Field(strict=True, ge=0, lt=2**63)],
                "reset": Annotated[bool, Field(strict=True)],
            },
            total=False,
        )
    )
    return RequestModel(adapter, EventRules(contract, schema))


def _describe(err: Mapping[str, Any], schema: SchemaConfig, limits: Limits) -> str:
    """A pydantic error as a sentence a client can act on."""
    kind, loc = err["type"], err["loc"]
    name = clip(str(loc[-1])) if loc else "body"
    in_event = len(loc) >= 3 and loc[-3] in ("events", "history")
    if kind == "missing":
        return f"missing {'feature' if in_event else 'field'} {name!r}"
    if kind == "extra_forbidden":
        if in_event:
            where = "the URL" if loc[0] != "sequences" else "sequences[i].entity"
            hint = f"; the entity goes in {where}" if name == schema.entity else ""
            expected = ", ".join(feature_columns(schema))
            return f"unknown feature {name!r}; expected: {expected}{hint}"
        return f"unknown field {name!r}"
    if len(loc) == 3 and loc[0] == "sequences" and name == "entity" and kind != "string_type":
        return f"entity must be {ENTITY_RULE}"
    if kind == "too_long":
        limit = (
            f"max_events_per_sequence={limits.max_events_per_sequence}"
            if name in ("events", "history")
            else f"max_sequences_per_request={limits.max_sequences_per_request}"
        )
        return f"too many {name}: {err.get('ctx', {}).get('actual_length')} > {limit}"
    if kind == "too_short":
        return f"{name} must not be empty"
    if kind == "finite_number":
        return "must be a finite number (NaN and Infinity are rejected)"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if name == schema.time and kind == "string_type":
        return "expected an ISO-8601 time string such as 2025-01-01T00:00:00Z"
    return f"{err['msg']} (got {type(err.get('input')).__name__})"


def parse_request(
    body: bytes,
    model: RequestModel,
    schema: SchemaConfig,
    limits: Limits,
    now: datetime | None = None,
) -> EventColumns:
    """A ``/v1/score`` body -> its sequences as :class:`EventColumns`, in request order (one
    group per sequence, named by its entity). Raises :class:`RequestError` (400 or 422) on
    any problem. ``now`` is the clock the future check compares with (default: this moment)."""
    request = _validate(body, model.adapter, schema, limits)
    sequences = request["sequences"]
    columns = _columns([s["entity"] for s in sequences], [s["events"] for s in sequences], schema)
    lengths = [len(s["events"]) for s in sequences]
    columns = apply_rules(model.rules, columns, lengths, "sequences[{i}].events", now)
    if limits.order_policy == "reject":
        for i, seq in enumerate(sequences):
            check_order(seq["events"], schema, f"sequences[{i}].events")
    return columns


@dataclass(frozen=True)
class StreamRequest:
    """A validated ``/v1/stream/{entity_id}`` body: the new events and the history to rebuild
    from (None when absent), each one sequence named by the entity."""

    events: EventColumns
    history: EventColumns | None = None
    expect_events_seen: int | None = None
    reset: bool = False


def parse_stream_request(
    body: bytes,
    entity: str,
    model: RequestModel,
    schema: SchemaConfig,
    limits: Limits,
    now: datetime | None = None,
) -> StreamRequest:
    """Validate a ``/v1/stream`` body (:func:`stream_request_model`) the same way; absent
    optional fields take their defaults. An event the contract refuses never reaches the
    entity's state, so a timestamp far ahead cannot lock the entity out of its real events."""
    request = _validate(body, model.adapter, schema, limits)
    history = request.get("history")
    events = _columns([entity], [request["events"]], schema)
    events = apply_rules(model.rules, events, [len(request["events"])], "events", now)
    past = None
    if history is not None:
        past = _columns([entity], [history], schema)
        past = apply_rules(model.rules, past, [len(history)], "history", now)
    if limits.order_policy == "reject":
        check_order(request["events"], schema, "events")
        if history is not None:
            check_order(history, schema, "history")
    return StreamRequest(
        events=events,
        history=past,
        expect_events_seen=request.get("expect_events_seen"),
        reset=request.get("reset", False),
    )


def apply_rules(
    rules: EventRules,
    columns: EventColumns,
    lengths: Sequence[int],
    path: str,
    now: datetime | None,
) -> EventColumns:
    """The contract's verdict on ``columns`` (sequence ``i``: ``lengths[i]`` events at
    ``path.format(i=i)``): the columns to score, or a 422 naming each offending event's field.
    Also what the challenger applies with its own contract (``serving.rollout``)."""
    verdict = rules.check(columns, now or datetime.now(UTC), MAX_REPORTED_ERRORS)
    if not verdict.count:
        return verdict.columns
    starts = np.cumsum([0, *lengths])
    reported = []
    for v in verdict.violations:
        i = int(np.searchsorted(starts, v.row, side="right")) - 1
        where = f"{path.format(i=i)}[{v.row - int(starts[i])}].{v.column}"
        reported.append({"field": where, "error": v.message, "check": v.check})
    first = reported[0]
    raise RequestError(
        422, first["error"], first["field"], errors=reported, error_count=verdict.count
    )


def _validate(body: bytes, model: TypeAdapter, schema: SchemaConfig, limits: Limits) -> Any:
    try:
        request = model.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "json_invalid":
            raise RequestError(400, f"malformed JSON: {errors[0]['msg']}", "body") from None
        reported = [
            {"field": field_path(e["loc"]) or "body", "error": _describe(e, schema, limits)}
            for e in errors[:MAX_REPORTED_ERRORS]
        ]
        first = reported[0]
        raise RequestError(
            422, first["error"], first["field"], errors=reported, error_count=len(errors)
        ) from None
    return request


def check_order(events: Sequence[Any], schema: SchemaConfig, path: str) -> None:
    """Policy ``reject``: events must come in (time, seq) order."""
    prev: tuple[int, int] | None = None
    time, seq = schema.time, schema.seq
    for j, event in enumerate(events):
        key = (event[time], event[seq] if seq else 0)
        if prev is not None and key < prev:
            column = time if key[0] < prev[0] else seq
            raise RequestError(
                422,
                f"event {j} comes before event {j - 1} in ({time}, {seq}) "
                "order; the server's order_policy is 'reject' (send events in order)",
                f"{path}[{j}].{column}",
            )
        prev = key


def _columns(names: list[str], sequences: list[Any], schema: SchemaConfig) -> EventColumns:
    """Validated events -> columns in one pass; sequence ``i`` is group ``i``. Times are int64
    microseconds since the epoch (UTC); plain numpy and lists pickle cheaply between Serve
    replicas."""
    events = [e for seq in sequences for e in seq]
    lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
    return EventColumns(
        names=names,
        group=np.repeat(np.arange(len(names), dtype=np.int64), lengths),
        time_us=np.array([e[schema.time] for e in events], dtype=np.int64),
        seq=np.array([e[schema.seq] for e in events], dtype=np.int64) if schema.seq else None,
        numeric={
            col: np.array([e[col] for e in events], dtype=np.float64) for col in schema.numeric
        },
        categorical={col: [e[col] for e in events] for col in schema.categorical},
    )
