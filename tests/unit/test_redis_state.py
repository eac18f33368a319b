"""Streaming state in Redis (a real redis-server per module): scored where a call lands,
compare-and-set against concurrent calls, expiry and eviction with their reasons, and an
outage that is a clear error and heals when the server returns."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis

from serving.redis_server import LocalRedis
from serving.redis_state import PREFIX, RedisStateStore, StateStoreUnavailable
from serving.state_codec import StateDecodeError, decode_state, encode_state
from serving.stream_state import EntityState
from serving.streaming import StateConflict, StreamingScorer, StreamOrderError
from tests.unit.test_streaming import _chunks, _longest, _scorer, _update
from tests.unit.test_streaming import events as events  # noqa: F401  (the module fixture)


@pytest.fixture(scope="module")
def server():
    with LocalRedis(max_memory_mb=64) as local:
        yield local


@pytest.fixture
def url(server):
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    client.close()
    return server.url


def _state(**arrays) -> EntityState:
    return EntityState(model_version="3", events_seen=7, last_time_us=1_700_000_000_000_000,
                       last_seq=None, **arrays)  # fmt: skip


def test_states_round_trip_as_bytes_without_pickle():
    rng = np.random.default_rng(0)
    h, c = rng.standard_normal((2, 2, 64)).astype(np.float32)
    cases = [
        _state(recurrent=(h, c), step_sum=rng.standard_normal(64)),
        _state(recurrent=h),
        _state(
            window_cat=rng.integers(0, 9, (5, 3)),
            window_num=rng.standard_normal((5, 2)),
            window_time_us=np.arange(5, dtype=np.int64),
        ),  # fmt: skip
    ]
    for state in cases:
        blob = encode_state(dataclasses_replace(state, last_seq=12))
        back = decode_state(blob)
        assert (back.model_version, back.events_seen, back.last_seq) == ("3", 7, 12)
        for name in ("step_sum", "window_cat", "window_num", "window_time_us"):
            a, b = getattr(state, name), getattr(back, name)
            assert (a is None and b is None) or np.array_equal(a, b)
        if isinstance(state.recurrent, tuple):
            assert all(
                np.array_equal(x, y) for x, y in zip(state.recurrent, back.recurrent, strict=True)
            )
        elif state.recurrent is not None:
            assert np.array_equal(state.recurrent, back.recurrent)
    assert len(encode_state(cases[0])) < 2 * (2 * 2 * 64 * 4 + 64 * 8)  # compact: ~the arrays
    blob = encode_state(cases[1])
    for broken in (b"", blob[:-3], blob + b"x", b"\x80\x04\x95pickle"):
        with pytest.raises(StateDecodeError):
            decode_state(broken)


def dataclasses_replace(state, **changes):
    import dataclasses

    return dataclasses.replace(state, **changes)


def test_a_write_succeeds_only_over_the_count_it_read(url):
    store = RedisStateStore(url, ttl_s=60)
    assert store.get("e") == (None, None)
    first = _state()
    assert store.put("e", first, expected=None)
    assert not store.put("e", first, expected=None)  # someone wrote first
    assert not store.put("e", dataclasses_replace(first, events_seen=9), expected=6)
    assert store.put("e", dataclasses_replace(first, events_seen=9), expected=7)
    assert store.get("e")[0].events_seen == 9


def test_expiry_and_eviction_are_resets_with_their_reason(url):
    store = RedisStateStore(url, ttl_s=0.3)
    store.put("old", _state(), expected=None)
    time.sleep(0.5)
    assert store.get("old") == (None, "ttl_expired")
    store = RedisStateStore(url, ttl_s=60)
    store.put("gone", _state(), expected=None)
    store.client.delete(f"{PREFIX}s:gone")  # what maxmemory eviction does to a state
    assert store.get("gone") == (None, "evicted")
    assert store.get("never") == (None, None)


def test_the_memory_cap_evicts_states_and_the_reply_says_so(tiny_pipeline, events):
    with LocalRedis(max_memory_mb=2, eviction_policy="volatile-lru") as small:
        scorer = _scorer(tiny_pipeline, "lstm")
        store = RedisStateStore(small.url, ttl_s=600)
        streamer = StreamingScorer(scorer, "1", store)
        history = _longest(events)
        first = _update(streamer, "entity-0", history.slice(0, 3))
        assert first["state"]["status"] == "new"
        big = _state(step_sum=np.zeros(8192))  # 64 KiB each: 200 of them hold 12 MiB
        for i in range(1, 200):
            store.put(f"filler-{i}", big, expected=None)
        assert redis.Redis.from_url(small.url).info("stats")["evicted_keys"] > 0
        later = _update(streamer, "entity-0", history.slice(3, 1))
        assert later["state"]["status"] == "reset" and later["state"]["reason"] == "evicted"


@pytest.mark.parametrize("architecture", ["lstm", "transformer"])
def test_two_replicas_sharing_the_store_stream_what_one_history_scores(
    tiny_pipeline, events, url, architecture
):
    """Calls alternate between two scorers (two replicas); the streamed score equals the
    full re-score of the history so far."""
    scorer = _scorer(tiny_pipeline, architecture)
    replicas = [StreamingScorer(scorer, "1", RedisStateStore(url, ttl_s=600)) for _ in range(2)]
    history = _longest(events)
    start, results = 0, []
    for i, size in enumerate(_chunks(history.num_rows, seed=3)):
        results.append(_update(replicas[i % 2], "e", history.slice(start, size)))
        start += size
    assert [r["state"]["status"] for r in results] == ["new"] + ["continued"] * (len(results) - 1)
    assert results[-1]["state"]["events_seen"] == history.num_rows
    expected = replicas[0].reference(history)["score"].iloc[0]
    assert abs(results[-1]["score"] - expected) <= 1e-5


def test_concurrent_calls_for_one_entity_never_interleave_silently(tiny_pipeline, events, url):
    scorer = _scorer(tiny_pipeline, "lstm")
    history = _longest(events)
    one = history.slice(0, 1)
    store = RedisStateStore(url, ttl_s=600)
    seed = StreamingScorer(scorer, "1", store)
    _update(seed, "hot", one)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def call(i: int) -> None:
        streamer = StreamingScorer(scorer, "1", RedisStateStore(url, ttl_s=600), retries=0)
        barrier.wait()
        try:
            _update(streamer, "hot", history.slice(1 + i, 1))
            outcomes.append("ok")
        except StateConflict as exc:
            assert "concurrent calls" in str(exc)
            outcomes.append("conflict")
        except StreamOrderError:  # it read a state that a later event had already advanced
            outcomes.append("refused")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state, _ = store.get("hot")
    # Every success advanced the count by one, on top of the others: none was lost.
    assert state.events_seen == 1 + outcomes.count("ok")
    assert outcomes.count("ok") >= 1


def test_an_outage_is_a_clear_error_and_the_store_heals(tiny_pipeline, events):
    scorer = _scorer(tiny_pipeline, "gru")
    history = _longest(events)
    server = LocalRedis(max_memory_mb=16).start()
    try:
        port = server.port
        streamer = StreamingScorer(scorer, "1", RedisStateStore(server.url, ttl_s=600, timeout_s=1))
        _update(streamer, "e", history.slice(0, 3))
        server.stop()
        with pytest.raises(
            StateStoreUnavailable, match=rf"Redis at 127.0.0.1:{port}/0\) unavailable"
        ) as caught:
            _update(streamer, "e", history.slice(3, 1))
        assert server.password not in str(caught.value)
        back = LocalRedis(max_memory_mb=16, port=port)
        back.password = server.password
        server = back.start()
        # A server without persistence comes back empty: a client that says how many events
        # it sent before hears that its state is gone, not that it is new.
        result = _update(streamer, "e", history.slice(3, 1), expect_events_seen=3)
        assert result["state"]["status"] == "reset"
        assert result["state"]["reason"] == "unknown_entity"
        result = _update(streamer, "e", history.slice(4, 1), expect_events_seen=1)
        assert result["state"]["status"] == "continued"
    finally:
        server.stop()


def test_bytes_this_code_did_not_write_are_a_reset_never_unpickled(url):
    store = RedisStateStore(url, ttl_s=60)
    store.client.hset(f"{PREFIX}s:odd", mapping={"seen": "4", "state": b"\x80\x04\x95pickle"})
    assert store.get("odd") == (None, "unreadable_state")
    assert not store.client.exists(f"{PREFIX}s:odd")  # dropped, so the next write succeeds
    assert store.put("odd", _state(), expected=None)
