"""The HTTP request contract in-process: what validates, what each bad body is told, and the
columns a valid body becomes, the encoder's one container (the integration tests send the same
over HTTP)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from seqcore.encoding import EventColumns, concat_columns
from seqcore.manifest import DataContract
from seqcore.schema import SchemaConfig
from serving.config import Limits
from serving.schemas import (
    MAX_ENTITY_CHARS,
    MAX_REPORTED_ERRORS,
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
    "empty entity": (_body(_event(0), entity=""), 422, "sequences[0].entity", "1 to 256 printable characters"),
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


# --------------------------------------------------------------------------- the data contract

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONTRACT = DataContract(
    checks=("value_ranges", "categorical_domain", "seq_negative", "future_timestamps", "time_floor"),
    ranges={"amount": (0.0, 50_000.0)}, domains={"json": ("web", "app")}, domain_policy="refuse",
    time_floor=datetime(2000, 1, 1, tzinfo=UTC), max_ahead_s=300.0,
)  # fmt: skip


def _judged(body, contract=CONTRACT, now=NOW):
    model = request_model(SCHEMA, LIMITS, contract)
    return parse_request(body, model, SCHEMA, LIMITS, now=now)


def _refusal(body, **kw) -> RequestError:
    with pytest.raises(RequestError) as caught:
        _judged(body, **kw)
    assert caught.value.status == 422
    return caught.value


REFUSED = {
    "amount 1e308": (dict(amount=1e308), "amount",
                     "value_ranges: 1e+308 is above the max 50000 of amount (validate.ranges.amount)"),
    "amount below 0": (dict(amount=-3.5), "amount", "value_ranges: -3.5 is below the min 0"),
    "year 9999": (dict(ts="9999-12-31T00:00:00Z"), "ts",
                  "future_timestamps: ts 9999-12-31T00:00:00Z is more than 300 s after the "
                  "server's clock (2026-01-01T00:00:00Z) (validate.checks.future_timestamps.max_ahead)"),
    "before the floor": (dict(ts="1999-12-31T23:59:59Z"), "ts",
                         "time_floor: ts 1999-12-31T23:59:59Z is before the floor 2000-01-01T00:00:00Z"),
    "seq -5": (dict(seq=-5), "seq", "seq_negative: seq=-5 is below 0"),
    "unknown category": (dict(json="tv"), "json",
                         "categorical_domain: 'tv' is not in the domain of json (web, app) "
                         "(validate.domains.json)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_contract_refuses_an_event_naming_the_field_and_the_rule(case):
    changes, column, said = REFUSED[case]
    good = [_event(i) for i in range(5)]
    bad = [_event(0), _event(1), _event(2, **changes)]
    body = json.dumps({"sequences": [{"entity": "a", "events": good}] * 2
                       + [{"entity": "c", "events": bad}]}).encode()  # fmt: skip
    error = _refusal(body)
    assert error.field == f"sequences[2].events[2].{column}"
    assert error.error.startswith(said), error.error
    assert error.extra["error_count"] == 1
    assert error.extra["errors"][0]["check"] == said.split(":")[0]


def test_the_same_events_pass_without_a_contract_and_with_a_disabled_check():
    body = _body(_event(0, amount=1e308), _event(1, seq=-5))
    assert _parse(body).numeric["amount"][0] == 1e308  # a manifest from before the contract
    assert request_model(SCHEMA, LIMITS).rules.describe()["applied"] is False
    some = dataclasses.replace(CONTRACT, checks=("categorical_domain",))
    assert _judged(body, contract=some).seq.tolist() == [0, -5]
    assert _refusal(body).extra["error_count"] == 2  # both, in event order
    assert request_model(SCHEMA, LIMITS, CONTRACT).rules.describe()["applied"] is True


def test_the_future_tolerance_is_measured_from_the_clock_at_request_time():
    ahead = _body(_event(0, ts="2026-01-01T00:05:00Z"))
    assert _judged(ahead).num_rows == 1  # exactly max_ahead: allowed, as validate allows it
    with pytest.raises(RequestError):
        _judged(_body(_event(0, ts="2026-01-01T00:05:00.000001Z")))
    assert _judged(ahead, now=NOW + timedelta(hours=1)).num_rows == 1
    # The default clock is the wall clock: this moment passes, the year 9999 never does.
    now = datetime.now(UTC).isoformat()
    model = request_model(SCHEMA, LIMITS, CONTRACT)
    assert parse_request(_body(_event(0, ts=now)), model, SCHEMA, LIMITS).num_rows == 1
    with pytest.raises(RequestError, match="future_timestamps"):
        parse_request(_body(_event(0, ts="9999-12-31T00:00:00Z")), model, SCHEMA, LIMITS)


def test_policy_oov_scores_an_unknown_category_as_out_of_vocabulary():
    oov = dataclasses.replace(CONTRACT, domain_policy="oov")
    columns = _judged(_body(_event(0, json="tv"), _event(1)), contract=oov)
    assert columns.categorical["json"] == [None, "web"]  # None: the encoder's OOV id
    assert columns.categorical["mcc"] == ["5411", "5411"]


def test_every_violation_is_counted_and_the_first_ones_listed():
    body = json.dumps({"sequences": [
        {"entity": str(i), "events": [_event(j, amount=-1.0, seq=-j - 1) for j in range(5)]}
        for i in range(4)
    ]}).encode()  # fmt: skip
    extra = _refusal(body).extra
    assert extra["error_count"] == 40 and len(extra["errors"]) == MAX_REPORTED_ERRORS
    fields = [e["field"] for e in extra["errors"][:3]]
    assert fields == ["sequences[0].events[0].seq", "sequences[0].events[0].amount",
                      "sequences[0].events[1].seq"]  # fmt: skip


def test_stream_events_and_history_are_held_to_the_contract():
    model = stream_request_model(SCHEMA, LIMITS, CONTRACT)
    future = {"events": [_event(1, ts="9999-12-31T00:00:00Z")]}
    with pytest.raises(RequestError) as caught:
        parse_stream_request(json.dumps(future).encode(), "e", model, SCHEMA, LIMITS, now=NOW)
    assert caught.value.field == "events[0].ts" and "future_timestamps" in caught.value.error
    old = {"events": [_event(3)], "history": [_event(1), _event(2, amount=9e9)]}
    with pytest.raises(RequestError) as caught:
        parse_stream_request(json.dumps(old).encode(), "e", model, SCHEMA, LIMITS, now=NOW)
    assert caught.value.field == "history[1].amount"


@pytest.mark.parametrize(
    "entity", ["", "x" * (MAX_ENTITY_CHARS + 1), "x" * 4_000_000, "tab\there", "line\nbreak"]
)
def test_an_entity_is_bounded_and_printable_and_never_echoed(entity):
    error = _refusal(_body(_event(0), entity=entity))
    assert error.field == "sequences[0].entity"
    assert error.error == f"entity must be 1 to {MAX_ENTITY_CHARS} printable characters"
    assert len(json.dumps(error.body())) < 1_000
    assert _parse(_body(_event(0), entity="x" * MAX_ENTITY_CHARS)).names == ["x" * 256]


def test_an_invented_key_is_clipped_wherever_an_error_repeats_it():
    huge = "k" * 1_000_000
    for body in (_body(_event(0, **{huge: 1})), json.dumps({"sequences": [], huge: 1}).encode()):
        with pytest.raises(RequestError) as caught:
            _parse(body)
        assert len(json.dumps(caught.value.body())) < 4 * MAX_ENTITY_CHARS + 1_000
    long_category = _body(_event(0, json="z" * 100_000))
    assert len(json.dumps(_refusal(long_category).body())) < 1_000
