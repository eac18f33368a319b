"""Flat, entity-grouped event arrays: group offsets, per-row group ids, event times.

Events are held as flat arrays grouped by entity and ordered by time, plus group ``offsets``
(entity ``g`` owns rows ``offsets[g]:offsets[g+1]``). The shard stage, the encoder and the
streaming scorer all read events this way, so that no step needs a Python object per event.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def run_offsets(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Offsets (G+1,) of the runs of equal adjacent keys: the entity groups of a grouped table."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    n = len(keys)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if pa.types.is_integer(keys.type) and keys.null_count == 0:
        values = keys.to_numpy()
        change = values[1:] != values[:-1]
    else:
        change = pc.fill_null(pc.not_equal(keys[1:], keys[:-1]), True).to_numpy(
            zero_copy_only=False
        )
    starts = np.flatnonzero(change) + 1
    return np.concatenate(([0], starts, [n])).astype(np.int64)


def group_ids(offsets: np.ndarray) -> np.ndarray:
    """Per-row group index (N,) from offsets."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def time_us(values: Any) -> np.ndarray:
    """Event times as int64 microseconds since the epoch (UTC)."""
    if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[us]").view(np.int64)
    arr = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_timestamp(arr.type):
        if arr.type.unit != "us":
            arr = arr.cast(pa.timestamp("us", arr.type.tz), safe=False)
        arr = arr.view(pa.int64())  # the same int64 values as a cast, without a kernel call
    if arr.type != pa.int64():
        arr = arr.cast(pa.int64())
    return arr.to_numpy(zero_copy_only=False)
