"""The ingest stage: generated and user files, UTC times, clear errors, atomic parts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines.config import Params
from pipelines.ingest import IngestError, run
from pipelines.params.data import DataConfig, GenerateConfig
from seqcore.config import ConfigError
from seqcore.schema import ARRIVAL
from seqcore.store import read_events


def _params(default_params: Params, **data_changes) -> Params:
    data = dataclasses.replace(default_params.data, **data_changes)
    return dataclasses.replace(default_params, data=data)


def _user_table(n: int = 12) -> pa.Table:
    return pa.table(
        {
            "account_id": [f"u{i % 3}" for i in range(n)],
            "event_time": [f"2025-03-01 0{i % 10}:00:00" for i in range(n)],
            "seq_no": list(range(n)),
            "amount": [float(i) for i in range(n)],
            "mcc": ["5411"] * n,
            "channel": ["pos"] * n,
            "country": ["US"] * n,
            "device": ["web"] * n,
            "label": [0] * n,
        }
    )


def test_generated_source_writes_events_with_arrival(default_params, tmp_path):
    params = _params(default_params, generate=GenerateConfig(n_entities=200))
    summary = run(params, tmp_path / "events", tmp_path / "ingest.json")
    table = read_events(tmp_path / "events")
    assert summary["rows"] == table.num_rows > 0
    assert table[ARRIVAL].to_pylist() == list(range(table.num_rows))
    assert table["event_time"].type == pa.timestamp("us", tz="UTC")
    assert (tmp_path / "ingest.json").exists()


def test_large_tables_are_split_by_entity_hash_keeping_arrival_order(default_params, tmp_path):
    params = _params(default_params, generate=GenerateConfig(n_entities=300), rows_per_part=3000)
    summary = run(params, tmp_path / "events")
    parts = sorted((tmp_path / "events").glob("part-*.parquet"))
    assert summary["parts"] == len(parts) > 1
    seen: set[str] = set()
    for part in parts:
        table = pq.read_table(part)
        arrival = table[ARRIVAL].to_numpy()
        assert (np.diff(arrival) > 0).all()  # arrival order kept inside a part
        entities = set(table["account_id"].to_pylist())
        assert not entities & seen  # an entity lives in exactly one part
        seen |= entities
    total = read_events(tmp_path / "events")
    assert sorted(total[ARRIVAL].to_pylist()) == list(range(summary["rows"]))


def test_csv_with_naive_times_is_normalised_from_the_source_zone(default_params, tmp_path):
    src = tmp_path / "events.csv"
    pacsv.write_csv(_user_table(), src)
    params = _params(default_params, source="file", path=str(src), source_timezone="Europe/Berlin")
    run(params, tmp_path / "events")
    table = read_events(tmp_path / "events")
    first = table["event_time"][0].as_py()
    assert first.tzinfo is not None and first.hour == 23  # 00:00 Berlin (UTC+1) = 23:00 UTC


def test_parquet_with_offset_strings_and_file_url(default_params, tmp_path):
    src = tmp_path / "events.parquet"
    table = _user_table()
    times = pa.array([f"2025-03-01T0{i % 10}:00:00+02:00" for i in range(table.num_rows)])
    pq.write_table(table.set_column(1, "event_time", times), src)
    params = _params(default_params, source="file", path=f"file://{src}")
    run(params, tmp_path / "events")
    out = read_events(tmp_path / "events")
    assert out["event_time"][0].as_py().hour == 22


def test_missing_mapped_column_is_named(default_params, tmp_path):
    src = tmp_path / "events.parquet"
    pq.write_table(_user_table().drop_columns(["device"]), src)
    params = _params(default_params, source="file", path=str(src))
    with pytest.raises(IngestError, match="device"):
        run(params, tmp_path / "events")
    assert not (tmp_path / "events").exists()


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("amount", ["x"] * 12, "'amount' .*expected a number"),
        ("event_time", ["not a time"] * 12, "'event_time' .*ISO-8601"),
        ("seq_no", [0.5] * 12, "'seq_no' .*integer"),
    ],
)
def test_mistyped_mapped_column_is_named(default_params, tmp_path, column, values, message):
    src = tmp_path / "events.parquet"
    table = _user_table()
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, column, pa.array(values)), src)
    params = _params(default_params, source="file", path=str(src))
    with pytest.raises(IngestError, match=message):
        run(params, tmp_path / "events")


def test_missing_file_is_named(default_params, tmp_path):
    params = _params(default_params, source="file", path=str(tmp_path / "nope.parquet"))
    with pytest.raises(IngestError, match="nope.parquet"):
        run(params, tmp_path / "events")


def test_rerun_replaces_output_atomically(default_params, tmp_path, monkeypatch):
    params = _params(default_params, generate=GenerateConfig(n_entities=50))
    run(params, tmp_path / "events")
    before = read_events(tmp_path / "events")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", boom)  # a part's first row group
    with pytest.raises(RuntimeError, match="disk full"):
        run(dataclasses.replace(params, seed=99), tmp_path / "events")
    assert read_events(tmp_path / "events").equals(before)
    assert [p.name for p in tmp_path.iterdir()] == ["events"]  # no temporary leftovers


def test_data_config_errors_name_the_key():
    with pytest.raises(ValueError, match="data.path"):
        DataConfig(source="file", path=None)
    with pytest.raises(ValueError, match="data.source"):
        DataConfig(source="ftp")


# --------------------------------------------------------------------------- any events table


def _file_params(default_params: Params, path, **schema_changes) -> Params:
    schema = dataclasses.replace(default_params.data.schema, **schema_changes)
    return _params(default_params, source="file", path=str(path), schema=schema)


def test_csv_keys_categories_and_labels_are_read_as_written(default_params, tmp_path):
    src = tmp_path / "events.csv"
    src.write_text(
        "account_id,event_time,seq_no,amount,mcc,channel,country,device,label\n"
        "0042,2025-03-01T00:00:00,1,1.5,0001,pos,NA,web,0\n"
        "42,2025-03-01T00:00:00,1,2,5411,pos,US,web,\n"
        "0042,2025-03-01T01:00:00,2,3,5411,pos,US,web,0\n"
    )
    run(_file_params(default_params, src), tmp_path / "events")
    table = read_events(tmp_path / "events")
    assert table["account_id"].to_pylist() == ["0042", "42", "0042"]  # two entities
    assert table["mcc"].to_pylist()[0] == "0001"
    assert table["country"].to_pylist()[0] == "NA"  # a country code, not a missing value
    assert table["label"].type == pa.string() and table["label"].to_pylist() == ["0", None, "0"]
    assert table["amount"].type == pa.float64() and table["seq_no"].type == pa.int64()


def test_mixed_naive_and_offset_times_name_the_rows_of_each_kind(default_params, tmp_path):
    src = tmp_path / "events.csv"
    table = _user_table(6).drop_columns(["event_time"])
    times = [
        "2025-05-20T12:51:40.616287",
        "2025-05-20T12:51:40+05:00",
        "2025-05-20T12:52:00",
        "yesterday",
        "2025-05-20T12:53:00Z",
        "2025-05-20T12:54:00",
    ]
    pacsv.write_csv(table.add_column(1, "event_time", pa.array(times)), src)
    with pytest.raises(IngestError) as caught:
        run(_file_params(default_params, src), tmp_path / "events")
    message = str(caught.value)
    assert "column 'event_time' (time; rows numbered from 1 in file order)" in message
    assert "3 row(s) have no UTC offset (row 1: '2025-05-20T12:51:40.616287', row 3:" in message
    assert "2 have one (row 2: '2025-05-20T12:51:40+05:00', row 5:" in message
    assert "naive times are read in data.source_timezone" in message
    assert "1 row(s) are not ISO-8601 times (row 4: 'yesterday')" in message
    assert not (tmp_path / "events").exists()


def test_mapped_columns_missing_from_a_file_name_their_keys(default_params, tmp_path):
    src = tmp_path / "events.parquet"
    pq.write_table(_user_table(), src)
    params = _file_params(
        default_params,
        src,
        categorical=("mcc", "channel", "country", "devise"),
        arrival="ingest_ts",
    )
    with pytest.raises(IngestError) as caught:
        run(params, tmp_path / "events")
    message = str(caught.value)
    assert "data.schema.categorical: 'devise'" in message
    assert "data.schema.arrival: 'ingest_ts'" in message
    assert "device" in message  # the file's columns are listed
    assert not (tmp_path / "events").exists()


def test_a_generated_schema_naming_a_column_the_generator_lacks_stops_ingest(
    default_params, tmp_path
):
    schema = dataclasses.replace(default_params.data.schema, numeric=("value",), forecast=None)
    params = _params(default_params, schema=schema)
    with pytest.raises(ConfigError, match=r"data\.schema\.numeric=\['value'\]: no column 'value'"):
        run(params, tmp_path / "events")
    assert not (tmp_path / "events").exists()


def test_float_labels_holding_whole_numbers_become_integers(default_params, tmp_path):
    src = tmp_path / "events.parquet"
    labels = pa.array([0.0, np.nan, 1.0] * 4)  # pandas writes integer labels with NaN so
    pq.write_table(_user_table().set_column(8, "label", labels), src)
    run(_file_params(default_params, src), tmp_path / "events")
    out = read_events(tmp_path / "events")
    assert out["label"].type == pa.int64()
    assert out["label"].to_pylist()[:3] == [0, None, 1]
    pq.write_table(_user_table().set_column(8, "label", pa.array([0.5] * 12)), src)
    with pytest.raises(IngestError, match=r"column 'label' \(label\) holds 12 value\(s\) that"):
        run(_file_params(default_params, src), tmp_path / "events2")


def test_rows_are_ordered_by_the_mapped_arrival_column(default_params, tmp_path):
    src = tmp_path / "events.parquet"
    table = _user_table(6).append_column("offset", pa.array([30, 10, 20, 10, 50, 40]))
    pq.write_table(table, src)
    run(_file_params(default_params, src, arrival="offset"), tmp_path / "events")
    out = read_events(tmp_path / "events")
    assert out["offset"].to_pylist() == [10, 10, 20, 30, 40, 50]
    assert out["seq_no"].to_pylist() == [1, 3, 2, 0, 5, 4]  # ties keep file order
    assert out[ARRIVAL].to_pylist() == list(range(6))

    times = ["2025-03-01T10:00:00+02:00", "2025-03-01T07:30:00Z", "2025-03-01T09:00:00+01:00"]
    stamped = _user_table(3).append_column("ingested", pa.array(times))
    pq.write_table(stamped, src)
    run(_file_params(default_params, src, arrival="ingested"), tmp_path / "events")
    assert read_events(tmp_path / "events")["seq_no"].to_pylist() == [1, 0, 2]


def test_an_arrival_column_with_gaps_is_refused_naming_the_rows(default_params, tmp_path):
    src = tmp_path / "events.parquet"
    pq.write_table(_user_table(4).append_column("offset", pa.array([1, None, 3, None])), src)
    with pytest.raises(
        IngestError, match=r"'offset' \(arrival\) is empty in 2 row\(s\) \(row 2, row 4"
    ):
        run(_file_params(default_params, src, arrival="offset"), tmp_path / "events")


def _generated_csv(tmp_path, n_entities: int = 300, arrival: bool = False):
    """A generated log written as a user would export it: sorted by account, then time."""
    from pipelines.generate import generate_events

    table = generate_events(GenerateConfig(n_entities=n_entities), seed=7)
    if arrival:  # the generator's rows are in arrival order: record it as a column
        table = table.append_column("ingest_offset", pa.array(np.arange(table.num_rows)))
    table = table.sort_by([("account_id", "ascending"), ("event_time", "ascending")])
    columns = {
        name: pc.cast(col, col.type.value_type) if pa.types.is_dictionary(col.type) else col
        for name, col in zip(table.column_names, table.columns, strict=True)
    }
    src = tmp_path / "export.csv"
    pacsv.write_csv(pa.table(columns), src)
    return src


@pytest.mark.parametrize("arrival", [False, True], ids=["no_arrival_column", "arrival_column"])
def test_a_csv_sorted_by_account_then_time_passes_ingest_and_validate(
    default_params, tmp_path, arrival
):
    """Row order of an export is not arrival order: read as such, late_events failed 298 of
    300 entities of a clean log. Without an arrival column it is skipped, saying why; with
    one, rows are put back into arrival order and it passes."""
    from data_checks.contract import NO_ARRIVAL
    from pipelines import validate

    src = _generated_csv(tmp_path, arrival=arrival)
    params = _file_params(default_params, src, arrival="ingest_offset" if arrival else None)
    run(params, tmp_path / "events")
    report = validate.run(
        params,
        tmp_path / "events",
        tmp_path / "validated",
        tmp_path / "q.parquet",
        tmp_path / "validation.json",
        tmp_path / "docs",
    )
    statuses = {r.name: r.status for r in report.results}
    assert report.failed() == [], report.summary()
    assert set(statuses.values()) == ({"pass"} if arrival else {"pass", "skipped"})
    late = report.result("late_events")
    if arrival:
        assert late.status == "pass"
    else:
        assert late.status == "skipped" and late.message == NO_ARRIVAL
        assert [n for n, s in statuses.items() if s == "skipped"] == ["late_events"]
