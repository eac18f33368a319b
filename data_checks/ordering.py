"""Per-entity ordering checks, vectorised over Arrow and numpy (docs/architecture.md §2).

Great Expectations has no group-by (``ExpectColumnValuesToBeIncreasing`` sees one column),
so the checks that need an entity's own sequence are computed here: time order, duplicate
(entity, time, seq) events, gaps in sequence numbers, sequence numbers against time and
arrival, timestamps in the future or before a floor, events behind the watermark, labels that
differ within an entity, null keys, non-finite numbers and negative sequence numbers. The
per-event rules among them are ``data_checks.rules``', which the scoring endpoint applies too.

How it scales to tens of millions of events: the entity key is dictionary-encoded once,
and the (entity, arrival) grouping is one ``np.sort`` of int64 keys ``code * N + row`` (rows
of a part are in arrival order and an entity lives in one part, so the row number is its
arrival rank). Every check then works on flat arrays in that order: a running max within
entities is one ``np.maximum.accumulate`` (``data_checks.group_scan``), boundaries are
comparisons of neighbours, and the few entities that need a finer sort (duplicates, unsorted
sequence numbers) are sorted alone. No Python object per event, no pandas, no per-row loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_checks import rules
from data_checks.group_scan import below_running_max, group_order, not_above_earlier
from seqcore.schema import ARRIVAL

INT64_MIN = np.iinfo(np.int64).min
_UNITS_PER_S = rules.UNITS_PER_S


@dataclass(frozen=True)
class Finding:
    """What one check found: the rows to set aside and how to describe them."""

    rows: np.ndarray
    """Sorted row ids a quarantine removes (the violating rows, or whole entities)."""
    violating_rows: int
    violating_entities: int
    sample: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    fail: bool = False
    """Fails even without violating rows (e.g. an empty table)."""


@dataclass
class EventIndex:
    """Arrays shared by every check, built once per table (see the module docstring)."""

    table: pa.Table
    entity: str | None
    time: str | None
    seq: str | None
    n_codes: int
    codes: np.ndarray
    """(N,) int32 entity code per row; a null (or unusable) entity is ``n_codes``."""
    keys: pa.Array
    """The entity value of each code."""
    order: np.ndarray
    """(N,) int64 row ids grouped by entity, arrival order within an entity."""
    times: np.ndarray
    """(N,) int64 event time in ``time_unit`` since the epoch (0 where null)."""
    time_unit: str
    valid: np.ndarray
    """(N,) bool: entity and time both present, the rows every per-entity check looks at."""

    @property
    def n_rows(self) -> int:
        return self.table.num_rows

    def entity_gatherer(self) -> Callable[[np.ndarray], pa.Array] | None:
        """A fast gather of the entity column for grouped row ids, or None if not possible.

        In grouped order the entity codes ascend, so taking from the small dictionary of
        keys reads memory sequentially, unlike a random-access take of the string column.
        """
        if self.entity is None or self.table[self.entity].type != self.keys.type:
            return None
        keys, codes, n_codes = self.keys, self.codes, self.n_codes

        def gather(rows: np.ndarray) -> pa.Array:
            picked = codes[rows]
            null = picked == n_codes
            return keys.take(pa.array(picked, mask=null if null.any() else None))

        return gather

    def units(self, seconds: float) -> int:
        return rules.duration_units(seconds, self.time_unit)

    def at(self, moment: datetime) -> int:
        """``moment`` as an integer in this table's time unit (exact, no float rounding)."""
        return rules.to_units(moment, self.time_unit)


