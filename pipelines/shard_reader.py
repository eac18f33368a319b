"""Reading shards back for training: a split's rows, numpy batches.

The inverse of ``pipelines.shard``'s row layout (docs/architecture.md §3). A split mixes
buckets of different padded length L, so ``read_split`` returns one table whose list columns
are variable-size lists plus ``bucket`` (L) and ``part`` columns; the batch sampler draws
every batch from one bucket (``bucket`` gives its padded length, ``part % world_size`` its
owner rank), and ``to_numpy_batch`` reshapes that batch's flat lists to dense arrays without
a Python loop per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqcore.manifest import load_manifest, part_path
from seqcore.store import locate

LIST_COLUMNS = ("num", "next_event", "forecast")


def _as_variable_lists(table: pa.Table) -> pa.Table:
    """fixed_size_list -> large_list so that buckets of different L share one schema."""
    fields, arrays = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_fixed_size_list(field.type):
            target = pa.large_list(field.type.value_type)
            column, field = column.cast(target), pa.field(field.name, target)
        fields.append(field)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_bucket(
    shard_dir: str | Path, split: str, bound: int, parts: Iterable[int] | None = None
) -> pa.Table:
    """One bucket's rows with their fixed-size list columns, parts in index order."""
    manifest, folder = load_manifest(shard_dir), locate(shard_dir)
    entry = manifest.splits[split].buckets[bound]
    wanted = range(len(entry.parts)) if parts is None else sorted(set(parts))
    tables = [folder.read_table(part_path(split, bound, k)) for k in wanted]
    return pa.concat_tables(tables) if tables else pa.table({})


def read_split(
    shard_dir: str | Path,
    split: str,
    parts: Iterable[int] | None = None,
    files: Mapping[int, Iterable[int]] | None = None,
) -> pa.Table:
    """All rows of a split (buckets ascending, then parts), optionally only some part indices
    (``parts``), or only some files (``files``: bucket bound -> part indices).

    Adds int32 columns ``bucket`` (the row's padded length L) and ``part`` (its part index).
    A training rank reads the files it owns (``pipelines.sampler.bucket_plan``).
    """
    manifest, folder = load_manifest(shard_dir), locate(shard_dir)
    wanted = None if parts is None else sorted(set(parts))
    only = None if files is None else {int(b): sorted(set(ks)) for b, ks in files.items()}
    tables = []
    for bound, entry in manifest.splits[split].buckets.items():
        if only is not None and bound not in only:
            continue
        chosen = wanted if only is None else only[bound]
        for k in range(len(entry.parts)) if chosen is None else chosen:
            if k >= len(entry.parts):
                continue
            table = _as_variable_lists(folder.read_table(part_path(split, bound, k)))
            n = len(table)
            table = table.append_column("bucket", pa.array(np.full(n, bound, np.int32)))
            tables.append(table.append_column("part", pa.array(np.full(n, k, np.int32))))
    if not tables:
        raise ValueError(
            f"{shard_dir}: split {split!r} has no part files matching parts={wanted}, files={only}"
        )
    return pa.concat_tables(tables)


def read_index(shard_dir: str | Path, split: str) -> dict[str, np.ndarray]:
    """Per example of a split, in ``read_split`` order: ``bucket`` (padded length L),
    ``length``, ``label`` (-1 = none) and ``part`` (its part index), all int64.

    Reads those columns only, so a driver can plan batches and count labels without loading
    the sequences.
    """
    manifest, folder = load_manifest(shard_dir), locate(shard_dir)
    columns: dict[str, list[np.ndarray]] = {"bucket": [], "length": [], "label": [], "part": []}
    for bound, entry in manifest.splits[split].buckets.items():
        for k in range(len(entry.parts)):
            table = folder.read_table(part_path(split, bound, k), columns=["length", "label"])
            columns["bucket"].append(np.full(table.num_rows, bound, np.int64))
            columns["part"].append(np.full(table.num_rows, k, np.int64))
            for name in ("length", "label"):
                columns[name].append(table.column(name).to_numpy().astype(np.int64))
    return {
        name: np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        for name, arrays in columns.items()
    }


def _dense(column: pa.ChunkedArray | pa.Array, rows: int, dtype: type) -> np.ndarray:
    """Flatten a list column whose rows all hold the same number of values -> (rows, k)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values: np.ndarray = np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), dtype)
    return values.reshape(rows, -1)


def to_numpy_batch(
    table: pa.Table, indices: Iterable[int] | np.ndarray, *, trim: bool = False
) -> dict[str, np.ndarray]:
    """Rows ``indices`` of one bucket -> dense arrays.

    ``cat`` (B, L, C) int64, ``num`` (B, L, F) float32, ``length`` (B,) int64, ``label`` (B,)
    int64, ``next_event`` (B, L) int64, ``forecast`` (B, L, H) float32. ``trim`` cuts L to the
    batch's longest example (right padding: only pads are dropped).
    """
    idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, np.int64)
    if not len(idx):
        raise ValueError("a batch needs at least one row")
    rows = table.take(pa.array(idx, pa.int64()))
    b = len(idx)
    sizes = pc.unique(pc.list_value_length(rows.column("next_event"))).to_pylist()
    if len(sizes) != 1:
        raise ValueError(f"a batch must come from one bucket, got padded lengths {sorted(sizes)}")
    next_event = _dense(rows.column("next_event"), b, np.int64)  # (B, L)
    width = next_event.shape[1]
    cat_names = [c for c in rows.column_names if c.startswith("cat__")]
    cat = np.empty((b, width, len(cat_names)), dtype=np.int64)  # (B, L, C)
    for i, name in enumerate(cat_names):
        cat[:, :, i] = _dense(rows.column(name), b, np.int64)
    num = _dense(rows.column("num"), b, np.float32).reshape(b, width, -1)  # (B, L, F)
    forecast = _dense(rows.column("forecast"), b, np.float32).reshape(b, width, -1)  # (B, L, H)
    length = rows.column("length").to_numpy().astype(np.int64)
    keep = int(length.max()) if trim else width
    steps = {"cat": cat, "num": num, "next_event": next_event, "forecast": forecast}
    batch = {k: np.ascontiguousarray(v[:, :keep]) for k, v in steps.items()}
    return {**batch, "length": length, "label": rows.column("label").to_numpy().astype(np.int64)}
