"""Batch scoring of a Parquet events dataset on Ray, through the online scoring code path.

The registered model is resolved and loaded exactly as the Serve deployment does
(:func:`serving.registry.load_model`: ``models:/<name>@<alias>`` followed once to a version,
then that version loaded), and every entity's events go through
:meth:`seqcore.scorer.SequenceScorer.score` (:mod:`serving.batch_scores`), so a batch score
equals the online endpoint's score for the same sequence (docs/architecture.md §7).

Plans (the summary's ``plan``), chosen from metadata and the entity column
(:mod:`serving.batch_plan`):

- ``files``: no entity spans files, as in the ingest stage's entity-hash part files and the
  validate stage's ``data/validated/part-*.parquet``: each Ray Data task reads its unit of
  whole entities and scores it, no shuffle (:mod:`serving.batch_dataset`).
- ``shuffle``: entities span files; Ray Data brings every entity-hash partition's events
  from all files to one scoring call.
- ``local``: fewer than ``local_max_rows`` events are scored in this process, without Ray:
  starting Ray and its worker processes costs more than scoring them.

The driver writes every plan's scores with one ``ParquetWriter`` into a temporary folder
beside ``output_path``, checks that every input entity was scored exactly once, then renames
the folder into place, so a failed run leaves any previous output as it was. How the plans
compare with a plain in-process loop is in benchmarks/README.md, "Batch scoring".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqcore.ray_connect import check_ray_address
from serving.batch_dataset import run_plan
from serving.batch_plan import FileFacts, check_schemas, list_files, scan_file, spanning_entities
from serving.batch_scores import (
    ScoresWriter,
    output_schema,
    replace_output,
    score_with_threads,
    temporary_beside,
)

DEFAULT_ROWS_PER_BLOCK = 100_000
DEFAULT_LOCAL_MAX_ROWS = 100_000
"""Events below which ``plan="auto"`` scores in this process: about as many as in-process
scoring gets through in the time a call on a warm cluster spends on loading, planning and
dispatch. A cold start (``ray.init`` and the first call's worker imports) costs the time of a
few million events, so one-off runs on a small machine may prefer ``plan="local"``
(benchmarks/README.md, "Batch scoring")."""
PLANS = ("auto", "files", "shuffle", "local")
LINEAGE = ("model_name", "model_version", "run_id", "data_hash", "scored_at")


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
    torch threads each (the ``local`` plan uses as many threads), at most ``actors`` at once
    (default: as many as the cluster's CPUs hold). Units hold about ``rows_per_block`` events
    where the layout allows (:func:`serving.batch_plan.plan_units`); the ``shuffle`` plan
    makes ``max(slots, events / rows_per_block)`` partitions. The summary says which plan ran
    (``plan``), its scoring calls (``blocks``: units or partitions), the events read
    (``rows_read``: above ``events`` where shares re-read a file or ranges a row group), the
    scoring calls' CPU seconds (``task_cpu_s``) and the seconds per phase.
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
    tmp = temporary_beside(output)
    writer = ScoresWriter(tmp, output_schema(scorer))
    n_read, task_cpu, blocks = 0, 0.0, 1
    try:
        if kind == "local":
            if files:
                events = pa.concat_tables([pq.ParquetFile(p).read(columns=columns) for p in files])
                if events[entity].null_count:
                    raise ValueError(f"{events[entity].null_count} event(s) have no {entity}")
                n_entities = pc.count_distinct(events[entity]).as_py()
                writer.write(score_with_threads(scorer, events, lineage, int(actor_cpus)))
            n_read = n_rows
        else:
            import ray

            if not ray.is_initialized():
                if os.environ.get("RAY_ADDRESS"):
                    check_ray_address(os.environ["RAY_ADDRESS"])
                ray.init()
                mark = phase("ray_init", mark)
            blocks, n_read, task_cpu = run_plan(
                kind, facts, scorer, lineage, writer,
                rows_per_block=rows_per_block, actors=actors, cpus=actor_cpus,
            )  # fmt: skip
        mark = phase("score", mark)
        n_scored = writer.close(n_entities)
        replace_output(tmp, output)
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
