"""The shard stage: validated events -> split, windowed, bucketed, padded Parquet shards.

Follows docs/architecture.md §3: ``<out>/<split>/bucket=<L>/part-<k>.parquet`` plus
``manifest.json`` holding everything needed to read the shards and to rebuild the same
preprocessing at serving time, and the data contract's per-event rules that served requests
are held to (``validate``'s, through ``data_checks.rules.serving_contract``). Splits are decided first, preprocessing is fitted on
training rows only, and the split-leakage check runs on what was actually written. The
output directory is built aside and renamed into place (``atomic_dir``), so an interrupted
run leaves the previous shards intact. Per-event work is vectorised (``pipelines.windows``):
one read, one encode per column, one gather per output column and part file; Parquet writes
(which release the GIL) overlap the next part's gather.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_checks.leakage import NO_TARGET, SplitExamples, check_split_leakage
from data_checks.rules import serving_contract
from pipelines.config import Params
from pipelines.params.shard import ShardConfig, SplitConfig
from pipelines.stage import stage_main
from pipelines.windows import (
    PaddedIndex,
    Windows,
    assign_buckets,
    bucket_boundaries,
    entity_split,
    make_windows,
    order_events,
    time_cutoffs,
    visible_counts,
)
from seqcore import io
from seqcore.config import to_jsonable
from seqcore.features import FeatureSpec, fit_features
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
from seqcore.schema import SchemaConfig

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
class Plan:
    """Everything decided before any shard is written."""

    events: EventArrays
    spec: FeatureSpec
    prefixes: dict[str, tuple[np.ndarray, np.ndarray]]
    """Per split: (visible prefix length, bound the window end must exceed) per entity."""
    split_info: dict[str, Any]
    cutoffs: tuple[int, int] | None
    reordered: int
    classes: tuple[Any, ...] = ()
    """The label values of the training rows, sorted: class index i is ``classes[i]``."""


def _read(path: Path, schema: SchemaConfig, split_column: str | None = None) -> pa.Table:
    """The columns the schema maps (and the split column of the column split method),
    refusing what the validate stage should have stopped."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (run the validate stage first)")
    columns = [*schema.required_columns, *([split_column] if split_column else [])]
    if path.is_file():
        missing = [c for c in columns if c not in pq.read_schema(path).names]
        if missing:
            raise ShardError(
                f"{path}: missing column(s) {', '.join(missing)} "
                "(see data.schema and shard.split.column)"
            )
    try:
        table = io.read_events(path, columns=columns)
    except pa.ArrowInvalid as exc:
        raise ShardError(f"{path}: {str(exc).splitlines()[0]} (see data.schema)") from None
    if not len(table):
        raise ShardError(f"{path}: no events to shard")
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
    column: pa.ChunkedArray, keys: pa.Array, offsets: np.ndarray, cfg: SplitConfig, salt: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split index per entity (0 train, 1 val, 2 test) from the column naming it.

    Every event of an entity must carry the same value, one that ``shard.split.values``
    knows; anything else is refused with the entities and values named, since guessing would
    move examples across the split the user's results are compared on. With no val value
    present, validation entities are carved out of train by the entity method's hash."""
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
    info: dict[str, Any] = {"method": "column", "column": name, "values": dict(cfg.values)}
    if not (split == 1).any() and cfg.val_fraction > 0:
        train = np.flatnonzero(split == 0)
        fractions = (1.0 - cfg.val_fraction, cfg.val_fraction, 0.0)
        split[train[entity_split(keys.take(pa.array(train)), fractions, salt) == 1]] = 1
        info.update(val_from_train=cfg.val_fraction, salt=salt, hash=HASH_RULE)
    return split, info


def _split(
    keys: pa.Array,
    t: np.ndarray,
    offsets: np.ndarray,
    params: Params,
    split_column: pa.ChunkedArray | None = None,
):
    """Per-split prefixes, the train-row mask, the manifest's split section, cutoffs (us)."""
    cfg, sizes = params.shard.split, np.diff(offsets)
    zero = np.zeros_like(sizes)
    salt = f"seqops-split:{params.seed}"
    if cfg.method in ("entity", "column"):
        if cfg.method == "column":
            assert split_column is not None
            split, info = column_split(split_column, keys, offsets, cfg, salt)
        else:
            split = entity_split(keys, cfg.fractions, salt)
            info = {"method": "entity", "fractions": list(cfg.fractions), "salt": salt,
                    "hash": HASH_RULE}  # fmt: skip
        prefixes = {s: (np.where(split == i, sizes, 0), zero) for i, s in enumerate(SPLITS)}
        return prefixes, np.repeat(split == 0, sizes), info, None
    if cfg.train_end is not None and cfg.val_end is not None:
        train_end = pa.scalar(cfg.train_end, pa.timestamp("us", "UTC")).value
        val_end = pa.scalar(cfg.val_end, pa.timestamp("us", "UTC")).value
        source = "params"
    else:
        train_end, val_end = time_cutoffs(t, cfg.time_quantiles)
        source = f"quantiles {list(cfg.time_quantiles)} of event time"
    n_train = visible_counts(t, offsets, train_end)
    n_val = visible_counts(t, offsets, val_end)
    prefixes = {"train": (n_train, zero), "val": (n_val, n_train), "test": (sizes, n_val)}
    info = {
        "method": "time",
        "train_end": _iso(train_end),
        "val_end": _iso(val_end),
        "cutoffs_from": source,
        "rule": "train sees events <= train_end; val windows end in (train_end, val_end];"
        " test windows end after val_end; targets never go beyond the split's visible events",
    }
    return prefixes, t <= train_end, info, (train_end, val_end)


