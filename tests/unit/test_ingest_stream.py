"""Ingest as a stream of record batches: many files, hive folders, batch boundaries that
change nothing, row numbers across batches, and memory bounded by the batch, not the table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines import ingest
from pipelines.config import Params
from pipelines.generate import generate_events
from pipelines.ingest import IngestError, run
from pipelines.params.data import GenerateConfig
from seqcore.schema import ARRIVAL
from seqcore.store import read_events


def _file_params(default_params: Params, path, **schema_changes) -> Params:
    schema = dataclasses.replace(default_params.data.schema, **schema_changes)
    data = dataclasses.replace(
        default_params.data, source="file", path=str(path), schema=schema, rows_per_part=700
    )
    return dataclasses.replace(default_params, data=data)


def _events(n_entities: int = 120, seed: int = 3) -> pa.Table:
    """Generated events with plain (not dictionary) columns and a shuffled arrival key."""
    table = generate_events(GenerateConfig(n_entities=n_entities), seed=seed)
    table = pa.table(
        {
            name: col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
            for name, col in zip(table.column_names, table.columns, strict=True)
        }
    )
    rng = np.random.default_rng(seed)
    return table.append_column("offset", pa.array(rng.integers(0, 500, table.num_rows)))


def _small_batches(monkeypatch, rows: int = 37) -> None:
    monkeypatch.setattr(ingest, "READ_BATCH_ROWS", rows)
    monkeypatch.setattr(ingest, "ROW_GROUP_ROWS", 3 * rows)
    monkeypatch.setattr(ingest, "BUFFER_BYTES", 64 * 1024)


def _parts(folder) -> list[pa.Table]:
    return [pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))]


@pytest.mark.parametrize("arrival", [None, "offset"])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_batch_boundaries_change_nothing(default_params, tmp_path, monkeypatch, arrival, fmt):
    table = _events()
    src = tmp_path / f"events.{fmt}"
    if fmt == "csv":
        pacsv.write_csv(table, src)
    else:
        pq.write_table(table, src, row_group_size=500)
    params = _file_params(default_params, src, arrival=arrival)
    whole = run(params, tmp_path / "whole")
    _small_batches(monkeypatch)
    streamed = run(params, tmp_path / "streamed")
    assert streamed == whole and whole["parts"] > 2
    for a, b in zip(_parts(tmp_path / "whole"), _parts(tmp_path / "streamed"), strict=True):
        assert a.equals(b)
        assert (np.diff(b[ARRIVAL].to_numpy()) > 0).all()  # arrival order inside a part
    if arrival is None:  # written as it streamed (a ranked part is rewritten in order)
        first = sorted((tmp_path / "streamed").glob("part-*"))[0]
        assert pq.ParquetFile(first).num_row_groups > 1
    out = read_events(tmp_path / "streamed")
    assert sorted(out[ARRIVAL].to_pylist()) == list(range(table.num_rows))
    if arrival:  # ranked by the column, ties in file order
        expected = np.argsort(table["offset"].to_numpy(), kind="stable")
        by_rank = out.sort_by(ARRIVAL)
        assert by_rank["offset"].to_pylist() == table["offset"].take(expected).to_pylist()


def test_a_folder_of_files_and_a_hive_folder(default_params, tmp_path):
    table = _events()
    third = table.num_rows // 3
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3):  # names sort as the rows come; _SUCCESS and hidden files are skipped
        pq.write_table(table.slice(i * third, third), folder / f"events-{i}.parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / ".events-0.parquet.crc").write_text("x")
    summary = run(_file_params(default_params, folder), tmp_path / "out")
    assert summary["rows"] == 3 * third
    out = read_events(tmp_path / "out").sort_by(ARRIVAL)
    assert out["seq_no"].to_pylist() == table.slice(0, 3 * third)["seq_no"].to_pylist()

    hive = tmp_path / "hive"
    day = np.where(np.arange(table.num_rows) < table.num_rows // 2, "2025-01-01", "2025-01-02")
    pq.write_to_dataset(table.append_column("day", pa.array(day)), hive, partition_cols=["day"])
    summary = run(_file_params(default_params, hive), tmp_path / "out")
    out = read_events(tmp_path / "out")
    assert summary["rows"] == table.num_rows
    # Each row carries its own folder's key (rows come folder by folder, not in table order).
    keys = zip(table["account_id"].to_pylist(), table["seq_no"].to_pylist(), strict=True)
    expected = dict(zip(keys, day, strict=True))
    got = zip(*(out[c].to_pylist() for c in ("account_id", "seq_no", "day")), strict=True)
    assert all(expected[(a, s)] == d for a, s, d in got)

    csv_hive = tmp_path / "csv-hive"  # the same for CSV files
    for key in ("2025-01-01", "2025-01-02"):
        (csv_hive / f"day={key}").mkdir(parents=True)
        pacsv.write_csv(table.filter(pa.array(day == key)), csv_hive / f"day={key}" / "x.csv")
    csv_params = _file_params(default_params, csv_hive)
    csv_params = dataclasses.replace(
        csv_params, data=dataclasses.replace(csv_params.data, format="csv")
    )
    assert run(csv_params, tmp_path / "out")["rows"] == table.num_rows
    out = read_events(tmp_path / "out")
    got = zip(*(out[c].to_pylist() for c in ("account_id", "seq_no", "day")), strict=True)
    assert all(expected[(a, s)] == d for a, s, d in got)


def test_folder_keys_that_name_entities_are_read_as_written(default_params, tmp_path):
    """account_id=0042 and account_id=42 are two entities, as in a CSV; a guessed integer type
    would make them one."""
    table = _events(2)
    half = table.num_rows // 2
    ids = ["0042"] * half + ["42"] * (table.num_rows - half)
    table = table.set_column(0, "account_id", pa.array(ids))
    pq.write_to_dataset(table, tmp_path / "by-account", partition_cols=["account_id"])
    summary = run(_file_params(default_params, tmp_path / "by-account"), tmp_path / "out")
    out = read_events(tmp_path / "out")
    assert summary["entities"] == 2 and set(out["account_id"].to_pylist()) == {"0042", "42"}


def test_a_batch_without_times_decides_nothing_about_offsets(default_params, tmp_path, monkeypatch):
    _small_batches(monkeypatch, rows=10)
    table = _events(20)
    times: list[str | None] = [f"2025-03-01T00:00:{i % 60:02d}" for i in range(table.num_rows)]
    times[:10] = [None] * 10  # the first batch holds no time at all
    src = tmp_path / "late-times.parquet"
    pq.write_table(table.set_column(1, "event_time", pa.array(times, pa.string())), src)
    assert run(_file_params(default_params, src), tmp_path / "out")["rows"] == table.num_rows


def test_more_parts_than_open_files_are_refused_before_reading(
    default_params, tmp_path, monkeypatch
):
    table = _events(50)
    src = tmp_path / "events.parquet"
    pq.write_table(table, src)
    params = _file_params(default_params, src)
    params = dataclasses.replace(params, data=dataclasses.replace(params.data, rows_per_part=10))
    monkeypatch.setattr(ingest.resource, "getrlimit", lambda _: (256, 256))
    with pytest.raises(IngestError, match=r"data\.rows_per_part: the source needs \d+ parts"):
        run(params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_row_numbers_in_errors_count_across_batches(default_params, tmp_path, monkeypatch):
    _small_batches(monkeypatch, rows=10)
    table = _events(20)
    times = table["event_time"].cast(pa.string()).to_pylist()
    times[23] = "yesterday"
    src = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(1, "event_time", pa.array(times)), src)
    with pytest.raises(IngestError, match=r"row 24: 'yesterday'"):
        run(_file_params(default_params, src), tmp_path / "out")


def test_a_file_cannot_mix_offsets_and_naive_times_between_batches(
    default_params, tmp_path, monkeypatch
):
    _small_batches(monkeypatch, rows=10)
    table = _events(20)
    times = [f"2025-03-01T00:00:{i % 60:02d}" for i in range(table.num_rows)]
    times[:10] = [t + "Z" for t in times[:10]]  # the first batch alone has offsets
    src = tmp_path / "mixed.parquet"
    pq.write_table(table.set_column(1, "event_time", pa.array(times)), src)
    with pytest.raises(IngestError, match=r"the rows from row 11 on have no UTC offset"):
        run(_file_params(default_params, src), tmp_path / "out")


def test_an_empty_source_writes_one_empty_part(default_params, tmp_path):
    src = tmp_path / "empty.parquet"
    pq.write_table(_events().slice(0, 0), src)
    summary = run(_file_params(default_params, src), tmp_path / "out")
    assert summary["rows"] == 0 and summary["parts"] == 1
    out = read_events(tmp_path / "out")
    assert out.num_rows == 0 and out["event_time"].type == pa.timestamp("us", tz="UTC")


MEMORY_SCRIPT = """
import json, sys
import pyarrow as pa
import pyarrow.compute as pc
from pipelines import ingest
from pipelines.config import load_params
import dataclasses
ingest.READ_BATCH_ROWS = 20_000
ingest.ROW_GROUP_ROWS = 20_000
ingest.BUFFER_BYTES = 2 * 1024**2
params = load_params("params.yaml")
schema = dataclasses.replace(params.data.schema, seq=None, categorical=[], numeric=["amount"],
                             label=None, next_event=None, forecast=None)
