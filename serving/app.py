"""The online scoring application: a FastAPI ingress that scores the champion itself.

Follows Ray Serve's own examples (STYLE habit 6): "Set Up FastAPI and HTTP" (``@serve.ingress``
with a FastAPI app), "Dynamic Request Batching" (``@serve.batch`` on an async method, its
size and timeout updated through ``set_max_batch_size``/``set_batch_wait_timeout_s``),
"Configure Ray Serve deployments" (tunables in ``user_config``, applied by ``reconfigure``),
"Deploy Compositions of Models" (the ingress calls the challenger and the stream state through
``DeploymentHandle``s), "Pass Arguments to Applications" (``app_builder(args)``) and "Custom
Metrics" (``ray.serve.metrics``). Replicas, CPUs and user_config live in
``serving/serve_config.yaml``.

:class:`ModelServer` owns one registered model: it resolves ``models:/<name>@<alias>`` (or a
version) in the MLflow registry (``serving.registry``), loads that exact version, and follows
the alias (a background poll loads a moved version, then swaps it in with one assignment, so
no request fails during a promotion or rollback); every result carries the name, version, run
and data hash of the model that produced it, so a traffic split or an alias switch never
mislabels a score. Requests are grouped by ``@serve.batch``;
:class:`serving.scorer.SequenceScorer` then pads each length group to its own longest
sequence under a token budget (PERFORMANCE.md).

:class:`ScoringAPI` validates every request (``serving.schemas``) before a model sees it and
scores the champion with its own :class:`ModelServer`, in its own replicas: a second
deployment for the champion cost a handle hop of 6-8 ms per request on our machines (the
session-3 breakdown in benchmarks/README.md), more than the model's own time. Scale the
champion by scaling ``ScoringAPI``. :class:`ChallengerHolder`, a deployment of its own, serves
the challenger alias when one is configured (traffic split and shadow mode), and
:class:`StreamHolder` keeps per-entity streaming state (``serving.streaming``) behind the
entity-affinity request router (``serving.routing``).
"""

# No ``from __future__ import annotations`` here: FastAPI must see real annotation objects on
# the route methods that Serve rewrites into class-based views (``request: Request``).
import asyncio
import dataclasses
import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.exceptions import HTTPException

from seqcore.config import to_jsonable
from serving.config import (
    Batching,
    Limits,
    ModelRef,
    ServingConfig,
    apply_user_config,
    serving_config,
    split_user_config,
)
from serving.registry import LoadedModel, load_model, load_version, resolve_version
from serving.routing import EntityAffinityRouter
from serving.schemas import (
    EventBatch,
    EventSchema,
    RequestError,
    event_columns,
    events_table,
    parse_request,
    parse_stream_request,
    request_model,
    stream_batches,
    stream_request_model,
    to_batch,
)
from serving.streaming import StateStore, StreamingScorer, StreamOrderError

