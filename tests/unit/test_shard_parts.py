"""Shard over validated parts equals shard over the one table they make (docs/architecture.md
§3): the map passes see one part each and only counts cross parts, yet the manifest and every
shard file hold what one pass over the concatenated table writes, row for row.

The one documented difference: numeric statistics are merged from per-part moments (Chan et
al.), so a mean or a std may differ from the single pass in its last bits, and a standardised
float32 feature by one unit in its last place. Everything else is compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import shard
from pipelines.windows import stable_hash
from tests.unit.test_shard import FILE, _events, _with_folds
from tests.unit.test_shard import _params as _shard_params


def _params(data: dict | None = None, **overrides: Any) -> Any:
    """test_shard's params, the parts run in this process (tests/integration: on Ray)."""
    return _shard_params({**(data or {}), "engine": "local"}, **overrides)


FLOATS = ("num", "forecast")
"""Shard columns holding standardised values (compared to float32 rounding)."""


def as_parts(table: pa.Table, folder: Path, n_parts: int) -> pa.Table:
    """``table``'s entities spread over ``n_parts`` files by hash, as the validate stage writes
    them (each file grouped by entity, arrival order kept); returns the parts' concatenation
    in name order, the table a single pass over the folder reads."""
    folder.mkdir(parents=True)
    keys = pc.cast(table["account_id"], pa.string())
    part_of = (stable_hash(keys.combine_chunks(), "test-parts") % np.uint64(n_parts)).astype(int)
    pieces = []
    for p in range(n_parts):
        piece = table.filter(pa.array(part_of == p))
        pq.write_table(piece, folder / f"part-{p:05d}.parquet")
        pieces.append(piece)
    return pa.concat_tables(pieces)


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(manifest))
    for key in ("files", "content_hash"):
        out.pop(key)
    out["input"].pop("sha256")
    out["input"].pop("events")
    for stats in out["features"]["numeric"].values():
        stats["mean"], stats["std"] = round(stats["mean"], 9), round(stats["std"], 9)
    forecast = out["targets"].get("forecast")
    if forecast:
        forecast["mean"], forecast["std"] = round(forecast["mean"], 9), round(forecast["std"], 9)
    return out


def assert_same_shards(a: Path, b: Path, manifest: shard.Manifest) -> None:
    for name in manifest.files:
        x, y = pq.read_table(a / name), pq.read_table(b / name)
        assert x.schema == y.schema and x.num_rows == y.num_rows, name
        for column in x.column_names:
            if column in FLOATS:
                left = np.asarray(x[column].combine_chunks().flatten(), np.float32)
                right = np.asarray(y[column].combine_chunks().flatten(), np.float32)
                np.testing.assert_allclose(left, right, rtol=1e-6, atol=1e-6, err_msg=name)
            else:
                assert x[column].equals(y[column]), f"{name}: {column}"


SPLITS = {
    "entity": ({}, {}),
    "time-quantiles": ({}, {"split": {"method": "time", "time_quantiles": [0.6, 0.8]}}),
    "column-carved": (
        FILE,
        {"split": {"method": "column", "column": "fold", "val_fraction": 0.2}},
    ),
    "sliding-quantile-buckets": (
        {},
        {
            "window": {"policy": "sliding", "length": 16, "stride": 5, "min_length": 2},
            "buckets": {"method": "quantile", "n_buckets": 3},
            "max_workers": 3,
        },
    ),
}


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_parts_shard_as_the_table_they_make(tmp_path, case):
    data, overrides = SPLITS[case]
    params = _params(data, **overrides)
    events = _events(n_entities=500, plant_test_category=False)
    if case.startswith("column"):
        events = _with_folds(events, {0: "train", 1: "train", 2: "test"})
    whole = as_parts(events, tmp_path / "validated", 4)
    pq.write_table(whole, tmp_path / "whole.parquet")

    one = shard.run(params, tmp_path / "whole.parquet", tmp_path / "one")
    parts = shard.run(params, tmp_path / "validated", tmp_path / "parts")
    assert comparable(parts.to_json()) == comparable(one.to_json())
    assert set(parts.files) == set(one.files)
    assert_same_shards(tmp_path / "one", tmp_path / "parts", one)
    assert not (tmp_path / "parts" / ".pieces").exists()


def test_time_quantiles_over_parts_are_the_quantiles_of_all_times(tmp_path):
    rng = np.random.default_rng(3)
    times = [np.sort(rng.integers(0, 10**12, n)) for n in (1, 500, 7, 2000)]
    for i, t in enumerate(times):
        table = pa.table({"t": pa.array(t).cast(pa.timestamp("us", tz="UTC"))})
        pq.write_table(table, tmp_path / f"part-{i:05d}.parquet")
    parts = shard.list_parts(tmp_path)
    every = np.concatenate(times)
    for qs in ((0.7, 0.85), (0.0, 1.0), (0.5, 0.5001)):
        expected = tuple(int(v) for v in np.quantile(every, qs, method="inverted_cdf"))
        assert shard.time_quantiles(parts, "t", qs) == expected


def test_a_part_error_names_the_part_and_is_not_retried(tmp_path):
    events = _events(n_entities=200, plant_test_category=False)
    labels = np.array(events["label"].to_pylist(), dtype=float)
    labels[-1] = 0.5  # a fractional label in the last entity's part only
    events = events.set_column(events.schema.get_field_index("label"), "label", pa.array(labels))
    as_parts(events, tmp_path / "validated", 3)
    with pytest.raises(shard.ShardError, match="label column 'label' holds 0.5") as raised:
        shard.run(_params(), tmp_path / "validated", tmp_path / "shards")
    assert any("part-0000" in note for note in raised.value.__notes__)
    assert not (tmp_path / "shards").exists()


def test_an_interrupted_run_leaves_no_output_and_no_pieces(tmp_path, monkeypatch):
    as_parts(_events(n_entities=200, plant_test_category=False), tmp_path / "validated", 3)
    params = _params()
    shard.run(params, tmp_path / "validated", tmp_path / "shards")
    before = {p.name: p.read_bytes() for p in (tmp_path / "shards").rglob("*") if p.is_file()}
    calls = {"n": 0}
    intact = shard.part_table

    def dies_on_the_third_piece(*args, **kwargs):  # e.g. the disk fills up mid-write
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("No space left on device")
        return intact(*args, **kwargs)

    monkeypatch.setattr(shard, "part_table", dies_on_the_third_piece)
    with pytest.raises(OSError, match="No space left"):
        shard.run(params, tmp_path / "validated", tmp_path / "shards")
    after = {p.name: p.read_bytes() for p in (tmp_path / "shards").rglob("*") if p.is_file()}
    assert after == before  # the previous shards, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "validated"]
