"""Batch scoring of a Parquet events dataset on Ray, through the online scoring code path.

The registered model is resolved and loaded exactly as the Serve deployment does
(:func:`serving.registry.load_model`: ``models:/<name>@<alias>`` followed once to a version,
then that version loaded), and every entity's events go through
:meth:`serving.scorer.SequenceScorer.score`, so a batch score equals the online endpoint's
score for the same sequence (ARCHITECTURE §7).

Plans (the summary's ``plan``), chosen from metadata and the entity column
(:mod:`serving.batch_plan`):

- ``files``: no entity spans files, as in the ingest stage's entity-hash part files and the one
  ``data/validated/events.parquet``. No shuffle: each Ray task reads its own unit of whole
  entities with pyarrow and scores it.
- ``shuffle``: entities span files. Map tasks hash-partition each file by entity; one scoring
  task per partition concatenates its pieces (a two-stage shuffle in plain Ray tasks).
- ``local``: fewer than ``local_max_rows`` events are scored in this process, without Ray:
  starting Ray and its worker processes costs more than scoring them.

The first version ran Ray Data's hash ``repartition`` and ``write_parquet`` and reached 0.02x a
plain in-process loop on 2 cores; the shuffle, scheduling and writes were nearly all of it
(benchmarks/batch_scoring.py measures this version). Plain tasks of ``num_cpus=actor_cpus``
cannot hang the way actors holding every CPU starved Ray Data's read tasks
(../shared/PERFORMANCE.md): a task takes a CPU only once its inputs exist. The scorer goes to
the object store once and each worker process deserialises it once. Tasks return Arrow tables
of scores (one row per entity, far smaller than the events); the driver writes them in plan
order with one ``ParquetWriter`` into a temporary folder beside ``output_path``, checks that
every input entity was scored exactly once, then renames the folder into place, so a failed
run leaves any previous output as it was.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
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


def _score_unit_task(
    box: list[Any], unit: Unit, columns: list[str], lineage: dict[str, Any], threads: int
) -> dict[str, Any]:
    """Ray task: read one unit, score it."""
    cpu = time.process_time()
    scorer = _worker_scorer(box, threads)
    table = read_unit(unit, columns, scorer.schema.entity, threads)
    scores = score_table(scorer, table, lineage)
    rows = sum(rows_read(p) for p in unit.pieces)
    return {"scores": scores, "rows_read": rows, "cpu_s": time.process_time() - cpu}


def _partition_task(piece: Piece, columns: list[str], entity: str, n: int) -> list[Any]:
    """Ray task (map side of the shuffle): one file's events in ``n`` entity-hash parts,
    then this task's own figures (``n + 1`` returns)."""
    cpu = time.process_time()
    table = read_piece(piece, columns, use_threads=False)
    buckets = entity_buckets(table[entity], n)
    order = np.argsort(buckets, kind="stable")
    edges = np.searchsorted(buckets[order], np.arange(n + 1))
    parts = table.take(pa.array(order))
    out: list[Any] = [
        parts.slice(int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    return [*out, {"rows_read": rows_read(piece), "cpu_s": time.process_time() - cpu}]


def _score_parts_task(
    box: list[Any], lineage: dict[str, Any], threads: int, *parts: pa.Table
) -> dict[str, Any]:
    """Ray task (reduce side of the shuffle): one entity-hash partition of every file."""
    cpu = time.process_time()
    scorer = _worker_scorer(box, threads)
    scores = score_table(scorer, pa.concat_tables(parts), lineage)
    return {"scores": scores, "rows_read": 0, "cpu_s": time.process_time() - cpu}


def _bind(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``function(*args)``, later: tasks are submitted only when a slot frees up."""
    return lambda: function(*args)


def _run_tasks(
    submit: Sequence[Callable[[], Any]], in_flight: int | None
) -> Iterator[dict[str, Any]]:
    """Results in submission order, at most ``in_flight`` tasks pending; fails fast."""
    import ray

    pending: dict[Any, int] = {}
    done: dict[int, dict[str, Any]] = {}
    next_submit = next_yield = 0
    limit = in_flight or len(submit)
    try:
        while next_yield < len(submit):
            while next_submit < len(submit) and len(pending) < limit:
                pending[submit[next_submit]()] = next_submit
                next_submit += 1
            if next_yield not in done:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    done[pending.pop(ref)] = ray.get(ref)  # raises the task's error
            while next_yield in done:
                yield done.pop(next_yield)
                next_yield += 1
    finally:
        for ref in pending:
            ray.cancel(ref)


def _submitters(
    kind: str,
    facts: list[FileFacts],
    scorer: Any,
    lineage: dict[str, Any],
    rows_per_block: int,
    actors: int | None,
    cpus: float,
) -> tuple[list[Callable[[], Any]], list[Any]]:
    """One callable per scoring task of the ``files`` or ``shuffle`` plan, in output order,
    and the refs to the map tasks' figures (shuffle only)."""
    import ray

    columns = list(dict.fromkeys(scorer.required_columns))
    threads = max(1, int(cpus))
    slots = actors or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    box = [ray.put(scorer)]  # one copy in the object store; nested, so not resolved
    if kind == "files":
        score = ray.remote(_score_unit_task).options(num_cpus=cpus)
        units = plan_units(facts, slots, rows_per_block)
        return [_bind(score.remote, box, u, columns, lineage, threads) for u in units], []
    n = max(slots, math.ceil(sum(f.rows for f in facts) / rows_per_block))
    split = ray.remote(_partition_task).options(num_cpus=cpus, num_returns=n + 1)
    maps: list[Any] = [  # n + 1 >= 2 returns: a list of refs per file
        split.remote(Piece(f.path, 0, f.rows), columns, scorer.schema.entity, n) for f in facts
    ]
    reduce = ray.remote(_score_parts_task).options(num_cpus=cpus)
    submit = [_bind(reduce.remote, box, lineage, threads, *[m[p] for m in maps]) for p in range(n)]
    return submit, [m[n] for m in maps]


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
    one (``ray.init()``), with scoring tasks of ``actor_cpus`` CPUs and torch threads each
    (the ``local`` plan uses as many threads), at most ``actors`` at once (default: as many
    as the cluster's CPUs hold). Units hold about ``rows_per_block`` events where the layout
    allows (:func:`plan_units`); the ``shuffle`` plan makes ``max(slots, events /
    rows_per_block)`` partitions. The summary says which plan ran (``plan``), its scoring
    tasks (``blocks``), the events the tasks read (``rows_read``: above ``events`` where
    shares re-read a file or ranges a row group) and the seconds per phase.
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
            pieces = [Piece(p, 0, pq.ParquetFile(p).metadata.num_rows) for p in files]
            if pieces:
                events = pa.concat_tables([read_piece(p, columns) for p in pieces])
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
            submit, map_figures = _submitters(
                kind, facts, scorer, lineage, rows_per_block, actors, actor_cpus
            )
            blocks = len(submit)
            for result in _run_tasks(submit, actors):
                writer.write(result["scores"])
                n_read += result["rows_read"]
                task_cpu += result["cpu_s"]
            for figures in ray.get(map_figures):  # the shuffle's map tasks
                n_read += figures["rows_read"]
                task_cpu += figures["cpu_s"]
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
