"""The shard stage: validated events -> split, windowed, bucketed, padded Parquet shards.

Follows docs/architecture.md §3: ``<out>/<split>/bucket=<L>/part-<k>.parquet`` plus
``manifest.json`` holding everything needed to read the shards and to rebuild the same
preprocessing at serving time, and the data contract's per-event rules that served requests
are held to (``validate``'s, through ``data_checks.rules.serving_contract``). Splits are
decided first, preprocessing is fitted on training rows only, and the split-leakage check
runs on what was actually written.

The stage is a map and a reduce over the validated parts (one part per task, as Ray tasks
through ``pipelines.fanout``), so its memory is that of a part, not of the table:

1. ``_split_plan``: what no part decides alone, the time cutoffs at quantiles of all event
   times (found exactly by counting, ``time_quantiles``) or whether the split column names
   any val entity;
2. ``fit_part`` per part: vocabulary counts, numeric moments and train labels of its training
   rows, and the lengths of its windows; ``_fit`` merges them into the feature spec, the
   classes and the bucket bounds, and deals each part's examples their file numbers;
3. ``write_part`` per part: encode, window, bucket and pad, each shard file's rows written
   aside, and the split-leakage check on the part's examples (an entity's events are all in
   one part, so the parts' results merge exactly: ``data_checks.leakage.merge_leakage``);
   ``_reduce`` writes every shard file from its parts' rows in part order.

The files hold what one pass over the parts' concatenation writes, row for row
(tests/unit/test_shard_parts.py); numeric statistics merged from moments may differ from one
pass in their last bits. The output folder is built aside and renamed into place, or
published as a snapshot on ``data.store`` (``seqcore.store``), so an interrupted run leaves
the previous shards intact.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_checks.drift import contract_hists
from data_checks.leakage import (
    NO_TARGET,
    LeakageResult,
    SplitExamples,
    check_split_leakage,
    merge_leakage,
)
from data_checks.rules import serving_contract
from pipelines.config import Params
from pipelines.fanout import Part, engine, list_parts, map_parts
from pipelines.params.data import DataConfig
from pipelines.params.shard import SplitConfig
from pipelines.stage import stage_main
from pipelines.windows import (
    PaddedIndex,
    assign_buckets,
    bucket_boundaries_counted,
    entity_split,
    make_windows,
    order_events,
    quantile_rank,
    visible_counts,
)
from seqcore import io
from seqcore.arrays import time_us
from seqcore.config import to_jsonable
from seqcore.features import FeatureCounts, FeatureSpec
from seqcore.manifest import (
    SPLITS,
    BucketEntry,
    ForecastTarget,
    InputInfo,
    LabelTarget,
    Manifest,
    NextEventTarget,
    SplitEntry,
    Targets,
    WindowInfo,
    part_path,
)
from seqcore.profile import Hist, Profile, profile_events, table_arrival, transition_column
from seqcore.schema import SchemaConfig
from seqcore.store import (
    Destination,
    FileEntry,
    Location,
    Output,
    Scratch,
    check_store,
    content_hash,
    output_dir,
    scratch_dir,
    snapshot_files,
)

log = logging.getLogger("seqops.shard")

HASH_RULE = "fnv1a64(salt + utf8(key)) + splitmix64; u = (h >> 11) / 2**53; cumsum(fractions)"
# Padded list columns: Parquet dictionaries and statistics cost more than they save there.
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1, "use_dictionary": False,
                   "write_statistics": False}  # fmt: skip


class ShardError(RuntimeError):
    """The data cannot be sharded as configured (or the result would leak across splits)."""


def _iso(us: int) -> str:
    return to_jsonable(pa.scalar(us, pa.timestamp("us", tz="UTC")).as_py())


@dataclass(frozen=True)
class EventArrays:
    """Per-event model inputs and targets, entity-grouped and time-ordered (N rows)."""

    offsets: np.ndarray  # (G+1,) entity boundaries
    keys: pa.Array  # (G,) entity keys as strings
    t: np.ndarray  # (N,) int64 us
    cat: np.ndarray  # (N, C) int32 vocab ids, column-major
    num: np.ndarray  # (N, F) float32, column-major
    next_event: np.ndarray | None  # (N,) int32 vocab ids of schema.next_event
    forecast: np.ndarray | None  # (N,) float32 standardised schema.forecast, NaN if missing
    labels: np.ndarray | None  # (N,) int64 class index of the entity's label, -1 where none


@dataclass(frozen=True)
class SplitPlan:
    """The split decisions every part applies alike, made before any part runs."""

    info: dict[str, Any]
    """The manifest's split section."""
    cutoffs: tuple[int, int] | None = None
    """Time method: (train_end, val_end) in us."""
    carve_val: bool = False
    """Column method: no value means val anywhere, so val entities come out of train."""


@dataclass(frozen=True)
class PartPrep:
    """One part's events ordered and split (both passes over a part start from this)."""

    table: pa.Table
    offsets: np.ndarray
    keys: pa.Array
    t: np.ndarray
    prefixes: dict[str, tuple[np.ndarray, np.ndarray]]
    """Per split: (visible prefix length, bound the window end must exceed) per entity."""
    train_rows: np.ndarray
    reordered: int
    arrival: Hist | None = None
    """Events after their entity's first, in order or behind an earlier one, in the part's
    row order (``seqcore.profile.arrival_order``)."""


