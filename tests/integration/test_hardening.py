"""The scoring API under hostile input, over real HTTP, with authentication on (issue 15).

One application, deployed like tests/integration/test_serving.py's but with two API tokens
(``score`` and ``admin``), a small body limit and a short body timeout. A corpus of more than
100 bad requests must all be answered with a 4xx, none with a 5xx, and leave the server
alive; oversized bodies, chunked or declared, must not leave the proxy or the replica holding
their memory; a client that trickles its body is cut off.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import psutil
import pyarrow.parquet as pq
import pytest
import requests

from serving.cli import DEFAULT_CONFIG, deployment_options, load_serve_config
from tests.integration.conftest import register_versions, serving

pytestmark = pytest.mark.integration

MODEL = "seqops-hardening-test"
APP = "seqops-hardening"
SCORE_TOKEN = "score-token-" + "s" * 20
ADMIN_TOKEN = "admin-token-" + "a" * 20
MAX_BODY = 100_000
BODY_TIMEOUT_S = 2.0
SCORE = {"Authorization": f"Bearer {SCORE_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def served(ray_cluster, trained_run, tmp_path_factory) -> Iterator[str]:

    from serving.app import build_app
    from serving.config import serving_config

    registry = register_versions(trained_run, MODEL)
    registry["client"].set_registered_model_alias(MODEL, "champion", registry["versions"][0])
    tokens = tmp_path_factory.mktemp("auth") / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{name: app, scopes: [score], token: {SCORE_TOKEN}}}\n"
        f"  - {{name: ops, scopes: [admin], token: {ADMIN_TOKEN}}}\n"
    )
    app = load_serve_config(DEFAULT_CONFIG)["applications"][0]
    options = deployment_options(app)
    for name in options:
        options[name]["ray_actor_options"] = {"num_cpus": 0.25}
        options[name]["num_replicas"] = 1
    options["ScoringAPI"]["user_config"] = {
        **options["ScoringAPI"]["user_config"],
        "max_body_bytes": MAX_BODY,
        "body_timeout_s": BODY_TIMEOUT_S,
        "max_sequences_per_request": 8,
        "max_events_per_sequence": 400,
    }
    args = {
        **app["args"],
        "model_name": MODEL,
        "tracking_uri": registry["uri"],
        "tokens_file": str(tokens),
    }
    with serving(build_app(serving_config(args), options), APP) as base:
        yield base


@pytest.fixture(scope="module")
def good_event(tiny_pipeline) -> dict:
    """One real event of the served model's schema, as a client sends it."""
    row = pq.read_table(tiny_pipeline["validated"]).slice(0, 1).to_pylist()[0]
    event = {k: v for k, v in row.items() if k not in ("account_id", "label", "_arrival")}
    event["event_time"] = event["event_time"].isoformat()
    return event


def _score(base: str, body, headers: dict | None = None, **kw) -> requests.Response:
    data = json.dumps(body) if isinstance(body, dict | list) else body
    headers = {"Content-Type": "application/json", **SCORE, **(headers or {})}
    return requests.post(f"{base}/v1/score", data=data, headers=headers, timeout=60, **kw)


# --- who may call what -------------------------------------------------------------------------


