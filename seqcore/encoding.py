"""Raw events to model inputs: the one container of events and the one ``encode``.

:class:`EventColumns` holds the events of several sequences as plain columns (what a
validated serving request carries, or a small table's columns); :func:`encode` groups any
events by entity, orders them and applies a fitted :class:`~seqcore.features.FeatureSpec`,
giving one :class:`EncodedSequence` per entity. Training shards, evaluation, online,
streaming and batch scoring all go through it, so a sequence is encoded the same everywhere
(docs/architecture.md §3, §7).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqcore.arrays import run_offsets, time_us
from seqcore.features import OOV_ID, FeatureSpec, column, numeric_values, time_deltas
from seqcore.schema import SchemaConfig


@dataclass(frozen=True)
class EncodedSequence:
    """One entity's events, time-ordered and encoded as the model sees them."""

    entity: str
    event_time_us: np.ndarray  # (n,) int64
    cat_ids: np.ndarray  # (n, C) int32
    num: np.ndarray  # (n, F) float32


SMALL_TABLE_ROWS = 1024
"""Up to this many events, :func:`encode` replaces Arrow kernels with numpy and
dictionary lookups (:func:`encode_columns`): each kernel call has a fixed cost that dominates
a serving request or a streaming call, and plain lookups only lose near a thousand events
(figures in benchmarks/README.md, "Encoding small tables")."""


@dataclass(frozen=True)
class EventColumns:
    """Raw events of several sequences as plain columns: what a validated serving request
    holds, or a small Arrow table's columns (:func:`table_columns`).

    Rows may come in any order; ``group[i]`` says which sequence (an index into ``names``)
    event ``i`` belongs to. No nulls in ``group``, ``time_us`` or ``seq``.
    """

    names: Sequence[str]
    group: np.ndarray  # (N,) int64
    time_us: np.ndarray  # (N,) int64 microseconds since the epoch (UTC)
    seq: np.ndarray | None  # (N,) int64
    numeric: Mapping[str, np.ndarray]  # column -> (N,) float64, NaN for null
    categorical: Mapping[str, Sequence[str | None]]  # column -> N strings, None for null

    @property
    def num_rows(self) -> int:
        return len(self.time_us)


def concat_columns(parts: Sequence[EventColumns]) -> EventColumns:
    """Several :class:`EventColumns` as one (requests batched into one model call, a stream's
    history and its new events): every part's sequences stay apart (their groups are
    renumbered after the previous parts'), even when two parts name the same entity, and
    :func:`encode` returns them in this order."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    offsets = np.cumsum([0, *(len(p.names) for p in parts[:-1])])
    seqs = [p.seq for p in parts if p.seq is not None]
    return EventColumns(
        names=list(itertools.chain.from_iterable(p.names for p in parts)),
        group=np.concatenate([p.group + o for p, o in zip(parts, offsets, strict=True)]),
        time_us=np.concatenate([p.time_us for p in parts]),
        seq=np.concatenate(seqs) if len(seqs) == len(parts) else None,
        numeric={c: np.concatenate([p.numeric[c] for p in parts]) for c in first.numeric},
        categorical={
            c: list(itertools.chain.from_iterable(p.categorical[c] for p in parts))
            for c in first.categorical
        },
    )


def _vocab_index(spec: FeatureSpec, column: str) -> dict[str | None, int]:
    cache: dict[str, dict[str | None, int]] = spec.__dict__.setdefault("_vocab_index", {})
    if column not in cache:
        cache[column] = {value: i + 2 for i, value in enumerate(spec.vocab[column])}
    return cache[column]


def _strings(values: pa.Array) -> list[str | None] | None:
    """A categorical column as Python strings, as Arrow's cast to string writes them; None
    for types whose string form only Arrow knows (floats, timestamps, ...)."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_null(values.type):
        return [None] * len(values)
    if pa.types.is_integer(values.type):
        values = pc.cast(values, pa.string())
    elif not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return None
    return values.to_pylist()


def table_columns(table: pa.Table, schema: SchemaConfig, spec: FeatureSpec) -> EventColumns | None:
    """A table's events as :class:`EventColumns`, entities numbered in sorted key order (the
    order :func:`encode` returns them in); None where only the Arrow path gives the
    same result: nulls in the entity, time or seq column, or keys or categories that are
    neither strings nor integers."""
    entity = column(table, schema.entity)
    if pa.types.is_dictionary(entity.type):
        entity = entity.dictionary_decode()
    if entity.null_count or not (
        pa.types.is_integer(entity.type) or pa.types.is_string(entity.type)
    ):
        return None
    times = column(table, schema.time)
    seq = None
    if schema.seq and schema.seq in table.column_names:
        seq_col = column(table, schema.seq)
        if seq_col.null_count or not pa.types.is_integer(seq_col.type):
            return None
        seq = seq_col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if times.null_count:
        return None
    categorical = {}
    for col in spec.categorical:
        strings = _strings(column(table, col))
        if strings is None:
            return None
        categorical[col] = strings
    if pa.types.is_integer(entity.type):
        uniques, group = np.unique(entity.to_numpy(zero_copy_only=False), return_inverse=True)
        names = [str(k) for k in uniques.tolist()]
    else:  # strings: Python sorts them by code point, as Arrow does (UTF-8 byte order)
        keys = entity.to_pylist()
        names = sorted(set(keys))
        index = {name: i for i, name in enumerate(names)}
        group = np.fromiter(map(index.__getitem__, keys), np.int64, count=len(keys))
    return EventColumns(
        names=names,
        group=group.astype(np.int64, copy=False).reshape(-1),
        time_us=time_us(times),
        seq=seq,
        numeric={col: numeric_values(column(table, col)) for col in spec.numeric},
        categorical=categorical,
    )