def _check_input(parts: list[Part], schema: SchemaConfig, split_column: str | None) -> None:
    """Refuse, before any part runs, a table that lacks a mapped column or has no events."""
    columns = [*schema.required_columns, *([split_column] if split_column else [])]
    names = parts[0].schema().names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ShardError(
            f"{parts[0].path}: missing column(s) {', '.join(missing)} "
            "(see data.schema and shard.split.column)"
        )
    if not sum(p.rows for p in parts):
        raise ShardError(f"{parts[0].folder.show()}: no events to shard")


def _read(part: Part, schema: SchemaConfig, split_column: str | None = None) -> pa.Table:
    """The columns the schema maps (and the split column of the column split method) of one
    part, refusing what the validate stage should have stopped."""
    columns = [*schema.required_columns, *([split_column] if split_column else [])]
    path = part.path
    try:
        table = part.read(columns=columns)
    except pa.ArrowInvalid as exc:
        raise ShardError(f"{path}: {str(exc).splitlines()[0]} (see data.schema)") from None
    for col in (schema.entity, schema.time):
        if table.column(col).null_count:
            raise ShardError(f"{path}: {table.column(col).null_count} nulls in key column {col!r}")
    if not pa.types.is_timestamp(table.schema.field(schema.time).type):
        raise ShardError(f"{path}: time column {schema.time!r} is not a timestamp")
    # Encode plain categorical columns once: fitting and transforming then share the dictionary.
    for col in schema.categorical:
        if not pa.types.is_dictionary(table.schema.field(col).type):
            i = table.schema.get_field_index(col)
            table = table.set_column(i, col, pc.dictionary_encode(table.column(col)))
    return table


def column_split(
    column: pa.ChunkedArray,
    keys: pa.Array,
    offsets: np.ndarray,
    cfg: SplitConfig,
    salt: str,
    carve_val: bool,
) -> np.ndarray:
    """Split index per entity (0 train, 1 val, 2 test) from the column naming it.

    Every event of an entity must carry the same value, one that ``shard.split.values``
    knows; anything else is refused with the entities and values named, since guessing would
    move examples across the split the user's results are compared on. ``carve_val`` (no val
    value in the whole table, ``_split_plan``): validation entities are carved out of train
    by the entity method's hash."""
    name = cfg.column
    encoded = pc.dictionary_encode(pc.cast(column, pa.string())).combine_chunks()
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    first = codes[offsets[:-1]]
    mixed = np.flatnonzero(np.add.reduceat(codes != np.repeat(first, np.diff(offsets)),
                                           offsets[:-1]) > 0) if len(codes) else np.zeros(0, int)  # fmt: skip
    if len(mixed):
        shown = ", ".join(repr(k) for k in keys.take(pa.array(mixed[:5])).to_pylist())
        raise ShardError(
            f"shard.split.column {name!r}: {len(mixed)} entities have more than one value "
            f"(e.g. entities {shown}); the column method needs one split per entity"
        )
    if (first < 0).any():
        shown = ", ".join(repr(k) for k in keys.filter(pa.array(first < 0)).to_pylist()[:5])
        raise ShardError(
            f"shard.split.column {name!r}: {int((first < 0).sum())} entities have no value "
            f"(e.g. entities {shown})"
        )
    meaning = {v: SPLITS.index(s) for s, vs in cfg.values.items() for v in vs}
    found = encoded.dictionary.to_pylist()
    unknown = [v for v in found if v not in meaning]
    if unknown:
        raise ShardError(
            f"shard.split.column {name!r}: value(s) {unknown[:5]} mean no split; map them in "
            f"shard.split.values (now {dict(cfg.values)})"
        )
    split = np.array([meaning[v] for v in found], dtype=np.int8)[first]
    if carve_val:
        train = np.flatnonzero(split == 0)
        fractions = (1.0 - cfg.val_fraction, cfg.val_fraction, 0.0)
        split[train[entity_split(keys.take(pa.array(train)), fractions, salt) == 1]] = 1
    return split


def _salt(params: Params) -> str:
    return f"seqops-split:{params.seed}"


