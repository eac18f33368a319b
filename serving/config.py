"""Typed configuration of the online scoring application (docs/architecture.md §7).

Frozen dataclasses, validated on construction with messages that name the field and the bad
value (STYLE habit 3, after litgpt's ``args.py``): which registered model to serve
(:class:`ModelRef`), what a request may hold (:class:`Limits`), how concurrent requests are
grouped (:class:`Batching`), how much per-entity streaming state a replica keeps
(:class:`Streaming`), which versions answer (:class:`Rollout`: traffic split, shadow,
alias polling) and who may call (:class:`Access`). :func:`serving_config` builds them from
the flat ``args`` of a Serve application builder, where ``serve run
serving.app:app_builder key=value`` hands every value over as a string; :func:`apply_user_config` applies a deployment's
``user_config`` on top (Ray Serve docs, "Configure Ray Serve deployments: user_config":
tunables change through ``reconfigure`` without restarting replicas).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from seqcore.config import ConfigError
from seqcore.loading import tracking_uri

ORDER_POLICIES = ("sort", "reject")
AUTH_MODES = ("auto", "required", "off")


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"serving: {key}={value!r}: {why}")


@dataclass(frozen=True)
class ModelRef:
    """A model in the MLflow registry, addressed by alias or by version (never a path)."""

    name: str
    """Registered model name (``register.model_name``)."""
    alias: str | None = "champion"
    """Registry alias such as ``champion``; ignored (set to None) when ``version`` is given."""
    version: int | None = None
    """Registered version number; pins the model instead of following an alias."""
    tracking_uri: str = field(default_factory=tracking_uri)
    """MLflow tracking and registry URI: ``MLFLOW_TRACKING_URI``, else the repository's SQLite."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise _fail("model_name", self.name, "must be a non-empty registered model name")
        if self.version is not None:
            if isinstance(self.version, bool) or not isinstance(self.version, int):
                raise _fail("version", self.version, "expected a registered version number")
            if self.version < 1:
                raise _fail("version", self.version, "registry versions start at 1")
            object.__setattr__(self, "alias", None)
        elif not self.alias or not str(self.alias).strip():
            raise _fail("alias", self.alias, "give an alias (e.g. champion) or a version")
        if not isinstance(self.tracking_uri, str) or not self.tracking_uri:
            raise _fail("tracking_uri", self.tracking_uri, "must be a non-empty MLflow URI")

    @property
    def uri(self) -> str:
        """``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
        if self.version is not None:
            return f"models:/{self.name}/{self.version}"
        return f"models:/{self.name}@{self.alias}"

    def pinned(self, version: int) -> ModelRef:
        """The same model at one version (what an alias resolved to)."""
        return dataclasses.replace(self, version=version)


@dataclass(frozen=True)
class Limits:
    """What one request may hold; enforced by the ingress before the model sees it."""

    max_sequences_per_request: int = 256
    """More sequences in one request are rejected with 422 naming ``sequences``."""
    max_events_per_sequence: int = 4096
    """More events in one sequence are rejected (the model reads the last window anyway)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Larger bodies are rejected with 413 before they are parsed."""
    body_timeout_s: float = 30.0
    """A body not received whole within this many seconds is refused with 408: a client that
    trickles its bytes would otherwise hold a connection and a buffer for as long as it likes."""
    order_policy: str = "sort"
    """``sort``: events of a sequence may come in any order and are ordered by (time, seq),
    exactly like the offline scorer; ``reject``: events not in (time, seq) order get a 422."""

    def __post_init__(self) -> None:
        for name in ("max_sequences_per_request", "max_events_per_sequence", "max_body_bytes"):
            _positive_int(name, getattr(self, name))
        _seconds("body_timeout_s", self.body_timeout_s, low=0.001, high=3600)
        if self.order_policy not in ORDER_POLICIES:
            raise _fail("order_policy", self.order_policy, f"expected one of {ORDER_POLICIES}")


@dataclass(frozen=True)
class Batching:
    """Dynamic batching (``@serve.batch``) of the champion in the ingress, and the challenger."""

    max_batch_size: int = 16
    """Most requests scored in one batch; Serve caps it at ``max_ongoing_requests``."""
    batch_wait_timeout_s: float = 0.001
    """How long the first request of a batch waits for company. Short: under load, requests
    queue while the previous batch runs (one batch at a time), so batches fill anyway; at
    light load every request would pay this wait."""
    max_tokens: int = 16384
    """Padded tokens per forward pass: a batch's sequences are grouped by length under it."""

    def __post_init__(self) -> None:
        _positive_int("max_batch_size", self.max_batch_size)
        _positive_int("max_tokens", self.max_tokens)
        value = self.batch_wait_timeout_s
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail("batch_wait_timeout_s", value, "expected a number of seconds")
        if not math.isfinite(value) or not 0 <= value <= 10:
            raise _fail("batch_wait_timeout_s", value, "must be within [0, 10] seconds")


