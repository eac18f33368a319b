"""Stateful streaming scoring: new events for one entity in, its updated score out.

A :class:`StreamingScorer` keeps, per entity, what the model needs to continue where the last
call stopped, so the cost of a call depends on the new events, not on the entity's history:

* LSTM/GRU: the recurrent state after the last event, plus the running sum of step outputs
  when the model pools by mean. A call of up to ``CELL_STEPS`` events steps through numpy
  copies of the model (``seqmodels.stepping.RecurrentStepper``: for a few events PyTorch's
  fixed cost per operator call outweighs the arithmetic); longer calls go through the model
  (``SequenceModel.encode``). The streamed score is the model applied to the
  **whole** history seen so far: it equals ``SequenceScorer.score(history,
  window_len=<no limit>)`` (tested to 1e-5).
* Transformer and TCN: a rolling window of the last ``window_len`` encoded events (the
  model's training window), re-encoded on each call: bounded cost, and the streamed score
  equals ``SequenceScorer.score(history)``, which reads the same last ``window_len`` events.
  A causal TCN whose output reads the last step (``pooling: last``, or a per-step task)
  keeps only its receptive field: its last output reads nothing older.

Events arrive as :class:`seqcore.encoding.EventColumns` of one entity (what the request
validator, ``serving.schemas``, emits), and go to the encoder as they are. Preprocessing is the
manifest's (``FeatureSpec``), applied to the new events only; the one feature that crosses
calls, the time since the previous event, is taken from the kept last event time with the same
float operations as ``seqcore.features.time_deltas``.

State is bounded (:class:`serving.stream_state.StateStore`): a time-to-live and a maximum
number of entities with least-recently-used eviction. An entity whose state is gone is never
scored as if it were there: the reply's ``state.status`` says ``reset`` (scored from the new
events alone, with the reason: evicted, expired, model changed, unknown to this replica) or
``rebuilt`` (the client sent ``history`` and the state was recomputed from it). A client that sends
``expect_events_seen`` (the count from its previous reply) lets a replica that never saw the
entity, e.g. after a restart, say ``reset`` instead of ``new``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from seqcore.encoding import EncodedSequence, EventColumns, concat_columns, table_columns
from seqcore.features import TIME_DELTA
from seqcore.scorer import SequenceScorer
from seqmodels.stepping import (
    CELL_STEPS,
    RecurrentStepper,
    to_numpy_state,
    to_torch_state,
)
from serving.stream_state import EntityState

UNLIMITED_WINDOW = 2**62
"""``window_len`` that keeps every event: how a recurrent model reads a whole history."""


class StreamOrderError(ValueError):
    """New events that precede the entity's last streamed event (or break (time, seq) order)."""

    def __init__(self, message: str, index: int, column: str, late: int = 1) -> None:
        super().__init__(message)
        self.index, self.column = index, column
        self.late = late
        """Events of the call that come before the entity's last streamed event."""


class StateConflict(RuntimeError):
    """Other calls for the same entity kept writing first, through every retry (409)."""


class StateStoreLike(Protocol):
    """What :class:`StreamingScorer` needs of a store: :class:`StateStore` (one replica's
    memory) or ``serving.redis_state.RedisStateStore`` (shared by every replica)."""

    def get(self, entity: str) -> tuple[EntityState | None, str | None]: ...

    def put(self, entity: str, state: EntityState, expected: int | None) -> bool: ...

    def on_model_change(self) -> None: ...