def _split_plan(parts: list[Part], params: Params) -> SplitPlan:
    """What no part can decide alone: the time cutoffs at quantiles of all event times, and
    whether any entity of the table is in val (column method)."""
    cfg = params.shard.split
    salt = _salt(params)
    if cfg.method == "entity":
        return SplitPlan(
            {"method": "entity", "fractions": list(cfg.fractions), "salt": salt,
             "hash": HASH_RULE}
        )  # fmt: skip
    if cfg.method == "column":
        assert cfg.column is not None
        found: set[Any] = set()
        for part in parts:
            column = part.read(columns=[cfg.column])[cfg.column]
            found.update(pc.unique(pc.cast(column, pa.string())).drop_null().to_pylist())
        meaning = {v: SPLITS.index(s) for s, vs in cfg.values.items() for v in vs}
        unknown = sorted(v for v in found if v not in meaning)
        if unknown:
            raise ShardError(
                f"shard.split.column {cfg.column!r}: value(s) {unknown[:5]} mean no split; map "
                f"them in shard.split.values (now {dict(cfg.values)})"
            )
        carve = not any(meaning[v] == 1 for v in found) and cfg.val_fraction > 0
        info: dict[str, Any] = {
            "method": "column", "column": cfg.column, "values": dict(cfg.values),
        }  # fmt: skip
        if carve:
            info.update(val_from_train=cfg.val_fraction, salt=salt, hash=HASH_RULE)
        return SplitPlan(info, carve_val=carve)
    if cfg.train_end is not None and cfg.val_end is not None:
        train_end = pa.scalar(cfg.train_end, pa.timestamp("us", "UTC")).value
        val_end = pa.scalar(cfg.val_end, pa.timestamp("us", "UTC")).value
        source = "params"
    else:
        column = params.data.schema.time
        train_end, val_end = time_quantiles(parts, column, tuple(cfg.time_quantiles))
        source = f"quantiles {list(cfg.time_quantiles)} of event time"
    info = {
        "method": "time",
        "train_end": _iso(train_end),
        "val_end": _iso(val_end),
        "cutoffs_from": source,
        "rule": "train sees events <= train_end; val windows end in (train_end, val_end];"
        " test windows end after val_end; targets never go beyond the split's visible events",
    }
    return SplitPlan(info, cutoffs=(train_end, val_end))


BINS = 1 << 16


def time_quantiles(parts: list[Part], column: str, quantiles: tuple[float, ...]) -> tuple[int, ...]:
    """``time_cutoffs`` over all parts, exactly, holding one part's times at a time: the
    ranks the quantiles need are found in a histogram of all times, then the values of the
    (one or two) bins that hold them are gathered and sorted."""

    def times(part: Part) -> np.ndarray:
        return time_us(part.read(columns=[column])[column])

    low, high, n = np.iinfo(np.int64).max, np.iinfo(np.int64).min, 0
    for part in parts:
        t = times(part)
        if len(t):
            low, high, n = min(low, int(t.min())), max(high, int(t.max())), n + len(t)
    if not n:
        raise ShardError("no events to derive time cutoffs from")
    edges = np.linspace(low, high + 1, BINS + 1)  # float edges: a span of years is fine
    counts = np.zeros(BINS, dtype=np.int64)
    for part in parts:
        counts += np.bincount(_bin(times(part), edges), minlength=BINS)
    ranks = [quantile_rank(n, q) for q in quantiles]
    cum = np.cumsum(counts)
    bins = [int(np.searchsorted(cum, r, side="right")) for r in ranks]
    held: dict[int, list[np.ndarray]] = {b: [] for b in bins}
    for part in parts:
        t = times(part)
        which = _bin(t, edges)
        for b in held:
            held[b].append(t[which == b])
    out = []
    for rank, b in zip(ranks, bins, strict=True):
        values = np.sort(np.concatenate(held[b]))
        out.append(int(values[rank - (int(cum[b - 1]) if b else 0)]))
    return tuple(out)


def _bin(t: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)


def _part_split(
    prep_keys: pa.Array,
    t: np.ndarray,
    offsets: np.ndarray,
    params: Params,
    plan: SplitPlan,
    split_column: pa.ChunkedArray | None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Per-split prefixes and the train-row mask of one part's entities."""
    cfg, sizes = params.shard.split, np.diff(offsets)
    zero = np.zeros_like(sizes)
    if cfg.method in ("entity", "column"):
        if cfg.method == "column":
            assert split_column is not None
            split = column_split(
                split_column, prep_keys, offsets, cfg, _salt(params), plan.carve_val
            )
        else:
            split = entity_split(prep_keys, cfg.fractions, _salt(params))
        prefixes = {s: (np.where(split == i, sizes, 0), zero) for i, s in enumerate(SPLITS)}
        return prefixes, np.repeat(split == 0, sizes)
    assert plan.cutoffs is not None
    train_end, val_end = plan.cutoffs
    n_train = visible_counts(t, offsets, train_end)
    n_val = visible_counts(t, offsets, val_end)
    prefixes = {"train": (n_train, zero), "val": (n_val, n_train), "test": (sizes, n_val)}
    return prefixes, t <= train_end


def _prepare(part: Part, params: Params, plan: SplitPlan, arrival: bool = False) -> PartPrep:
    """Read one part, order its events and split its entities; with ``arrival``, count the
    events that came in out of order first."""
    schema = params.data.schema
    split_column = params.shard.split.column if params.shard.split.method == "column" else None
    table = _read(part, schema, split_column)
    order = table_arrival(table, schema) if arrival else None
    table, offsets, t, reordered = order_events(table, schema.entity, schema.time, schema.seq)
    keys = pc.cast(table.column(schema.entity).take(pa.array(offsets[:-1])), pa.string())
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    prefixes, train_rows = _part_split(
        keys, t, offsets, params, plan, table.column(split_column) if split_column else None
    )
    return PartPrep(table, offsets, keys, t, prefixes, train_rows, reordered, order)


def _label_values(column: pa.ChunkedArray, name: str) -> pa.Array:
    """The label column as strings, integers or booleans (what a class label can be)."""
    values = column.combine_chunks()
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.dictionary_decode(), kind.value_type
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return values.cast(pa.string())
    if pa.types.is_floating(kind):  # integer labels with nulls, as pandas writes them
        finite = values.drop_null().to_numpy(zero_copy_only=False)
        if not np.all(np.isfinite(finite) & (finite == np.round(finite))):
            example = float(next(v for v in finite if not (np.isfinite(v) and v == round(v))))
            raise ShardError(
                f"label column {name!r} holds {example!r}: a class label is a string, an "
                "integer or a boolean (for a numeric target use the forecast task)"
            )
        return values.cast(pa.int64())
    if pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return values
    raise ShardError(
        f"label column {name!r} has type {kind}; a class label is a string, an integer or a "
        "boolean (see data.schema.label)"
    )


def train_labels(column: pa.ChunkedArray, train_rows: np.ndarray, name: str) -> pa.Array:
    """The distinct labels of the training rows: the classes, once parts' are merged
    (``label_classes``). Classes come from training rows only, like every other fitted part
    of preprocessing."""
    values = _label_values(column, name)
    return pc.unique(values.filter(pa.array(train_rows, pa.bool_())).drop_null())


def label_classes(seen: list[pa.Array]) -> tuple[Any, ...]:
    """The classes, sorted, from the parts' ``train_labels``."""
    values = pc.unique(pa.concat_arrays(seen)) if seen else pa.array([], pa.string())
    return tuple(values.take(pc.sort_indices(values)).to_pylist())


def label_index(column: pa.ChunkedArray, classes: tuple[Any, ...], name: str) -> np.ndarray:
    """Each row's class index; a label that training never saw, and a null, become -1."""
    values = _label_values(column, name)
    index = pc.index_in(values, value_set=pa.array(classes, values.type))
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _fsl(values: np.ndarray, size: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), size)


