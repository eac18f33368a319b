"""The data stages' outputs on an object store (``data.store``, ``seqcore.store``), against a
local S3-compatible server (moto's server mode) that the tests start themselves.

A run with a store writes the same bytes as a run on local disk, as a snapshot that a local
``_STORE.json`` points at; readers follow the pointer, and refuse a snapshot that was not
published (no ``_SUCCESS``) or was changed after it was; a run that fails leaves neither a
snapshot nor a changed pointer.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines import ingest, invariance, shard, validate
from pipelines.config import params_from_dict
from pipelines.fanout import list_parts
from pipelines.shard_reader import read_index, read_split
from seqcore.config import ConfigError
from seqcore.manifest import load_manifest
from seqcore.store import MARKER, POINTER, Location, StoreError, locate, read_events

SMALL = {
    "seed": 3,
    "data": {
        "generate": {"n_entities": 300, "median_length": 12},
        "rows_per_part": 1500,
        "engine": "local",
    },
    "shard": {"buckets": {"n_buckets": 4}, "window": {"length": 32, "max_len": 32}},
    "validate": {"now": "2026-06-01T00:00:00Z"},
}


def _params(store: str | None):
    data = {**SMALL["data"], "store": store}
    return params_from_dict({**SMALL, "data": data})


def _pipeline(params, root: Path) -> None:
    """ingest, validate and shard into ``root``, as dvc.yaml names their outputs."""
    ingest.run(params, root / "events")
    report = validate.run(
        params, root / "events", root / "validated", root / "quarantine.parquet",
        root / "validation.json", root / "docs",
    )  # fmt: skip
    assert not report.failed()
    shard.run(params, root / "validated", root / "shards")


def _snapshots(url: str, output: str) -> list[str]:
    location = Location.from_url(url).child(output)
    selector = pafs.FileSelector(location.root, allow_not_found=True)
    return sorted(i.base_name for i in location.fs.get_file_info(selector))


def _same_rows(a: pa.Table, b: pa.Table) -> None:
    """Equal tables, NaN equal to NaN (a forecast step without a target)."""
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].combine_chunks(), b[name].combine_chunks()
        if pa.types.is_large_list(x.type) and pa.types.is_floating(x.type.value_type):
            x, y = pc.list_flatten(x).to_numpy(), pc.list_flatten(y).to_numpy()
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert x.equals(y), name


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    _pipeline(_params(None), root)
    return root


def test_a_store_run_writes_what_a_local_run_writes(tmp_path, s3_bucket, local_run):
    _pipeline(_params(s3_bucket), tmp_path)
    for output in ("events", "validated"):
        # The local folder holds the pointer alone; the parts are in the snapshot it names.
        assert sorted(p.name for p in (tmp_path / output).iterdir()) == [POINTER]
        folder = locate(tmp_path / output)
        assert folder.uri.startswith("s3://") and not folder.is_local
        names = folder.names("part-*.parquet")
        assert len(names) > 1 and names == sorted(p.name for p in (local_run / output).iterdir())
        assert read_events(tmp_path / output).equals(read_events(local_run / output))
        for name in names:  # byte for byte, so a snapshot's hashes equal a local folder's
            local = (local_run / output / name).read_bytes()
            assert folder.read_bytes(name) == local
    # Shards: the same files, the same manifest (its input hash and content hash included).
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [POINTER, "manifest.json"]
    stored, local = load_manifest(tmp_path / "shards"), load_manifest(local_run / "shards")
    assert stored.to_json() == local.to_json()
    for split in ("train", "val", "test"):
        _same_rows(read_split(tmp_path / "shards", split), read_split(local_run / "shards", split))
    # Training workers are given the snapshot's URL, not a path only the driver has.
    url = locate(tmp_path / "shards").uri
    for a, b in zip(read_index(url, "train").values(), read_index(local_run / "shards", "train").values(), strict=True):  # fmt: skip
        assert (a == b).all()
    # evaluate's invariance check reads some entities' events through the pointer too.
    scorer = SimpleNamespace(
        schema=SimpleNamespace(entity="account_id"), required_columns=["account_id", "amount"]
    )
    some = ["A00000001", "A00000007"]
    stored_rows = invariance.entity_events(tmp_path / "validated", scorer, some)
    assert stored_rows.num_rows > 0
    assert stored_rows.equals(invariance.entity_events(local_run / "validated", scorer, some))
    # What the tasks handed each other (whole-table facts, quarantine, shard pieces) went
    # through the store, so that tasks on any node reach it, and is gone after the run.
    assert _snapshots(s3_bucket, "_scratch") == []
    record = json.loads((tmp_path / "shards" / POINTER).read_text())
    assert record["files"]["manifest.json"]["size"] == len(
        (tmp_path / "shards" / "manifest.json").read_bytes()
    )


def test_a_snapshot_without_its_marker_is_refused(tmp_path, s3_bucket):
    params = _params(s3_bucket)
    ingest.run(params, tmp_path / "events")
    folder = locate(tmp_path / "events")
    folder.fs.delete_file(folder.path(MARKER))
    with pytest.raises(StoreError, match=r"no _SUCCESS in it, so it is not a published snapshot"):
        read_events(tmp_path / "events")
    with pytest.raises(StoreError, match="no _SUCCESS"):
        validate.run(
            params, tmp_path / "events", tmp_path / "validated", tmp_path / "q.parquet",
            tmp_path / "v.json", tmp_path / "docs",
        )  # fmt: skip
    assert not (tmp_path / "validated").exists()


def test_a_snapshot_changed_after_publishing_is_refused(tmp_path, s3_bucket):
    ingest.run(_params(s3_bucket), tmp_path / "events")
    folder = locate(tmp_path / "events")
    first = folder.names("part-*.parquet")[0]
    table = folder.read_table(first)
    with folder.fs.open_output_stream(folder.path(first)) as sink:
        pq.write_table(table.slice(1), sink)  # one row fewer
    marker = folder.read_json(MARKER)
    marker["files"][first]["size"] = -1
    with folder.fs.open_output_stream(folder.path(MARKER)) as sink:
        sink.write(json.dumps(marker).encode())
    with pytest.raises(StoreError, match="changed after it was published"):
        locate(tmp_path / "events")


def test_a_failed_run_leaves_no_snapshot_and_the_previous_pointer(tmp_path, s3_bucket, monkeypatch):
    params = _params(s3_bucket)
    _pipeline(params, tmp_path)
    pointer = (tmp_path / "shards" / POINTER).read_bytes()
    before = _snapshots(s3_bucket, "shards")
    assert len(before) == 1

    calls = []

    def gather_then_fail(unit, shared):
        calls.append(unit.name)
        if len(calls) == 3:  # two files are already uploaded
            raise OSError("disk full")
        return real(unit, shared)

    real = shard.gather_file
    monkeypatch.setattr(shard, "gather_file", gather_then_fail)
    with pytest.raises(OSError, match="disk full"):
        shard.run(params, tmp_path / "validated", tmp_path / "shards")
    assert (tmp_path / "shards" / POINTER).read_bytes() == pointer
    assert _snapshots(s3_bucket, "shards") == before
    assert _snapshots(s3_bucket, "_scratch") == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shards")]
    load_manifest(tmp_path / "shards")  # still readable


def test_a_failed_validation_publishes_nothing(tmp_path, s3_bucket):
    params = _params(s3_bucket)
    ingest.run(params, tmp_path / "events")
    strict = params_from_dict(
        {**SMALL, "data": {**SMALL["data"], "store": s3_bucket},
         "validate": {"now": "2024-01-01T00:00:00Z"}}  # every event is in the future
    )  # fmt: skip
    report = validate.run(
        strict, tmp_path / "events", tmp_path / "validated", tmp_path / "q.parquet",
        tmp_path / "v.json", tmp_path / "docs",
    )  # fmt: skip
    assert report.failed()
    assert not (tmp_path / "validated").exists()
    assert _snapshots(s3_bucket, "validated") == []


def test_a_shared_folder_works_as_a_store(tmp_path, local_run):
    store = tmp_path / "mount"
    _pipeline(_params(str(store)), tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work" / "events").iterdir()) == [POINTER]
    [snapshot] = (store / "shards").iterdir()
    assert (snapshot / MARKER).is_file()
    stored = load_manifest(tmp_path / "work" / "shards")
    assert stored.to_json() == load_manifest(local_run / "shards").to_json()


def test_an_unreachable_store_fails_before_any_work(tmp_path, s3_credentials):
    url = "s3://nowhere/x?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    with pytest.raises(StoreError, match=r"data\.store: cannot write to s3://nowhere/x"):
        ingest.run(_params(url), tmp_path / "events")
    assert not (tmp_path / "events").exists()


def test_a_store_url_with_an_unknown_option_is_refused_naming_it(tmp_path, s3_credentials):
    with pytest.raises(StoreError, match=r"data\.store: s3://b/x: .*'colour'"):
        ingest.run(_params("s3://b/x?colour=blue"), tmp_path / "events")


@pytest.mark.parametrize("store", ["ftp://host/x", ""])
def test_a_store_url_pyarrow_cannot_open_is_refused_with_the_params(store):
    with pytest.raises(ConfigError, match=r"data\.store"):
        _params(store)


@pytest.mark.parametrize("with_store", [False, True])
def test_relative_output_folders_as_dvc_yaml_names_them(
    tmp_path, monkeypatch, s3_bucket, with_store
):
    monkeypatch.chdir(tmp_path)
    params = _params(s3_bucket if with_store else None)
    ingest.run(params, Path("data/events"))
    shard.run(params, Path("data/events"), Path("data/shards"))
    assert read_events("data/events").num_rows == sum(
        p.rows for p in list_parts(tmp_path / "data" / "events")
    )
    assert load_manifest("data/shards").input.events_count == read_events("data/events").num_rows
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["events", "shards"]


def test_tasks_hand_files_on_through_the_store(tmp_path, s3_bucket, monkeypatch):
    """A task on another node writes a piece to its own disk and puts it; a reader anywhere
    gets it onto its own disk. Two 'nodes' here: two temp folders."""
    from seqcore.store import scratch_dir

    with scratch_dir(s3_bucket, tmp_path, ".test-") as scratch:
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "node-a"))
        scratch.path("x/piece.bin").write_bytes(b"abc")
        scratch.put("x/piece.bin")
        assert not (tmp_path / "node-a" / scratch.folder.name / "x" / "piece.bin").exists()
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "node-b"))
        assert scratch.has("x/piece.bin") and not scratch.has("y")
        assert scratch.get("x/piece.bin").read_bytes() == b"abc"
        scratch.done("x/piece.bin")
    assert _snapshots(s3_bucket, "_scratch") == []


def test_a_store_error_is_one_line_from_the_stage_command(tmp_path, capsys, s3_credentials):
    params = yaml.safe_dump({**SMALL, "data": {**SMALL["data"], "store": "s3://b/x?colour=blue"}})
    (tmp_path / "params.yaml").write_text(params)
    code = ingest.main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("ingest: data.store: s3://b/x: ")
    assert "Traceback" not in "\n".join(err)


def test_checkpoints_follow_the_data_store_unless_told_otherwise(tmp_path):
    """Training on several nodes needs checkpoints every node reaches: with data.store set they
    go inside it (its options kept), train.storage_path overrides, and without either they stay
    in the repository's .ray_results."""
    from pipelines.train import storage_root

    def root(data: dict, train: dict) -> str:
        return storage_root(params_from_dict({"data": data, "train": train}), tmp_path)

    store = "s3://team/seqops?endpoint_override=minio:9000&scheme=http"
    assert root({"store": store}, {}) == (
        "s3://team/seqops/ray_results?endpoint_override=minio:9000&scheme=http"
    )
    assert root({"store": str(tmp_path / "shared")}, {}) == str(tmp_path / "shared" / "ray_results")
    assert root({"store": store}, {"storage_path": "s3://other/ckpt"}) == "s3://other/ckpt"
    assert root({}, {}) == str((tmp_path / ".ray_results").resolve())
