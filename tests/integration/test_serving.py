"""Online scoring over real HTTP (loopback) against a real Ray Serve application.

One application serves the session's tiny trained model from its MLflow registry by alias,
deployed once for the module from serving/serve_config.yaml (CPUs shrunk to fit 2 cores).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests

from serving.cli import DEFAULT_CONFIG, deployment_options, load_serve_config
from tests.integration.conftest import REPO, register_versions, serving, stage_env

pytestmark = pytest.mark.integration

MODEL = "seqops-serving-test"
APP = "seqops-test"
LIMITS = {"max_sequences_per_request": 8, "max_events_per_sequence": 400,
          "max_body_bytes": 200_000, "order_policy": "sort"}  # fmt: skip
BATCHING = {"max_batch_size": 8, "batch_wait_timeout_s": 0.05}


def _application(registry: dict) -> Any:
    """The config file's application with the test's model, CPUs and tunables."""
    from serving.app import build_app
    from serving.config import serving_config

    app = load_serve_config(DEFAULT_CONFIG)["applications"][0]
    options = deployment_options(app)
    assert set(options) == {"ScoringAPI", "StreamHolder"}
    options["StreamHolder"]["num_replicas"] = 1  # streaming: tests/integration/test_streams.py
    overrides = {"ScoringAPI": {**LIMITS, **BATCHING}, "StreamHolder": {}}
    for name, user_config in overrides.items():
        options[name]["ray_actor_options"] = {"num_cpus": 0.25}
        options[name]["user_config"] = {**options[name]["user_config"], **user_config}
    args = {**app["args"], "model_name": MODEL, "tracking_uri": registry["uri"]}
    return build_app(serving_config(args), options)


@pytest.fixture(scope="module")
def registry(trained_run) -> dict:
    """The trained model registered as version 1 with alias champion."""
    registered = register_versions(trained_run, MODEL)
    version = registered["versions"][0]
    registered["client"].set_registered_model_alias(MODEL, "champion", version)
    return {**registered, "version": version}


@pytest.fixture(scope="module")
def served(ray_cluster, registry):
    """The application on a free loopback port; Serve is shut down after the module."""
    with serving(_application(registry), APP) as base:
        yield base


@pytest.fixture(scope="module")
def events(tiny_pipeline) -> pa.Table:
    """Raw events of 8 entities of varied lengths (one longer than the model's window)."""
    table = pq.read_table(tiny_pipeline["validated"]).drop_columns(["label", "_arrival"])
    strings = [
        f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f for f in table.schema
    ]
    table = table.cast(pa.schema(strings))  # categoricals as a client sends them: strings
    lengths = table["account_id"].to_pandas().value_counts().sort_values(kind="stable")
    lengths = lengths[lengths <= LIMITS["max_events_per_sequence"]]
    n = len(lengths)
    picks = [lengths.index[i] for i in (0, 1, n // 4, n // 2, 3 * n // 4, n - 3, n - 2, n - 1)]
    assert lengths.iloc[-1] > 64  # beyond the model's window: only the last 64 events count
    return table.filter(pc.is_in(table["account_id"], value_set=pa.array(picks)))


def _sequences(events: pa.Table, naive_time: bool = False) -> list[dict]:
    seqs: dict[str, list] = {}
    for row in events.to_pylist():
        t = row.pop("event_time")
        row["event_time"] = (t.replace(tzinfo=None) if naive_time else t).isoformat()
        seqs.setdefault(row.pop("account_id"), []).append(row)
    return [{"entity": entity, "events": evs} for entity, evs in seqs.items()]


def _post(base: str, body, headers: dict | None = None) -> requests.Response:
    """POST /v1/score; dicts go as JSON, bytes, strings and generators (chunked) as they are."""
    data = json.dumps(body) if isinstance(body, dict | list) else body
    headers = headers or {"Content-Type": "application/json"}
    return requests.post(f"{base}/v1/score", data=data, headers=headers, timeout=60)


def _assert_matches_offline(scores: list[dict], registry: dict, events: pa.Table) -> None:
    offline = registry["scorer"].score(events).set_index("entity")
    assert len(scores) == len(offline)
    for s in scores:
        expected = offline.loc[s["entity"]]
        assert s["n_events"] == expected["n_events"]
        assert s["window_end"] == expected["window_end"].isoformat().replace("+00:00", "Z")
        assert abs(s["score"] - expected["score"]) <= 1e-5
        assert s["probabilities"].keys() == expected["probabilities"].keys()
        np.testing.assert_allclose(
            list(s["probabilities"].values()), list(expected["probabilities"].values()), atol=1e-5
        )
        assert s["predicted"] == expected["predicted"]


def test_online_scores_equal_offline_predictions_and_name_their_model(served, registry, events):
    response = _post(served, {"sequences": _sequences(events, naive_time=True)})
    assert response.status_code == 200, response.text
    body = response.json()
    manifest = registry["scorer"].manifest
    assert body["model"]["name"] == MODEL and body["model"]["alias"] == "champion"
    assert body["model"]["version"] == registry["version"]
    assert body["model"]["run_id"] == registry["run_id"]
    assert body["model"]["data_hash"] == manifest.content_hash
    assert body["model"]["events_sha256"] == manifest.input.sha256
    assert [s["entity"] for s in body["scores"]] == [s["entity"] for s in _sequences(events)]
    _assert_matches_offline(body["scores"], registry, events)


def test_concurrent_requests_are_batched_and_each_gets_its_own_scores(served, registry, events):
    from ray import serve

    seqs = _sequences(events)
    requests_ = [{"sequences": [seqs[i % len(seqs)], seqs[(i + 3) % len(seqs)]]} for i in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda b: _post(served, b), requests_))
    for body, response in zip(requests_, responses, strict=True):
        assert response.status_code == 200, response.text
        scores = response.json()["scores"]
        assert [s["entity"] for s in scores] == [s["entity"] for s in body["sequences"]]
        named = pa.array([s["entity"] for s in scores])
        _assert_matches_offline(
            scores, registry, events.filter(pc.is_in(events["account_id"], named))
        )
    ingress = serve.get_deployment_handle("ScoringAPI", APP)
    stats = ingress.stats.remote().result()
    assert 1 < stats["largest_batch"] <= BATCHING["max_batch_size"]
    assert stats["requests"] > stats["batches"]
    # A lone request finds the model idle: scored at once, not held back for company.
    assert _post(served, {"sequences": seqs[:1]}).status_code == 200
    after = ingress.stats.remote().result()
    assert after["immediate"] == stats["immediate"] + 1
    assert after["batches"] == stats["batches"] + 1 and after["requests"] == stats["requests"] + 1


def test_health_and_models_describe_what_is_loaded(served, registry):
    health = requests.get(f"{served}/healthz", timeout=10)
    assert health.status_code == 200
    expected = {"name": MODEL, "alias": "champion", "version": registry["version"]}
    assert health.json() == {"status": "ok", "model": {**expected, "run_id": registry["run_id"]}}
    (model,) = requests.get(f"{served}/v1/models", timeout=10).json()["models"]
    assert {k: model[k] for k in expected} == expected
    assert model["run_id"] == registry["run_id"] and model["loaded_at"].endswith("Z")
    assert model["task"] == "classify" and "amount" in model["features"]
    assert model["batching"]["max_batch_size"] == BATCHING["max_batch_size"]  # user_config applied


def _one(events: pa.Table, drop: str | None = None, **changes) -> dict:
    """A valid one-sequence request whose event 1 gets ``changes`` (or loses ``drop``)."""
    seq = _sequences(events)[2]
    seq["events"] = [dict(e) for e in seq["events"][:3]]
    seq["events"][1].update(changes)
    seq["events"][1].pop(drop, None)
    return {"sequences": [seq]}


def _chunks(size: int):
    yield b'{"sequences": [{"entity": "x", "events": [], "pad": "'
    for _ in range(size // 10_000):
        yield b"x" * 10_000
    yield b'"}]}'


BAD_REQUESTS = {
    "malformed JSON": (lambda ev: b'{"sequences": [', {}, 400, "body", "malformed JSON"),
    "wrong content type": (lambda ev: json.dumps(_one(ev)), {"Content-Type": "text/plain"}, 415, "headers.content-type", "application/json"),
    "empty sequences": (lambda ev: {"sequences": []}, {}, 422, "sequences", "must not be empty"),
    "too many sequences": (lambda ev: {"sequences": _one(ev)["sequences"] * 9}, {}, 422, "sequences", "max_sequences_per_request=8"),
    "too many events": (lambda ev: {"sequences": [{"entity": "x", "events": _one(ev)["sequences"][0]["events"] * 134}]}, {}, 422, "sequences[0].events", "max_events_per_sequence=400"),
    "body too large": (lambda ev: b" " * 200_001, {}, 413, "body", "max_body_bytes=200000"),
    "body too large, chunked": (lambda ev: _chunks(300_000), {}, 413, "body", "max_body_bytes=200000"),
    "NaN": (lambda ev: json.dumps(_one(ev, amount=float("nan"))), {}, 422, "sequences[0].events[1].amount", "finite"),
    "Infinity": (lambda ev: json.dumps(_one(ev, amount=float("-inf"))), {}, 422, "sequences[0].events[1].amount", "finite"),
    "unknown feature": (lambda ev: _one(ev, colour="red"), {}, 422, "sequences[0].events[1].colour", "unknown feature"),
    "missing feature": (lambda ev: _one(ev, drop="mcc"), {}, 422, "sequences[0].events[1].mcc", "missing feature 'mcc'"),
    "numeric as string": (lambda ev: _one(ev, amount="12.5"), {}, 422, "sequences[0].events[1].amount", "valid number"),
    "categorical as number": (lambda ev: _one(ev, mcc=5411), {}, 422, "sequences[0].events[1].mcc", "valid string"),
    "unparseable time": (lambda ev: _one(ev, event_time="2025-13-45 25:00"), {}, 422, "sequences[0].events[1].event_time", "ISO-8601"),
    "epoch time": (lambda ev: _one(ev, event_time=1735689600), {}, 422, "sequences[0].events[1].event_time", "ISO-8601"),
    # The data contract the model's manifest carries from the validate stage (params.yaml).
    "amount 1e308": (lambda ev: _one(ev, amount=1e308), {}, 422, "sequences[0].events[1].amount",
                     "value_ranges: 1e+308 is above the max 1000000 of amount (validate.ranges.amount)"),
    "year 9999": (lambda ev: _one(ev, event_time="9999-12-31T00:00:00Z"), {}, 422, "sequences[0].events[1].event_time", "future_timestamps: "),
    "before the floor": (lambda ev: _one(ev, event_time="1999-01-01T00:00:00Z"), {}, 422, "sequences[0].events[1].event_time", "time_floor: "),
    "negative seq": (lambda ev: _one(ev, seq_no=-5), {}, 422, "sequences[0].events[1].seq_no", "seq_negative: seq_no=-5 is below 0"),
    "channel outside its domain": (lambda ev: _one(ev, channel="teleport"), {}, 422, "sequences[0].events[1].channel", "categorical_domain: 'teleport'"),
    "entity too long": (lambda ev: {"sequences": [dict(_one(ev)["sequences"][0], entity="e" * 257)]}, {}, 422, "sequences[0].entity", "1 to 256 printable characters"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_naming_the_field_and_serving_goes_on(served, events, case):
    make, headers, status, field, reason = BAD_REQUESTS[case]
    response = _post(served, make(events), headers={"Content-Type": "application/json", **headers})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and reason in body["error"], body
    assert _post(served, _one(events)).status_code == 200


def test_a_long_entity_or_key_is_refused_without_being_echoed(served, events):
    long = "x" * 150_000  # within max_body_bytes, far beyond the entity limit
    request = _one(events)
    for body in (
        {"sequences": [dict(request["sequences"][0], entity=long)]},
        _one(events, **{long: 1.0}),
    ):
        response = _post(served, body)
        assert response.status_code == 422 and len(response.content) < 2_000, response.text[:300]


def test_a_stream_event_from_the_far_future_is_refused_and_never_locks_the_entity(served, events):
    seq = _sequences(events)[-1]  # the longest: three events at least
    url = f"{served}/v1/stream/future-{seq['entity']}"
    assert requests.post(url, json={"events": seq["events"][:2]}, timeout=60).status_code == 200
    future = dict(seq["events"][2], event_time="9999-12-31T00:00:00Z")
    refused = requests.post(url, json={"events": [future]}, timeout=60)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "events[0].event_time"
    assert "future_timestamps" in refused.json()["error"]
    real = requests.post(url, json={"events": [seq["events"][2]]}, timeout=60)
    assert real.status_code == 200, real.text  # not "before the last event": 9999 was not kept
    assert real.json()["score"]["state"]["status"] == "continued"
    assert real.json()["score"]["state"]["events_seen"] == 3


def test_unknown_routes_answer_json(served):
    response = requests.get(f"{served}/v1/nothing", timeout=10)
    assert response.status_code == 404 and response.json()["error"] == "Not Found"


def test_order_policy_sort_orders_events_and_reject_refuses_them(served, registry, events):
    from ray import serve

    from serving.app import ScoringAPI
    from serving.auth import Authenticator
    from serving.config import serving_config

    ordered = _sequences(events)
    shuffled = [
        dict(s, events=random.Random(7).sample(s["events"], len(s["events"]))) for s in ordered
    ]
    first = _post(served, {"sequences": ordered}).json()["scores"]
    assert _post(served, {"sequences": shuffled}).json()["scores"] == first  # policy sort
    # A second ingress (with its own copy of the champion) whose user_config says reject
    # (redeploying the module's application would restart its replicas: Serve versions
    # imperatively deployed code afresh on every serve.run).
    stream = serve.get_deployment_handle("StreamHolder", APP)
    config = serving_config({"model_name": MODEL, "tracking_uri": registry["uri"]})
    strict = ScoringAPI.options(
        ray_actor_options={"num_cpus": 0.25}, user_config={**LIMITS, "order_policy": "reject"}
    )
    open_to_all = Authenticator((), enabled=False)  # loopback, no tokens: as build_app decides
    serve.run(strict.bind(stream, None, config, open_to_all), name="strict", route_prefix="/strict")
    try:
        response = _post(f"{served}/strict", {"sequences": [ordered[0], shuffled[-1]]})
        assert response.status_code == 422, response.text
        assert response.json()["field"].startswith("sequences[1].events[")
        assert "order_policy is 'reject'" in response.json()["error"]
        assert _post(f"{served}/strict", {"sequences": ordered}).json()["scores"] == first
    finally:
        serve.delete("strict")


def test_reload_follows_the_alias_and_responses_name_the_new_version(served, registry, events):
    import mlflow
    from ray import serve

    from seqcore.loading import logged_record

    client = registry["client"]
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(registry["uri"])  # a models:/m-... source resolves via the fluent store
    mlflow.set_registry_uri(registry["uri"])
    try:
        second = client.create_model_version(
            MODEL, registry["model_uri"], registry["run_id"],
            tags=logged_record(client, registry["model_uri"]),  # the files' hashes, as registered
        ).version  # fmt: skip
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    holder = serve.get_deployment_handle("ScoringAPI", APP)
    try:
        client.set_registered_model_alias(MODEL, "champion", second)
        assert holder.reload.remote().result()["version"] == str(second)
        body = _post(served, {"sequences": _sequences(events)[:2]}).json()
        assert body["model"]["version"] == str(second)
    finally:
        client.set_registered_model_alias(MODEL, "champion", registry["version"])
        assert holder.reload.remote().result()["version"] == registry["version"]


def test_missing_model_or_alias_fails_start_up_with_a_clear_error(ray_cluster, served, registry):
    from ray import serve

    from serving.app import ScoringAPI, app_builder
    from serving.auth import Authenticator
    from serving.cli import deploy_failure
    from serving.config import serving_config
    from serving.registry import ModelNotFoundError

    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="models:/no-such-model@champion.*not found"):
        app_builder({"model_name": "no-such-model", "tracking_uri": registry["uri"]})
    with pytest.raises(ModelNotFoundError, match=f"models:/{MODEL}@nobody"):
        app_builder({"model_name": MODEL, "alias": "nobody", "tracking_uri": registry["uri"]})
    assert time.monotonic() - started < 15
    # The ingress replica itself refuses too (e.g. the alias was deleted after the app was
    # built): it loads the champion.
    config = serving_config({"model_name": MODEL, "alias": "gone", "tracking_uri": registry["uri"]})
    ingress = ScoringAPI.options(
        max_constructor_retry_count=1, ray_actor_options={"num_cpus": 0.25}
    )
    stream = serve.get_deployment_handle("StreamHolder", APP)
    with pytest.raises(RuntimeError, match="Deploying application missing-model failed"):
        serve.run(
            ingress.bind(stream, None, config, Authenticator((), enabled=False)),
            name="missing-model",
            route_prefix="/gone",
        )
    assert f"cannot serve models:/{MODEL}@gone: not found" in deploy_failure("missing-model")
    serve.delete("missing-model")
    assert time.monotonic() - started < 120
    assert _post(served, {"sequences": []}).status_code == 422  # the real app still serves


def test_cli_refuses_a_missing_model_before_starting_anything(registry):
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--model-name", "no-such-model",
         "--alias", "champion", "--tracking-uri", registry["uri"]],
        cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "models:/no-such-model@champion" in result.stderr and "not found" in result.stderr


@pytest.mark.parametrize(
    ("flag", "variable"),
    [("--direct-ingress", "RAY_SERVE_ENABLE_DIRECT_INGRESS=1"),
     ("--high-throughput", "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1")],
)  # fmt: skip
def test_cli_ingress_modes_refuse_a_running_cluster(registry, flag, variable):
    """Both modes are settings of the cluster's processes: with ``RAY_ADDRESS`` the command
    says how to start that cluster instead of serving without them."""
    env = {**stage_env(), "RAY_ADDRESS": "127.0.0.1:1"}  # never reached
    result = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--model-name", MODEL, "--alias",
         "champion", "--tracking-uri", registry["uri"], flag],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"{flag} starts a local cluster" in result.stderr and variable in result.stderr


def _listeners() -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket on this machine, from ``ss -ltnH``."""
    return [(host, port) for host, port, _ in _listening()]


def _listening(of: int | None = None) -> list[tuple[str, int, str]]:
    """(address, port, process) of every listening TCP socket, from ``ss -ltnpH``; with
    ``of``, only those of that process and its descendants."""
    import psutil

    pids = None
    if of is not None:
        root = psutil.Process(of)
        pids = {f"pid={p.pid}," for p in (root, *root.children(recursive=True))}
    out = subprocess.run(["ss", "-ltnpH"], check=True, capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        if pids is not None and not any(pid in line for pid in pids):
            continue
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        process = line.split('(("', 1)[1].split('"', 1)[0] if '(("' in line else ""
        found.append((host.strip("[]").removeprefix("::ffff:"), int(port), process))
    return found


def _assert_refused_without_ray_token(port: int) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value


@pytest.mark.parametrize("ingress", ["--direct-ingress", "--high-throughput"])
def test_cli_serves_through_the_proxy_and_direct_ingress_alike(registry, events, ingress):
    """``python -m serving.cli serve --direct-ingress`` (or ``--high-throughput``) as a user
    runs it: a local cluster of its own, the same scores on ``--port`` (Serve's proxy, or
    HAProxy in its place) and on the ingress replica's own port, and Ctrl-C stops it."""
    import contextlib
    import queue
    import signal
    import threading

    from benchmarks.serving import free_ports
    from serving.cli import DIRECT_PORTS

    port, direct = free_ports(1), free_ports(DIRECT_PORTS)
    env = stage_env()
    env.pop("RAY_ADDRESS", None)  # not the test session's cluster: one of its own
    env.pop("SEQOPS_REDIS_URL", None)  # and a Redis of its own for the streaming state
    # HAProxy's stats and metrics ports, off Ray's fixed defaults (another cluster may hold them)
    stats = free_ports(2)
    env.update(
        RAY_SERVE_HAPROXY_STATS_PORT=str(stats), RAY_SERVE_HAPROXY_METRICS_PORT=str(stats + 1)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--model-name", MODEL, "--alias",
         "champion", "--tracking-uri", registry["uri"], "--port", str(port),
         ingress, "--direct-port", str(direct)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen: list[str] = []
    redis_port = None
    try:
        deadline = time.monotonic() + 300
        while not (seen and seen[-1].startswith("direct ingress:")):
            assert proc.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        url = seen[-1].split("direct ingress:", 1)[1].split(",")[0].strip()
        assert url.startswith(f"http://127.0.0.1:{direct}") and url.endswith("/v1/score"), url
        body = {"sequences": _sequences(events)[:3]}
        via_proxy = _post(f"http://127.0.0.1:{port}", body)
        via_direct = requests.post(url, json=body, timeout=60)
        assert via_proxy.status_code == via_direct.status_code == 200, via_direct.text
        assert via_direct.json()["scores"] == via_proxy.json()["scores"]
        assert via_direct.json()["model"]["version"] == registry["version"]
        _assert_matches_offline(via_direct.json()["scores"], registry, events.filter(
            pc.is_in(events["account_id"], pa.array([s["entity"] for s in body["sequences"]]))
        ))  # fmt: skip
        for target in (url, f"http://127.0.0.1:{port}/v1/score"):
            bad = requests.post(target, data=b"{", headers={"Content-Type": "application/json"})
            assert bad.status_code == 400 and bad.json()["field"] == "body"
        # The dashboard of the command's own cluster, printed after the URLs.
        while not (seen and seen[-1].startswith("Ray dashboard:")):
            assert proc.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        dashboard = seen[-1].split()[2]
        assert dashboard.startswith("http://127.0.0.1:"), seen[-1]
        dashboard_port = int(dashboard.rsplit(":", 1)[1].rstrip("/"))
        assert ("127.0.0.1", dashboard_port) in _listeners()
        # Streaming state: a Redis the command started, before Ray (its password never shown).
        (state,) = [line for line in seen if line.startswith("streaming state:")]
        assert state.startswith("streaming state: Redis at 127.0.0.1:") and "(local," in state
        redis_port = int(state.split("127.0.0.1:", 1)[1].split()[0])
        assert ("127.0.0.1", redis_port) in _listeners()
        # Everything the command opens for clients and operators answers on loopback only.
        ours = {port, stats, stats + 1, dashboard_port, redis_port,
                *range(direct, direct + DIRECT_PORTS)}  # fmt: skip
        exposed = [a for a in _listeners() if a[1] in ours and not a[0].startswith("127.")]
        assert not exposed, exposed
        # So does every process of its cluster: the GCS, raylet, workers, Ray's agents and
        # metrics exporters (Ray's single-machine mode, serving.cli.LOOPBACK_ENV).
        # Ray 2.60 binds one port to every interface whatever the node's address: each Serve
        # replica's inter-deployment gRPC server (ray/serve/_private/replica.py, "[::]:0"),
        # which refuses calls without the cluster's token.
        cluster = _listening(of=proc.pid)
        assert len(cluster) > 8, cluster  # Ray's own, not only the command's
        wide = [a for a in cluster if not a[0].startswith("127.")]
        assert all(p.startswith("ray::ServeRepli") for _, _, p in wide), cluster
        for _, wide_port, _ in wide:
            _assert_refused_without_ray_token(wide_port)
        if ingress == "--high-throughput":  # HAProxy, not Serve's proxy, answers the port
            assert any("through HAProxy" in line for line in seen), "".join(seen)
            assert any(a == ("127.0.0.1", stats) for a in _listeners()), "no stats listener"
            assert requests.get(f"http://127.0.0.1:{stats}/stats", timeout=10).status_code == 200
            # A stream call crosses to the StreamHolder (gRPC between replicas in this mode):
            # the whole history streamed equals its score, which reads it all (window).
            first = body["sequences"][0]
            streamed = requests.post(f"http://127.0.0.1:{port}/v1/stream/{first['entity']}",
                                     json={"events": first["events"], "reset": True}, timeout=60)  # fmt: skip
            assert streamed.status_code == 200, streamed.text
            scored = via_direct.json()["scores"][0]
            assert scored["entity"] == first["entity"]
            assert scored["n_events"] == len(first["events"])
            assert abs(streamed.json()["score"]["score"] - scored["score"]) <= 1e-5
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            returncode = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert returncode == 0, "".join(seen)
    assert redis_port is None or not any(a[1] == redis_port for a in _listeners())


def test_prometheus_metrics_count_requests_errors_batches_and_the_traffic_profile(served, events):
    """Custom ray.serve.metrics reach Ray's Prometheus endpoint (reported every few seconds).
    Traffic for the live profile's gauges: earlier tests may have swapped the model since,
    which starts its window again."""
    import ray

    assert _post(served, {"sequences": _sequences(events)}).status_code == 200

    port = ray.nodes()[0]["MetricsExportPort"]
    wanted = {
        "ray_seqops_requests_total": ('route="/v1/score"', 'status="200"'),
        "ray_seqops_request_errors_total": ('kind="too_large"',),
        "ray_seqops_request_latency_s_count": ('route="/v1/score"',),
        "ray_seqops_batch_requests_count": (),
        "ray_seqops_batch_sequences_count": (),
        # live statistics of the scored traffic (serving.live), against the training profile
        "ray_seqops_sequence_length_count": (),
        "ray_seqops_event_gap_s_count": (),
        "ray_seqops_score_count": (),
        "ray_seqops_profiled_events_total": ('column="mcc"',),
        "ray_seqops_drift_distance": ('statistic="length"',),
        "ray_seqops_drift_window_sequences": (),
    }
    deadline, missing = time.monotonic() + 60, set(wanted)
    while missing and time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for line in text.splitlines():
            name = line.split("{")[0]
            tagged = name in missing and all(t in line for t in wanted[name])
            if tagged and float(line.rsplit(" ", 1)[1]) > 0:
                missing.discard(name)
        time.sleep(2 if missing else 0)
    assert not missing, f"metrics never exported: {sorted(missing)}"
    # Every seqops metric Prometheus scrapes is named in the README's table, and the other
    # way round every name there is one a deployment defines.
    documented = set(re.findall(r"`(ray_seqops_[a-z_]+)`", (REPO / "README.md").read_text()))
    scraped = {
        re.sub(r"_(bucket|sum|count)$", "", line.split("{")[0].split(" ")[0])
        for line in text.splitlines()
        if line.startswith("ray_seqops_")
    }
    assert scraped and scraped <= documented, sorted(scraped - documented)
    defined = set()
    for path in (REPO / "serving").glob("*.py"):
        source = path.read_text()
        for kind, name in re.findall(r'(Counter|Histogram|Gauge)\(\s*"(seqops_[a-z_]+)"', source):
            defined.add(f"ray_{name}_total" if kind == "Counter" else f"ray_{name}")
    assert documented == defined, sorted(documented ^ defined)


def test_cli_on_a_shared_cluster_refuses_a_second_app_and_stops_only_its_own(
    served, registry, tmp_path
):
    """``RAY_ADDRESS=... python -m serving.cli serve`` where Serve already runs (this
    module's application): it prints where Serve really answers, a second command with the
    same application name is refused, and Ctrl-C deletes only its own application."""
    import signal

    import ray
    import yaml
    from ray import serve

    raw = load_serve_config(DEFAULT_CONFIG)
    app = raw["applications"][0]
    app.update(name="seqops-cli", route_prefix="/cli")
    for deployment in app["deployments"]:
        deployment.update(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**stage_env(), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    # On a cluster at RAY_ADDRESS the command needs a Redis URL or memory for stream state.
    command = [sys.executable, "-m", "serving.cli", "serve", "--model-name", MODEL,
               "--tracking-uri", registry["uri"], "--config", str(config), "--port", "1",
               "--stream-store", "memory"]  # fmt: skip
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    seen: list[str] = []
    try:
        for line in first.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if line.startswith("serving "):
                break
        assert first.poll() is None, "".join(seen)
        # Serve kept this module's port; the command says so and prints that one.
        assert any("Serve already answers on this cluster" in line for line in seen), seen
        url = seen[-1].split(" at ", 1)[1].split()[0]
        assert url == f"{served}/cli/v1/score", url
        assert requests.get(f"{served}/cli/healthz", timeout=30).status_code == 200
        second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert "'seqops-cli' already runs" in second.stderr and "--replace" in second.stderr
        assert requests.get(f"{served}/cli/healthz", timeout=30).status_code == 200
    finally:
        first.send_signal(signal.SIGINT)
        returncode = first.wait(timeout=120)
    assert returncode == 0, "".join(seen)
    assert "seqops-cli" not in serve.status().applications
    assert requests.get(f"{served}/healthz", timeout=30).status_code == 200  # ours stays up


def test_openapi_documents_the_served_models_request_and_docs_serve_it(served):
    doc = requests.get(f"{served}/openapi.json", timeout=30).json()
    body = doc["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["sequences"]
    event = body["example"]["sequences"][0]["events"][0]
    assert _post(served, body["example"]).status_code == 200, event  # the example scores
    assert "Event" in doc["components"]["schemas"]
    page = requests.get(f"{served}/docs", timeout=30)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "/openapi.json" in page.text