STREAM_STORES = ("auto", "redis", "memory")
REDIS_URL_ENV = "SEQOPS_REDIS_URL"
EVICTION_POLICIES = ("volatile-lru", "volatile-lfu", "volatile-ttl", "allkeys-lru", "allkeys-lfu")


@dataclass(frozen=True)
class Streaming:
    """Per-entity state of ``POST /v1/stream/{entity_id}`` (docs/architecture.md §7)."""

    stream_store: str = "auto"
    """``redis``: in the Redis at ``redis_url``, read and written by whichever ingress replica
    a call lands on (no second hop; survives replica restarts); ``memory``: in the memory of
    ``StreamHolder`` replicas behind the entity-affinity router (the fallback: a replica
    restart resets its entities); ``auto``: redis when a URL is set, else memory."""
    redis_url: str | None = None
    """``redis://[:password@]host:port/db`` (or ``rediss://``) of any Redis-compatible server;
    default ``$SEQOPS_REDIS_URL``. ``seqops serve`` starts a local server when none is set."""
    redis_max_memory_mb: int = 256
    """``maxmemory`` of a server that seqops starts (set it on your own server)."""
    redis_eviction_policy: str = "volatile-lru"
    """``maxmemory-policy`` of a server that seqops starts; every state key has a TTL, so the
    ``volatile-*`` policies evict only streaming state."""
    stream_conflict_retries: int = 3
    """Times a call re-reads and re-scores when another call for the same entity wrote first
    (compare-and-set on ``events_seen``), before answering 409."""
    max_entities: int = 100_000
    """Memory store: entities whose state one replica keeps; the least recently used is
    evicted beyond it (Redis is bounded by ``maxmemory`` instead)."""
    state_ttl_s: float = 3600.0
    """State untouched this long is dropped; the entity's next call is answered as a reset."""

    def __post_init__(self) -> None:
        if self.stream_store not in STREAM_STORES:
            raise _fail("stream_store", self.stream_store, f"expected one of {STREAM_STORES}")
        url = self.redis_url
        if url is not None and not str(url).startswith(("redis://", "rediss://", "unix://")):
            raise _fail("redis_url", "<hidden>", "expected redis://, rediss:// or unix:// URL")
        if self.redis_eviction_policy not in EVICTION_POLICIES:
            raise _fail(
                "redis_eviction_policy", self.redis_eviction_policy,
                f"expected one of {EVICTION_POLICIES}",
            )  # fmt: skip
        _positive_int("redis_max_memory_mb", self.redis_max_memory_mb)
        if isinstance(self.stream_conflict_retries, bool) or not (
            isinstance(self.stream_conflict_retries, int)
            and 0 <= self.stream_conflict_retries <= 100
        ):
            raise _fail("stream_conflict_retries", self.stream_conflict_retries, "expected 0..100")
        _positive_int("max_entities", self.max_entities)
        _seconds("state_ttl_s", self.state_ttl_s, low=0.001, high=30 * 86_400)

    def store_url(self) -> str | None:
        """The Redis URL the state goes to, or None for the in-memory fallback; ConfigError
        when ``redis`` is asked for without a URL."""
        url = self.redis_url or os.environ.get(REDIS_URL_ENV) or None
        if self.stream_store == "memory":
            return None
        if self.stream_store == "redis" and not url:
            raise _fail(
                "stream_store", "redis",
                f"needs redis_url or ${REDIS_URL_ENV} (seqops serve starts a local server)",
            )  # fmt: skip
        return url