def part_table(
    ix: PaddedIndex, group: np.ndarray, ev: EventArrays, spec: FeatureSpec, horizon: int
) -> tuple[pa.Table, np.ndarray]:
    """One part file's rows (the contract's shard row layout) and each row's target offset."""
    n, width = ix.mask.shape
    length = ix.mask.sum(axis=1)
    last = ix.idx[np.arange(n), length - 1] if n else np.zeros(0, np.int64)
    cols: dict[str, pa.Array] = {
        "entity": ev.keys.take(pa.array(group, pa.int64())),
        "window_end": pa.array(ev.t[last]).cast(pa.timestamp("us", tz="UTC")),
        "length": pa.array(length, pa.int32()),
    }
    for i, col in enumerate(spec.categorical):
        cols[f"cat__{col}"] = _fsl(ix.take(ev.cat[:, i]), width)
    num = np.empty((n, width, ev.num.shape[1]), dtype=np.float32)  # (n, L, F)
    for f in range(ev.num.shape[1]):
        num[:, :, f] = ix.take(ev.num[:, f], 0.0)
    cols["num"] = _fsl(num, width * num.shape[2])
    cols["label"] = pa.array(np.full(n, -1) if ev.labels is None else ev.labels[last], pa.int64())
    ne = None if ev.next_event is None else ix.take_next(ev.next_event, 0)  # (n, L)
    cols["next_event"] = _fsl(np.zeros((n, width), np.int32) if ne is None else ne, width)
    fc = None if ev.forecast is None else ix.take_ahead(ev.forecast, horizon)  # (n, L, H)
    no_fc = np.full((n, width, horizon), np.nan, np.float32)
    cols["forecast"] = _fsl(no_fc if fc is None else fc, width * horizon)
    return pa.table(cols), ix.target_offset(ne, fc)


def _stats(examples: int, real: int, padded: int) -> dict[str, Any]:
    pad = round((padded - real) / padded, 6) if padded else 0.0
    return {"examples": examples, "real_tokens": real, "padded_tokens": padded, "pad_fraction": pad}


# --------------------------------------------------------------------------- map: fit


@dataclass(frozen=True)
class Job:
    """What every part's task needs, sent to the cluster once."""

    params: Params
    plan: SplitPlan
    fitted: Fitted | None = None
    scratch: Scratch | None = None


@dataclass(frozen=True)
class PartFit:
    """What one part contributes to the fit: counts that add up over parts."""

    counts: FeatureCounts
    labels: pa.Array | None
    lengths: dict[str, np.ndarray]
    """Per split: how many of the part's windows have each length (index)."""
    entities: dict[str, int]
    """Per split: the part's entities with at least one window."""
    events: int
    n_entities: int
    reordered: int


def fit_part(part: Part, job: Job) -> PartFit:
    """One part's share of the fit (a Ray task): feature counts and labels of its training
    rows, and the lengths of its windows, from which the bucket bounds are derived."""
    params = job.params
    schema, cfg = params.data.schema, params.shard
    prep = _prepare(part, params, job.plan)
    try:
        counts = FeatureCounts.of(
            prep.table, schema, cfg.features, rows=prep.train_rows, offsets=prep.offsets
        )
    except (TypeError, pa.ArrowInvalid) as exc:
        raise ShardError(f"{part.path}: {exc}") from None
    labels = None
    if schema.label:
        labels = train_labels(prep.table.column(schema.label), prep.train_rows, schema.label)
    lengths, entities = {}, {}
    for s in SPLITS:
        win = make_windows(*prep.prefixes[s], cfg.window)
        lengths[s] = np.bincount(win.length, minlength=cfg.window.window_len + 1)
        entities[s] = len(np.unique(win.group))
    return PartFit(
        counts, labels, lengths, entities, prep.table.num_rows, len(prep.keys), prep.reordered
    )


