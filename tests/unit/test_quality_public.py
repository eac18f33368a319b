"""benchmarks/quality_public.py reads .ts files out of a wheel and makes the events table a user
would bring: tiny hand-written files in a fake wheel, no download and no training."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from benchmarks import quality_public as qp
from pipelines.config import params_from_dict

UNIVARIATE_TRAIN = """\
# a comment line, as the archive's files have
@problemName Tiny
@timeStamps false
@missing false
@univariate true
@equalLength true
@seriesLength 4
@classLabel true 1 2
@data
0.1,0.2,0.3,0.4:1
1.0,0.9,0.8,0.7:2
0.5,0.5,0.5,0.5:1
2.0,2.1,2.2,2.3:2
-1.0,-1.1,-1.2,-1.3:1
"""

UNIVARIATE_TEST = """\
@problemName Tiny
@timeStamps false
@univariate true
@classLabel true 1 2
@data
3.0,3.1,3.2,3.3:2
4.0,?,4.2,4.3:1
"""

# Two channels, series of different lengths (3 and 2 steps), labels that are words.
TWO_CHANNEL = """\
@problemName Duo
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true Walking Running
@data
1,2,3:10,20,30:Walking
4,5:40,50:Running
"""


def fake_wheel(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("aeon/__init__.py", "")
        for name, text in files.items():
            zf.writestr(f"aeon/datasets/data/{name.split('_')[0]}/{name}", text)
    return path


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return fake_wheel(
        tmp_path / "aeon-0.0.0-py3-none-any.whl",
        {"Tiny_TRAIN.ts": UNIVARIATE_TRAIN, "Tiny_TEST.ts": UNIVARIATE_TEST,
         "Duo_TRAIN.ts": TWO_CHANNEL, "Duo_TEST.ts": TWO_CHANNEL},
    )  # fmt: skip


def test_parser_reads_univariate_series_labels_and_missing_values(wheel: Path) -> None:
    train, test = qp.read_set(wheel, "Tiny")
    assert train.header["problemname"] == "Tiny" and train.channels == 1
    assert [s.shape for s in train.series] == [(1, 4)] * 5
    assert train.labels == ["1", "2", "1", "2", "1"]  # strings, as written
    np.testing.assert_allclose(train.series[1][0], [1.0, 0.9, 0.8, 0.7])
    assert np.isnan(test.series[1][0, 1]) and test.labels == ["2", "1"]


def test_parser_reads_channels_and_variable_lengths(wheel: Path) -> None:
    train, _ = qp.read_set(wheel, "Duo")
    assert train.channels == 2 and train.lengths.tolist() == [3, 2]
    np.testing.assert_allclose(train.series[0], [[1, 2, 3], [10, 20, 30]])
    assert train.labels == ["Walking", "Running"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("@problemName X\n@classLabel true a b\n@data\n1,2:c\n", "not in @classLabel"),
        ("@problemName X\n@timeStamps true\n@data\n(0,1):a\n", "not supported"),
        ("@problemName X\n@classLabel true a\n@data\n1,2:1:a\n", "channels of different lengths"),
        ("@problemName X\n@dimensions 2\n@classLabel true a\n@data\n1,2:a\n", "@dimensions 2"),
        ("@problemName X\n1,2:a\n", "header"),
        ("@problemName X\n@classLabel true a\n@data\n1,x:a\n", "line 4"),
    ],
)
def test_parser_names_what_it_refuses(text: str, message: str) -> None:
    with pytest.raises(qp.TsFormatError, match=message):
        qp.parse_ts(text, "X")


def test_a_missing_set_or_wheel_is_named(wheel: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="GunPoint_TRAIN.ts"):
        qp.read_set(wheel, "GunPoint")
    with pytest.raises(SystemExit, match="pip download aeon==1.6.0 --no-deps"):
        qp.find_wheel(str(tmp_path / "absent.whl"))


def test_events_table_one_entity_per_series_in_time_order(wheel: Path) -> None:
    train, test = qp.read_set(wheel, "Tiny")
    table = qp.events_table(train, test, val_fraction=0.4, seed=3)
    assert table.column_names == ["series", "time", "ch0", "label", "split"]
    assert table.schema.field("time").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("label").type == pa.string()
    rows = table.to_pylist()
    by_entity: dict[str, list[dict]] = {}
    for row in rows:
        by_entity.setdefault(row["series"], []).append(row)
    assert list(by_entity) == [*(f"train-{i:05d}" for i in range(5)), "test-00000", "test-00001"]
    for events in by_entity.values():  # one label and one split per entity, times increasing
        assert len({e["label"] for e in events}) == 1 and len({e["split"] for e in events}) == 1
        times = [e["time"] for e in events]
        assert times == sorted(times) and len(set(times)) == len(times)
    assert [e["ch0"] for e in by_entity["train-00001"]] == [1.0, 0.9, 0.8, 0.7]
    assert by_entity["train-00003"][0]["label"] == "2"
    # The missing step is left out; the time keeps its place (a 2 s gap).
    gap = by_entity["test-00001"]
    assert [e["ch0"] for e in gap] == [4.0, 4.2, 4.3]
    assert (gap[1]["time"] - gap[0]["time"]).total_seconds() == 2.0
    splits = {k: v[0]["split"] for k, v in by_entity.items()}
    assert {splits["test-00000"], splits["test-00001"]} == {"test"}
    train_side = [splits[f"train-{i:05d}"] for i in range(5)]
    assert set(train_side) == {"train", "val"}
    # Stratified: both classes keep series in train and each class gives one to val.
    val_labels = sorted(by_entity[k][0]["label"] for k, s in splits.items() if s == "val")
    assert val_labels == ["1", "2"]


def test_events_table_channels_and_variable_lengths(wheel: Path) -> None:
    train, test = qp.read_set(wheel, "Duo")
    table = qp.events_table(train, test, val_fraction=0.5, seed=0)
    assert table.column_names == ["series", "time", "ch0", "ch1", "label", "split"]
    assert table.num_rows == 2 * (3 + 2)
    first = table.filter(pa.compute.equal(table.column("series"), "train-00000")).to_pydict()
    assert first["ch0"] == [1.0, 2.0, 3.0] and first["ch1"] == [10.0, 20.0, 30.0]
    assert set(first["label"]) == {"Walking"}


def test_stratified_validation_is_seeded_and_keeps_every_class_in_train() -> None:
    labels = ["a"] * 10 + ["b"] * 5 + ["c"]
    mask = qp.stratified_val(labels, 0.2, seed=7)
    np.testing.assert_array_equal(mask, qp.stratified_val(labels, 0.2, seed=7))
    held = [label for label, m in zip(labels, mask, strict=True) if m]
    assert sorted(held) == ["a", "a", "b"]  # round(0.2 n) per class; a lone "c" stays in train


def test_params_map_the_table_and_load(wheel: Path, tmp_path: Path) -> None:
    raw = qp.set_params(tmp_path / "events.parquet", channels=2, length=3, seed=7)
    params = params_from_dict(raw)  # the project's own validation of params.yaml
    schema = params.data.schema
    assert (schema.entity, schema.time, schema.label) == ("series", "time", "label")
    assert schema.seq is None
    assert list(schema.numeric) == ["ch0", "ch1"] and not schema.categorical
    assert params.shard.split.method == "column" and params.shard.split.column == "split"
    assert params.shard.window.policy == "full" and params.shard.window.window_len == 3
    assert not params.validate.domains and not params.validate.ranges


def test_dotted_train_overrides_nest() -> None:
    assert qp.dotted(["lr=0.001", "model.num_layers=5", "model.pooling=mean"]) == {
        "lr": 0.001,
        "model": {"num_layers": 5, "pooling": "mean"},
    }


def test_published_numbers_name_their_source() -> None:
    for name in qp.SETS:
        entries = qp.PUBLISHED[name]
        assert {p.model for p in entries} == {"FCN", "ResNet", "InceptionTime"}
        for p in entries:
            assert p.source.startswith("hfawaz/")
            assert p.accuracy is None or 0.0 < p.accuracy <= 1.0
    best = qp.best_published("OSULeaf")
    assert best is not None and best.model == "ResNet"
