"""The HTTP edge of online scoring: reading bodies, JSON replies, their metrics and error kinds.

What every route of the ingress (``serving.app``) shares, kept out of the deployment class so
that it reads as its routes (STYLE habit 11). A body is refused on its headers (415, 413)
before a byte of it is read, and bounded while it is read; every reply is JSON, errors
included, in the shape ``{"error": ..., "field": ...}`` of :class:`serving.schemas.RequestError`
(unknown routes and methods too); every reply is counted by route and status, errors also by
kind, and timed, through Ray Serve's custom metrics (Ray docs, "Custom Metrics").
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations of what it calls.
import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import AuthError
from serving.schemas import MAX_ENTITY_CHARS, RequestError

log = logging.getLogger("ray.serve")
LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
ERROR_KINDS = {
    400: "malformed",
    401: "unauthenticated",
    403: "forbidden",
    408: "slow_body",
    413: "too_large",
    415: "content_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}
INTERNAL_ERROR = {"error": "internal error while scoring", "field": None}


def json_api(title: str) -> FastAPI:
    """A FastAPI app whose unknown routes and methods answer in the same JSON shape as every
    other error."""
    # No automatic /openapi.json: FastAPI would serve it to anyone; the ingress serves it
    # behind the same token check as its other routes.
    api = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "field": None}, status_code=exc.status_code)

    return api


def jsonable(value: Any) -> Any:
    """A scorer's value as JSON: numpy scalars as Python numbers, times as ISO-8601 UTC."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):  # pandas/py datetimes: ISO-8601 in UTC
        return value.isoformat().replace("+00:00", "Z")
    return value


def check_entity_id(entity_id: str) -> None:
    """An entity key taken from the URL: printable and bounded, or a 422."""
    if len(entity_id) > MAX_ENTITY_CHARS or not entity_id.isprintable():
        raise RequestError(
            422, f"entity_id must be 1 to {MAX_ENTITY_CHARS} printable characters", "path.entity_id"
        )


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused (413/415) on its headers before a byte of it is read, and (413/408)
    as soon as it grows past ``limit`` or takes longer than ``timeout_s`` to arrive."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise RequestError(
            415,
            f"Content-Type must be application/json, not {media or 'none'!r}",
            "headers.content-type",
        )
    declared = request.headers.get("content-length", "")  # digits: checked by uvicorn
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes exceeds max_body_bytes={limit}", "body")
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(timeout_s):
            size = 0
            async for chunk in request.stream():  # also bounds chunked or mis-declared bodies
                size += len(chunk)
                if size > limit:
                    chunks.clear()  # what was read goes now, not when the reply is sent
                    raise RequestError(413, f"body exceeds max_body_bytes={limit}", "body")
                chunks.append(chunk)
    except TimeoutError:
        chunks.clear()
        raise RequestError(
            408, f"body not received within body_timeout_s={timeout_s:g}", "body"
        ) from None
    return b"".join(chunks)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_trim_pending = False


def release_memory_soon(delay_s: float = 1.0) -> None:
    """Return freed heap pages to the OS shortly after a refused body. Serve hands a replica
    the body it was sent, refused or not; once the request is done, glibc keeps those pages
    for reuse instead of returning them, so each oversize body would raise the replica's
    resident memory for good. One ``malloc_trim`` per burst of refusals, after the request's
    buffers are released."""
    global _trim_pending
    if _trim_pending or not hasattr(_libc, "malloc_trim"):
        return
    _trim_pending = True

    def trim() -> None:
        global _trim_pending
        _trim_pending = False
        _libc.malloc_trim(0)

    asyncio.get_running_loop().call_later(delay_s, trim)


