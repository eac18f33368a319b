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


@pytest.fixture(scope="session")
def s3_server():
    """A local S3-compatible server (moto's server mode, in a thread): ``host:port``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch):
    """Credentials the local server accepts, as a user would export them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def s3_bucket(s3_server, s3_credentials, request):
    """A new bucket on the local server; its URL as ``data.store`` takes it."""
    import re

    import pyarrow.fs as pafs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    store = pafs.S3FileSystem(
        endpoint_override=s3_server, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    store.create_dir(name)
    return f"s3://{name}/seqops?endpoint_override={s3_server}&scheme=http&region=us-east-1"
