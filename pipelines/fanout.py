"""One function over the parts of an events folder: as Ray tasks, or one by one in process.

The ingest stage writes entity-hash parts of bounded size (docs/architecture.md §1), so a data
stage that works part by part holds one part per task, whatever the table's size. Ray runs
the tasks, on the cluster in ``RAY_ADDRESS`` or on a local one (``data.engine``):

* each task asks Ray for the ``memory`` its part needs (its Arrow size from the Parquet
  footer times the stage's factor), so Ray never runs more parts at once on a node than fit
  in its memory; a part that fits no node is refused before any task starts;
* at most ``data.workers`` tasks are in flight (default: the cluster's CPUs);
* a failed task is retried ``data.task_retries`` times (Ray's ``max_retries`` with
  ``retry_exceptions``), then the stage fails naming the part and the cause;
* progress is logged per part: parts done of total, rows per second, time left.

``local`` runs the same function in this process, part after part, for debugging: a
breakpoint stops where it would, a traceback is the function's own.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.params.data import DataConfig
from seqcore.progress import RowProgress
from seqcore.store import Location, locate

log = logging.getLogger("seqops.fanout")
T = TypeVar("T")


class Unit(Protocol):
    """A unit of work of a data stage: a part file, or any file-sized piece of work."""

    @property
    def index(self) -> int: ...
    @property
    def path(self) -> str | Path: ...
    @property
    def rows(self) -> int: ...
    @property
    def arrow_bytes(self) -> int: ...
    @property
    def name(self) -> str: ...


U = TypeVar("U", bound=Unit)
TASK_OVERHEAD = 256 * 1024**2
"""Memory a task's worker takes before its part (interpreter, numpy, pyarrow)."""


@dataclass(frozen=True)
class Part:
    """One part file of an events folder and what its Parquet footer says of it."""

    index: int
    folder: Location
    """Its folder: local, or a snapshot on an object store (``seqcore.store``)."""
    name: str
    rows: int
    offset: int
    """The number of its first row in the parts' concatenation, in name order."""
    arrow_bytes: int
    """Its size once read into Arrow (the row groups' uncompressed size)."""

    @property
    def path(self) -> str:
        """Where it is, as a user would name it (in messages)."""
        return self.folder.show(self.name)

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".parquet")

    def file(self, **options: Any) -> pq.ParquetFile:
        return pq.ParquetFile(self.folder.path(self.name), filesystem=self.folder.fs, **options)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(
            self.folder.path(self.name), columns=columns, filesystem=self.folder.fs
        )

    def schema(self) -> pa.Schema:
        return pq.read_schema(self.folder.path(self.name), filesystem=self.folder.fs)


class PartFailed(RuntimeError):
    """A part's task failed (after its retries); the message names the part and the cause."""


def list_parts(where: str | Path | Location) -> list[Part]:
    """The ``part-*.parquet`` files of a folder in name order (one local file: itself). The
    folder may be a snapshot on an object store, or a local pointer to one
    (``seqcore.store.locate``)."""
    if not isinstance(where, Location) and Path(where).is_file():
        folder, names = Location.local(Path(where).parent), [Path(where).name]
    else:
        folder = where if isinstance(where, Location) else locate(where)
        names = folder.names("part-*.parquet")
        if not names:
            raise FileNotFoundError(
                f"{folder.show()}: no part-*.parquet files in it (run the stage that writes "
                "it first)"
            )
    parts, offset = [], 0
    for index, name in enumerate(names):
        part = Part(index, folder, name, 0, offset, 0)
        meta = part.file().metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        parts.append(dataclasses.replace(part, rows=meta.num_rows, arrow_bytes=size))
        offset += meta.num_rows
    return parts


def engine(data: DataConfig, parts: Sequence[Unit]) -> Literal["ray", "local"]:
    """``ray`` or ``local``: what ``data.engine`` means for this many parts."""
    if data.engine == "auto":
        return "ray" if len(parts) > 1 else "local"
    return data.engine


@dataclass(frozen=True)
class _Refused:
    """A ``fatal`` error raised in a task, carried back as its result: not retried."""

    error: Exception