log = logging.getLogger("ray.serve")
MAX_ENTITY_CHARS = 256
LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
ERROR_KINDS = {
    400: "malformed",
    413: "too_large",
    415: "content_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


def _append_line(path: str, line: str) -> None:
    with open(
        path, "a", encoding="utf-8"
    ) as handle:  # one write per line: appends interleave whole
        handle.write(line + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):  # pandas/py datetimes: ISO-8601 in UTC
        return value.isoformat().replace("+00:00", "Z")
    return value


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


def _short_gil_switch() -> None:
    """Hand the GIL between threads every 0.5 ms instead of CPython's 5 ms: a replica runs
    Serve's event loops and the scoring thread side by side, and with the default interval a
    thread that is ready may wait up to 5 ms for one that is busy. Measured side by side (two
    copies of the application on one cluster, direct ingress): at saturation 152 against 135
    requests/s (32 clients, two rounds each); at light load no difference beyond the noise
    (p50 9.4 against 9.1 ms, six alternating rounds). Replicas are processes of their own."""
    sys.setswitchinterval(0.0005)


class ModelServer:
    """One registered model, scored in dynamic batches; knows and reports what it serves.

    Not a deployment itself: the ingress (:class:`ScoringAPI`) serves the champion with one,
    in its own replicas, so a request costs no second hop (6-8 ms a handle call here), and
    :class:`ChallengerHolder` wraps one for the challenger.
    """

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

    def stop(self) -> None:
        """Stop following the alias."""
        if self._stop is not None:
            self._stop.set()

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            **m.describe(),
            "task": m.scorer.config.task,
            "schema": to_jsonable(m.scorer.manifest.schema),
            "batching": dataclasses.asdict(self.batching),
        }

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def check_health(self) -> None:
        if self.model.scorer is None:
            raise RuntimeError(f"{self.name}: no model loaded")

    async def score(self, batch: EventBatch) -> dict[str, Any]:
        """One request's sequences -> its scores, batched with concurrent requests.

        A request that finds the model idle (no other request queued or being scored here)
        is scored at once: waiting ``batch_wait_timeout_s`` for company that is not there,
        and the batch queue's hand-offs, cost 2.2 ms p50 of a one-sequence request
        (9.6 against 11.8 ms, two copies side by side, lower in each of six rounds) and no
        throughput at saturation, where requests always find others in flight and batch."""
        idle = self._inflight == 0
        self._inflight += 1
        try:
            if idle:
                self.counts["immediate"] += 1
                return (await self._score_now([batch]))[0]
            return await self._score_batch(batch)
        finally:
            self._inflight -= 1

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
    async def _score_batch(self, batches: list[EventBatch]) -> list[dict[str, Any]]:
        return await self._score_now(batches)

    async def _score_now(self, batches: list[EventBatch]) -> list[dict[str, Any]]:
        """Score the requests together: their columns encoded at once, length groups under
        max_tokens."""
        model = self.model  # one model for the whole batch, even if reload swaps it meanwhile
        started = time.perf_counter()
        columns = event_columns(batches, model.scorer.schema)
        # Off the event loop, so requests keep queueing for the next batch meanwhile.
        scored = await asyncio.to_thread(model.scorer.score_rows, columns)
        rows: list[dict[str, Any]] = [{}] * int(sum(len(b.entities) for b in batches))
        for row in scored:
            position = int(row.pop("entity"))  # before the values are read: no synthetic key
            rows[position] = {k: _jsonable(v) for k, v in row.items()}
        self.batch_latency.observe(time.perf_counter() - started)
        self.batch_requests.observe(len(batches))
        self.batch_sequences.observe(len(rows))
        c = self.counts
        c["batches"] += 1
        c["requests"] += len(batches)
        c["sequences"] += len(rows)
        c["largest_batch"] = max(c["largest_batch"], len(batches))
        header = {**model.describe(), "task": model.scorer.config.task}
        results, start = [], 0
        for b in batches:
            scores = [{"entity": e, **rows[start + i]} for i, e in enumerate(b.entities)]
            results.append({"model": header, "scores": scores})
            start += len(b.entities)
        return results


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

    def reload(self, alias: str | None = None, version: int | None = None) -> dict[str, Any]:
        """Load the version the alias (or the given alias/version) names now."""
        return self.server.reload(alias, version)

    def check_health(self) -> None:
        self.server.check_health()

    def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()


