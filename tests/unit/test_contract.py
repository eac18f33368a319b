"""The ordering contract end to end: each planted fault fires its own check only, policies
(fail / quarantine / disabled) behave, broken tables are reported instead of crashing, and
the validate stage writes its outputs and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_checks.config import ValidateConfig
from data_checks.contract import REASON, run_contract
from data_checks.docs import render
from pipelines.params.data import FAULT_NAMES, GenerateConfig
from seqcore.encoding import EventColumns
from seqcore.schema import SchemaConfig

NOW = datetime(2026, 1, 1, tzinfo=UTC)
T0 = datetime(2025, 3, 1, tzinfo=UTC)
ENTITIES = ("A1", "B2", "C3", "D4")
SCHEMA = SchemaConfig()
CHANNELS = ["pos", "online", "atm", "contactless"]


def config(**checks: dict) -> ValidateConfig:
    return ValidateConfig(
        domains={"channel": CHANNELS, "country": ["US", "GB"], "device": ["web", "chip_reader"]},
        ranges={"amount": [0.0, 1_000_000.0]},
        checks=checks,
    )


def table_from_rows(rows: list[dict]) -> pa.Table:
    """Rows in arrival order -> an events table; ``_arrival`` is the position, as ingest sets it."""
    dictionary = pa.dictionary(pa.int32(), pa.string())
    schema = pa.schema(
        [
            ("account_id", pa.string()),
            ("event_time", pa.timestamp("us", tz="UTC")),
            ("seq_no", pa.int64()),
            ("amount", pa.float64()),
            ("mcc", dictionary),
            ("channel", dictionary),
            ("country", dictionary),
            ("device", dictionary),
            ("label", pa.int64()),
            ("_arrival", pa.int64()),
        ]
    )
    rows = [{**row, "_arrival": i} for i, row in enumerate(rows)]
    return pa.Table.from_pylist(rows, schema=schema)


def make_rows(per_entity: int = 8, entities: tuple[str, ...] = ENTITIES) -> list[dict]:
    """Interleaved entities, 2 h between an entity's events, arrival = global time order."""
    rows = []
    for i in range(per_entity):
        for j, entity in enumerate(entities):
            rows.append(
                {
                    "account_id": entity,
                    "event_time": T0 + timedelta(hours=2 * i, minutes=7 * j),
                    "seq_no": i + 1,
                    "amount": 10.0 + i + j,
                    "mcc": ("5411", "5812")[i % 2],
                    "channel": CHANNELS[(i + j) % 4],
                    "country": ("US", "GB")[j % 2],
                    "device": ("web", "chip_reader")[i % 2],
                    "label": j % 2,
                }
            )
    return rows


def make_events(**kw) -> pa.Table:
    return table_from_rows(make_rows(**kw))


def nth(rows: list[dict], entity: str, n: int) -> int:
    """Index in ``rows`` of the n-th (0-based) event of ``entity``."""
    return [i for i, r in enumerate(rows) if r["account_id"] == entity][n]


def _out_of_order(rows):
    a, b = nth(rows, "B2", 3), nth(rows, "B2", 4)
    rows[a]["event_time"], rows[b]["event_time"] = rows[b]["event_time"], rows[a]["event_time"]


def _duplicate(rows):
    i = nth(rows, "C3", 2)
    rows.insert(i + 1, dict(rows[i]))


def _seq_gap(rows):
    del rows[nth(rows, "C3", 3)]


def _null_keys(rows):
    rows.insert(5, {**rows[4], "account_id": None})
    rows.insert(12, {**rows[11], "event_time": None})


def _set_time(when):
    def mutate(rows):
        rows[nth(rows, "D4", 4)]["event_time"] = when

    return mutate


def _late(rows):
    late = {**rows[20], "account_id": "LATE1", "seq_no": 1}
    late["event_time"] -= timedelta(days=3)  # a new one-event entity, 3 days behind the stream
    rows.insert(21, late)


def _nan_inf(rows):
    rows[3]["amount"], rows[9]["amount"] = float("nan"), float("inf")


def _unseen(rows):
    rows[2]["channel"], rows[17]["channel"] = "crypto_kiosk", "channel_x"


def _negative_seq(rows):
    # C3 then numbers -1, 2, 3, ...: the gap from -1 to 2 is seq_negative's fault, not seq_gaps'.
    rows[nth(rows, "C3", 0)]["seq_no"] = -1