def build_index(
    table: pa.Table, entity: str, time: str, seq: str | None, usable: set[str]
) -> EventIndex:
    """Encode the entity key and group rows by (entity, arrival).

    Columns outside ``usable`` (missing, or of the wrong type) are not used for grouping or
    times, but their nulls still exclude rows: a null key is key_nulls' fault alone.
    """
    n = table.num_rows
    names = set(table.column_names)
    keys: pa.Array = pa.array([], pa.null())
    n_codes = 0
    codes = np.zeros(n, dtype=np.int32)
    grouped = entity in usable and n > 0
    if grouped:
        column = table[entity]
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        encoded = pc.dictionary_encode(column)
        keys = encoded.chunk(encoded.num_chunks - 1).dictionary
        if any(len(c.dictionary) != len(keys) for c in encoded.chunks):
            # Chunks encoded against different dictionaries: encode one contiguous array.
            encoded = pa.chunked_array([pc.dictionary_encode(column.combine_chunks())])
            keys = encoded.chunk(0).dictionary
        n_codes = len(keys)
        indices = pa.chunked_array([c.indices for c in encoded.chunks], pa.int32())
        codes = pc.fill_null(indices, n_codes).to_numpy()
    order = group_order(codes, n_codes) if grouped else np.arange(n, dtype=np.int64)

    valid = np.ones(n, dtype=bool)
    for name in (entity, time):
        if name in names and table[name].null_count:
            valid &= pc.is_valid(table[name]).to_numpy(zero_copy_only=False)
    times = np.zeros(n, dtype=np.int64)
    unit = "us"
    if time in usable and n:
        column = table[time]
        unit = column.type.unit
        times = pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy()
    return EventIndex(
        table,
        entity if grouped else None,
        time if time in usable else None,
        seq if seq in usable else None,
        n_codes,
        codes,
        keys,
        order,
        times,
        unit,
        valid,
    )


def arrival_order(table: pa.Table) -> np.ndarray | None:
    """Row ids in global arrival order (``_arrival``); None when rows already are in it.

    Parts are split by entity hash, so after reading several parts the rows are grouped by
    part; ``_arrival`` (a permutation of 0..N-1 from ingest) is then inverted by one scatter.
    """
    n = table.num_rows
    if ARRIVAL not in table.column_names or n < 2:
        return None
    column = table[ARRIVAL]
    if not pa.types.is_integer(column.type) or column.null_count:
        return None
    arrival = column.to_numpy().astype(np.int64, copy=False)
    if bool(np.all(arrival[1:] >= arrival[:-1])):
        return None
    if arrival.min() >= 0 and arrival.max() < n:
        inverse = np.full(n, -1, dtype=np.int64)
        inverse[arrival] = np.arange(n, dtype=np.int64)
        if bool(np.all(inverse >= 0)):  # a true permutation: every slot filled once
            return inverse
    return np.argsort(arrival, kind="stable").astype(np.int64)


def describe(
    ix: EventIndex,
    rows: np.ndarray,
    k: int,
    extra: dict[str, np.ndarray] | None = None,
    columns: tuple[str, ...] | list[str] = (),
) -> list[dict[str, Any]]:
    """Up to ``k`` offending rows, from distinct entities where possible, as small dicts.

    Each names the row's entity, time, seq and arrival, the table ``columns`` asked for
    (e.g. the offending amount) and ``extra``: per-offender values aligned with ``rows``.
    """
    if k <= 0 or rows.size == 0:
        return []
    _, first = np.unique(ix.codes[rows], return_index=True)
    picked = np.sort(first)[:k]
    if picked.size < k:  # fewer entities than k: fill with further rows
        rest = np.setdiff1d(np.arange(rows.size), picked)[: k - picked.size]
        picked = np.sort(np.concatenate([picked, rest]))
    roles = {"entity": ix.entity, "time": ix.time, "seq": ix.seq, "arrival": ARRIVAL}
    present = {r: c for r, c in roles.items() if c is not None and c in ix.table.column_names}
    present.update({c: c for c in columns if c not in present.values()})
    values = ix.table.select(list(present.values())).take(pa.array(rows[picked])).to_pylist()
    out = []
    for i, row_values in zip(picked, values, strict=True):
        item: dict[str, Any] = {"row": int(rows[i])}
        item.update({role: row_values[col] for role, col in present.items()})
        for name, array in (extra or {}).items():
            item[name] = array[i].item() if hasattr(array[i], "item") else array[i]
        out.append(item)
    return out


def entity_count(ix: EventIndex, rows: np.ndarray) -> int:
    """How many entities ``rows`` belong to; rows whose entity key is null belong to none."""
    if not rows.size or ix.entity is None:
        return 0
    codes = np.unique(ix.codes[rows])
    return int(codes.size - (codes[-1] == ix.n_codes))


def finding(
    ix: EventIndex,
    rows: np.ndarray,
    k: int,
    extra: dict[str, np.ndarray] | None = None,
    columns: list[str] | tuple[str, ...] = (),
    **kw: Any,
) -> Finding:
    """A Finding for violating ``rows`` (any order; ``extra`` aligned with them)."""
    order = np.argsort(rows, kind="stable")
    rows = rows[order].astype(np.int64, copy=False)
    extra = {name: values[order] for name, values in (extra or {}).items()}
    sample = describe(ix, rows, k, extra, columns)
    return Finding(rows, int(rows.size), entity_count(ix, rows), sample, **kw)


