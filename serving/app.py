"""The online scoring application: a FastAPI ingress that scores the champion itself.

Follows Ray Serve's own examples (STYLE habit 6): "Set Up FastAPI and HTTP" (``@serve.ingress``
with a FastAPI app), "Configure Ray Serve deployments" (tunables in ``user_config``, applied by
``reconfigure``), "Deploy Compositions of Models" (the ingress calls the challenger and the
stream state through ``DeploymentHandle``s) and "Pass Arguments to Applications"
(``app_builder(args)``). Replicas, CPUs and user_config live in ``serving/serve_config.yaml``.

:class:`ScoringAPI` validates every request (``serving.schemas``) before a model sees it and
scores the champion with its own :class:`~serving.holder.ModelServer`, in its own replicas:
a second deployment for the champion would cost every request a handle hop, more than the
model's own time (benchmarks/README.md, "Serving"). Scale the champion by scaling
``ScoringAPI``. Streaming calls are scored here too when the state lives in Redis
(``serving.redis_state``, docs/architecture.md §7); without a store they go to the
in-memory fallback behind the entity-affinity router (``serving.stream_holder``,
``serving.routing``). The other pieces live in their own modules: the HTTP plumbing
(``serving.http_edge``) and the challenger, traffic split and shadow (``serving.rollout``).
"""

# No ``from __future__ import annotations`` here: FastAPI must see real annotation objects on
# the route methods that Serve rewrites into class-based views (``request: Request``).
import asyncio
import dataclasses
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from seqcore.config import ConfigError
from serving.auth import Authenticator, load_tokens, resolve_auth
from serving.config import (
    REDIS_URL_ENV,
    Batching,
    Limits,
    ServingConfig,
    apply_user_config,
    serving_config,
    split_user_config,
)
from serving.holder import HoldsModel, ModelServer, short_gil_switch
from serving.http_edge import Replies, check_entity_id, json_api, read_body
from serving.openapi import complete
from serving.redis_state import RedisStateStore, redacted, unreachable
from serving.registry import resolve_version
from serving.rollout import ChallengerHolder, Shadow, variant
from serving.routing import EntityAffinityRouter
from serving.schemas import (
    RequestError,
    StreamRequest,
    feature_columns,
    parse_request,
    parse_stream_request,
    request_model,
    stream_request_model,
)
from serving.stream_holder import StreamHolder, answer_stream, stream_metrics
from serving.streaming import StreamingScorer

