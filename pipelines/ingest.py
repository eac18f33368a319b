"""The ingest stage: events in (generated, or a user's Parquet/CSV), the events table out.

Output (docs/architecture.md §1): ``data/events/part-<k>.parquet`` with the mapped columns,
times as UTC timestamps, rows in arrival order and ``_arrival`` (``seqcore.schema.ARRIVAL``:
the row's position in the source stream, so that arrival order survives partitioning). Above
``data.rows_per_part`` rows (or ``data.part_size_mb`` of Arrow memory) the table is split into
parts by a stable hash of the entity key; each part keeps arrival order.

A user's source is read as a stream of record batches (pyarrow datasets): one file, a
directory of files (read in name order) or a hive-partitioned directory (``key=value``
folders become columns), local or at a URL such as ``s3://``. Each batch is checked and
normalised, then its rows go to their entity's part, where they wait in a bounded buffer
(``BUFFER_BYTES`` over all parts) until written as a row group: the stage never holds the
whole input (benchmarks/README.md, "Streaming ingest"). The number of parts comes from the
source's row count (Parquet footers; a CSV is read once more to count).

Arrival order: a user's file is ranked by the column ``data.schema.arrival`` maps (stable, so
ties keep file order); without one, rows keep the file's order, which validate then does not
take as the global arrival order (late_events is skipped). Generated rows are produced in
arrival order. Ranking reads the arrival column alone first (one value, its sort order and
its rank per row: the one pass that grows with the source), then each part is read whole,
put back into arrival order and rewritten (bounded by the part size).

A user's file is checked here for what ingest itself needs (mapped columns present, types
convertible, times normalised to UTC) with messages that name the key, column and rows
(numbered from 1 in file order across batches); everything else is the ordering contract's
job (the validate stage). Generated data is checked against the generator's columns and
otherwise passed through as is, so that planted faults reach the contract.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import resource
import sys
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_checks.gx_suite import type_ok
from pipelines.config import Params, check_generated_schema
from pipelines.generate import generate_events, role_names
from pipelines.params.data import DataConfig
from pipelines.stage import stage_main
from seqcore.io import atomic_dir, write_json
from seqcore.progress import RowProgress
from seqcore.schema import ARRIVAL, SchemaConfig
from seqcore.store import check_store, output_dir

log = logging.getLogger("seqops.ingest")

READ_BATCH_ROWS = 131_072
"""Rows per record batch read from the source (and per slice of a generated table)."""
READ_BUFFER_BYTES = 1024**2
"""Bytes of a Parquet column chunk read at a time."""
BUFFER_BYTES = 128 * 1024**2
"""Rows waiting for their part, over all parts: past this the largest buffer is written."""
ROW_GROUP_ROWS = 131_072
"""A part's buffer is written as one row group once it holds this many rows."""


class IngestError(ValueError):
    """The source cannot become an events table; the message names the column or file."""


