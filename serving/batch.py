"""Batch scoring of a Parquet events dataset on Ray, through the online scoring code path.

The registered model is resolved and loaded exactly as the Serve deployment does
(:func:`serving.registry.load_model`: ``models:/<name>@<alias>`` followed once to a version,
then that version loaded), and every entity's events go through
:meth:`serving.scorer.SequenceScorer.score`, so a batch score equals the online endpoint's
score for the same sequence (ARCHITECTURE §7).

Plans (the summary's ``plan``), chosen from metadata and the entity column
(:mod:`serving.batch_plan`):

- ``files``: no entity spans files, as in the ingest stage's entity-hash part files and the one
  ``data/validated/events.parquet``. No shuffle: a Ray Data dataset of one item per unit
  (``from_items``, one block each) is mapped with ``map_batches(batch_size=1)``; each call
  reads its unit of whole entities with pyarrow and scores it.
- ``shuffle``: entities span files. ``map_batches`` reads each file and tags each event with
  its entity-hash partition; Ray Data's ``groupby(partition).map_groups`` brings every
  partition's events from all files to one scoring call.
- ``local``: fewer than ``local_max_rows`` events are scored in this process, without Ray:
  starting Ray and its worker processes costs more than scoring them.

Scoring runs in Ray Data *tasks* of ``actor_cpus`` CPUs (``TaskPoolStrategy``), not an actor
pool: actors holding every CPU of a 2-CPU cluster starved Ray Data's own tasks and hung
(../shared/PERFORMANCE.md), while a task holds its CPU only while it runs. The scorer goes to
the object store once and each worker process deserialises it once (cached by its ref).
Calls return Arrow tables of scores (one row per entity, far smaller than the events) plus
their CPU seconds; the driver consumes them with ``iter_batches`` in plan order
(``preserve_order``) and writes them with one ``ParquetWriter`` into a temporary folder beside
``output_path``, checks that every input entity was scored exactly once, then renames the
folder into place, so a failed run leaves any previous output as it was.

The first version (hash ``repartition``, an actor pool, ``write_parquet``) reached 0.02x a
plain in-process loop on 2 cores. With units planned from the entity column, no shuffle and
the driver's writer, the ``files`` plan on Ray Data runs at 1.15-1.21x the faster in-process
loop on 1M events and 0.83-0.87x on 200k (benchmarks/batch_scoring.py, benchmarks/README.md);
the ``shuffle`` plan (task-based sort shuffle) at 1.00x and 0.71x.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from serving.batch_plan import (
    FileFacts,
    Piece,
    Unit,
    check_schemas,
    entity_buckets,
    list_files,
    plan_units,
    read_piece,
    read_unit,
    rows_read,
    scan_file,
    spanning_entities,
)

DEFAULT_ROWS_PER_BLOCK = 100_000
DEFAULT_LOCAL_MAX_ROWS = 100_000
"""Events below which ``plan="auto"`` scores in this process. In-process scoring runs at about
0.2M events/s per core here, so 100k events take about 0.5 s, about what a call on a warm
cluster spends on loading, planning and dispatch. A cold start costs far more (``ray.init``
about 9 s, the first call's worker imports about 5 s on 2 cores: a few million events' worth),
so one-off runs on a small machine may prefer ``plan="local"``."""
PLANS = ("auto", "files", "shuffle", "local")
LINEAGE = ("model_name", "model_version", "run_id", "data_hash", "scored_at")


def output_schema(scorer: Any) -> pa.Schema:
    """Columns of the scores: the scorer's per-entity row, then lineage."""
    task = scorer.config.task
    fields = [
        pa.field("entity", pa.string()),
        pa.field("n_events", pa.int64()),
        pa.field("window_end", pa.timestamp("us", tz="UTC")),
        pa.field("score", pa.float64()),
    ]
    if task == "classify":
        fields += [
            pa.field("predicted", pa.int64()),
            pa.field("probabilities", pa.list_(pa.float64())),
        ]
    elif task == "next_event":
        label = pa.string() if scorer.next_event_vocab else pa.int64()
        fields += [pa.field("predicted", label), pa.field("top5", pa.list_(label))]
    else:
        fields += [pa.field("forecast", pa.list_(pa.float64()))]
    fields += [
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("data_hash", pa.string()),
        pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    ]
    return pa.schema(fields)


