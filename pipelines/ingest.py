"""The ingest stage: events in (generated, or a user's Parquet/CSV), the events table out.

Output (docs/architecture.md §1): ``data/events/part-<k>.parquet`` with the mapped columns,
times as UTC timestamps, rows in arrival order and ``_arrival`` (``seqcore.schema.ARRIVAL``:
the row's position in the source stream, so that arrival order survives partitioning). Above
``data.rows_per_part`` rows the table is split into parts by a stable hash of the entity key;
each part keeps arrival order.

Arrival order: a user's file is sorted by the column ``data.schema.arrival`` maps (stable, so
ties keep file order); without one, rows keep the file's order, which validate then does not
take as the global arrival order (late_events is skipped). Generated rows are produced in
arrival order.

A user's file is checked here for what ingest itself needs (mapped columns present, types
convertible, times normalised to UTC) with messages that name the key, column and rows;
everything else is the ordering contract's job (the validate stage). Generated data is checked
against the generator's columns and otherwise passed through as is, so that planted faults
reach the contract.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_checks.gx_suite import type_ok
from pipelines.config import Params, check_generated_schema
from pipelines.generate import generate_events, role_names
from pipelines.params.data import DataConfig
from pipelines.stage import stage_main
from seqcore.io import atomic_dir, write_json
from seqcore.schema import ARRIVAL, SchemaConfig

log = logging.getLogger("seqops.ingest")


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


def read_source(config: DataConfig) -> pa.Table:
    """Read a user's events file (Parquet or CSV, file or directory of files).

    Parquet keeps its own types. A CSV reads :func:`csv_string_columns` as strings (an
    empty cell is null there, as it is in a numeric column) and infers the rest.
    """
    assert config.path is not None
    fmt = config.format
    if fmt == "auto":
        suffixes = "".join(Path(config.path.split("?")[0]).suffixes).lower()
        fmt = "csv" if ".csv" in suffixes else "parquet"
    filesystem, path = _open_source(config.path)
    try:
        if fmt == "parquet":
            return pq.read_table(path, filesystem=filesystem)
        strings = csv_string_columns(config.schema)
        options = pacsv.ConvertOptions(column_types={c: pa.string() for c in strings})
        with filesystem.open_input_stream(path) as stream:
            table = pacsv.read_csv(stream, convert_options=options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestError(
            f"data.path: {config.path} is not a readable {fmt} events file: {exc}"
        ) from None
    for name in strings:
        if name in table.column_names:
            column = table[name]
            empty = pc.equal(column, "")
            index = table.schema.get_field_index(name)
            table = table.set_column(
                index, name, pc.if_else(empty, pa.scalar(None, column.type), column)
            )
    return table


def _rows(positions: np.ndarray, values: list[Any], limit: int = 3) -> str:
    """``row 3: 'x', row 9: 'y'``: the first examples, rows numbered from 1 in file order."""
    return ", ".join(
        f"row {int(i) + 1}: {v!r}" for i, v in zip(positions[:limit], values[:limit], strict=False)
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


def _time_strings_error(column: pa.ChunkedArray, name: str, role: str, source_tz: str) -> str:
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
        return _rows(rows, values.take(pa.array(rows[:3])).to_pylist())

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
    column: pa.ChunkedArray, name: str, source_tz: str, role: str = "time"
) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _to_utc(pc.cast(column, kind.value_type), name, source_tz, role)
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
        return _to_utc(pc.cast(column, pa.timestamp("us")), name, source_tz, role)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        try:  # every value carries an offset (or Z)
            return pc.cast(column, pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:  # no value carries one: naive local times of the source zone
            return _to_utc(pc.cast(column, pa.timestamp("us")), name, source_tz, role)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise IngestError(_time_strings_error(column, name, role, source_tz)) from None
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


def _not_numbers(column: pa.ChunkedArray) -> str:
    """Examples of the values of a string column that are not numbers (rows from 1)."""
    values = column.combine_chunks()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return ""
    number = r"^\s*[+-]?((\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|nan|NaN|inf|-inf|Infinity)\s*$"
    ok = pc.fill_null(pc.match_substring_regex(values, number), True).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(~ok)
    if not rows.size:
        return ""
    examples = _rows(rows, values.take(pa.array(rows[:3])).to_pylist())
    return f"; {rows.size} value(s) are not numbers ({examples}; rows count from 1)"


def _label_column(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
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
                f"numbers ({_rows(fractional, numbers[fractional[:3]].tolist())}; rows count "
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


def normalise_user_table(table: pa.Table, config: DataConfig) -> pa.Table:
    """Check the mapped columns of a user's table, bring times to UTC and rows into arrival
    order (by ``data.schema.arrival`` when it is mapped, else as the file holds them)."""
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
        expect(col, "numeric feature", ok, "a number", "" if ok else _not_numbers(table[col]))
    for col in schema.categorical:
        expect(col, "categorical feature", type_ok("key", table[col].type), "string or integer")
    if schema.label:
        index = table.schema.get_field_index(schema.label)
        table = table.set_column(
            index, schema.label, _label_column(table[schema.label], schema.label)
        )
    index = table.schema.get_field_index(schema.time)
    table = table.set_column(
        index, schema.time, _to_utc(table[schema.time], schema.time, config.source_timezone)
    )
    if schema.arrival:
        table = table.take(pa.array(arrival_order(table, schema.arrival, config.source_timezone)))
    return table


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
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    nulls = encoded.indices.is_null().to_numpy(zero_copy_only=False)
    return np.where(nulls, 0, part_of_value[np.where(nulls, 0, codes)])


def write_events(table: pa.Table, out_dir: Path, rows_per_part: int, entity: str) -> list[str]:
    """Write ``table`` (with ``_arrival``) as part files, atomically."""
    n_parts = max(1, -(-table.num_rows // rows_per_part))
    written = []
    with atomic_dir(out_dir) as tmp:
        if n_parts == 1 or entity not in table.column_names:
            pq.write_table(table, tmp / "part-00000.parquet")
            written.append("part-00000.parquet")
        else:
            parts = _entity_parts(table[entity], n_parts)
            for k in range(n_parts):
                rows = np.flatnonzero(parts == k)  # ascending: arrival order is kept
                pq.write_table(table.take(pa.array(rows)), tmp / f"part-{k:05d}.parquet")
                written.append(f"part-{k:05d}.parquet")
                log.info("part %d/%d written: %d rows", k + 1, n_parts, len(rows))
    return written


def run(params: Params, out_dir: Path, metrics_path: Path | None = None) -> dict[str, Any]:
    """Produce the events table in ``out_dir``; returns a small summary."""
    data = params.data
    if data.source == "generate":
        # Checked against the generator's columns, not its table: a planted missing_column
        # fault must reach the contract. (Also for Params built without load_params.)
        check_generated_schema(data.schema)
        table = generate_events(data.generate, params.seed, role_names(data.schema))
    else:
        table = normalise_user_table(read_source(data), data)
        split = params.shard.split
        if split.method == "column" and split.column not in table.column_names:
            raise IngestError(
                f"shard.split.column: {split.column!r} is not a column of {data.path} (its "
                f"columns: {', '.join(table.column_names)}); name the column that holds each "
                "entity's split, or use shard.split.method: entity or time"
            )
    if ARRIVAL in table.column_names:  # e.g. a file ingest wrote before: ranked anew here
        table = table.drop_columns([ARRIVAL])
    table = table.append_column(ARRIVAL, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    parts = write_events(table, out_dir, data.rows_per_part, data.schema.entity)
    summary: dict[str, Any] = {"rows": table.num_rows, "parts": len(parts), "source": data.source}
    if data.schema.entity in table.column_names:
        summary["entities"] = pc.count_distinct(table[data.schema.entity]).as_py()
    if data.schema.time in table.column_names and pa.types.is_timestamp(
        table[data.schema.time].type
    ):
        bounds = pc.min_max(table[data.schema.time]).as_py()
        summary["time_min"] = None if bounds["min"] is None else bounds["min"].isoformat()
        summary["time_max"] = None if bounds["max"] is None else bounds["max"].isoformat()
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