def _open_source(path: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or URL (s3://, gs://, file://, ...)."""
    if "://" not in path:
        local = Path(path).expanduser()
        if not local.exists():
            raise IngestError(f"data.path: {path} does not exist")
        return pafs.LocalFileSystem(), str(local.resolve())
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise IngestError(f"data.path: cannot open {path}: {exc}") from None


def csv_string_columns(schema: SchemaConfig) -> list[str]:
    """Columns a CSV must deliver as written: keys, categories and labels are names, so
    ``0042`` stays ``0042`` (not the number 42), and times are parsed by ingest itself."""
    return [
        schema.entity,
        schema.time,
        *schema.categorical,
        *([schema.label] if schema.label else []),
    ]


def _unreadable(config: DataConfig, exc: Exception) -> IngestError:
    return IngestError(
        f"data.path: {config.path} is not a readable {source_format(config)} events file or "
        f"folder: {exc}"
    )


def source_format(config: DataConfig) -> str:
    """``parquet`` or ``csv``: ``data.format``, or for ``auto`` the path's suffix."""
    assert config.path is not None
    if config.format != "auto":
        return config.format
    suffixes = "".join(Path(config.path.split("?")[0]).suffixes).lower()
    return "csv" if ".csv" in suffixes else "parquet"


def open_dataset(config: DataConfig) -> ds.Dataset:
    """The user's events as a pyarrow dataset: a file, a directory of files (hidden and
    ``_``-prefixed files such as ``_SUCCESS`` skipped) or a hive-partitioned directory.

    Parquet keeps its own types. A CSV reads :func:`csv_string_columns` as strings (an
    empty cell becomes null there, as it is in a numeric column, in :func:`source_batches`)
    and infers the rest.
    """
    assert config.path is not None
    filesystem, path = _open_source(config.path)
    fmt = source_format(config)
    file_format: ds.FileFormat
    if fmt == "csv":
        strings = csv_string_columns(config.schema)
        options = pacsv.ConvertOptions(column_types={c: pa.string() for c in strings})
        file_format = ds.CsvFileFormat(convert_options=options)
    else:  # rows are read with each file's own reader (_parquet_batches), not this scanner
        file_format = ds.ParquetFileFormat()
    try:
        dataset = ds.dataset(path, filesystem=filesystem, format=file_format, partitioning="hive")
        # Folder keys are typed by guessing (account_id=0042 would become 42): the roles that
        # are names (csv_string_columns) are read as written, as in a CSV.
        first = next(iter(dataset.get_fragments()), None)
        stored = set(first.physical_schema.names) if first is not None else set()
        keys = [f for f in dataset.schema if f.name not in stored]  # from folder names only
        names = set(csv_string_columns(config.schema))
        if any(f.name in names and f.type != pa.string() for f in keys):
            typed = pa.schema([(f.name, pa.string()) if f.name in names else f for f in keys])
            partitioning = ds.partitioning(typed, flavor="hive")
            dataset = ds.dataset(
                path, filesystem=filesystem, format=file_format, partitioning=partitioning
            )
        return dataset
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(config, exc) from None


def _parquet_batches(dataset: ds.Dataset, fragment: ds.ParquetFileFragment) -> Iterator[pa.Table]:
    """One Parquet file's rows as ``dataset.schema`` tables of up to ``READ_BATCH_ROWS``,
    hive keys of its folder added as columns. Read page by page (``iter_batches`` without
    pre-buffering), so even a file written as a single row group streams."""
    keys = ds.get_partition_keys(fragment.partition_expression) or {}
    with dataset.filesystem.open_input_file(fragment.path) as handle:
        # buffer_size: read a column chunk a megabyte at a time, not whole (Arrow's default).
        reader = pq.ParquetFile(handle, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
        for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            columns = []
            for field in dataset.schema:
                if field.name in keys:
                    column = pa.repeat(pa.scalar(keys[field.name], field.type), table.num_rows)
                elif field.name in table.column_names:
                    column = table[field.name]
                else:  # a column other files of the folder have
                    column = pa.nulls(table.num_rows, field.type)
                columns.append(column.cast(field.type) if column.type != field.type else column)
            yield pa.Table.from_arrays(columns, schema=dataset.schema)


def _record_batches(dataset: ds.Dataset) -> Iterator[pa.Table]:
    """The dataset's rows in file order. Arrow's dataset scanner reads ahead of a slow
    consumer without bound (benchmarks/README.md, "Streaming ingest"), so Parquet files are
    read with their own page-by-page reader and CSV with no readahead."""
    for fragment in dataset.get_fragments():
        try:
            if isinstance(fragment, ds.ParquetFileFragment):
                yield from _parquet_batches(dataset, fragment)
            else:
                for batch in fragment.to_batches(
                    schema=dataset.schema,
                    batch_size=READ_BATCH_ROWS,
                    batch_readahead=0,
                    use_threads=False,
                ):
                    yield pa.Table.from_batches([batch])
        except (pa.ArrowException, OSError) as exc:
            # The folder's schema is its first file's: name the file that does not fit it.
            raise IngestError(
                f"data.path: {fragment.path} cannot be read as the source's columns "
                f"({dataset.schema.to_string(show_schema_metadata=False)}): {exc}"
            ) from None


def source_batches(dataset: ds.Dataset, config: DataConfig) -> Iterator[pa.Table]:
    """The dataset's rows in file order, up to ``READ_BATCH_ROWS`` at a time (empty CSV
    string cells as nulls); a file that cannot be parsed fails naming that file."""
    strings = csv_string_columns(config.schema) if source_format(config) == "csv" else []
    for table in _record_batches(dataset):
        if not table.num_rows:
            continue
        for name in strings:
            if name in table.column_names:
                column = table[name]
                empty = pc.equal(column, "")
                index = table.schema.get_field_index(name)
                table = table.set_column(
                    index, name, pc.if_else(empty, pa.scalar(None, column.type), column)
                )
        yield table


def _rows(positions: np.ndarray, values: list[Any], first_row: int = 0, limit: int = 3) -> str:
    """``row 3: 'x', row 9: 'y'``: the first examples, rows numbered from 1 in file order
    (``positions`` count from the batch's first row, ``first_row`` in the file)."""
    return ", ".join(
        f"row {first_row + int(i) + 1}: {v!r}"
        for i, v in zip(positions[:limit], values[:limit], strict=False)
    )


# A UTC offset (or Z) after a time of day; a date alone ends in "-DD", which is no offset.
_OFFSET = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$"
_ISO = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)?)?$"


def _calendar_valid(values: pa.Array) -> np.ndarray:
    """Where an ISO-shaped string names a real date and time (no month 13, no 25:00): the
    value reduced to ``YYYY-MM-DDTHH:MM:SS`` and parsed with errors as nulls, all vectorised."""
    for pattern, replacement in (
        (r"^(\d{4}-\d{2}-\d{2}) ", r"\1T"),
        (r"\.\d+", ""),
        (r"(:\d{2})\s*(Z|z|[+-]\d{2}(:?\d{2})?)$", r"\1"),
        (r"^(\d{4}-\d{2}-\d{2})$", r"\1T00:00:00"),
        (r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})$", r"\1:00"),
    ):
        values = pc.replace_substring_regex(values, pattern, replacement)
    parsed = pc.strptime(values, format="%Y-%m-%dT%H:%M:%S", unit="s", error_is_null=True)
    return pc.is_valid(parsed).to_numpy(zero_copy_only=False)