@serve.deployment
class ChallengerHolder(HoldsModel):
    """The challenger (``rollout.challenger_alias``): a :class:`ModelServer` of its own
    deployment, so that its replicas, CPUs and batching are tuned apart from the champion's
    and a slow or failing challenger never holds up the ingress."""

    def __init__(self, config: ServingConfig) -> None:
        _short_gil_switch()
        self.server = ModelServer(config, "ChallengerHolder")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: max_batch_size, batch_wait_timeout_s, max_tokens."""
        self.server.reconfigure(user_config)

    async def score(self, batch: EventBatch) -> dict[str, Any]:
        return await self.server.score(batch)


@serve.deployment
class StreamHolder:
    """Streaming scoring with per-entity state (``serving.streaming``), one store per replica.

    Deployed with :class:`serving.routing.EntityAffinityRouter`, so every call for an entity
    reaches the same replica while the replica set is unchanged; a replica that gets an entity
    it holds no state for says so in the reply. Follows its alias like :class:`ModelServer`;
    a new version drops the old version's states (answered as ``reset: model_changed``).
    """

    def __init__(self, config: ServingConfig) -> None:
        _short_gil_switch()
        self.ref = config.model
        self.settings = config.streaming
        self.max_tokens = config.batching.max_tokens
        self.model = load_model(self.ref, self.max_tokens)
        store = StateStore(self.settings.max_entities, self.settings.state_ttl_s)
        self.streamer = StreamingScorer(self.model.scorer, self.model.version, store)
        self._lock = threading.Lock()  # one call at a time changes the store or the model
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (a test)
            self.replica = "local"
        self.calls = Counter(
            "seqops_stream_calls",
            "Streaming calls by state status",
            ("status",),
        )
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
            self.streamer.store.resize(self.settings.max_entities, self.settings.state_ttl_s)

    def _sweep(self) -> None:
        """Expired states are freed even for entities that never call again."""
        while True:
            time.sleep(min(max(self.settings.state_ttl_s / 4, 0.05), 60.0))
            with self._lock:
                self.streamer.store.sweep()
            self.entities.set(len(self.streamer.store))

    def _swap(self, loaded: LoadedModel) -> None:
        with self._lock:
            self.model = loaded
            self.streamer.swap_model(loaded.scorer, loaded.version)

    def _update(
        self,
        entity_id: str,
        events: EventBatch,
        history: EventBatch | None,
        expect_events_seen: int | None,
        reset: bool,
    ) -> dict[str, Any]:
        with self._lock:
            model, streamer = self.model, self.streamer
            schema = model.scorer.schema
            try:
                result = streamer.update(
                    entity_id,
                    events_table([events], schema),
                    history=None if history is None else events_table([history], schema),
                    expect_events_seen=expect_events_seen,
                    reset=reset,
                )
            except StreamOrderError as exc:
                return {"error": str(exc), "field": f"events[{exc.index}].{exc.column}"}
        result["state"]["replica"] = self.replica
        self.calls.inc(tags={"status": result["state"]["status"]})
        self.entities.set(len(streamer.store))
        header = {**model.describe(), "task": model.scorer.config.task}
        return {"model": header, "score": {k: _jsonable(v) for k, v in result.items()}}

    async def update(
        self,
        entity_id: str,
        events: EventBatch,
        history: EventBatch | None = None,
        expect_events_seen: int | None = None,
        reset: bool = False,
    ) -> dict[str, Any]:
        """New events of one entity -> its updated score (the router sends ``entity_id`` to
        its owner replica: keep it the first argument)."""
        return await asyncio.to_thread(
            self._update, entity_id, events, history, expect_events_seen, reset
        )

    def info(self) -> dict[str, Any]:
        store = self.streamer.store
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
            n = len(self.streamer.store)
            self.streamer.store.clear("dropped")
        return n

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


api = FastAPI(title="seqops online scoring", docs_url=None, redoc_url=None)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown routes and methods answer in the same JSON shape as every other error."""
    return JSONResponse({"error": str(exc.detail), "field": None}, status_code=exc.status_code)


