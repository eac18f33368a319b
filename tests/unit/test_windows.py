"""Windowing, splitting, bucketing and gathering on hand-built sequences."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from pipelines.params.shard import BucketConfig, WindowConfig
from pipelines.windows import (
    PaddedIndex,
    assign_buckets,
    bucket_boundaries,
    entity_split,
    make_windows,
    order_events,
    padded_tokens,
    stable_hash,
    visible_counts,
)
from seqcore.arrays import run_offsets


def _windows(n, min_end=0, **cfg):
    w = make_windows(np.asarray(n), np.asarray(min_end), WindowConfig(**cfg))
    return list(zip(w.group.tolist(), w.start.tolist(), w.end.tolist(), strict=True))


def _reference(n, min_end, cfg: WindowConfig):
    """Straightforward per-entity loop: the definition the vectorised code must match."""
    out = []
    for g, (size, low) in enumerate(zip(n, min_end, strict=True)):
        if cfg.policy in ("last", "full"):
            cands = [(max(0, size - cfg.window_len), size)] if size > low and size > 0 else []
        else:
            cands, end = [], size
            while end > low and end > 0:
                cands.append((max(0, end - cfg.length), end))
                if end - cfg.length <= 0:
                    break  # only the longest window starting at 0
                end -= cfg.stride
        out += [(g, s, e) for s, e in cands if e - s >= cfg.min_length]
    return out


def test_last_and_full_windows_keep_the_most_recent_events():
    assert _windows([5, 1, 300], policy="last", length=256) == [(0, 0, 5), (2, 44, 300)]
    assert _windows([10, 3], policy="full", max_len=4, min_length=4) == [(0, 6, 10)]
    # val/test of a time split: the window must end beyond the previous cutoff
    assert _windows([10, 10], min_end=[10, 9], policy="last", length=4) == [(1, 6, 10)]


def test_sliding_windows_align_on_the_latest_event_and_keep_one_window_from_zero():
    cfg = {"policy": "sliding", "length": 4, "stride": 3, "min_length": 2}
    assert _windows([10], **cfg) == [(0, 6, 10), (0, 3, 7), (0, 0, 4)]
    assert _windows([10], min_end=[5], **cfg) == [(0, 6, 10), (0, 3, 7)]
    # stride 1: ends 5 and 4 (from 0); the shorter windows from 0 are dropped
    assert _windows([5], policy="sliding", length=4, stride=1, min_length=2) == [
        (0, 1, 5),
        (0, 0, 4),
    ]
    # the last window to start at 0 is shorter than min_length: dropped
    assert _windows([7], policy="sliding", length=4, stride=6, min_length=2) == [(0, 3, 7)]


@pytest.mark.parametrize("policy", ["last", "full", "sliding"])
def test_vectorised_windows_match_the_per_entity_definition(policy):
    rng = np.random.default_rng(3)
    n = rng.integers(0, 40, 300)
    min_end = np.where(rng.random(300) < 0.5, 0, rng.integers(0, 40, 300))
    for length, stride, min_length in [(8, 3, 2), (5, 5, 1), (6, 10, 4)]:
        cfg = WindowConfig(policy, length, stride, max_len=length, min_length=min_length)
        w = make_windows(n, min_end, cfg)
        got = list(zip(w.group.tolist(), w.start.tolist(), w.end.tolist(), strict=True))
        assert got == _reference(n.tolist(), min_end.tolist(), cfg)


def test_run_offsets_and_visible_counts():
    assert run_offsets(pa.array(["b", "b", "a", "c", "c"])).tolist() == [0, 2, 3, 5]
    assert run_offsets(pa.array([7, 7, 7, 1])).tolist() == [0, 3, 4]
    t = np.array([1, 5, 9, 2, 3, 20])
    assert visible_counts(t, np.array([0, 3, 6]), 5).tolist() == [2, 2]


def test_order_events_sorts_only_when_needed():
    sorted_table = pa.table({"e": ["a", "a", "b"], "t": [1, 2, 1], "s": [0, 1, 0]})
    table, offsets, t, reordered = order_events(sorted_table, "e", "t", "s")
    assert table is sorted_table and reordered == 0 and offsets.tolist() == [0, 2, 3]
    messy = pa.table({"e": ["a", "b", "a", "a"], "t": [3, 1, 1, 1], "s": [2, 0, 1, 0]})
    table, offsets, t, _ = order_events(messy, "e", "t", "s")
    assert table.column("e").to_pylist() == ["a", "a", "a", "b"]
    assert table.column("s").to_pylist() == [0, 1, 2, 0] and t.tolist() == [1, 1, 3, 1]
    ties = pa.table({"e": ["a", "a", "b", "b"], "t": [1, 1, 5, 4], "s": [1, 0, 0, 1]})
    table, _, _, reordered = order_events(ties, "e", "t", "s")
    assert reordered == 2 and table.column("s").to_pylist() == [0, 1, 1, 0]


def _fnv_splitmix(key: str, salt: str) -> int:
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for byte in (salt + key).encode():
        h = ((h ^ byte) * 0x100000001B3) & mask
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & mask
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & mask
    return h ^ (h >> 31)


def test_stable_hash_matches_a_scalar_reference_and_ignores_key_type():
    keys = ["acct_1", "", "ü-ß", "a" * 40, "1"]
    got = stable_hash(pa.array(keys), "seqops-split:7").tolist()
    assert got == [_fnv_splitmix(k, "seqops-split:7") for k in keys]
    sliced = pa.array(["x", *keys])[1:]  # offsets of a sliced array
    assert stable_hash(sliced, "s").tolist() == stable_hash(pa.array(keys), "s").tolist()
    ints = entity_split(pa.array([1, 2, 3, 40]), (0.5, 0.25, 0.25), "s")
    strs = entity_split(pa.array(["1", "2", "3", "40"]), (0.5, 0.25, 0.25), "s")
    assert ints.tolist() == strs.tolist()


def test_entity_split_follows_fractions_and_salt():
    keys = pa.array([f"acct_{i}" for i in range(20000)])
    split = entity_split(keys, (0.8, 0.1, 0.1), "seqops-split:7")
    shares = np.bincount(split, minlength=3) / len(split)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.015)
    assert (entity_split(keys, (0.8, 0.1, 0.1), "seqops-split:7") == split).all()
    other = entity_split(keys, (0.8, 0.1, 0.1), "seqops-split:8")
    assert (other != split).mean() > 0.2


def test_explicit_boundaries_end_at_the_window_length():
    bounds, how = bucket_boundaries(np.array([3]), BucketConfig(boundaries=(16, 32, 300)), 256)
    assert bounds == (16, 32, 256) and how == "explicit"
    assert assign_buckets(np.array([1, 16, 17, 32, 33, 256]), bounds).tolist() == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]


def _brute_force_padding(lengths, k, window_len):
    cand = sorted(set(lengths.tolist()) - {window_len})
    best = None
    for r in range(0, k):
        for combo in itertools.combinations(cand, r):
            cost = padded_tokens(lengths, (*combo, window_len))
            best = cost if best is None else min(best, cost)
    return best


def test_optimal_boundaries_are_optimal_and_beat_quantile():
    rng = np.random.default_rng(0)
    for _ in range(5):
        lengths = rng.integers(1, 30, 40)
        bounds, _ = bucket_boundaries(lengths, BucketConfig(method="optimal", n_buckets=3), 30)
        assert bounds[-1] == 30 and len(bounds) <= 3
        assert padded_tokens(lengths, bounds) == _brute_force_padding(lengths, 3, 30)
    lengths = np.minimum(np.round(rng.lognormal(np.log(30), 1.25, 20000)), 256).astype(int)
    lengths = lengths[lengths >= 2]
    for k in (4, 8, 12):
        opt, _ = bucket_boundaries(lengths, BucketConfig(method="optimal", n_buckets=k), 256)
        qua, _ = bucket_boundaries(lengths, BucketConfig(method="quantile", n_buckets=k), 256)
        assert opt[-1] == qua[-1] == 256 and len(opt) <= k and len(qua) <= k
        assert padded_tokens(lengths, opt) <= padded_tokens(lengths, qua)


def test_few_distinct_lengths_get_exact_buckets():
    bounds, _ = bucket_boundaries(np.array([4, 4, 9]), BucketConfig(n_buckets=12), 64)
    assert bounds == (4, 9, 64)
    bounds, _ = bucket_boundaries(np.array([4, 4, 9]), BucketConfig(method="quantile"), 64)
    assert bounds == (4, 9, 64)


def test_padded_index_gathers_inputs_and_targets_within_the_visible_prefix():
    values = np.arange(10, dtype=np.float32) * 10
    ix = PaddedIndex.build(np.array([2]), np.array([3]), np.array([6]), 5)
    assert ix.take(values, -1).tolist() == [[20, 30, 40, -1, -1]]
    assert ix.take_next(values, -1).tolist() == [[30, 40, 50, -1, -1]]
    ahead = ix.take_ahead(values, 2)
    assert ahead.shape == (1, 5, 2)
    assert np.array_equal(ahead[0, :3], [[30, 40], [40, 50], [50, np.nan]], equal_nan=True)
    assert np.isnan(ahead[0, 3:]).all()
    # a tighter visible prefix (a time cutoff) hides later events from the targets
    ix = PaddedIndex.build(np.array([2]), np.array([3]), np.array([5]), 5)
    assert ix.take_next(values, -1).tolist() == [[30, 40, -1, -1, -1]]
    next_event = ix.take_next(np.arange(10), 0)
    forecast = ix.take_ahead(values, 2)
    assert ix.target_offset(next_event, forecast).tolist() == [2]


def test_order_events_regroups_scattered_entities():
    scattered = pa.table({"e": ["a", "b", "a", "c"], "t": [1, 1, 2, 1], "s": [0, 0, 1, 0]})
    table, offsets, t, reordered = order_events(scattered, "e", "t", "s")
    assert table.column("e").to_pylist() == ["a", "a", "b", "c"] and offsets.tolist() == [
        0,
        2,
        3,
        4,
    ]
    assert t.tolist() == [1, 2, 1, 1] and reordered == 1  # only a's rows changed order