def _time_strings_error(
    column: pa.ChunkedArray, name: str, role: str, source_tz: str, first_row: int = 0
) -> str:
    """Why a string time column does not parse: which rows mix naive times with times that
    carry an offset, which are no ISO-8601 time at all, and what to do about each."""
    values = column.combine_chunks()
    if pa.types.is_large_string(values.type) or pa.types.is_string_view(values.type):
        values = pc.cast(values, pa.string())
    present = pc.is_valid(values).to_numpy(zero_copy_only=False)
    shaped = pc.fill_null(pc.match_substring_regex(values, _ISO), False).to_numpy(
        zero_copy_only=False
    )
    offset = pc.fill_null(pc.match_substring_regex(values, _OFFSET), False).to_numpy(
        zero_copy_only=False
    )
    good = present & shaped & _calendar_valid(values)
    with_offset = np.flatnonzero(good & offset)
    naive = np.flatnonzero(good & ~offset)
    bad = np.flatnonzero(present & ~good)

    def examples(rows: np.ndarray) -> str:
        return _rows(rows, values.take(pa.array(rows[:3])).to_pylist(), first_row)

    problems = []
    if with_offset.size and naive.size:
        problems.append(
            f"{naive.size} row(s) have no UTC offset ({examples(naive)}) while "
            f"{with_offset.size} have one ({examples(with_offset)}); one column must not mix "
            "them: write every time with an offset (or Z), or every time without one (naive "
            f"times are read in data.source_timezone, currently {source_tz!r})"
        )
    if bad.size:
        problems.append(
            f"{bad.size} row(s) are not ISO-8601 times ({examples(bad)}); fix or drop them "
            "(expected e.g. 2025-05-20T12:51:40, 2025-05-20 12:51:40.616 or "
            "2025-05-20T12:51:40+05:00)"
        )
    if not problems:  # the parser refused the whole column without naming a value
        sample = next((v for v in values.to_pylist() if v is not None), None)
        problems.append(f"values such as {sample!r} do not parse as ISO-8601 times")
    return f"column {name!r} ({role}; rows numbered from 1 in file order): " + "; ".join(problems)