def test_each_route_asks_for_a_token_and_its_scope(served, good_event):
    body = {"sequences": [{"entity": "e1", "events": [good_event]}]}
    stream = f"{served}/v1/stream/e1"
    json_ct = {"Content-Type": "application/json"}
    calls = {  # route -> (method, url, body)
        "score": ("POST", f"{served}/v1/score", body),
        "stream": ("POST", stream, {"events": [good_event]}),
        "openapi": ("GET", f"{served}/openapi.json", None),
        "models": ("GET", f"{served}/v1/models", None),
    }
    for name, (method, url, payload) in calls.items():
        for headers in ({}, {"Authorization": "Bearer not-a-token-at-all"}, {"X": "y"}):
            r = requests.request(method, url, json=payload, headers=headers, timeout=30)
            assert r.status_code == 401, (name, headers, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert r.json()["field"] == "headers.authorization"
    for name in ("score", "stream", "openapi"):
        method, url, payload = calls[name]
        r = requests.request(method, url, json=payload, headers=SCORE, timeout=30)
        assert r.status_code == 200, (name, r.text)
    r = requests.get(f"{served}/v1/models", headers=SCORE, timeout=30)
    assert r.status_code == 403 and "'admin' scope" in r.json()["error"]
    models = requests.get(f"{served}/v1/models", headers=ADMIN, timeout=30).json()
    assert models["auth"] == {
        "enabled": True,
        "tokens": [{"name": "app", "scopes": ["score"]}, {"name": "ops", "scopes": ["admin"]}],
    }
    assert SCORE_TOKEN not in json.dumps(models) and ADMIN_TOKEN not in json.dumps(models)
    # Resetting an entity's stream state is an admin's act; adding events is not.
    reset = {"events": [good_event], "reset": True}
    r = requests.post(stream, json=reset, headers={**SCORE, **json_ct}, timeout=30)
    assert r.status_code == 403
    assert requests.post(stream, json=reset, headers=ADMIN, timeout=30).status_code == 200
    assert requests.get(f"{served}/healthz", timeout=30).status_code == 200  # probes: open
    doc = requests.get(f"{served}/openapi.json", headers=SCORE, timeout=30).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert requests.get(f"{served}/docs", timeout=30).status_code == 404  # no token in a browser


def test_entity_ids_with_a_slash_stream_when_percent_encoded(served, good_event):
    r = requests.post(
        f"{served}/v1/stream/tenant%2Fcard-1", json={"events": [good_event]}, headers=SCORE,
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["score"]["entity"] == "tenant/card-1"


# --- hostile input -----------------------------------------------------------------------------


def _hostile(good_event: dict) -> list[tuple[str, dict]]:
    """(name, request kwargs) of bad requests; each must get a 4xx."""
    ev = good_event

    def seq(events=None, entity="e"):
        return {"sequences": [{"entity": entity, "events": events or [ev]}]}

    def with_(**fields):
        return seq([{**ev, **fields}])

    cases: list[tuple[str, dict]] = []
    bodies = {
        "empty": b"",
        "not json": b"hello",
        "truncated": b'{"sequences": [',
        "json null": b"null",
        "json list": b"[]",
        "json string": b'"x"',
        "json number": b"42",
        "nan literal": json.dumps(seq()).replace('"events"', '"x": NaN, "events"').encode(),
        "deep nesting": b"[" * 5000 + b"]" * 5000,
        "invalid utf8": b'{"sequences": "\xff\xfe"}',
        "bom": b"\xef\xbb\xbf" + json.dumps(seq()).encode(),
        "duplicate keys": b'{"sequences": [], "sequences": 5}',
        "trailing garbage": json.dumps(seq()).encode() + b"}}}",
        "huge integer": b'{"sequences": ' + b"9" * 5000 + b"}",
    }
    for name, data in bodies.items():
        cases.append((f"body: {name}", {"data": data}))
    structures = {
        "no sequences": {},
        "sequences null": {"sequences": None},
        "sequences object": {"sequences": {"entity": "e"}},
        "sequences empty": {"sequences": []},
        "too many sequences": {
            "sequences": [{"entity": f"e{i}", "events": [ev]} for i in range(9)]
        },
        "unknown top field": {**seq(), "admin": True},
        "entity missing": {"sequences": [{"events": [ev]}]},
        "entity empty": seq(entity=""),
        "entity number": seq(entity=5),
        "entity list": seq(entity=["a"]),
        "entity huge": seq(entity="x" * 50_000),
        "entity control chars": seq(entity="a\x00b"),
        "entity newline": seq(entity="a\nb"),
        "events missing": {"sequences": [{"entity": "e"}]},
        "events empty": {"sequences": [{"entity": "e", "events": []}]},
        "events object": {"sequences": [{"entity": "e", "events": ev}]},
        "events null": {"sequences": [{"entity": "e", "events": None}]},
        "too many events": seq([ev] * 401),
        "event null": seq([None]),
        "event list": seq([[1, 2]]),
        "event empty": seq([{}]),
        "event extra field": with_(evil="1"),
        "event entity key inside": with_(account_id="x"),
        "label sent": with_(label=1),
        # The validate stage's own rules, from the model's manifest (issue 15's findings).
        "time far in the future": with_(event_time="9999-12-31T00:00:00Z"),
        "time before the floor": with_(event_time="1900-01-01T00:00:00Z"),
        "negative sequence number": with_(seq_no=-5),
        "amount 1e308": with_(amount=1e308),
    }
    for name, body in structures.items():
        cases.append((f"structure: {name}", {"json": body}))
    time_col = "event_time"
    bad_times = ["", "yesterday", "2025-13-01T00:00:00Z", "2025-02-30T00:00:00Z", "12:00",
                 "2025-01-01T25:00:00Z", 0, 1.5, None, True, [], {}, "9" * 100,
                 "2025-01-01T00:00:00+25:00", "0000-01-01T00:00:00Z"]  # fmt: skip
    for i, value in enumerate(bad_times):
        cases.append((f"time {i}: {value!r}"[:40], {"json": with_(**{time_col: value})}))
    numeric = [k for k, v in ev.items() if isinstance(v, float)]
    categorical = [k for k, v in ev.items() if isinstance(v, str) and k != time_col]
    integer = [k for k, v in ev.items() if isinstance(v, int) and not isinstance(v, bool)]
    for col in numeric:
        for value in ("1.0", None, True, [1.0], {"v": 1}, "NaN", "Infinity"):
            cases.append((f"numeric {col}={value!r}", {"json": with_(**{col: value})}))
        for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
            text = json.dumps(with_(**{col: 0.0})).replace(f'"{col}": 0.0', f'"{col}": ')
            cases.append(
                (f"numeric {col}={raw!r}", {"data": text.replace(f'"{col}": ', f'"{col}": {raw.decode()}')})
            )  # fmt: skip
        cases.append((f"missing {col}", {"json": seq([{k: v for k, v in ev.items() if k != col}])}))
    for col in categorical:
        for value in (1, None, True, ["a"], {"a": 1}):
            cases.append((f"categorical {col}={value!r}", {"json": with_(**{col: value})}))
    for col in integer:
        for value in (1.5, "3", None, True, 2**64, -(2**64)):
            cases.append((f"integer {col}={value!r}", {"json": with_(**{col: value})}))
    headers = {
        "no content type": {"Content-Type": ""},
        "text/plain": {"Content-Type": "text/plain"},
        "form": {"Content-Type": "application/x-www-form-urlencoded"},
        "multipart": {"Content-Type": "multipart/form-data; boundary=x"},
        "xml": {"Content-Type": "application/xml"},
    }
    for name, hdrs in headers.items():
        cases.append((f"header: {name}", {"json": seq(), "headers": hdrs}))
    cases.append(
        ("declared too large", {"data": b"{}", "headers": {"Content-Length": "999999999"}})
    )
    cases.append(("body over the limit", {"data": b" " * (MAX_BODY + 1)}))
    cases.append(("chunked over the limit", {"data": (b" " * 10_000 for _ in range(20))}))
    return cases


def test_a_hostile_corpus_gets_only_4xx_and_the_server_stays_up(served, good_event):
    cases = _hostile(good_event)
    assert len(cases) >= 100
    statuses = {}
    for name, kwargs in cases:
        headers = kwargs.pop("headers", {})
        if "json" in kwargs:
            kwargs["data"] = json.dumps(kwargs.pop("json"))
        try:
            r = _score(served, kwargs.pop("data"), headers=headers, **kwargs)
        except requests.ConnectionError:  # a refused oversize upload may be cut mid-send
            statuses[name] = "closed"
            continue
        statuses[name] = r.status_code
        if r.status_code < 500:
            body = r.json()
            assert set(body) >= {"error", "field"}, (name, body)
            assert len(r.content) < 20_000, (name, "the reply echoes a large input")
    bad = {n: s for n, s in statuses.items() if s == "closed" or not 400 <= s < 500}
    allowed_closed = {"declared too large", "body over the limit", "chunked over the limit"}
    assert set(bad) <= allowed_closed, bad
    assert requests.get(f"{served}/healthz", timeout=30).status_code == 200
    # Routes and methods that do not exist, with and without a token.
    for method, path in [("GET", "/v1/score"), ("DELETE", "/v1/models"), ("GET", "/admin"),
                         ("POST", "/v1/stream/"), ("GET", "/docs"), ("PUT", "/healthz")]:  # fmt: skip
        for headers in ({}, SCORE):
            r = requests.request(method, served + path, headers=headers, timeout=30)
            assert 400 <= r.status_code < 500, (method, path, r.status_code)
    good = {"sequences": [{"entity": "e", "events": [good_event]}]}
    assert _score(served, good).status_code == 200


def test_a_huge_entity_id_is_refused_and_never_echoed(served, good_event):
    entity = "k" * 300
    r = _score(served, {"sequences": [{"entity": entity, "events": [good_event]}]})
    assert r.status_code == 422 and entity not in r.text
    r = requests.post(f"{served}/v1/stream/{entity}", json={"events": [good_event]},
                      headers=SCORE, timeout=30)  # fmt: skip
    assert r.status_code == 422 and entity not in r.text


# --- resources ---------------------------------------------------------------------------------


def _serve_processes() -> dict[str, psutil.Process]:
    """The proxy and the ScoringAPI replica, by the process titles Ray gives its actors."""
    wanted = ("ray::ProxyActor", f"ray::ServeReplica:{APP}:ScoringAPI")
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        for name in wanted:
            if title.startswith(name):
                found[name] = proc
    assert len(found) == 2, found
    return found


def _oversize_growth(served: str) -> dict[str, tuple[int, int]]:
    """Resident memory of the proxy and the ScoringAPI replica before and after 20 oversize
    bodies (half chunked, half declared), after a warm-up of four."""
    processes = _serve_processes()

    def rss() -> dict[str, int]:
        return {name: p.memory_info().rss for name, p in processes.items()}

    def oversize(i: int) -> None:
        chunk = b" " * (1 << 20)
        try:
            body = (chunk for _ in range(20))  # 20 MiB, chunked: no Content-Length to refuse
            r = _score(served, body) if i % 2 else _score(served, b" " * (20 << 20))
            assert r.status_code == 413
        except requests.ConnectionError:
            pass  # the server may close the connection once it has refused the body

    for i in range(4):  # warm-up: allocator pools and first-use imports
        oversize(i)
    before = rss()
    for i in range(20):
        oversize(i)
    time.sleep(2)
    after = rss()
    assert requests.get(f"{served}/healthz", timeout=30).status_code == 200
    return {name: (before[name], after[name]) for name in processes}


def test_oversize_bodies_do_not_keep_their_memory(served):
    # The proxy reads no more of a body than the cluster's limit (conftest's
    # PROXY_MAX_BODY_BYTES, twice this application's): without that bound it read each 20 MiB
    # whole, and the object store pages it passed them through stayed in its resident memory.
    for name, (before, after) in _oversize_growth(served).items():
        assert after <= before * 1.10, (name, before >> 20, after >> 20)


def test_a_body_that_trickles_in_is_cut_off(served):
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + SCORE_TOKEN.encode() + b"\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        reply = b""
        conn.settimeout(1.0)
        while time.monotonic() - started < 30 and b"\r\n\r\n" not in reply:
            try:
                conn.sendall(b" ")  # one byte a second, never the whole body
                reply += conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert elapsed < BODY_TIMEOUT_S + 10
