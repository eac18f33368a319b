"""The benchmarks measure what they claim: the pandas baseline computes the shard stage's windows,
and the padding benchmark's figures are fractions with optimal buckets beating quantile ones.

No timing is asserted anywhere (the benchmarks print ratios; CI machines are noisy).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from benchmarks import data_throughput, padding
from benchmarks._common import PARAMS, write_generated_events
from pipelines import shard
from pipelines.config import load_params
from pipelines.features import FeatureSpec


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """(shard stage windows, pandas windows) of a tiny generated input."""
    root = tmp_path_factory.mktemp("bench")
    params = load_params(PARAMS)
    write_generated_events(300, root / "events", seed=11)
    manifest = shard.run(params, root / "events", root / "shards")
    theirs = data_throughput.pandas_windows(
        root / "events",
        FeatureSpec.from_dict(manifest["features"]),
        manifest["buckets"]["boundaries"],
        params.shard.window,
        params.data.schema,
    )
    return data_throughput.shard_windows(root / "shards"), theirs


def test_pandas_baseline_computes_the_shard_stage_windows(windows):
    ours, theirs = windows
    summary = data_throughput.compare_windows(ours, theirs)
    assert summary["windows"] > 250 and summary["buckets"] > 10
    assert summary["num_max_abs_diff"] <= 1e-5
    # The input has sequences longer than the window, so truncation to the last 256 is covered.
    assert max(ours) == 256 and (ours[256]["length"] == 256).any()


@pytest.mark.parametrize("corruption", ["cat_id", "drop_window", "num", "short_window"])
def test_equivalence_check_catches_a_different_windowing(windows, corruption):
    ours, theirs = windows
    bad = copy.deepcopy(theirs)
    width = max(bad)
    if corruption == "cat_id":
        bad[width]["cat"][0, 0, 0] += 1
    elif corruption == "drop_window":
        bad[width] = {k: v[1:] for k, v in bad[width].items()}
    elif corruption == "num":
        bad[width]["num"][0, 0, 0] += 0.01
    else:  # a window one event shorter: last event padded away
        n = bad[width]["length"][0]
        bad[width]["length"][0] = n - 1
        bad[width]["cat"][0, n - 1] = 0
    with pytest.raises(AssertionError):
        data_throughput.compare_windows(ours, bad)


def test_padding_fractions_and_optimal_beats_quantile():
    data = padding.lognormal_lengths(20_000, seed=3)
    rows = padding.pad_rows(data, window_len=256)
    assert all(0.0 <= r.pad_train <= 1.0 and 0.0 <= r.pad_all <= 1.0 for r in rows)
    by = {(r.scheme, r.n_buckets): r for r in rows}
    for n in padding.N_BUCKETS:
        # Optimal is the least padding on the lengths its boundaries are derived from.
        assert by[("optimal", n)].pad_train <= by[("quantile", n)].pad_train + 1e-12
        assert by[("optimal", n)].pad_train < by[("global max", 1)].pad_train
    optimal = [by[("optimal", n)].pad_train for n in padding.N_BUCKETS]
    assert optimal == sorted(optimal, reverse=True)  # more buckets never pad more


def test_padding_default_row_uses_the_params_buckets():
    data = padding.lognormal_lengths(5_000, seed=4)
    row = padding.default_row(data)
    cfg = load_params(PARAMS).shard.buckets
    assert len(row.bounds) <= cfg.n_buckets and row.bounds[-1] == 256
    assert 0.0 <= row.pad_all <= 1.0
    assert np.isclose(
        row.tokens_vs_max * len(data.length) * 256,
        sum(row.bounds[np.searchsorted(row.bounds, x)] for x in data.length),
    )
