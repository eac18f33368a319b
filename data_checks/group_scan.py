"""Scans within groups of flat arrays: grouping order and running maxima, without a loop.

The ordering checks (``data_checks.ordering``) hold events as flat numpy arrays with the
rows of a group (an entity) contiguous. A per-group running max, the core of the time-order,
duplicate and watermark checks, becomes one ``np.maximum.accumulate`` once each group's
values are lifted above the previous group's; the grouping itself is one sort of int64 keys.
No Python object per row, no per-group loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def group_order(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Row ids sorted by (code, row): one int64 sort of ``code * N + row``, not a string sort."""
    n = codes.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if (n_codes + 1) * n >= 2**63:  # keys would overflow int64: a stable argsort is exact
        return np.argsort(codes, kind="stable").astype(np.int64)
    key = codes.astype(np.int64)
    key *= n
    key += np.arange(n, dtype=np.int64)
    key.sort()
    np.remainder(key, n, out=key)
    return key


def _lifted_blocks(
    values: np.ndarray, groups: np.ndarray
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Blocks ``(lo, hi, key, running)`` for a running max within groups.

    ``groups`` ascends (rows of a group contiguous). Lifting each group above the previous
    one (``key = (value - low) + group * span``) turns the segmented running max into a
    single ``np.maximum.accumulate`` (``running``); groups are taken in as few blocks as
    keep the keys inside int64 (one block for any realistic span).
    """
    if values.size == 0:
        return
    low = int(values.min())
    span = int(values.max()) - low + 1
    per_block = max(1, (2**62) // span)
    first = int(groups[0])
    edges = [0, values.size]
    if int(groups[-1]) - first >= per_block:  # several blocks: cut where the block id changes
        block = (groups.astype(np.int64) - first) // per_block
        edges = [0, *(np.flatnonzero(block[1:] != block[:-1]) + 1).tolist(), values.size]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        key = np.subtract(groups[lo:hi], groups[lo], dtype=np.int64)
        if per_block == 1:  # a huge span: one group per block, no lift needed
            key[:] = values[lo:hi]
        else:
            key *= span
            key += values[lo:hi]
            key -= low
        yield lo, hi, key, np.maximum.accumulate(key)


def below_running_max(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``values`` drop below the running max of their group: (mask, behind[mask])."""
    bad = np.zeros(values.size, dtype=bool)
    behind = [np.zeros(0, dtype=np.int64)]
    for lo, hi, key, running in _lifted_blocks(values, groups):
        np.less(key, running, out=bad[lo:hi])
        behind.append(running[bad[lo:hi]] - key[bad[lo:hi]])
    return bad, np.concatenate(behind)


def not_above_earlier(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rows whose value is not above every earlier value of their group (ties and drops)."""
    out = np.zeros(values.size, dtype=bool)
    for lo, hi, key, running in _lifted_blocks(values, groups):
        np.less_equal(key[1:], running[:-1], out=out[lo + 1 : hi])
    return out
