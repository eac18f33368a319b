"""The model holder: one registered model, followed by alias, scored in dynamic batches.

:class:`ModelServer` resolves ``models:/<name>@<alias>`` (or a version) in the MLflow registry
(``serving.registry``), loads that exact version and follows the alias (:func:`follow_alias`:
a background poll loads a moved version, then swaps it in with one assignment, so no request
fails during a promotion or rollback). Every result carries the name, version, run and data
hash of the model that produced it, so a traffic split or an alias switch never mislabels a
score. Requests are grouped by ``@serve.batch`` (Ray docs, "Dynamic Request Batching": its
size and timeout updated through ``set_max_batch_size``/``set_batch_wait_timeout_s``);
:class:`seqcore.scorer.SequenceScorer` then pads each length group to its own longest
sequence under a token budget (docs/architecture.md §7).

It is not a deployment: the ingress (``serving.app.ScoringAPI``) holds the champion's in its
own replicas, so a request costs no second hop, and ``serving.rollout.ChallengerHolder`` holds
the challenger's. :class:`HoldsModel` is what such a deployment answers to handle callers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import serve
from ray.serve.metrics import Histogram

from seqcore.config import to_jsonable
from seqcore.encoding import EncodedSequence, EventColumns, concat_columns
from seqcore.profile import scores_of
from seqcore.scorer import SequenceScorer
from serving.config import ModelRef, ServingConfig, apply_user_config
from serving.http_edge import LATENCY_BOUNDS, jsonable
from serving.live import LiveMonitor, Scored
from serving.registry import LoadedModel, load_model, load_version, resolve_version

log = logging.getLogger("ray.serve")


def short_gil_switch() -> None:
    """Hand the GIL between threads every 0.5 ms instead of CPython's default 5 ms: a replica
    runs Serve's event loops and the scoring thread side by side, and a thread that is ready
    may otherwise wait a whole interval for one that is busy (measured in
    benchmarks/README.md, "Serving"). Replicas are processes of their own."""
    sys.setswitchinterval(0.0005)


def follow_alias(
    name: str,
    poll_s: float,
    ref: Callable[[], ModelRef],
    current: Callable[[], str],
    swap: Callable[[LoadedModel], None],
    max_tokens: Callable[[], int],
) -> threading.Event | None:
    """Poll the registry every ``poll_s`` s; when the alias has moved, load the version it
    names now and hand it to ``swap``. The old version keeps answering until the new one is
    loaded, so a promotion or rollback costs no failed request. Returns a stop event."""
    if poll_s <= 0 or ref().alias is None:
        return None
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            target = ref()
            if target.alias is None:  # pinned to a version since: nothing to follow
                continue
            try:
                found = resolve_version(target)
                if str(found.version) != current():
                    old = current()
                    swap(load_version(target, found, max_tokens()))
                    log.info("%s: %s moved, version %s -> %s", name, target.uri, old, found.version)
            except Exception:  # the registry may be briefly unreachable: keep serving
                log.warning("%s: cannot follow %s; still serving version %s",
                            name, target.uri, current(), exc_info=True)  # fmt: skip

    threading.Thread(target=loop, name=f"seqops-follow-{name}", daemon=True).start()
    return stop


class ModelServer:
    """One registered model, scored in dynamic batches; knows and reports what it serves."""

    def __init__(self, config: ServingConfig, name: str) -> None:
        self.name = name
        self.ref = config.model
        self.batching = config.batching
        self.model = load_model(self.ref, self.batching.max_tokens)
        self.model.scorer.time_calls()
        self._apply_batching()
        self._stop = follow_alias(
            name,
            config.rollout.alias_poll_s,
            ref=lambda: self.ref,
            current=lambda: self.model.version,
            swap=self._swap,
            max_tokens=lambda: self.batching.max_tokens,
        )
        self.counts = {
            "batches": 0, "requests": 0, "sequences": 0, "largest_batch": 0, "immediate": 0
        }  # fmt: skip
        self._inflight = 0  # requests in score(), on this replica's event loop
        self.batch_requests = Histogram(
            "seqops_batch_requests", "Requests per model batch", [1, 2, 4, 8, 16, 32, 64, 128]
        )
        self.batch_sequences = Histogram(
            "seqops_batch_sequences", "Sequences per model batch", [1, 4, 16, 64, 256, 1024, 4096]
        )
        self.batch_latency = Histogram(
            "seqops_batch_latency_s", "Model time per batch (s)", LATENCY_BOUNDS
        )
        watch = config.monitoring
        self.live = (
            LiveMonitor(
                self.model.scorer,
                watch.monitor_window_requests,
                watch.monitor_update_s,
                watch.traffic_log,
            )  # fmt: skip
            if watch.monitor
            else None
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: max_batch_size, batch_wait_timeout_s, max_tokens."""
        self.batching = apply_user_config(self.batching, user_config)
        self._apply_batching()

    def _apply_batching(self) -> None:
        batched = self._score_batch  # setters that @serve.batch attaches (Ray docs)
        batched.set_max_batch_size(self.batching.max_batch_size)  # type: ignore[attr-defined]
        batched.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.model.scorer.max_tokens = self.batching.max_tokens

    def reload(self, alias: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Load the model an alias (or version) names now, then swap it in atomically."""
        ref = self.ref
        if alias is not None or version is not None:
            ref = dataclasses.replace(ref, alias=alias or ref.alias, version=version)
        loaded = load_model(ref, self.batching.max_tokens)
        self.ref = ref
        self._swap(loaded)
        return self.info()

    def _swap(self, loaded: LoadedModel) -> None:
        loaded.scorer.max_tokens = self.batching.max_tokens
        loaded.scorer.time_calls()  # before it answers; the old version serves meanwhile
        self.model = loaded  # one assignment: batches already running keep the old model
        if self.live is not None:
            self.live.rebind(loaded.scorer)

    def stop(self) -> None:
        """Stop following the alias."""
        if self._stop is not None:
            self._stop.set()
        if self.live is not None:
            self.live.stop()

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            **m.describe(),
            "task": m.scorer.config.task,
            "schema": to_jsonable(m.scorer.manifest.schema),
            # what ``predicted`` and the keys of ``probabilities`` can be
            **(
                {"classes": list(m.scorer.class_names)}
                if m.scorer.config.task == "classify"
                else {}
            ),
            "batching": dataclasses.asdict(self.batching),
        }

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def drift(self) -> dict[str, float]:
        """This replica's drift gauges, after every request handed over so far is profiled."""
        return {} if self.live is None else self.live.flush()

    def check_health(self) -> None:
        if self.model.scorer is None:
            raise RuntimeError(f"{self.name}: no model loaded")

    async def score(self, request: EventColumns) -> dict[str, Any]:
        """One request's sequences -> its scores, batched with concurrent requests.

        A request that finds the model idle (no other request queued or being scored here)
        is scored at once: waiting ``batch_wait_timeout_s`` for company that is not there,
        and the batch queue's hand-offs, would only add to its latency, while at saturation
        requests always find others in flight and batch."""
        idle = self._inflight == 0
        self._inflight += 1
        try:
            if idle:
                self.counts["immediate"] += 1
                return (await self._score_now([request]))[0]
            return await self._score_batch(request)
        finally:
            self._inflight -= 1

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
    async def _score_batch(self, requests: list[EventColumns]) -> list[dict[str, Any]]:
        return await self._score_now(requests)

    async def _score_now(self, requests: list[EventColumns]) -> list[dict[str, Any]]:
        """Score the requests together: their columns encoded at once, length groups under
        max_tokens."""
        model = self.model  # one model for the whole batch, even if reload swaps it meanwhile
        started = time.perf_counter()
        columns = concat_columns(requests)
        # Off the event loop, so requests keep queueing for the next batch meanwhile.
        watched = self.live is not None
        scored, sequences, scores = await asyncio.to_thread(_score, model.scorer, columns, watched)
        rows = []  # the encoder returns one row per sequence, in the columns' order
        for name, row in zip(columns.names, scored, strict=True):
            if row["entity"] != name:
                raise RuntimeError(f"scores out of order: {row['entity']!r} for {name!r}")
            rows.append({k: jsonable(v) for k, v in row.items()})
        self.batch_latency.observe(time.perf_counter() - started)
        self.batch_requests.observe(len(requests))
        self.batch_sequences.observe(len(rows))
        c = self.counts
        c["batches"] += 1
        c["requests"] += len(requests)
        c["sequences"] += len(rows)
        c["largest_batch"] = max(c["largest_batch"], len(requests))
        header = {**model.describe(), "task": model.scorer.config.task}
        results, start = [], 0
        for request in requests:
            end = start + len(request.names)
            results.append({"model": header, "scores": rows[start:end]})
            start = end
        if self.live is not None and scores is not None:  # profiled on its own thread, later
            self.live.observe(Scored(columns, sequences, scores, model.scorer, len(requests)))
        return results


def _score(
    scorer: SequenceScorer, columns: EventColumns, watched: bool
) -> tuple[list[dict[str, Any]], list[EncodedSequence], np.ndarray | None]:
    """Rows of the columns' sequences, with the encoded sequences behind them and, for the
    live profile (``watched``), their scores (``seqcore.profile.scores_of``)."""
    sequences = scorer.encode(columns)
    rows, outputs = scorer.score_encoded(sequences)
    return rows, sequences, scores_of(scorer.config.task, outputs) if watched else None


class HoldsModel:
    """What a deployment that holds a :class:`ModelServer` in ``self.server`` answers to
    handle callers (``serve.get_deployment_handle(name, app).stats.remote()``) and to
    Serve's health checks."""

    server: ModelServer

    def info(self) -> dict[str, Any]:
        """What the held model is: registry facts, task, schema, batching."""
        return self.server.info()

    def stats(self) -> dict[str, int]:
        """The held model's batching counts in this replica."""
        return self.server.stats()

    def drift(self) -> dict[str, float]:
        """The held model's live drift gauges in this replica (``serving.live``)."""
        return self.server.drift()

    def reload(self, alias: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Load the version the alias (or the given alias/version) names now."""
        return self.server.reload(alias, version)

    def check_health(self) -> None:
        self.server.check_health()

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()