ROW_FAULTS: dict[str, tuple[Callable, str, int]] = {
    "out_of_order": (_out_of_order, "time_order", 1),
    "duplicates": (_duplicate, "duplicates", 1),
    "seq_gaps": (_seq_gap, "seq_gaps", 7),
    "null_keys": (_null_keys, "key_nulls", 2),
    "future_timestamps": (_set_time(datetime(2099, 1, 1, tzinfo=UTC)), "future_timestamps", 1),
    "before_floor": (_set_time(datetime(1990, 1, 1, tzinfo=UTC)), "time_floor", 1),
    "late_events": (_late, "late_events", 1),
    "nan_inf": (_nan_inf, "numeric_finite", 2),
    "unseen_categories": (_unseen, "categorical_domain", 2),
    "negative_seq": (_negative_seq, "seq_negative", 1),
}


def statuses(report) -> dict[str, str]:
    return {r.name: r.status for r in report.results}


def failing(report) -> set[str]:
    return {r.name for r in report.results if r.status == "fail"}


def assert_grouped_in_arrival_order(table: pa.Table) -> None:
    entity = table["account_id"].to_pylist()
    arrival = table["_arrival"].to_numpy()
    starts = [i for i in range(len(entity)) if i == 0 or entity[i] != entity[i - 1]]
    assert len(starts) == len(set(entity)), "an entity's rows are not contiguous"
    same = np.array([entity[i] == entity[i - 1] for i in range(1, len(entity))], dtype=bool)
    assert np.all(arrival[1:][same] > arrival[:-1][same])


@pytest.fixture(scope="module")
def clean_run():
    table = make_events()
    return table, *run_contract(table, SCHEMA, config(), NOW)


def test_clean_table_passes_every_check_and_comes_out_grouped(clean_run):
    table, report, clean, quarantine = clean_run
    assert set(statuses(report).values()) == {"pass"}, statuses(report)
    assert report.failed() == [] and report.passed
    assert (report.rows_in, report.rows_out, report.rows_quarantined) == (32, 32, 0)
    assert clean.schema == table.schema
    assert_grouped_in_arrival_order(clean)
    assert quarantine.num_rows == 0 and quarantine.column_names[-1] == REASON
    json.dumps(report.to_json(), allow_nan=False)


@pytest.mark.parametrize("fault", sorted(ROW_FAULTS))
def test_each_row_fault_fires_only_its_own_check(fault):
    mutate, check, rows_expected = ROW_FAULTS[fault]
    rows = make_rows()
    mutate(rows)
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    assert failing(report) == {check}
    assert report.result(check).violating_rows == rows_expected
    assert [r.name for r in report.failed()] == [check]
    json.dumps(report.to_json(), allow_nan=False)  # NaN offenders must still serialise


def test_wrong_type_fails_types_and_skips_dependent_checks():
    table = make_events()
    table = table.set_column(3, "amount", pc.cast(table["amount"], pa.string()))
    report, _, _ = run_contract(table, SCHEMA, config(), NOW)
    assert failing(report) == {"types"}
    assert "amount" in report.result("types").message
    for name in ("numeric_finite", "value_ranges"):
        assert report.result(name).status == "skipped"
        assert "amount" in report.result(name).message


def test_missing_column_fails_schema_only_and_notes_the_unchecked_domain():
    report, _, _ = run_contract(make_events().drop_columns(["device"]), SCHEMA, config(), NOW)
    assert failing(report) == {"schema"}
    assert "device" in report.result("schema").message
    assert "device" in report.result("categorical_domain").details["skipped_columns"]


def test_missing_entity_and_mistyped_time_skip_per_entity_checks_without_crashing():
    table = make_events().drop_columns(["account_id"])
    table = table.set_column(0, "event_time", pc.cast(table["event_time"], pa.string()))
    report, clean, _ = run_contract(table, SCHEMA, config(), NOW)
    assert {"schema", "types"} <= failing(report)
    for name in ("time_order", "duplicates", "seq_gaps", "future_timestamps", "late_events"):
        assert report.result(name).status == "skipped", name
    assert clean.num_rows == table.num_rows


def test_empty_table_fails_non_empty_and_skips_everything_else():
    report, clean, quarantine = run_contract(make_events().slice(0, 0), SCHEMA, config(), NOW)
    assert failing(report) == {"non_empty"}
    assert {r.status for r in report.results[1:]} == {"skipped"}
    assert clean.num_rows == 0 and quarantine.column_names[-1] == REASON


