"""The global watermark over entity-hash parts, one bounded block of arrivals at a time.

``late_events`` compares each row with the watermark at its arrival: the running max of event
time over the *global* arrival order (docs/architecture.md §2). Parts hold whole entities,
not ranges of arrival, so no part can compute it alone. Each part keeps its rows in
``_arrival`` order (docs/architecture.md §1), so a k-way merge of the parts' (arrival, time)
streams, cut into blocks of ``block`` arrivals, gives the exact running max while holding one
block and one buffered batch per part: the same rows and the same distances behind the
watermark as ``ordering.late_events`` on the whole table, in memory that does not grow with
the table. The result, the late rows' arrival positions, is what each part's contract run
needs (``LateRows.rows_in``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from data_checks import rules

IGNORED = np.iinfo(np.int64).min
"""The time of a row the watermark must not see (null key or time, time out of range)."""
BLOCK = 1 << 20


@dataclass(frozen=True)
class LateRows:
    """Rows behind the watermark, by arrival position (ascending), with how far behind."""

    arrival: np.ndarray
    behind_s: np.ndarray

    def rows_in(self, arrival: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of a part's rows (given their ``_arrival``) are late, and their ``behind_s``."""
        if not self.arrival.size or not arrival.size:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        at = np.minimum(np.searchsorted(self.arrival, arrival), self.arrival.size - 1)
        hit = self.arrival[at] == arrival
        return np.flatnonzero(hit), self.behind_s[at[hit]]


class _Cursor:
    """One part's (arrival, time) stream, read ahead only as far as the current block."""

    def __init__(self, name: str, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        self.name, self.batches = name, iter(batches)
        self.arrival = np.zeros(0, np.int64)
        self.times = np.zeros(0, np.int64)
        self.done, self.last = False, -1

    def below(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Take the buffered rows whose arrival is below ``end``, reading batches as needed."""
        while not self.done and (not self.arrival.size or self.arrival[-1] < end):
            try:
                arrival, times = next(self.batches)
            except StopIteration:
                self.done = True
                break
            if arrival.size and (arrival[0] <= self.last or np.any(arrival[1:] <= arrival[:-1])):
                raise ValueError(
                    f"{self.name}: rows are not in _arrival order; the ingest stage writes each "
                    "part in arrival order, so this part was written by something else: "
                    "rerun the ingest stage"
                )
            if arrival.size:
                self.last = int(arrival[-1])
            self.arrival = np.concatenate([self.arrival, arrival])
            self.times = np.concatenate([self.times, times])
        cut = int(np.searchsorted(self.arrival, end))
        taken = self.arrival[:cut], self.times[:cut]
        self.arrival, self.times = self.arrival[cut:], self.times[cut:]
        return taken

    @property
    def next_arrival(self) -> int | None:
        return int(self.arrival[0]) if self.arrival.size else None


def late_arrivals(
    parts: Iterable[tuple[str, Iterator[tuple[np.ndarray, np.ndarray]]]],
    lateness_s: float,
    unit: str,
    block: int = BLOCK,
) -> LateRows:
    """Late rows over all ``parts``: (name, batches of (arrival, time in ``unit``)) each.

    A time of ``IGNORED`` marks a row the watermark does not see and that is never late,
    as ``ordering.late_events`` masks rows outside ``valid & ~exclude``.
    """
    cursors = [_Cursor(name, batches) for name, batches in parts]
    lateness = rules.duration_units(lateness_s, unit)
    per_s = rules.UNITS_PER_S[unit]
    carry = IGNORED
    found_arrival, found_behind = [], []
    start = 0
    while True:
        pieces = [c.below(start + block) for c in cursors]
        arrival = np.concatenate([p[0] for p in pieces])
        times = np.concatenate([p[1] for p in pieces])
        if not arrival.size:
            pending = [a for c in cursors if (a := c.next_arrival) is not None]
            if not pending:
                break
            start = min(pending)  # skip a gap in the arrival numbers
            continue
        arrival, times = _in_arrival_order(arrival, times)
        if arrival.size > 1 and np.any(arrival[1:] == arrival[:-1]):
            raise ValueError(
                "two rows share one _arrival position across parts: the parts come from "
                "different ingest runs; rerun the ingest stage"
            )
        watermark = np.maximum.accumulate(times)
        np.maximum(watermark, carry, out=watermark)
        carry = int(watermark[-1])
        threshold = np.maximum(watermark, IGNORED + lateness) - lateness
        late = (times < threshold) & (times != IGNORED)
        if late.any():
            found_arrival.append(arrival[late])
            found_behind.append((threshold[late] + lateness - times[late]) / per_s)
        start += block
    if not found_arrival:
        return LateRows(np.zeros(0, np.int64), np.zeros(0, np.float64))
    return LateRows(np.concatenate(found_arrival), np.concatenate(found_behind))


def _in_arrival_order(arrival: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A block's rows sorted by arrival. Ingest numbers rows 0..N-1, so a block's arrivals
    usually fill a range: then one scatter puts them in place, a tenth of a sort's time."""
    low = int(arrival.min())
    span = int(arrival.max()) - low + 1
    if span == arrival.size:
        slot = arrival - low
        placed = np.zeros(span, dtype=bool)
        placed[slot] = True
        if placed.all():  # a true permutation of the range: no position twice
            ordered = np.empty_like(times)
            ordered[slot] = times
            return np.arange(low, low + span, dtype=np.int64), ordered
    order = np.argsort(arrival, kind="stable")
    return arrival[order], times[order]
