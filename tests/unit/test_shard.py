"""The shard stage end to end on a small generated events table, and reading shards back."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from data_checks.leakage import NO_TARGET, SplitExamples, check_split_leakage
from pipelines import shard
from pipelines.config import params_from_dict
from pipelines.sampler import TokenBudgetBatchSampler
from pipelines.shard_reader import read_split, to_numpy_batch
from pipelines.windows import entity_split
from seqcore import io
from seqcore.manifest import FORMAT_VERSION, Manifest, load_manifest

MCC = [str(5000 + i) for i in range(12)]
SHARD = {
    "window": {"policy": "last", "length": 32, "min_length": 2},
    "buckets": {"method": "optimal", "n_buckets": 4},
    "features": {"numeric_transform": {"amount": "log1p"}},
    "forecast_horizon": 2,
    "max_workers": 2,
}


def _params(data=None, **shard_overrides):
    return params_from_dict({"seed": 7, "data": data or {}, "shard": {**SHARD, **shard_overrides}})


FILE = {"source": "file", "path": "events.parquet"}  # a split column needs a user's file


def _events(n_entities=300, seed=0, plant_test_category=True):
    """A validated-events table: grouped by entity, time-ordered, log-normal lengths."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(12), 1.0, n_entities)), 1, 120).astype(int)
    n = int(lengths.sum())
    ent = np.repeat(np.arange(n_entities), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    gaps = rng.integers(1, 7200, n) * 1_000_000
    gaps[np.cumsum(lengths) - lengths] = 0
    start = np.repeat(rng.integers(0, 30 * 86400, n_entities) * 1_000_000, lengths)
    cum = np.cumsum(gaps)
    t = 1_735_689_600_000_000 + start + cum - cum[first]
    keys = np.array([f"acct_{i:04d}" for i in range(n_entities)])
    mcc = np.array(MCC)[rng.integers(0, len(MCC), n)]
    if plant_test_category:  # a category that only a test-split entity has
        split = entity_split(pa.array(keys), (0.8, 0.1, 0.1), "seqops-split:7")
        victim = int(np.flatnonzero((split == 2) & (lengths >= 3))[0])
        mcc[ent == victim] = "XTEST"
    return pa.table(
        {
            "account_id": pa.array(keys[ent]),
            "event_time": pa.array(t).cast(pa.timestamp("us", tz="UTC")),
            "seq_no": pa.array(np.arange(n) - first),
            "amount": pa.array(rng.lognormal(3, 1.5, n)),
            "mcc": pa.array(mcc).dictionary_encode(),
            "channel": pa.array(np.array(["pos", "online", "atm"])[rng.integers(0, 3, n)]),
            "country": pa.array(np.array(["US", "GB", "DE"])[rng.integers(0, 3, n)]),
            "device": pa.array(
                np.array(["web", "chip"])[rng.integers(0, 2, n)]
            ).dictionary_encode(),
            "label": pa.array(np.repeat(rng.integers(0, 2, n_entities), lengths)),
            "_arrival": pa.array(np.arange(n)),
        }
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    events = _events()
    pq.write_table(events, root / "events.parquet")
    manifest = shard.run(_params(), root / "events.parquet", root / "shards")
    return root, events, manifest


def _rows(out, split):
    return read_split(out, split).to_pylist()


def test_manifest_describes_what_was_written(built):
    root, events, manifest = built
    out = root / "shards"
    raw = json.loads((out / "manifest.json").read_text())
    assert raw == manifest.to_json() and Manifest.from_json(raw) == manifest
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.input.sha256 == io.sha256_file(root / "events.parquet")
    assert manifest.input.events_count == len(events)
    on_disk = io.sha256_tree(out)
    assert on_disk.pop("manifest.json") and on_disk == manifest.files
    body = {k: v for k, v in raw.items() if k != "content_hash"}
    digest = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert manifest.content_hash == io.combined_hash({**on_disk, "manifest.json": digest})
    bounds = list(manifest.bucket_boundaries)
    assert bounds[-1] == 32 and len(bounds) <= 4 and bounds == sorted(bounds)
    for split, entry in manifest.splits.items():
        assert entry.examples == sum(b.examples for b in entry.buckets.values())
        assert entry.pad_fraction == pytest.approx(
            1 - entry.real_tokens / entry.padded_tokens, abs=1e-6
        )
        for bound, bucket in entry.buckets.items():
            assert bound in bounds and len(bucket.parts) == 2  # max_workers parts
            rows = sum(pq.read_metadata(out / p).num_rows for p in bucket.parts)
            assert rows == bucket.examples
        assert len(read_split(out, split)) == entry.examples
    assert manifest.leakage["status"] == "pass"
    assert manifest.targets.next_event.vocab_size == len(MCC) + 2
    assert manifest.features.numeric_order == ("amount", "time_delta")


def test_entity_split_is_disjoint_and_vocab_is_fitted_on_train_only(built):
    root, _, manifest = built
    entities = {s: {r["entity"] for r in _rows(root / "shards", s)} for s in shard.SPLITS}
    assert not entities["train"] & entities["val"] and not entities["train"] & entities["test"]
    assert not entities["val"] & entities["test"]
    assert "XTEST" not in manifest.vocab("mcc")
    planted = [r for r in _rows(root / "shards", "test") if 1 in r["cat__mcc"][: r["length"]]]
    assert planted, "the test-only category must be encoded as OOV"


def test_rows_hold_the_latest_events_with_pads_exactly_beyond_length(built):
    root, events, manifest = built
    spec = manifest.features
    src = events.to_pydict()
    by_entity: dict[str, list[int]] = {}
    for i, key in enumerate(src["account_id"]):
        by_entity.setdefault(key, []).append(i)
    vocab = manifest.vocab("mcc")
    ids = {v: i + 2 for i, v in enumerate(vocab)}
    checked = 0
    for row in _rows(root / "shards", "train"):
        n, width = row["length"], len(row["next_event"])
        rows = by_entity[row["entity"]][-32:]
        assert n == len(rows) and width >= n
        assert (
            row["window_end"] == src["event_time"][rows[-1]]
            and row["label"] == src["label"][rows[0]]
        )
        assert row["cat__mcc"] == [ids.get(src["mcc"][i], 1) for i in rows] + [0] * (width - n)
        num = np.array(row["num"]).reshape(width, 2)
        amount = spec.standardise("amount", np.array([src["amount"][i] for i in rows]))
        assert np.allclose(num[:n, 0], amount, atol=1e-5) and (num[n:] == 0).all()
        assert row["next_event"] == row["cat__mcc"][1:n] + [0] * (width - n + 1)
        fc = np.array(row["forecast"], dtype=float).reshape(width, 2)
        assert np.allclose(fc[: n - 1, 0], amount[1:], atol=1e-5)
        assert np.allclose(fc[: n - 2, 1], amount[2:], atol=1e-5)
        assert np.isnan(fc[n - 1]).all() and np.isnan(fc[n:]).all()
        checked += 1
    assert checked == manifest.splits["train"].examples > 100


def test_same_inputs_give_identical_bytes_and_sorting_is_restored(built, tmp_path):
    root, events, manifest = built
    again = shard.run(_params(), root / "events.parquet", tmp_path / "again")
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (
        root / "shards" / "manifest.json"
    ).read_bytes()
    assert again == manifest
    # rows in a scrambled order (entities interleaved, time reversed) shard to the same files
    perm = np.random.default_rng(1).permutation(len(events))
    pq.write_table(events.take(pa.array(perm)), tmp_path / "scrambled.parquet")
    scrambled = shard.run(_params(), tmp_path / "scrambled.parquet", tmp_path / "s")
    assert scrambled.files == manifest.files


def test_interrupted_run_keeps_the_previous_shards(built, tmp_path, monkeypatch):
    root, events, _ = built
    out = tmp_path / "shards"
    shard.run(_params(), root / "events.parquet", out)
    before = io.sha256_tree(out)
    real_write, calls = pq.write_table, []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(shard.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        shard.run(_params(max_workers=3), root / "events.parquet", out)
    assert io.sha256_tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no temp dirs left


def test_leakage_stops_the_stage_and_the_check_finds_offenders(built, tmp_path, monkeypatch):
    root, _, _ = built
    day = 86_400_000_000
    keys = ["a", "b"]
    clean = {
        "train": SplitExamples(keys, np.array([1, 2]) * day, np.array([1, NO_TARGET])),
        "val": SplitExamples(keys, np.array([3, 4]) * day, np.array([4, 4]) * day),
        "test": SplitExamples(keys, np.array([5, 6]) * day, np.array([NO_TARGET] * 2)),
    }
    assert check_split_leakage("time", clean, train_end_us=2 * day, val_end_us=4 * day).passed
    leaky = {**clean, "train": SplitExamples(keys, np.array([1, 2]) * day, np.array([1, 3]) * day)}
    result = check_split_leakage("time", leaky, train_end_us=2 * day, val_end_us=4 * day)
    assert result.status == "fail" and result.violating_examples == 1
    assert result.sample_offenders[0]["entity"] == "b"
    assert "target" in result.sample_offenders[0]["reason"]
    overlap = check_split_leakage("entity", clean)
    assert overlap.status == "fail" and overlap.violating_entities == 2
    assert overlap.to_dict()["violating_examples"] == 6

    monkeypatch.setattr(shard, "check_split_leakage", lambda *a, **k: overlap)
    with pytest.raises(shard.ShardError, match="leakage"):
        shard.run(_params(), root / "events.parquet", tmp_path / "leaky")
    assert not (tmp_path / "leaky").exists() and not list(tmp_path.iterdir())


def test_time_split_windows_and_targets_never_look_ahead(tmp_path):
    events = _events(200, seed=3, plant_test_category=False)
    pq.write_table(events, tmp_path / "events.parquet")
    params = _params(
        split={"method": "time", "time_quantiles": [0.7, 0.85]},
        window={"policy": "sliding", "length": 16, "stride": 8, "min_length": 2},
    )
    manifest = shard.run(params, tmp_path / "events.parquet", tmp_path / "out")
    cut = manifest.split
    train_end, val_end = (datetime.fromisoformat(cut[k]) for k in ("train_end", "val_end"))
    times: dict[str, list] = {}
    for key, t in zip(
        events["account_id"].to_pylist(), events["event_time"].to_pylist(), strict=True
    ):
        times.setdefault(key, []).append(t)
    bounds = {"train": (None, train_end), "val": (train_end, val_end), "test": (val_end, None)}
    for split, (low, high) in bounds.items():
        rows = _rows(tmp_path / "out", split)
        assert rows, split
        for row in rows:
            end, n = row["window_end"], row["length"]
            assert (low is None or end > low) and (high is None or end <= high)
            entity_times = times[row["entity"]]
            later = [t for t in entity_times if t > end]
            visible = bool(later) and (high is None or later[0] <= high)
            assert (row["next_event"][n - 1] != 0) == visible  # target only if visible
    assert manifest.leakage["status"] == "pass"


def test_empty_splits_still_get_a_part_per_worker(tmp_path):
    pq.write_table(_events(50, plant_test_category=False), tmp_path / "e.parquet")
    manifest = shard.run(
        _params(split={"fractions": [1, 0, 0]}), tmp_path / "e.parquet", tmp_path / "o"
    )
    assert manifest.splits["val"].examples == 0
    assert list(manifest.splits["val"].buckets[32].parts) == [
        "val/bucket=32/part-00000.parquet",
        "val/bucket=32/part-00001.parquet",
    ]
    assert len(read_split(tmp_path / "o", "val")) == 0


def test_reader_batches_from_a_rank_s_own_parts(built):
    root, _, manifest = built
    out = root / "shards"
    assert load_manifest(out) == manifest
    mine = read_split(out, "train", parts=[1])
    assert set(mine.column("part").to_pylist()) == {1}
    table = read_split(out, "train")
    sampler = TokenBudgetBatchSampler(
        table.column("bucket").to_numpy(), 256, rank=1, world_size=2,
        owner=table.column("part").to_numpy() % 2,
    )  # fmt: skip
    for batch in sampler:
        arrays = to_numpy_batch(table, batch)
        b, width = len(batch), table.column("bucket")[batch[0]].as_py()
        assert arrays["cat"].shape == (b, width, 4) and arrays["cat"].dtype == np.int64
        assert arrays["num"].shape == (b, width, 2) and arrays["num"].dtype == np.float32
        assert arrays["forecast"].shape == (b, width, 2) and arrays["next_event"].shape == (
            b,
            width,
        )
        assert (arrays["length"] <= width).all() and arrays["label"].shape == (b,)
        assert set(table.column("part").take(batch).to_pylist()) == {1}
    lengths = table.column("length").to_numpy()
    longest = int(np.argmax(lengths))
    batch = [i for i in range(len(table)) if table["bucket"][i] == table["bucket"][longest]][:3]
    trimmed = to_numpy_batch(table, batch, trim=True)
    full = to_numpy_batch(table, batch)
    width = int(trimmed["length"].max())
    assert trimmed["cat"].shape[1] == width and np.array_equal(
        trimmed["cat"], full["cat"][:, :width]
    )
    assert (full["cat"][:, width:] == 0).all()
    mixed = [0, len(table) - 1]
    with pytest.raises(ValueError, match="one bucket"):
        to_numpy_batch(table, mixed)


def test_cli_exit_codes_summary_and_metrics(built, tmp_path, capsys):
    root, _, _ = built
    assert shard.main(["--params", str(tmp_path / "nope.yaml")]) == 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 7, "shard": SHARD}))
    assert shard.main(["--params", str(params), "--events", str(tmp_path / "none.parquet")]) == 2
    assert "not found" in capsys.readouterr().err
    args = ["--params", str(params), "--events", str(root / "events.parquet")]
    args += ["--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")]
    assert shard.main(args) == 0
    assert "train" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_buckets"] <= 4 and metrics["train"]["examples"] > 0