def key_nulls(ix: EventIndex, entity: str, time: str, k: int) -> Finding:
    """Rows whose entity key or event time is null (excluded from every other check).

    The entity count is of the rows with a key (and a null time): a null key is no entity.
    """
    rows = np.flatnonzero(~ix.valid)
    details = {
        "null_entity": ix.table[entity].null_count,
        "null_time": ix.table[time].null_count,
    }
    sample = describe(ix, rows, k)
    return Finding(rows, int(rows.size), entity_count(ix, rows), sample, details)


def numeric_finite(ix: EventIndex, columns: list[str], k: int) -> Finding:
    """Rows holding NaN or +-inf in any numeric column (nulls are missing, not NaN)."""
    bad = np.zeros(ix.n_rows, dtype=bool)
    per_column = {}
    for name in columns:
        column = ix.table[name]
        if not pa.types.is_floating(column.type):
            per_column[name] = 0  # integers are always finite
            continue
        mask = pc.fill_null(pc.invert(pc.is_finite(column)), False).to_numpy(zero_copy_only=False)
        per_column[name] = int(mask.sum())
        bad |= mask
    return finding(ix, np.flatnonzero(bad), k, columns=columns, details={"per_column": per_column})


def future_timestamps(ix: EventIndex, now: datetime, max_ahead_s: float, k: int) -> Finding:
    rows = np.flatnonzero(ix.valid & rules.future(ix.times, ix.time_unit, now, max_ahead_s))
    limit = rules.future_limit(ix.time_unit, now, max_ahead_s)
    limit_at = datetime.fromtimestamp(limit / _UNITS_PER_S[ix.time_unit], UTC)
    return finding(ix, rows, k, details={"limit": limit_at})


def time_floor(ix: EventIndex, floor: datetime, k: int) -> Finding:
    rows = np.flatnonzero(ix.valid & rules.before_floor(ix.times, ix.time_unit, floor))
    return finding(ix, rows, k, details={"floor": floor})


def seq_negative(ix: EventIndex, seq: np.ndarray, seq_valid: np.ndarray, k: int) -> Finding:
    """Rows whose sequence number is below 0 (``data_checks.rules.negative``)."""
    rows = np.flatnonzero(seq_valid & rules.negative(seq))
    return finding(ix, rows, k)


def time_order(ix: EventIndex, exclude: np.ndarray, k: int) -> Finding:
    """Rows whose time is below the running max of their entity's earlier arrivals.

    Flagging against the running max (not just the previous row) means removing the
    flagged rows leaves every entity non-decreasing in time.
    """
    sel = ix.order[(ix.valid & ~exclude)[ix.order]]
    bad, behind_units = below_running_max(ix.times[sel], ix.codes[sel])
    behind = behind_units / _UNITS_PER_S[ix.time_unit]
    return finding(ix, sel[bad], k, {"behind_previous_s": behind})


def duplicates(
    ix: EventIndex, seq: np.ndarray | None, k: int, exclude: np.ndarray | None = None
) -> Finding:
    """Later copies of an (entity, time, seq) already seen; the first copy is kept.

    Only a row whose time does not exceed its entity's earlier times can repeat an earlier
    key, so just those rows and the rows sharing their (entity, time) are sorted exactly.
    Rows in ``exclude`` (times out of range) must not raise that bar for the rows after
    them, or one year-2099 event would make its whole entity suspect; they are suspects.
    """
    sel = ix.order[ix.valid[ix.order]]
    groups, times = ix.codes[sel], ix.times[sel]
    if exclude is not None and exclude.any():
        out_of_range = exclude[sel]
        lowered = np.where(out_of_range, times.min(), times)
        suspect = not_above_earlier(lowered, groups) | out_of_range
        del lowered, out_of_range
    else:
        suspect = not_above_earlier(times, groups)
    if suspect.any():
        # Hash (entity, time) to find every row sharing a suspect's key; a collision only
        # adds a candidate, the exact comparison below decides.
        mixed = groups.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ times.view(np.uint64)
        wanted = np.unique(mixed[suspect])
        found = np.minimum(np.searchsorted(wanted, mixed), wanted.size - 1)
        idx = np.flatnonzero(wanted[found] == mixed)
        del mixed, found
    else:
        idx = np.zeros(0, dtype=np.int64)
    cg, ct, cr = groups[idx], times[idx], sel[idx]
    cs = seq[cr] if seq is not None else np.zeros(idx.size, dtype=np.int64)
    o = np.lexsort((cr, cs, ct, cg))
    cg, ct, cs, cr = cg[o], ct[o], cs[o], cr[o]
    dup = (cg[1:] == cg[:-1]) & (ct[1:] == ct[:-1]) & (cs[1:] == cs[:-1])
    starts = np.where(np.r_[True, ~dup], np.arange(cr.size), 0)
    first_of = cr[np.maximum.accumulate(starts)] if cr.size else cr
    key = ["entity", "time", "seq"] if seq is not None else ["entity", "time"]
    extra = {"duplicate_of_row": first_of[1:][dup]}
    return finding(ix, cr[1:][dup], k, extra, details={"key": key})