@dataclass(frozen=True)
class Fitted:
    """The fit over all parts, and where each part's examples go."""

    spec: FeatureSpec
    classes: tuple[Any, ...]
    bounds: tuple[int, ...]
    derived: str
    present: dict[str, list[int]]
    """Per split: the buckets (indices into ``bounds``) that get files."""
    first: dict[str, np.ndarray]
    """Per split: (parts, buckets) the number, in the split's deal over all parts, of each
    part's first example of each bucket; examples are dealt to the ``max_workers`` files
    round-robin in part order, so the files hold what one pass over the table deals them."""


def _fit(fits: list[PartFit], params: Params) -> Fitted:
    """Merge the parts' fits: features, classes, bucket bounds, and the deal of examples."""
    schema, cfg = params.data.schema, params.shard
    spec = FeatureCounts.merge([f.counts for f in fits]).spec(schema, cfg.features)
    classes: tuple[Any, ...] = ()
    if schema.label:
        classes = label_classes([f.labels for f in fits if f.labels is not None])
    width = cfg.window.window_len
    train = np.sum([f.lengths["train"] for f in fits], axis=0)
    if not train.sum():
        raise ShardError("no training examples (no train window reaches window.min_length)")
    bounds, derived = bucket_boundaries_counted(train, cfg.buckets, width)
    edges = np.concatenate(([0], np.asarray(bounds) + 1))  # lengths of bucket b: [e_b, e_b+1)
    present, first = {}, {}
    for s in SPLITS:
        # (parts, buckets): examples of each part in each bucket
        counts = np.array(
            [np.add.reduceat(f.lengths[s][: edges[-1]], edges[:-1]) for f in fits], np.int64
        ).reshape(len(fits), len(bounds))
        totals = counts.sum(axis=0)
        present[s] = [b for b in range(len(bounds)) if totals[b]] or [len(bounds) - 1]
        dealt = np.zeros(len(bounds), np.int64)  # examples of earlier present buckets
        running = 0
        for b in present[s]:
            dealt[b] = running
            running += int(totals[b])
        before = np.cumsum(counts, axis=0) - counts  # examples of earlier parts
        first[s] = before + dealt
    return Fitted(spec, classes, tuple(bounds), derived, present, first)


# --------------------------------------------------------------------------- map: write


@dataclass(frozen=True)
class Piece:
    """One part's rows of one shard file, written aside, and what the reduce needs of them."""

    name: str | None
    """Its file in the stage's scratch; None when the part has no rows for the file."""
    rows: int
    real_tokens: int


@dataclass(frozen=True)
class PartWritten:
    pieces: dict[tuple[str, int, int], Piece]
    """By (split, bucket bound, file number k)."""
    schemas: dict[int, pa.Schema]
    """The shard row schema of each bucket bound (for files no part has rows for)."""
    leakage: LeakageResult
    """The split-leakage check on this part's examples: an entity lives in one part, so the
    parts' results merge into the whole output's (``merge_leakage``)."""
    unlabeled: dict[str, int]
    """Examples of each split without a known label."""
    profile: Profile
    """The part's training events profiled (``seqcore.profile``); the arrival order over all
    its events."""


def _train_profile(prep: PartPrep, cat: np.ndarray, num: np.ndarray, spec: FeatureSpec,
                   schema: SchemaConfig) -> Profile:  # fmt: skip
    """The profile of the part's training events: each entity's training prefix."""
    n_train = prep.prefixes["train"][0]
    rows = prep.train_rows
    profile = profile_events(
        np.concatenate(([0], np.cumsum(n_train))), prep.t[rows], cat[rows], num[rows], spec,
        transition_column(schema),
    )  # fmt: skip
    profile.order = prep.arrival
    return profile