api = json_api("seqops online scoring")
log = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress(api)
class ScoringAPI(HoldsModel):
    """HTTP edge: validates requests, scores them with the champion it holds (batched across
    this replica's requests), sends the challenger's share to ``ChallengerHolder``, and
    streams against the shared store itself (or hands stream calls to ``StreamHolder``)."""

    async def __init__(  # type: ignore[misc]
        self,
        stream: DeploymentHandle | None,
        challenger: DeploymentHandle | None,
        config: ServingConfig,
        auth: Authenticator,
    ) -> None:
        short_gil_switch()
        self.stream, self.challenger, self.auth = stream, challenger, auth
        self.limits, self.rollout = config.limits, config.rollout
        # Loading reads the registry and artifacts: off the loop that answers health checks.
        self.server = await asyncio.to_thread(ModelServer, config, "champion")
        # With a shared store the stream state is read and written here, where the call
        # landed (serving.redis_state); without one it lives in StreamHolder replicas.
        self.store: RedisStateStore | None = None
        self.retries = config.streaming.stream_conflict_retries
        if stream is None:
            url = config.streaming.redis_url
            assert url is not None, "build_app passes a stream handle or a Redis URL"
            self.store = RedisStateStore(url, config.streaming.state_ttl_s)
            model = self.server.model
            self.streamer = StreamingScorer(model.scorer, model.version, self.store, self.retries)
            self.stream_calls = stream_metrics()
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (a test)
            self.replica = "local"
        self._validators()
        self.shadow = None if challenger is None else Shadow(challenger, self.rollout.shadow_log)
        self.replies = Replies()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: the request limits (max_sequences_per_request,
        max_events_per_sequence, max_body_bytes, order_policy) and the champion's batching
        (max_batch_size, batch_wait_timeout_s, max_tokens)."""
        limits, batching = split_user_config(user_config, Limits, Batching)
        self.limits = apply_user_config(self.limits, limits)
        self.server.reconfigure(batching)
        self._validators()

    def _validators(self) -> None:
        """Request validators for the champion held now: its schema and its data contract
        (the validate stage's rules it was trained under). Rebuilt when a promotion swaps in
        another version (:meth:`_current`), whose schema or contract may differ."""
        model = self.server.model
        contract = model.scorer.manifest.contract
        self.schema = model.scorer.schema
        self.request_model = request_model(self.schema, self.limits, contract)
        self.stream_model = stream_request_model(self.schema, self.limits, contract)
        self._validated_for = model

    def _current(self) -> None:
        if self.server.model is not self._validated_for:  # the alias moved since
            self._validators()

    @api.post("/v1/score")
    async def score(self, request: Request) -> JSONResponse:
        return await self.replies.answer("/v1/score", self._score(request))

    async def _score(self, request: Request) -> dict[str, Any]:
        self._allow(request, "score")
        body = await self._body(request)
        self._current()
        columns = parse_request(body, self.request_model, self.schema, self.limits)
        split = 0.0 if self.challenger is None else self.rollout.challenger_percent
        chosen = variant(columns.names[0], split)
        if chosen == "challenger":
            assert self.challenger is not None
            result = await self.challenger.score.remote(columns)
            if "refused" in result:
                refused = dict(result["refused"])
                raise RequestError(refused.pop("status"), refused.pop("error"), **refused)
        else:
            result = await self.server.score(columns)  # the champion, in this replica
            if self.shadow is not None and self.rollout.shadow:
                self.shadow.mirror(columns, result)
        result["model"]["variant"] = chosen
        return result

    # ``:path``: an entity id may hold "/" (sent percent-encoded, as %2F).
    @api.post("/v1/stream/{entity_id:path}")
    async def stream_events(self, entity_id: str, request: Request) -> JSONResponse:
        return await self.replies.answer("/v1/stream", self._stream(entity_id, request))

    async def _stream(self, entity_id: str, request: Request) -> dict[str, Any]:
        self._allow(request, "score")
        check_entity_id(entity_id)
        body = await self._body(request)
        self._current()
        parsed = parse_stream_request(body, entity_id, self.stream_model, self.schema, self.limits)
        if parsed.reset:  # dropping an entity's state is an operator's act
            self._allow(request, "admin")
        if self.stream is not None:
            result = await self.stream.update.remote(entity_id, parsed)
        else:
            result = await asyncio.to_thread(self._stream_here, entity_id, parsed)
        if "error" in result:
            raise RequestError(result["status"], result["error"], result["field"])
        return result

    def _stream_here(self, entity_id: str, parsed: StreamRequest) -> dict[str, Any]:
        """One stream call against the shared store, with the champion this replica holds."""
        model, streamer = self.server.model, self.streamer
        if streamer.version != model.version:  # the alias moved: states reset by version
            assert self.store is not None
            streamer = StreamingScorer(model.scorer, model.version, self.store, self.retries)
            self.streamer = streamer
        return answer_stream(streamer, model, entity_id, parsed, self.replica, self.stream_calls)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        started = time.perf_counter()
        try:
            self.check_health()
            info = self.info()
        except Exception as exc:
            body = {"status": "unavailable", "error": f"champion: {exc!r}", "field": None}
            return self.replies.send("/healthz", 503, body, started)
        model = {k: info[k] for k in ("name", "alias", "version", "run_id")}
        return self.replies.send("/healthz", 200, {"status": "ok", "model": model}, started)

    def _allow(self, request: Request, scope: str) -> None:
        """The caller's token must hold ``scope`` (serving.auth), or the reply is 401/403."""
        self.auth.check(request.headers.get("authorization"), scope)

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.limits.max_body_bytes, self.limits.body_timeout_s)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        return await self.replies.answer("/openapi.json", self._openapi(request))

    async def _openapi(self, request: Request) -> dict[str, Any]:
        self._allow(request, "score")
        self._current()
        model = self.server.model.scorer
        return complete(
            api.openapi(),
            self.request_model,
            self.stream_model,
            self.schema,
            model.manifest,
            self.auth.enabled,
        )

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        started = time.perf_counter()
        if self.auth.enabled:  # a browser cannot send a bearer token for the document
            body = {
                "error": "the API docs page is off while tokens are required; fetch "
                "/openapi.json with a token instead",
                "field": None,
            }
            return self.replies.send("/docs", 404, body, started)
        prefix = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{prefix}/openapi.json", title=api.title)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        return await self.replies.answer("/v1/models", self._models(request))

    async def _models(self, request: Request) -> dict[str, Any]:
        self._allow(request, "admin")
        self._current()
        features = feature_columns(self.schema)
        models = [{**self.info(), "features": features, "variant": "champion"}]
        if self.challenger is not None:
            challenger = await self.challenger.info.remote()
            models.append({**challenger, "features": features, "variant": "challenger"})
        if self.stream is not None:  # one replica's view: states are per replica
            stream = {"store": "memory", **await self.stream.info.remote()}
        else:
            assert self.store is not None
            stream = await asyncio.to_thread(self.store.describe)
        rollout = dataclasses.asdict(self.rollout)
        return {
            "models": models,
            "rollout": rollout,
            "streaming": stream,
            "auth": self.auth.describe(),
            "contract": self.request_model.rules.describe(),
        }