def seq_gaps(ix: EventIndex, seq: np.ndarray, seq_valid: np.ndarray, k: int) -> Finding:
    """Entities whose distinct sequence numbers skip values; the unit is the whole entity."""
    sel = ix.order[(ix.valid & seq_valid)[ix.order]]
    groups, values = ix.codes[sel], seq[sel]
    same = groups[1:] == groups[:-1]
    unsorted = same & (values[1:] < values[:-1])
    if unsorted.any():  # sort only the entities whose numbers arrived out of order
        bad_entity = np.zeros(ix.n_codes + 1, dtype=bool)
        bad_entity[groups[1:][unsorted]] = True
        idx = np.flatnonzero(bad_entity[groups])
        values[idx] = values[idx[np.lexsort((values[idx], groups[idx]))]]
    step = values[1:] - values[:-1]
    gap = same & (step > 1)
    gap_entity, missing = groups[1:][gap], step[gap] - 1
    flagged = np.zeros(ix.n_codes + 1, dtype=bool)
    flagged[gap_entity] = True
    rows = np.flatnonzero(flagged[ix.codes])
    per_entity = np.bincount(gap_entity, weights=missing, minlength=ix.n_codes + 1)
    sample = []
    if k > 0 and gap_entity.size:
        _, first = np.unique(gap_entity, return_index=True)
        after, before = values[1:][gap], values[:-1][gap]
        for i in np.sort(first)[:k]:
            code = int(gap_entity[i])
            sample.append(
                {
                    "entity": ix.keys[code].as_py(),
                    "after_seq": int(before[i]),
                    "next_seq": int(after[i]),
                    "missing_in_entity": int(per_entity[code]),
                }
            )
    details = {"missing_seq_numbers": int(missing.sum()), "gaps": int(gap.sum())}
    entities = int(flagged.sum())
    message = seq_gaps_message(details["missing_seq_numbers"], entities)
    return Finding(rows, int(rows.size), entities, sample, details, message)


def seq_gaps_message(missing: int, entities: int) -> str:
    return f"{missing} missing sequence number(s)" if entities else ""


def seq_order(
    ix: EventIndex,
    seq: np.ndarray,
    seq_valid: np.ndarray,
    exclude: np.ndarray,
    k: int,
    time_order_rows: np.ndarray | None = None,
) -> Finding:
    """Rows whose sequence number is below one their entity showed earlier in arrival order.

    Only rows that time_order accepts are compared (their time is not below an earlier
    arrival's), so a row is either time_order's fault or this check's, never both: what is
    left is a seq that decreases while time increases, or that runs backwards among equal
    times. Ordering by (time, seq) alone would hide the second case (equal times sort by
    seq), which time_order, duplicates and seq_gaps all pass. Flagging against the running
    max, as time_order does, leaves every entity's seq non-decreasing once flagged rows go.
    Rows in ``exclude`` (times out of range) and rows without a seq are not compared;
    ``time_order_rows``, time_order's finding over the same ``exclude``, saves recomputing it.
    """
    sel = ix.order[(ix.valid & ~exclude)[ix.order]]
    if time_order_rows is None:
        late_in_time, _ = below_running_max(ix.times[sel], ix.codes[sel])
        sel = sel[~late_in_time & seq_valid[sel]]
    else:
        compared = seq_valid.copy()
        compared[time_order_rows] = False
        sel = sel[compared[sel]]
    bad, behind = below_running_max(seq[sel], ix.codes[sel])
    rows = sel[bad]
    extra = {"earlier_seq": seq[rows] + behind}
    found = finding(ix, rows, k, extra)
    message = seq_order_message(found.violating_rows, found.violating_entities)
    details = {"compared_rows": int(sel.size)}
    return replace(found, details=details, message=message)