def prepare(table: pa.Table, params: Params, path: Path) -> Plan:
    """Order events, split, fit features on train rows only and encode every event."""
    schema = params.data.schema
    table, offsets, t, reordered = order_events(table, schema.entity, schema.time, schema.seq)
    keys = pc.cast(table.column(schema.entity).take(pa.array(offsets[:-1])), pa.string())
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    split_column = params.shard.split.column if params.shard.split.method == "column" else None
    prefixes, train_rows, split_info, cutoffs = _split(
        keys, t, offsets, params, table.column(split_column) if split_column else None
    )
    try:
        spec = fit_features(table, schema, params.shard.features, rows=train_rows, offsets=offsets)
        cat, num = spec.transform(table, offsets=offsets)
        forecast = None
        if schema.forecast:  # the standardised feature, but NaN (no target) where not finite
            raw = pc.cast(table.column(schema.forecast), pa.float64()).to_numpy()
            forecast = num[:, spec.numeric.index(schema.forecast)].copy()
            forecast[~np.isfinite(raw)] = np.nan
    except (TypeError, pa.ArrowInvalid) as exc:
        raise ShardError(f"{path}: {exc}") from None
    next_event = cat[:, spec.categorical.index(schema.next_event)] if schema.next_event else None
    labels, classes = None, ()
    if schema.label:
        labels, classes = encode_labels(table.column(schema.label), train_rows, schema.label)
    events = EventArrays(offsets, keys, t, cat, num, next_event, forecast, labels)
    return Plan(events, spec, prefixes, split_info, cutoffs, reordered, classes)


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


