"""Primitives of typed configuration: the error type, value parsers and section building.

Every ``params.yaml`` section is a frozen dataclass validated on construction whose errors
name the dotted key and the bad value (the habit of litgpt's ``args.py``). The sections live
with their owners (``seqcore.schema``, ``seqcore.features``, ``data_checks.config``,
``pipelines/params/``); this module holds what they share.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


class ConfigError(ValueError):
    """A params.yaml value is missing or invalid; the message names the dotted key."""


def fail(key: str, value: Any, why: str) -> ConfigError:
    """The error for ``key`` holding ``value``: ``params: key=value: why``."""
    return ConfigError(f"params: {key}={value!r}: {why}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(key: str, value: Any) -> float:
    """'90s', '5m', '1h', '1d', '2w' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise fail(key, value, "expected a duration such as '5m', '1h', '1d' or seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise fail(key, value, "expected a duration such as '5m', '1h', '1d' or seconds")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise fail(key, value, "a duration must not be negative")
    return seconds


def parse_time(key: str, value: Any) -> datetime:
    """ISO-8601 string (or datetime) -> timezone-aware UTC datetime; naive means UTC."""
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise fail(
                key, value, "expected an ISO-8601 time such as 2025-01-01T00:00:00Z"
            ) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def only_keys(key: str, raw: Mapping[str, Any], cls: type) -> None:
    """Refuse keys of ``raw`` that are not fields of the dataclass ``cls``."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"params: {key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def build(cls: type, key: str, raw: Mapping[str, Any] | None, **nested: Any) -> Any:
    """Construct ``cls`` from a mapping, rejecting unknown keys; ``nested`` overrides fields."""
    if raw is not None and not isinstance(raw, Mapping):
        raise fail(key, raw, "expected a mapping")
    values = dict(raw or {})
    only_keys(key, values, cls)
    values.update(nested)
    try:
        return cls(**values)
    except TypeError as exc:  # e.g. a list where a scalar belongs
        raise ConfigError(f"params: {key}: {exc}") from None


def to_jsonable(obj: Any) -> Any:
    """A config object as plain JSON types (for manifests, reports and MLflow params)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat().replace("+00:00", "Z")
    return obj
