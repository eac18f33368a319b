"""One line per epoch, read from the run that rank 0 logs to, and quiet defaults."""

from __future__ import annotations

import io
import logging
import os
import time

import pytest

from seqcore import progress
from seqcore.progress import EpochProgress


@pytest.fixture
def run(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("p", artifact_location=(tmp_path / "a").as_uri())
    return client, client.create_run(experiment).info.run_id


def _epoch(client, run_id, epoch, seconds, best):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = {"train_loss": 0.5 / (epoch + 1), "val_loss": 0.4 / (epoch + 1),
              "val_accuracy": 0.8 + epoch / 100, "epoch_seconds": seconds, "best_epoch": best}  # fmt: skip
    client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in values.items()])


def test_each_logged_epoch_is_printed_once_with_time_left(run):
    client, run_id = run
    out = io.StringIO()
    watcher = EpochProgress(client, run_id, epochs=5, metric="accuracy", out=out)
    assert watcher.poll() == []
    _epoch(client, run_id, 0, 2.0, 0)
    (first,) = watcher.poll()
    assert first.startswith("train: epoch 1/5")
    for part in ("train_loss 0.5", "val_loss 0.4", "val_accuracy 0.8", "best epoch 1"):
        assert part in first
    assert "up to ~8 s left" in first  # 4 epochs left at 2 s each
    _epoch(client, run_id, 1, 2.0, 1)
    _epoch(client, run_id, 2, 2.0, 1)
    lines = watcher.poll()
    assert [line.split("  ")[0] for line in lines] == ["train: epoch 2/5", "train: epoch 3/5"]
    assert "best epoch 2" in lines[1]
    assert watcher.poll() == []
    assert out.getvalue().count("\n") == 3


def test_the_thread_prints_what_arrives_while_training_and_the_rest_on_exit(run):
    client, run_id = run
    out = io.StringIO()
    with EpochProgress(client, run_id, epochs=2, metric="accuracy", out=out, interval=0.05):
        _epoch(client, run_id, 0, 1.0, 0)
        deadline = time.time() + 10
        while "epoch 1/2" not in out.getvalue() and time.time() < deadline:
            time.sleep(0.05)
        assert "epoch 1/2" in out.getvalue()
        _epoch(client, run_id, 1, 1.0, 1)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("train: epoch 2/2") and "left" not in last


def test_quiet_unless_verbose(monkeypatch):
    for name in (
        progress.VERBOSE_ENV,
        "MLFLOW_LOGGING_LEVEL",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
    ):
        monkeypatch.setenv(name, "")  # recorded, so what quiet() sets is undone afterwards
        monkeypatch.delenv(name)
    level = logging.getLogger("mlflow").level
    try:
        progress.quiet()
        assert logging.getLogger("mlflow").level == logging.WARNING
        assert progress.ray_init_options() == {"log_to_driver": False, "logging_level": 40}
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
        monkeypatch.setenv(progress.VERBOSE_ENV, "1")
        assert progress.ray_init_options() == {"log_to_driver": True}
    finally:
        logging.getLogger("mlflow").setLevel(level)


def test_row_progress_logs_at_most_every_interval_with_rate_and_time_left(caplog):
    import logging

    from seqcore.progress import RowProgress

    now = [0.0]
    log = logging.getLogger("seqops.test-progress")
    progress = RowProgress(log, "ingest", 1_000_000, every_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(8):  # 100,000 rows every 4 s
            now[0] += 4
            progress.advance(100_000)
        progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 12 and 24 s (not every batch), then the last line
    assert lines[0] == "ingest: 300,000 of 1,000,000 rows (30%), 25k rows/s, about 28 s left"
    assert lines[-1].startswith("ingest: 800,000 of 1,000,000 rows (80%)")
