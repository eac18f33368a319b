"""Per-entity ordering checks on small hand-built arrays and tables (no Great Expectations)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from data_checks import group_scan, ordering
from tests.unit.test_contract import T0, make_rows, table_from_rows

COLUMNS = {"account_id", "event_time", "seq_no", "amount", "_arrival"}


def index(table: pa.Table) -> ordering.EventIndex:
    return ordering.build_index(table, "account_id", "event_time", "seq_no", COLUMNS)


def tiny(
    entities: list[str | None], hours: list[float | None], seqs: list[int] | None = None
) -> pa.Table:
    """A table in arrival order from parallel lists (None = null)."""
    times = [None if h is None else T0 + timedelta(hours=h) for h in hours]
    return pa.table(
        {
            "account_id": pa.array(entities, pa.string()),
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "seq_no": pa.array(seqs if seqs is not None else range(len(entities)), pa.int64()),
            "amount": pa.array([1.0] * len(entities)),
            "_arrival": pa.array(range(len(entities)), pa.int64()),
        }
    )


def seq_of(table: pa.Table) -> np.ndarray:
    return table["seq_no"].to_numpy()


def test_grouping_order_is_entity_then_arrival():
    rng = np.random.default_rng(0)
    keys = [f"e{k}" for k in rng.integers(0, 7, size=200)]
    keys[5] = None
    ix = index(tiny(keys, list(range(200))))
    codes = ix.codes[ix.order]
    assert np.all(np.diff(codes) >= 0)  # entities contiguous (codes ascending)
    same = codes[1:] == codes[:-1]
    assert np.all(ix.order[1:][same] > ix.order[:-1][same])  # arrival order inside
    assert sorted(ix.order.tolist()) == list(range(200))
    assert not ix.valid[5] and ix.valid.sum() == 199


@pytest.mark.parametrize("span", [1_000, 2**61, 2**62 + 5])
def test_below_running_max_matches_a_per_group_loop(span):
    # 2**61 forces several lifted blocks; beyond 2**62 every group is its own block.
    rng = np.random.default_rng(1)
    groups = np.sort(rng.integers(0, 40, size=400)).astype(np.int32)
    values = rng.integers(-(span // 2), span // 2, size=400, dtype=np.int64)
    bad, behind = group_scan.below_running_max(values, groups)
    expected, gaps = np.zeros(400, dtype=bool), []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        running = np.maximum.accumulate(values[idx])
        expected[idx] = values[idx] < running
        gaps += (running - values[idx])[values[idx] < running].tolist()
    assert np.array_equal(bad, expected)
    assert behind.tolist() == gaps


def test_time_order_flags_rows_below_the_running_max_so_the_rest_is_ordered():
    table = tiny(["a", "b", "a", "a", "b", "a", "a"], [1, 2, 5, 3, 4, 4, 6])
    found = ordering.time_order(index(table), np.zeros(7, dtype=bool), k=5)
    assert found.rows.tolist() == [3, 5]  # 3 h and 4 h arrive after 5 h in entity a
    assert found.violating_entities == 1
    assert found.sample[0]["behind_previous_s"] == 2 * 3600
    hours = np.array([1, 2, 5, 3, 4, 4, 6])
    kept_a = np.setdiff1d([0, 2, 3, 5, 6], found.rows)
    assert hours[kept_a].tolist() == [1, 5, 6]  # what quarantine leaves is non-decreasing


def test_time_order_ignores_rows_excluded_as_future_or_before_floor():
    table = tiny(["a"] * 5, [1, 2, 24 * 365 * 70, 3, 4])
    ix = index(table)
    assert ordering.time_order(ix, np.zeros(5, dtype=bool), k=5).rows.tolist() == [3, 4]
    exclude = np.zeros(5, dtype=bool)
    exclude[2] = True
    assert ordering.time_order(ix, exclude, k=5).violating_rows == 0


def test_duplicates_keep_the_first_copy_and_find_non_adjacent_ones():
    table = tiny(
        ["a", "a", "a", "b", "a", "b", "a"],
        [1, 2, 1, 1, 2, 1, 3],
        [1, 2, 1, 1, 9, 2, 3],
    )
    found = ordering.duplicates(index(table), seq_of(table), k=5)
    # row 2 repeats row 0 across an out-of-order entity; (a, 2h) has two seqs; b differs by seq
    assert found.rows.tolist() == [2]
    assert found.sample[0]["duplicate_of_row"] == 0
    without_seq = ordering.duplicates(index(table), None, k=5)
    assert without_seq.rows.tolist() == [2, 4, 5]


def test_duplicates_after_an_out_of_range_time_are_still_found():
    # Year 2099 at row 1 must not make every later row of "a" a candidate, nor hide a copy.
    table = tiny(["a"] * 6, [1, 24 * 365 * 74, 2, 2, 24 * 365 * 74, 3], [1, 2, 3, 3, 2, 4])
    exclude = np.array([False, True, False, False, True, False])
    found = ordering.duplicates(index(table), seq_of(table), k=5, exclude=exclude)
    assert found.rows.tolist() == [3, 4]
    assert [s["duplicate_of_row"] for s in found.sample] == [2, 1]
    ties_and_drops = group_scan.not_above_earlier(np.array([1, 3, 3, 2, 5]), np.zeros(5, np.int32))
    assert ties_and_drops.tolist() == [False, False, True, True, False]


def test_seq_gaps_count_missing_numbers_and_take_the_whole_entity():
    table = tiny(
        ["a", "a", "a", "b", "b", "b", "c", "c", "c"],
        list(range(9)),
        [1, 2, 5, 3, 1, 2, 7, 7, 8],  # a skips 3 and 4; b arrives unsorted; c repeats
    )
    valid = np.ones(9, dtype=bool)
    found = ordering.seq_gaps(index(table), seq_of(table), valid, k=5)
    assert found.rows.tolist() == [0, 1, 2]
    assert found.violating_entities == 1
    assert found.details["missing_seq_numbers"] == 2
    assert found.sample == [{"entity": "a", "after_seq": 2, "next_seq": 5, "missing_in_entity": 2}]


def test_late_events_follow_the_global_arrival_order_across_parts():
    rows = make_rows()
    late = {**rows[20], "account_id": "LATE", "seq_no": 1}
    late["event_time"] -= timedelta(days=3)
    rows.insert(21, late)
    table = table_from_rows(rows)
    ix = index(table)
    found = ordering.late_events(ix, None, 86400.0, np.zeros(table.num_rows, bool), k=5)
    assert found.rows.tolist() == [21]
    assert found.sample[0]["behind_watermark_s"] >= 3 * 86400
    # Parts split by entity: LATE's part comes first on disk, its _arrival still says 21.
    parts = np.r_[21, np.delete(np.arange(table.num_rows), 21)]
    shuffled = table.take(pa.array(parts))
    arrival = ordering.arrival_order(shuffled)
    assert arrival is not None and shuffled["_arrival"].to_numpy()[arrival].tolist() == list(
        range(33)
    )
    found = ordering.late_events(index(shuffled), arrival, 86400.0, np.zeros(33, bool), k=5)
    assert found.rows.tolist() == [0]
    assert ordering.arrival_order(table) is None  # already in arrival order: no sort


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_future_and_floor_limits_are_exact_in_every_time_unit(unit):
    now = datetime(2025, 6, 1, tzinfo=UTC)
    times = [
        now - timedelta(days=1),
        now + timedelta(seconds=299),
        now + timedelta(seconds=301),  # beyond max_ahead (300 s)
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),  # just before the floor
        datetime(2000, 1, 1, tzinfo=UTC),  # exactly the floor: allowed
    ]
    table = pa.table(
        {
            "account_id": pa.array(["a"] * 5),
            "event_time": pa.array(times, pa.timestamp(unit, tz="UTC")),
        }
    )
    ix = ordering.build_index(table, "account_id", "event_time", None, {"account_id", "event_time"})
    assert ordering.future_timestamps(ix, now, 300.0, k=5).rows.tolist() == [2]
    floor = datetime(2000, 1, 1, tzinfo=UTC)
    assert ordering.time_floor(ix, floor, k=5).rows.tolist() == [3]


def test_key_nulls_and_non_finite_numbers():
    table = tiny(["a", None, "a", "b"], [1, 2, None, 3])
    table = table.set_column(3, "amount", pa.array([1.0, np.nan, None, -np.inf]))
    ix = index(table)
    nulls = ordering.key_nulls(ix, "account_id", "event_time", k=5)
    assert nulls.rows.tolist() == [1, 2]
    assert nulls.details == {"null_entity": 1, "null_time": 1}
    finite = ordering.numeric_finite(ix, ["amount"], k=5)
    assert finite.rows.tolist() == [1, 3]  # a null amount is missing, not NaN
    assert {str(s["amount"]) for s in finite.sample} == {"nan", "-inf"}
    # Null-key rows are excluded from the per-entity checks.
    assert ordering.time_order(ix, np.zeros(4, bool), k=5).violating_rows == 0


def test_integer_entity_keys_and_chunked_columns_group_the_same():
    table = tiny(["x", "y", "x", "y"], [1, 2, 3, 0.5])
    ints = table.set_column(0, "account_id", pa.array([7, 9, 7, 9], pa.int64()))
    chunked = pa.concat_tables([ints.slice(0, 2), ints.slice(2)])
    for t in (table, ints, chunked):
        found = ordering.time_order(index(t), np.zeros(4, bool), k=5)
        assert found.rows.tolist() == [3]


def test_seq_order_flags_seq_below_an_earlier_arrival_unless_time_order_owns_the_row():
    # a: equal times, seq backwards; b: time up, seq down; c: time down (time_order's row);
    # d: equal times in seq order, then a later time: fine.
    table = tiny(
        ["a", "a", "a", "b", "b", "c", "c", "d", "d", "d"],
        [1, 1, 1, 1, 2, 5, 4, 1, 1, 2],
        [3, 2, 1, 2, 1, 1, 2, 1, 2, 3],
    )
    ix = index(table)
    no_exclude, seq_valid = np.zeros(10, bool), np.ones(10, bool)
    found = ordering.seq_order(ix, seq_of(table), seq_valid, no_exclude, k=5)
    assert found.rows.tolist() == [1, 2, 4]
    assert found.violating_entities == 2
    assert [s["earlier_seq"] for s in found.sample] == [3, 3, 2]
    time_order_rows = ordering.time_order(ix, no_exclude, k=5).rows
    assert time_order_rows.tolist() == [6]
    given = ordering.seq_order(ix, seq_of(table), seq_valid, no_exclude, 5, time_order_rows)
    assert given.rows.tolist() == found.rows.tolist()  # time_order's rows, passed or computed
    # Rows out of range in time, and rows without a seq, are not compared.
    exclude = np.zeros(10, bool)
    exclude[0] = True
    seq_valid[3] = False
    found = ordering.seq_order(ix, seq_of(table), seq_valid, exclude, k=5)
    assert found.rows.tolist() == [2]


def test_label_consistency_compares_non_null_labels_within_each_entity():
    table = tiny(["a", "b", "a", "c", "b", None, "a"], [1, 2, 3, 4, 5, 6, 7])
    table = table.append_column("label", pa.array(["x", "y", None, None, "z", "w", "x"]))
    ix = index(table)
    found = ordering.label_consistency(ix, "label", k=5)
    assert found.rows.tolist() == [1, 4]  # b: y and z; a: x and a null is one label
    assert found.violating_entities == 1
    assert found.sample == [{"entity": "b", "labels": {"y": 1, "z": 1}, "rows": 2}]
    assert found.details["unlabeled_entities"] == 1  # c; the null key is no entity
    assert found.details["labeled_entities"] == 2


@pytest.mark.parametrize(
    "labels",
    [
        pa.array([True, False, True]),
        pa.array([1, 2, 1], pa.int64()),
        pa.chunked_array(
            [pa.array(["x"]).dictionary_encode(), pa.array(["y", "x"]).dictionary_encode()]
        ),
    ],
)
def test_label_consistency_reads_booleans_integers_and_chunked_dictionaries(labels):
    table = tiny(["a", "b", "a"], [1, 2, 3]).append_column("label", labels)
    found = ordering.label_consistency(index(table), "label", k=5)
    assert found.violating_entities == 0 and found.details["labeled_entities"] == 2


def test_entity_counts_leave_out_rows_without_an_entity_key():
    table = tiny(["a", None, "a", "b"], [1, 2, None, None])
    ix = index(table)
    nulls = ordering.key_nulls(ix, "account_id", "event_time", k=5)
    assert (nulls.violating_rows, nulls.violating_entities) == (3, 2)
    assert ordering.entity_count(ix, np.array([1])) == 0