def score_table(scorer: Any, events: pa.Table, lineage: dict[str, Any]) -> pa.Table:
    """Whole entities' events in, one scored row per entity (with lineage) out."""
    schema = output_schema(scorer)
    if events.num_rows == 0:
        return schema.empty_table()
    scores = scorer.score(events)  # the online scoring code path
    scores["entity"] = scores["entity"].astype(str)
    for key, value in lineage.items():
        scores[key] = value
    return pa.Table.from_pandas(scores, schema=schema, preserve_index=False)


def _score_with_threads(
    scorer: Any, events: pa.Table, lineage: dict[str, Any], threads: int
) -> pa.Table:
    """``score_table`` with as many torch threads as a Ray task would use, then restored.

    On a busy 2-core machine two OpenMP threads can be ten times slower than one
    (benchmarks/README.md), so the local plan runs like one task, not with torch's default.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return score_table(scorer, events, lineage)
    finally:
        torch.set_num_threads(before)


_WORKER_SCORER: dict[str, Any] = {}
"""In a Ray worker process: the last scorer taken from the object store, by its ref."""


def _worker_scorer(box: list[Any], threads: int) -> Any:
    import ray
    import torch

    torch.set_num_threads(threads)
    key = box[0].hex()
    if key not in _WORKER_SCORER:  # once per worker process and call, not once per task
        _WORKER_SCORER.clear()
        _WORKER_SCORER[key] = ray.get(box[0])
    return _WORKER_SCORER[key]


CPU_COLUMN = "_task_cpu_s"
"""Extra column of a Ray Data scoring batch: the task's CPU seconds in its first row."""


def _with_cpu(scores: pa.Table, cpu: float) -> pa.Table:
    figures = np.zeros(scores.num_rows)
    if scores.num_rows:
        figures[0] = cpu
    return scores.append_column(CPU_COLUMN, pa.array(figures))


def _score_units_batch(
    batch: pa.Table,
    box: list[Any],
    units: Sequence[Unit],
    columns: list[str],
    lineage: dict[str, Any],
    threads: int,
) -> pa.Table:
    """Ray Data ``map_batches`` function of the ``files`` plan: a batch holds one unit index;
    the unit is read with pyarrow and scored."""
    cpu = time.process_time()
    scorer = _worker_scorer(box, threads)
    tables = []
    for index in batch["unit"].to_pylist():
        events = read_unit(units[index], columns, scorer.schema.entity, threads)
        tables.append(score_table(scorer, events, lineage))
    scores = pa.concat_tables(tables) if tables else output_schema(scorer).empty_table()
    return _with_cpu(scores, time.process_time() - cpu)


def _bucket_batch(
    batch: pa.Table, files: Sequence[Piece], columns: list[str], entity: str, n: int
) -> pa.Table:
    """Ray Data ``map_batches`` function (map side of the ``shuffle`` plan): one file's events
    with their entity-hash partition in ``_bucket``."""
    tables = [read_piece(files[i], columns, False) for i in batch["file"].to_pylist()]
    table = pa.concat_tables(tables)
    return table.append_column("_bucket", pa.array(entity_buckets(table[entity], n)))


def _score_group(
    group: pa.Table, box: list[Any], lineage: dict[str, Any], threads: int
) -> pa.Table:
    """Ray Data ``map_groups`` function (reduce side of the ``shuffle`` plan): every event of
    one entity-hash partition, from every file."""
    cpu = time.process_time()
    scorer = _worker_scorer(box, threads)
    scores = score_table(scorer, group.drop_columns(["_bucket"]), lineage)
    return _with_cpu(scores, time.process_time() - cpu)


def _dataset(
    kind: str,
    facts: list[FileFacts],
    scorer: Any,
    lineage: dict[str, Any],
    rows_per_block: int,
    actors: int | None,
    cpus: float,
) -> tuple[Any, int, int]:
    """The Ray Data pipeline of the ``files`` or ``shuffle`` plan, its scoring blocks and the
    events its tasks read.

    Scoring runs in Ray Data tasks (a function, not an actor pool) of ``cpus`` CPUs, at most
    ``slots`` at once: a task holds its CPU only while it runs, so Ray Data's own tasks are
    never starved the way actors holding every CPU were (../shared/PERFORMANCE.md).
    """
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


