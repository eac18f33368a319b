"""The validate stage's streamed outputs: the clean rows are gathered and written chunk by
chunk (``data_checks.split``), yet the files hold exactly the rows, order and schema of one
whole gather, and a failed or interrupted run publishes nothing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_checks import split as split_module
from data_checks.contract import REASON, Split, check_contract, run_contract
from pipelines import validate
from pipelines.config import Params, params_from_dict
from seqcore.io import write_parquet_chunks
from tests.unit.test_contract import (
    NOW,
    SCHEMA,
    _duplicate,
    _out_of_order,
    _seq_gap,
    config,
    make_rows,
    table_from_rows,
)

QUARANTINE_ALL = {n: {"policy": "quarantine"} for n in ("time_order", "duplicates", "seq_gaps")}


def faulty_rows() -> list[dict]:
    rows = make_rows()
    _out_of_order(rows)
    _seq_gap(rows)
    _duplicate(rows)
    return rows


def expected_clean(table: pa.Table, quarantined: set[int]) -> pa.Table:
    """Kept rows grouped by entity (in order of first arrival), arrival order within one."""
    entity, arrival = table["account_id"].to_pylist(), table["_arrival"].to_pylist()
    first = {e: i for i, e in reversed(list(enumerate(entity)))}
    kept = [i for i in range(table.num_rows) if arrival[i] not in quarantined]
    return table.take(sorted(kept, key=lambda i: (first[entity[i]], arrival[i])))


@pytest.mark.parametrize("chunk_rows", [1, 5, 1000])
def test_chunks_hold_the_rows_of_one_whole_gather(chunk_rows):
    table = table_from_rows(faulty_rows())
    report, split = check_contract(table, SCHEMA, config(**QUARANTINE_ALL), NOW)
    assert report.failed() == []
    quarantine = pa.concat_tables(split.quarantine_chunks(chunk_rows))
    clean = pa.concat_tables(split.clean_chunks(chunk_rows))
    assert len(list(split.clean_chunks(chunk_rows))) == -(-split.clean_count // chunk_rows)
    assert clean.equals(expected_clean(table, set(quarantine["_arrival"].to_pylist())))
    assert clean.schema == table.schema and quarantine.schema == split.quarantine_schema
    assert (clean.num_rows, quarantine.num_rows) == (report.rows_out, report.rows_quarantined)
    assert quarantine.equals(split.quarantine())
    assert quarantine[REASON].to_pylist().count("time_order") == 1


def stage_params(checks: dict) -> Params:
    return params_from_dict({"validate": {"now": NOW.isoformat(), "checks": checks}})


def run_stage(tmp_path: Path, rows: list[dict], checks: dict) -> tuple:
    events = tmp_path / "events"
    events.mkdir(exist_ok=True)
    pq.write_table(table_from_rows(rows), events / "part-00000.parquet")
    out = tmp_path / "validated"
    report = validate.run(
        stage_params(checks),
        events,
        out,
        tmp_path / "q.parquet",
        tmp_path / "r.json",
        tmp_path / "docs",
    )
    return report, out


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_stage_streams_the_clean_file_in_row_groups_equal_to_one_gather(tmp_path, monkeypatch):
    monkeypatch.setattr(split_module, "CHUNK_ROWS", 4)
    rows = faulty_rows()
    report, out = run_stage(tmp_path, rows, QUARANTINE_ALL)
    assert report.failed() == []
    written = pq.ParquetFile(out / "part-00000.parquet")
    _, clean, quarantine = run_contract(
        table_from_rows(rows), SCHEMA, stage_params(QUARANTINE_ALL).validate, NOW
    )
    assert written.metadata.num_row_groups == -(-clean.num_rows // 4) > 1
    assert written.read().equals(clean)
    assert pq.read_table(tmp_path / "q.parquet").equals(quarantine)
    assert leftovers(out) == []


def test_failed_run_keeps_the_previous_output_and_leaves_no_temporary_file(tmp_path):
    _, out = run_stage(tmp_path, faulty_rows(), QUARANTINE_ALL)
    before = (out / "part-00000.parquet").read_bytes()
    report, _ = run_stage(tmp_path, faulty_rows(), {})  # time_order etc. fail now
    assert report.failed()
    assert (out / "part-00000.parquet").read_bytes() == before
    assert leftovers(out) == []


def test_interrupted_write_publishes_nothing(tmp_path, monkeypatch):
    intact = Split.clean_chunks

    def broken(self, chunk_rows=None):  # one chunk written, then the disk fills up
        yield next(intact(self, 2))
        raise OSError("disk full")

    monkeypatch.setattr(Split, "clean_chunks", broken)
    with pytest.raises(OSError, match="disk full") as raised:
        run_stage(tmp_path, make_rows(), {})
    assert any("part-00000.parquet" in note for note in raised.value.__notes__)
    assert not (tmp_path / "validated").exists() and leftovers(tmp_path) == []


def test_chunked_parquet_file_is_complete_or_absent(tmp_path):
    table = pa.table({"x": [1, 2, 3]})
    parts = [table.slice(0, 2), table.slice(2)]
    assert write_parquet_chunks(parts, table.schema, tmp_path / "a") == 3
    assert pq.read_table(tmp_path / "a").equals(table)
    assert write_parquet_chunks(iter([]), table.schema, tmp_path / "a") == 0
    empty = pq.ParquetFile(tmp_path / "a")  # one empty row group, as write_table writes
    assert empty.schema_arrow == table.schema and empty.metadata.num_row_groups == 1

    def failing():
        yield table
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_parquet_chunks(failing(), table.schema, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_users_file_without_an_arrival_column_skips_late_events_saying_why(tmp_path):
    from data_checks.contract import NO_ARRIVAL
    from pipelines.validate import arrival_known

    events = tmp_path / "events"
    events.mkdir()
    pq.write_table(table_from_rows(make_rows()), events / "part-00000.parquet")
    raw = {"validate": {"now": NOW.isoformat()}}
    as_file = {"data": {"source": "file", "path": "events.csv"}, **raw}
    with_arrival = {"data": {**as_file["data"], "schema": {"arrival": "ingested_at"}}, **raw}
    assert arrival_known(params_from_dict(raw))  # generated rows come in arrival order
    assert arrival_known(params_from_dict(with_arrival))
    params = params_from_dict(as_file)
    assert not arrival_known(params)
    args = (events, tmp_path / "out", tmp_path / "q.parquet", tmp_path / "r.json", tmp_path / "d")
    report = validate.run(params, *args)
    assert report.failed() == []
    late = report.result("late_events")
    assert late.status == "skipped" and late.message == NO_ARRIVAL
    assert '"late_events"' in (tmp_path / "r.json").read_text()
    assert NO_ARRIVAL in (tmp_path / "r.json").read_text()
