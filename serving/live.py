"""Live statistics of scored traffic, against the model's training profile (docs/architecture.md
§10).

Each ``/v1/score`` request's sequences are encoded and scored anyway; :class:`LiveMonitor`
takes those encoded sequences and the model's outputs (no second pass over the raw events)
and, on a thread of its own after the response is on its way, profiles them with the same
bins as the training profile (``seqcore.profile``). It exports, through Ray Serve's metrics
(Prometheus ``ray_seqops_*``, with Serve's deployment, replica and application tags):

- histograms ``seqops_sequence_length`` (events per sequence), ``seqops_event_gap_s`` (seconds
  between consecutive events; at most ``GAP_SAMPLE`` gaps per request, evenly spread, as each
  observation is a call) and ``seqops_score`` (the model's score per sequence: a probability,
  or a forecast in standard deviations of the training target);
- counters ``seqops_profiled_events`` (by column: events with a value), ``seqops_oov_events``
  (by column: values the training vocabulary does not hold), ``seqops_out_of_order_events``
  (events sent behind an earlier one of their sequence by time and sequence number) and
  ``seqops_monitor_dropped_requests`` (requests left unprofiled because the profiler fell
  behind; it never slows an answer down);
- gauges ``seqops_drift_distance`` (by statistic: the Jensen-Shannon distance between the
  training profile and the latest ``monitor_window_requests`` requests of this replica,
  recomputed every ``monitor_update_s``) and ``seqops_drift_window_sequences`` (sequences
  behind them).

The gauges are the signal to alert on; ``seqops monitor`` on a batch of traffic is the test
with its design effect and threshold. Each replica profiles its own traffic: take the mean
or the maximum over replicas. A model without a training profile (trained before seqops kept
one) is served without them.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.serve.metrics import Counter, Gauge, Histogram

from data_checks.drift import js_distance
from seqcore.encoding import EncodedSequence, EventColumns
from seqcore.features import OOV_ID
from seqcore.profile import (
    GAP_EDGES_S,
    LENGTH_EDGES,
    PROBABILITY_EDGES,
    Z_EDGES,
    Profile,
    arrival_order,
    profile_sequences,
    score_hist,
    scores_of,
    transition_column,
)
from seqcore.scorer import SequenceScorer

log = logging.getLogger("ray.serve")

GAP_SAMPLE = 4096
"""Gaps a request adds to the gap histogram at most (the drift window counts them all)."""
QUEUE_SIZE = 256
"""Requests waiting to be profiled at most; more are dropped and counted, never waited for."""


class LiveMonitor:
    """Profiles scored requests on its own thread and exports what it sees (module doc)."""

    def __init__(self, scorer: SequenceScorer, window_requests: int, update_s: float) -> None:
        self.window_requests = window_requests
        self.update_s = update_s
        self._bind(scorer)
        task = scorer.config.task
        self.length = Histogram(
            "seqops_sequence_length", "Events per scored sequence", list(LENGTH_EDGES)
        )
        self.gap = Histogram(
            "seqops_event_gap_s", "Seconds between consecutive events of a scored sequence",
            list(GAP_EDGES_S),
        )  # fmt: skip
        self.score = Histogram(
            "seqops_score", "The model's score per sequence (forecast: standardised)",
            list(Z_EDGES if task == "forecast" else PROBABILITY_EDGES),
        )  # fmt: skip
        self.events = Counter(
            "seqops_profiled_events", "Scored events with a value, by column", ("column",)
        )
        self.oov = Counter(
            "seqops_oov_events", "Scored events whose category training never saw", ("column",)
        )
        self.out_of_order = Counter(
            "seqops_out_of_order_events", "Events sent behind an earlier event of their sequence"
        )
        self.dropped = Counter(
            "seqops_monitor_dropped_requests", "Requests the live profiler had no time for"
        )
        self.distance = Gauge(
            "seqops_drift_distance",
            "Jensen-Shannon distance of the latest requests from the training profile",
            ("statistic",),
        )
        self.window_sequences = Gauge(
            "seqops_drift_window_sequences", "Sequences behind the drift gauges"
        )
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="seqops-live", daemon=True)
        self._thread.start()

    def _bind(self, scorer: SequenceScorer) -> None:
        """Follow ``scorer``'s model: its reference, a fresh window."""
        self.scorer = scorer
        self.reference = scorer.manifest.reference
        if self.reference is None:
            log.warning("the model carries no training profile (trained before seqops kept "
                        "one): no drift gauges")  # fmt: skip
        self.transition_column = transition_column(scorer.schema)
        self.window: collections.deque[dict[str, np.ndarray]] = collections.deque()
        self.totals: dict[str, np.ndarray] = {}
        self.sequences = 0
        self.last_update = 0.0
        self.latest: dict[str, float] = {}

    def rebind(self, scorer: SequenceScorer) -> None:
        """A new model version: its own reference; the window starts again."""
        self._queue.put(("rebind", scorer))

    def observe(
        self,
        columns: EventColumns,
        sequences: Sequence[EncodedSequence],
        outputs: Sequence[np.ndarray],
        scorer: SequenceScorer,
    ) -> None:
        """Hand one scored request over (response path: a queue put, nothing else)."""
        try:
            self._queue.put_nowait(("request", (columns, sequences, outputs, scorer)))
        except queue.Full:
            self.dropped.inc()

    def stop(self) -> None:
        self._queue.put(("stop", None))

    def flush(self, timeout_s: float = 10.0) -> dict[str, float]:
        """Wait until everything handed over is profiled, recompute the gauges and return
        them (for tests and the stats call)."""
        done = threading.Event()
        self._queue.put(("flush", done))
        done.wait(timeout_s)
        return dict(self.latest)

    def _run(self) -> None:
        while True:
            kind, item = self._queue.get()
            try:
                if kind == "stop":
                    return
                if kind == "rebind":
                    self._bind(item)
                elif kind == "flush":
                    self._update()
                    item.set()
                else:
                    self._record(*item)
                    if time.monotonic() - self.last_update >= self.update_s:
                        self._update()
            except Exception:  # statistics must never take scoring down
                log.warning("live profiling failed; scoring goes on", exc_info=True)

    def _record(
        self,
        columns: EventColumns,
        sequences: Sequence[EncodedSequence],
        outputs: Sequence[np.ndarray],
        scorer: SequenceScorer,
    ) -> None:
        if scorer is not self.scorer or not sequences:  # scored by the version before a swap
            return
        spec, task = scorer.spec, scorer.config.task
        profile = profile_sequences(sequences, spec, self.transition_column)
        profile.order = arrival_order(columns.group, columns.time_us, columns.seq)
        scores = scores_of(task, outputs)
        profile.score = score_hist(task, scores)
        self._export(sequences, scores, profile)
        if self.reference is not None:
            self._add(profile)

    def _export(
        self, sequences: Sequence[EncodedSequence], scores: np.ndarray, profile: Profile
    ) -> None:
        gaps = []
        for seq in sequences:
            self.length.observe(len(seq.event_time_us))
            if len(seq.event_time_us) > 1:
                gaps.append(np.diff(seq.event_time_us))
        if gaps:
            seconds = np.concatenate(gaps) / 1e6
            if len(seconds) > GAP_SAMPLE:
                seconds = seconds[np.linspace(0, len(seconds) - 1, GAP_SAMPLE).astype(np.int64)]
            for value in seconds.tolist():
                self.gap.observe(value)
        for value in np.nan_to_num(scores).tolist():
            self.score.observe(value)
        for i, column in enumerate(self.scorer.spec.categorical):
            ids = np.concatenate([seq.cat_ids[:, i] for seq in sequences])
            self.events.inc(int(np.count_nonzero(ids)), tags={"column": column})
            oov = int(np.count_nonzero(ids == OOV_ID))
            if oov:
                self.oov.inc(oov, tags={"column": column})
        if profile.order is not None and profile.order.counts[1]:
            self.out_of_order.inc(int(profile.order.counts[1]))

    def _add(self, profile: Profile) -> None:
        counts = {name: hist.counts for name, hist in profile.histograms().items()}
        self.window.append(counts)
        self.sequences += profile.sequences
        for name, values in counts.items():
            total = self.totals.get(name)
            self.totals[name] = values.copy() if total is None else total + values
        while len(self.window) > self.window_requests:
            old = self.window.popleft()
            self.sequences -= int(old["length"].sum())
            for name, values in old.items():
                self.totals[name] -= values

    def _update(self) -> None:
        self.last_update = time.monotonic()
        if self.reference is None:
            return
        for name, hist in self.reference.histograms().items():
            if name in self.totals:
                self.latest[name] = js_distance(hist.counts, self.totals[name])
                self.distance.set(self.latest[name], tags={"statistic": name})
        self.window_sequences.set(self.sequences)