def _sorted_order(group: np.ndarray, t: np.ndarray, seq: np.ndarray | None) -> np.ndarray | None:
    """The stable permutation that orders events by (group, time, seq); None if they already
    are (a request that arrives in order costs no gather)."""
    if len(group) > 1:
        dg, dt = np.diff(group), np.diff(t)
        ahead = (dg > 0) | ((dg == 0) & (dt > 0))
        level = (dg == 0) & (dt == 0)
        if seq is not None:
            ahead |= level & (np.diff(seq) >= 0)
        else:
            ahead |= level
        if ahead.all():
            return None
        return np.lexsort((seq, t, group) if seq is not None else (t, group))
    return None


def encode_columns(columns: EventColumns, spec: FeatureSpec) -> list[EncodedSequence]:
    """:class:`EventColumns` -> one encoded sequence per named group that has events, in
    ``names`` order: exactly what :func:`encode` gives for the same events (the same
    ordering, vocabularies, :meth:`FeatureSpec.standardise_columns` and :func:`time_deltas`),
    without an Arrow kernel call."""
    n = columns.num_rows
    if n == 0:
        return []
    order = _sorted_order(columns.group, columns.time_us, columns.seq)

    def ordered(values: np.ndarray) -> np.ndarray:
        return values if order is None else values[order]

    group, t = ordered(columns.group), ordered(columns.time_us)
    starts = np.flatnonzero(group[1:] != group[:-1]) + 1
    offsets = np.concatenate(([0], starts, [n])).astype(np.int64)
    cat = np.empty((n, len(spec.categorical)), dtype=np.int32)
    for i, col in enumerate(spec.categorical):
        lookup = _vocab_index(spec, col).get
        ids = np.fromiter(
            map(lookup, columns.categorical[col], itertools.repeat(OOV_ID)), np.int32, count=n
        )
        cat[:, i] = ordered(ids)
    raw = np.empty((n, len(spec.numeric_order)), dtype=np.float64)
    for i, col in enumerate(spec.numeric):
        raw[:, i] = ordered(np.asarray(columns.numeric[col], dtype=np.float64))
    if spec.time_delta:
        raw[:, len(spec.numeric)] = time_deltas(t, offsets)
    num = spec.standardise_columns(spec.numeric_order, raw)
    names = columns.names
    return [
        EncodedSequence(names[int(group[a])], t[a:b], cat[a:b], num[a:b])
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def columns_table(columns: EventColumns, schema: SchemaConfig) -> pa.Table:
    """:class:`EventColumns` as an events table for :func:`encode_table`; the entity key is
    the group's index (``names`` maps it back)."""
    data: dict[str, Any] = {
        schema.entity: pa.array(columns.group, pa.int64()),
        schema.time: pa.array(columns.time_us, pa.timestamp("us", "UTC")),
    }
    if schema.seq and columns.seq is not None:
        data[schema.seq] = pa.array(columns.seq, pa.int64())
    for col, values in columns.numeric.items():
        data[col] = pa.array(values, pa.float64())
    for col, strings in columns.categorical.items():
        data[col] = pa.array(strings, pa.string())
    return pa.table(data)


def encode_table(table: pa.Table, spec: FeatureSpec, schema: SchemaConfig) -> list[EncodedSequence]:
    """:func:`encode` with Arrow kernels, for any number of events and any types."""
    keys = [(schema.entity, "ascending"), (schema.time, "ascending")]
    if schema.seq and schema.seq in table.column_names:
        keys.append((schema.seq, "ascending"))
    table = table.take(pc.sort_indices(table, sort_keys=keys))
    entity = column(table, schema.entity)
    offsets = run_offsets(entity)
    cat, num = spec.transform(table, offsets=offsets)
    t = time_us(column(table, schema.time))
    names = pc.cast(entity.take(pa.array(offsets[:-1])), pa.string()).to_pylist()
    return [
        EncodedSequence(name, t[a:b], cat[a:b], num[a:b])
        for name, a, b in zip(names, offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]


def encode(
    events: pa.Table | EventColumns, spec: FeatureSpec, schema: SchemaConfig
) -> list[EncodedSequence]:
    """Raw events in any order -> one encoded sequence per entity: the one way every part
    (shard-time evaluation, the scorer, streaming, batch scoring) turns events into inputs.

    Events are grouped by entity and ordered by (time, seq), exactly as the shard stage orders
    them, then the manifest's features are applied. :class:`EventColumns` (a validated
    request) come back in their ``names`` order, tables in sorted entity-key order with the key
    as a string. Up to ``SMALL_TABLE_ROWS`` events take plain numpy and dictionary lookups
    instead of Arrow kernels, whose fixed cost per call dominates small requests; both paths
    give the same sequences.
    """
    if isinstance(events, EventColumns):
        if events.num_rows <= SMALL_TABLE_ROWS:
            return encode_columns(events, spec)
        encoded = encode_table(columns_table(events, schema), spec, schema)
        found = sorted(encoded, key=lambda s: int(s.entity))
        return [dataclasses.replace(s, entity=events.names[int(s.entity)]) for s in found]
    if events.num_rows <= SMALL_TABLE_ROWS:
        columns = table_columns(events, schema, spec)
        if columns is not None:
            return encode_columns(columns, spec)
    return encode_table(events, spec, schema)
