"""`dvc repro` of ingest -> validate -> shard in a temporary copy of the repository."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import dvc, update_params

pytestmark = pytest.mark.integration

TINY = {
    "data": {"generate": {"n_entities": 300}},
    "shard": {"max_workers": 2, "buckets": {"n_buckets": 6}},
}
DATA_STAGES = ("ingest", "validate", "shard")


def _ran(output: str) -> set[str]:
    return {stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output}


def test_repro_builds_validated_bucketed_shards_and_reruns_only_what_changed(repo_copy):
    repo = repo_copy(TINY)
    first = dvc(repo, "repro", *DATA_STAGES)
    assert _ran(first.stdout) == set(DATA_STAGES)

    report = json.loads((repo / "reports/validation.json").read_text())
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert "fail" not in statuses.values(), statuses
    assert (repo / "reports/data_docs/index.html").read_text().count("<table") >= 1

    manifest = json.loads((repo / "data/shards/manifest.json").read_text())
    for split in ("train", "val", "test"):
        parts = list((repo / "data/shards" / split).glob("bucket=*/part-*.parquet"))
        assert len(parts) >= 2, split
    sample = next((repo / "data/shards/train").glob("bucket=*/part-00000.parquet"))
    bound = int(sample.parent.name.split("=")[1])
    table = pq.read_table(sample)
    assert table.num_rows == 0 or max(table["length"].to_pylist()) <= bound
    assert manifest["content_hash"]

    second = dvc(repo, "repro", *DATA_STAGES)
    assert _ran(second.stdout) == set(), second.stdout

    update_params(repo, {"shard": {"window": {"min_length": 3}}})
    third = dvc(repo, "repro", *DATA_STAGES)
    assert _ran(third.stdout) == {"shard"}, third.stdout


def test_repro_fails_on_a_planted_fault_with_a_readable_summary(repo_copy):
    repo = repo_copy(
        {**TINY, "data": {"generate": {"n_entities": 300, "faults": ["out_of_order"]}}}
    )
    result = dvc(repo, "repro", *DATA_STAGES, check=False)
    assert result.returncode != 0
    combined = result.stdout + result.stderr
    assert "time_order" in combined
    assert not (repo / "data/shards").exists()
    report = json.loads((repo / "reports/validation.json").read_text())
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    assert failed == ["time_order"]
