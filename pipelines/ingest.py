"""The ingest stage: events in (generated, or a user's Parquet/CSV), the events table out.

Output (docs/architecture.md §1): ``data/events/part-<k>.parquet`` with the mapped columns,
times as UTC timestamps, and ``_arrival`` (``seqcore.schema.ARRIVAL``: the row's position in
the source stream, so that arrival order survives partitioning). Above ``data.rows_per_part``
rows the table is split into parts by a stable hash of the entity key; each part keeps
arrival order.

A user's file is checked here for what ingest itself needs (mapped columns present, types
convertible, times normalised to UTC) with messages that name the column; everything else is
the ordering contract's job (the validate stage). Generated data is passed through as is, so
that planted faults reach the contract.
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

from pipelines.config import Params
from pipelines.generate import generate_events
from pipelines.params.data import DataConfig
from pipelines.stage import stage_main
from seqcore.io import atomic_dir, write_json
from seqcore.schema import ARRIVAL

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


def read_source(config: DataConfig) -> pa.Table:
    """Read a user's events file (Parquet or CSV, file or directory of files)."""
    assert config.path is not None
    fmt = config.format
    if fmt == "auto":
        suffixes = "".join(Path(config.path.split("?")[0]).suffixes).lower()
        fmt = "csv" if ".csv" in suffixes else "parquet"
    filesystem, path = _open_source(config.path)
    try:
        if fmt == "parquet":
            return pq.read_table(path, filesystem=filesystem)
        with filesystem.open_input_stream(path) as stream:
            return pacsv.read_csv(stream)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestError(
            f"data.path: {config.path} is not a readable {fmt} events file: {exc}"
        ) from None


def _to_utc(column: pa.ChunkedArray, name: str, source_tz: str) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            column = pc.assume_timezone(
                column, source_tz, ambiguous="earliest", nonexistent="earliest"
            )
        return pc.cast(column, pa.timestamp("us", tz="UTC"))
    if pa.types.is_date(kind):
        return pc.cast(pc.cast(column, pa.timestamp("us")), pa.timestamp("us", tz="UTC"))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            parsed = pc.cast(column, pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            try:  # no offset in the strings: naive local times of the source zone
                naive = pc.cast(column, pa.timestamp("us"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                sample = next((v for v in column.to_pylist()[:50] if v is not None), None)
                raise IngestError(
                    f"column {name!r} (time): values such as {sample!r} are not ISO-8601 timestamps"
                ) from None
            return _to_utc(naive, name, source_tz)
        return parsed
    raise IngestError(
        f"column {name!r} (time) has type {kind}; expected a timestamp or ISO-8601 strings"
    )


def normalise_user_table(table: pa.Table, config: DataConfig) -> pa.Table:
    """Check the mapped columns of a user's table and bring times to UTC."""
    schema = config.schema
    missing = [c for c in schema.required_columns if c not in table.column_names]
    if missing:
        raise IngestError(
            f"mapped column(s) missing from {config.path}: {', '.join(missing)} "
            f"(found: {', '.join(table.column_names)}); fix data.schema in params.yaml"
        )

    def expect(name: str, role: str, ok: bool, wanted: str) -> None:
        if not ok:
            raise IngestError(
                f"column {name!r} ({role}) has type {table[name].type}; expected {wanted}"
            )

    def is_key(kind: pa.DataType) -> bool:
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        return (
            pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
        )

    expect(schema.entity, "entity key", is_key(table[schema.entity].type), "string or integer")
    if schema.seq:
        expect(
            schema.seq, "sequence number", pa.types.is_integer(table[schema.seq].type), "integer"
        )
    for col in schema.numeric:
        kind = table[col].type
        expect(
            col,
            "numeric feature",
            pa.types.is_integer(kind) or pa.types.is_floating(kind),
            "a number",
        )
    for col in schema.categorical:
        expect(col, "categorical feature", is_key(table[col].type), "string or integer")
    index = table.schema.get_field_index(schema.time)
    return table.set_column(
        index, schema.time, _to_utc(table[schema.time], schema.time, config.source_timezone)
    )


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
    return written


def run(params: Params, out_dir: Path, metrics_path: Path | None = None) -> dict[str, Any]:
    """Produce the events table in ``out_dir``; returns a small summary."""
    data = params.data
    if data.source == "generate":
        names = {
            "entity": data.schema.entity,
            "time": data.schema.time,
            "seq": data.schema.seq or "seq_no",
            "label": data.schema.label or "label",
        }
        table = generate_events(data.generate, params.seed, names)
    else:
        table = normalise_user_table(read_source(data), data)
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
