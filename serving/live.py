"""Live statistics of scored traffic, against the model's training profile (docs/architecture.md
§10).

Each ``/v1/score`` request's sequences are encoded and scored anyway; :class:`LiveMonitor`
takes those encoded sequences and the model's outputs (no second pass over the raw events)
and, on a thread of its own, profiles what queued up every ``monitor_update_s`` in one pass
with the same bins as the training profile (``seqcore.profile``). It exports, through Ray Serve's metrics
(Prometheus ``ray_seqops_*``, with Serve's deployment, replica and application tags):

- histograms, one observation per scored sequence: ``seqops_sequence_length`` (its events),
  ``seqops_event_gap_s`` (seconds between its last two events: the gap before the scored
  moment; every gap would be a call per event, and the drift gauge counts them all) and
  ``seqops_score`` (the model's score: a probability; a forecast's standardised value
  through the normal CDF, as Prometheus buckets must be positive);
- counters ``seqops_profiled_events`` (by categorical column: scored events),
  ``seqops_oov_events`` (by column: values the training vocabulary does not hold, nulls
  included, as the model reads both as out-of-vocabulary), ``seqops_out_of_order_events``
  (events sent behind an earlier one of their sequence by time and sequence number) and
  ``seqops_monitor_dropped_requests`` (requests left unprofiled because the profiler fell
  behind; it never slows an answer down);
- gauges ``seqops_drift_distance`` (by statistic: the Jensen-Shannon distance between the
  training profile and the latest ``monitor_window_requests`` requests of this replica, in
  whole passes, recomputed after each pass) and ``seqops_drift_window_sequences`` (sequences
  behind them).

The gauges are the signal to alert on; ``seqops monitor`` on a batch of traffic is the test
with its design effect and threshold. Each replica profiles its own traffic: take the mean
or the maximum over replicas. A model without a training profile (trained before seqops kept
one) is served without them.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from ray.serve.metrics import Counter, Gauge, Histogram
from scipy.special import ndtr

from data_checks.drift import js_distance
from seqcore.encoding import EncodedSequence, EventColumns
from seqcore.profile import (
    GAP_EDGES_S,
    LENGTH_EDGES,
    PROBABILITY_EDGES,
    Hist,
    Profile,
    arrival_order,
    profile_sequences,
    score_codes,
    transition_column,
)
from seqcore.schema import SchemaConfig
from seqcore.scorer import SequenceScorer

log = logging.getLogger("ray.serve")

QUEUE_SIZE = 4096
"""Scored batches waiting for the next pass at most; more are dropped and counted, never
waited for (about 4,000 requests a second per replica at the default pass interval)."""


class Scored(NamedTuple):
    """One scored batch, as the scoring thread hands it over."""

    columns: EventColumns
    """The batch's events as the requests sent them (their arrival order)."""
    sequences: Sequence[EncodedSequence]
    scores: np.ndarray
    """``seqcore.profile.scores_of`` the model's outputs: the outputs themselves would keep
    whole batches of next_event probabilities alive in the queue."""
    scorer: SequenceScorer
    requests: int


