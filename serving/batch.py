"""Batch scoring of a Parquet events dataset with Ray Data (ARCHITECTURE §7).

Runs the online code path over files: the registered model is resolved and loaded exactly as
the Serve deployment does (:func:`serving.registry.load_model`: ``models:/<name>@<alias>`` followed
once to a version, then that version loaded), and every entity's events go through
:meth:`serving.scorer.SequenceScorer.score`, so a batch score equals the online endpoint's
score for the same sequence.

Plan (Ray Data docs, "Batch inference" and ``Dataset.repartition(keys=...)``):
``read_parquet`` -> hash ``repartition`` on the entity key (each entity lands in exactly one
block) -> ``map_batches`` over whole blocks (``batch_size=None``) with one scorer actor. Whole
blocks of many entities keep the scorer's length-bucketed batching; ``groupby().map_groups``
would call the model once per entity. One actor with one CPU leaves the other CPU of a
2-core machine to the read and shuffle tasks: PERFORMANCE.md ("Ray Data batch inference")
saw actors holding every CPU hang the pipeline.

Output is written atomically: into a temporary folder beside ``output_path``, checked (every
entity exactly once), then renamed into place; a failed run leaves any previous output as is.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

DEFAULT_ROWS_PER_BLOCK = 100_000
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


class BlockScorer:
    """Ray Data actor: one block of whole entities in, one scored row per entity out."""

    def __init__(self, scorer: Any, lineage: dict[str, Any]) -> None:
        self.scorer = scorer
        self.lineage = lineage
        self.schema = output_schema(scorer)

    def __call__(self, block: pa.Table) -> pa.Table:
        if block.num_rows == 0:
            return self.schema.empty_table()
        scores = self.scorer.score(block)  # the online scoring code path
        scores["entity"] = scores["entity"].astype(str)
        for key, value in self.lineage.items():
            scores[key] = value
        return pa.Table.from_pandas(scores, schema=self.schema, preserve_index=False)


def _events_rows(events_path: Path, required: list[str]) -> int:
    """Rows in the events dataset; fails early on a missing path or missing columns."""
    import pyarrow.dataset as pads

    if not events_path.exists():
        raise FileNotFoundError(f"events dataset not found: {events_path}")
    dataset = pads.dataset(events_path, format="parquet")
    missing = [c for c in required if c not in dataset.schema.names]
    if missing:
        raise ValueError(
            f"events at {events_path} lack column(s) {', '.join(missing)}; "
            f"the model needs {', '.join(required)}"
        )
    return dataset.count_rows()


def _check_written(folder: Path) -> int:
    """Rows written; refuses output where an entity appears more than once."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    entities = pads.dataset(folder, format="parquet").to_table(columns=["entity"])["entity"]
    unique = len(pc.unique(entities))
    if unique != len(entities):
        raise RuntimeError(
            f"scores hold {len(entities)} rows for {unique} entities: an entity was split"
        )
    return len(entities)


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
    actors: int = 1,
    actor_cpus: float = 1.0,
) -> dict[str, Any]:
    """Score every entity of ``events_path`` with a registered model; write Parquet scores.

    ``alias`` defaults to ``champion`` when no ``version`` is given. Raises
    :class:`serving.registry.ModelNotFoundError` naming the model when the registry lacks it.
    Uses the running Ray cluster, else starts a local one (``ray.init()``). ``actors`` scorer
    actors of ``actor_cpus`` CPUs each: keep ``actors * actor_cpus`` below the cluster's CPUs
    so that read and shuffle tasks can run (PERFORMANCE.md, "Ray Data batch inference").
    """
    import ray

    from serving.config import ModelRef
    from serving.registry import load_model

    if (
        isinstance(rows_per_block, bool)
        or not isinstance(rows_per_block, int)
        or rows_per_block < 1
    ):
        raise ValueError(f"rows_per_block={rows_per_block!r}: expected an integer >= 1")
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise ValueError(f"actors={actors!r}: expected an integer >= 1")
    if not 0 < actor_cpus <= 64:
        raise ValueError(f"actor_cpus={actor_cpus!r}: expected a number of CPUs in (0, 64]")
    started = time.perf_counter()
    ref_args: dict[str, Any] = {"name": model_name, "version": version}
    if alias is not None:
        ref_args["alias"] = alias
    if tracking_uri is not None:
        ref_args["tracking_uri"] = tracking_uri
    ref = ModelRef(**ref_args)
    loaded = load_model(ref, max_tokens)  # resolves the alias once; that version is used
    scorer = loaded.scorer
    events_path, output = Path(events_path), Path(output_path)
    n_rows = _events_rows(events_path, scorer.required_columns)
    lineage = {
        "model_name": loaded.name,
        "model_version": loaded.version,
        "run_id": loaded.run_id,
        "data_hash": loaded.data_hash,
        "scored_at": datetime.now(UTC),
    }

    if not ray.is_initialized():
        ray.init()
    num_blocks = max(1, math.ceil(n_rows / rows_per_block))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        ds = ray.data.read_parquet(str(events_path))
        ds = ds.repartition(num_blocks, keys=[scorer.schema.entity])
        ds = ds.map_batches(
            BlockScorer,
            fn_constructor_kwargs={"scorer": scorer, "lineage": lineage},
            batch_size=None,  # whole blocks: an entity is never split across calls
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=actor_cpus,
        )
        ds.write_parquet(str(tmp))
        n_scored = _check_written(tmp) if tmp.exists() else 0
        if n_scored == 0:
            import pyarrow.parquet as pq

            tmp.mkdir(exist_ok=True)
            pq.write_table(output_schema(scorer).empty_table(), tmp / "empty.parquet")
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    return {
        "output": str(output),
        "events": n_rows,
        "entities": n_scored,
        "blocks": num_blocks,
        "seconds": round(seconds, 3),
        "events_per_s": round(n_rows / seconds, 1) if seconds > 0 else None,
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
        )
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