@dataclass(frozen=True)
class Rollout:
    """Which versions answer: champion alone, a traffic split, a shadow challenger."""

    challenger_alias: str | None = None
    """Registry alias of a second version served beside ``model`` (e.g. ``challenger``)."""
    challenger_percent: float = 0.0
    """Share of ``/v1/score`` requests the challenger answers (sticky per entity)."""
    shadow: bool = False
    """Mirror every request the champion answers to the challenger; log, never return, its
    scores."""
    shadow_log: str | None = None
    """JSON-lines file the shadow comparisons are appended to (also logged through Ray)."""
    alias_poll_s: float = 10.0
    """How often replicas re-resolve their alias and swap in a moved version; 0 = never."""

    def __post_init__(self) -> None:
        if self.challenger_alias is not None and not str(self.challenger_alias).strip():
            raise _fail("challenger_alias", self.challenger_alias, "must be a non-empty alias")
        value = self.challenger_percent
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise _fail("challenger_percent", value, "must be a number within [0, 100]")
        if not isinstance(self.shadow, bool):
            raise _fail("shadow", self.shadow, "expected true or false")
        if (value > 0 or self.shadow) and self.challenger_alias is None:
            raise _fail(
                "challenger_alias", None, "required when challenger_percent > 0 or shadow is on"
            )
        _seconds("alias_poll_s", self.alias_poll_s, low=0.0, high=86_400)


@dataclass(frozen=True)
class Access:
    """Who may call the API (``serving.auth``): bearer tokens with scopes."""

    auth: str = "auto"
    """``auto``: tokens are required when any are configured or the server binds anything but
    loopback (then some must be); ``required``: always (some must be configured); ``off``:
    nobody is asked, whatever the bind address (an explicit choice, logged at start)."""
    tokens_file: str | None = None
    """The tokens document (default ``$SEQOPS_API_TOKENS_FILE``, else ``$SEQOPS_API_TOKENS``)."""

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise _fail("auth", self.auth, f"expected one of {AUTH_MODES}")


@dataclass(frozen=True)
class Monitoring:
    """Live statistics of ``/v1/score`` traffic against the model's training profile
    (``serving.live``)."""

    monitor: bool = True
    """Profile every request's encoded sequences after it is answered and export the
    statistics as Prometheus metrics; off costs nothing."""
    monitor_window_requests: int = 1000
    """Requests behind the rolling drift gauges (per replica): the latest this many."""
    monitor_update_s: float = 1.0
    """How often the scored requests queued up since the last pass are profiled together and
    the drift gauges recomputed."""
    traffic_log: str | None = None
    """A folder (local, or an object-store URL pyarrow opens) that each replica appends the
    events it scored to, one Parquet file per pass, in the order requests sent them: the
    served-traffic log ``seqops monitor --events`` reads. Off by default (it holds the
    clients' data)."""

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, bool):
            raise _fail("monitor", self.monitor, "expected true or false")
        _positive_int("monitor_window_requests", self.monitor_window_requests)
        _seconds("monitor_update_s", self.monitor_update_s, low=0.01, high=86_400)
        if self.traffic_log is not None and not str(self.traffic_log).strip():
            raise _fail("traffic_log", self.traffic_log, "a folder, or null for none")


@dataclass(frozen=True)
class ServingConfig:
    """Everything the scoring application needs."""

    model: ModelRef
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)
    streaming: Streaming = field(default_factory=Streaming)
    rollout: Rollout = field(default_factory=Rollout)
    access: Access = field(default_factory=Access)
    monitoring: Monitoring = field(default_factory=Monitoring)

    def with_redis(self, url: str) -> ServingConfig:
        """This config with its streaming state in the Redis at ``url`` (validated as the
        replicas will take it)."""
        streaming = dataclasses.replace(self.streaming, stream_store="redis", redis_url=url)
        return dataclasses.replace(self, streaming=streaming)

    @property
    def challenger(self) -> ModelRef | None:
        """The challenger's reference (same store and name, its own alias), if one is set."""
        alias = self.rollout.challenger_alias
        return None if alias is None else dataclasses.replace(self.model, alias=alias, version=None)