def write_part(part: Part, job: Job) -> PartWritten:
    """Encode, window, bucket and pad one part's events, and write its rows of each shard
    file aside (a Ray task); returns what the reduce and the leakage check need."""
    assert job.fitted is not None and job.scratch is not None
    params, fitted = job.params, job.fitted
    schema, cfg = params.data.schema, params.shard
    prep = _prepare(part, params, job.plan, arrival=True)
    spec, table = fitted.spec, prep.table
    try:
        cat, num = spec.transform(table, offsets=prep.offsets)
        forecast = None
        if schema.forecast:  # the standardised feature, but NaN (no target) where not finite
            raw = pc.cast(table.column(schema.forecast), pa.float64()).to_numpy()
            forecast = num[:, spec.numeric.index(schema.forecast)].copy()
            forecast[~np.isfinite(raw)] = np.nan
    except (TypeError, pa.ArrowInvalid) as exc:
        raise ShardError(f"{part.path}: {exc}") from None
    next_event = cat[:, spec.categorical.index(schema.next_event)] if schema.next_event else None
    labels = None
    if schema.label:
        labels = label_index(table.column(schema.label), fitted.classes, schema.label)
    profile = _train_profile(prep, cat, num, spec, schema)
    ev = EventArrays(prep.offsets, prep.keys, prep.t, cat, num, next_event, forecast, labels)
    prefixes = prep.prefixes
    del table, prep, cat, num
    workers, horizon = cfg.max_workers, cfg.forecast_horizon
    pieces: dict[tuple[str, int, int], Piece] = {}
    schemas: dict[int, pa.Schema] = {}
    examples: dict[str, SplitExamples] = {}
    unlabeled: dict[str, int] = {}
    for s in SPLITS:
        entity: list[pa.Array] = []
        window_end: list[np.ndarray] = []
        target_end: list[np.ndarray] = []
        unlabeled[s] = 0
        n_visible = prefixes[s][0]
        win = make_windows(*prefixes[s], cfg.window)
        lengths, bucket_of = win.length, assign_buckets(win.length, fitted.bounds)
        start = ev.offsets[win.group] + win.start
        limit = ev.offsets[win.group] + n_visible[win.group]
        for b in fitted.present[s]:
            width, members = fitted.bounds[b], np.flatnonzero(bucket_of == b)
            # Round-robin over all parts, continued across buckets (``Fitted.first``): parts
            # differ by at most one row in a bucket and in the split.
            k_of = (fitted.first[s][part.index, b] + np.arange(len(members))) % workers
            for k in range(workers):
                sel = members[k_of == k]
                ix = PaddedIndex.build(start[sel], lengths[sel], limit[sel], width)
                rows, offset = part_table(ix, win.group[sel], ev, fitted.spec, horizon)
                schemas.setdefault(width, rows.schema)
                name = None
                if len(sel):
                    name = f"{s}/{width}/{k}/{part.stem}.arrow"
                    _write_piece(rows, job.scratch.path(name))
                    job.scratch.put(name)
                at = np.where(offset >= 0, start[sel] + offset, 0)
                pieces[(s, width, k)] = Piece(name, len(sel), int(lengths[sel].sum()))
                entity.append(rows.column("entity").combine_chunks())
                window_end.append(rows.column("window_end").cast(pa.int64()).to_numpy())
                target_end.append(np.where(offset >= 0, ev.t[at], NO_TARGET))
                unlabeled[s] += int((rows.column("label").to_numpy() < 0).sum())
        examples[s] = SplitExamples(
            entity=pa.concat_arrays(entity) if entity else pa.array([], pa.string()),
            window_end=np.concatenate(window_end) if window_end else np.zeros(0, np.int64),
            target_end=np.concatenate(target_end) if target_end else np.zeros(0, np.int64),
        )
    cut = job.plan.cutoffs or (None, None)
    # A column split is an entity split: no entity may appear on two sides.
    method = "time" if job.plan.info["method"] == "time" else "entity"
    leakage = check_split_leakage(method, examples, train_end_us=cut[0], val_end_us=cut[1])
    return PartWritten(pieces, schemas, leakage, unlabeled, profile)


# --------------------------------------------------------------------------- reduce


ROW_GROUP_BYTES = 128 * 1024**2
"""A shard file is written a row group at a time, each at most this big (padded rows)."""
PIECE_ROW_GROUP_ROWS = 1 << 20
"""pyarrow's default row group: a file that fits one is written as one write_table did."""


