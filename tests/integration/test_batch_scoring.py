"""Batch scoring with Ray Data against the session's tiny registered model.

The model is registered under this module's own name with alias ``champion``; batch scores
must be the numbers :class:`serving.scorer.SequenceScorer` gives (the online code path) for
every entity, exactly once, with lineage naming the version that produced them.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import REPO, stage_env

pytestmark = pytest.mark.integration

MODEL = "seqops-batch-test"


@pytest.fixture(scope="module")
def registry(trained_run) -> dict:
    """The trained model registered as a version of MODEL, aliased champion."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = trained_run["tracking_uri"]
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        version = mlflow.register_model(trained_run["summary"]["model_uri"], MODEL)
        MlflowClient(uri).set_registered_model_alias(MODEL, "champion", version.version)
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version.version}")
        scorer = model.unwrap_python_model().scorer
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    return {
        "uri": uri,
        "version": str(version.version),
        "run_id": trained_run["summary"]["run_id"],
        "scorer": scorer,
        "events": trained_run["validated"],
    }


@pytest.fixture
def restore_mlflow():
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def _shuffled_parts(events: pa.Table, folder, parts: int = 3) -> None:
    """The events in random row order over several files, so entities span files."""
    order = np.random.default_rng(0).permutation(events.num_rows)
    shuffled = events.take(pa.array(order))
    folder.mkdir()
    step = -(-shuffled.num_rows // parts)
    for i in range(parts):
        pq.write_table(shuffled.slice(i * step, step), folder / f"part-{i}.parquet")


def test_batch_scores_equal_online_scores(ray_cluster, registry, tmp_path, restore_mlflow):
    from serving.batch import score_dataset

    events = pq.read_table(registry["events"])
    expected = registry["scorer"].score(events).set_index("entity")
    inputs = {"validated": registry["events"], "shuffled": tmp_path / "shuffled"}
    _shuffled_parts(events, inputs["shuffled"])

    for label, path in inputs.items():
        out = tmp_path / f"scores-{label}"
        summary = score_dataset(
            path, out, MODEL, alias="champion", tracking_uri=registry["uri"], rows_per_block=2000
        )
        assert summary["blocks"] > 1, "the test must exercise grouping across several blocks"
        scores = pads.dataset(out, format="parquet").to_table()
        entities = scores["entity"].to_pylist()
        assert len(entities) == len(set(entities)) == len(expected), label  # each exactly once
        assert set(entities) == set(expected.index), label
        assert summary["entities"] == len(expected)

        got = scores.to_pandas().set_index("entity").loc[expected.index]
        np.testing.assert_allclose(got["score"], expected["score"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            np.stack(got["probabilities"]), np.stack(expected["probabilities"]), rtol=0, atol=1e-5
        )
        assert (got["predicted"] == expected["predicted"]).all(), label
        assert (got["n_events"] == expected["n_events"]).all(), label
        assert (got["window_end"] == expected["window_end"]).all(), label

        assert scores.schema.field("probabilities").type == pa.list_(pa.float64())
        assert set(pc.unique(scores["model_name"]).to_pylist()) == {MODEL}
        assert set(pc.unique(scores["model_version"]).to_pylist()) == {registry["version"]}
        assert set(pc.unique(scores["run_id"]).to_pylist()) == {registry["run_id"]}
        content_hash = registry["scorer"].manifest["content_hash"]
        assert set(pc.unique(scores["data_hash"]).to_pylist()) == {content_hash}
        assert scores["scored_at"].null_count == 0
        assert summary["model_version"] == registry["version"]
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert leftovers == [], "temporary folders left beside the output"


def test_missing_alias_fails_clearly(registry, tmp_path, restore_mlflow):
    from serving.batch import score_dataset
    from serving.registry import ModelNotFoundError

    out = tmp_path / "scores"
    with pytest.raises(ModelNotFoundError, match=rf"models:/{MODEL}@no-such-alias"):
        score_dataset(
            registry["events"], out, MODEL, alias="no-such-alias", tracking_uri=registry["uri"]
        )
    assert not out.exists()

    cli = subprocess.run(
        [sys.executable, "-m", "serving.batch", "--events", str(registry["events"]),
         "--out", str(out), "--model-name", "no-such-model", "--alias", "champion",
         "--tracking-uri", registry["uri"]],
        cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 2, cli.stderr
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-model" in lines[0], cli.stderr
    assert not out.exists()


def test_failed_run_keeps_previous_output(ray_cluster, registry, tmp_path, restore_mlflow):
    from serving.batch import score_dataset

    out = tmp_path / "scores"
    out.mkdir()
    (out / "previous.parquet").write_bytes(b"previous run")

    with pytest.raises(FileNotFoundError, match="no-such-events"):
        score_dataset(
            tmp_path / "no-such-events.parquet", out, MODEL, alias="champion",
            tracking_uri=registry["uri"],
        )  # fmt: skip

    # A failure inside the Ray job: two files whose event-time types cannot be merged.
    bad = tmp_path / "bad-events"
    _shuffled_parts(pq.read_table(registry["events"]), bad, parts=2)
    part = pq.read_table(bad / "part-1.parquet")
    time_col = registry["scorer"].schema.time
    index = part.schema.get_field_index(time_col)
    as_text = pc.cast(pc.cast(part.column(index), pa.int64()), pa.string())
    pq.write_table(part.set_column(index, time_col, as_text), bad / "part-1.parquet")
    with pytest.raises(Exception):  # noqa: B017 - any failure, as long as it fails
        score_dataset(
            bad, out, MODEL, alias="champion", tracking_uri=registry["uri"], rows_per_block=2000
        )

    assert [p.name for p in out.iterdir()] == ["previous.parquet"]
    assert (out / "previous.parquet").read_bytes() == b"previous run"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary folders left beside the output"
