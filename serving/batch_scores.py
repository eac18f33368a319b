"""Batch scoring's unit of work and its output: whole entities' events in, one scored row per
entity out, written as one Parquet file that replaces any previous output only when complete.

:func:`score_table` is what every plan of :func:`serving.batch.score_dataset` calls on its
events, in this process or in a Ray task: :meth:`seqcore.scorer.SequenceScorer.score`, the
online code path, so a batch score equals the endpoint's for the same sequence
(docs/architecture.md §7). :class:`ScoresWriter` and :func:`replace_output` make the output
all or nothing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_checks.rules import EventRules
from seqcore.encoding import table_columns
from seqcore.io import sweep_stale
from seqcore.scorer import SequenceScorer

CPU_COLUMN = "_task_cpu_s"
"""Extra column of a Ray Data scoring batch: the task's CPU seconds in its first row."""


def output_schema(scorer: SequenceScorer) -> pa.Schema:
    """Columns of the scores: the scorer's per-entity row, then lineage."""
    task = scorer.config.task
    fields = [
        pa.field("entity", pa.string()),
        pa.field("n_events", pa.int64()),
        pa.field("window_end", pa.timestamp("us", tz="UTC")),
        pa.field("score", pa.float64()),
    ]
    if task == "classify":  # classes named by the label's own values (strings, ints, bools)
        names = scorer.class_names
        predicted = (
            pa.bool_()
            if all(isinstance(n, bool) for n in names)
            else pa.int64()
            if all(isinstance(n, int) for n in names)
            else pa.string()
        )
        fields += [
            pa.field("predicted", predicted),
            pa.field("probabilities", pa.map_(pa.string(), pa.float64())),
        ]
    elif task == "next_event":
        label = pa.string() if scorer.next_event_vocab else pa.int64()
        fields += [pa.field("predicted", label), pa.field("top5", pa.list_(label))]
    else:
        fields += [pa.field("forecast", pa.list_(pa.float64()))]
    fields += [
        # Why an entity was not scored: the first event its model's data contract refuses.
        pa.field("contract_error", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("data_hash", pa.string()),
        pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    ]
    return pa.schema(fields)


def apply_contract(
    scorer: SequenceScorer, events: pa.Table, now: datetime
) -> tuple[pa.Table, dict[str, tuple[int, str]]]:
    """The events to score under the model's data contract (the rules ``/v1/score`` applies,
    docs/architecture.md §7), and the entities it refuses: ``{entity: (events, first
    refusal)}``. A refused entity is left out whole: scoring the rest of its sequence would
    give a score the model was never validated for. Out-of-domain categories under the
    ``oov`` policy are scored as unknown, as online."""
    contract = scorer.manifest.contract
    if contract is None or events.num_rows == 0:
        return events, {}
    schema = scorer.schema
    columns = table_columns(events, schema, scorer.manifest.features)
    if columns is None:  # null keys or times: the scorer's own checks answer those
        return events, {}
    verdict = EventRules(contract, schema).check(columns, now, events.num_rows)
    for name, strings in verdict.columns.categorical.items():
        if strings is not columns.categorical[name]:  # mapped to OOV
            at = events.schema.get_field_index(name)
            events = events.set_column(at, name, pa.array(strings, pa.string()))
    if not verdict.count:
        return events, {}
    first: dict[int, str] = {}
    for violation in verdict.violations:  # in event order: the first per entity
        first.setdefault(int(columns.group[violation.row]), violation.message)
    bad = np.isin(columns.group, list(first))
    counts = np.bincount(columns.group[bad], minlength=len(columns.names))
    refused = {columns.names[g]: (int(counts[g]), message) for g, message in first.items()}
    return events.filter(pa.array(~bad)), refused


def score_table(scorer: SequenceScorer, events: pa.Table, lineage: dict[str, Any]) -> pa.Table:
    """Whole entities' events in, one row per entity (with lineage) out: scored, or refused
    by the data contract with ``contract_error`` saying why."""
    schema = output_schema(scorer)
    if events.num_rows == 0:
        return schema.empty_table()
    events, refused = apply_contract(scorer, events, lineage["scored_at"])
    parts = []
    if events.num_rows:
        scores = scorer.score(events)  # the online scoring code path
        scores["entity"] = scores["entity"].astype(str)
        scores["contract_error"] = None
        for key, value in lineage.items():
            scores[key] = value
        parts.append(pa.Table.from_pandas(scores, schema=schema, preserve_index=False))
    if refused:
        rows = [
            {"entity": entity, "n_events": n, "contract_error": why, **lineage}
            for entity, (n, why) in refused.items()
        ]
        parts.append(pa.Table.from_pylist(rows, schema=schema))
    return pa.concat_tables(parts)


def score_with_threads(
    scorer: SequenceScorer, events: pa.Table, lineage: dict[str, Any], threads: int
) -> pa.Table:
    """``score_table`` with as many torch threads as a Ray task would use, then restored.

    On a busy machine two OpenMP threads can be far slower than one (benchmarks/README.md,
    "Batch scoring"), so the local plan runs like one task, not with torch's default.
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


def worker_scorer(box: list[Any], threads: int) -> Any:
    """The scorer in ``box`` (a list holding its object ref, so that Ray does not resolve it
    for the task), deserialised once per worker process, not once per task."""
    import ray
    import torch

    torch.set_num_threads(threads)
    key = box[0].hex()
    if key not in _WORKER_SCORER:
        _WORKER_SCORER.clear()
        _WORKER_SCORER[key] = ray.get(box[0])
    return _WORKER_SCORER[key]


def with_cpu(scores: pa.Table, cpu: float) -> pa.Table:
    """``scores`` with :data:`CPU_COLUMN`: ``cpu`` in the first row, zeros below."""
    figures = np.zeros(scores.num_rows)
    if scores.num_rows:
        figures[0] = cpu
    return scores.append_column(CPU_COLUMN, pa.array(figures))


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


def temporary_beside(output: Path) -> Path:
    """A fresh hidden folder name beside ``output``, for :func:`replace_output`, named after
    this process like ``seqcore.io``'s, whose sweep first removes what killed runs left."""
    output.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(output)
    return output.with_name(f".{output.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def replace_output(tmp: Path, output: Path) -> None:
    """Move ``tmp`` to ``output``; an older output is swapped out, then removed."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        output.rename(old)
    try:
        tmp.rename(output)
    except BaseException:
        if old is not None:
            old.rename(output)
        raise
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