def encode_labels(
    column: pa.ChunkedArray, train_rows: np.ndarray, name: str
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Each row's class index and the classes: the sorted distinct labels of training rows.

    Classes come from training rows only, like every other fitted part of preprocessing; a
    label that training never saw, and a null, become -1 (no label)."""
    values = _label_values(column, name)
    seen = pc.unique(values.filter(pa.array(train_rows, pa.bool_())).drop_null())
    classes = seen.take(pc.sort_indices(seen))
    index = pc.index_in(values, value_set=classes)
    labels = pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return labels, tuple(classes.to_pylist())


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


def _write_split(
    root: Path, split: str, win: Windows, plan: Plan, bounds: tuple[int, ...], cfg: ShardConfig,
    pool: ThreadPoolExecutor, pending: list[Future],
) -> tuple[SplitEntry, SplitExamples, np.ndarray]:  # fmt: skip
    """Write one split's part files; return its manifest entry, leakage inputs and labels."""
    ev, n_visible = plan.events, plan.prefixes[split][0]
    lengths, bucket_of = win.length, assign_buckets(win.length, bounds)
    start = ev.offsets[win.group] + win.start
    limit = ev.offsets[win.group] + n_visible[win.group]
    # An empty split still gets max_workers (empty) parts, so every worker finds its files.
    present = [b for b in range(len(bounds)) if (bucket_of == b).any()] or [len(bounds) - 1]
    buckets: dict[int, BucketEntry] = {}
    written: list[pa.Table] = []  # what the leakage check reads: the rows as written
    targets: list[np.ndarray] = []
    dealt = 0  # examples dealt so far: each bucket's deal starts where the last one ended
    for b in present:
        width, members = bounds[b], np.flatnonzero(bucket_of == b)
        (root / part_path(split, width, 0)).parent.mkdir(parents=True, exist_ok=True)
        for k in range(cfg.max_workers):
            # Round-robin, continued across buckets: parts differ by at most one row in a
            # bucket and in the split, so even a handful of examples reaches every worker.
            sel = members[(k - dealt) % cfg.max_workers :: cfg.max_workers]
            ix = PaddedIndex.build(start[sel], lengths[sel], limit[sel], width)
            table, offset = part_table(ix, win.group[sel], ev, plan.spec, cfg.forecast_horizon)
            while len(pending) >= 2:  # bound the memory held by tables waiting to be written
                pending.pop(0).result()
            path = root / part_path(split, width, k)
            pending.append(pool.submit(pq.write_table, table, path, **PARQUET_OPTIONS))
            written.append(table.select(["entity", "window_end", "label"]))
            at = np.where(offset >= 0, start[sel] + offset, 0)
            targets.append(np.where(offset >= 0, ev.t[at], NO_TARGET))
        dealt += len(members)
        stats = _stats(len(members), int(lengths[members].sum()), len(members) * width)
        parts = [part_path(split, width, k) for k in range(cfg.max_workers)]
        buckets[width] = BucketEntry(**stats, parts=tuple(parts))
    rows = pa.concat_tables(written).combine_chunks()
    examples = SplitExamples(
        entity=rows.column("entity"),
        window_end=rows.column("window_end").cast(pa.int64()).to_numpy(),
        target_end=np.concatenate(targets),
    )
    padded = sum(v.padded_tokens for v in buckets.values())
    stats = _stats(len(win), int(lengths.sum()), padded)
    entry = SplitEntry(**stats, entities=len(np.unique(win.group)), buckets=buckets)
    return entry, examples, rows.column("label").to_numpy()


def _targets(plan: Plan, params: Params, labels: dict[str, np.ndarray]) -> Targets:
    schema, spec = params.data.schema, plan.spec
    col = schema.forecast
    unlabeled = {s: int((v < 0).sum()) for s, v in labels.items()}
    return Targets(
        label=LabelTarget(schema.label, plan.classes, unlabeled=unlabeled)
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


def _input_hash(path: Path) -> str:
    return io.sha256_file(path) if path.is_file() else io.combined_hash(io.sha256_tree(path))


def run(params: Params, validated_path: Path, out_dir: Path) -> Manifest:
    """Write the shards and ``manifest.json`` into ``out_dir`` atomically; return the manifest."""
    cfg, validated_path = params.shard, Path(validated_path)
    split = cfg.split
    table = _read(
        validated_path, params.data.schema, split.column if split.method == "column" else None
    )
    n_events = len(table)
    # The validate stage's per-event rules, for the requests the trained model will serve.
    types = {c: table.schema.field(c).type for c in params.data.schema.categorical}
    contract = serving_contract(params.validate, params.data.schema, types)
    with ThreadPoolExecutor(max_workers=2) as pool, io.atomic_dir(out_dir) as tmp:
        input_hash = pool.submit(_input_hash, validated_path)  # hashlib releases the GIL
        plan = prepare(table, params, validated_path)
        del table  # only the encoded arrays are needed from here on
        windows = {s: make_windows(*plan.prefixes[s], cfg.window) for s in SPLITS}
        if not len(windows["train"]):
            raise ShardError("no training examples (no train window reaches window.min_length)")
        width = cfg.window.window_len
        bounds, derived = bucket_boundaries(windows["train"].length, cfg.buckets, width)
        splits: dict[str, SplitEntry] = {}
        checked: dict[str, SplitExamples] = {}
        labels: dict[str, np.ndarray] = {}
        pending: list[Future] = []
        try:
            for i, s in enumerate(SPLITS, 1):
                splits[s], checked[s], labels[s] = _write_split(
                    tmp, s, windows[s], plan, bounds, cfg, pool, pending
                )
                log.info("split %d/%d (%s): %d examples queued for writing",
                         i, len(SPLITS), s, splits[s].examples)  # fmt: skip
        finally:  # every write ends (or fails) before the temporary directory can be removed
            wait(pending)
        for future in pending:
            future.result()
        cut = plan.cutoffs or (None, None)
        # A column split is an entity split: no entity may appear on two sides.
        method = "time" if plan.split_info["method"] == "time" else "entity"
        leakage = check_split_leakage(method, checked, train_end_us=cut[0], val_end_us=cut[1])
        if not leakage.passed:
            raise ShardError(f"leakage between splits, shards not written: {leakage.summary()}")
        files = io.sha256_tree(tmp)
        manifest = Manifest(
            schema=params.data.schema,
            features=plan.spec,
            targets=_targets(plan, params, labels),
            bucket_boundaries=tuple(bounds),
            buckets_derived=derived,
            window=WindowInfo(**to_jsonable(cfg.window), window_len=width),
            split=plan.split_info,
            splits=splits,
            leakage=leakage.to_dict(),
            input=InputInfo(
                events=validated_path.name,
                sha256=input_hash.result(),
                events_count=n_events,
                entities=len(plan.events.offsets) - 1,
                reordered_entities=plan.reordered,
            ),
            max_workers=cfg.max_workers,
            seed=params.seed,
            contract=contract,
            files=files,
        )
        # One hash naming the whole output: every shard file plus the rest of the manifest.
        body = json.dumps(manifest.body(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        files_and_body = {**files, "manifest.json": hashlib.sha256(body.encode()).hexdigest()}
        manifest = dataclasses.replace(manifest, content_hash=io.combined_hash(files_and_body))
        io.write_json(tmp / "manifest.json", manifest.to_json())
    return manifest


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", default="data/validated")
    parser.add_argument("--out", default="data/shards")
    parser.add_argument("--metrics", default=None, help="also write a small metrics JSON here")


def _command(params: Params, args: argparse.Namespace) -> int:
    manifest = run(params, Path(args.events), Path(args.out))
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
