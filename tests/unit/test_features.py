"""Preprocessing fitted on training rows only and applied identically to raw events."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from seqcore.encoding import encode
from seqcore.features import OOV_ID, PAD_ID, FeatureConfig, FeatureSpec, fit_features
from seqcore.schema import SchemaConfig

SCHEMA = SchemaConfig(
    entity="acct",
    time="ts",
    seq="seq",
    numeric=("amount",),
    categorical=("mcc", "channel"),
    label=None,
    next_event="mcc",
    forecast="amount",
)
US = 1_000_000


def _table(rows):
    """rows: (acct, seconds, seq, amount, mcc, channel)."""
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "acct": pa.array(cols[0]),
            "ts": pa.array([s * US for s in cols[1]]).cast(pa.timestamp("us", tz="UTC")),
            "seq": pa.array(cols[2], pa.int64()),
            "amount": pa.array(cols[3], pa.float64()),
            "mcc": pa.array(cols[4]),
            "channel": pa.array(cols[5]),
        }
    )


TRAIN = [
    ("a", 0, 0, 10.0, 5411, "pos"),
    ("a", 60, 1, -3.0, 5411, "web"),
    ("a", 3660, 2, 0.0, 5812, "pos"),
    ("b", 100, 0, 100.0, 5812, "pos"),
    ("b", 100, 1, 7.0, 4111, None),
]


def test_vocab_is_frequency_ordered_with_pad_and_oov():
    spec = fit_features(_table(TRAIN), SCHEMA, FeatureConfig())
    # 5411 and 5812 twice (tie broken by value), 4111 once; ints are mapped via str
    assert spec.vocab["mcc"] == ("5411", "5812", "4111")
    assert spec.vocab["channel"] == ("pos", "web")  # null is no category
    cat, _ = spec.transform(_table(TRAIN))
    assert cat[:, 0].tolist() == [2, 2, 3, 3, 4]
    assert cat[:, 1].tolist() == [2, 3, 2, 2, OOV_ID]
    assert (cat != PAD_ID).all()
    rare = fit_features(_table(TRAIN), SCHEMA, FeatureConfig(min_category_count=2))
    assert rare.vocab["mcc"] == ("5411", "5812")
    assert rare.transform(_table(TRAIN))[0][:, 0].tolist() == [2, 2, 3, 3, OOV_ID]


def test_only_training_rows_are_fitted():
    rows = TRAIN + [("c", 0, 0, 1e6, 9999, "atm")]
    train = np.array([True] * len(TRAIN) + [False])
    spec = fit_features(_table(rows), SCHEMA, FeatureConfig(), rows=train)
    assert "9999" not in spec.vocab["mcc"] and "atm" not in spec.vocab["channel"]
    assert spec.mean["amount"] == pytest.approx(np.mean([10, -3, 0, 100, 7]))
    cat, _ = spec.transform(_table(rows))
    assert cat[-1].tolist() == [OOV_ID, OOV_ID]


def test_dictionary_and_plain_columns_encode_alike():
    spec = fit_features(_table(TRAIN), SCHEMA, FeatureConfig())
    plain = _table(TRAIN)
    # a dictionary whose order differs from the vocab's, holding an unseen value too
    channel = pa.DictionaryArray.from_arrays(
        pa.array([1, 2, 1, 1, None], pa.int32()), pa.array(["zzz", "pos", "web"])
    )
    dictionary = plain.set_column(5, "channel", channel)
    assert np.array_equal(spec.transform(plain)[0], spec.transform(dictionary)[0])


def test_numeric_transform_standardisation_and_time_delta():
    config = FeatureConfig(numeric_transform={"amount": "log1p"}, time_delta=True)
    spec = fit_features(_table(TRAIN), SCHEMA, config)
    x = np.sign([10, -3, 0, 100, 7]) * np.log1p(np.abs([10, -3, 0, 100, 7]))
    assert spec.mean["amount"] == pytest.approx(x.mean())
    assert spec.std["amount"] == pytest.approx(x.std())
    delta = np.log1p([0, 60, 3600, 0, 0])  # 0 at each entity's first event, 0 for a tie
    assert spec.mean["time_delta"] == pytest.approx(delta.mean())
    _, num = spec.transform(_table(TRAIN))
    assert num.shape == (5, 2) and num.dtype == np.float32
    assert np.allclose(num[:, 0], (x - x.mean()) / x.std(), atol=1e-6)
    assert np.allclose(num[:, 1], (delta - delta.mean()) / delta.std(), atol=1e-6)
    back = spec.inverse_standardise("amount", num[:, 0])
    assert np.allclose(back, [10, -3, 0, 100, 7], rtol=1e-5, atol=1e-5)


def test_constant_and_missing_values_stay_finite():
    rows = [("a", i, i, 5.0, 1, "pos") for i in range(4)]
    spec = fit_features(_table(rows), SCHEMA, FeatureConfig(time_delta=False))
    assert spec.std["amount"] == pytest.approx(1e-6) and spec.numeric_order == ("amount",)
    odd = _table([("a", 0, 0, float("nan"), 1, "pos"), ("a", 1, 1, float("inf"), 1, "pos")])
    _, num = spec.transform(odd)
    assert num.tolist() == [[0.0], [0.0]]  # non-finite -> the (standardised) mean


def test_spec_round_trips_through_json():
    spec = fit_features(_table(TRAIN), SCHEMA, FeatureConfig(numeric_transform={"amount": "log1p"}))
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    for a, b in zip(spec.transform(_table(TRAIN)), again.transform(_table(TRAIN)), strict=True):
        assert np.array_equal(a, b)


def test_encode_sequences_orders_raw_events_like_the_shard_stage():
    spec = fit_features(_table(TRAIN), SCHEMA, FeatureConfig())
    shuffled = _table([TRAIN[i] for i in (4, 2, 0, 3, 1)])
    encoded = {s.entity: s for s in encode(shuffled, spec, SCHEMA)}
    assert list(encoded) == ["a", "b"]
    cat, num = spec.transform(_table(TRAIN))
    assert np.array_equal(encoded["a"].cat_ids, cat[:3])
    assert np.array_equal(encoded["b"].num, num[3:])
    assert encoded["b"].cat_ids[:, 0].tolist() == [3, 4]  # (time, seq) order within the tie
    # a handful of serving events with an unseen category
    one = {s.entity: s for s in encode(_table([("z", 5, 0, 1.0, 1234, "pos")]), spec, SCHEMA)}
    assert one["z"].cat_ids.tolist() == [[OOV_ID, 2]]
    assert one["z"].num[0, 1] == pytest.approx(-spec.mean["time_delta"] / spec.std["time_delta"])


def _assert_same_sequences(a, b):
    assert [s.entity for s in a] == [s.entity for s in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.event_time_us, y.event_time_us)
        np.testing.assert_array_equal(x.cat_ids, y.cat_ids)
        np.testing.assert_array_equal(x.num, y.num)
        assert x.cat_ids.dtype == y.cat_ids.dtype and x.num.dtype == y.num.dtype


def _random_events(rng, n, int_keys=False):
    """Events of a few entities in random order: time ties broken by seq, unseen and null
    categories, a null and an infinite amount."""
    keys = rng.integers(0, 6, n)
    rows = [
        (
            int(k) * 7 if int_keys else f"e{k}",
            int(rng.integers(0, 5)) * 60,  # few distinct times: many ties
            int(rng.integers(0, 1_000)),
            [1.5, -2.0, float("nan"), float("inf"), 1e6][int(rng.integers(0, 5))],
            int(rng.choice([5411, 5812, 4111, 9999])),
            ["pos", "web", "atm", None][int(rng.integers(0, 4))],
        )
        for k in keys
    ]
    table = _table(rows)
    mcc = table["mcc"].cast(pa.string())  # string categories, as the serving path gets them
    return table.set_column(4, "mcc", mcc)


@pytest.mark.parametrize("int_keys", [False, True])
def test_small_tables_encode_exactly_like_the_arrow_path(int_keys):
    """encode takes plain lookups below SMALL_TABLE_ROWS: the same sequences,
    bit for bit, as the Arrow kernels give, whatever the order and the types."""
    from seqcore.encoding import encode_columns, encode_table, table_columns

    config = FeatureConfig(numeric_transform={"amount": "log1p"})
    spec = fit_features(_table(TRAIN), SCHEMA, config)
    rng = np.random.default_rng(7)
    for n in (1, 2, 17, 300):
        table = _random_events(rng, n, int_keys)
        columns = table_columns(table, SCHEMA, spec)
        assert columns is not None
        expected = encode_table(table, spec, SCHEMA)
        _assert_same_sequences(encode_columns(columns, spec), expected)
        _assert_same_sequences(encode(table, spec, SCHEMA), expected)
        # already ordered (no gather), dictionary-typed and integer categories
        ordered = table.sort_by([("acct", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
        ordered = ordered.set_column(5, "channel", ordered["channel"].dictionary_encode())
        ordered = ordered.set_column(4, "mcc", ordered["mcc"].cast(pa.int64()))
        _assert_same_sequences(encode_columns(table_columns(ordered, SCHEMA, spec), spec), expected)


def test_the_arrow_path_takes_what_plain_lookups_cannot_match():
    from seqcore.encoding import table_columns

    spec = fit_features(_table(TRAIN), SCHEMA, FeatureConfig())
    table = _table(TRAIN)
    null_seq = table.set_column(2, "seq", pa.array([0, None, 2, 0, 1], pa.int64()))
    float_category = table.set_column(4, "mcc", pa.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    null_entity = table.set_column(0, "acct", pa.array(["a", None, "a", "b", "b"]))
    for odd in (null_seq, float_category, null_entity):
        assert table_columns(odd, SCHEMA, spec) is None
        encode(odd, spec, SCHEMA)  # the general path still encodes it


def test_event_columns_beyond_the_small_limit_take_the_arrow_path(monkeypatch):
    """A serving batch larger than SMALL_TABLE_ROWS is encoded through an Arrow table: the
    same sequences, still named and ordered as the batch's positions."""
    import seqcore.encoding as features

    spec = fit_features(_table(TRAIN), SCHEMA, FeatureConfig())
    table = _random_events(np.random.default_rng(3), 200)
    columns = features.table_columns(table, SCHEMA, spec)
    columns = features.EventColumns(
        names=[f"request-{i}" for i in range(len(columns.names))],
        group=columns.group,
        time_us=columns.time_us,
        seq=columns.seq,
        numeric=columns.numeric,
        categorical=columns.categorical,
    )
    small = features.encode(columns, spec, SCHEMA)
    monkeypatch.setattr(features, "SMALL_TABLE_ROWS", 10)
    large = features.encode(columns, spec, SCHEMA)
    assert [s.entity for s in small] == [f"request-{i}" for i in range(len(columns.names))]
    _assert_same_sequences(large, small)