def test_quarantine_removes_exactly_the_offenders_and_keeps_order():
    rows = make_rows()
    _out_of_order(rows)
    _seq_gap(rows)  # C3 loses its 4th event: the whole entity goes
    _duplicate(rows)  # a copy inside C3: duplicates comes first in CHECK_NAMES
    table = table_from_rows(rows)
    quarantine_all = {n: {"policy": "quarantine"} for n in ("time_order", "duplicates", "seq_gaps")}
    report, clean, quarantine = run_contract(table, SCHEMA, config(**quarantine_all), NOW)
    assert report.failed() == []
    reasons = dict(
        zip(quarantine["_arrival"].to_pylist(), quarantine[REASON].to_pylist(), strict=True)
    )
    c3 = [r["_arrival"] for r in table.to_pylist() if r["account_id"] == "C3"]
    duplicate_copy = nth(rows, "C3", 3)  # inserted right after C3's third event
    swapped_late = nth(rows, "B2", 4)
    assert reasons.pop(duplicate_copy) == "duplicates"
    assert reasons.pop(swapped_late) == "time_order"
    assert set(reasons) == set(c3) - {duplicate_copy} and set(reasons.values()) == {"seq_gaps"}
    assert report.quarantined == {"time_order": 1, "duplicates": 1, "seq_gaps": len(c3) - 1}
    assert clean.num_rows + quarantine.num_rows == table.num_rows == report.rows_in
    assert set(clean["_arrival"].to_pylist()).isdisjoint(quarantine["_arrival"].to_pylist())
    assert_grouped_in_arrival_order(clean)
    times = clean["event_time"].cast(pa.int64()).to_numpy()
    same = np.array(clean["account_id"].to_pylist()[1:]) == np.array(
        clean["account_id"].to_pylist()[:-1]
    )
    assert np.all(times[1:][same] >= times[:-1][same])


def test_fail_policy_summary_names_check_counts_and_example_keys():
    rows = make_rows()
    _out_of_order(rows)
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    assert [r.name for r in report.failed()] == ["time_order"]
    text = report.summary()
    assert "FAILED time_order: 1 row(s), 1 entity" in text
    assert "'B2'" in text


def test_disabled_check_is_skipped_and_cannot_fail():
    rows = make_rows()
    _out_of_order(rows)
    report, _, _ = run_contract(
        table_from_rows(rows), SCHEMA, config(time_order={"enabled": False}), NOW
    )
    assert report.result("time_order").status == "skipped"
    assert report.result("time_order").message == "disabled"
    assert report.failed() == []


def test_gx_sampling_is_used_above_the_limit_and_reported():
    cfg = ValidateConfig(gx_sample_rows=10, domains={"channel": CHANNELS})
    report, _, _ = run_contract(make_events(), SCHEMA, cfg, NOW)
    assert report.gx["ran"] and report.gx["sampled"]
    assert (report.gx["sample_rows"], report.gx["rows"]) == (10, 32)
    assert "sample of 10 of 32 rows" in render(report)


def test_hostile_entity_key_is_escaped_in_the_data_docs():
    hostile = "<script>alert(1)</script>"
    rows = make_rows(entities=(hostile, "B2"))
    a, b = nth(rows, hostile, 3), nth(rows, hostile, 4)
    rows[a]["event_time"], rows[b]["event_time"] = rows[b]["event_time"], rows[a]["event_time"]
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    assert report.result("time_order").sample[0]["entity"] == hostile
    page = render(report)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "<link" not in page and "src=" not in page  # self-contained: no external assets


# The generator's own fault planting (pipelines.faults), one fault at a time.
GENERATED = {
    "out_of_order": "time_order", "duplicates": "duplicates", "seq_gaps": "seq_gaps",
    "null_keys": "key_nulls", "future_timestamps": "future_timestamps",
    "before_floor": "time_floor", "late_events": "late_events", "nan_inf": "numeric_finite",
    "wrong_type": "types", "missing_column": "schema",
    "unseen_categories": "categorical_domain", "empty": "non_empty",
}  # fmt: skip


def test_every_generated_fault_is_mapped():
    assert set(GENERATED) == set(FAULT_NAMES)


