"""Streaming, entity routing, traffic split, shadow and alias switches over real HTTP.

One application serves the session's tiny trained model from its MLflow registry: version 1
aliased ``champion`` and version 2 (the same run registered again) aliased ``challenger``,
with two stream replicas, a small per-replica state limit, a 50% split, shadow mode and a
fast alias poll. Everything goes through loopback HTTP, as a client would.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests

from tests.integration.conftest import register_versions, serving

pytestmark = pytest.mark.integration

MODEL = "seqops-streams-test"
APP = "seqops-streams"
MAX_ENTITIES = 8
CPUS = {"ray_actor_options": {"num_cpus": 0.2}}


@pytest.fixture(scope="module")
def registry(trained_run) -> dict:
    """Version 1 aliased champion, version 2 (same weights) aliased challenger."""
    from pipelines.registry import Registry

    registered = register_versions(trained_run, MODEL, count=2)
    v1, v2 = registered["versions"]
    registry = Registry(registered["client"], MODEL)
    registry.promote(int(v1), "first champion for the streaming tests", override_gate=True)
    registered["client"].set_registered_model_alias(MODEL, "challenger", v2)
    return {**registered, "registry": registry}


@pytest.fixture(scope="module")
def served(ray_cluster, registry, tmp_path_factory):

    from serving.app import build_app
    from serving.config import serving_config

    shadow_log = tmp_path_factory.mktemp("shadow") / "shadow.jsonl"
    config = serving_config(
        {
            "model_name": MODEL,
            "tracking_uri": registry["uri"],
            "challenger_alias": "challenger",
            "challenger_percent": 50,
            "shadow": True,
            "shadow_log": str(shadow_log),
            "alias_poll_s": 0.5,
            "max_entities": MAX_ENTITIES,
        }
    )
    options = {
        "ScoringAPI": CPUS,
        "ChallengerHolder": CPUS,
        "StreamHolder": {**CPUS, "num_replicas": 2},
    }
    with serving(build_app(config, options), APP) as base:
        yield {"base": base, "shadow_log": shadow_log}


@pytest.fixture(scope="module")
def histories(tiny_pipeline) -> dict[str, pa.Table]:
    """Per entity, its raw events in time order, as a client sends them (strings, no label)."""
    table = pq.read_table(tiny_pipeline["validated"]).drop_columns(["label", "_arrival"])
    strings = [
        f.with_type(pa.string()) if pa.types.is_dictionary(f.type) else f for f in table.schema
    ]
    table = table.cast(pa.schema(strings))
    counts = pc.value_counts(table["account_id"]).to_pylist()
    picked = sorted(c["values"] for c in counts if 20 <= c["counts"] <= 300)[:12]
    assert len(picked) == 12
    out = {}
    for entity in picked:
        mine = table.filter(pc.equal(table["account_id"], entity))
        out[entity] = mine.sort_by([("event_time", "ascending"), ("seq_no", "ascending")])
    return out


def _events(table: pa.Table) -> list[dict]:
    rows = table.drop_columns(["account_id"]).to_pylist()
    for row in rows:
        row["event_time"] = row["event_time"].isoformat()
    return rows


def _stream(base: str, entity: str, table: pa.Table, **extra) -> requests.Response:
    body = {"events": _events(table), **extra}
    if "history" in extra:
        body["history"] = _events(extra["history"])
    return requests.post(f"{base}/v1/stream/{entity}", json=body, timeout=60)


def _reference(registry: dict, history: pa.Table) -> dict:
    from serving.stream_state import StateStore
    from serving.streaming import StreamingScorer

    streamer = StreamingScorer(registry["scorer"], "ref", StateStore(1, 1))
    return streamer.reference(history).iloc[0].to_dict()


def _stream_all(base, registry, name: str, history: pa.Table, sizes: list[int]) -> list[dict]:
    """Stream ``history`` in chunks; each reply must equal re-scoring everything so far."""
    replies, start = [], 0
    for size in sizes:
        response = _stream(base, name, history.slice(start, size), expect_events_seen=start)
        assert response.status_code == 200, response.text
        start += size
        reply = response.json()
        expected = _reference(registry, history.slice(0, start))
        assert abs(reply["score"]["score"] - expected["score"]) <= 1e-5
        assert reply["score"]["state"]["events_seen"] == start
        replies.append(reply)
    return replies


def test_streamed_scores_equal_full_rescoring_on_one_replica_per_entity(
    served, registry, histories
):
    base, owners = served["base"], {}
    for entity, history in list(histories.items())[:MAX_ENTITIES]:
        sizes = [history.num_rows // 2, 1, 1, history.num_rows - history.num_rows // 2 - 2]
        replies = _stream_all(base, registry, entity, history, sizes)
        assert [r["score"]["state"]["status"] for r in replies] == ["new"] + ["continued"] * 3
        assert len({r["score"]["state"]["replica"] for r in replies}) == 1  # sticky
        owners[entity] = replies[0]["score"]["state"]["replica"]
        assert replies[0]["model"]["version"] == registry["versions"][0]
    assert len(set(owners.values())) == 2  # the entities are spread over both replicas


def _replicas(base: str, histories: dict) -> dict[str, str]:
    """entity -> the replica holding it (from a zero-cost reset-free probe of each entity)."""
    owners = {}
    for entity, history in list(histories.items())[:MAX_ENTITIES]:
        response = _stream(base, f"probe-{entity}", history.slice(0, 1))
        owners[entity] = response.json()["score"]["state"]["replica"]
    return owners


def test_eviction_is_reported_and_history_rebuilds(served, registry, histories):
    from serving.routing import owner

    base = served["base"]
    entity, history = next(iter(histories.items()))
    head = history.slice(0, history.num_rows - 5)
    first = _stream(base, entity, head, reset=True).json()["score"]["state"]
    replica = first["replica"]
    replicas = sorted(set(_replicas(base, histories).values()))
    # Push MAX_ENTITIES other entities onto the same replica: ``entity`` is the LRU one.
    crowd = [n for n in (f"crowd-{i}" for i in range(200)) if owner(n, replicas) == replica]
    for name in crowd[:MAX_ENTITIES]:
        assert _stream(base, name, history.slice(0, 2)).status_code == 200
    tail = history.slice(head.num_rows)
    gone = _stream(base, entity, tail, expect_events_seen=head.num_rows).json()["score"]
    assert gone["state"]["status"] == "reset" and gone["state"]["reason"] == "lru_evicted"
    assert gone["state"]["events_seen"] == tail.num_rows  # scored from the new events, said so
    assert abs(gone["score"] - _reference(registry, tail)["score"]) <= 1e-5
    back = _stream(base, entity, tail, history=head, reset=True).json()["score"]
    assert back["state"]["status"] == "rebuilt" and back["state"]["events_seen"] == history.num_rows
    assert abs(back["score"] - _reference(registry, history)["score"]) <= 1e-5


def test_stream_requests_are_validated(served, histories):
    base = served["base"]
    entity, history = next(iter(histories.items()))
    bad_feature = {"events": [{**_events(history.slice(0, 1))[0], "colour": "red"}]}
    response = requests.post(f"{base}/v1/stream/{entity}", json=bad_feature, timeout=30)
    assert response.status_code == 422 and response.json()["field"] == "events[0].colour"
    response = requests.post(f"{base}/v1/stream/{entity}", data=b"{", timeout=30,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 400
    # Going back in time cannot be applied to a recurrent state: 422 naming the event.
    assert _stream(base, "order", history.slice(5, 5)).status_code == 200
    response = _stream(base, "order", history.slice(0, 2))
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "events[0].event_time"
    assert _stream(base, "x" * 300, history.slice(0, 1)).status_code == 422
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200


def test_replica_restart_is_answered_as_a_reset(served, registry, histories, ray_cluster):
    import ray
    from ray import serve

    base = served["base"]
    entity, history = list(histories.items())[-1]
    head = history.slice(0, 10)
    state = _stream(base, entity, head).json()["score"]["state"]
    actor = next(
        a for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].endswith(state["replica"])
    )  # fmt: skip
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    deadline = time.monotonic() + 120
    while True:  # Serve replaces the dead replica; wait until both run again
        status = serve.status().applications[APP].deployments["StreamHolder"]
        running = status.replica_states.get("RUNNING", 0)
        if status.status == "HEALTHY" and running == 2:
            break
        assert time.monotonic() < deadline, f"StreamHolder did not recover: {status}"
        time.sleep(1)
    reply = None
    while reply is None or reply.status_code != 200:  # the router may still see the dead one
        reply = _stream(base, entity, history.slice(10, 5), expect_events_seen=10)
        assert time.monotonic() < deadline, reply.text
    after = reply.json()["score"]["state"]
    assert after["replica"] != state["replica"]
    assert after["status"] == "reset" and after["reason"] == "unknown_entity"


def _score(base: str, entity: str, table: pa.Table) -> requests.Response:
    body = {"sequences": [{"entity": entity, "events": _events(table)}]}
    return requests.post(f"{base}/v1/score", json=body, timeout=60)


def test_traffic_split_is_sticky_and_shadow_mirrors_champion_requests(served, registry, histories):
    base = served["base"]
    history = next(iter(histories.values())).slice(0, 30)
    expected = _reference(registry, history)["score"]  # one window: both versions agree
    names = [f"split-{i}" for i in range(40)]
    variants = {}
    for name in names:
        response = _score(base, name, history)
        assert response.status_code == 200, response.text
        body = response.json()
        variants[name] = (body["model"]["variant"], body["model"]["version"])
        assert abs(body["scores"][0]["score"] - expected) <= 1e-5
    counts = Counter(v for v, _ in variants.values())
    assert 8 <= counts["challenger"] <= 32, counts  # 50% of 40, sticky per entity
    assert {version for v, version in variants.values() if v == "challenger"} == {
        registry["versions"][1]
    }
    for name in names[:10]:  # the same entity sees the same version again
        assert _score(base, name, history).json()["model"]["variant"] == variants[name][0]
    # Shadow: every champion-served request was mirrored, scored by version 2, logged only.
    champions = {n for n, (v, _) in variants.items() if v == "champion"}
    deadline = time.monotonic() + 30
    while True:
        lines = (
            served["shadow_log"].read_text().splitlines() if served["shadow_log"].exists() else []
        )
        logged = {s["entity"] for line in lines for s in json.loads(line)["scores"]}
        if champions <= logged:
            break
        assert time.monotonic() < deadline, f"shadowed {len(logged)} of {len(champions)}"
        time.sleep(0.5)
    record = json.loads(lines[0])
    assert record["champion"]["version"] == registry["versions"][0]
    assert record["challenger"]["version"] == registry["versions"][1]
    assert record["max_abs_diff"] <= 1e-5
    models = requests.get(f"{base}/v1/models", timeout=10).json()
    assert [m["variant"] for m in models["models"]] == ["champion", "challenger"]
    assert models["rollout"]["challenger_percent"] == 50 and models["rollout"]["shadow"]


def test_champion_switch_under_continuous_requests_loses_none(served, registry, histories):
    base = served["base"]
    entity, history = next(iter(histories.items()))
    window = history.slice(0, 30)
    # Entities the split sends to the champion: their replies show the champion's version.
    champions = [n for n in (f"switch-{i}" for i in range(40))
                 if _score(base, n, window).json()["model"]["variant"] == "champion"][:4]  # fmt: skip
    assert champions
    stop, failures, seen = threading.Event(), [], Counter()

    def hammer(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            name = champions[i % len(champions)]
            try:
                r = _score(base, name, window)
                s = _stream(
                    base, f"switch-stream-{i}", history.slice(n % history.num_rows, 1), reset=True
                )
            except requests.RequestException as exc:
                failures.append(repr(exc))
                continue
            for response in (r, s):
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            if r.status_code == 200:
                seen[r.json()["model"]["version"]] += 1

    def wait_for(version: str) -> None:
        deadline, before = time.monotonic() + 60, seen[version]
        while seen[version] < before + 5:
            assert time.monotonic() < deadline, f"version {version} never answered: {seen}"
            time.sleep(0.2)

    v1, v2 = registry["versions"]
    with ThreadPoolExecutor(max_workers=3) as pool:
        workers = [pool.submit(hammer, i) for i in range(3)]
        try:
            wait_for(v1)
            registry["registry"].promote(int(v2), "switch under load (test)", override_gate=True)
            wait_for(v2)
            registry["registry"].rollback("back again (test)")
            wait_for(v1)
        finally:
            stop.set()
            for w in workers:
                w.result()
    assert not failures, failures[:5]
    assert seen[v1] and seen[v2]
