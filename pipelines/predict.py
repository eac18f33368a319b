"""Predictions over a whole shard split.

``predict_split`` runs a trained ``SequenceModel`` over every example of a split in
token-budget batches trimmed to their longest example (the same batching as training), and
returns per-example arrays aligned with ``read_split`` order: entity, true length, padded
bucket, targets and model outputs. Evaluation and the quality comparison both use it; the
baselines a model is judged against (``pipelines.baselines``) return arrays in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipelines.sampler import TokenBudgetBatchSampler
from pipelines.shard_reader import read_split, to_numpy_batch
from seqcore.manifest import Manifest
from seqcore.scorer import SequenceScorer
from seqmodels import SequenceModel


@dataclass
class SplitPredictions:
    """Per-example arrays of one split (``read_split`` order)."""

    entity: np.ndarray  # (N,) str
    length: np.ndarray  # (N,) int64
    bucket: np.ndarray  # (N,) int64 padded length L
    label: np.ndarray  # (N,) int64, -1 = none
    outputs: list[
        np.ndarray
    ]  # classify: (K,) probabilities; next_event: (T, V) probs; forecast: (T, H)
    next_event: list[np.ndarray]  # (T,) target ids, 0 = none
    forecast: list[np.ndarray]  # (T, H) standardised targets, NaN = none
    window_end: np.ndarray | None = None  # (N,) int64 us: the window's last event time

    @property
    def probabilities(self) -> np.ndarray:
        """classify: (N, K)."""
        return np.stack(self.outputs) if self.outputs else np.zeros((0, 2))


@torch.inference_mode()
def predict_split(
    model: SequenceModel, shard_dir: str | Path, split: str, max_tokens: int = 16384
) -> SplitPredictions:
    model = model.eval()
    table = read_split(shard_dir, split)
    bucket = table.column("bucket").to_numpy().astype(np.int64)
    length = table.column("length").to_numpy().astype(np.int64)
    n = len(bucket)
    outputs: list[np.ndarray] = [np.empty(0)] * n
    next_event: list[np.ndarray] = [np.empty(0)] * n
    forecast: list[np.ndarray] = [np.empty(0)] * n
    task = model.config.task
    if n:
        for indices in TokenBudgetBatchSampler(bucket, max_tokens, shuffle=False, lengths=length):
            idx = np.asarray(indices)
            batch = to_numpy_batch(table, idx, trim=True)
            cat, num, lengths = (
                torch.from_numpy(np.require(batch[k], requirements="W"))
                for k in ("cat", "num", "length")
            )
            out = model(cat, num, lengths)
            if task in ("classify", "next_event"):
                out = torch.softmax(out.float(), dim=-1)
            out_np = out.float().numpy()
            for row, i in enumerate(idx.tolist()):
                steps = int(length[i])
                outputs[i] = out_np[row] if task == "classify" else out_np[row, :steps]
                next_event[i] = batch["next_event"][row, :steps]
                forecast[i] = batch["forecast"][row, :steps]
    return SplitPredictions(
        entity=np.asarray(table.column("entity").to_pylist(), dtype=object),
        length=length,
        bucket=bucket,
        label=table.column("label").to_numpy().astype(np.int64),
        outputs=outputs,
        next_event=next_event,
        forecast=forecast,
        window_end=table.column("window_end").cast(pa.int64()).to_numpy(),
    )


def split_targets(shard_dir: str | Path, split: str) -> tuple[pa.Table, SplitPredictions]:
    """The split's rows (``read_split`` order) and their targets, with no outputs yet."""
    table = read_split(shard_dir, split)
    bucket = table.column("bucket").to_numpy().astype(np.int64)
    length = table.column("length").to_numpy().astype(np.int64)
    next_event: list[np.ndarray] = [np.empty(0)] * len(bucket)
    forecast: list[np.ndarray] = [np.empty(0)] * len(bucket)
    for bound in np.unique(bucket):
        idx = np.flatnonzero(bucket == bound)
        batch = to_numpy_batch(table, idx)
        for row, i in enumerate(idx.tolist()):
            next_event[i] = batch["next_event"][row, : length[i]]
            forecast[i] = batch["forecast"][row, : length[i]]
    preds = SplitPredictions(
        entity=np.asarray(table.column("entity").to_pylist(), dtype=object),
        length=length,
        bucket=bucket,
        label=table.column("label").to_numpy().astype(np.int64),
        outputs=[np.empty(0)] * len(bucket),
        next_event=next_event,
        forecast=forecast,
    )
    return table, preds