def seq_order_message(rows: int, entities: int) -> str:
    if not rows:
        return ""
    return (
        f"{rows} row(s) in {entities} entit{'y' if entities == 1 else 'ies'} carry a sequence "
        "number below one that arrived before them at an earlier or equal time: seq and time "
        "disagree on the order of events (fix the producer's seq or times)"
    )


def _value_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(N,) int64 code per row (-1 where null) and the distinct value of each code."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    encoded = pc.dictionary_encode(column.combine_chunks())
    codes = pc.fill_null(pc.cast(encoded.indices, pa.int64()), -1).to_numpy()
    return codes, encoded.dictionary


def label_consistency(ix: EventIndex, label: str, k: int) -> Finding:
    """Entities whose non-null label differs between their events; the whole entity is the
    offender. Entities with no label at all are unlabeled: counted, not a violation."""
    values, names = _value_codes(ix.table[label])
    seen = np.zeros(ix.n_codes + 1, dtype=bool)
    seen[ix.codes[ix.valid]] = True
    has = ix.valid & (values >= 0)
    groups, labels = ix.codes[has], values[has]
    labeled = np.zeros(ix.n_codes + 1, dtype=bool)
    labeled[groups] = True
    # One label per entity, any of its own (the last written): a row differing from it shows
    # that its entity holds two. Row order suffices: no grouping sort, no per-entity loop.
    chosen = np.full(ix.n_codes + 1, -1, dtype=np.int64)
    chosen[groups] = labels
    flagged = np.zeros(ix.n_codes + 1, dtype=bool)
    flagged[groups[labels != chosen[groups]]] = True
    rows = np.flatnonzero(flagged[ix.codes])
    entities = int(flagged.sum())
    sample = []
    # Codes number entities in order of first appearance, so the first offenders come first.
    for code in np.flatnonzero(flagged)[: max(k, 0)]:
        distinct, counts = np.unique(labels[groups == code], return_counts=True)
        sample.append(
            {
                "entity": ix.keys[int(code)].as_py(),
                "labels": {
                    str(names[int(v)].as_py()): int(n)
                    for v, n in zip(distinct, counts, strict=True)
                },
                "rows": int(np.count_nonzero(ix.codes == code)),
            }
        )
    unlabeled = int((seen & ~labeled)[: ix.n_codes].sum())
    details = {
        "label_column": label,
        "labeled_entities": int(labeled[: ix.n_codes].sum()),
        "unlabeled_entities": unlabeled,
    }
    message = label_message(entities, sample, label, unlabeled)
    return Finding(rows, int(rows.size), entities, sample, details, message)


def label_message(entities: int, sample: list[dict[str, Any]], label: str, unlabeled: int) -> str:
    notes = []
    if entities:
        shown = f" (e.g. entity {sample[0]['entity']!r}: {sample[0]['labels']})" if sample else ""
        notes.append(
            f"{entities} entit{'y carries' if entities == 1 else 'ies carry'} more than one label"
            f"{shown}; column {label!r} holds one label per entity, the same on each of its "
            "events: fix the source, or set policy quarantine to set these entities aside"
        )
    if unlabeled:
        notes.append(
            f"{unlabeled} entit{'y has' if unlabeled == 1 else 'ies have'} no label "
            "(kept as unlabeled, not a violation)"
        )
    return "; ".join(notes)


def late_events(
    ix: EventIndex, arrival: np.ndarray | None, lateness_s: float, exclude: np.ndarray, k: int
) -> Finding:
    """Rows whose time is more than ``lateness_s`` behind the watermark at their arrival.

    The watermark is the running max of event time over the global arrival order, as a
    stream processor would keep it (Akidau et al., "The Dataflow Model", VLDB 2015).
    """
    use = ix.valid & ~exclude
    if arrival is not None:
        times, use = ix.times[arrival], use[arrival]
    else:
        times = ix.times.copy()
    times[~use] = INT64_MIN
    lateness = ix.units(lateness_s)
    threshold = np.maximum.accumulate(times)  # the watermark, lowered in place below
    np.maximum(threshold, INT64_MIN + lateness, out=threshold)
    threshold -= lateness
    late = times < threshold
    late &= use
    positions = np.flatnonzero(late)
    rows = arrival[positions] if arrival is not None else positions
    behind = (threshold[positions] + lateness - times[positions]) / _UNITS_PER_S[ix.time_unit]
    extra = {"behind_watermark_s": behind}
    return finding(ix, rows, k, extra, details={"allowed_lateness_s": lateness_s})
