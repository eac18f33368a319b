"""The contract's split of the events into clean and quarantined rows, gathered chunk by chunk.

The clean rows come out grouped by entity and in arrival order within an entity (the order
the checks already computed), the quarantined rows in arrival order with
``_quarantine_reason``. A ``Split`` holds only row ids: gathering the whole clean table would
build a second copy of the events while the input is still resident, which was the validate
stage's memory peak (benchmarks/README.md, "What would fix the misses"). The chunk
iterators gather ``chunk_rows`` rows at a time, so a ``pyarrow.parquet.ParquetWriter`` can
stream them to disk with one chunk resident besides the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from data_checks.config import CHECK_NAMES

REASON = "_quarantine_reason"
# pyarrow's default Parquet row-group size: streamed files keep write_table's row groups.
CHUNK_ROWS = 1 << 20


@dataclass(frozen=True)
class Split:
    """Which rows of ``table`` are clean (in output order) and which are quarantined, and why."""

    table: pa.Table
    order: np.ndarray | None
    """Clean row ids in output order; None when that is the table as it is (no gather)."""
    quarantine_rows: np.ndarray
    """Quarantined row ids, ascending (arrival order)."""
    reason_codes: np.ndarray
    """Per quarantined row, 1 + the index in ``CHECK_NAMES`` of the check that set it aside."""
    quarantined: dict[str, int] = field(default_factory=dict)
    """Rows set aside per check (the first quarantining check wins)."""
    entity: str | None = None
    gather_entity: Callable[[np.ndarray], pa.Array] | None = None
    """A fast gather of the entity column for grouped row ids (``EventIndex.entity_gatherer``)."""

    @property
    def clean_count(self) -> int:
        return self.table.num_rows if self.order is None else int(self.order.size)

    @property
    def quarantine_count(self) -> int:
        return int(self.quarantine_rows.size)

    @property
    def quarantine_schema(self) -> pa.Schema:
        return self.table.schema.append(pa.field(REASON, pa.string()))

    def clean_chunks(self, chunk_rows: int | None = None) -> Iterator[pa.Table]:
        """The clean rows in output order, ``chunk_rows`` (default ``CHUNK_ROWS``) at a time."""
        chunk_rows = chunk_rows or CHUNK_ROWS
        for start in range(0, self.clean_count, chunk_rows):
            if self.order is None:
                yield self.table.slice(start, chunk_rows)
            else:
                yield self._take(self.order[start : start + chunk_rows])

    def quarantine_chunks(self, chunk_rows: int | None = None) -> Iterator[pa.Table]:
        """The quarantined rows with ``_quarantine_reason``, ``chunk_rows`` at a time."""
        chunk_rows = chunk_rows or CHUNK_ROWS
        names = np.array(("",) + CHECK_NAMES, dtype=object)
        for start in range(0, self.quarantine_count, chunk_rows):
            rows = self.quarantine_rows[start : start + chunk_rows]
            reasons = names[self.reason_codes[start : start + chunk_rows]]
            yield self.table.take(pa.array(rows, pa.int64())).append_column(
                REASON, pa.array(reasons.tolist(), pa.string())
            )

    def clean(self) -> pa.Table:
        """The whole clean table (a copy unless no gather is needed)."""
        if self.order is None:
            return self.table
        return _concat(list(self.clean_chunks()), self.table.schema)

    def quarantine(self) -> pa.Table:
        """The whole quarantine table."""
        return _concat(list(self.quarantine_chunks()), self.quarantine_schema)

    def _take(self, rows: np.ndarray) -> pa.Table:
        table, entity = self.table, self.entity
        if self.gather_entity is None or entity is None:
            return table.take(pa.array(rows))
        # The string key column is most of a random take's time: gather it from its codes.
        position = table.schema.get_field_index(entity)
        body = table.drop_columns([entity]).take(pa.array(rows))
        return body.add_column(position, table.schema.field(entity), self.gather_entity(rows))


def _concat(chunks: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not chunks:
        return schema.empty_table()
    return pa.concat_tables(chunks) if len(chunks) > 1 else chunks[0]


def split_rows(
    table: pa.Table,
    offenders: dict[str, np.ndarray],
    order: np.ndarray | None,
    entity: str | None = None,
    gather_entity: Callable[[np.ndarray], pa.Array] | None = None,
) -> Split:
    """Set ``offenders`` aside (row ids per quarantining check) and keep the rest in ``order``.

    A row offending several checks is set aside by the first in ``CHECK_NAMES`` order.
    ``order`` is the grouping order (None: the table's own order).
    """
    n = table.num_rows
    reason = np.zeros(n, dtype=np.uint8)
    quarantined: dict[str, int] = {}
    for code, name in enumerate(CHECK_NAMES, start=1):
        if name in offenders:
            rows = offenders[name]
            fresh = rows[reason[rows] == 0]  # the first check wins
            reason[fresh] = code
            quarantined[name] = int(fresh.size)
    if order is None:
        order = np.arange(n, dtype=np.int64)
    if quarantined:
        order = order[reason[order] == 0]
    if order.size == n and bool(np.all(order[1:] > order[:-1])):
        order = None  # already grouped and in arrival order: no gather at all
    q_rows = np.flatnonzero(reason)
    return Split(table, order, q_rows, reason[q_rows], quarantined, entity, gather_entity)