class LiveMonitor:
    """Profiles scored requests on its own thread and exports what it sees (module doc)."""

    def __init__(
        self,
        scorer: SequenceScorer,
        window_requests: int,
        update_s: float,
        traffic_log: str | None = None,
    ) -> None:
        self.window_requests = window_requests
        self.update_s = update_s
        self.log = None if traffic_log is None else TrafficLog(traffic_log)
        self._bind(scorer)
        self.length = Histogram(
            "seqops_sequence_length", "Events per scored sequence", list(LENGTH_EDGES)
        )
        self.gap = Histogram(
            "seqops_event_gap_s", "Seconds between consecutive events of a scored sequence",
            list(GAP_EDGES_S),
        )  # fmt: skip
        self.score = Histogram(
            "seqops_score",
            "The model's score per sequence (forecast: the normal CDF of the standardised value)",
            list(PROBABILITY_EDGES),
        )
        self.task = scorer.config.task
        self.events = Counter(
            "seqops_profiled_events", "Scored events, by categorical column", ("column",)
        )
        self.oov = Counter(
            "seqops_oov_events",
            "Scored events whose category training never saw (or null)",
            ("column",),
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
        self._queue: queue.Queue[Scored] = queue.Queue(QUEUE_SIZE)
        self._controls: queue.Queue[tuple[str, Any]] = queue.Queue()  # unbounded: never waits
        self._wake = threading.Event()
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
        self.window: collections.deque[tuple[int, dict[str, np.ndarray]]] = collections.deque()
        self.requests = 0
        self.totals: dict[str, np.ndarray] = {}
        self.sequences = 0
        self.latest: dict[str, float] = {}
        self.changed = False
        """The window changed since the distances were computed."""

    def rebind(self, scorer: SequenceScorer) -> None:
        """A new model version: its own reference; the window starts again."""
        self._control("rebind", scorer)

    def observe(self, scored: Scored) -> None:
        """Hand one scored batch over (response path: a queue put, nothing else)."""
        try:
            self._queue.put_nowait(scored)
        except queue.Full:
            self.dropped.inc(scored.requests)

    def stop(self) -> None:
        self._control("stop", None)

    def flush(self, timeout_s: float = 10.0) -> dict[str, float]:
        """Profile everything handed over so far now, and return the gauges (for tests and
        the drift call)."""
        done = threading.Event()
        self._control("flush", done)
        done.wait(timeout_s)
        return dict(self.latest)

    def _control(self, kind: str, item: Any) -> None:
        self._controls.put((kind, item))
        self._wake.set()

    def _run(self) -> None:
        """Sleep, then profile what queued up in one pass: a pass over many requests costs
        little more than one over a single request (numpy's fixed cost per call dominates
        small requests), and a request finds the thread asleep unless it arrives during a
        pass, so the median answer pays nothing."""
        while True:
            self._wake.wait(self.update_s)
            self._wake.clear()
            pending = []
            while True:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            while True:
                try:
                    kind, item = self._controls.get_nowait()
                except queue.Empty:
                    break
                pending = self._pass(pending)  # what the current model scored belongs to it
                if kind == "stop":
                    return
                if kind == "rebind":
                    self._bind(item)
                elif kind == "flush":
                    item.set()
            self._pass(pending)

    def _pass(self, pending: list[Scored]) -> list[Scored]:
        """Profile what the current model scored; returns the rest (scored by a version
        being swapped in, whose rebind may still be queued)."""
        mine = [p for p in pending if p.scorer is self.scorer]
        try:
            if any(p.sequences for p in mine):
                self._record([p for p in mine if p.sequences])
            self._update()
        except Exception:  # statistics must never take scoring down
            log.warning("live profiling failed; scoring goes on", exc_info=True)
        if self.log is not None and mine:
            try:
                self.log.write([p.columns for p in mine], self.scorer.schema)
            except Exception:
                log.warning("cannot write the traffic log; scoring goes on", exc_info=True)
        return [p for p in pending if p.scorer is not self.scorer]

    def _record(self, pending: list[Scored]) -> None:
        """Profile scored batches together."""
        scorer = self.scorer
        task = scorer.config.task
        sequences = [seq for p in pending for seq in p.sequences]
        # counts alone: the window's distances need no spread between sequences
        profile = profile_sequences(sequences, scorer.spec, self.transition_column, spread=False)
        groups, start = [], 0
        for p in pending:
            groups.append(p.columns.group + start)
            start += len(p.columns.names)
        seqs = [p.columns.seq for p in pending]
        profile.order = arrival_order(
            np.concatenate(groups),
            np.concatenate([p.columns.time_us for p in pending]),
            None
            if any(s is None for s in seqs)
            else np.concatenate([s for s in seqs if s is not None]),
        )
        scores = np.concatenate([p.scores for p in pending])
        profile.score = Hist.counts_of(*score_codes(task, scores))
        self._export(sequences, scores, profile)
        if self.reference is not None:
            self._add(profile, sum(p.requests for p in pending))

    def _export(
        self, sequences: Sequence[EncodedSequence], scores: np.ndarray, profile: Profile
    ) -> None:
        for seq in sequences:
            t = seq.event_time_us
            self.length.observe(len(t))
            if len(t) > 1:
                self.gap.observe(max(int(t[-1] - t[-2]), 0) / 1e6)
        # Prometheus buckets must be positive: a forecast's z goes through the normal CDF,
        # which keeps its order and spreads a standard normal evenly over (0, 1)
        shown = ndtr(scores) if self.task == "forecast" else scores
        for value in shown[np.isfinite(shown)].tolist():
            self.score.observe(value)
        for column, hist in profile.categorical.items():  # bin 0: out of vocabulary
            if hist.total:
                self.events.inc(hist.total, tags={"column": column})
            if hist.counts[0]:
                self.oov.inc(int(hist.counts[0]), tags={"column": column})
        if profile.order is not None and profile.order.counts[1]:
            self.out_of_order.inc(int(profile.order.counts[1]))

    def _add(self, profile: Profile, requests: int) -> None:
        """Into the window; the oldest passes out while the rest hold the latest
        ``window_requests`` requests."""
        counts = {name: hist.counts for name, hist in profile.histograms().items()}
        self.window.append((requests, counts))
        self.changed = True
        self.requests += requests
        self.sequences += profile.sequences
        for name, values in counts.items():
            total = self.totals.get(name)
            self.totals[name] = values.copy() if total is None else total + values
        while self.requests - self.window[0][0] >= self.window_requests:
            gone, old = self.window.popleft()
            self.requests -= gone
            self.sequences -= int(old["length"].sum())
            for name, values in old.items():
                self.totals[name] -= values

    def _update(self) -> None:
        """Recompute the distances when the window changed, and set every gauge each pass:
        a gauge nobody sets drops out of Ray's export, and a quiet replica still has a
        window to report."""
        if self.reference is None:
            return
        if self.changed:
            for name, hist in self.reference.histograms().items():
                if name in self.totals:
                    self.latest[name] = js_distance(hist.counts, self.totals[name])
            self.changed = False
        for name, value in self.latest.items():
            self.distance.set(value, tags={"statistic": name})
        if self.latest:
            self.window_sequences.set(self.sequences)


class TrafficLog:
    """The events a replica scored, appended to a folder as Parquet files (one per pass,
    named by the time it was written and this process, so a folder's files sort in the order
    each replica wrote them): a table ``seqops monitor --events`` reads as a user's file."""

    def __init__(self, where: str) -> None:
        import pyarrow.fs as pafs

        self.fs, self.folder = pafs.FileSystem.from_uri(
            where if "://" in where else str(Path(where).resolve())
        )
        self.fs.create_dir(self.folder, recursive=True)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.written = 0

    def write(self, batches: Sequence[EventColumns], schema: SchemaConfig) -> str:
        import pyarrow.parquet as pq

        table = events_table(batches, schema)
        self.written += 1
        name = f"traffic-{time.time_ns() // 1000:017d}-{os.getpid()}-{self.written:06d}.parquet"
        path = f"{self.folder}/{name}"
        if self.local:  # whole files only: readers list the folder at any moment
            pq.write_table(table, f"{self.folder}/.{name}.tmp")
            os.replace(f"{self.folder}/.{name}.tmp", path)
        else:  # an object appears whole when its upload ends
            with self.fs.open_output_stream(path) as out:
                pq.write_table(table, out)
        return path


def events_table(batches: Sequence[EventColumns], schema: SchemaConfig) -> pa.Table:
    """Scored batches' events as a table of the schema's columns, rows as the requests sent
    them (times in UTC)."""
    names = [np.asarray(b.names, dtype=object)[b.group] for b in batches]
    columns: dict[str, pa.Array] = {
        schema.entity: pa.array(np.concatenate(names).tolist(), pa.string()),
        schema.time: pa.array(np.concatenate([b.time_us for b in batches]), pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ),
    }
    if schema.seq and all(b.seq is not None for b in batches):
        columns[schema.seq] = pa.array(
            np.concatenate([b.seq for b in batches if b.seq is not None])
        )
    for col in schema.numeric:
        columns[col] = pa.array(np.concatenate([b.numeric[col] for b in batches]), from_pandas=True)
    for col in schema.categorical:
        columns[col] = pa.array([v for b in batches for v in b.categorical[col]], pa.string())
    return pa.table(columns)