@pytest.mark.parametrize("fault", sorted(GENERATED))
def test_generated_fault_fires_only_its_own_check(fault):
    from pipelines.card_events import CHANNELS as GEN_CHANNELS
    from pipelines.card_events import COUNTRIES, DEVICES
    from pipelines.generate import generate_events

    table = generate_events(GenerateConfig(n_entities=60, faults=(fault,)), seed=3)
    if table.num_rows:
        table = table.append_column("_arrival", pa.array(np.arange(table.num_rows), pa.int64()))
    domains = {"channel": GEN_CHANNELS, "country": COUNTRIES, "device": DEVICES}
    cfg = ValidateConfig(domains=domains, ranges={"amount": [0.0, 1e6]})
    report, _, _ = run_contract(table, SCHEMA, cfg, NOW + timedelta(days=3650))
    assert failing(report) == {GENERATED[fault]}


def test_validate_stage_writes_outputs_and_exit_codes(tmp_path: Path, capsys):
    from pipelines import validate

    events = tmp_path / "events"
    events.mkdir()
    rows = make_rows()
    _out_of_order(rows)
    pq.write_table(table_from_rows(rows), events / "part-00000.parquet")
    params_file = tmp_path / "params.yaml"
    params_file.write_text('validate:\n  now: "2026-01-01T00:00:00Z"\n')
    out = {
        "--out": tmp_path / "validated",
        "--quarantine": tmp_path / "q" / "quarantine.parquet",
        "--report": tmp_path / "reports" / "validation.json",
        "--docs": tmp_path / "reports" / "data_docs",
    }
    argv = ["--params", str(params_file), "--events", str(events)]
    argv += [str(x) for pair in out.items() for x in pair]
    assert validate.main(argv) == 1
    assert "time_order" in capsys.readouterr().err
    assert not (out["--out"] / "part-00000.parquet").exists()
    report = json.loads(out["--report"].read_text())
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == ["time_order"]
    assert (out["--docs"] / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert pq.read_table(out["--quarantine"]).num_rows == 0

    params_file.write_text(
        'validate:\n  now: "2026-01-01T00:00:00Z"\n  checks:\n    time_order: {policy: quarantine}\n'
    )
    assert validate.main(argv) == 0
    validated = pq.read_table(out["--out"] / "part-00000.parquet")
    assert validated.num_rows == len(rows) - 1
    assert pq.read_table(out["--quarantine"])[REASON].to_pylist() == ["time_order"]

    assert validate.main(["--params", str(tmp_path / "missing.yaml")]) == 2
    assert validate.main(["--params", str(params_file), "--events", str(tmp_path / "none")]) == 2


# --------------------------------------------------------------------------- any events table


@pytest.mark.parametrize(
    "label",
    [
        pa.array(["fraud", "ok"] * 16, pa.string()),
        pa.array(["fraud", None] * 16, pa.large_string()),
        pa.array(["fraud", "ok"] * 16).dictionary_encode(),
        pa.array([True, False] * 16),
        pa.array([1, None] * 16, pa.int8()),
    ],
    ids=["string", "large_string", "dictionary", "boolean", "integer_with_nulls"],
)
def test_labels_of_any_class_type_pass_the_types_check(label):
    # Labels alternate by row, so make them one per entity: entity j's rows all take row j's.
    table = make_events()
    per_entity = {e: label[j] for j, e in enumerate(ENTITIES)}
    column = pa.chunked_array([[per_entity[e] for e in table["account_id"].to_pylist()]])
    table = table.set_column(8, "label", column.cast(label.type))
    report, _, _ = run_contract(table, SCHEMA, config(), NOW)
    assert report.result("types").status == "pass", report.result("types").message
    assert failing(report) == set()


def test_a_float_label_fails_types_naming_the_column_and_the_accepted_types():
    table = make_events()
    table = table.set_column(8, "label", pc.cast(table["label"], pa.float64()))
    report, _, _ = run_contract(table, SCHEMA, config(), NOW)
    assert failing(report) == {"types"}
    assert "label: double (expected string, integer or boolean)" in report.result("types").message
    assert report.result("label_consistency").status == "skipped"
    assert "label has type double" in report.result("label_consistency").message


def _relabel(rows: list[dict], entity: str, n: int, label) -> None:
    rows[nth(rows, entity, n)]["label"] = label


def test_label_consistency_fails_an_entity_with_two_labels_and_counts_unlabeled_ones():
    rows = make_rows()
    _relabel(rows, "B2", 5, 0)  # B2 is labelled 1 elsewhere
    for i in range(8):
        _relabel(rows, "D4", i, None)  # D4 has no label at all: unlabeled, not a violation
    _relabel(rows, "A1", 2, None)  # one null among A1's zeros: still one label
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    result = report.result("label_consistency")
    assert failing(report) == {"label_consistency"}
    assert (result.violating_entities, result.violating_rows) == (1, 8)
    assert result.sample == [{"entity": "B2", "labels": {"0": 1, "1": 7}, "rows": 8}]
    assert "'B2'" in result.message and "column 'label'" in result.message
    assert result.details["unlabeled_entities"] == 1
    assert result.details["labeled_entities"] == 3
    assert "1 entity has no label" in result.message
    assert "e.g. entities: 'B2'" in report.summary()


def test_label_consistency_quarantines_the_whole_entity():
    rows = make_rows()
    _relabel(rows, "C3", 0, 1)  # C3 is labelled 0 elsewhere
    cfg = config(label_consistency={"policy": "quarantine"})
    report, clean, quarantine = run_contract(table_from_rows(rows), SCHEMA, cfg, NOW)
    assert report.failed() == []
    assert set(quarantine["account_id"].to_pylist()) == {"C3"}
    assert quarantine.num_rows == 8 and set(quarantine[REASON].to_pylist()) == {"label_consistency"}
    assert "C3" not in clean["account_id"].to_pylist()


def test_unlabeled_entities_alone_pass_and_are_reported():
    rows = make_rows()
    for i in range(8):
        _relabel(rows, "A1", i, None)
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    result = report.result("label_consistency")
    assert result.status == "pass" and report.failed() == []
    assert result.details["unlabeled_entities"] == 1
    assert "no label" in result.message


def test_checks_of_unmapped_columns_are_skipped_with_the_key_to_set():
    schema = SchemaConfig(seq=None, label=None)
    table = make_events().drop_columns(["seq_no", "label"])
    report, _, _ = run_contract(table, schema, config(), NOW)
    assert failing(report) == set()
    assert report.result("label_consistency").status == "skipped"
    assert "data.schema.label is null" in report.result("label_consistency").message
    assert report.result("seq_order").status == "skipped"
    assert "data.schema.seq is null" in report.result("seq_order").message


def _equal_times_seq_backwards(rows: list[dict]) -> None:
    """C3's events all at one time, its seq numbers running backwards in arrival order."""
    positions = [i for i, r in enumerate(rows) if r["account_id"] == "C3"]
    when = rows[positions[0]]["event_time"]
    for n, i in enumerate(positions):
        rows[i]["event_time"] = when
        rows[i]["seq_no"] = len(positions) - n


def test_equal_times_with_seq_running_backwards_fail_seq_order_only():
    # time_order sees no decrease, duplicates no repeat, seq_gaps the numbers 1..8: only
    # seq_order sees that arrival and seq disagree where time cannot decide.
    rows = make_rows()
    _equal_times_seq_backwards(rows)
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    assert failing(report) == {"seq_order"}
    result = report.result("seq_order")
    assert (result.violating_rows, result.violating_entities) == (7, 1)
    assert result.sample[0]["entity"] == "C3" and result.sample[0]["earlier_seq"] == 8
    assert "seq and time disagree" in result.message


def test_seq_that_decreases_while_time_increases_fails_seq_order_only():
    rows = make_rows()
    a, b = nth(rows, "A1", 3), nth(rows, "A1", 4)
    rows[a]["seq_no"], rows[b]["seq_no"] = rows[b]["seq_no"], rows[a]["seq_no"]
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    assert failing(report) == {"seq_order"}
    assert report.result("seq_order").violating_rows == 1


def test_equal_times_in_seq_order_pass():
    rows = make_rows()
    positions = [i for i, r in enumerate(rows) if r["account_id"] == "C3"]
    for i in positions:
        rows[i]["event_time"] = rows[positions[0]]["event_time"]
    report, _, _ = run_contract(table_from_rows(rows), SCHEMA, config(), NOW)
    assert failing(report) == set()


def test_late_events_is_skipped_with_the_fix_when_arrival_order_is_unknown():
    rows = make_rows()
    _late(rows)
    table = table_from_rows(rows)
    report, _, _ = run_contract(table, SCHEMA, config(), NOW, arrival_known=False)
    result = report.result("late_events")
    assert result.status == "skipped" and report.failed() == []
    assert result.message.startswith("no arrival column mapped: set data.schema.arrival")
    assert "file row order is not taken as arrival order" in result.message


def test_summary_names_columns_as_columns_and_counts_entities_of_null_time_rows():
    rows = make_rows()
    _null_keys(rows)  # one row without an entity key, one (of A1... ) without a time
    table = table_from_rows(rows)
    table = table.set_column(8, "label", pc.cast(table["label"], pa.float64()))
    report, _, _ = run_contract(table, SCHEMA, config(), NOW)
    text = report.summary()
    assert "FAILED types: 1 column(s) - label: double" in text
    assert "e.g. columns: 'label'" in text
    assert "entities: 'label'" not in text
    key_nulls = report.result("key_nulls")
    assert (key_nulls.violating_rows, key_nulls.violating_entities) == (2, 1)
    assert "FAILED key_nulls: 2 row(s), 1 entity" in text


def _as_request(table: pa.Table) -> EventColumns:
    """A table's rows, row for row, as the columns a scoring request becomes."""
    return EventColumns(
        names=["all"],
        group=np.zeros(table.num_rows, dtype=np.int64),
        time_us=pc.cast(table["event_time"], pa.int64()).to_numpy(),
        seq=table["seq_no"].to_numpy(),
        numeric={"amount": table["amount"].to_numpy()},
        categorical={c: pc.cast(table[c], pa.string()).to_pylist() for c in SCHEMA.categorical},
    )


def test_the_validate_stage_and_the_endpoint_flag_the_same_rows_for_the_same_reason():
    from data_checks.rules import SERVING_CHECKS, EventRules, serving_contract

    rows = make_rows()
    rows[3]["amount"] = 1e308
    rows[2]["seq_no"] = -5  # C3's first: its numbers then run -5, 2, 3, ... with no gap
    rows[9]["channel"] = "crypto_kiosk"
    rows[nth(rows, "D4", 4)]["event_time"] = datetime(2099, 1, 1, tzinfo=UTC)
    rows[nth(rows, "A1", 6)]["event_time"] = datetime(1990, 1, 1, tzinfo=UTC)
    rows[14]["amount"] = -0.5
    table = table_from_rows(rows)
    cfg = config(**{name: {"policy": "quarantine"} for name in SERVING_CHECKS})
    report, _, quarantine = run_contract(table, SCHEMA, cfg, NOW)
    assert report.failed() == []
    by_validate = dict(
        zip(quarantine["_arrival"].to_pylist(), quarantine[REASON].to_pylist(), strict=True)
    )
    assert len(by_validate) == 6 and set(by_validate.values()) == set(SERVING_CHECKS)

    types = {c: table[c].type for c in SCHEMA.categorical}
    rules = EventRules(serving_contract(cfg, SCHEMA, types), SCHEMA)
    verdict = rules.check(_as_request(table), NOW, limit=100)
    assert {v.row: v.check for v in verdict.violations} == by_validate
    assert verdict.count == 6
    said = {v.row: v.message for v in verdict.violations}
    assert said[3] == (
        "value_ranges: 1e+308 is above the max 1000000 of amount (validate.ranges.amount)"
    )
    assert said[14] == "value_ranges: -0.5 is below the min 0 of amount (validate.ranges.amount)"
    said = {v.check: v.message for v in verdict.violations}
    assert said["seq_negative"].startswith("seq_negative: seq_no=-5 is below 0")
    assert "'crypto_kiosk' is not in the domain of channel" in said["categorical_domain"]
    assert said["time_floor"].startswith("time_floor: event_time 1990-01-01T00:00:00Z is before")
    assert "validate.checks.future_timestamps.max_ahead" in said["future_timestamps"]


def test_only_enabled_checks_reach_the_manifest_and_domains_match_as_validate_does():
    from data_checks.rules import serving_contract

    cfg = ValidateConfig(
        domains={"channel": CHANNELS, "mcc": [5411, "5812", "not a code"], "label": [0, 1]},
        ranges={"amount": [0, None], "label": [0, 1]},
        checks={"value_ranges": {"enabled": False}, "time_floor": {"policy": "quarantine"}},
    )
    types = {"channel": pa.dictionary(pa.int32(), pa.string()), "mcc": pa.int64()}
    contract = serving_contract(cfg, SCHEMA, types)
    assert contract.checks == (
        "categorical_domain", "seq_negative", "future_timestamps", "time_floor",
    )  # fmt: skip
    assert contract.ranges == {"amount": (0, None)}  # numeric features only
    # An integer column's domain as the strings a request carries; "not a code" can never occur.
    assert contract.domains == {"channel": tuple(CHANNELS), "mcc": ("5411", "5812")}
    assert contract.domain_policy == "refuse" and contract.max_ahead_s == 300.0
    no_seq = serving_contract(cfg, SchemaConfig(seq=None), types)
    assert "seq_negative" not in no_seq.checks
