"""Who may call the scoring API: bearer tokens with scopes (docs/architecture.md §7).

A client sends ``Authorization: Bearer <token>``. Tokens come from a YAML or JSON document,
read from the file named by ``tokens_file`` (``SEQOPS_API_TOKENS_FILE``), or from the
``SEQOPS_API_TOKENS`` environment variable itself (how a Kubernetes Secret reaches a pod):

.. code-block:: yaml

    tokens:
      - name: checkout-service      # who; logged, never the token
        scopes: [score]
        sha256: 9f86d081884c7d65...  # hex digest of the token (preferred: no secret at rest)
      - name: on-call
        scopes: [admin]
        token: a-long-random-string  # or the token itself

Scopes: ``score`` (``POST /v1/score``, ``POST /v1/stream/...`` without a reset, the OpenAPI
document) and ``admin`` (everything ``score`` may, plus stream resets and ``GET /v1/models``).
``/healthz`` needs none, so load balancers and Kubernetes probes keep working.

The document is parsed once, where the application is built, so a malformed file or an
unknown scope fails the deployment with a message instead of answering 401 to everyone; the
replicas receive only the digests. Tokens are compared by their SHA-256 digests with
:func:`hmac.compare_digest`, so neither the comparison's timing nor a memory dump of a
replica gives a token away.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seqcore.config import ConfigError

SCOPES = ("score", "admin")
"""``admin`` implies ``score``."""
TOKENS_FILE_ENV = "SEQOPS_API_TOKENS_FILE"
TOKENS_ENV = "SEQOPS_API_TOKENS"
MIN_TOKEN_CHARS = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class AuthError(Exception):
    """A refused call: 401 (no or unknown token) or 403 (a token without the scope)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


@dataclass(frozen=True)
class ApiToken:
    """One client's credential: its name, what it may do, and the digest of its secret."""

    name: str
    scopes: tuple[str, ...]
    sha256: str

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def digest(token: str) -> str:
    """The hex SHA-256 of a token, as a tokens document's ``sha256`` holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, where: str) -> tuple[ApiToken, ...]:
    """A tokens document (YAML or JSON) -> its tokens; every problem names ``where`` and the
    entry."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"auth: {where} is not valid YAML/JSON: {exc}") from None
    entries = raw.get("tokens") if isinstance(raw, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"auth: {where}: expected a non-empty list under 'tokens:'")
    tokens, names = [], set()
    for i, entry in enumerate(entries):
        at = f"auth: {where}: tokens[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: expected a mapping with name, scopes and sha256 or token")
        unknown = sorted(set(entry) - {"name", "scopes", "sha256", "token"})
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(map(str, unknown))}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{at}: 'name' must be a non-empty string")
        if name in names:
            raise ConfigError(f"{at}: the name {name!r} is used twice")
        names.add(name)
        scopes = entry.get("scopes")
        if isinstance(scopes, str):
            scopes = [scopes]
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ConfigError(f"{at} ({name}): 'scopes' must list some of {', '.join(SCOPES)}")
        secret, hashed = entry.get("token"), entry.get("sha256")
        if (secret is None) == (hashed is None):
            raise ConfigError(f"{at} ({name}): give exactly one of 'sha256' or 'token'")
        if secret is not None:
            if not isinstance(secret, str) or len(secret) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"{at} ({name}): 'token' must be a string of at least {MIN_TOKEN_CHARS} "
                    "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
                )
            hashed = digest(secret)
        elif not isinstance(hashed, str) or not _HEX64.fullmatch(hashed.lower()):
            raise ConfigError(f"{at} ({name}): 'sha256' must be 64 hex digits")
        tokens.append(ApiToken(name=name, scopes=tuple(scopes), sha256=hashed.lower()))
    return tuple(tokens)


def load_tokens(tokens_file: str | None = None) -> tuple[ApiToken, ...]:
    """Tokens from ``tokens_file``, else ``$SEQOPS_API_TOKENS_FILE``, else
    ``$SEQOPS_API_TOKENS``; none configured -> ``()``."""
    path = tokens_file or os.environ.get(TOKENS_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"auth: cannot read the tokens file {path}: {exc.strerror}") from None
        return parse_tokens(text, path)
    inline = os.environ.get(TOKENS_ENV)
    if inline:
        return parse_tokens(inline, f"${TOKENS_ENV}")
    return ()


def is_loopback(host: str | None) -> bool:
    """Whether an HTTP bind address is reachable from this machine only."""
    return host is not None and (host in LOOPBACK_HOSTS or host.startswith("127."))


def resolve_auth(mode: str, tokens: tuple[ApiToken, ...], host: str | None) -> bool:
    """Whether calls must carry a token. ``required``: yes, and tokens must exist; ``off``:
    no; ``auto``: yes when tokens are configured or the server binds anything but loopback
    (``host`` None means not known here: only configured tokens turn it on)."""
    if mode == "off":
        return False
    needed = mode == "required" or bool(tokens) or (host is not None and not is_loopback(host))
    if needed and not tokens:
        why = "auth=required" if mode == "required" else f"the server binds {host}"
        raise ConfigError(
            f"auth: {why}, so every route but /healthz needs a bearer token, and none is "
            f"configured: set {TOKENS_FILE_ENV} to a tokens file (or {TOKENS_ENV} to its "
            "content, or pass tokens_file); see serving/auth.py for the format. To serve "
            "without authentication, bind 127.0.0.1 or pass auth=off explicitly"
        )
    return needed


class Authenticator:
    """Checks a request's ``Authorization`` header for a scope."""

    def __init__(self, tokens: tuple[ApiToken, ...], enabled: bool) -> None:
        self.tokens, self.enabled = tokens, enabled

    def check(self, authorization: str | None, scope: str) -> str | None:
        """The caller's token name, or :class:`AuthError`. None when auth is off."""
        if not self.enabled:
            return None
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise AuthError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        presented = digest(credential.strip())
        match = None
        for token in self.tokens:  # every digest compared: the time does not say which matched
            if hmac.compare_digest(presented, token.sha256):
                match = token
        if match is None:
            raise AuthError(401, "invalid bearer token")
        if not match.allows(scope):
            raise AuthError(
                403, f"token {match.name!r} lacks the {scope!r} scope (it has: "
                f"{', '.join(match.scopes)})"
            )  # fmt: skip
        return match.name

    def describe(self) -> dict[str, Any]:
        """For ``/v1/models``: whether auth is on and which names hold which scopes."""
        return {
            "enabled": self.enabled,
            "tokens": [{"name": t.name, "scopes": list(t.scopes)} for t in self.tokens],
        }
