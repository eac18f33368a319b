"""The generator: deterministic, heavy-tailed, order-dependent labels, faults planted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.generate import generate_arrays, generate_events
from pipelines.params.data import FAULT_NAMES, GenerateConfig
from seqcore.config import ConfigError

SMALL = GenerateConfig(n_entities=400, median_length=25)


def _frame(table: pa.Table):
    df = table.to_pandas()
    return df.sort_values(["account_id", "seq_no"], kind="stable")


def test_same_seed_same_table_other_seed_other_table():
    a = generate_events(SMALL, seed=3)
    b = generate_events(SMALL, seed=3)
    c = generate_events(SMALL, seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_lengths_are_heavy_tailed_and_bounded():
    cfg = dataclasses.replace(SMALL, n_entities=3000, median_length=30, max_length=3000)
    arrays = generate_arrays(cfg, seed=1)
    lengths = np.bincount(arrays.entity)
    assert lengths.min() >= 1 and lengths.max() <= 3000
    assert 22 <= np.median(lengths) <= 38
    assert lengths.max() > 20 * np.median(lengths)  # a real tail, not a narrow band


def test_stream_is_in_arrival_order_and_sequences_are_complete():
    table = generate_events(SMALL, seed=5)
    times = table["event_time"].to_numpy()
    assert (np.diff(times.astype("int64")) >= 0).all()
    df = _frame(table)
    per_entity = df.groupby("account_id")["seq_no"].agg(["min", "max", "count"])
    assert (per_entity["min"] == 0).all()
    assert (per_entity["max"] + 1 == per_entity["count"]).all()
    by_seq = df.groupby("account_id")["event_time"].apply(lambda s: s.is_monotonic_increasing)
    assert by_seq.all()


def test_label_depends_on_order_not_on_counts():
    cfg = dataclasses.replace(SMALL, n_entities=2000, label_noise=0.0, pattern_rate=1.0)
    df = _frame(generate_events(cfg, seed=11))
    df["small"] = (df["mcc"] == "5815") & (df["amount"] < 3)
    df["large"] = (df["mcc"] == "5732") & (df["amount"] >= 800)
    checked = 0
    for _, events in df.groupby("account_id"):
        if not events["large"].any():
            continue
        large_at = events["seq_no"][events["large"]].iloc[-1]
        smalls = events["seq_no"][events["small"]]
        before = (smalls < large_at).sum()
        after = (smalls > large_at).sum()
        label = events["label"].iloc[0]
        # fraud: the burst precedes the large payment; decoy: it follows.
        assert (before >= 3) if label == 1 else (after >= 3)
        checked += 1
    assert checked > 500
    labels = df.groupby("account_id")["label"].first()
    assert 0.3 < labels.mean() < 0.7  # both orders present in similar numbers


@pytest.mark.parametrize("fault", FAULT_NAMES)
def test_each_fault_changes_the_table(fault):
    clean = generate_events(SMALL, seed=2)
    faulty = generate_events(dataclasses.replace(SMALL, faults=(fault,), fault_rate=0.01), seed=2)
    assert not faulty.equals(clean)


def test_fault_details():
    base = dataclasses.replace(SMALL, fault_rate=0.01)
    assert generate_events(dataclasses.replace(base, faults=("empty",)), 2).num_rows == 0
    missing = generate_events(dataclasses.replace(base, faults=("missing_column",)), 2)
    assert "device" not in missing.column_names
    wrong = generate_events(dataclasses.replace(base, faults=("wrong_type",)), 2)
    assert pa.types.is_string(wrong["amount"].type)
    nulls = generate_events(dataclasses.replace(base, faults=("null_keys",)), 2)
    assert nulls["account_id"].null_count > 0 and nulls["event_time"].null_count > 0
    future = generate_events(dataclasses.replace(base, faults=("future_timestamps",)), 2)
    assert pc.max(future["event_time"]).as_py().year == 2099


def test_unknown_fault_is_rejected_by_name():
    with pytest.raises(ConfigError, match="data.generate.faults"):
        GenerateConfig(faults=("bogus",))
    assert GenerateConfig(faults=("all",)).faults == FAULT_NAMES
