"""Streaming state in Redis over real HTTP: two ingress replicas score stream calls where they
land, against one Redis (started here, as ``seqops serve`` starts one), with no StreamHolder
and no affinity router. A killed replica loses nobody's state; Redis going away is a 503 that
names it, and streaming heals when it returns."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
import requests

from serving.redis_server import LocalRedis
from tests.integration.conftest import register_versions, serving
from tests.integration.test_streams import _events, _reference
from tests.integration.test_streams import histories as histories  # noqa: F401  (module fixture)

pytestmark = pytest.mark.integration

MODEL = "seqops-redis-streams-test"
APP = "seqops-redis-streams"
CPUS = {"ray_actor_options": {"num_cpus": 0.2}}


@pytest.fixture(scope="module")
def registry(trained_run) -> dict:
    from pipelines.registry import Registry

    registered = register_versions(trained_run, MODEL, count=2)
    v1, _ = registered["versions"]
    registry = Registry(registered["client"], MODEL)
    registry.promote(int(v1), "redis streams", override_gate=True)
    return {**registered, "registry": registry}


@pytest.fixture(scope="module")
def store():
    with LocalRedis(max_memory_mb=64) as local:
        yield local


@pytest.fixture(scope="module")
def served(ray_cluster, registry, store):
    from serving.app import build_app
    from serving.config import serving_config

    config = serving_config(
        {"model_name": MODEL, "tracking_uri": registry["uri"], "redis_url": store.url,
         "alias_poll_s": 0.5}
    )  # fmt: skip
    options = {"ScoringAPI": {**CPUS, "num_replicas": 2}}
    with serving(build_app(config, options), APP) as base:
        yield base


def _stream(base: str, entity: str, table: pa.Table, **extra) -> requests.Response:
    body = {"events": _events(table), **extra}
    return requests.post(f"{base}/v1/stream/{entity}", json=body, timeout=60)


def test_calls_scored_on_either_replica_equal_full_rescoring(served, registry, histories):
    replicas = set()
    for entity, history in list(histories.items())[:6]:
        start = 0
        for size in (history.num_rows // 2, 1, 1, history.num_rows - history.num_rows // 2 - 2):
            reply = _stream(served, entity, history.slice(start, size), expect_events_seen=start)
            assert reply.status_code == 200, reply.text
            start += size
            state = reply.json()["score"]["state"]
            assert state["status"] == ("new" if start == size else "continued")
            assert state["events_seen"] == start
            expected = _reference(registry, history.slice(0, start))["score"]
            assert abs(reply.json()["score"]["score"] - expected) <= 1e-5
            replicas.add(state["replica"])
    assert len(replicas) == 2  # Serve's own routing spread the calls: no entity affinity


def test_models_say_where_the_state_lives(served):
    models = requests.get(f"{served}/v1/models", timeout=30).json()
    streaming = models["streaming"]
    assert streaming["store"] == "redis" and streaming["at"].startswith("127.0.0.1:")
    assert "@" not in streaming["at"] and streaming["maxmemory_policy"] == "volatile-lru"


def test_a_killed_replica_loses_no_state(served, registry, histories, ray_cluster):
    import ray
    from ray import serve

    entity, history = list(histories.items())[-1]
    first = _stream(served, entity, history.slice(0, 10)).json()["score"]["state"]
    actor = next(
        a for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].endswith(first["replica"])
    )  # fmt: skip
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    deadline = time.monotonic() + 120
    reply = None
    while reply is None or reply.status_code != 200:  # the proxy may still try the dead one
        try:
            reply = _stream(served, entity, history.slice(10, 5), expect_events_seen=10)
        except requests.RequestException:
            reply = None
        assert time.monotonic() < deadline, reply.text if reply is not None else "no reply"
    after = reply.json()["score"]
    assert after["state"]["status"] == "continued" and after["state"]["events_seen"] == 15
    assert abs(after["score"] - _reference(registry, history.slice(0, 15))["score"]) <= 1e-5
    while True:  # leave the application as the other tests found it
        status = serve.status().applications[APP].deployments["ScoringAPI"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == 2:
            break
        assert time.monotonic() < deadline, status
        time.sleep(1)


def test_redis_away_is_a_503_naming_it_and_streaming_heals(served, store, histories):
    entity, history = list(histories.items())[1]
    assert _stream(served, f"outage-{entity}", history.slice(0, 3)).status_code == 200
    port = store.port
    store.stop()
    try:
        reply = _stream(served, f"outage-{entity}", history.slice(3, 1))
        assert reply.status_code == 503, reply.text
        assert f"Redis at 127.0.0.1:{port}/0" in reply.json()["error"]
        assert store.password not in reply.text
        assert (
            requests.post(
                f"{served}/v1/score",
                json={"sequences": [{"entity": entity, "events": _events(history.slice(0, 3))}]},
                timeout=60,
            ).status_code
            == 200
        )  # scoring does not need the store
    finally:
        store.port = port
        store.start()
    deadline = time.monotonic() + 60
    while True:
        reply = _stream(served, f"outage-{entity}", history.slice(3, 1), expect_events_seen=3)
        if reply.status_code == 200:
            break
        assert time.monotonic() < deadline, reply.text
        time.sleep(0.5)
    # The server kept nothing on disk: the state is gone, and the reply says so.
    assert reply.json()["score"]["state"]["status"] == "reset"


def test_a_champion_switch_resets_states_by_model_version(served, registry, histories):
    """States carry the version that wrote them: the new champion answers an entity streamed
    under the old one as a reset (``model_changed``), on whichever replica the call lands."""
    entity, history = list(histories.items())[2]
    v1, v2 = registry["versions"]
    before = _stream(served, f"switch-{entity}", history.slice(0, 5)).json()
    assert before["model"]["version"] == v1
    registry["registry"].promote(int(v2), "switch (test)", override_gate=True)
    try:
        deadline, seen = time.monotonic() + 60, set()
        while seen != {v2}:  # both replicas poll the alias every 0.5 s
            probe = _stream(served, f"probe-{len(seen)}-{time.monotonic()}", history.slice(0, 1))
            seen = {probe.json()["model"]["version"]} if probe.status_code == 200 else set()
            assert time.monotonic() < deadline, probe.text
            time.sleep(0.2)
        for _ in range(3):  # replicas may differ for a moment: every answer from v2 resets
            after = _stream(served, f"switch-{entity}", history.slice(5, 1), expect_events_seen=5)
            if after.json()["model"]["version"] == v2:
                break
        state = after.json()["score"]["state"]
        assert state["status"] == "reset" and state["reason"] == "model_changed"
        assert state["events_seen"] == 1
    finally:
        registry["registry"].rollback("back again (test)")