def _to_utc(
    column: pa.ChunkedArray,
    name: str,
    source_tz: str,
    role: str = "time",
    first_row: int = 0,
    modes: dict[str, str] | None = None,
) -> pa.ChunkedArray:
    """``column`` as UTC microsecond timestamps. Strings either all carry an offset or all
    are naive times of ``source_tz``; ``modes`` remembers which, per column, across the
    batches of one source, so that a source cannot mix them between batches either."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _to_utc(pc.cast(column, kind.value_type), name, source_tz, role, first_row, modes)
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            column = pc.assume_timezone(
                column, source_tz, ambiguous="earliest", nonexistent="earliest"
            )
        try:  # nanoseconds (pandas' unit) are truncated to the stored microseconds
            return column.cast(pa.timestamp("us", tz="UTC"), safe=kind.unit != "ns")
        except pa.ArrowInvalid:
            raise IngestError(
                f"column {name!r} ({role}) holds {kind} values beyond the range of microsecond "
                "timestamps; fix those values"
            ) from None
    if pa.types.is_date(kind):
        return _to_utc(pc.cast(column, pa.timestamp("us")), name, source_tz, role, first_row)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        modes = {} if modes is None else modes
        try:  # every value carries an offset (or Z)
            mode, values = "offset", pc.cast(column, pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            try:  # no value carries one: naive local times of the source zone
                naive = pc.cast(column, pa.timestamp("us"))
                mode, values = "naive", _to_utc(naive, name, source_tz, role, first_row)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise IngestError(
                    _time_strings_error(column, name, role, source_tz, first_row)
                ) from None
        if column.null_count == len(column):
            return values  # no value says which kind the column holds
        earlier = modes.setdefault(name, mode)
        if earlier != mode:
            have = "carry a UTC offset" if mode == "offset" else "have no UTC offset"
            raise IngestError(
                f"column {name!r} ({role}): the rows from row {first_row + 1} on {have} while "
                "earlier rows of the same source do not; one column must not mix them: write "
                "every time with an offset (or Z), or every time without one (naive times are "
                f"read in data.source_timezone, currently {source_tz!r})"
            )
        return values
    raise IngestError(
        f"column {name!r} ({role}) has type {kind}; expected a timestamp or ISO-8601 strings"
    )


def check_mapped_columns(columns: list[str], schema: SchemaConfig, where: str) -> None:
    """Every column ``schema`` maps must be among ``columns``; the error names each key."""
    pairs = [*schema.roles(), *([("arrival", schema.arrival)] if schema.arrival else [])]
    missing = [(key, c) for key, c in pairs if c not in columns]
    if missing:
        named = "; ".join(f"data.schema.{key}: {c!r}" for key, c in missing)
        raise IngestError(
            f"mapped column(s) missing from {where}: {named} (its columns: "
            f"{', '.join(columns)}); map those keys to columns it has in data.schema in "
            "params.yaml (or set the optional ones, seq, label, next_event, forecast, "
            "arrival, to null)"
        )


def _not_numbers(column: pa.ChunkedArray, first_row: int = 0) -> str:
    """Examples of the values of a string column that are not numbers (rows from 1)."""
    values = column.combine_chunks()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return ""
    number = r"^\s*[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|nan|NaN|inf|-inf|Infinity)\s*$"
    ok = pc.fill_null(pc.match_substring_regex(values, number), True).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(~ok)
    if not rows.size:
        return ""
    examples = _rows(rows, values.take(pa.array(rows[:3])).to_pylist(), first_row)
    return f"; {rows.size} value(s) are not numbers ({examples}; rows count from 1)"


def _label_column(column: pa.ChunkedArray, name: str, first_row: int = 0) -> pa.ChunkedArray:
    """The label as strings, integers or booleans; floats holding whole numbers (pandas
    writes integer labels with a missing value as floats) become integers, NaN a null."""
    kind = column.type
    if type_ok("label", kind):  # what the contract's types check accepts
        return column
    if pa.types.is_floating(kind):
        numbers = column.to_numpy(zero_copy_only=False).astype(np.float64)
        present = ~np.isnan(numbers)
        fractional = np.flatnonzero(present & (numbers != np.round(numbers)))
        if fractional.size:
            raise IngestError(
                f"column {name!r} (label) holds {fractional.size} value(s) that are not whole "
                f"numbers ({_rows(fractional, numbers[fractional[:3]].tolist(), first_row)}; rows count "
                "from 1): a label names a class: use strings, integers or booleans, or map a "
                "numeric target as data.schema.forecast instead"
            )
        return pa.chunked_array(
            [pa.array(np.where(present, numbers, 0).astype(np.int64), mask=~present)]
        )
    raise IngestError(
        f"column {name!r} (label) has type {kind}; expected strings, integers or booleans "
        "(an entity-level class label); fix the column or data.schema.label"
    )


def normalise_user_table(
    table: pa.Table,
    config: DataConfig,
    first_row: int = 0,
    time_modes: dict[str, str] | None = None,
) -> pa.Table:
    """Check the mapped columns of (a batch of) a user's table and bring times to UTC; the
    rows stay as they are. ``first_row``: the batch's first row in the file, for messages;
    ``time_modes``: one dict for all batches of one source (see :func:`_to_utc`)."""
    schema = config.schema
    check_mapped_columns(table.column_names, schema, str(config.path))

    def expect(name: str, role: str, ok: bool, wanted: str, hint: str = "") -> None:
        if not ok:
            raise IngestError(
                f"column {name!r} ({role}) has type {table[name].type}; expected {wanted}{hint}"
            )

    expect(
        schema.entity, "entity key", type_ok("key", table[schema.entity].type), "string or integer"
    )
    if schema.seq:
        expect(
            schema.seq, "sequence number", pa.types.is_integer(table[schema.seq].type), "integer"
        )
    for col in schema.numeric:
        kind = table[col].type
        ok = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        hint = "" if ok else _not_numbers(table[col], first_row)
        expect(col, "numeric feature", ok, "a number", hint)
    for col in schema.categorical:
        expect(col, "categorical feature", type_ok("key", table[col].type), "string or integer")
    if schema.label:
        index = table.schema.get_field_index(schema.label)
        label = _label_column(table[schema.label], schema.label, first_row)
        table = table.set_column(index, schema.label, label)
    index = table.schema.get_field_index(schema.time)
    utc = _to_utc(
        table[schema.time], schema.time, config.source_timezone, "time", first_row, time_modes
    )
    return table.set_column(index, schema.time, utc)


def in_arrival_order(dataset: ds.Dataset, config: DataConfig) -> bool:
    """Whether the source's rows are already in the order of its arrival column (a log
    appended as events came in): then each row's rank is its row number, found streaming one
    batch of that column at a time. Anything else (out of order, empty or unreadable values)
    is left to ``arrival_ranks``, which ranks, or refuses with the full count."""
    name = config.schema.arrival
    assert name is not None
    last: Any = None
    modes: dict[str, str] = {}
    start = 0
    try:
        for batch in dataset.to_batches(columns=[name], batch_size=READ_BATCH_ROWS):
            column = pa.chunked_array([batch.column(0)])
            kind = column.type
            if pa.types.is_dictionary(kind):
                column, kind = pc.cast(column, kind.value_type), kind.value_type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                column = _to_utc(column, name, config.source_timezone, "arrival", start, modes)
                column = pc.cast(column, pa.int64())
            keys = column.to_numpy()
            if column.null_count or (keys.dtype.kind == "f" and np.isnan(keys).any()):
                return False
            if keys.size and (
                (last is not None and keys[0] < last) or bool((keys[1:] < keys[:-1]).any())
            ):
                return False
            last = keys[-1] if keys.size else last
            start += batch.num_rows
    except (pa.ArrowException, OSError, IngestError):
        return False
    return True


def arrival_ranks(dataset: ds.Dataset, config: DataConfig) -> np.ndarray | None:
    """Each row's position in arrival order (``_arrival``), by the arrival column alone;
    None when that is the file order (``in_arrival_order``). Otherwise the one pass that
    holds a value per row of the whole source (about 24 bytes a row)."""
    name = config.schema.arrival
    assert name is not None
    if in_arrival_order(dataset, config):
        return None
    try:
        column = dataset.to_table(columns=[name])
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"data.path: {config.path}: cannot read column {name!r}: {exc}") from None
    order = arrival_order(column, name, config.source_timezone)
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size, dtype=order.dtype)
    return ranks


def arrival_order(table: pa.Table, name: str, source_tz: str) -> np.ndarray:
    """Row ids in the order of the arrival column ``name`` (stable: ties keep file order)."""
    column = table[name]
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = pc.cast(column, kind.value_type)
        kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        keys = column
    else:
        keys = _to_utc(column, name, source_tz, role="arrival")  # names the role on error
        keys = pc.cast(keys, pa.int64())
    missing = pc.invert(pc.is_valid(keys))
    if pa.types.is_floating(keys.type):
        missing = pc.or_(missing, pc.fill_null(pc.is_nan(keys), False))
    rows = np.flatnonzero(missing.to_numpy(zero_copy_only=False))
    if rows.size:
        raise IngestError(
            f"column {name!r} (arrival) is empty in {rows.size} row(s) "
            f"({', '.join(f'row {int(r) + 1}' for r in rows[:5])}; rows count from 1): every "
            "row needs its arrival position; fill them, or set data.schema.arrival: null"
        )
    return np.argsort(keys.to_numpy(), kind="stable").astype(np.int64)


def _entity_parts(entity: pa.ChunkedArray, n_parts: int) -> np.ndarray:
    """Part number per row from a stable (crc32) hash of the entity key."""
    encoded = pc.dictionary_encode(entity).combine_chunks()
    values = encoded.dictionary.to_pylist()  # one Python object per entity, not per event
    part_of_value = np.array(
        [zlib.crc32(str(v).encode()) % n_parts for v in values], dtype=np.int64
    )
    # Rows without a key go to part 0, where validate's key_nulls finds them.
    codes = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)
    if not len(values):
        return np.zeros(len(codes), dtype=np.int64)
    return part_of_value[codes]


class PartWriter:
    """Rows to ``n_parts`` entity-hash part files in ``folder``, with bounded memory: each
    part's rows wait in a buffer that is written as a row group once it holds
    ``ROW_GROUP_ROWS`` rows, and the largest buffer is written whenever all of them hold more
    than ``BUFFER_BYTES``. Within a part, rows keep the order they were given in."""

    def __init__(
        self,
        folder: Path,
        n_parts: int,
        entity: str | None,
        dictionary_columns: list[str] | None = None,
    ) -> None:
        self.folder, self.n_parts, self.entity = folder, n_parts, entity
        # Parquet dictionary pages only for the columns that repeat few values: an open
        # writer keeps each dictionary column's memo table, as large as the column's distinct
        # values in a row group, and every part's writer stays open until the end.
        self.dictionary_columns = dictionary_columns or []
        self.names = [f"part-{k:05d}.parquet" for k in range(n_parts)]
        self.buffers: list[list[pa.Table]] = [[] for _ in range(n_parts)]
        self.buffered_rows = np.zeros(n_parts, dtype=np.int64)
        self.buffered_bytes = np.zeros(n_parts, dtype=np.int64)
        self.rows = np.zeros(n_parts, dtype=np.int64)
        self.writers: list[pq.ParquetWriter | None] = [None] * n_parts
        self.schema: pa.Schema | None = None

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        if self.n_parts == 1 or self.entity is None or self.entity not in table.column_names:
            self._add(0, table)
        else:
            parts = _entity_parts(table[self.entity], self.n_parts)
            order = np.argsort(parts, kind="stable")  # stable: each part keeps the row order
            bounds = np.concatenate([[0], np.cumsum(np.bincount(parts, minlength=self.n_parts))])
            for k in np.flatnonzero(np.diff(bounds)):
                # A take of its own per part: a slice of one shared take would keep the whole
                # batch alive for as long as any part still buffers a piece of it.
                rows = pa.array(order[bounds[k] : bounds[k + 1]])
                self._add(int(k), table.take(rows))
        while self.buffered_bytes.sum() > BUFFER_BYTES:
            self._flush(int(np.argmax(self.buffered_bytes)))

    def _add(self, k: int, rows: pa.Table) -> None:
        self.buffers[k].append(rows)
        self.buffered_rows[k] += rows.num_rows
        self.buffered_bytes[k] += rows.nbytes
        self.rows[k] += rows.num_rows
        if self.buffered_rows[k] >= ROW_GROUP_ROWS:
            self._flush(k)

    def _flush(self, k: int) -> None:
        if not self.buffers[k]:
            return
        assert self.schema is not None
        writer = self.writers[k]
        if writer is None:
            writer = self.writers[k] = pq.ParquetWriter(
                self.folder / self.names[k],
                self.schema,
                use_dictionary=[c for c in self.dictionary_columns if c in self.schema.names],
            )
        writer.write_table(pa.concat_tables(self.buffers[k]).combine_chunks())
        self.buffers[k] = []
        self.buffered_rows[k] = self.buffered_bytes[k] = 0

    @contextlib.contextmanager
    def aborting(self) -> Iterator[None]:
        """Close every open writer if the block fails (``atomic_dir`` then removes the files)."""
        try:
            yield
        except BaseException:
            for writer in self.writers:
                if writer is not None:
                    with contextlib.suppress(Exception):
                        writer.close()
            raise

    def close(self, empty_schema: pa.Schema) -> list[str]:
        """Write what is buffered and close every part; a part without rows is written
        empty, so the folder always holds ``n_parts`` files. Returns their names."""
        if self.schema is None:
            self.schema = empty_schema
        for k in range(self.n_parts):
            self._flush(k)
            writer = self.writers[k]
            if writer is None:
                pq.write_table(self.schema.empty_table(), self.folder / self.names[k])
            else:
                writer.close()
        return self.names


def dictionary_columns(schema: SchemaConfig) -> list[str]:
    """Columns worth Parquet's dictionary encoding: categories, labels and event types."""
    roles = [schema.label, schema.next_event]
    return [*schema.categorical, *(c for c in roles if c)]


