"""Data stages' parts as Ray tasks (``pipelines.fanout``) on the session's local cluster:
the same outputs as in process, retries of a failed part, the part named when it keeps
failing, and a part too large for the cluster refused before any task starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.fanout import Part, PartFailed, list_parts, map_parts
from pipelines.ingest import write_events
from pipelines.params.data import DataConfig
from seqcore.store import read_events
from tests.unit.test_validate_parts import comparable, faulty_events, run_stage, stage_params

pytestmark = pytest.mark.integration


def flaky(part: Part, markers: Path) -> int:
    """Fails the first time it meets each part (a lost node, a full disk), then works."""
    marker = markers / part.name
    if not marker.exists():
        marker.touch()
        raise RuntimeError(f"transient failure on {part.name}")
    return part.rows


def broken(part: Part, _: object) -> int:
    if part.index == 1:
        raise ValueError("this part is corrupt")
    return part.rows


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> list[Part]:
    folder = tmp_path_factory.mktemp("fanout") / "events"
    table = faulty_events(n_entities=120)
    write_events(table, folder, -(-table.num_rows // 3), "account_id")
    return list_parts(folder)


def test_validate_on_ray_equals_validate_in_process(ray_cluster, parts, tmp_path):
    events = Path(parts[0].folder.root)
    local, local_out, _ = run_stage(stage_params("quarantine"), events, tmp_path / "local")
    on_ray, ray_out, _ = run_stage(stage_params("quarantine", "ray"), events, tmp_path / "ray")
    assert comparable(on_ray.to_json()) == comparable(local.to_json())
    assert read_events(ray_out).equals(read_events(local_out))


def test_shard_on_ray_equals_shard_in_process(ray_cluster, tmp_path):
    import dataclasses as dc

    from pipelines import shard
    from tests.unit.test_shard import _events, _params
    from tests.unit.test_shard_parts import as_parts, assert_same_shards

    as_parts(_events(n_entities=300, plant_test_category=False), tmp_path / "validated", 3)
    params = _params()
    local = shard.run(
        dc.replace(params, data=dc.replace(params.data, engine="local")),
        tmp_path / "validated", tmp_path / "local",
    )  # fmt: skip
    on_ray = shard.run(
        dc.replace(params, data=dc.replace(params.data, engine="ray")),
        tmp_path / "validated", tmp_path / "ray",
    )  # fmt: skip
    assert on_ray.to_json() == local.to_json()  # byte for byte: the same code, elsewhere
    assert_same_shards(tmp_path / "local", tmp_path / "ray", local)


def test_a_failed_part_is_retried(ray_cluster, parts, tmp_path):
    data = DataConfig(engine="ray", task_retries=1)
    rows = map_parts(flaky, parts, tmp_path, data, what="test", memory_factor=1.0)
    assert rows == [p.rows for p in parts]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in parts]


def test_a_part_that_keeps_failing_is_named(ray_cluster, parts, tmp_path):
    data = DataConfig(engine="ray", task_retries=0)
    with pytest.raises(PartFailed, match="failed after 0 retries: RuntimeError: transient"):
        map_parts(flaky, parts, tmp_path, data, what="test", memory_factor=1.0)
    data = dataclasses.replace(data, task_retries=2)
    corrupt = r"part .*/part-00001.parquet failed after 2 retries: ValueError: this part is corrupt"
    with pytest.raises(PartFailed, match=corrupt):
        map_parts(broken, parts, None, data, what="test", memory_factor=1.0)


def test_a_part_larger_than_the_cluster_is_refused_before_any_task(ray_cluster, parts, tmp_path):
    data = DataConfig(engine="ray")
    with pytest.raises(PartFailed, match="lower data.rows_per_part"):
        map_parts(flaky, parts, tmp_path, data, what="test", memory_factor=1e9)
    assert not list(tmp_path.iterdir())  # nothing ran