def _guarded(
    fn: Callable[[U, Any], T], fatal: tuple[type[Exception], ...], part: U, shared: Any
) -> T | _Refused:
    try:
        return fn(part, shared)
    except fatal as exc:
        return _Refused(exc)


def map_parts(
    fn: Callable[[U, Any], T],
    parts: Sequence[U],
    shared: Any,
    data: DataConfig,
    *,
    what: str,
    memory_factor: float,
    fatal: tuple[type[Exception], ...] = (),
) -> list[T]:
    """``fn(part, shared)`` for every part, results in part order.

    ``shared`` is sent to the cluster once (Ray's object store), not once per task.
    ``memory_factor``: the task's peak memory as a multiple of its part's Arrow size.
    ``fatal``: errors that say the data is wrong, not the machine (e.g. a stage's own input
    error): raised at once as they are, with the part noted, never retried.
    """
    progress = RowProgress(log, what, sum(p.rows for p in parts), parts=len(parts))
    if engine(data, parts) == "local":
        results = []
        for part in parts:
            try:
                results.append(fn(part, shared))
            except Exception as exc:  # the function's own error and traceback, for debugging
                exc.add_note(f"{what}: in part {part.path}")
                raise
            progress.advance(part.rows, parts=1)
        progress.finish()
        return results
    return _on_ray(fn, parts, shared, data, what, memory_factor, fatal, progress)


def _on_ray(
    fn: Callable[[U, Any], T],
    parts: Sequence[U],
    shared: Any,
    data: DataConfig,
    what: str,
    memory_factor: float,
    fatal: tuple[type[Exception], ...],
    progress: RowProgress,
) -> list[T]:
    import ray

    from seqcore.ray_connect import connect

    connect()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and data.store is None:
        # Tasks hand files to each other and to the driver (scratch, the output's parts):
        # on local disks they would land on whichever node ran them.
        raise PartFailed(
            f"{what}: the Ray cluster has {len(nodes)} nodes and data.store is not set; the "
            "data stages need storage every node reaches: set data.store to an object-store "
            'root (README, "Data on an object store"), or run on one node '
            "(data.engine: local, or a cluster of one node)"
        )
    resources = ray.cluster_resources()
    memory = {p.index: TASK_OVERHEAD + int(memory_factor * p.arrow_bytes) for p in parts}
    largest = max(parts, key=lambda p: memory[p.index])
    available = resources.get("memory", 0.0)
    if available and memory[largest.index] > available:
        raise PartFailed(
            f"{what}: part {largest.path} needs about {memory[largest.index] / 1024**3:.1f} GiB "
            f"in memory and the Ray cluster has {available / 1024**3:.1f} GiB: lower "
            "data.rows_per_part (or data.part_size_mb) and rerun the ingest stage"
        )
    workers = data.workers or max(1, int(resources.get("CPU", 1)))
    remote: Any = ray.remote(_guarded)
    shared_ref = ray.put(shared)
    queue = list(parts)
    pending: dict[Any, U] = {}
    results: dict[int, T] = {}
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                part = queue.pop(0)
                ref = remote.options(
                    name=f"{what}:{part.name}",
                    num_cpus=1,
                    memory=memory[part.index],
                    max_retries=data.task_retries,
                    retry_exceptions=True,
                ).remote(fn, fatal, part, shared_ref)
                pending[ref] = part
            done, _ = ray.wait(list(pending), num_returns=1)
            part = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                retries = data.task_retries
                raise PartFailed(
                    f"{what}: part {part.path} failed after {retries} "
                    f"retr{'y' if retries == 1 else 'ies'}: {_cause(exc)}"
                ) from None
            if isinstance(result, _Refused):
                result.error.add_note(f"{what}: in part {part.path}")
                raise result.error
            results[part.index] = result
            progress.advance(part.rows, parts=1)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    progress.finish()
    return [results[p.index] for p in parts]


def _cause(exc: BaseException) -> str:
    """The underlying error of a Ray task failure, as one line."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"
