"""Planning batch scoring from Parquet metadata and the entity column, and reading a plan's units.

:func:`serving.batch.score_dataset` needs every entity's events in one scoring call. Reading
only the entity column of each file (cheap: one column, a small share of scoring its events)
tells whether any entity spans files and, per file, whether its rows are grouped by entity.
When no entity spans files, the work is split into :class:`Unit` s that never split an entity
and need no shuffle (:func:`plan_units`):

- small files are packed whole into bins of about ``rows_per_block`` events;
- a file grouped by entity (a validated part, ``data/validated/part-*.parquet``) is cut into row ranges at
  entity boundaries; a task reads only the row groups its range touches, so ranges are not
  made smaller than a row group unless the cluster would otherwise idle;
- a larger file in arrival order (the ingest stage's entity-hash parts) is split into entity
  hash shares (:func:`entity_buckets`), each reading the whole file and keeping its share:
  as few shares as keep every task slot busy, since each share re-reads the file (a read
  and a hash, cheap beside scoring those events: benchmarks/README.md, "Batch scoring").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one Parquet file."""

    path: str
    start: int
    stop: int


@dataclass(frozen=True)
class Unit:
    """One scoring task's input: whole entities, by construction of the plan."""

    pieces: tuple[Piece, ...]
    share: int = 0
    shares: int = 1
    """With ``shares > 1`` only the entities whose hash is ``share`` modulo ``shares``."""


@dataclass(frozen=True)
class FileFacts:
    """What planning learns from one file's metadata and entity column."""

    path: str
    rows: int
    row_group_rows: tuple[int, ...]
    entities: pa.Array
    """The file's distinct entity keys."""
    entity_starts: np.ndarray | None
    """First row of each entity when the file is grouped by entity (each entity's rows
    contiguous), else None."""


def entity_buckets(column: pa.ChunkedArray | pa.Array, n: int) -> np.ndarray:
    """Bucket in ``[0, n)`` per row from a stable hash of the entity key's text.

    The same key gets the same bucket in every file and process (pandas' fixed-key SipHash,
    not Python's salted ``hash``); it is independent of the ingest stage's crc32 part number,
    so the shares of one part file are balanced.
    """
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    import pandas as pd

    keys = np.array([str(v) for v in encoded.dictionary.to_pylist()], dtype=object)
    bucket_of_key = (pd.util.hash_array(keys) % np.uint64(n)).astype(np.int64)
    return bucket_of_key[encoded.indices.to_numpy(zero_copy_only=False)]


def list_files(events_path: Path) -> list[str]:
    """The Parquet files of a file or folder (hidden and ``_`` files skipped), sorted."""
    import pyarrow.dataset as pads

    if not events_path.exists():
        raise FileNotFoundError(f"events dataset not found: {events_path}")
    if events_path.is_file():
        return [str(events_path)]
    return sorted(pads.dataset(events_path, format="parquet").files)


def check_schemas(files: Sequence[str], required: Sequence[str]) -> int:
    """Total rows; fails naming the file on a missing column or a type that differs."""
    first: pa.Schema | None = None
    rows = 0
    for path in files:
        handle = pq.ParquetFile(path)
        schema = handle.schema_arrow
        missing = [c for c in required if c not in schema.names]
        if missing:
            raise ValueError(
                f"events file {path} lacks column(s) {', '.join(missing)}; "
                f"the model needs {', '.join(required)}"
            )
        if first is None:
            first = schema
        for name in required:
            if schema.field(name).type != first.field(name).type:
                raise ValueError(
                    f"events file {path}: column {name} is {schema.field(name).type}, "
                    f"but {files[0]} has {first.field(name).type}; all files need one schema"
                )
        rows += handle.metadata.num_rows
    return rows


def scan_file(path: str, entity: str) -> FileFacts:
    """Read one file's entity column: its distinct keys and whether it is grouped by them."""
    handle = pq.ParquetFile(path)
    column = handle.read(columns=[entity])[entity]
    if column.null_count:
        raise ValueError(f"events file {path}: {column.null_count} event(s) have no {entity}")
    if pa.types.is_dictionary(column.type):  # unused dictionary values must not count
        column = column.cast(column.type.value_type)
    encoded = pc.dictionary_encode(column).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1]).astype(np.int64)
    grouped = len(starts) == len(encoded.dictionary)  # one run per entity
    meta = handle.metadata
    return FileFacts(
        path=path,
        rows=meta.num_rows,
        row_group_rows=_row_group_rows(meta),
        entities=encoded.dictionary,
        entity_starts=starts if grouped and meta.num_rows else None,
    )