class Replies:
    """One replica's JSON replies, each counted (``seqops_requests`` by route and status,
    ``seqops_request_errors`` by route and kind) and timed (``seqops_request_latency_s``)."""

    def __init__(self) -> None:
        # Ray annotates tag_keys as tuple[str] though it takes any number of keys.
        by_status: Any = ("route", "status")
        self.requests = Counter("seqops_requests", "HTTP requests by route, status", by_status)
        by_kind: Any = ("route", "kind")
        self.errors = Counter("seqops_request_errors", "Failed requests by route, kind", by_kind)
        self.latency = Histogram(
            "seqops_request_latency_s", "Request latency (s)", LATENCY_BOUNDS, tag_keys=("route",)
        )

    def send(
        self,
        route: str,
        status: int,
        body: dict,
        started: float,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse:
        """``body`` as the reply, counted and timed from ``started`` (``time.perf_counter``)."""
        self.requests.inc(tags={"route": route, "status": str(status)})
        if status >= 400:
            self.errors.inc(tags={"route": route, "kind": ERROR_KINDS.get(status, str(status))})
        self.latency.observe(time.perf_counter() - started, tags={"route": route})
        return JSONResponse(body, status_code=status, headers=headers)

    def refuse(self, route: str, exc: AuthError, started: float) -> JSONResponse:
        """A refused credential: 401 says how to authenticate (RFC 6750), 403 that the token
        lacks the scope."""
        headers = {"WWW-Authenticate": 'Bearer realm="seqops"'} if exc.status == 401 else None
        body = {"error": exc.error, "field": "headers.authorization"}
        return self.send(route, exc.status, body, started, headers)

    async def answer(self, route: str, work: Awaitable[dict[str, Any]]) -> JSONResponse:
        """200 with what ``work`` returns; a :class:`RequestError` becomes its 4xx reply and
        anything else a logged 500 that tells the client nothing internal."""
        started = time.perf_counter()
        try:
            body = await work
        except AuthError as exc:
            return self.refuse(route, exc, started)
        except RequestError as exc:
            if exc.status in (408, 413):
                release_memory_soon()
            return self.send(route, exc.status, exc.body(), started)
        except Exception:
            log.exception("%s failed", route)
            return self.send(route, 500, dict(INTERNAL_ERROR), started)
        return self.send(route, 200, body, started)


PROXY_LIMIT_ENV = "SEQOPS_PROXY_MAX_BODY_BYTES"


def proxy_env(limit: int) -> dict[str, str]:
    """What a cluster's processes need for Serve's HTTP proxy to read no more of a body than
    ``limit`` bytes (read when the proxy starts; see :class:`ProxyBodyLimit`)."""
    return {
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serving.http_edge:proxy_middlewares",
        PROXY_LIMIT_ENV: str(limit),
    }


def proxy_middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the body
    limit of ``SEQOPS_PROXY_MAX_BODY_BYTES``, none when it is unset."""
    value = os.environ.get(PROXY_LIMIT_ENV, "").strip()
    if not value:
        return []
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{PROXY_LIMIT_ENV} must be a positive number of bytes, not {value!r}")
    return [Middleware(ProxyBodyLimit, limit=int(value))]


class ProxyBodyLimit:
    """Bounds how much of a request body Serve's HTTP proxy reads ahead of the replica.

    Serve's proxy reads a body as fast as the client sends it into an unbounded queue that the
    replica pulls from, and goes on reading after the replica has refused the body at its own
    limit (``max_body_bytes``) until the reply is out: megabytes held per oversize request, and
    the batches the replica pulled beyond Ray's inline size pass through the object store,
    whose shared pages then stay resident in the proxy. Here the proxy stops reading once a
    body passes ``limit`` (at least the replica's ``max_body_bytes``): the replica has been
    handed more than its limit by then and refuses it with its own 413, counted in its
    metrics. Should no reply begin within ``grace_s`` (a replica allowing more than the proxy,
    or another application), the proxy answers 413 itself and tells Serve the client has gone,
    which cancels the replica's call."""

    def __init__(self, app: ASGIApp, limit: int, grace_s: float = 2.0) -> None:
        self.app, self.limit, self.grace_s = app, limit, grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size, complete, refused = 0, False, False
        replied = asyncio.Event()

        async def bounded_receive() -> Message:
            nonlocal size, complete, refused
            if complete or size <= self.limit:
                message = await receive()
                if message["type"] == "http.request":
                    size += len(message.get("body", b""))
                    complete = not message.get("more_body", False)
                return message
            if not refused:
                try:
                    async with asyncio.timeout(self.grace_s):
                        await replied.wait()
                except TimeoutError:
                    refused = True
                    error = f"body exceeds the server's limit of {self.limit} bytes"
                    reply = JSONResponse(RequestError(413, error, "body").body(), status_code=413)
                    await reply(scope, receive, send)
            if not refused:  # the reply is under way; Serve cancels this wait once it is out
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send_unless_refused(message: Message) -> None:
            if refused:
                return  # the client has this proxy's 413
            replied.set()
            await send(message)

        await self.app(scope, bounded_receive, send_unless_refused)
