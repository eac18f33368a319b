"""Raw events in, scores out: the one scoring code path (MLflow model, evaluation, serving).

A ``SequenceScorer`` holds a trained ``SequenceModel`` and the shard manifest. It applies the
manifest's preprocessing (vocabularies, normalisation, time deltas fitted on the training
split) to raw events, keeps each entity's most recent ``window_len`` events (the window the
model was trained on), and batches sequences of similar length under a token budget, padding
each batch to its own longest sequence, never to a global maximum (bucketed padding keeps
nearly every token real: benchmarks/README.md, "Padding"). Padding never changes a score
(docs/architecture.md §4), so a sequence scores the same alone or in any batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from seqcore.encoding import EncodedSequence, EventColumns, encode
from seqcore.features import FeatureSpec
from seqcore.manifest import MANIFEST_FILE, Manifest
from seqcore.schema import SchemaConfig
from seqmodels import ModelConfig, SequenceModel

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model_config.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallCost:
    """What one model call costs, in seconds, for :meth:`SequenceScorer._batches`: a fixed
    part, a part per step of its width (a recurrence's sequential loop), one per padded token,
    and one per padded token and step of width (attention's pairs). The defaults were fitted
    for the default LSTM (2 x 64, one torch thread) over batches of 1-32 rows x 8-256 steps;
    :func:`measure_call_cost` fits them for a given model on the machine at hand (here a GRU's
    steps cost several times an LSTM's, and a transformer's padding grows with the width)."""

    call_s: float = 0.96e-3
    step_s: float = 5.7e-6
    token_s: float = 2.55e-6
    pair_s: float = 0.0

    def of(self, calls: Any, rows: Any, width: Any) -> Any:
        """Cost of ``calls`` calls holding ``rows`` rows padded to ``width`` (numpy-broadcast)."""
        per_row = width * (self.token_s + self.pair_s * width)
        return calls * (self.call_s + self.step_s * width) + rows * per_row


@torch.inference_mode()
def measure_call_cost(model: SequenceModel, max_width: int, repeats: int = 3) -> CallCost:
    """Time the model on full batches of 1 and 8 rows x 8 to ``max_width`` steps (the fastest
    of ``repeats`` each) and fit :class:`CallCost` by least squares, dropping any term that
    comes out negative. Scores never depend on it, only speed does."""
    config = model.config
    if config.architecture == "transformer":
        max_width = min(max_width, config.max_len)  # positions it has embeddings for
    widths = sorted({8, max(8, max_width // 4), max(8, max_width)})
    shapes = [(rows, width) for rows in (1, 8) for width in widths]
    seconds = []
    for rows, width in shapes:
        cat = torch.ones((rows, width, config.n_categorical), dtype=torch.int64)
        num = torch.zeros((rows, width, config.n_numeric), dtype=torch.float32)
        lengths = torch.full((rows,), width, dtype=torch.int64)
        model(cat, num, lengths)  # warm-up: first calls allocate
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            model(cat, num, lengths)
            best = min(best, time.perf_counter() - started)
        seconds.append(best)
    b = np.array([r for r, _ in shapes], dtype=np.float64)
    t = np.array([w for _, w in shapes], dtype=np.float64)
    features = np.stack([np.ones_like(b), t, b * t, b * t * t], axis=1)
    keep, coef = [0, 1, 2, 3], np.zeros(4)
    while keep:
        fit, *_ = np.linalg.lstsq(features[:, keep], np.array(seconds), rcond=None)
        if (fit >= 0).all():
            coef[keep] = fit
            break
        keep = [k for k, c in zip(keep, fit, strict=True) if c >= 0]
    if coef[0] <= 0 or coef[2] + coef[3] <= 0:  # too noisy to tell: keep the defaults
        return CallCost()
    return CallCost(call_s=coef[0], step_s=coef[1], token_s=coef[2], pair_s=coef[3])


class SequenceScorer:
    """Scores raw events with a model and the preprocessing of its shard manifest."""

    def __init__(
        self,
        model: SequenceModel,
        manifest: Manifest,
        *,
        max_tokens: int = 16384,
        call_cost: CallCost | None = None,
    ) -> None:
        self.model = model.eval()
        self.config: ModelConfig = model.config
        self.manifest = manifest
        self.schema: SchemaConfig = manifest.schema
        self.spec: FeatureSpec = manifest.features
        self.window_len = manifest.window_len
        self.max_tokens = max_tokens
        self.call_cost = call_cost or CallCost()
        label = manifest.targets.label
        self.class_names: tuple[Any, ...] = (
            label.names if label else tuple(range(model.config.num_classes))
        )
        """classify: the label value of each output, in output order."""
        next_event = manifest.targets.next_event
        self.next_event_vocab = (
            ["<PAD>", "<OOV>", *manifest.vocab(next_event.column)] if next_event else []
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dir(cls, path: str | Path, **kwargs: Any) -> SequenceScorer:
        """Load from a folder holding weights.safetensors, model_config.json, manifest.json."""
        path = Path(path)
        config = ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        model = SequenceModel(config)
        model.load_weights(path / WEIGHTS_FILE)
        return cls(model, Manifest.read(path / MANIFEST_FILE), **kwargs)

    def time_calls(self) -> None:
        """Fit :attr:`call_cost` for this model on this machine (:func:`measure_call_cost`),
        for the length grouping of batches; a model that cannot be timed keeps the defaults.
        Only callers that score batches need it (the online champion, batch scoring)."""
        try:
            self.call_cost = measure_call_cost(self.model, self.window_len)
        except Exception:  # a timing aid must not stop a model from serving
            log.warning("cannot time the model's calls; default call costs", exc_info=True)

    # ------------------------------------------------------------------ encoding

    def encode(self, events: pa.Table | pd.DataFrame | EventColumns) -> list[EncodedSequence]:
        """Group raw events by entity, order by (time, seq), apply the manifest's features.

        :class:`EventColumns` (a validated serving request, already in the schema's columns)
        come back in their ``names`` order, tables in sorted entity order."""
        if isinstance(events, EventColumns):
            return encode(events, self.spec, self.schema)
        table = (
            events
            if isinstance(events, pa.Table)
            else pa.Table.from_pandas(events, preserve_index=False)
        )
        present = set(table.column_names)  # a new list per access: read it once
        missing = [c for c in self.required_columns if c not in present]
        if missing:
            raise ValueError(
                f"events lack column(s) {', '.join(missing)}; required: {', '.join(self.required_columns)}"
            )
        return encode(table, self.spec, self.schema)

    @property
    def required_columns(self) -> list[str]:
        return self.schema.event_columns

    # ------------------------------------------------------------------ scoring

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Indices grouped by length into model calls that cost the least in all, each call
        under the token budget.

        A call costs its padded tokens and fixed parts (:class:`CallCost`: the defaults or,
        in a served model, :func:`measure_call_cost`'s fit). Padding a short sequence to a long
        one's width wastes tokens, and a separate call costs its fixed part: with the
        sequences sorted longest first, a dynamic programme over the runs of equal lengths
        picks where to cut (each group's width is its first length; a group over the budget
        is cut into several calls). What this saves on mixed lengths is measured in
        benchmarks/README.md, "Serving"."""
        if len(lengths) <= 1:  # the common online case: nothing to choose
            return [np.arange(len(lengths))] if len(lengths) else []
        order = np.argsort(-lengths, kind="stable")  # longest first
        ordered = lengths[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        width = ordered[starts].astype(np.float64)  # (m,) distinct lengths, descending
        ends = np.r_[starts[1:], len(ordered)]  # the runs of equal length
        per_call = np.maximum(self.max_tokens // np.maximum(width, 1), 1)  # rows per call
        best = np.zeros(len(starts) + 1)
        cut = np.zeros(len(starts) + 1, dtype=np.int64)
        for j in range(1, len(starts) + 1):  # the last group holds runs i..j-1
            rows = ends[j - 1] - starts[:j]
            cost = best[:j] + self.call_cost.of(np.ceil(rows / per_call[:j]), rows, width[:j])
            cut[j] = int(np.argmin(cost))
            best[j] = cost[cut[j]]
        batches: list[np.ndarray] = []
        j = len(starts)
        while j > 0:
            i = int(cut[j])
            members, step = order[starts[i] : ends[j - 1]], int(per_call[i])
            batches[:0] = [members[k : k + step] for k in range(0, len(members), step)]
            j = i
        return batches

    @torch.inference_mode()
    def forward_sequences(
        self,
        seqs: Sequence[EncodedSequence],
        window_len: int | None = None,
        batches: Sequence[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Model output per sequence over its last ``window_len`` events (default: the
        manifest's window, the one the model was trained on).

        classify: (num_classes,) probabilities; next_event: (T, V) probabilities per step;
        forecast: (T, H) standardised predictions per step. ``batches`` (index arrays) fixes
        which sequences share a call instead of :meth:`_batches`.
        """
        window = self.window_len if window_len is None else window_len
        cats = [s.cat_ids[-window:] for s in seqs]
        nums = [s.num[-window:] for s in seqs]
        lengths = np.array([len(c) for c in cats], dtype=np.int64)
        results: list[np.ndarray] = [np.empty(0)] * len(seqs)
        for batch in self._batches(lengths) if batches is None else batches:
            width = int(lengths[batch].max())
            cat = np.zeros((len(batch), width, cats[0].shape[1]), dtype=np.int64)  # (B, T, C)
            num = np.zeros((len(batch), width, nums[0].shape[1]), dtype=np.float32)  # (B, T, F)
            for row, i in enumerate(batch.tolist()):
                cat[row, : lengths[i]] = cats[i]
                num[row, : lengths[i]] = nums[i]
            out = self.model(
                torch.from_numpy(cat), torch.from_numpy(num), torch.from_numpy(lengths[batch])
            )
            if self.config.task in ("classify", "next_event"):
                out = torch.softmax(out.float(), dim=-1)
            out_np = out.float().numpy()
            for row, i in enumerate(batch.tolist()):
                results[i] = (
                    out_np[row] if self.config.task == "classify" else out_np[row, : lengths[i]]
                )
        return results

    def score(
        self, events: pa.Table | pd.DataFrame | EventColumns, *, window_len: int | None = None
    ) -> pd.DataFrame:
        """One row per entity: its key, events used, last event time and the prediction.

        ``window_len`` overrides the manifest's window: a recurrent model can read a whole
        history (what streaming scoring carries in its state), a transformer no more than its
        ``max_len`` positions.
        """
        rows = self.score_rows(events, window_len=window_len)
        if not rows:
            return pd.DataFrame(columns=["entity", "n_events", "window_end"])
        return pd.DataFrame(rows)

    def score_rows(
        self, events: pa.Table | pd.DataFrame | EventColumns, *, window_len: int | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`score`'s rows as plain dicts, in entity order, without the DataFrame: what
        the online endpoint answers with (a DataFrame built per request, only to be taken
        apart again, would cost more than a small model's forward pass)."""
        return self.score_encoded(self.encode(events), window_len=window_len)[0]

    def score_encoded(
        self, seqs: Sequence[EncodedSequence], *, window_len: int | None = None
    ) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        """:meth:`score_rows` of sequences :meth:`encode` gave, with the model's outputs
        behind the rows (what the endpoint's live statistics read: no second pass)."""
        if not seqs:
            return [], []
        window = self.window_len if window_len is None else window_len
        outputs = self.forward_sequences(seqs, window)
        rows = []
        for seq, out in zip(seqs, outputs, strict=True):
            row: dict[str, Any] = {
                "entity": seq.entity,
                "n_events": int(min(len(seq.cat_ids), window)),
                "window_end": pd.Timestamp(int(seq.event_time_us[-1]), unit="us", tz="UTC"),
            }
            row.update(self.describe(out))
            rows.append(row)
        return rows, outputs

    def describe(self, out: np.ndarray) -> dict[str, Any]:
        """One sequence's model output (``forward_sequences``) as the response's fields."""
        task = self.config.task
        if task == "classify":
            # ``score`` is the last class's probability: the positive one of a binary label
            # (1, True, or the later of two sorted strings); every class is named by its value.
            probs = out.astype(float).tolist()
            names = self.class_names
            return {
                "score": probs[-1],
                "predicted": names[int(np.argmax(out))],
                "probabilities": {str(n): p for n, p in zip(names, probs, strict=True)},
            }
        if task == "next_event":
            last = out[-1]
            top = np.argsort(-last)[:5]
            return {
                "predicted": self.next_event_vocab[int(top[0])]
                if self.next_event_vocab
                else int(top[0]),
                "score": float(last[top[0]]),
                "top5": [
                    self.next_event_vocab[int(i)] if self.next_event_vocab else int(i) for i in top
                ],
            }
        forecast = self.manifest.targets.forecast
        if forecast is None:
            raise ValueError("a forecast model's manifest names no forecast column")
        values = self.spec.inverse_standardise(
            forecast.column, out[-1]
        )  # back to the column's units
        return {"forecast": values.tolist(), "score": float(values[0])}