def spanning_entities(facts: Sequence[FileFacts]) -> int:
    """How many entity keys appear in more than one file."""
    if len(facts) < 2:
        return 0
    counts = pc.value_counts(pa.chunked_array([f.entities for f in facts]))
    return pc.sum(pc.greater(counts.field("counts"), 1)).as_py() or 0


def _shares(others: int, files: int, slots: int) -> int:
    """Shares per file in arrival order: the fewest (each re-reads the file) that keep the
    slots busy, at least 90% of the task waves full, counting ``others`` units beside."""
    if files == 0:
        return 1
    for k in range(1, slots + 1):
        n = others + files * k
        if n / (slots * math.ceil(n / slots)) >= 0.9:
            return k
    return slots


def plan_units(facts: Sequence[FileFacts], slots: int, rows_per_block: int) -> list[Unit]:
    """Units of whole entities for entity-disjoint files, about ``rows_per_block`` each.

    At least ``slots`` units where the input allows it, so that every task slot has work;
    largest first, so that the last wave is short.
    """
    total = sum(f.rows for f in facts)
    if total == 0:
        return []
    target = math.ceil(total / max(slots, math.ceil(total / rows_per_block)))
    units: list[Unit] = []
    small = [f for f in facts if 0 < f.rows <= target]
    if small:  # whole files in bins of about ``target`` rows, largest file first
        loads = [0] * max(1, min(len(small), round(sum(f.rows for f in small) / target)))
        bins: list[list[Piece]] = [[] for _ in loads]
        for f in sorted(small, key=lambda f: -f.rows):
            i = loads.index(min(loads))
            loads[i] += f.rows
            bins[i].append(Piece(f.path, 0, f.rows))
        units += [Unit(tuple(sorted(b, key=lambda p: p.path))) for b in bins]
    big = [f for f in facts if f.rows > target]
    for f in big:
        if f.entity_starts is not None:  # grouped: row ranges cut at entity boundaries
            # A task reads whole row groups: ranges below a row group would re-read it.
            size = min(max(target, max(f.row_group_rows)), math.ceil(total / slots))
            k = math.ceil(f.rows / size)
            at = np.searchsorted(f.entity_starts, np.arange(1, k) * f.rows / k)
            cuts = np.unique(f.entity_starts[at[at < len(f.entity_starts)]])
            bounds = [0, *[int(c) for c in cuts if 0 < c < f.rows], f.rows]
            pairs = zip(bounds[:-1], bounds[1:], strict=True)
            units += [Unit((Piece(f.path, a, b),)) for a, b in pairs]
    arrival = [f for f in big if f.entity_starts is None]
    shares = _shares(len(units), len(arrival), slots)
    for f in arrival:  # arrival order: hash shares, each reading the whole file
        units += [Unit((Piece(f.path, 0, f.rows),), s, shares) for s in range(shares)]
    return sorted(units, key=lambda u: -sum(p.stop - p.start for p in u.pieces) / u.shares)


# --------------------------------------------------------------------------- reading


def _row_group_rows(meta: pq.FileMetaData) -> tuple[int, ...]:
    return tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))


def _row_groups(group_rows: Sequence[int], piece: Piece) -> tuple[list[int], int, int]:
    """The row groups holding ``piece``'s rows, the first one's first row, their rows."""
    bounds = np.cumsum([0, *group_rows])
    first = int(np.searchsorted(bounds, piece.start, side="right")) - 1
    last = int(np.searchsorted(bounds, piece.stop, side="left"))
    return list(range(first, last)), int(bounds[first]), int(bounds[last] - bounds[first])


def rows_read(piece: Piece, group_rows: Sequence[int]) -> int:
    """Events a task reads for ``piece`` of a file with row groups of ``group_rows`` rows
    (``FileFacts.row_group_rows``): whole row groups, so at least its rows."""
    if piece.stop <= piece.start:
        return 0
    return _row_groups(group_rows, piece)[2]


def read_piece(piece: Piece, columns: Sequence[str], use_threads: bool = True) -> pa.Table:
    """Rows ``[start, stop)`` of a file, reading only the row groups that hold them."""
    handle = pq.ParquetFile(piece.path)
    if piece.stop <= piece.start:
        return handle.schema_arrow.empty_table().select(list(columns))
    groups, offset, _ = _row_groups(_row_group_rows(handle.metadata), piece)
    table = handle.read_row_groups(groups, columns=list(columns), use_threads=use_threads)
    return table.slice(piece.start - offset, piece.stop - piece.start)


def read_unit(unit: Unit, columns: Sequence[str], entity: str, threads: int = 1) -> pa.Table:
    tables = [read_piece(p, columns, use_threads=threads > 1) for p in unit.pieces]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    if unit.shares > 1:
        table = table.filter(entity_buckets(table[entity], unit.shares) == unit.share)
    return table