def build_app(
    config: ServingConfig,
    options: dict[str, dict[str, Any]] | None = None,
    check: bool = True,
    http_host: str | None = None,
) -> Any:
    """The application graph. ``options`` per deployment name (num_replicas, ray_actor_options,
    user_config, ...) normally come from serve_config.yaml; ``check`` resolves the model first
    so that a missing model or alias fails here, at once, with the registry's answer.
    ``http_host``, where known, is the address Serve answers on: anything but loopback turns
    authentication on under ``auth=auto`` (``serving.auth.resolve_auth``)."""
    tokens = load_tokens(config.access.tokens_file)
    auth = Authenticator(tokens, resolve_auth(config.access.auth, tokens, http_host))
    if not auth.enabled:
        log.warning(
            "serving without authentication (auth=%s, host %s): every route answers anyone",
            config.access.auth,
            http_host or "unknown",
        )
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
    url = config.streaming.store_url()  # resolved here: replicas do not see our environment
    stream = None
    if url is not None:
        config = config.with_redis(url)
        if check:  # the CLI checks a store itself, from where it can reach it
            check_store(url)
    else:
        router = RequestRouterConfig(request_router_class=EntityAffinityRouter)  # type: ignore[arg-type]
        stream_opts = {"max_ongoing_requests": 64, **options.get("StreamHolder", {})}
        stream_opts["request_router_config"] = router  # entity affinity is not optional
        stream = StreamHolder.options(**stream_opts).bind(config)  # type: ignore[attr-defined]
    return ScoringAPI.options(**api_opts).bind(stream, challenger, config, auth)  # type: ignore[attr-defined]


def check_store(url: str) -> None:
    """The streaming store answers now (a ConfigError naming where, never the password):
    a wrong URL or password fails the start, not every later stream call."""
    reason = unreachable(url, timeout_s=5.0)
    if reason:
        raise ConfigError(
            f"serving: the streaming state store (Redis at {redacted(url)}) does not answer: "
            f"{reason}; check redis_url / ${REDIS_URL_ENV}, or serve with stream_store=memory"
        )


def app_builder(args: dict[str, Any]) -> Any:
    """``serve run serving.app:app_builder model_name=NAME alias=champion`` (or version=N)."""
    return build_app(serving_config(args))
