"""The ingest stage: generated and user files, UTC times, clear errors, atomic parts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines.config import Params
from pipelines.ingest import IngestError, run
from pipelines.params.data import DataConfig, GenerateConfig
from seqcore.io import read_events
from seqcore.schema import ARRIVAL


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

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(RuntimeError):
        run(dataclasses.replace(params, seed=99), tmp_path / "events")
    assert read_events(tmp_path / "events").equals(before)
    assert [p.name for p in tmp_path.iterdir()] == ["events"]  # no temporary leftovers


def test_data_config_errors_name_the_key():
    with pytest.raises(ValueError, match="data.path"):
        DataConfig(source="file", path=None)
    with pytest.raises(ValueError, match="data.source"):
        DataConfig(source="ftp")
