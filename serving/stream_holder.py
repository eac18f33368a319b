"""The streaming deployment: per-entity state behind ``POST /v1/stream/{entity_id}``.

:class:`StreamHolder` holds one :class:`serving.streaming.StreamingScorer` and its bounded
state store per replica. It is deployed with :class:`serving.routing.EntityAffinityRouter`, so
every call for an entity reaches the same replica while the replica set is unchanged; a
replica that gets an entity it holds no state for says so in the reply. It follows its alias
like :class:`serving.holder.ModelServer`; a new version drops the old version's states
(answered as ``reset: model_changed``). Its tunables come through ``user_config`` and
``reconfigure`` (STYLE habit 6).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.metrics import Counter, Gauge

from serving.config import ServingConfig, apply_user_config
from serving.holder import follow_alias, short_gil_switch
from serving.http_edge import jsonable
from serving.redis_state import StateStoreUnavailable
from serving.registry import LoadedModel, load_model
from serving.schemas import StreamRequest
from serving.stream_state import StateStore
from serving.streaming import StateConflict, StreamingScorer, StreamOrderError


@dataclass(frozen=True)
class StreamMetrics:
    """The stream metrics, wherever stream calls are answered."""

    calls: Counter
    late: Counter


def stream_metrics() -> StreamMetrics:
    return StreamMetrics(
        Counter("seqops_stream_calls", "Streaming calls by state status", ("status",)),
        Counter("seqops_late_events", "Streamed events refused for preceding the entity's last"),
    )


def answer_stream(
    streamer: StreamingScorer,
    model: LoadedModel,
    entity_id: str,
    request: StreamRequest,
    replica: str,
    metrics: StreamMetrics,
) -> dict[str, Any]:
    """One stream call's reply (the model that scored and the score with its state), or an
    error as ``{"status", "error", "field"}`` for the ingress to send: 422 for events out of
    order, 409 when concurrent calls for the entity kept winning, 503 when the shared store
    does not answer. Both designs answer through here: ``StreamHolder`` (memory) and
    ``ScoringAPI`` itself (Redis)."""
    try:
        result = streamer.update(
            entity_id,
            request.events,
            history=request.history,
            expect_events_seen=request.expect_events_seen,
            reset=request.reset,
        )
    except StreamOrderError as exc:
        metrics.late.inc(exc.late)
        return {"status": 422, "error": str(exc), "field": f"events[{exc.index}].{exc.column}"}
    except StateConflict as exc:
        return {"status": 409, "error": str(exc), "field": "path.entity_id"}
    except StateStoreUnavailable as exc:
        return {"status": 503, "error": f"{exc}; retry later", "field": None}
    result["state"]["replica"] = replica
    metrics.calls.inc(tags={"status": result["state"]["status"]})
    header = {**model.describe(), "task": model.scorer.config.task}
    return {"model": header, "score": {k: jsonable(v) for k, v in result.items()}}


@serve.deployment
class StreamHolder:
    """Streaming scoring with per-entity state, one store per replica."""

    def __init__(self, config: ServingConfig) -> None:
        short_gil_switch()
        self.ref = config.model
        self.settings = config.streaming
        self.max_tokens = config.batching.max_tokens
        self.model = load_model(self.ref, self.max_tokens)
        self.store = StateStore(self.settings.max_entities, self.settings.state_ttl_s)
        self.streamer = StreamingScorer(self.model.scorer, self.model.version, self.store)
        self._lock = threading.Lock()  # one call at a time changes the store or the model
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (a test)
            self.replica = "local"
        self.calls = stream_metrics()
        self.entities = Gauge("seqops_stream_entities", "Entities with state on this replica")
        self._stop = follow_alias(
            "StreamHolder",
            config.rollout.alias_poll_s,
            ref=lambda: self.ref,
            current=lambda: self.model.version,
            swap=self._swap,
            max_tokens=lambda: self.max_tokens,
        )
        self._sweeper = threading.Thread(target=self._sweep, name="seqops-ttl", daemon=True)
        self._sweeper.start()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: max_entities, state_ttl_s."""
        self.settings = apply_user_config(self.settings, user_config)
        with self._lock:
            self.store.resize(self.settings.max_entities, self.settings.state_ttl_s)

    async def update(self, entity_id: str, request: StreamRequest) -> dict[str, Any]:
        """New events of one entity -> its updated score (the router sends ``entity_id`` to
        its owner replica: keep it the first argument)."""
        return await asyncio.to_thread(self._update, entity_id, request)

    def _update(self, entity_id: str, request: StreamRequest) -> dict[str, Any]:
        with self._lock:
            reply = answer_stream(
                self.streamer, self.model, entity_id, request, self.replica, self.calls
            )
        self.entities.set(len(self.store))
        return reply

    def info(self) -> dict[str, Any]:
        store = self.store
        return {
            **self.model.describe(),
            "replica": self.replica,
            "entities": len(store),
            "max_entities": store.max_entities,
            "state_ttl_s": store.ttl_s,
            "evicted": dict(store.evicted),
            "state": "recurrent" if self.streamer.recurrent else "rolling_window",
        }

    def drop_state(self) -> int:
        """Forget every entity (answered as ``reset: dropped`` afterwards); returns how many."""
        with self._lock:
            n = len(self.store)
            self.store.clear("dropped")
        return n

    def _sweep(self) -> None:
        """Expired states are freed even for entities that never call again."""
        while True:
            time.sleep(min(max(self.settings.state_ttl_s / 4, 0.05), 60.0))
            with self._lock:
                self.store.sweep()
            self.entities.set(len(self.store))

    def _swap(self, loaded: LoadedModel) -> None:
        with self._lock:
            self.model = loaded
            self.streamer.swap_model(loaded.scorer, loaded.version)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
