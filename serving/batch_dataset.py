"""The Ray Data pipelines of batch scoring's ``files`` and ``shuffle`` plans.

- ``files`` (no entity spans files): a dataset of one item per planned unit
  (``from_items``, one block each) is mapped with ``map_batches(batch_size=1)``; each call
  reads its unit of whole entities with pyarrow (``serving.batch_plan``) and scores it. No
  shuffle.
- ``shuffle`` (entities span files): ``map_batches`` reads each file and tags each event with
  its entity-hash partition; Ray Data's ``groupby(partition).map_groups`` brings every
  partition's events from all files to one scoring call.

Scoring runs in Ray Data *tasks* of ``cpus`` CPUs (``TaskPoolStrategy``), not an actor pool:
actors holding every CPU of a small cluster starved Ray Data's own tasks and hung
(benchmarks/README.md, "Batch scoring"), while a task holds its CPU only while it runs. The
scorer goes to the object store once and each worker process deserialises it once
(:func:`serving.batch_scores.worker_scorer`). Calls return Arrow tables of scores (one row per
entity, far smaller than the events) plus their CPU seconds; :func:`run_plan` consumes them
in plan order (``preserve_order``) into the driver's one writer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from seqcore.scorer import SequenceScorer
from serving.batch_plan import (
    FileFacts,
    Piece,
    Unit,
    entity_buckets,
    plan_units,
    read_piece,
    read_unit,
    rows_read,
)
from serving.batch_scores import (
    CPU_COLUMN,
    ScoresWriter,
    output_schema,
    score_table,
    with_cpu,
    worker_scorer,
)


def _score_units_batch(
    batch: pa.Table,
    box: list[Any],
    units: Sequence[Unit],
    columns: list[str],
    lineage: dict[str, Any],
    threads: int,
) -> pa.Table:
    """``map_batches`` function of the ``files`` plan: a batch holds one unit index; the unit
    is read with pyarrow and scored."""
    cpu = time.process_time()
    scorer = worker_scorer(box, threads)
    tables = []
    for index in batch["unit"].to_pylist():
        events = read_unit(units[index], columns, scorer.schema.entity, threads)
        tables.append(score_table(scorer, events, lineage))
    scores = pa.concat_tables(tables) if tables else output_schema(scorer).empty_table()
    return with_cpu(scores, time.process_time() - cpu)


def _bucket_batch(
    batch: pa.Table, files: Sequence[Piece], columns: list[str], entity: str, n: int
) -> pa.Table:
    """``map_batches`` function (map side of the ``shuffle`` plan): one file's events with
    their entity-hash partition in ``_bucket``."""
    tables = [read_piece(files[i], columns, False) for i in batch["file"].to_pylist()]
    table = pa.concat_tables(tables)
    return table.append_column("_bucket", pa.array(entity_buckets(table[entity], n)))


def _score_group(
    group: pa.Table, box: list[Any], lineage: dict[str, Any], threads: int
) -> pa.Table:
    """``map_groups`` function (reduce side of the ``shuffle`` plan): every event of one
    entity-hash partition, from every file."""
    cpu = time.process_time()
    scorer = worker_scorer(box, threads)
    scores = score_table(scorer, group.drop_columns(["_bucket"]), lineage)
    return with_cpu(scores, time.process_time() - cpu)


def build_dataset(
    kind: str,
    facts: list[FileFacts],
    scorer: SequenceScorer,
    lineage: dict[str, Any],
    rows_per_block: int,
    actors: int | None,
    cpus: float,
) -> tuple[Any, int, int]:
    """The dataset of the ``files`` or ``shuffle`` plan, its scoring blocks and the events its
    tasks read; at most ``actors`` scoring tasks at once (default: as many as the cluster's
    CPUs hold)."""
    import ray

    columns = list(dict.fromkeys(scorer.required_columns))
    threads = max(1, int(cpus))
    slots = actors or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    box = [ray.put(scorer)]  # one copy in the object store; nested, so not resolved

    if kind == "files":
        units = plan_units(facts, slots, rows_per_block)
        items = [{"unit": i} for i in range(len(units))]
        ds = ray.data.from_items(items, override_num_blocks=len(units)).map_batches(
            partial(_score_units_batch, box=box, units=units, columns=columns, lineage=lineage,
                    threads=threads),
            batch_size=1,  # one unit per call
            batch_format="pyarrow",
            num_cpus=cpus,
            compute=ray.data.TaskPoolStrategy(size=slots),
        )  # fmt: skip
        group_rows = {f.path: f.row_group_rows for f in facts}
        n_read = sum(rows_read(p, group_rows[p.path]) for u in units for p in u.pieces)
        return ds, len(units), n_read
    n = max(slots, math.ceil(sum(f.rows for f in facts) / rows_per_block))
    whole = [Piece(f.path, 0, f.rows) for f in facts]
    files = ray.data.from_items(
        [{"file": i} for i in range(len(whole))], override_num_blocks=len(whole)
    )
    ds = (
        files.map_batches(
            partial(_bucket_batch, files=whole, columns=columns, entity=scorer.schema.entity, n=n),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=cpus,
            compute=ray.data.TaskPoolStrategy(size=slots),
        )
        .groupby("_bucket", num_partitions=n)
        .map_groups(
            partial(_score_group, box=box, lineage=lineage, threads=threads),
            batch_format="pyarrow",
            num_cpus=cpus,
            compute=ray.data.TaskPoolStrategy(size=slots),
        )
    )
    return ds, n, sum(f.rows for f in facts)


def run_plan(
    kind: str,
    facts: list[FileFacts],
    scorer: SequenceScorer,
    lineage: dict[str, Any],
    writer: ScoresWriter,
    *,
    rows_per_block: int,
    actors: int | None,
    cpus: float,
) -> tuple[int, int, float]:
    """Run the plan's dataset on the connected cluster into ``writer``, in plan order; returns
    its scoring blocks, the events read and the scoring tasks' CPU seconds. Ray Data's global
    context is changed only while it runs."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    context = DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        context.shuffle_strategy,
    )
    context.execution_options.preserve_order = True  # output in plan order
    context.enable_progress_bars = False
    # A task-based shuffle: the default hash shuffle starts aggregator actors per call
    # (slower on a small cluster, and the worker churn slows the next calls).
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    task_cpu = 0.0
    try:
        ds, blocks, n_read = build_dataset(
            kind, facts, scorer, lineage, rows_per_block, actors, cpus
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            task_cpu += pc.sum(batch[CPU_COLUMN]).as_py() or 0.0
            writer.write(batch.drop_columns([CPU_COLUMN]).cast(writer.schema))
    finally:
        (
            context.execution_options.preserve_order,
            context.enable_progress_bars,
            context.shuffle_strategy,
        ) = saved
    return blocks, n_read, task_cpu