OPEN_FILES_SPARE = 64
"""File descriptors left for everything else (the source, Arrow, logging, Python)."""


def check_open_files(n_parts: int, data: DataConfig) -> None:
    """Every part's writer stays open while the source streams: refuse, before reading, more
    parts than this process may open files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and n_parts > soft - OPEN_FILES_SPARE:
        key = "data.part_size_mb" if data.part_size_mb is not None else "data.rows_per_part"
        raise IngestError(
            f"{key}: the source needs {n_parts} parts, and ingest writes all of them at once, "
            f"but this process may open {soft} files (ulimit -n); raise {key} so that there "
            f"are at most {soft - OPEN_FILES_SPARE} parts, or raise ulimit -n"
        )


def n_parts_for(rows: int, rows_per_part: int) -> int:
    return max(1, -(-rows // rows_per_part))


def write_events(table: pa.Table, out_dir: Path, rows_per_part: int, entity: str) -> list[str]:
    """Write ``table`` (with ``_arrival``) as part files, atomically."""
    with atomic_dir(out_dir) as tmp:
        n_parts = n_parts_for(table.num_rows, rows_per_part)
        repeated = [
            f.name
            for f in table.schema
            if f.name != entity and (pa.types.is_string(f.type) or pa.types.is_dictionary(f.type))
        ]
        writer = PartWriter(tmp, n_parts, entity, repeated)
        for batch in table.to_batches(max_chunksize=READ_BATCH_ROWS):
            writer.write(pa.Table.from_batches([batch], schema=table.schema))
        return writer.close(table.schema)


def _with_arrival(table: pa.Table, arrival: np.ndarray) -> pa.Table:
    if ARRIVAL in table.column_names:  # e.g. a file ingest wrote before: ranked anew here
        table = table.drop_columns([ARRIVAL])
    return table.append_column(ARRIVAL, pa.array(arrival, pa.int64()))


def _generated_batches(table: pa.Table) -> Generator[pa.Table, None, None]:
    start = 0
    for batch in table.to_batches(max_chunksize=READ_BATCH_ROWS):
        rows = pa.Table.from_batches([batch], schema=table.schema)
        yield _with_arrival(rows, np.arange(start, start + rows.num_rows, dtype=np.int64))
        start += rows.num_rows


def _count_rows(dataset: ds.Dataset, config: DataConfig) -> int:
    """Rows of the source: Parquet footers, or a first pass over a CSV (which is where a
    malformed line past the first block shows up first)."""
    try:
        return int(dataset.count_rows())
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(config, exc) from None


def _user_batches(dataset: ds.Dataset, data: DataConfig) -> Generator[pa.Table, None, None]:
    ranks = arrival_ranks(dataset, data) if data.schema.arrival else None
    start, modes = 0, dict[str, str]()
    for batch in source_batches(dataset, data):
        rows = normalise_user_table(batch, data, start, modes)
        stop = start + rows.num_rows
        arrival = ranks[start:stop] if ranks is not None else np.arange(start, stop)
        yield _with_arrival(rows, arrival)
        start = stop


def _finish_part(path: Path, entity: str | None, sort: bool) -> int | None:
    """Put a written part into arrival order (when its rows came in file order) and count
    its entities (None without an entity column): one bounded read of one part."""
    if sort:
        table = pq.read_table(path)
        arrival = table[ARRIVAL].to_numpy()
        if (arrival[1:] < arrival[:-1]).any():  # a source in arrival order needs no rewrite
            table = table.take(pc.sort_indices(table[ARRIVAL]))
            pq.write_table(table, path)
        column = table[entity] if entity in table.column_names else None
    else:
        names = pq.read_schema(path).names
        column = pq.read_table(path, columns=[entity])[entity] if entity in names else None
    return None if column is None else int(pc.count_distinct(column).as_py())


def run(params: Params, out_dir: Path, metrics_path: Path | None = None) -> dict[str, Any]:
    """Produce the events table in ``out_dir``; returns a small summary."""
    data = params.data
    schema = data.schema
    if data.store is not None:
        check_store(data.store)
    if data.source == "generate":
        # Checked against the generator's columns, not its table: a planted missing_column
        # fault must reach the contract. (Also for Params built without load_params.)
        check_generated_schema(schema)
        generated = generate_events(data.generate, params.seed, role_names(schema))
        total, batches = generated.num_rows, _generated_batches(generated)
        empty = _with_arrival(generated.slice(0, 0), np.arange(0)).schema
    else:
        dataset = open_dataset(data)
        columns = dataset.schema.names
        check_mapped_columns(columns, schema, str(data.path))
        split = params.shard.split
        if split.method == "column" and split.column not in columns:
            raise IngestError(
                f"shard.split.column: {split.column!r} is not a column of {data.path} (its "
                f"columns: {', '.join(columns)}); name the column that holds each "
                "entity's split, or use shard.split.method: entity or time"
            )
        total, batches = _count_rows(dataset, data), _user_batches(dataset, data)
        empty_rows = normalise_user_table(dataset.schema.empty_table(), data)
        empty = _with_arrival(empty_rows, np.arange(0)).schema
    first = next(batches, None)
    rows_per_part = data.rows_per_part
    if data.part_size_mb is not None and first is not None and first.num_rows:
        per_row = first.nbytes / first.num_rows
        rows_per_part = max(1, int(data.part_size_mb * 1024**2 / per_row))
    stream = itertools.chain([first], batches) if first is not None else batches
    n_parts = n_parts_for(total, rows_per_part)
    check_open_files(n_parts, data)
    progress = RowProgress(log, "ingest", total)
    first_time = last_time = None  # the time column's bounds, for the summary
    with output_dir(out_dir, data.store) as out:
        writer = PartWriter(out.staging, n_parts, schema.entity, dictionary_columns(schema))
        # The generator is closed (its open file with it) however the run ends.
        with contextlib.closing(batches), writer.aborting():
            for batch in stream:
                writer.write(batch)
                time = batch[schema.time] if schema.time in batch.column_names else None
                if time is not None and pa.types.is_timestamp(time.type):
                    found = pc.min_max(time).as_py()
                    if found["min"] is not None:
                        first_time = min(found["min"], first_time or found["min"])
                        last_time = max(found["max"], last_time or found["max"])
                progress.advance(batch.num_rows)
            names = writer.close(empty)
        sort = data.source == "file" and schema.arrival is not None
        counts = []
        for name in names:  # with data.store, each part is uploaded as soon as it is final
            counts.append(_finish_part(out.staging / name, schema.entity, sort))
            out.publish(name, digest=False)
    progress.finish()
    rows = int(writer.rows.sum())
    summary: dict[str, Any] = {
        "rows": rows,
        "parts": len(names),
        "rows_per_part": rows_per_part,
        "source": data.source,
    }
    if all(c is not None for c in counts):
        summary["entities"] = sum(c for c in counts if c is not None)
    if schema.time in (writer.schema or empty).names and pa.types.is_timestamp(
        (writer.schema or empty).field(schema.time).type
    ):
        summary["time_min"] = first_time.isoformat() if first_time else None
        summary["time_max"] = last_time.isoformat() if last_time else None
    if metrics_path is not None:
        write_json(metrics_path, summary)
    return summary


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/events")
    parser.add_argument("--metrics", default="reports/ingest.json")


def _command(params: Params, args: argparse.Namespace) -> int:
    summary = run(params, Path(args.out), Path(args.metrics) if args.metrics else None)
    log.info("wrote %s rows in %s part(s) to %s", summary["rows"], summary["parts"], args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "ingest", _arguments, _command, argv, doc=__doc__, input_errors=(IngestError,)
    )


if __name__ == "__main__":
    sys.exit(main())
