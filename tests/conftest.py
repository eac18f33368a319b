"""Shared fixtures. Ray and MLflow fixtures live in tests/integration/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def default_params() -> Params:
    """The repository's params.yaml, parsed and validated."""
    return load_params(REPO / "params.yaml")


TINY_OVERRIDES = {
    "data": {"generate": {"n_entities": 240, "median_length": 20}},
    "shard": {
        "buckets": {"n_buckets": 6},
        "max_workers": 2,
        "window": {"length": 64, "max_len": 64},
    },
    "train": {
        "model": {"hidden_size": 16, "embedding_dim": 4, "ffn_size": 32},
        "epochs": 2,
        "max_tokens": 2048,
        "min_epoch_tokens": 1,  # one pass per epoch: the tests check the workflow, not learning
    },
}


def tiny_params() -> Params:
    """The repository's params with a tiny data set and model (seconds, not minutes)."""
    import yaml

    from pipelines.config import merge_params, params_from_dict

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return params_from_dict(merge_params(raw, TINY_OVERRIDES))


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> dict[str, Path]:
    """Real ingest -> validate -> shard outputs on tiny generated data, built once."""
    from pipelines import ingest, shard, validate

    root = tmp_path_factory.mktemp("tiny")
    params = tiny_params()
    ingest.run(params, root / "events")
    report = validate.run(
        params, root / "events", root / "validated", root / "quarantine.parquet",
        root / "validation.json", root / "docs",
    )  # fmt: skip
    assert not report.failed(), report.summary()
    shard.run(params, root / "validated", root / "shards")
    return {
        "root": root,
        "events": root / "events",
        "validated": root / "validated",
        "shards": root / "shards",
    }