data = dataclasses.replace(params.data, source="file", path=sys.argv[1], schema=schema,
                           rows_per_part=250_000)
pool = pa.default_memory_pool()
base = pool.bytes_allocated()
summary = ingest.run(dataclasses.replace(params, data=data), ingest.Path(sys.argv[2]))
print(json.dumps({"peak": pool.max_memory() - base, "summary": summary}))
"""


def _ingest_peak(tmp_path, n: int) -> tuple[int, int]:
    """Arrow's peak allocation while ingesting ``n`` random rows, in a process of its own so
    that the peak is this ingest's alone; and the table's Arrow size."""
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "account_id": pa.array(rng.integers(0, n // 20, n)).cast(pa.string()),
            "event_time": pa.array(
                np.datetime64("2025-01-01", "us") + rng.integers(0, 10**12, n), pa.timestamp("us")
            ),
            "amount": rng.normal(size=n),
            "label": rng.integers(0, 2, n),
        }
    )
    src = tmp_path / f"big-{n}.parquet"
    pq.write_table(table, src, row_group_size=50_000)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT), str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["summary"]["rows"] == n and result["summary"]["parts"] == n // 250_000
    return int(result["peak"]), table.nbytes


def test_memory_is_bounded_by_the_buffers_not_the_table(tmp_path):
    """1M and 3M rows (about 33 and 100 MB in Arrow; 4 and 12 parts): the peak stays a small
    share of the table (read_table alone would hold all of it) and grows only by what each
    open part writer keeps (well under 1 MB a part), not with the rows."""
    small, _ = _ingest_peak(tmp_path, 1_000_000)
    large, size = _ingest_peak(tmp_path, 3_000_000)
    assert large - small < 8 * 1024**2, (small, large)
    assert large < size / 5, (large, size)


def test_part_size_in_mb_sets_the_rows_per_part(default_params, tmp_path):
    table = _events(200)
    src = tmp_path / "events.parquet"
    pq.write_table(table, src)
    params = _file_params(default_params, src)
    target_mb = table.nbytes / 1024**2 / 5  # about five parts
    data = dataclasses.replace(params.data, part_size_mb=target_mb)
    summary = run(dataclasses.replace(params, data=data), tmp_path / "out")
    assert 4 <= summary["parts"] <= 6
    assert summary["rows_per_part"] == pytest.approx(table.num_rows / 5, rel=0.2)
    with pytest.raises(ValueError, match=r"data\.part_size_mb=0: must be a number > 0"):
        dataclasses.replace(params.data, part_size_mb=0)


def test_a_hive_folder_on_an_object_store_reads_as_the_same_files_on_disk(
    default_params, tmp_path, monkeypatch, s3_server, s3_credentials
):
    import pyarrow.fs as pafs

    _small_batches(monkeypatch, rows=200)
    table = _events()
    day = np.where(np.arange(table.num_rows) % 3 == 0, "2025-01-01", "2025-01-02")
    table = table.append_column("day", pa.array(day))
    store = pafs.S3FileSystem(
        endpoint_override=s3_server, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    store.create_dir("events-bucket")
    pq.write_to_dataset(table, "events-bucket/raw", filesystem=store, partition_cols=["day"])
    pq.write_to_dataset(table, tmp_path / "raw", partition_cols=["day"])

    url = f"s3://events-bucket/raw?endpoint_override={s3_server}&scheme=http&region=us-east-1"
    remote = run(_file_params(default_params, url, arrival="offset"), tmp_path / "remote")
    local = run(
        _file_params(default_params, tmp_path / "raw", arrival="offset"), tmp_path / "local"
    )
    assert remote == local and remote["rows"] == table.num_rows and remote["parts"] > 1
    for a, b in zip(_parts(tmp_path / "remote"), _parts(tmp_path / "local"), strict=True):
        assert a.equals(b)
    with pytest.raises(IngestError, match=r"data\.path: s3://events-bucket/missing"):
        missing = url.replace("/raw?", "/missing?")
        run(_file_params(default_params, missing), tmp_path / "none")


def test_a_malformed_csv_line_past_the_first_block_fails_naming_the_file(default_params, tmp_path):
    table = _events(300)
    src = tmp_path / "events.csv"
    pacsv.write_csv(table, src)
    with src.open("a") as handle:  # far past the block the schema is inferred from
        handle.write("u1,2025-01-01T00:00:00,1,2,3,4,5,6,7,8,9,10,11,12,13\n")
    with pytest.raises(IngestError, match=r"data\.path: .*events\.csv is not a readable csv"):
        run(_file_params(default_params, src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["int", "timestamp", "iso string", "unsorted"])
def test_a_source_already_in_arrival_order_is_ranked_streaming(
    default_params, tmp_path, monkeypatch, kind
):
    """A log written as events came in needs no whole-column sort: its ranks are its row
    numbers, found one batch at a time, and the parts are those the full ranking writes."""
    table = _events()
    rng = np.random.default_rng(5)
    ticks = np.sort(rng.integers(0, 400, table.num_rows))  # ties: file order decides
    if kind == "unsorted":
        ticks[[10, 500]] = ticks[[500, 10]]
    moment = pa.array(ticks * 1_000_000, pa.timestamp("us", tz="UTC"))
    column = {
        "int": pa.array(ticks),
        "timestamp": moment,
        "iso string": pc.strftime(moment, "%Y-%m-%dT%H:%M:%SZ"),
        "unsorted": pa.array(ticks),
    }[kind]
    table = table.set_column(table.schema.get_field_index("offset"), "offset", column)
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=300)
    params = _file_params(default_params, tmp_path / "events.parquet", arrival="offset")
    _small_batches(monkeypatch)
    streamed = []
    real = ingest.in_arrival_order
    monkeypatch.setattr(
        ingest, "in_arrival_order", lambda *a: streamed.append(real(*a)) or streamed[-1]
    )
    fast = run(params, tmp_path / "fast")
    assert streamed == [kind != "unsorted"]
    monkeypatch.setattr(ingest, "in_arrival_order", lambda *a: False)
    ranked = run(params, tmp_path / "ranked")
    assert fast == ranked
    for a, b in zip(_parts(tmp_path / "fast"), _parts(tmp_path / "ranked"), strict=True):
        assert a.equals(b)