class StreamingScorer:
    """Streams events of many entities through one loaded model (see the module docstring)."""

    def __init__(
        self, scorer: SequenceScorer, version: str, store: StateStoreLike, retries: int = 3
    ) -> None:
        self.store, self.retries = store, int(retries)
        self._bind(scorer, version)

    def _bind(self, scorer: SequenceScorer, version: str) -> None:
        self.scorer, self.version = scorer, str(version)
        self.model = scorer.model
        self.config = scorer.config
        self.schema = scorer.schema
        self.recurrent = bool(self.model.supports_state)
        self.stepper = RecurrentStepper(self.model) if self.recurrent else None
        self.pooling = self.config.resolved_pooling
        spec = scorer.spec
        self._delta_column = len(spec.numeric) if spec.time_delta else None
        self.keep = int(scorer.window_len)
        reach = self.config.receptive_field
        reads_last = self.config.task != "classify" or self.pooling == "last"
        if reach is not None and self.config.resolved_causal and reads_last:
            # A causal TCN's last output reads only its last ``reach`` inputs: keeping those
            # scores exactly what the whole window would, at a fraction of the cost.
            self.keep = min(self.keep, int(reach))

    @property
    def window_len(self) -> int:
        """Events the model reads: the whole history (RNN) or the training window."""
        return UNLIMITED_WINDOW if self.recurrent else int(self.scorer.window_len)

    def reference(self, history: pa.Table | EventColumns) -> pd.DataFrame:
        """The full re-score a streamed result must equal (one row per entity)."""
        return self.scorer.score(history, window_len=self.window_len)

    def columns(self, events: pa.Table) -> EventColumns:
        """An events table as the :class:`EventColumns` that :meth:`update` takes, for callers
        that hold a table (replays, tests, benchmarks); requests arrive as columns already."""
        columns = table_columns(events, self.schema, self.scorer.spec)
        if columns is None:
            raise ValueError(
                "stream: events need non-null keys, times and seq, and categories that are "
                "strings or integers"
            )
        return columns

    def swap_model(self, scorer: SequenceScorer, version: str) -> None:
        """Serve another version; states of the old one answer as ``model_changed``."""
        self._bind(scorer, version)
        self.store.on_model_change()

    # ------------------------------------------------------------------ one call

    def update(
        self,
        entity: str,
        events: EventColumns,
        *,
        history: EventColumns | None = None,
        expect_events_seen: int | None = None,
        reset: bool = False,
    ) -> dict[str, Any]:
        """Score ``events`` (raw, one entity) after what this entity streamed before.

        The state is read, stepped and written back with compare-and-set on its event count:
        if another call for the entity wrote in between, this one reads again and re-scores
        (``retries`` times), then raises :class:`StateConflict`."""
        for _ in range(self.retries + 1):
            result, new_state, expected = self._attempt(
                entity, events, history=history, expect_events_seen=expect_events_seen,
                reset=reset,
            )  # fmt: skip
            if self.store.put(entity, new_state, expected):
                return result
        raise StateConflict(
            f"entity {entity!r}: {self.retries + 1} attempts lost to concurrent calls for the "
            "same entity; send one entity's events in order, one call at a time"
        )

    def _attempt(
        self,
        entity: str,
        events: EventColumns,
        *,
        history: EventColumns | None,
        expect_events_seen: int | None,
        reset: bool,
    ) -> tuple[dict[str, Any], EntityState, int | None]:
        """One read and score: (the reply, the state to write, the count read)."""
        state, reason = self.store.get(entity)
        expected = state.events_seen if state is not None else None
        before = expected or 0
        if state is not None and state.model_version != self.version:
            state, reason = None, "model_changed"
        if reset:
            state, reason = None, "requested"
        elif (
            state is not None
            and expect_events_seen is not None
            and expect_events_seen != state.events_seen
        ):
            reason = f"events_seen_mismatch: replica had {state.events_seen}"
            state = None
        if state is None and reason is None and expect_events_seen:
            reason = "unknown_entity"  # e.g. a restarted replica, or another replica's entity
        if state is None and history is not None:
            status = "rebuilt"
            reason = reason or "history_given"
            joined = concat_columns([history, events])
            events = dataclasses.replace(  # one sequence: the history, then the new events
                joined, names=[entity], group=np.zeros(joined.num_rows, dtype=np.int64)
            )
        elif state is None:
            status = "reset" if reason else "new"
        else:
            status = "continued"

        seq = self._encode(events)
        if state is not None:
            self._check_follows(seq, events, state)
        new_state, output = (
            self._step_recurrent(seq, state) if self.recurrent else self._step_window(seq, state)
        )
        new_state.last_seq = self._last_seq(events)
        window_len = min(new_state.events_seen, self.window_len)
        reply = {
            "entity": entity,
            "n_events": int(window_len),
            "window_end": pd.Timestamp(new_state.last_time_us, unit="us", tz="UTC"),
            **self.scorer.describe(output),
            "state": {
                "status": status,
                "reason": reason,
                "events_seen": int(new_state.events_seen),
                "events_seen_before": int(before if status == "continued" else 0),
                "new_events": int(events.num_rows),
            },
        }
        return reply, new_state, expected

    def _encode(self, events: EventColumns) -> EncodedSequence:
        sequences = self.scorer.encode(events)
        if len(sequences) != 1:
            raise ValueError(f"stream: expected the events of one entity, got {len(sequences)}")
        return sequences[0]

    def _check_follows(
        self, seq: EncodedSequence, events: EventColumns, state: EntityState
    ) -> None:
        """New events may not go back in time: the recurrent state cannot be rewound."""
        first = int(seq.event_time_us[0])
        if first > state.last_time_us:
            return
        tied, column, seqs = first == state.last_time_us, self.schema.seq, events.seq
        if tied and column and seqs is not None and state.last_seq is not None:
            if int(seqs.min()) > state.last_seq:
                return
            at_last = events.time_us == state.last_time_us
            raise StreamOrderError(
                f"event with {column}={int(seqs.min())} at the entity's last streamed "
                f"time does not follow the last streamed {column}={state.last_seq}",
                int(seqs.argmin()),
                column,
                int(np.count_nonzero(events.time_us < state.last_time_us))
                + int(np.count_nonzero(at_last & (seqs <= state.last_seq))),
            )
        if tied:
            return
        last = pd.Timestamp(state.last_time_us, unit="us", tz="UTC").isoformat()
        raise StreamOrderError(
            f"event at {pd.Timestamp(first, unit='us', tz='UTC').isoformat()} precedes the "
            f"entity's last streamed event at {last}; send events in time order, or reset",
            int(events.time_us.argmin()),
            self.schema.time,
            int(np.count_nonzero(events.time_us < state.last_time_us)),
        )

    def _continue_delta(self, seq: EncodedSequence, state: EntityState | None) -> np.ndarray:
        """The numeric features, with the first event's time delta taken from the state."""
        num = seq.num
        if state is None or self._delta_column is None:
            return num
        gap = np.array([int(seq.event_time_us[0]) - state.last_time_us], dtype=np.float64)
        np.clip(gap, 0.0, None, out=gap)  # the same operations as features.time_deltas
        np.log1p(gap / 1e6, out=gap)
        num = num.copy()
        num[0, self._delta_column] = self.scorer.spec.standardise(TIME_DELTA, gap)[0]
        return num

    def _last_seq(self, events: EventColumns) -> int | None:
        """The sequence number of the last event in (time, seq) order."""
        seqs = events.seq
        if seqs is None:
            return None
        if events.num_rows == 1:  # the common streaming call: nothing to sort
            return int(seqs[0])
        return int(seqs[np.lexsort((seqs, events.time_us))[-1]])

    def _step_recurrent(
        self, seq: EncodedSequence, state: EntityState | None
    ) -> tuple[EntityState, np.ndarray]:
        num = self._continue_delta(seq, state)
        carried = state.recurrent if state is not None else None
        assert self.stepper is not None
        if len(seq.cat_ids) <= CELL_STEPS:  # the common call: a few events, numpy cells
            steps, final = self.stepper.steps(seq.cat_ids, num, carried)
        else:  # a long first call or a rebuild: the model itself, a batch of one
            with torch.inference_mode():
                cat_t = torch.from_numpy(np.ascontiguousarray(seq.cat_ids, dtype=np.int64))
                num_t = torch.from_numpy(np.ascontiguousarray(num, dtype=np.float32))
                encoded = self.model.encode(
                    cat_t[None],
                    num_t[None],
                    torch.tensor([len(cat_t)]),
                    to_torch_state(carried),
                    return_state=True,
                )
            steps, final = encoded.steps[0].float().numpy(), to_numpy_state(encoded.state)
        seen = len(steps) + (state.events_seen if state is not None else 0)
        step_sum = None
        last = steps[-1:]  # (1, H): pooling "last", and the per-step tasks' last step
        if self.config.task == "classify" and self.pooling == "mean":
            step_sum = steps.sum(axis=0, dtype=np.float64)
            if state is not None and state.step_sum is not None:
                step_sum = step_sum + state.step_sum
            last = (step_sum / seen).astype(np.float32)[None]
        output = self.stepper.head(last)
        if self.config.task == "classify":
            output = output[0]
        new_state = EntityState(
            model_version=self.version,
            events_seen=seen,
            last_time_us=int(seq.event_time_us[-1]),
            last_seq=None,
            recurrent=final,
            step_sum=step_sum,
        )
        return new_state, output

    def _step_window(
        self, seq: EncodedSequence, state: EntityState | None
    ) -> tuple[EntityState, np.ndarray]:
        num = self._continue_delta(seq, state)
        cat, times = seq.cat_ids, seq.event_time_us
        if state is not None and state.window_cat is not None:
            cat = np.concatenate([state.window_cat, cat])
            num = np.concatenate([state.window_num, num])
            times = np.concatenate([state.window_time_us, times])
        keep = self.keep
        cat, num, times = cat[-keep:], num[-keep:], times[-keep:]
        window = EncodedSequence(seq.entity, times, cat, num)
        output = self.scorer.forward_sequences([window])[0]
        new_state = EntityState(
            model_version=self.version,
            events_seen=len(seq.cat_ids) + (state.events_seen if state is not None else 0),
            last_time_us=int(times[-1]),
            last_seq=None,
            window_cat=cat.copy(),
            window_num=num.copy(),
            window_time_us=times.copy(),
        )
        return new_state, output