def _seconds(key: str, value: Any, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, value, "expected a number of seconds")
    if not math.isfinite(value) or not low <= value <= high:
        raise _fail(key, value, f"must be within [{low:g}, {high:g}] seconds")


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, value, "expected an integer")
    if value < 1:
        raise _fail(key, value, "must be >= 1")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Values from a command line arrive as strings: convert to the field's type."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("", "none", "null"):
        return None
    try:
        return _bool(text) if kind is bool else kind(text)
    except ValueError:
        raise _fail(key, value, f"expected {kind.__name__}") from None


_KINDS: dict[type, dict[str, type]] = {
    Limits: {
        "max_sequences_per_request": int,
        "max_events_per_sequence": int,
        "max_body_bytes": int,
        "body_timeout_s": float,
        "order_policy": str,
    },
    Batching: {"max_batch_size": int, "batch_wait_timeout_s": float, "max_tokens": int},
    Streaming: {
        "stream_store": str,
        "redis_url": str,
        "redis_max_memory_mb": int,
        "redis_eviction_policy": str,
        "stream_conflict_retries": int,
        "max_entities": int,
        "state_ttl_s": float,
    },
    Rollout: {
        "challenger_alias": str,
        "challenger_percent": float,
        "shadow": bool,
        "shadow_log": str,
        "alias_poll_s": float,
    },
    Access: {"auth": str, "tokens_file": str},
    Monitoring: {
        "monitor": bool,
        "monitor_window_requests": int,
        "monitor_update_s": float,
        "traffic_log": str,
    },
}
MODEL_KEYS = {"model_name": str, "alias": str, "version": int, "tracking_uri": str}


def _section(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    kinds = _KINDS[cls]
    values = {k: _coerce(prefix + k, v, kinds[k]) for k, v in raw.items() if k in kinds}
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("serving: ", f"serving: {prefix}", 1)) from None


def serving_config(args: Mapping[str, Any]) -> ServingConfig:
    """Flat application args (``model_name``, ``alias``, ``version``, ``tracking_uri`` and any
    Limits/Batching field) -> a validated :class:`ServingConfig`."""
    allowed = set(MODEL_KEYS) | {k for kinds in _KINDS.values() for k in kinds}
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ConfigError(
            f"serving: unknown arg(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    if args.get("model_name") in (None, ""):
        raise _fail("model_name", args.get("model_name"), "required (a registered model name)")
    model = {k: _coerce(k, args[k], kind) for k, kind in MODEL_KEYS.items() if k in args}
    ref_args = {
        "name": model.pop("model_name"),
        **{k: v for k, v in model.items() if v is not None},
    }
    return ServingConfig(
        model=ModelRef(**ref_args),
        limits=_section(Limits, args),
        batching=_section(Batching, args),
        streaming=_section(Streaming, args),
        rollout=_section(Rollout, args),
        access=_section(Access, args),
        monitoring=_section(Monitoring, args),
    )


def apply_user_config(current: Any, user_config: Mapping[str, Any] | None) -> Any:
    """``current`` (Limits, Batching or Streaming) updated by a deployment's ``user_config``."""
    cls = type(current)
    (raw,) = split_user_config(user_config, cls)
    merged = {**dataclasses.asdict(current), **raw}
    return _section(cls, merged, prefix="user_config.")


def split_user_config(user_config: Mapping[str, Any] | None, *kinds: type) -> list[dict[str, Any]]:
    """One deployment's ``user_config`` that tunes several sections (the ingress: request
    limits and the champion's batching) -> one dict per section, in ``kinds`` order. A key
    no section knows is an error naming every allowed key."""
    raw = dict(user_config or {})
    allowed = {key for kind in kinds for key in _KINDS[kind]}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        names = "/".join(kind.__name__ for kind in kinds)
        raise ConfigError(
            f"serving: user_config: unknown key(s) {', '.join(unknown)} for {names}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return [{k: v for k, v in raw.items() if k in _KINDS[kind]} for kind in kinds]
