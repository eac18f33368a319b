"""The HTTP request contract in-process: what validates, what each bad body is told, and the
columns a valid body becomes, the encoder's one container (the integration tests send the same
over HTTP)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqcore.encoding import EventColumns, concat_columns
from seqcore.schema import SchemaConfig
from serving.config import Limits
from serving.schemas import (
    RequestError,
    feature_columns,
    parse_request,
    parse_stream_request,
    request_model,
    stream_request_model,
)

SCHEMA = SchemaConfig(
    entity="acct", time="ts", seq="seq", numeric=("amount",), categorical=("mcc", "json"),
    label=None, next_event=None, forecast=None,
)  # fmt: skip
LIMITS = Limits(max_sequences_per_request=4, max_events_per_sequence=5)


def _event(i: int, **changes):
    event = {"ts": f"2025-01-01T00:00:0{i}Z", "seq": i, "amount": 1.5 * i, "mcc": "5411",
             "json": "web"}  # fmt: skip
    event.update(changes)
    return {k: v for k, v in event.items() if v is not DROP}


DROP = object()


def _body(*events, entity="a"):
    return json.dumps({"sequences": [{"entity": entity, "events": list(events)}]}).encode()


def _parse(body, limits=LIMITS):
    return parse_request(body, request_model(SCHEMA, limits), SCHEMA, limits)


def test_a_valid_request_becomes_columns():
    body = json.dumps(
        {
            "sequences": [
                {"entity": "a", "events": [_event(0), _event(1, ts="2025-01-01T01:00:01+01:00")]},
                {"entity": "b", "events": [_event(2, mcc="9999")]},
            ]
        }  # fmt: skip
    ).encode()
    columns = _parse(body)
    assert isinstance(columns, EventColumns)  # what the encoder takes, no table in between
    assert columns.names == ["a", "b"] and columns.group.tolist() == [0, 0, 1]
    start = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z in microseconds
    assert columns.time_us.tolist() == [start, start + 1_000_000, start + 2_000_000]
    assert columns.seq.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(columns.numeric["amount"], [0.0, 1.5, 3.0])
    assert columns.categorical == {"mcc": ["5411", "5411", "9999"], "json": ["web"] * 3}
    joined = concat_columns([columns, columns])  # two requests in one model batch
    assert [*joined.numeric, *joined.categorical] == ["amount", "mcc", "json"]
    assert joined.group.tolist() == [0, 0, 1, 2, 2, 3]  # sequences never merge
    assert joined.names == ["a", "b", "a", "b"] and joined.time_us.dtype == np.int64
    assert joined.time_us.tolist()[:3] == columns.time_us.tolist()
    assert feature_columns(SCHEMA) == ["ts", "seq", "amount", "mcc", "json"]


BAD = {
    "malformed JSON": (b'{"sequences": [', 400, "body", "malformed JSON"),
    "no sequences": (b'{"sequences": []}', 422, "sequences", "must not be empty"),
    "unknown top-level field": (json.dumps({"sequences": [{"entity": "a", "events": [_event(0)]}], "x": 1}).encode(), 422, "x", "unknown field 'x'"),
    "too many sequences": (json.dumps({"sequences": [{"entity": "a", "events": [_event(0)]}] * 5}).encode(),
                           422, "sequences", "max_sequences_per_request=4"),
    "too many events": (_body(*[_event(0)] * 6), 422, "sequences[0].events", "max_events_per_sequence=5"),
    "empty entity": (_body(_event(0), entity=""), 422, "sequences[0].entity", "at least 1"),
    "unknown feature": (_body(_event(0, colour="red")), 422, "sequences[0].events[0].colour", "unknown feature 'colour'"),
    "entity inside an event": (_body(_event(0, acct="a")), 422, "sequences[0].events[0].acct", "sequences[i].entity"),
    "missing feature": (_body(_event(0), _event(1, mcc=DROP)), 422, "sequences[0].events[1].mcc", "missing feature 'mcc'"),
    "NaN": (_body(_event(0, amount=float("nan"))), 422, "sequences[0].events[0].amount", "finite"),
    "numeric as string": (_body(_event(0, amount="1.5")), 422, "sequences[0].events[0].amount", "valid number"),
    "categorical as number": (_body(_event(0, mcc=5411)), 422, "sequences[0].events[0].mcc", "valid string"),
    "seq as bool": (_body(_event(0, seq=True)), 422, "sequences[0].events[0].seq", "valid integer"),
    "seq beyond int64": (_body(_event(0, seq=2**63)), 422, "sequences[0].events[0].seq", "less than"),
    "unparseable time": (_body(_event(0, ts="2025-13-45")), 422, "sequences[0].events[0].ts", "ISO-8601"),
    "epoch time": (_body(_event(0, ts=1735689600)), 422, "sequences[0].events[0].ts", "ISO-8601"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_body_is_told_what_and_where(case):
    body, status, field, reason = BAD[case]
    with pytest.raises(RequestError) as caught:
        _parse(body)
    error = caught.value
    assert (error.status, error.field) == (status, field), error.body()
    assert reason in error.error, error.body()


def test_every_problem_is_listed_up_to_a_limit():
    body = _body(*[_event(i, amount="x", mcc=1) for i in range(5)])
    with pytest.raises(RequestError) as caught:
        _parse(body)
    extra = caught.value.extra
    assert extra["error_count"] == 10 and len(extra["errors"]) == 10
    assert extra["errors"][1]["field"] == "sequences[0].events[0].mcc"


def test_order_policy_reject_names_the_first_event_out_of_order():
    reject = Limits(max_events_per_sequence=5, order_policy="reject")
    in_order = _body(_event(0), _event(1), _event(1, seq=2))
    assert _parse(in_order, reject).seq.tolist() == [0, 1, 2]
    with pytest.raises(RequestError) as caught:
        _parse(_body(_event(0), _event(2), _event(1)), reject)
    assert caught.value.field == "sequences[0].events[2].ts"
    with pytest.raises(RequestError) as caught:
        _parse(_body(_event(1, seq=5), _event(1, seq=4)), reject)
    assert caught.value.field == "sequences[0].events[1].seq"
    assert _parse(_body(_event(2), _event(1))).num_rows == 2  # "sort" takes any order


def test_stream_requests_default_their_optional_fields():
    model = stream_request_model(SCHEMA, LIMITS)
    parsed = parse_stream_request(
        json.dumps({"events": [_event(3)]}).encode(), "e-1", model, SCHEMA, LIMITS
    )
    assert (parsed.history, parsed.expect_events_seen, parsed.reset) == (None, None, False)
    events = parsed.events
    assert events.names == ["e-1"] and events.group.tolist() == [0] and events.seq.tolist() == [3]
    full = {"events": [_event(3)], "history": [_event(1), _event(2)], "expect_events_seen": 2,
            "reset": True}  # fmt: skip
    parsed = parse_stream_request(json.dumps(full).encode(), "e-1", model, SCHEMA, LIMITS)
    assert parsed.history.group.tolist() == [0, 0] and parsed.reset is True
    assert parsed.expect_events_seen == 2
    for bad, field in (({"events": []}, "events"), ({}, "events"),
                       ({"events": [_event(0)], "history": None}, "history"),
                       ({"events": [_event(0)], "expect_events_seen": -1}, "expect_events_seen"),
                       ({"events": [_event(0)], "reset": "yes"}, "reset")):  # fmt: skip
        with pytest.raises(RequestError) as caught:
            parse_stream_request(json.dumps(bad).encode(), "e-1", model, SCHEMA, LIMITS)
        assert caught.value.field == field, (bad, caught.value.body())