@serve.deployment
@serve.ingress(api)
class ScoringAPI(HoldsModel):
    """HTTP edge: reads and validates requests, scores them with the champion it holds
    (``self.server``, batched across the requests of this replica), sends the
    challenger's share to :class:`ChallengerHolder` and streaming calls to
    :class:`StreamHolder`, and counts outcomes."""

    async def __init__(  # type: ignore[misc]
        self,
        stream: DeploymentHandle,
        challenger: DeploymentHandle | None,
        config: ServingConfig,
    ) -> None:
        _short_gil_switch()
        self.stream, self.challenger = stream, challenger
        self.limits = config.limits
        self.rollout = config.rollout
        # Loading reads the registry and artifacts: off the loop that answers health checks.
        self.server = await asyncio.to_thread(ModelServer, config, "champion")
        self.schema = EventSchema.from_manifest(self.server.info()["schema"])
        self.request_model = request_model(self.schema, self.limits)
        self.stream_model = stream_request_model(self.schema, self.limits)
        self._shadows: set[asyncio.Task] = set()  # keeps mirrored calls alive until done
        self.shadowed = Counter(
            "seqops_shadow_requests",
            "Requests mirrored to the challenger",
            ("outcome",),
        )
        self.shadow_diff = Histogram(
            "seqops_shadow_abs_diff",
            "Largest |champion - challenger| score per mirrored request",
            [1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0],
        )
        # Ray annotates tag_keys as tuple[str] though it takes any number of keys.
        by_status: Any = ("route", "status")
        self.requests = Counter("seqops_requests", "HTTP requests by route, status", by_status)
        by_kind: Any = ("route", "kind")
        self.errors = Counter("seqops_request_errors", "Failed requests by route, kind", by_kind)
        self.latency = Histogram(
            "seqops_request_latency_s", "Request latency (s)", LATENCY_BOUNDS, tag_keys=("route",)
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: the request limits (max_sequences_per_request,
        max_events_per_sequence, max_body_bytes, order_policy) and the champion's batching
        (max_batch_size, batch_wait_timeout_s, max_tokens)."""
        limits, batching = split_user_config(user_config, Limits, Batching)
        self.limits = apply_user_config(self.limits, limits)
        self.server.reconfigure(batching)
        self.request_model = request_model(self.schema, self.limits)
        self.stream_model = stream_request_model(self.schema, self.limits)

    def _reply(self, route: str, status: int, body: dict, started: float) -> JSONResponse:
        self.requests.inc(tags={"route": route, "status": str(status)})
        if status >= 400:
            self.errors.inc(tags={"route": route, "kind": ERROR_KINDS.get(status, str(status))})
        self.latency.observe(time.perf_counter() - started, tags={"route": route})
        return JSONResponse(body, status_code=status)

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused (413/415) on its headers before a byte of it is read."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise RequestError(
                415,
                f"Content-Type must be application/json, not {media or 'none'!r}",
                "headers.content-type",
            )
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")  # digits: checked by uvicorn
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(
                413, f"body of {declared} bytes exceeds max_body_bytes={limit}", "body"
            )
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds chunked or mis-declared bodies
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body exceeds max_body_bytes={limit}", "body")
            chunks.append(chunk)
        return b"".join(chunks)

    def _variant(self, batch: EventBatch) -> str:
        """``challenger`` for ``challenger_percent`` of entities (sticky: an entity always
        sees the same version while the split is unchanged), else ``champion``."""
        percent = self.rollout.challenger_percent
        if self.challenger is None or percent <= 0:
            return "champion"
        digest = hashlib.blake2b(f"split\x00{batch.entities[0]}".encode(), digest_size=8)
        bucket = int.from_bytes(digest.digest(), "big") % 10_000
        return "challenger" if bucket < percent * 100 else "champion"

    @api.post("/v1/score")
    async def score(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            parsed = parse_request(body, self.request_model, self.schema, self.limits)
            batch = to_batch(parsed, self.schema)
            variant = self._variant(batch)
            if variant == "challenger":
                assert self.challenger is not None
                result = await self.challenger.score.remote(batch)
            else:
                result = await self.server.score(batch)  # the champion, in this replica
            result["model"]["variant"] = variant
        except RequestError as exc:
            return self._reply("/v1/score", exc.status, exc.body(), started)
        except Exception:
            log.exception("scoring failed")
            return self._reply(
                "/v1/score", 500, {"error": "internal error while scoring", "field": None}, started
            )
        if self.rollout.shadow and variant == "champion" and self.challenger is not None:
            task = asyncio.create_task(self._shadow(batch, result))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        return self._reply("/v1/score", 200, result, started)

    async def _shadow(self, batch: EventBatch, served: dict[str, Any]) -> None:
        """Score a mirrored request with the challenger; log the comparison, return nothing."""
        assert self.challenger is not None
        try:
            shadow = await self.challenger.score.remote(batch)
        except Exception as exc:
            self.shadowed.inc(tags={"outcome": "error"})
            log.warning("shadow: challenger failed: %r", exc)
            return
        pairs = zip(served["scores"], shadow["scores"], strict=True)
        diffs = [abs(float(a["score"]) - float(b["score"])) for a, b in pairs]
        largest = max(diffs)
        record: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "champion": {k: served["model"][k] for k in ("name", "version", "run_id")},
            "challenger": {k: shadow["model"][k] for k in ("name", "version", "run_id")},
            "scores": [
                {"entity": a["entity"], "champion": a["score"], "challenger": b["score"]}
                for a, b in zip(served["scores"], shadow["scores"], strict=True)
            ],
            "max_abs_diff": largest,
        }
        self.shadowed.inc(tags={"outcome": "ok"})
        self.shadow_diff.observe(largest)
        line = json.dumps(record)
        log.info("shadow: %s", line)
        if self.rollout.shadow_log:
            await asyncio.to_thread(_append_line, self.rollout.shadow_log, line)

    @api.post("/v1/stream/{entity_id}")
    async def stream_events(self, entity_id: str, request: Request) -> JSONResponse:
        started = time.perf_counter()
        route = "/v1/stream"
        try:
            if len(entity_id) > MAX_ENTITY_CHARS or not entity_id.isprintable():
                raise RequestError(
                    422,
                    f"entity_id must be 1 to {MAX_ENTITY_CHARS} printable characters",
                    "path.entity_id",
                )
            body = await self._read_body(request)
            parsed = parse_stream_request(body, self.stream_model, self.schema, self.limits)
            events, history = stream_batches(parsed, entity_id, self.schema)
            result = await self.stream.update.remote(
                entity_id, events, history, parsed["expect_events_seen"], parsed["reset"]
            )
            if "error" in result:
                raise RequestError(422, result["error"], result["field"])
        except RequestError as exc:
            return self._reply(route, exc.status, exc.body(), started)
        except Exception:
            log.exception("streaming failed")
            failed = {"error": "internal error while scoring", "field": None}
            return self._reply(route, 500, failed, started)
        return self._reply(route, 200, result, started)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        started = time.perf_counter()
        try:
            self.check_health()
            info = self.info()
        except Exception as exc:
            body = {"status": "unavailable", "error": f"champion: {exc!r}", "field": None}
            return self._reply("/healthz", 503, body, started)
        model = {k: info[k] for k in ("name", "alias", "version", "run_id")}
        return self._reply("/healthz", 200, {"status": "ok", "model": model}, started)

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        started = time.perf_counter()
        info = self.info()
        info["features"] = self.schema.columns
        info["variant"] = "champion"
        models = [info]
        if self.challenger is not None:
            challenger = await self.challenger.info.remote()
            models.append({**challenger, "features": self.schema.columns, "variant": "challenger"})
        stream = await self.stream.info.remote()  # one replica's view: states are per replica
        rollout = dataclasses.asdict(self.rollout)
        body = {"models": models, "rollout": rollout, "streaming": stream}
        return self._reply("/v1/models", 200, body, started)


def build_app(
    config: ServingConfig, options: dict[str, dict[str, Any]] | None = None, check: bool = True
) -> Any:
    """The application graph. ``options`` per deployment name (num_replicas, ray_actor_options,
    user_config, ...) normally come from serve_config.yaml; ``check`` resolves the model first
    so that a missing model or alias fails here, at once, with the registry's answer."""
    challenger_ref = config.challenger
    if check:
        resolve_version(config.model)
        if challenger_ref is not None:
            resolve_version(challenger_ref)
    options = options or {}
    api_opts = {"max_ongoing_requests": 128, **options.get("ScoringAPI", {})}
    challenger = None
    if challenger_ref is not None:
        # Batched like the champion unless its own section says otherwise.
        _, batching = split_user_config(api_opts.get("user_config"), Limits, Batching)
        challenger_opts = {
            # @serve.batch never forms batches larger than max_ongoing_requests (ray#43288).
            "max_ongoing_requests": max(2 * config.batching.max_batch_size, 8),
            "user_config": batching,
            **options.get("ChallengerHolder", {}),
        }
        challenger = ChallengerHolder.options(**challenger_opts).bind(  # type: ignore[attr-defined]
            dataclasses.replace(config, model=challenger_ref)
        )
    router = RequestRouterConfig(request_router_class=EntityAffinityRouter)  # type: ignore[arg-type]
    stream_opts = {"max_ongoing_requests": 64, **options.get("StreamHolder", {})}
    stream_opts["request_router_config"] = router  # entity affinity is not optional
    stream = StreamHolder.options(**stream_opts).bind(config)  # type: ignore[attr-defined]
    return ScoringAPI.options(**api_opts).bind(stream, challenger, config)  # type: ignore[attr-defined]


def app_builder(args: dict[str, Any]) -> Any:
    """``serve run serving.app:app_builder model_name=NAME alias=champion`` (or version=N)."""
    return build_app(serving_config(args))