# --------------------------------------------------------------------------- labels of any type


def _with_labels(table: pa.Table, values: list, every: int) -> pa.Table:
    """The table's label column replaced by ``values[entity % len(values)]``; every
    ``every``-th entity unlabelled (null)."""
    codes = np.unique(table["account_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    labels = [None if c % every == every - 1 else values[c % len(values)] for c in codes]
    i = table.schema.get_field_index("label")
    return table.set_column(i, "label", pa.array(labels))


@pytest.mark.parametrize(
    "values",
    [["legit", "fraud", "chargeback"], [True, False], [3, 10]],
    ids=["strings", "booleans", "sparse-ints"],
)
def test_labels_of_any_type_become_class_indices_named_in_the_manifest(tmp_path, values):
    events = tmp_path / "events.parquet"
    pq.write_table(_with_labels(_events(plant_test_category=False), values, every=7), events)
    manifest = shard.run(_params(), events, tmp_path / "shards")
    label = manifest.targets.label
    assert label is not None and label.classes == tuple(sorted(values))
    assert label.num_classes == max(2, len(values))
    assert (
        Manifest.from_json(json.loads((tmp_path / "shards/manifest.json").read_text())) == manifest
    )
    rows = read_split(tmp_path / "shards", "train")
    names = rows.column("entity").to_pylist()
    got = rows.column("label").to_numpy()
    codes = {k: int(k.split("_")[1]) for k in set(names)}
    for key, index in zip(names, got, strict=True):
        c = codes[key]
        if c % 7 == 6:
            assert index == -1  # unlabelled: left out of classify training
        else:
            assert label.name(int(index)) == values[c % len(values)]
    assert label.unlabeled["train"] == int((got < 0).sum()) > 0


def test_fractional_labels_are_refused_naming_the_column(tmp_path):
    table = _events(plant_test_category=False)
    table = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array(np.full(len(table), 0.5))
    )
    pq.write_table(table, tmp_path / "events.parquet")
    with pytest.raises(shard.ShardError, match="label column 'label' holds 0.5"):
        shard.run(_params(), tmp_path / "events.parquet", tmp_path / "shards")


# --------------------------------------------------------------------------- split column


def _with_folds(table: pa.Table, folds: dict[int, str]) -> pa.Table:
    codes = np.unique(table["account_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    return table.append_column("fold", pa.array([folds[c % len(folds)] for c in codes]))


def test_column_split_follows_the_column_and_carves_val_from_train(tmp_path):
    events = tmp_path / "events.parquet"
    pq.write_table(
        _with_folds(_events(plant_test_category=False), {0: "train", 1: "train", 2: "test"}), events
    )
    params = _params(FILE, split={"method": "column", "column": "fold", "val_fraction": 0.2})
    manifest = shard.run(params, events, tmp_path / "shards")
    assert manifest.split["method"] == "column" and manifest.split["val_from_train"] == 0.2
    assert manifest.leakage["status"] == "pass"
    seen = {
        s: set(read_split(tmp_path / "shards", s).column("entity").to_pylist())
        for s in ("train", "val", "test")
    }
    assert all(int(k.split("_")[1]) % 3 == 2 for k in seen["test"])
    assert all(int(k.split("_")[1]) % 3 != 2 for k in seen["train"] | seen["val"])
    assert 0.1 < len(seen["val"]) / len(seen["train"] | seen["val"]) < 0.3


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ({0: "train", 1: "holdout"}, r"value\(s\) \['holdout'\] mean no split.*shard.split.values"),
        ({0: "train", 1: "test"}, "entities have more than one value"),
    ],
    ids=["unknown-value", "entity-in-two-folds"],
)
def test_column_split_refuses_values_it_cannot_place(tmp_path, folds, message):
    table = _with_folds(_events(plant_test_category=False), folds)
    if "more than one" in message:  # one entity's events in two folds
        fold = np.array(table["fold"].to_pylist(), dtype=object)
        first = np.flatnonzero(table["account_id"].to_numpy(zero_copy_only=False) == "acct_0000")
        fold[first[-1]] = "test" if fold[first[0]] == "train" else "train"
        table = table.set_column(
            table.schema.get_field_index("fold"), "fold", pa.array(fold.tolist())
        )
    pq.write_table(table, tmp_path / "events.parquet")
    params = _params(FILE, split={"method": "column", "column": "fold"})
    with pytest.raises(shard.ShardError, match=message):
        shard.run(params, tmp_path / "events.parquet", tmp_path / "shards")