# --------------------------------------------------------------------------- output


class ScoresWriter:
    """One Parquet file of scores in a folder; counts rows and distinct entities."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.path = folder / "part-00000.parquet"
        self.schema = schema
        self.writer: pq.ParquetWriter | None = None
        self.entities: list[pa.Array] = []

    def write(self, scores: pa.Table) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, self.schema)
        self.writer.write_table(scores)
        self.entities.extend(scores["entity"].chunks)

    def close(self, expected_entities: int) -> int:
        """Rows written; refuses output unless each of the input's entities is there once."""
        if self.writer is None:
            self.write(self.schema.empty_table())
        assert self.writer is not None
        self.writer.close()
        keys = pa.chunked_array(self.entities, pa.string())
        unique = pc.count_distinct(keys).as_py() if len(keys) else 0
        if unique != len(keys) or len(keys) != expected_entities:
            raise RuntimeError(
                f"scores hold {len(keys)} rows for {unique} entities, the input has "
                f"{expected_entities}: an entity was split or lost"
            )
        return len(keys)


def _replace(tmp: Path, output: Path) -> None:
    """Move ``tmp`` to ``output``; an older output is swapped out, then removed."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
        output.rename(old)
    try:
        tmp.rename(output)
    except BaseException:
        if old is not None:
            old.rename(output)
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


# --------------------------------------------------------------------------- entry point


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")


def score_dataset(
    events_path: str | Path,
    output_path: str | Path,
    model_name: str,
    alias: str | None = None,
    version: int | None = None,
    tracking_uri: str | None = None,
    *,
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK,
    max_tokens: int = 16384,
    actors: int | None = None,
    actor_cpus: float = 1.0,
    plan: str = "auto",
    local_max_rows: int = DEFAULT_LOCAL_MAX_ROWS,
) -> dict[str, Any]:
    """Score every entity of ``events_path`` with a registered model; write Parquet scores.

    ``alias`` defaults to ``champion`` when no ``version`` is given. Raises
    :class:`serving.registry.ModelNotFoundError` naming the model when the registry lacks it.
    ``plan``: ``auto`` (``local`` below ``local_max_rows`` events, else ``files`` when no
    entity spans files, else ``shuffle``), or one of them forced; ``files`` on input whose
    entities span files is refused. The Ray plans use the running cluster, else start a local
    one (``ray.init()``), and run on Ray Data with scoring tasks of ``actor_cpus`` CPUs and
    torch threads each
    (the ``local`` plan uses as many threads), at most ``actors`` at once (default: as many
    as the cluster's CPUs hold). Units hold about ``rows_per_block`` events where the layout
    allows (:func:`plan_units`); the ``shuffle`` plan makes ``max(slots, events /
    rows_per_block)`` partitions. The summary says which plan ran (``plan``), its scoring
    calls (``blocks``: units or partitions), the events read (``rows_read``: above ``events``
    where shares re-read a file or ranges a row group), the scoring calls' CPU seconds
    (``task_cpu_s``) and the seconds per phase.
    """
    from serving.config import ModelRef
    from serving.registry import load_model

    _positive_int("rows_per_block", rows_per_block)
    _positive_int("local_max_rows", local_max_rows, minimum=0)
    if actors is not None:
        _positive_int("actors", actors)
    if isinstance(actor_cpus, bool) or not 0 < actor_cpus <= 64:
        raise ValueError(f"actor_cpus={actor_cpus!r}: expected a number of CPUs in (0, 64]")
    if plan not in PLANS:
        raise ValueError(f"plan={plan!r}: expected one of {', '.join(PLANS)}")
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = round(now - since, 4)
        return now

    events_path, output = Path(events_path), Path(output_path)
    files = list_files(events_path)
    ref_args: dict[str, Any] = {"name": model_name, "version": version}
    if alias is not None:
        ref_args["alias"] = alias
    if tracking_uri is not None:
        ref_args["tracking_uri"] = tracking_uri
    loaded = load_model(ModelRef(**ref_args), max_tokens)  # the alias is resolved once
    scorer = loaded.scorer
    scorer.time_calls()  # once, here: the tasks receive the scorer with its call costs
    lineage: dict[str, Any] = {
        "model_name": loaded.name,
        "model_version": loaded.version,
        "run_id": loaded.run_id,
        "data_hash": loaded.data_hash,
        "scored_at": datetime.now(UTC),
    }
    mark = phase("load_model", started)

    columns = list(dict.fromkeys(scorer.required_columns))
    entity = scorer.schema.entity
    n_rows = check_schemas(files, columns)
    kind = plan if plan != "auto" else ("local" if n_rows < local_max_rows else "files")
    facts: list[FileFacts] = []
    n_entities = 0
    if kind != "local":
        facts = [scan_file(path, entity) for path in files]
        spanning = spanning_entities(facts)
        if spanning and plan == "files":
            raise ValueError(
                f"plan='files' needs each entity in one file, but {spanning} entities of "
                f"{events_path} span files; use plan='shuffle' (or 'auto')"
            )
        if spanning:
            kind = "shuffle"
        n_entities = (
            pc.count_distinct(pa.chunked_array([f.entities for f in facts])).as_py() if facts else 0
        )
    mark = phase("plan", mark)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    writer = ScoresWriter(tmp, output_schema(scorer))
    n_read, task_cpu, blocks = 0, 0.0, 1
    try:
        if kind == "local":
            if files:
                events = pa.concat_tables([pq.ParquetFile(p).read(columns=columns) for p in files])
                if events[entity].null_count:
                    raise ValueError(f"{events[entity].null_count} event(s) have no {entity}")
                n_entities = pc.count_distinct(events[entity]).as_py()
                writer.write(_score_with_threads(scorer, events, lineage, int(actor_cpus)))
            n_read = n_rows
        else:
            import ray

            if not ray.is_initialized():
                ray.init()
                mark = phase("ray_init", mark)
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
            # A task-based shuffle: the default hash shuffle starts aggregator actors per
            # call (slower here, and the worker churn slowed the next calls by seconds).
            context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
            try:
                ds, blocks, n_read = _dataset(
                    kind, facts, scorer, lineage, rows_per_block, actors, actor_cpus
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
        mark = phase("score", mark)
        n_scored = writer.close(n_entities)
        _replace(tmp, output)
        phase("finish", mark)
    except BaseException:
        if writer.writer is not None:
            writer.writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    return {
        "output": str(output),
        "plan": kind,
        "events": n_rows,
        "entities": n_scored,
        "blocks": blocks,
        "rows_read": n_read,
        "seconds": round(seconds, 3),
        "events_per_s": round(n_rows / seconds, 1) if seconds > 0 else None,
        "sequences_per_s": round(n_scored / seconds, 1) if seconds > 0 else None,
        "phases": phases,
        "task_cpu_s": round(task_cpu, 3),
        "model_name": loaded.name,
        "alias": loaded.alias,
        "model_version": loaded.version,
        "run_id": loaded.run_id,
        "data_hash": loaded.data_hash,
        "scored_at": lineage["scored_at"].isoformat().replace("+00:00", "Z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.batch", description="Batch-score a Parquet events dataset."
    )
    parser.add_argument("--events", required=True, help="events Parquet file or folder")
    parser.add_argument("--out", required=True, help="output folder of Parquet scores")
    parser.add_argument("--model-name", required=True, help="registered model name")
    parser.add_argument("--alias", default=None, help="registry alias (default: champion)")
    parser.add_argument("--version", type=int, default=None, help="registered version")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking/registry URI")
    parser.add_argument("--rows-per-block", type=int, default=DEFAULT_ROWS_PER_BLOCK)
    parser.add_argument("--plan", choices=PLANS, default="auto", help="default: auto")
    parser.add_argument(
        "--local-max-rows",
        type=int,
        default=DEFAULT_LOCAL_MAX_ROWS,
        help="auto: fewer events than this are scored in-process, without Ray",
    )
    parser.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per scoring task")
    args = parser.parse_args(argv)
    try:
        summary = score_dataset(
            args.events,
            args.out,
            args.model_name,
            alias=args.alias,
            version=args.version,
            tracking_uri=args.tracking_uri,
            rows_per_block=args.rows_per_block,
            plan=args.plan,
            local_max_rows=args.local_max_rows,
            actor_cpus=args.cpus_per_task,
        )
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