def _write_piece(rows: pa.Table, path: Path) -> None:
    """Pieces live only until the reduce reads them once: Arrow IPC, uncompressed, costs
    neither a compression on write nor a decode on read (the reduce maps it)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, rows.schema) as writer:
        writer.write_table(rows)


def _piece_batches(path: Path) -> list[pa.RecordBatch]:
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    return [reader.get_batch(i) for i in range(reader.num_record_batches)]


def _group_rows(schema: pa.Schema) -> int:
    """Rows per row group of a shard file: pyarrow's default, or fewer for wide rows."""
    return max(1, min(PIECE_ROW_GROUP_ROWS, ROW_GROUP_BYTES // _row_bytes(schema)))


def _gather(files: list[Path], total: int, schema: pa.Schema, path: Path) -> None:
    """One shard file from its pieces in part order, a bounded row group at a time."""
    group = _group_rows(schema)
    if total <= group:  # the common case: the bytes one write_table of the rows gives
        batches = [b for f in files for b in _piece_batches(f)]
        pq.write_table(pa.Table.from_batches(batches, schema), path, **PARQUET_OPTIONS)
        return
    with pq.ParquetWriter(path, schema, **PARQUET_OPTIONS) as writer:
        held: list[pa.Table] = []
        rows = 0
        for file in files:
            for batch in _piece_batches(file):
                table = pa.Table.from_batches([batch], schema)
                held.append(table)
                rows += table.num_rows
                while rows >= group:
                    joined = pa.concat_tables(held)
                    writer.write_table(joined.slice(0, group), row_group_size=group)
                    held, rows = [joined.slice(group)], rows - group
        if rows:
            writer.write_table(pa.concat_tables(held), row_group_size=group)


def _row_bytes(schema: pa.Schema) -> int:
    """About how many bytes one shard row takes (fixed-size lists of 4-byte values)."""
    size = 0
    for field in schema:
        kind = field.type
        if pa.types.is_fixed_size_list(kind):
            size += kind.list_size * max(1, kind.value_type.bit_width // 8)
        else:
            size += 16
    return size


@dataclass(frozen=True)
class ShardFile:
    """One shard file to gather from its pieces: a unit of work for ``pipelines.fanout``."""

    index: int
    name: str
    """Its path in the shard folder (``seqcore.manifest.part_path``)."""
    rows: int
    arrow_bytes: int
    pieces: tuple[str, ...]
    """Its pieces' files in ``scratch``, in part order."""
    schema: pa.Schema
    out: Destination
    scratch: Scratch

    @property
    def path(self) -> str:
        return self.out.location.show(self.name)


def gather_file(unit: ShardFile, _: object) -> FileEntry:
    """Write one shard file from its pieces and publish it (a Ray task); its size and sha256
    for the manifest."""
    files = [unit.scratch.get(name) for name in unit.pieces]
    _gather(files, unit.rows, unit.schema, unit.out.local(unit.name))
    for name in unit.pieces:
        unit.scratch.done(name)
    entry = unit.out.publish(unit.name, digest=True)
    assert entry is not None
    return entry


def _reduce(
    out: Output,
    written: list[PartWritten],
    fits: list[PartFit],
    fitted: Fitted,
    params: Params,
    data: DataConfig,
    scratch: Scratch,
) -> dict[str, SplitEntry]:
    """Write every shard file from its pieces (one task per file); the manifest's split
    entries."""
    cfg = params.shard
    splits: dict[str, SplitEntry] = {}
    files: list[ShardFile] = []
    for s in SPLITS:
        buckets: dict[int, BucketEntry] = {}
        for b in fitted.present[s]:
            width = fitted.bounds[b]
            schema = next(w.schemas[width] for w in written if width in w.schemas)
            examples = real = 0
            for k in range(cfg.max_workers):
                pieces = [w.pieces[(s, width, k)] for w in written]
                rows = sum(p.rows for p in pieces)
                names = tuple(p.name for p in pieces if p.name is not None)
                size = min(rows, _group_rows(schema)) * _row_bytes(schema)
                name = part_path(s, width, k)
                files.append(
                    ShardFile(len(files), name, rows, size, names, schema, out.destination, scratch)
                )
                examples += rows
                real += sum(p.real_tokens for p in pieces)
            parts = tuple(part_path(s, width, k) for k in range(cfg.max_workers))
            buckets[width] = BucketEntry(**_stats(examples, real, examples * width), parts=parts)
        total = sum(e.examples for e in buckets.values())
        stats = _stats(
            total,
            sum(e.real_tokens for e in buckets.values()),
            sum(e.padded_tokens for e in buckets.values()),
        )
        entities = sum(f.entities[s] for f in fits)
        splits[s] = SplitEntry(**stats, entities=entities, buckets=buckets)
    entries = map_parts(gather_file, files, None, data, what="shard: gather", memory_factor=2.0)
    for file, entry in zip(files, entries, strict=True):
        out.add(file.name, entry)
    return splits


def _targets(fitted: Fitted, params: Params, unlabeled: dict[str, int]) -> Targets:
    schema, spec = params.data.schema, fitted.spec
    col = schema.forecast
    return Targets(
        label=LabelTarget(schema.label, fitted.classes, unlabeled=unlabeled)
        if schema.label
        else None,
        next_event=NextEventTarget(schema.next_event, spec.vocab_size(schema.next_event))
        if schema.next_event
        else None,
        forecast=ForecastTarget(
            column=col,
            horizon=params.shard.forecast_horizon,
            transform=spec.numeric_transform.get(col, "none"),
            mean=spec.mean[col],
            std=spec.std[col],
        )
        if col
        else None,
    )


def _input_hash(path: Path, folder: Location) -> str:
    """The events' hash: a snapshot's from its record; a local file's or folder's from its
    bytes."""
    if path.is_file():
        return io.sha256_file(path)
    recorded = snapshot_files(folder)
    if recorded is not None:
        return content_hash(recorded)
    return io.combined_hash(io.sha256_tree(folder.root))


MEMORY_FACTOR = 6.0
"""A part's shard task takes up to this multiple of its Arrow size beyond the worker's own
memory (padded windows; 1M-row parts: workers peaked at 485-583 MiB; benchmarks/README.md)."""


def run(
    params: Params, validated_path: Path, out_dir: Path, validation: Path | None = None
) -> Manifest:
    """Write the shards and ``manifest.json`` into ``out_dir`` atomically; return the manifest.

    Map and reduce over the validated parts (docs/architecture.md §3): the split decisions
    no part makes alone (``_split_plan``); per part, the counts the fit needs (``fit_part``);
    merged, the features, classes, bucket bounds and the deal of examples to files
    (``_fit``); per part, its examples encoded, padded and written aside, and the leakage
    check on them (``write_part``); the parts' checks merged, then each shard file from its
    parts' pieces (``_reduce``). ``validation``: the validate stage's report, whose ordering
    checks' violation rates join the profile (``data_checks.drift.contract_hists``)."""
    cfg, validated_path = params.shard, Path(validated_path)
    if not validated_path.exists():
        raise FileNotFoundError(f"{validated_path}: not found (run the validate stage first)")
    violations = {} if validation is None else _contract_rates(Path(validation))
    if params.data.store is not None:
        check_store(params.data.store)
    parts = list_parts(validated_path)
    split_column = cfg.split.column if cfg.split.method == "column" else None
    _check_input(parts, params.data.schema, split_column)
    parts = [p for p in parts if p.rows]
    # The validate stage's per-event rules, for the requests the trained model will serve.
    columns = parts[0].schema()
    types = {c: columns.field(c).type for c in params.data.schema.categorical}
    contract = serving_contract(params.validate, params.data.schema, types)
    with ThreadPoolExecutor(max_workers=1) as pool, output_dir(out_dir, params.data.store) as out:
        # hashlib releases the GIL
        input_hash = pool.submit(_input_hash, validated_path, parts[0].folder)
        plan = _split_plan(parts, params)
        # One engine for the whole stage: its input's part count decides, not each step's.
        data = dataclasses.replace(params.data, engine=engine(params.data, parts))
        run_parts = partial(
            map_parts, parts=parts, data=data, memory_factor=MEMORY_FACTOR, fatal=(ShardError,)
        )
        fits = run_parts(fit_part, shared=Job(params, plan), what="shard: fit")
        fitted = _fit(fits, params)
        # The pieces each part writes for each shard file: reached by the gather tasks on
        # any node (under the store with data.store), removed when the stage ends.
        with scratch_dir(params.data.store, out.staging, ".pieces-") as scratch:
            job = Job(params, plan, fitted, scratch)
            written = run_parts(write_part, shared=job, what="shard: write")
            leakage = merge_leakage([w.leakage for w in written])
            if not leakage.passed:
                raise ShardError(f"leakage between splits, shards not written: {leakage.summary()}")
            unlabeled = {s: sum(w.unlabeled[s] for w in written) for s in SPLITS}
            profile = functools.reduce(Profile.merge, (w.profile for w in written))
            profile.contract = violations
            splits = _reduce(out, written, fits, fitted, params, data, scratch)
            del written
        files = {name: entry.sha256 for name, entry in sorted(out.files.items())}
        manifest = Manifest(
            schema=params.data.schema,
            features=fitted.spec,
            targets=_targets(fitted, params, unlabeled),
            bucket_boundaries=fitted.bounds,
            buckets_derived=fitted.derived,
            window=WindowInfo(**to_jsonable(cfg.window), window_len=cfg.window.window_len),
            split=plan.info,
            splits=splits,
            leakage=leakage.to_dict(),
            input=InputInfo(
                events=validated_path.name,
                sha256=input_hash.result(),
                events_count=sum(f.events for f in fits),
                entities=sum(f.n_entities for f in fits),
                reordered_entities=sum(f.reordered for f in fits),
            ),
            max_workers=cfg.max_workers,
            seed=params.seed,
            contract=contract,
            profile=profile,
            files=files,
        )
        # One hash naming the whole output: every shard file plus the rest of the manifest.
        body = json.dumps(manifest.body(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        files_and_body = {**files, "manifest.json": hashlib.sha256(body.encode()).hexdigest()}
        manifest = dataclasses.replace(manifest, content_hash=io.combined_hash(files_and_body))
        io.write_json(out.staging / "manifest.json", manifest.to_json())
        if not out.destination.remote:
            return manifest
        # A snapshot's local folder keeps the manifest beside its pointer: what people read.
        out.local_copies["manifest.json"] = (out.staging / "manifest.json").read_bytes()
        out.publish("manifest.json")
    return manifest


def _contract_rates(report: Path) -> dict[str, Hist]:
    """The validation report's ordering checks, read before any work."""
    try:
        return contract_hists(json.loads(report.read_text()))
    except FileNotFoundError:
        raise ShardError(f"{report}: not found (run the validate stage, or leave out "
                         "--validation)") from None  # fmt: skip
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{report}: not a validation report ({exc})") from None


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", default="data/validated")
    parser.add_argument("--out", default="data/shards")
    parser.add_argument("--metrics", default=None, help="also write a small metrics JSON here")
    parser.add_argument(
        "--validation", default=None,
        help="the validate stage's report: its ordering checks' violation rates join the "
        "training profile that seqops monitor compares new traffic with",
    )  # fmt: skip


def _command(params: Params, args: argparse.Namespace) -> int:
    validation = None if args.validation is None else Path(args.validation)
    manifest = run(params, Path(args.events), Path(args.out), validation)
    metrics: dict[str, Any] = {"n_buckets": len(manifest.bucket_boundaries)}
    for split, entry in manifest.splits.items():
        metrics[split] = {"examples": entry.examples, "pad_fraction": entry.pad_fraction}
        print(f"shard: {split}: {entry.examples} examples, pad {entry.pad_fraction:.1%}")
    print(f"shard: buckets {list(manifest.bucket_boundaries)} ({manifest.buckets_derived})")
    label = manifest.targets.label
    if label is not None:
        metrics["labels"] = {"classes": len(label.classes), "unlabeled": dict(label.unlabeled)}
        shown = ", ".join(map(repr, label.classes[:10])) + (
            " ..." if len(label.classes) > 10 else ""
        )
        print(f"shard: {len(label.classes)} label classes ({shown}); without a known label: "
              + ", ".join(f"{s} {n}" for s, n in label.unlabeled.items()))  # fmt: skip
    if args.metrics:
        io.write_json(args.metrics, metrics)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("shard", _arguments, _command, argv, doc=__doc__, failures=(ShardError,))


if __name__ == "__main__":
    raise SystemExit(main())
