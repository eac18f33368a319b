"""Fault injection for the generator: plants each fault the ordering contract must catch.

Off by default (``data.generate.faults: []``); tests and demos turn faults on one at a time
or all at once. Each fault is planted so that exactly one check of the contract
(docs/architecture.md §2, ``data_checks``) should fire for it:

=================  =================================================  ====================
fault              how it is planted                                  caught by
=================  =================================================  ====================
out_of_order       times of two consecutive events of an entity        time_order
                   (< 1 h apart) swapped in place
duplicates         rows copied right after themselves                  duplicates
seq_gaps           rows dropped from the middle of sequences           seq_gaps
null_keys          extra rows with a null entity key or a null time    key_nulls
future_timestamps  times moved to 2099 in place                        future_timestamps
before_floor       times moved to 1990 in place                        time_floor
late_events        new one-event entities arriving 3 days late         late_events
nan_inf            amounts set to NaN / +-inf                          numeric_finite
wrong_type         the amount column stored as strings                 types
missing_column     the device column dropped                           schema
unseen_categories  5% of channel values replaced by unseen values      categorical_domain
empty              no rows at all                                      non_empty
=================  =================================================  ====================
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.card_events import US_PER_S, EventArrays, to_table
from pipelines.params.data import GenerateConfig

HOUR_US = 3600 * US_PER_S
DAY_US = 86400 * US_PER_S


def _count(rate: float, n: int) -> int:
    return 0 if n == 0 else max(1, round(rate * n))


def _out_of_order(rng: np.random.Generator, a: EventArrays, rate: float) -> None:
    same_entity = np.r_[False, a.entity[1:] == a.entity[:-1]]
    close = np.r_[False, np.diff(a.time) < HOUR_US] & np.r_[False, np.diff(a.time) > 0]
    candidates = np.flatnonzero(same_entity & close)
    picked = np.sort(
        rng.choice(candidates, size=min(candidates.size, _count(rate, a.time.size)), replace=False)
    )
    picked = picked[np.r_[True, np.diff(picked) > 2]]  # swapped pairs must not overlap
    a.time[picked - 1], a.time[picked] = a.time[picked].copy(), a.time[picked - 1].copy()


def _seq_gaps(rng: np.random.Generator, a: EventArrays, rate: float) -> EventArrays:
    same_prev = np.r_[False, a.entity[1:] == a.entity[:-1]]
    same_next = np.r_[a.entity[:-1] == a.entity[1:], False]
    middle = np.flatnonzero(same_prev & same_next)
    drop = rng.choice(middle, size=min(middle.size, _count(rate, a.time.size)), replace=False)
    keep = np.ones(a.time.size, dtype=bool)
    keep[drop] = False
    return a.take(np.flatnonzero(keep))


def _late_entities(rng: np.random.Generator, a: EventArrays, rate: float) -> EventArrays:
    n_new = _count(rate, len(a.entity_ids))
    donors = rng.integers(0, a.time.size, size=n_new)
    extra = a.take(donors)
    first_new = len(a.entity_ids)
    a.entity_ids.extend(f"LATE{i:06d}" for i in range(n_new))
    extra.entity = np.arange(first_new, first_new + n_new, dtype=np.int64)
    extra.time = extra.arrival - 3 * DAY_US  # arrives where its donor did, 3 days behind
    extra.seq = np.zeros(n_new, dtype=np.int64)
    extra.label = np.zeros(n_new, dtype=np.int64)
    return extra


def _apply_row_faults(
    arrays: EventArrays, cfg: GenerateConfig, rng: np.random.Generator
) -> EventArrays:
    a = arrays
    n = a.time.size
    faults = set(cfg.faults)
    if "seq_gaps" in faults:
        a = _seq_gaps(rng, a, cfg.fault_rate)
        n = a.time.size
    if "out_of_order" in faults:
        _out_of_order(rng, a, cfg.fault_rate)
    if "future_timestamps" in faults:
        rows = rng.choice(n, size=_count(cfg.fault_rate, n), replace=False)
        future = int(datetime(2099, 1, 1, tzinfo=UTC).timestamp()) * US_PER_S
        a.time[rows] = future + rng.integers(0, 30 * DAY_US, size=rows.size)
    if "before_floor" in faults:
        rows = rng.choice(n, size=_count(cfg.fault_rate, n), replace=False)
        past = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp()) * US_PER_S
        a.time[rows] = past + rng.integers(0, 30 * DAY_US, size=rows.size)
    if "nan_inf" in faults:
        rows = rng.choice(n, size=_count(cfg.fault_rate, n), replace=False)
        a.amount[rows] = np.where(np.arange(rows.size) % 2 == 0, np.nan, np.inf)
    if "unseen_categories" in faults:
        rows = rng.choice(n, size=max(1, round(0.05 * n)), replace=False)
        unseen = len(a.channels)
        a.channels = [*a.channels, "crypto_kiosk", "channel_x"]
        a.channel[rows] = unseen + (np.arange(rows.size) % 2)
    extras = []
    if "duplicates" in faults:
        extras.append(a.take(rng.choice(n, size=_count(cfg.fault_rate, n), replace=False)))
    if "null_keys" in faults:
        copies = a.take(rng.choice(n, size=2 * _count(cfg.fault_rate, n), replace=False))
        half = copies.entity.size // 2
        copies.entity[:half] = -1
        copies.time_valid[half:] = False
        extras.append(copies)
    if "late_events" in faults:
        extras.append(_late_entities(rng, a, cfg.fault_rate))
    for extra in extras:
        a = a.concat(extra)
    return a


def apply_faults(
    arrays: EventArrays, cfg: GenerateConfig, seed: int, names: dict[str, str]
) -> pa.Table:
    """Plant ``cfg.faults`` into clean arrays and return the arrival-ordered table."""
    rng = np.random.default_rng(seed + 1_000_003)
    faults = set(cfg.faults)
    table = to_table(_apply_row_faults(arrays, cfg, rng), names)
    if "wrong_type" in faults:
        index = table.schema.get_field_index("amount")
        table = table.set_column(index, "amount", pc.cast(table["amount"], pa.string()))
    if "missing_column" in faults:
        table = table.drop_columns(["device"])
    if "empty" in faults:
        table = table.slice(0, 0)
    return table
