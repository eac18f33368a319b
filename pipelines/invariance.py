"""The padding-invariance check: padding must never change a score (docs/architecture.md §4).

A model that lets pad positions leak into its outputs scores a sequence differently alone
and in a padded batch. The evaluate stage runs this check on the raw events of the first
test entities, through the scorer that serving uses, and the register stage's gate refuses
a model that fails it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from seqcore.scorer import SequenceScorer
from seqcore.store import locate

GROUP_SIZE = 4
"""Sequences scored together per batch: small enough that most of them are really padded."""


def invariance_check(
    scorer: SequenceScorer, validated_events: pa.Table, entities: list[str], tolerance: float
) -> dict[str, Any]:
    """Score each entity's raw events alone and together in padded batches; compare.

    Compares classify probabilities, and the last step's outputs of per-step tasks. The
    sequences are scored together in random groups of four (fixed seed), not in the length
    groups serving would choose, so most of them are really padded (``padded_sequences``
    counts them).
    """
    column = scorer.schema.entity
    wanted = pa.array(sorted({str(e) for e in entities}), pa.string())
    keys = pc.cast(validated_events.column(column), pa.string())
    seqs = scorer.encode(validated_events.filter(pc.is_in(keys, value_set=wanted)))
    if not seqs:
        return {"max_abs_diff": None, "entities": 0, "passed": False, "tolerance": tolerance,
                "padded_sequences": 0, "reason": "none of the entities has events"}  # fmt: skip
    lengths = np.array([min(len(s.cat_ids), scorer.window_len) for s in seqs], dtype=np.int64)
    order = np.random.default_rng(0).permutation(len(seqs))
    groups = [order[k : k + GROUP_SIZE] for k in range(0, len(order), GROUP_SIZE)]
    together = scorer.forward_sequences(seqs, batches=groups)
    alone = [scorer.forward_sequences([s])[0] for s in seqs]
    last = (lambda x: x) if scorer.config.task == "classify" else (lambda x: x[-1])
    diff = max(
        float(np.max(np.abs(last(a) - last(b)))) for a, b in zip(alone, together, strict=True)
    )
    padded = sum(int((lengths[b] < lengths[b].max()).sum()) for b in groups)
    return {
        "max_abs_diff": diff,
        "entities": len(seqs),
        "passed": bool(diff <= tolerance),
        "tolerance": tolerance,
        "padded_sequences": padded,
    }


def entity_events(validated: Path, scorer: SequenceScorer, entities: list[str]) -> pa.Table:
    """The validated events of ``entities``, only the columns the scorer reads."""
    entity = scorer.schema.entity
    wanted = pa.array(entities, pa.string())
    folder = locate(validated)
    if Path(validated).is_file():
        dataset = ds.dataset(str(validated), format="parquet")
    else:
        files = [folder.path(name) for name in folder.names("part-*.parquet")]
        dataset = ds.dataset(files, format="parquet", filesystem=folder.fs)
    cols = [c for c in scorer.required_columns if c in dataset.schema.names]
    return dataset.to_table(columns=cols, filter=pc.field(entity).cast(pa.string()).isin(wanted))
