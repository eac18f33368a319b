"""Raw-event scoring agrees with the shards the model was trained on; padding never matters."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.predict import predict_split
from pipelines.train import model_config
from seqcore.manifest import Manifest, load_manifest
from seqcore.scorer import CallCost, SequenceScorer, measure_call_cost
from seqmodels import build_model
from tests.conftest import tiny_params

FEWEST_CALLS = CallCost(call_s=1e9)  # a call priced above any padding: fewest calls


@pytest.fixture(scope="module", params=["lstm", "transformer"])
def scorer(request, tiny_pipeline):
    params = tiny_params()
    import dataclasses

    params = dataclasses.replace(params, train=params.train.with_model(architecture=request.param))
    manifest = load_manifest(tiny_pipeline["shards"])
    torch.manual_seed(0)
    model = build_model(model_config(params, manifest))
    return SequenceScorer(model, manifest, max_tokens=512)


def _test_events(tiny_pipeline, manifest):
    table = pq.read_table(tiny_pipeline["validated"])
    test_entities = set()
    for bucket in manifest.splits["test"].buckets.values():
        for part in bucket.parts:
            test_entities |= set(
                pq.read_table(tiny_pipeline["shards"] / part, columns=["entity"])[
                    "entity"
                ].to_pylist()
            )
    return table.filter(pc.is_in(table["account_id"], value_set=pa.array(sorted(test_entities))))


def test_raw_events_score_like_their_shard_window(scorer, tiny_pipeline):
    """The model alone (manifest inside) turns raw events into the exact training inputs."""
    preds = predict_split(scorer.model, tiny_pipeline["shards"], "test")
    events = _test_events(tiny_pipeline, scorer.manifest)
    scores = scorer.score(events).set_index("entity")
    assert len(scores) == len(preds.entity) > 5
    for entity, probs, length in zip(preds.entity, preds.outputs, preds.length, strict=True):
        assert scores.loc[entity, "n_events"] == length
        named = scores.loc[entity, "probabilities"]
        assert list(named) == [str(c) for c in scorer.manifest.targets.label.classes]
        np.testing.assert_allclose(list(named.values()), probs, atol=1e-5)
        assert scores.loc[entity, "predicted"] == scorer.class_names[int(np.argmax(probs))]


def test_scores_do_not_depend_on_row_order_batching_or_company(scorer, tiny_pipeline):
    events = _test_events(tiny_pipeline, scorer.manifest)
    together = scorer.score(events).set_index("entity")["score"]
    shuffled = events.take(pa.array(np.random.default_rng(1).permutation(events.num_rows)))
    tiny_batches = SequenceScorer(scorer.model, scorer.manifest, max_tokens=1)
    apart = tiny_batches.score(shuffled).set_index("entity")["score"]
    np.testing.assert_allclose(apart.loc[together.index].to_numpy(), together.to_numpy(), atol=1e-5)
    # one call padding every sequence to the longest: calls priced far above padding
    padded = SequenceScorer(scorer.model, scorer.manifest, max_tokens=10**9, call_cost=FEWEST_CALLS)
    lengths = np.array([len(s.cat_ids) for s in padded.encode(events)])
    assert len(padded._batches(np.minimum(lengths, padded.window_len))) == 1
    once = padded.score(events).set_index("entity")["score"]
    np.testing.assert_allclose(once.loc[together.index].to_numpy(), together.to_numpy(), atol=1e-5)
    one = together.index[0]
    alone = scorer.score(events.filter(pc.equal(events["account_id"], one)))
    assert alone["score"].iloc[0] == pytest.approx(together.loc[one], abs=1e-5)


def test_only_the_most_recent_window_is_scored(scorer, tiny_pipeline):
    events = pq.read_table(tiny_pipeline["validated"])
    counts = pc.value_counts(events["account_id"]).to_pylist()
    longest = max(counts, key=lambda c: c["counts"])
    assert longest["counts"] > scorer.window_len
    mine = events.filter(pc.equal(events["account_id"], longest["values"]))
    full = scorer.score(mine)
    # The window's first event needs its predecessor only for its time delta.
    recent = scorer.score(mine.slice(mine.num_rows - scorer.window_len - 1))
    assert full["n_events"].iloc[0] == scorer.window_len
    assert full["score"].iloc[0] == pytest.approx(recent["score"].iloc[0], abs=1e-5)


def test_missing_columns_are_named(scorer, tiny_pipeline):
    events = pq.read_table(tiny_pipeline["validated"]).slice(0, 20).drop_columns(["channel"])
    with pytest.raises(ValueError, match="channel"):
        scorer.score(events)


def test_manifest_is_json_serialisable_inside_the_model(scorer):
    raw = json.loads(json.dumps(scorer.manifest.to_json()))
    assert raw["window"]["window_len"] == 64
    assert Manifest.from_json(raw) == scorer.manifest


def _check_partition(batches, lengths, max_tokens):
    members = np.concatenate(batches)
    assert sorted(members.tolist()) == list(range(len(lengths)))  # each sequence once
    for b in batches:  # under the budget, unless one sequence alone exceeds it
        assert len(b) == 1 or len(b) * lengths[b].max() <= max_tokens


def test_batches_group_by_length_at_the_least_cost(scorer):
    """Short sequences are not padded to a long one's width when a call costs less."""
    grouper = SequenceScorer(scorer.model, scorer.manifest, max_tokens=16384)
    lengths = np.array([5, 7, 256, 6, 5, 8, 6, 7, 5, 6, 9, 5, 6, 7, 5, 8])
    batches = grouper._batches(lengths)
    _check_partition(batches, lengths, 16384)
    assert [lengths[b].tolist() for b in batches][0] == [256]  # the long one alone
    assert len(batches) == 2
    # equal lengths, or a call priced above any padding: one call
    assert len(grouper._batches(np.full(16, 40))) == 1
    fewest = SequenceScorer(scorer.model, scorer.manifest, max_tokens=16384, call_cost=FEWEST_CALLS)
    assert len(fewest._batches(lengths)) == 1
    # the budget cuts a group into several calls; a sequence over the budget goes alone
    rng = np.random.default_rng(0)
    for max_tokens in (1, 100, 1000):
        budget = SequenceScorer(scorer.model, scorer.manifest, max_tokens=max_tokens)
        for n in (1, 5, 200):
            lengths = rng.integers(1, 300, n)
            _check_partition(budget._batches(lengths), lengths, max_tokens)
    assert grouper._batches(np.array([], dtype=np.int64)) == []


def test_call_cost_is_fitted_for_the_model_and_steers_the_grouping(scorer):
    """measure_call_cost times the model itself; a transformer's cost per padded token grows
    with the width (attention), which cuts mixed lengths into more groups."""
    cost = measure_call_cost(scorer.model, scorer.window_len, repeats=2)
    fields = (cost.call_s, cost.step_s, cost.token_s, cost.pair_s)
    assert all(np.isfinite(f) and f >= 0 for f in fields) and cost.call_s > 0
    lengths = np.array([64, 60, 48, 40, 32, 24, 16, 8] * 2)
    linear = SequenceScorer(scorer.model, scorer.manifest, call_cost=CallCost(pair_s=0.0))
    pairs = SequenceScorer(scorer.model, scorer.manifest, call_cost=CallCost(pair_s=1e-4))
    assert len(pairs._batches(lengths)) > len(linear._batches(lengths))
    for grouper in (linear, pairs, SequenceScorer(scorer.model, scorer.manifest, call_cost=cost)):
        _check_partition(grouper._batches(lengths), lengths, grouper.max_tokens)
