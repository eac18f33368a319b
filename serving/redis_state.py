"""Per-entity streaming state in Redis, shared by every ingress replica (docs/architecture.md
§7): a call is scored where it lands, with no second hop and no affinity router, and a
replica restart loses nobody's state.

Each entity is one hash, ``<prefix>s:<entity>`` = {``seen``: events_seen, ``state``: the
encoded :class:`~serving.stream_state.EntityState` (``serving.state_codec``, no pickle)},
with the time-to-live as its expiry. A write is a compare-and-set on ``seen`` (one Lua script,
atomic in Redis): it succeeds only if the entity still holds the count the writer read, so
two concurrent calls for one entity never both succeed silently; the loser re-reads and
re-scores, or gets 409 (``serving.streaming``).

Why a state is gone is kept beside it: the sorted set ``<prefix>touched`` holds each
entity's last write time. It has no expiry, so the ``volatile-*`` eviction policies never
evict it (only the states, which all have one), and the writes trim it to the last
``MARKER_FACTOR`` time-to-lives (at least a day). So a call after the state expired is a
``reset`` with ``ttl_expired``, and after Redis evicted it under ``maxmemory`` one with
``evicted``, never ``new``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from serving.state_codec import StateDecodeError, decode_state, encode_state
from serving.stream_state import EntityState

PREFIX = "seqops:stream:"
TOUCHED = PREFIX + "touched"
MARKER_FACTOR = 4
"""An entity's last write time is remembered this many time-to-lives (at least a day)."""

# KEYS: the state's hash, the touched set. ARGV: the count read ('' = none), the new count,
# the encoded state, the state's expiry (ms), how long write times are remembered (ms), the
# entity.
_PUT = """
local seen = redis.call('HGET', KEYS[1], 'seen')
if ARGV[1] == '' then
  if seen then return 0 end
elseif seen ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'seen', ARGV[2], 'state', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], ms, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (ms - tonumber(ARGV[5])))
return 1
"""


class StateStoreUnavailable(RuntimeError):
    """The store does not answer; the message names where (never its password)."""


def redacted(url: str) -> str:
    """``host:port/db`` of a Redis URL, for messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}"


def unreachable(url: str, timeout_s: float = 3.0) -> str | None:
    """Why the Redis at ``url`` does not answer a PING now (never with its password), or
    None."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = None
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # one answer now, not redis-py's retries
        )
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        text = str(exc).strip()
        password = urlsplit(url).password
        if password:
            text = text.replace(password, "***")
        first = text.splitlines()[0] if text else ""
        return f"{type(exc).__name__}: {first}".rstrip(": ")
    finally:
        if client is not None:
            client.close()
    return None


class RedisStateStore:
    """The state of every entity, in the Redis at ``url`` (see the module docstring)."""

    def __init__(self, url: str, ttl_s: float, *, timeout_s: float = 2.0) -> None:
        import redis

        self.url, self.where = url, redacted(url)
        self.ttl_s = float(ttl_s)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )
        self._put = self.client.register_script(_PUT)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.evicted = {"ttl": 0, "evicted": 0}

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors as exc:
            raise StateStoreUnavailable(
                f"streaming state store (Redis at {self.where}) unavailable while {what}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip()
            ) from None

    def _key(self, entity: str) -> str:
        return f"{PREFIX}s:{entity}"

    def get(self, entity: str) -> tuple[EntityState | None, str | None]:
        """(state, None) or (None, why it is gone: ``ttl_expired``, ``evicted``,
        ``unreadable_state``, or None for an entity not written within the remembered
        span)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self._key(entity), "state")
        pipe.zscore(TOUCHED, entity)
        pipe.time()
        blob, last, now = self._call("reading an entity's state", pipe.execute)
        if blob is not None:
            try:
                return decode_state(blob), None
            except StateDecodeError:  # not ours, or an older format: start it again
                self.drop(entity, "unreadable_state")
                return None, "unreadable_state"
        if last is None:
            return None, None
        elapsed_ms = now[0] * 1000 + now[1] // 1000 - float(last)
        if elapsed_ms >= self.ttl_s * 1000 - 1:
            self.evicted["ttl"] += 1
            return None, "ttl_expired"
        self.evicted["evicted"] += 1
        return None, "evicted"

    def put(self, entity: str, state: EntityState, expected: int | None) -> bool:
        """Write ``state`` if the entity still holds ``expected`` events (None: no state);
        False when another call wrote first."""
        ttl_ms = max(1, int(self.ttl_s * 1000))
        remember_ms = max(ttl_ms * MARKER_FACTOR, 86_400_000)
        args = ["" if expected is None else str(int(expected)), str(int(state.events_seen)),
                encode_state(state), str(ttl_ms), str(remember_ms), entity]  # fmt: skip
        keys = [self._key(entity), TOUCHED]
        return bool(self._call("writing an entity's state", self._put, keys, args))

    def drop(self, entity: str, reason: str) -> None:
        self._call("dropping an entity's state", self.client.delete, self._key(entity))

    def on_model_change(self) -> None:
        """Nothing to drop: states carry their model version, and a call answered by the new
        version resets them one by one (``model_changed``); other replicas may still serve
        the old version for a moment and keep theirs meanwhile."""

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"store": "redis", "at": self.where, "state_ttl_s": self.ttl_s}
        try:
            memory = self.client.info("memory")
            info.update(
                used_memory=memory.get("used_memory"),
                maxmemory=memory.get("maxmemory"),
                maxmemory_policy=memory.get("maxmemory_policy"),
                entities=self.client.zcard(TOUCHED),  # written within the remembered span
                evicted_here=dict(self.evicted),
            )
        except self._errors as exc:
            info["unavailable"] = f"{type(exc).__name__}: {exc}"
        return info

    def close(self) -> None:
        self.client.close()
