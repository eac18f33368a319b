"""The online scoring application: a FastAPI ingress in front of a batching model deployment.

Follows Ray Serve's own examples (STYLE habit 6): "Set Up FastAPI and HTTP" (``@serve.ingress``
with a FastAPI app), "Dynamic Request Batching" (``@serve.batch`` on an async method, its
size and timeout updated through ``set_max_batch_size``/``set_batch_wait_timeout_s``),
"Configure Ray Serve deployments" (tunables in ``user_config``, applied by ``reconfigure``),
"Deploy Compositions of Models" (the ingress calls the model through a ``DeploymentHandle``),
"Pass Arguments to Applications" (``app_builder(args)``) and "Custom Metrics"
(``ray.serve.metrics``). Replicas, CPUs and user_config live in ``serving/serve_config.yaml``.

:class:`ModelHolder` owns one registered model: it resolves ``models:/<name>@<alias>`` (or a
version) in the MLflow registry in ``__init__``, loads that exact version and can ``reload``;
every result carries the name, version, run and data hash of the model that produced it, so
a traffic split or an alias switch (later) never mislabels a score. Requests from many
clients are grouped by ``@serve.batch``; :class:`serving.scorer.SequenceScorer` then pads
each length group to its own longest sequence under a token budget (PERFORMANCE.md).
:class:`ScoringAPI` validates every request (``serving.schemas``) before the model sees it.
"""

# No ``from __future__ import annotations`` here: FastAPI must see real annotation objects on
# the route methods that Serve rewrites into class-based views (``request: Request``).
import asyncio
import dataclasses
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException

from serving.config import ServingConfig, apply_user_config, serving_config
from serving.registry import load_model, resolve_version
from serving.schemas import (
    EventBatch,
    EventSchema,
    RequestError,
    events_table,
    parse_request,
    request_model,
    to_batch,
)

log = logging.getLogger("ray.serve")
LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
ERROR_KINDS = {
    400: "malformed",
    413: "too_large",
    415: "content_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):  # pandas/py datetimes: ISO-8601 in UTC
        return value.isoformat().replace("+00:00", "Z")
    return value


@serve.deployment
class ModelHolder:
    """One registered model, scored in dynamic batches; knows and reports what it serves."""

    def __init__(self, config: ServingConfig) -> None:
        self.ref = config.model
        self.batching = config.batching
        self.model = load_model(self.ref, self.batching.max_tokens)
        self._apply_batching()
        self.counts = {"batches": 0, "requests": 0, "sequences": 0, "largest_batch": 0}
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
        self.ref, self.model = ref, loaded  # batches already running keep the old model
        return self.info()

    def info(self) -> dict[str, Any]:
        m = self.model
        return {
            **m.describe(),
            "task": m.scorer.config.task,
            "schema": m.scorer.manifest["schema"],
            "batching": dataclasses.asdict(self.batching),
        }

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def check_health(self) -> None:
        if self.model.scorer is None:
            raise RuntimeError("no model loaded")

    async def score(self, batch: EventBatch) -> dict[str, Any]:
        """One request's sequences -> its scores, batched with concurrent requests."""
        return await self._score_batch(batch)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score_batch(self, batches: list[EventBatch]) -> list[dict[str, Any]]:
        model = self.model  # one model for the whole batch, even if reload swaps it meanwhile
        started = time.perf_counter()
        table = events_table(batches, model.scorer.schema)
        # Off the event loop, so requests keep queueing for the next batch meanwhile.
        frame = await asyncio.to_thread(model.scorer.score, table)
        rows: list[dict[str, Any]] = [{}] * int(sum(len(b.entities) for b in batches))
        for row in frame.to_dict("records"):
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


api = FastAPI(title="seqops online scoring", docs_url=None, redoc_url=None)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown routes and methods answer in the same JSON shape as every other error."""
    return JSONResponse({"error": str(exc.detail), "field": None}, status_code=exc.status_code)


@serve.deployment
@serve.ingress(api)
class ScoringAPI:
    """HTTP edge: reads and validates requests, calls the model, counts outcomes."""

    async def __init__(self, model: DeploymentHandle, config: ServingConfig) -> None:  # type: ignore[misc]
        self.model = model
        self.limits = config.limits
        self.schema = EventSchema.from_manifest((await model.info.remote())["schema"])
        self.request_model = request_model(self.schema, self.limits)
        # Ray annotates tag_keys as tuple[str] though it takes any number of keys.
        by_status: Any = ("route", "status")
        self.requests = Counter("seqops_requests", "HTTP requests by route, status", by_status)
        by_kind: Any = ("route", "kind")
        self.errors = Counter("seqops_request_errors", "Failed requests by route, kind", by_kind)
        self.latency = Histogram(
            "seqops_request_latency_s", "Request latency (s)", LATENCY_BOUNDS, tag_keys=("route",)
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: max_sequences_per_request, max_events_per_sequence,
        max_body_bytes, order_policy."""
        self.limits = apply_user_config(self.limits, user_config)
        self.request_model = request_model(self.schema, self.limits)

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

    @api.post("/v1/score")
    async def score(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
            parsed = parse_request(body, self.request_model, self.schema, self.limits)
            result = await self.model.score.remote(to_batch(parsed, self.schema))
        except RequestError as exc:
            return self._reply("/v1/score", exc.status, exc.body(), started)
        except Exception:
            log.exception("scoring failed")
            return self._reply(
                "/v1/score", 500, {"error": "internal error while scoring", "field": None}, started
            )
        return self._reply("/v1/score", 200, result, started)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        started = time.perf_counter()
        try:
            info = await asyncio.wait_for(self._model_info(), timeout=10)
        except Exception as exc:
            body = {"status": "unavailable", "error": f"model deployment: {exc!r}", "field": None}
            return self._reply("/healthz", 503, body, started)
        model = {k: info[k] for k in ("name", "alias", "version", "run_id")}
        return self._reply("/healthz", 200, {"status": "ok", "model": model}, started)

    @api.get("/v1/models")
    async def models(self) -> JSONResponse:
        started = time.perf_counter()
        info = await self._model_info()
        info["features"] = self.schema.columns
        return self._reply("/v1/models", 200, {"models": [info]}, started)

    async def _model_info(self) -> dict[str, Any]:
        return await self.model.info.remote()


def build_app(
    config: ServingConfig, options: dict[str, dict[str, Any]] | None = None, check: bool = True
) -> Any:
    """The application graph. ``options`` per deployment name (num_replicas, ray_actor_options,
    user_config, ...) normally come from serve_config.yaml; ``check`` resolves the model first
    so that a missing model or alias fails here, at once, with the registry's answer."""
    if check:
        resolve_version(config.model)
    options = options or {}
    # @serve.batch never forms batches larger than max_ongoing_requests (ray#43288).
    holder_opts = {"max_ongoing_requests": max(2 * config.batching.max_batch_size, 8)}
    holder_opts.update(options.get("ModelHolder", {}))
    holder = ModelHolder.options(**holder_opts).bind(config)  # type: ignore[attr-defined]
    api_opts = {"max_ongoing_requests": 128, **options.get("ScoringAPI", {})}
    return ScoringAPI.options(**api_opts).bind(holder, config)  # type: ignore[attr-defined]


def app_builder(args: dict[str, Any]) -> Any:
    """``serve run serving.app:app_builder model_name=NAME alias=champion`` (or version=N)."""
    return build_app(serving_config(args))
