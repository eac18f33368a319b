"""Streaming scoring: carried state equals re-scoring the full history; bounded and honest."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.train import model_config
from seqcore.manifest import load_manifest
from seqcore.scorer import SequenceScorer
from seqmodels import build_model
from serving.stream_state import StateStore
from serving.streaming import StreamingScorer, StreamOrderError
from tests.conftest import tiny_params

ENTITY = "account_id"


def _scorer(
    tiny_pipeline,
    architecture: str,
    task: str = "classify",
    pooling: str | None = None,
    **model: object,
) -> SequenceScorer:
    params = tiny_params()
    train = params.train.with_model(architecture=architecture, **model)
    train = dataclasses.replace(train, task=task)
    params = dataclasses.replace(params, train=train)
    manifest = load_manifest(tiny_pipeline["shards"])
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(model_config(params, manifest), pooling=pooling))
    return SequenceScorer(model, manifest, max_tokens=4096)


@pytest.fixture(scope="module")
def events(tiny_pipeline) -> pa.Table:
    return pq.read_table(tiny_pipeline["validated"])


def _longest(events: pa.Table, rank: int = 0) -> pa.Table:
    counts = sorted(
        pc.value_counts(events[ENTITY]).to_pylist(), key=lambda c: (-c["counts"], c["values"])
    )
    entity = counts[rank]["values"]
    mine = events.filter(pc.equal(events[ENTITY], entity))
    return mine.sort_by([("event_time", "ascending"), ("seq_no", "ascending")])


def _update(streamer: StreamingScorer, entity: str, events: pa.Table, history=None, **kwargs):
    """``update`` with the events as a request brings them: columns, not a table."""
    if history is not None:
        history = streamer.columns(history)
    return streamer.update(entity, streamer.columns(events), history=history, **kwargs)


def _stream(streamer: StreamingScorer, history: pa.Table, chunks: list[int], entity="e"):
    results, start = [], 0
    for size in chunks:
        results.append(_update(streamer, entity, history.slice(start, size)))
        start += size
    return results


def _chunks(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(min(rng.choice([1, 1, 2, 5, 17]), n - sum(sizes))))
    return sizes


@pytest.mark.parametrize(
    "architecture,pooling",
    [("lstm", None), ("gru", None), ("lstm", "mean"), ("transformer", None), ("tcn", None)],
    ids=["lstm", "gru", "lstm-mean", "transformer", "tcn"],
)
def test_streamed_scores_equal_full_rescoring(tiny_pipeline, events, architecture, pooling):
    scorer = _scorer(tiny_pipeline, architecture, pooling=pooling)
    streamer = StreamingScorer(scorer, "1", StateStore(100, 3600))
    history = _longest(events)
    # Longer than the training window: the RNN must carry state past it, the transformer
    # must roll its window.
    assert history.num_rows > scorer.window_len
    sizes = _chunks(history.num_rows, seed=len(architecture))
    results = _stream(streamer, history, sizes)
    seen = 0
    for size, result in zip(sizes, results, strict=True):
        seen += size
        expected = streamer.reference(history.slice(0, seen)).iloc[0]
        assert result["score"] == pytest.approx(expected["score"], abs=1e-5)
        assert result["probabilities"].keys() == expected["probabilities"].keys()
        np.testing.assert_allclose(
            list(result["probabilities"].values()),
            list(expected["probabilities"].values()),
            atol=1e-5,
        )
        assert result["n_events"] == expected["n_events"]
        assert result["window_end"] == expected["window_end"]
        assert result["state"]["events_seen"] == seen
    assert [r["state"]["status"] for r in results] == ["new"] + ["continued"] * (len(sizes) - 1)
    if architecture in ("transformer", "tcn"):  # a rolling window: the scorer's own window
        assert results[-1]["n_events"] == scorer.window_len
        final = scorer.score(history).iloc[0]
        assert results[-1]["score"] == pytest.approx(final["score"], abs=1e-5)
    else:  # the whole history
        assert results[-1]["n_events"] == history.num_rows


@pytest.mark.parametrize("task", ["next_event", "forecast"])
def test_per_step_tasks_stream_too(tiny_pipeline, events, task):
    scorer = _scorer(tiny_pipeline, "gru", task=task)
    streamer = StreamingScorer(scorer, "1", StateStore(100, 3600))
    history = _longest(events, rank=1).slice(0, 60)
    last = _stream(streamer, history, [20, 1, 39])[-1]
    expected = streamer.reference(history).iloc[0]
    assert last["score"] == pytest.approx(expected["score"], abs=1e-5)
    key = "top5" if task == "next_event" else "forecast"
    assert last[key] == pytest.approx(expected[key], abs=1e-4)


@pytest.fixture(scope="module")
def lstm(tiny_pipeline) -> SequenceScorer:
    return _scorer(tiny_pipeline, "lstm")


def test_lru_eviction_is_reported_and_history_rebuilds(lstm, events):
    streamer = StreamingScorer(lstm, "1", StateStore(max_entities=2, ttl_s=3600))
    a, b, c = (_longest(events, rank=r).slice(0, 40) for r in range(3))
    _update(streamer, "a", a.slice(0, 30))
    _update(streamer, "b", b.slice(0, 30))
    _update(streamer, "c", c.slice(0, 30))  # evicts a, the least recently used
    assert len(streamer.store) == 2 and streamer.store.evicted["lru"] == 1
    gone = _update(streamer, "a", a.slice(30))
    assert gone["state"]["status"] == "reset" and gone["state"]["reason"] == "lru_evicted"
    assert gone["state"]["events_seen"] == 10  # scored from the new events alone, and says so
    assert gone["score"] == pytest.approx(
        streamer.reference(a.slice(30)).iloc[0]["score"], abs=1e-5
    )
    streamer.store.drop("a", "test")
    rebuilt = _update(streamer, "a", a.slice(30), history=a.slice(0, 30))
    assert rebuilt["state"]["status"] == "rebuilt" and rebuilt["state"]["events_seen"] == 40
    assert rebuilt["score"] == pytest.approx(streamer.reference(a).iloc[0]["score"], abs=1e-5)
    # Kept now: c, then a (most recent). A new entity pushes out c, not a.
    _update(streamer, "d", c.slice(0, 5))
    assert streamer.store.get("c") == (None, "lru_evicted")
    assert streamer.store.get("a")[0].events_seen == 40


def test_ttl_expiry_and_sweep(lstm, events):
    now = [0.0]
    store = StateStore(max_entities=10, ttl_s=60, clock=lambda: now[0])
    streamer = StreamingScorer(lstm, "1", store)
    history = _longest(events).slice(0, 20)
    _update(streamer, "x", history.slice(0, 10))
    _update(streamer, "y", history.slice(0, 10))
    now[0] = 61.0
    late = _update(streamer, "x", history.slice(10))
    assert late["state"]["status"] == "reset" and late["state"]["reason"] == "ttl_expired"
    assert store.sweep() == 1 and len(store) == 1  # y expired too; x was just renewed
    assert store.evicted == {"lru": 0, "ttl": 2}


def test_a_replica_that_never_saw_the_entity_says_reset(lstm, events):
    streamer = StreamingScorer(lstm, "1", StateStore(10, 3600))
    history = _longest(events).slice(0, 20)
    fresh = _update(streamer, "z", history.slice(10), expect_events_seen=10)
    assert fresh["state"]["status"] == "reset" and fresh["state"]["reason"] == "unknown_entity"
    mismatch = _update(streamer, "z", history.slice(0, 1), expect_events_seen=3)
    assert mismatch["state"]["status"] == "reset"
    assert mismatch["state"]["reason"].startswith("events_seen_mismatch")
    asked = _update(streamer, "z", history.slice(1, 1), reset=True)
    assert asked["state"] == {**asked["state"], "status": "reset", "reason": "requested"}


def test_a_new_model_version_drops_old_state(lstm, events):
    streamer = StreamingScorer(lstm, "1", StateStore(10, 3600))
    history = _longest(events).slice(0, 20)
    _update(streamer, "m", history.slice(0, 10))
    streamer.swap_model(lstm, "2")
    after = _update(streamer, "m", history.slice(10))
    assert after["state"]["status"] == "reset" and after["state"]["reason"] == "model_changed"


def test_events_before_the_last_streamed_one_are_refused(lstm, events):
    streamer = StreamingScorer(lstm, "1", StateStore(10, 3600))
    history = _longest(events).slice(0, 20)
    _update(streamer, "o", history.slice(10, 10))
    with pytest.raises(StreamOrderError, match="precedes the entity's last streamed event"):
        _update(streamer, "o", history.slice(0, 5))
    # A refused call changes nothing: the entity still has its 10 events.
    assert streamer.store.get("o")[0].events_seen == 10


@pytest.mark.parametrize(
    ("task", "block"), [("classify", "dilated"), ("forecast", "dilated"), ("forecast", "inception")]
)
def test_a_causal_tcn_keeps_only_its_receptive_field(tiny_pipeline, events, task, block):
    """Its last output reads its last ``receptive_field`` inputs only: a state of that many
    events streams exactly what re-scoring the window gives, at a fraction of the cost."""
    scorer = _scorer(
        tiny_pipeline, "tcn", task=task, pooling="last" if task == "classify" else None,
        block=block, num_layers=2 if block == "dilated" else 1,  # auto: the whole window
    )  # fmt: skip
    reach = scorer.config.receptive_field
    assert reach is not None and reach < scorer.window_len
    streamer = StreamingScorer(scorer, "1", StateStore(100, 3600))
    assert streamer.keep == reach
    history = _longest(events)
    sizes = _chunks(history.num_rows, seed=5)
    results = _stream(streamer, history, sizes)
    seen = 0
    for size, result in zip(sizes, results, strict=True):
        seen += size
        expected = streamer.reference(history.slice(0, seen)).iloc[0]
        key = "score" if task == "classify" else "forecast"
        np.testing.assert_allclose(
            np.asarray(result[key], dtype=float), np.asarray(expected[key], dtype=float), atol=1e-5
        )
    state, _ = streamer.store.get("e")
    assert len(state.window_cat) == reach and state.events_seen == history.num_rows
    mean = StreamingScorer(_scorer(tiny_pipeline, "tcn", pooling="mean"), "1", StateStore(9, 60))
    assert mean.keep == scorer.window_len  # a mean over the window needs all of it