def predict_split_raw(
    scorer: SequenceScorer, events: pa.Table, shard_dir: str | Path, split: str, manifest: Manifest
) -> SplitPredictions:
    """Score a split's windows from RAW events with a scorer's own preprocessing.

    This is how a model trained on other shards (another vocabulary or normalisation, e.g. the
    current champion) is compared with a new one on the same test windows: each example's
    entity events up to its window end are encoded with ``scorer``'s manifest, and outputs are
    mapped into ``manifest``'s (the current shards') id and unit space.
    """
    table, preds = split_targets(shard_dir, split)
    schema = scorer.schema
    ev_entity = pc.cast(events[schema.entity], pa.string())
    ev_time = pc.cast(pc.cast(events[schema.time], pa.timestamp("us", "UTC")), pa.int64()).to_numpy(
        zero_copy_only=False
    )
    window_end = pc.cast(
        pc.cast(table.column("window_end"), pa.timestamp("us", "UTC")), pa.int64()
    ).to_numpy(zero_copy_only=False)
    order = np.lexsort((window_end, preds.entity.astype(str)))
    # Round r holds each entity's r-th window, so one scorer call sees an entity at most once.
    sorted_entities = preds.entity[order]
    first = np.r_[True, sorted_entities[1:] != sorted_entities[:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rounds = np.empty(len(order), dtype=np.int64)
    rounds[order] = np.arange(len(order)) - starts
    convert = _output_converter(scorer.manifest, manifest, scorer.config.task)
    for r in np.unique(rounds):
        members = np.flatnonzero(rounds == r)
        keys = pa.array(preds.entity[members].astype(str).tolist(), pa.string())
        where = pc.index_in(ev_entity, value_set=keys)
        valid = where.is_valid().to_numpy(zero_copy_only=False)
        idx = pc.fill_null(where, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        keep = valid & (ev_time <= window_end[members][idx])
        seqs = {s.entity: s for s in scorer.encode(events.filter(pa.array(keep)))}
        outputs = scorer.forward_sequences([seqs[str(preds.entity[i])] for i in members])
        for i, out in zip(members.tolist(), outputs, strict=True):
            preds.outputs[i] = convert(out)
    return preds


def _output_converter(
    own: Manifest, target: Manifest, task: str
) -> Callable[[np.ndarray], np.ndarray]:
    """Map a model's outputs from its own manifest's space into ``target``'s."""
    if own.features == target.features:
        return lambda out: out
    if task == "next_event" and target.targets.next_event is not None:
        column = target.targets.next_event.column
        own_vocab = own.vocab(column)
        target_ids = {value: i + 2 for i, value in enumerate(target.vocab(column))}
        size = target.targets.next_event.vocab_size
        index = np.array([0, 1, *(target_ids.get(v, 1) for v in own_vocab)])

        def remap(out: np.ndarray) -> np.ndarray:
            mapped = np.zeros((*out.shape[:-1], size), dtype=out.dtype)
            mapped[..., :] = 0
            for own_id in range(out.shape[-1]):  # vocabularies are small (tens of ids)
                mapped[..., index[own_id]] += out[..., own_id]
            return mapped

        return remap
    if task == "forecast" and target.targets.forecast is not None:
        column = target.targets.forecast.column
        own_spec, target_spec = own.features, target.features
        return lambda out: target_spec.standardise(
            column, own_spec.inverse_standardise(column, out), np.nan
        )
    return lambda out: out
