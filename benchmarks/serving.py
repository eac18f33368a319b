"""Online serving: HTTP overhead, dynamic batching, and streaming against full re-scoring.

The model is params.yaml's default architecture (LSTM, 2 layers, hidden 64, classify; seeded,
untrained weights, which score at the same speed), logged with the train stage's own code into
a temporary MLflow store and promoted to ``champion`` (``benchmarks.batch_scoring``'s
``build_registered_model``). One local Ray cluster runs two copies of the real application
(``serving.app.build_app``) side by side: ``/on`` with serving/serve_config.yaml's ScoringAPI
``user_config`` (``max_batch_size`` 16, 1 ms wait) and ``/off`` the same with
``max_batch_size`` 1. All HTTP load comes from a **second process** (this script with
``--client``) over loopback, with one keep-alive connection per client thread.

1. **Light load**: one request at a time, each one sequence (real entities' last window of
   events), ``/v1/score`` latency p50/p99 against calling the same loaded model in-process
   (``SequenceScorer.score`` on the same events as an Arrow table) in this process; the same
   bodies also go to a no-op Serve application, the proxy's own floor on this machine. **Target:
   p50 overhead (HTTP p50 - in-process p50) at most 5 ms.**
2. **Saturation**: ``--concurrency`` client threads sending without pause for ``--seconds``,
   against ``/on`` and ``/off`` in alternating rounds; requests per second. **Target: batching
   on / off at least 3x.**
3. **Direct ingress**: 1 and 2 again (with the in-process arm beside them) on a second local
   cluster started with ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, where each ingress replica
   answers HTTP on its own port without the proxy (README, "Low-latency mode"); and the
   model alone, 16 requests one by one against one batch: what batching can gain at most.
4. **High-throughput mode**: 1, 2 and 5 again on a third local cluster started as
   ``serve --high-throughput`` starts one (``RAY_SERVE_ENABLE_HA_PROXY=1``,
   ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``): Ray's HAProxy in place of Serve's Python proxy on
   the one HTTP port, in front of direct-ingress, throughput-optimized replicas.
5. **Streaming**, in every phase, for each state design (``--designs``): ``holder``, the
   ``/on`` application, whose ingress hands each stream call to the ``StreamHolder`` replica
   that owns the entity (``serving.routing``); ``redis``, a third copy of ``/on`` under
   ``/redis`` deployed with ``redis_url`` (a :class:`serving.redis_server.LocalRedis` this
   script starts), whose ingress reads and writes the entity's state in Redis itself.
   An entity with ``--history`` events streamed so far (reset each block of steps); one new
   event at a time through ``/v1/stream/{entity}`` (each reply checked: ``continued``, at the
   right count) against re-scoring the whole history through ``/v1/score``, and against a
   ``/v1/score`` of one short sequence (``--short-events``), the designs alternating block by
   block. **Targets: stream / re-score at least 5x over HTTP; a stream call's p50 within 2 ms
   of the short ``/v1/score``'s.** The same pair in-process (``StreamingScorer.update``
   against ``SequenceScorer.score`` of the whole history, which for an RNN is what the stream
   carries). **Target: at least 10x.** (``/v1/score`` reads only the model's last window of
   the history, so the HTTP ratio understates what a full re-score costs.)
6. **Stream load** (high-throughput phase): ``--concurrency`` client threads streaming one
   new event per call for a random one of ``--entities`` entities (each thread owns every
   ``concurrency``-th entity and stamps its events with the wall clock, so every entity's
   events arrive in time order, one call at a time), first every entity once (its first
   call), then ``--seconds`` per round, the designs alternating; stream calls per second,
   Redis against StreamHolder (reported; no target).
7. **Live profile** (``--parts monitor``): light load, one request at a time, on ``/on``
   (the shipped config: each replica profiles what it scored, ``serving.live``) and on
   ``/plain``, the same with ``monitor: false``, the two alternating round by round; and
   the profiling work per request in this process (it runs on the replica's own thread,
   after the answer). **Target: p50 with the profile - without at most 0.2 ms.**

The in-process arms use one torch thread, as the replicas do (Ray sets ``OMP_NUM_THREADS=1``
in them). ``--phases`` and ``--parts`` pick what runs, for a shorter run.

    .venv/bin/python benchmarks/serving.py [--quick] [--rounds 3] [--seconds 10]
    .venv/bin/python benchmarks/serving.py --phases high-throughput --parts stream
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from benchmarks._common import median, print_table, verdict, write_result

if TYPE_CHECKING:  # torch loads only in the processes that score
    from seqcore.scorer import SequenceScorer

TARGETS = {
    "overhead_ms": 5.0,
    "batching": 3.0,
    "streaming": 10.0,  # in-process
    "streaming_http": 5.0,  # over HTTP, high-throughput mode (the target)
    "stream_gap_ms": 2.0,  # stream call p50 - short /v1/score p50
    "monitor_ms": 0.2,  # /v1/score p50 with the live profile - without, light load
}
PHASES = ("proxy", "direct", "high-throughput")
PARTS = ("score", "stream", "stream-load", "monitor")
DESIGNS = {"holder": "on", "redis": "redis"}
"""Streaming state design -> the application (route prefix) that serves it."""
DESIGN_NAMES = {"holder": "StreamHolder", "redis": "Redis"}
STEPS_PER_RESET = 10
"""Stream calls measured after each reset to ``--history`` events."""


# --------------------------------------------------------------------------- the client


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _iso_us(us: int) -> str:
    """Microseconds since the epoch as an ISO time (exact, no float rounding)."""
    return (datetime.fromtimestamp(us // 1_000_000, UTC) + timedelta(microseconds=us % 1_000_000)).isoformat()  # fmt: skip


def client_main(args: argparse.Namespace) -> int:
    """The load process: POST bodies from a JSON file, print latencies as JSON.

    With ``--stream-entities N``, stream calls instead: each thread owns the entities ``k, k +
    concurrency, ...`` of ``N``, and each call sends one event (a template from the file, see
    :func:`stream_events_file`) stamped with the wall clock, so every entity's events arrive
    in time order, one call at a time. Without ``--seconds`` every thread calls each of its
    entities once (in order); with it, random ones of its entities until the time is up."""
    spec = json.loads(Path(args.bodies).read_text())
    entities = int(args.stream_entities or 0)
    bodies = [] if entities else [json.dumps(b).encode() for b in spec]
    host, port = args.url.split("//", 1)[1].split(":")
    latencies: list[float] = []
    errors = [0]
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.perf_counter() + args.seconds if args.seconds else None

    def stream_calls(index: int) -> Any:
        """(path, body) of each stream call of thread ``index``."""
        owned = range(index, entities, args.concurrency)
        rng = random.Random(index)
        last: dict[int, int] = {}
        n = 0
        while owned:
            if stop_at is None and n >= len(owned):
                return
            e = owned[n] if stop_at is None else owned[rng.randrange(len(owned))]
            stamp = max(time.time_ns() // 1000, last.get(e, 0) + 1)
            last[e] = stamp
            event = dict(spec["events"][(e + n) % len(spec["events"])])
            event[spec["time"]] = _iso_us(stamp)
            if spec["seq"]:
                event[spec["seq"]] = n  # the thread's count: increasing for each entity too
            n += 1
            path = args.path.replace("{entity}", f"{args.prefix}{e}")
            yield path, json.dumps({"events": [event]}).encode()

    def score_calls(index: int) -> Any:
        i = index
        while stop_at is not None or i < len(bodies):
            yield args.path.replace("{i}", str(i)), bodies[i % len(bodies)]
            i += args.concurrency

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        mine: list[float] = []
        seen: Counter[str] = Counter()
        for path, body in stream_calls(index) if entities else score_calls(index):
            if stop_at is not None and time.perf_counter() >= stop_at:
                break
            started = time.perf_counter()
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                seen["error"] += 1
            elif entities:  # what the state was: new, continued, reset
                seen[json.loads(text)["score"]["state"]["status"]] += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += seen.pop("error", 0)
            statuses.update(seen)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    result = {"latencies": latencies, "errors": errors[0], "wall_s": wall, "statuses": statuses}
    print(json.dumps(result))
    return 0


def load(
    url: str,
    path: str,
    bodies: Path,
    concurrency: int = 1,
    seconds: float = 0.0,
    entities: int = 0,
    prefix: str = "e-",
) -> dict[str, Any]:
    """Run the client in a second process; requests/s and latency percentiles (ms).
    ``entities``: stream calls (see :func:`client_main`), with the reply's state statuses."""
    cmd = [sys.executable, __file__, "--client", "--url", url, "--path", path,
           "--bodies", str(bodies), "--concurrency", str(concurrency), "--seconds", str(seconds)]  # fmt: skip
    if entities:
        cmd += ["--stream-entities", str(entities), "--prefix", prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    lat = [x * 1000 for x in result["latencies"]]
    return {
        "requests": len(lat),
        "errors": result["errors"],
        "rps": len(lat) / result["wall_s"],
        "p50_ms": _percentile(lat, 50),
        "p99_ms": _percentile(lat, 99),
        **({"statuses": result["statuses"]} if entities else {}),
    }


# --------------------------------------------------------------------------- inputs


def _events_json(table: pa.Table, entity: str) -> list[dict[str, Any]]:
    rows = table.drop_columns([entity]).to_pylist()
    for row in rows:
        row["event_time"] = row["event_time"].isoformat()
    return rows


def request_inputs(
    events: pa.Table, schema: Any, window: int, n: int
) -> tuple[list[dict], list[pa.Table]]:
    """``n`` one-sequence requests: real entities' last ``window`` events (client columns)."""
    columns = [schema.entity, schema.time, *([schema.seq] if schema.seq else []),
               *schema.numeric, *schema.categorical]  # fmt: skip
    table = events.select(columns)
    strings = [
        f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f for f in table.schema
    ]
    table = table.cast(pa.schema(strings))
    entities = pc.unique(table[schema.entity]).to_pylist()[:n]
    bodies, tables = [], []
    for entity in entities:
        mine = table.filter(pc.equal(table[schema.entity], entity))
        mine = mine.sort_by([(schema.time, "ascending")])
        mine = mine.slice(max(0, mine.num_rows - window))
        bodies.append(
            {"sequences": [{"entity": str(entity), "events": _events_json(mine, schema.entity)}]}
        )
        tables.append(mine)
    return bodies, tables


def long_history(events: pa.Table, schema: Any, length: int) -> pa.Table:
    """One entity with ``length + 1`` events: real events of many entities, one after another
    in time (1 minute apart), under one key."""
    table = events.slice(0, length + 1)
    start = np.datetime64("2025-01-01T00:00:00", "us").astype(np.int64)
    times = pa.array(start + np.arange(table.num_rows, dtype=np.int64) * 60_000_000,
                     pa.timestamp("us", "UTC"))  # fmt: skip
    table = table.set_column(table.schema.get_field_index(schema.time), schema.time, times)
    if schema.seq:
        seq = pa.array(np.arange(table.num_rows, dtype=np.int64))
        table = table.set_column(table.schema.get_field_index(schema.seq), schema.seq, seq)
    key = pa.array(["long-history"] * table.num_rows)
    table = table.set_column(table.schema.get_field_index(schema.entity), schema.entity, key)
    columns = [schema.entity, schema.time, *([schema.seq] if schema.seq else []),
               *schema.numeric, *schema.categorical]  # fmt: skip
    table = table.select(columns)
    strings = [
        f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f for f in table.schema
    ]
    return table.cast(pa.schema(strings))


@dataclass(frozen=True)
class Streams:
    """The streaming inputs: one entity's ``history`` (``--history`` + 1 events, client
    columns) split into ``past`` and its last event ``new``; the stream-load templates."""

    past: pa.Table
    new: pa.Table
    history: pa.Table
    schema: Any
    short_events: int
    load_file: Path


def stepped_events(new: pa.Table, schema: Any, steps: int) -> list[dict[str, Any]]:
    """``steps`` events following ``past`` in order: ``new``, then copies of it one minute
    (and one seq) apart."""
    (row,) = new.drop_columns([schema.entity]).to_pylist()
    events = []
    for k in range(steps):
        event = dict(row)
        event[schema.time] = (row[schema.time] + timedelta(minutes=k)).isoformat()
        if schema.seq:
            event[schema.seq] = row[schema.seq] + k
        events.append(event)
    return events


def stream_events_file(history: pa.Table, schema: Any, path: Path) -> Path:
    """The stream-load client's input (:func:`client_main`): real events (their times and
    seqs are replaced per call) and the column names to stamp."""
    events = _events_json(history.slice(0, 512), schema.entity)
    path.write_text(json.dumps({"events": events, "time": schema.time, "seq": schema.seq}))
    return path


# --------------------------------------------------------------------------- the server


def start_apps(
    model: dict[str, Any],
    port: int,
    arms: tuple[str, ...] = ("on", "off", "noop"),
    redis_url: str | None = None,
) -> None:
    """The real application once per arm under ``/<arm>``: ``on``, the shipped user_config
    with its streaming state in ``StreamHolder``; ``off``, the same with ``max_batch_size`` 1;
    ``plain``, ``on`` without the live profile (``monitor: false``);
    ``redis``, ``on`` with its streaming state in the Redis at ``redis_url``; and ``noop``, the
    no-op application."""
    from ray import serve

    from serving.app import build_app
    from serving.cli import DEFAULT_CONFIG, deployment_options, load_serve_config
    from serving.config import serving_config

    shipped = deployment_options(load_serve_config(DEFAULT_CONFIG)["applications"][0])
    user_config = shipped["ScoringAPI"]["user_config"]  # the shipped limits and batching
    # Scheduling labels only (nothing is pinned): 2 x 0.6 + 0.5 + 0.2 for the no-op app fits
    # 2 CPUs.
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for name in arms:
        if name == "noop":
            serve.run(noop_app(), name="bench-noop", route_prefix="/noop")
            continue
        batch = 1 if name == "off" else user_config["max_batch_size"]
        store = {"redis_url": redis_url} if name == "redis" else {"stream_store": "memory"}
        if name == "redis" and not redis_url:
            raise ValueError("start_apps: the redis arm needs a redis_url")
        config = serving_config(
            {**user_config, "model_name": model["name"], "tracking_uri": model["tracking_uri"],
             "max_batch_size": batch, "alias_poll_s": 0, "max_events_per_sequence": 4096,
             "monitor": name != "plain", **store}
        )  # fmt: skip
        options = {
            "ScoringAPI": {"ray_actor_options": {"num_cpus": 0.5},
                           "user_config": {**user_config, "max_batch_size": batch}},
            "StreamHolder": {"ray_actor_options": {"num_cpus": 0.1}},
        }  # fmt: skip
        serve.run(build_app(config, options), name=f"bench-{name}", route_prefix=f"/{name}")


def noop_app() -> Any:
    """The floor: a FastAPI ingress that reads the same body and answers ``{}`` (proxy + one
    replica, no model, no second hop)."""
    from fastapi import FastAPI, Request
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.2})
    @serve.ingress(api)
    class Noop:
        @api.get("/healthz")
        async def healthz(self) -> dict:  # found by serving.cli.direct_ports
            return {}

        async def score(self, request: Any) -> dict:
            await request.body()
            return {}

        # The class, not the string this module's postponed annotations leave: FastAPI
        # cannot resolve a local import, would take ``request`` for a query parameter and
        # answer every call 422 without reading the body (what sessions 2-3 measured).
        score.__annotations__["request"] = Request
        score = api.post("/v1/score")(score)

    return Noop.bind()  # type: ignore[attr-defined]


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive loopback ports that are free now."""
    rng = np.random.default_rng()
    for _ in range(100):
        low = int(rng.integers(20_000, 29_000))
        try:
            for p in range(low, low + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return low
    raise RuntimeError(f"no {n} consecutive free loopback ports")


def measure_phase(
    url: dict[str, str], bodies: Path, scorer: SequenceScorer, tables: list[pa.Table], args: Any
) -> dict[str, Any]:
    """One phase's rounds against the applications at ``url[app]``: the in-process arm, light
    load on ``/on`` and on the no-op app, and saturation of ``/on`` and ``/off`` in alternating
    order."""
    for arm in ("on", "off"):
        load(url[arm], f"/{arm}/v1/score", bodies, 4, 1.0)  # warm up
    out: dict[str, Any] = {"light": [], "inprocess": [], "floor": [], "sat": {"on": [], "off": []}}
    for r in range(args.rounds):
        out["inprocess"].append(inprocess_latency(scorer, tables, args.requests))
        out["light"].append(load(url["on"], "/on/v1/score", bodies))
        out["floor"].append(load(url["noop"], "/noop/v1/score", bodies))
        for arm in ("on", "off") if r % 2 == 0 else ("off", "on"):
            out["sat"][arm].append(
                load(url[arm], f"/{arm}/v1/score", bodies, args.concurrency, args.seconds)
            )
    return out


def monitor_cost(url: dict[str, str], bodies: Path, args: Any) -> dict[str, list[dict]]:
    """Light load with the live profile (``/on``) and without (``/plain``), alternating."""
    for arm in ("on", "plain"):
        load(url[arm], f"/{arm}/v1/score", bodies, 4, 1.0)  # warm up
    out: dict[str, list[dict]] = {"on": [], "plain": []}
    for r in range(args.rounds * 2):
        for arm in ("on", "plain") if r % 2 == 0 else ("plain", "on"):
            out[arm].append(load(url[arm], f"/{arm}/v1/score", bodies))
    return out


def monitor_inprocess(
    scorer: SequenceScorer, tables: list[pa.Table], rounds: int
) -> dict[str, float]:
    """The live profile's work (ms) per light-load request, done here synchronously: in a
    pass of its own (a replica whose requests come more than ``monitor_update_s`` apart) and
    in one pass over all the light-load requests (what a busy replica's thread does)."""
    from seqcore.encoding import table_columns
    from seqcore.profile import scores_of
    from serving.live import LiveMonitor, Scored

    monitor = LiveMonitor(scorer, window_requests=1000, update_s=3600)
    monitor.stop()  # its thread: the work is timed here, on this one
    requests = []
    for table in tables:
        columns = table_columns(table, scorer.schema, scorer.spec)
        sequences = scorer.encode(columns)
        scores = scores_of(scorer.config.task, scorer.score_encoded(sequences)[1])
        requests.append(Scored(columns, sequences, scores, scorer, 1))
    alone, together = [], []
    for _ in range(rounds):
        for request in requests:
            started = time.perf_counter()
            monitor._record([request])
            alone.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        monitor._record(requests)
        together.append((time.perf_counter() - started) * 1000 / len(requests))
    return {"alone_ms": _percentile(alone, 50), "pass_ms": median(together),
            "pass_requests": len(requests)}  # fmt: skip


def cluster_phase(
    mode: str,
    model: dict[str, Any],
    bodies: Path,
    scorer: SequenceScorer,
    tables: list[pa.Table],
    streams: Streams,
    args: Any,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """One local cluster (``mode``: one of :data:`PHASES`) and what ``args.parts`` asks of it.

    ``proxy``: Serve's Python proxy on one port. ``direct``: Serve's direct ingress
    (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``; README, "Low-latency mode"): each ingress replica
    answers HTTP on a port of its own, without the proxy's hop and its CPU per request.
    ``high-throughput``: the cluster of ``serve --high-throughput``, measured through HAProxy
    on the one HTTP port. The in-process arm runs again beside each."""
    import ray
    from ray import serve

    from serving.cli import DIRECT_PORTS, direct_ingress_env, direct_ports, high_throughput_env

    env: dict[str, str] = {}
    low = 0
    if mode != "proxy":
        low = free_ports(DIRECT_PORTS)
        # What ``serve --direct-ingress``/``--high-throughput`` sets; a benchmark shuts down
        # at once, without draining, and keeps HAProxy's stats and metrics off ports another
        # may hold.
        high = mode == "high-throughput"
        env = {**(high_throughput_env if high else direct_ingress_env)(low),
               "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}  # fmt: skip
        if high:
            stats = free_ports(2)
            env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(stats)
            env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(stats + 1)
    designs = {d: DESIGNS[d] for d in args.designs}
    if redis_url is None:
        designs.pop("redis", None)
    streaming = bool({"stream", "stream-load"} & set(args.parts) and designs)
    arms = ["on", "off", "noop"] if "score" in args.parts else []
    arms += [arm for arm in ("on", "plain") if "monitor" in args.parts and arm not in arms]
    arms += [app for app in designs.values() if streaming and app not in arms]
    if redis_url is not None and "redis" in arms:
        import redis

        client = redis.Redis.from_url(redis_url)
        client.flushdb()  # every phase starts with no state in either design
        client.close()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the cluster's processes inherit them from this one
    try:
        _init_ray()
        try:
            port = free_ports(1)
            start_apps(model, port, tuple(arms), redis_url)
            url = {}
            for app in arms:
                if mode == "proxy":
                    url[app] = f"http://127.0.0.1:{port}"
                    continue
                ports = direct_ports("127.0.0.1", low, f"/{app}")
                if not ports:
                    raise RuntimeError(f"direct ingress: /{app} answered on no port from {low}")
                # high-throughput: through HAProxy on the one port, to every replica
                url[app] = f"http://127.0.0.1:{ports[0] if mode == 'direct' else port}"
            out: dict[str, Any] = {}
            if "score" in args.parts:
                out.update(measure_phase(url, bodies, scorer, tables, args))
            if "monitor" in args.parts:
                out["monitor"] = monitor_cost(url, bodies, args)
            if "stream" in args.parts and designs:
                out["streams"] = http_streaming(
                    {d: (url[app], app) for d, app in designs.items()}, streams, args.rounds
                )
            if "stream-load" in args.parts and designs and mode == "high-throughput":
                out["stream_load"] = stream_load(
                    {d: (url[app], app) for d, app in designs.items()}, streams.load_file, args
                )
            return out
        finally:
            serve.shutdown()
            ray.shutdown()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def http_streaming(
    targets: dict[str, tuple[str, str]], streams: Streams, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Streaming over HTTP (ms) for each design (``targets``: design -> (base URL, route
    prefix)): the entity reset to ``past``, then :data:`STEPS_PER_RESET` calls of one new
    event each (every reply checked: ``continued``, at the right count), each followed by a
    re-score of the whole history and a ``/v1/score`` of the history's last
    ``short_events`` events (one short sequence); the designs alternate block by block."""
    schema = streams.schema
    n_past = streams.past.num_rows
    reset_body = {"events": _events_json(streams.past, schema.entity), "reset": True}
    steps = [{"events": [e]} for e in stepped_events(streams.new, schema, STEPS_PER_RESET)]
    full = _events_json(streams.history, schema.entity)
    full_body = {"sequences": [{"entity": "long-history", "events": full}]}
    short_body = {"sequences": [{"entity": "short", "events": full[-streams.short_events :]}]}
    conns = {}
    for design, (url, _) in targets.items():
        host, port = url.split("//", 1)[1].split(":")
        conns[design] = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(design: str, path: str, body: dict) -> tuple[float, bytes]:
        data = json.dumps(body).encode()
        conn = conns[design]
        started = time.perf_counter()
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status == 200, f"{design} {path}: {response.status} {text[:300]!r}"
        return elapsed, text

    out: dict[str, dict[str, list[float]]] = {
        d: {"stream_ms": [], "rescore_ms": [], "short_ms": []} for d in targets
    }
    try:
        for block in range(max(4, rounds * 2)):
            order = list(targets) if block % 2 == 0 else list(reversed(targets))
            for design in order:
                app = targets[design][1]
                stream_path = f"/{app}/v1/stream/long-history"
                post(design, stream_path, reset_body)
                for k, step in enumerate(steps):
                    elapsed, text = post(design, stream_path, step)
                    state = json.loads(text)["score"]["state"]
                    assert state["status"] == "continued", state
                    assert state["events_seen"] == n_past + k + 1, state
                    out[design]["stream_ms"].append(elapsed)
                    out[design]["rescore_ms"].append(post(design, f"/{app}/v1/score", full_body)[0])
                    out[design]["short_ms"].append(post(design, f"/{app}/v1/score", short_body)[0])
    finally:
        for conn in conns.values():
            conn.close()
    return out


def stream_load(
    targets: dict[str, tuple[str, str]], events_file: Path, args: Any
) -> dict[str, dict[str, Any]]:
    """Stream calls at ``args.concurrency`` clients over ``args.entities`` entities, per design
    (``targets`` as in :func:`http_streaming`): every entity's first call (each once), then
    ``args.rounds`` rounds of ``args.seconds`` with the designs alternating."""
    out: dict[str, dict[str, Any]] = {d: {"first": None, "rounds": []} for d in targets}
    for design, (url, app) in targets.items():
        out[design]["first"] = load(url, f"/{app}/v1/stream/{{entity}}", events_file,
                                    args.concurrency, 0.0, args.entities)  # fmt: skip
    for r in range(args.rounds):
        for design in list(targets) if r % 2 == 0 else list(reversed(targets)):
            url, app = targets[design]
            out[design]["rounds"].append(
                load(url, f"/{app}/v1/stream/{{entity}}", events_file,
                     args.concurrency, args.seconds, args.entities)
            )  # fmt: skip
    return out


def inprocess_batching(
    scorer: SequenceScorer, tables: list[pa.Table], rounds: int
) -> dict[str, float]:
    """The model's own gain from batching: 16 one-sequence requests scored one by one
    against the same 16 in one call (ms per request)."""
    group = tables[:16]
    together = pa.concat_tables(group)
    alone, batched = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for table in group:
            scorer.score(table)
        alone.append((time.perf_counter() - started) * 1000 / len(group))
        started = time.perf_counter()
        scorer.score(together)
        batched.append((time.perf_counter() - started) * 1000 / len(group))
    return {"alone_ms": median(alone), "batched_ms": median(batched)}


def _init_ray() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})  # fmt: skip


def inprocess_latency(scorer: SequenceScorer, tables: list[pa.Table], n: int) -> dict[str, float]:
    lat = []
    for i in range(n):
        table = tables[i % len(tables)]
        started = time.perf_counter()
        scorer.score(table)
        lat.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": _percentile(lat, 50), "p99_ms": _percentile(lat, 99)}


def streaming_inprocess(
    scorer: SequenceScorer, history: pa.Table, rounds: int, redis_url: str | None = None
) -> dict[str, float]:
    """One event streamed after ``history[:-1]`` against re-scoring ``history``, in this
    process (ms, medians); with ``redis_url`` the same stream call again with the state in
    that Redis (``RedisStateStore``: one read, one compare-and-set write), alternating."""
    from serving.stream_state import StateStore
    from serving.streaming import StreamingScorer

    streamers = {"stream_ms": StreamingScorer(scorer, "bench", StateStore(10, 3600))}
    if redis_url is not None:
        from serving.redis_state import RedisStateStore

        store = RedisStateStore(redis_url, 3600)
        streamers["stream_redis_ms"] = StreamingScorer(scorer, "bench", store)
    # As the ingress or a StreamHolder receives them: columns, validated from the request.
    columns = streamers["stream_ms"].columns
    past = columns(history.slice(0, history.num_rows - 1))
    new = columns(history.slice(history.num_rows - 1))
    times: dict[str, list[float]] = {key: [] for key in [*streamers, "rescore_ms"]}
    for _ in range(rounds):
        for key, streamer in streamers.items():
            streamer.update("inprocess", past, reset=True)
            started = time.perf_counter()
            streamer.update("inprocess", new)
            times[key].append(time.perf_counter() - started)
        started = time.perf_counter()
        streamers["stream_ms"].reference(history)
        times["rescore_ms"].append(time.perf_counter() - started)
    if redis_url is not None:
        store.close()
    return {key: median(values) * 1000 for key, values in times.items()}


def phase_table(
    name: str, phase: dict[str, Any], args: Any
) -> tuple[list[list[str]], dict[str, Any]]:
    """One phase's rows (light load against in-process and the no-op floor, saturation with
    batching on and off, streaming over HTTP and stream load where measured) and its
    figures."""
    rows: list[list[str]] = []
    out: dict[str, Any] = {}
    if "light" in phase:
        keys = ("light", "inprocess", "floor")
        p50 = {key: median(x["p50_ms"] for x in phase[key]) for key in keys}
        p99 = {key: median(x["p99_ms"] for x in phase[key]) for key in keys}
        overhead = p50["light"] - p50["inprocess"]
        sat = phase["sat"]
        ratios = [on["rps"] / off["rps"] for on, off in zip(sat["on"], sat["off"], strict=True)]
        out.update(overhead_ms=overhead, batching_ratio=median(ratios))
        rows += [
            *[[f"{name}: {label} p50 / p99 (ms)", f"{p50[key]:.2f} / {p99[key]:.2f}", ""]
              for label, key in (("/v1/score, light load", "light"), ("in-process", "inprocess"),
                                 ("no-op Serve app, the floor", "floor"))],
            [f"{name}: p50 overhead (ms)", f"{overhead:.2f}",
             f"{verdict(overhead <= TARGETS['overhead_ms'])} (<= {TARGETS['overhead_ms']:g} ms)"],
            [f"{name}, {args.concurrency} clients: batching on / off req/s",
             f"{median(x['rps'] for x in sat['on']):.0f} / "
             f"{median(x['rps'] for x in sat['off']):.0f}", ""],
            [f"{name}: batching on / off",
             f"{out['batching_ratio']:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
             f"{verdict(out['batching_ratio'] >= TARGETS['batching'])} "
             f"(>= {TARGETS['batching']:g}x)"],
        ]  # fmt: skip
    for design, figures in phase.get("streams", {}).items():
        label = f"{name}, {DESIGN_NAMES[design]}"
        stream, rescore = median(figures["stream_ms"]), median(figures["rescore_ms"])
        short = median(figures["short_ms"])
        ratio, gap = rescore / stream, stream - short
        out[f"streaming_http_{design}"] = ratio
        out[f"stream_gap_ms_{design}"] = gap
        rows += [
            [f"{label}: stream 1 event at history {args.history} / re-score it, HTTP p50 (ms)",
             f"{stream:.2f} / {rescore:.2f}: {ratio:.1f}x",
             f"{verdict(ratio >= TARGETS['streaming_http'])} "
             f"(>= {TARGETS['streaming_http']:g}x)"],
            [f"{label}: stream call / /v1/score of {args.short_events} events, p50 (ms)",
             f"{stream:.2f} / {short:.2f}: {gap:+.2f} ms",
             f"{verdict(gap <= TARGETS['stream_gap_ms'])} "
             f"(<= +{TARGETS['stream_gap_ms']:g} ms)"],
        ]  # fmt: skip
    if "monitor" in phase:
        on = median(x["p50_ms"] for x in phase["monitor"]["on"])
        plain = median(x["p50_ms"] for x in phase["monitor"]["plain"])
        diffs = [a["p50_ms"] - b["p50_ms"]
                 for a, b in zip(phase["monitor"]["on"], phase["monitor"]["plain"], strict=True)]  # fmt: skip
        out["monitor_ms"] = median(diffs)
        rows.append(
            [f"{name}: /v1/score p50 with the live profile / without (ms)",
             f"{on:.2f} / {plain:.2f}: {out['monitor_ms']:+.2f} "
             f"({min(diffs):+.2f} to {max(diffs):+.2f})",
             f"{verdict(out['monitor_ms'] <= TARGETS['monitor_ms'])} "
             f"(<= +{TARGETS['monitor_ms']:g} ms)"]
        )  # fmt: skip
    loads = phase.get("stream_load", {})
    for design, figures in loads.items():
        first, rounds = figures["first"], figures["rounds"]
        rows += [
            [f"{name}, {DESIGN_NAMES[design]}: stream calls/s, {args.concurrency} clients over "
             f"{args.entities} entities (p50 / p99 ms)",
             f"{median(x['rps'] for x in rounds):.0f} "
             f"({median(x['p50_ms'] for x in rounds):.1f} / "
             f"{median(x['p99_ms'] for x in rounds):.1f})", ""],
            [f"{name}, {DESIGN_NAMES[design]}: first call of every entity, calls/s",
             f"{first['rps']:.0f}", ""],
        ]  # fmt: skip
    if {"holder", "redis"} <= set(loads):
        pairs = zip(loads["redis"]["rounds"], loads["holder"]["rounds"], strict=True)
        ratios = [r["rps"] / h["rps"] for r, h in pairs]
        out["stream_load_ratio"] = median(ratios)
        rows.append(
            [f"{name}: stream calls/s, Redis / StreamHolder",
             f"{median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})", "(reported)"]
        )  # fmt: skip
    return rows, out


def _choices(value: str, allowed: tuple[str, ...] | list[str]) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"{unknown}: expected some of {', '.join(allowed)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--stream-entities", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="e-", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="light-load requests")
    parser.add_argument("--window", type=int, default=256, help="events per request")
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument(
        "--short-events", type=int, default=16, help="the short /v1/score beside a stream call"
    )
    parser.add_argument("--entities", type=int, default=10_000, help="entities of the stream load")
    parser.add_argument(
        "--phases",
        type=lambda v: _choices(v, PHASES),
        default=list(PHASES),
        help=f"comma-separated, of {', '.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--parts",
        type=lambda v: _choices(v, PARTS),
        default=list(PARTS),
        help="comma-separated, of score (light load, saturation), stream (stream vs "
        "re-score), stream-load (high-throughput phase only), monitor (the live profile's "
        "cost) (default: all)",
    )
    parser.add_argument(
        "--designs",
        type=lambda v: _choices(v, list(DESIGNS)),
        default=list(DESIGNS),
        help="streaming state designs: holder (StreamHolder), redis (default: both)",
    )
    parser.add_argument(
        "--architecture",
        choices=["lstm", "gru", "transformer"],
        help="serve this architecture instead of params.yaml's",
    )
    parser.add_argument("--hidden-size", type=int, help="instead of params.yaml's")
    parser.add_argument("--num-layers", type=int, help="instead of params.yaml's")
    parser.add_argument("--quick", action="store_true", help="small and short: a smoke run")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args)
    if args.quick:
        args.rounds, args.seconds, args.requests, args.concurrency = 1, 2.0, 30, 8
        args.history = min(args.history, 200)
        args.entities = min(args.entities, 500)

    import torch

    from benchmarks._common import PARAMS
    from benchmarks.batch_scoring import build_registered_model
    from pipelines.config import load_params
    from serving.config import ModelRef
    from serving.registry import load_model

    # Serve replicas run torch with one thread (Ray sets OMP_NUM_THREADS=1 for them); the
    # in-process arms do the same, which is also the faster setting here: with two threads
    # on a loaded 2-core machine one 256-event call took 50-300 ms instead of 4.5 ms.
    torch.set_num_threads(1)
    schema = load_params(PARAMS).data.schema
    with tempfile.TemporaryDirectory(prefix="seqops-serving-bench-") as tmp, contextlib.ExitStack() as stack:  # fmt: skip
        root = Path(tmp)
        changed = {"architecture": args.architecture, "hidden_size": args.hidden_size,
                   "num_layers": args.num_layers}  # fmt: skip
        model = build_registered_model(
            root, architecture={k: v for k, v in changed.items() if v is not None}
        )
        events = pads.dataset(root / "events", format="parquet").to_table()
        bodies, tables = request_inputs(events, schema, args.window, 64)
        (root / "bodies.json").write_text(json.dumps(bodies))
        history = long_history(events, schema, args.history)
        streams = Streams(
            past=history.slice(0, args.history),
            new=history.slice(args.history),
            history=history,
            schema=schema,
            short_events=args.short_events,
            load_file=stream_events_file(history, schema, root / "stream-events.json"),
        )
        ref = ModelRef(model["name"], tracking_uri=model["tracking_uri"])
        scorer = load_model(ref, 16384).scorer
        scorer.time_calls()  # as the served champion does
        redis_url = None
        if "redis" in args.designs and {"stream", "stream-load"} & set(args.parts):
            from serving.redis_server import LocalRedis

            redis_url = stack.enter_context(LocalRedis(max_memory_mb=256)).url

        phases = {}
        for mode in PHASES:
            if mode in args.phases:
                phases[mode] = cluster_phase(mode, model, root / "bodies.json", scorer, tables,
                                             streams, args, redis_url)  # fmt: skip
        local = streaming_inprocess(scorer, history, max(20, args.rounds * 10), redis_url)
        profiling = monitor_inprocess(scorer, tables, max(3, args.rounds))
        model_batching = inprocess_batching(scorer, tables, max(5, args.rounds * 3))

    model_ratio = model_batching["alone_ms"] / model_batching["batched_ms"]
    local_stream = local["rescore_ms"] / local["stream_ms"]
    served = scorer.config
    rows = [
        ["model served", f"{served.architecture}, {served.num_layers} layers, hidden "
         f"{served.hidden_size}" + ("" if args.architecture or args.hidden_size or
                                    args.num_layers else " (params.yaml's)"), ""],
    ]  # fmt: skip
    summary: dict[str, dict[str, Any]] = {}
    for name, phase in phases.items():
        phase_rows, summary[name] = phase_table(name, phase, args)
        rows += phase_rows
    rows += [
        ["model alone: 16 requests one by one / in one batch (ms per request)",
         f"{model_batching['alone_ms']:.2f} / {model_batching['batched_ms']:.2f}: "
         f"{model_ratio:.2f}x", "(batching's ceiling)"],
        ["stream 1 event / full re-score, in-process (ms)",
         f"{local['stream_ms']:.2f} / {local['rescore_ms']:.2f}", ""],
        ["live profile: work per light-load request, alone / in a pass of "
         f"{profiling['pass_requests']} (ms, the replica's own thread)",
         f"{profiling['alone_ms']:.3f} / {profiling['pass_ms']:.3f}", "(off the answer)"],
        ["streaming speed-up, in-process", f"{local_stream:.1f}x",
         f"{verdict(local_stream >= TARGETS['streaming'])} (>= {TARGETS['streaming']:g}x)"],
    ]  # fmt: skip
    if "stream_redis_ms" in local:
        rows.append(
            ["stream 1 event in-process, state in memory / in Redis (ms)",
             f"{local['stream_ms']:.2f} / {local['stream_redis_ms']:.2f}",
             "(what Redis adds to a call)"]
        )  # fmt: skip
    print_table(["serving", "value", "target"], rows)
    errors = sum(
        x["errors"]
        for phase in phases.values()
        for x in [
            *phase.get("light", []), *phase.get("floor", []),
            *phase.get("sat", {}).get("on", []), *phase.get("sat", {}).get("off", []),
            *[y for load_ in phase.get("stream_load", {}).values()
              for y in [load_["first"], *load_["rounds"]]],
        ]
    )  # fmt: skip
    print(f"HTTP errors during the run: {errors}")
    statuses: Counter[str] = Counter()
    for phase in phases.values():
        for load_ in phase.get("stream_load", {}).values():
            for x in [load_["first"], *load_["rounds"]]:
                statuses.update(x["statuses"])
    if statuses:
        print(f"stream-load replies by state status: {dict(statuses)}")
    write_result(
        args.json,
        {
            "model": {
                "architecture": served.architecture,
                "num_layers": served.num_layers,
                "hidden_size": served.hidden_size,
            },
            "phases": phases,
            "summary": summary,
            "model_batching": model_batching,
            "local": local,
            "streaming_inprocess": local_stream,
            "profiling": profiling,
            "errors": errors,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
