"""Live statistics at the endpoint (``serving.live``): what a replica's drift gauges say is what
``seqops monitor`` says of the same events; the window rolls; out-of-order events count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
import torch

from data_checks.drift import compare
from pipelines.monitor import profile_batch
from pipelines.train import model_config
from seqcore.encoding import EventColumns, table_columns
from seqcore.manifest import load_manifest
from seqcore.profile import score_hist, scores_of
from seqcore.scorer import SequenceScorer
from seqcore.store import read_events
from seqmodels import build_model
from serving.live import LiveMonitor, Scored
from tests.conftest import tiny_params

pytestmark = pytest.mark.filterwarnings("ignore:Series.values returning")


@pytest.fixture(scope="module")
def scorer(tiny_pipeline):
    """An untrained classifier whose manifest carries the training profile and (made up
    here, as no training ran) validation scores."""
    manifest = load_manifest(tiny_pipeline["shards"])
    torch.manual_seed(0)
    model = build_model(model_config(tiny_params(), manifest))
    scores = score_hist("classify", np.random.default_rng(0).random(200))
    return SequenceScorer(model, dataclasses.replace(manifest, scores=scores))


@pytest.fixture(scope="module")
def events(tiny_pipeline):
    return read_events(tiny_pipeline["validated"])


def _requests(table: pa.Table, scorer: SequenceScorer, size: int) -> list[EventColumns]:
    """The table's entities, ``size`` per request."""
    keys = pc.unique(table.column("account_id"))
    requests = []
    for start in range(0, len(keys), size):
        part = table.filter(pc.is_in(table.column("account_id"), keys[start : start + size]))
        requests.append(table_columns(part, scorer.schema, scorer.spec))
    return requests


def _serve(
    monitor: LiveMonitor, scorer: SequenceScorer, requests: list[EventColumns], per_batch: int = 1
) -> None:
    """Score the requests as the holder does and hand each batch over."""
    for columns in requests:
        sequences = scorer.encode(columns)
        _, outputs = scorer.score_encoded(sequences)
        scores = scores_of(scorer.config.task, outputs)
        monitor.observe(Scored(columns, sequences, scores, scorer, per_batch))


def test_the_gauges_are_the_offline_monitors_distances_for_the_same_events(scorer, events):
    monitor = LiveMonitor(scorer, window_requests=1000, update_s=3600)
    try:
        _serve(monitor, scorer, _requests(events, scorer, 16))
        live = monitor.flush()
    finally:
        monitor.stop()
    offline = compare(scorer.manifest.reference, profile_batch(events, scorer.manifest, scorer),
                      tiny_params().monitor)  # fmt: skip
    assert set(live) == {s.name for s in offline}
    assert {"length", "gap", "order", "categorical.mcc", "transitions.mcc", "score"} <= set(live)
    for statistic in offline:
        assert live[statistic.name] == pytest.approx(statistic.distance, abs=1e-9), statistic.name
    assert monitor.sequences == len(pc.unique(events.column("account_id")))


def test_the_window_keeps_the_latest_requests_and_a_new_category_moves_its_gauge(scorer, events):
    requests = _requests(events, scorer, 8)
    monitor = LiveMonitor(scorer, window_requests=3, update_s=3600)
    try:
        for request in requests:  # a pass per request
            _serve(monitor, scorer, [request])
            before = monitor.flush()
        assert len(monitor.window) == 3 and monitor.requests == 3
        assert monitor.sequences == sum(len(r.names) for r in requests[-3:])
        planted = [dataclasses.replace(r, categorical={**r.categorical, "mcc": ["9999"] * r.num_rows})
                   for r in requests[:3]]  # fmt: skip
        _serve(monitor, scorer, planted)  # one pass of three requests: the window is it alone
        after = monitor.flush()
        assert len(monitor.window) == 1 and monitor.requests == 3
    finally:
        monitor.stop()
    assert after["categorical.mcc"] > before["categorical.mcc"] + 0.5  # every event is OOV now
    assert after["length"] == pytest.approx(
        _distance_of(scorer, events, requests[:3], "length"), abs=1e-9
    )


def _distance_of(scorer, events, requests, statistic) -> float:
    names = [n for r in requests for n in r.names]
    table = events.filter(pc.is_in(pc.cast(events.column("account_id"), pa.string()),
                                   value_set=pa.array(names)))  # fmt: skip
    found = compare(scorer.manifest.reference, profile_batch(table, scorer.manifest, scorer),
                    tiny_params().monitor)  # fmt: skip
    return next(s.distance for s in found if s.name == statistic)


def test_events_sent_out_of_order_are_counted(scorer, events):
    (columns,) = _requests(events, scorer, 10_000)[:1]
    flipped = np.arange(columns.num_rows)[::-1]  # every sequence's events newest first
    reversed_columns = dataclasses.replace(
        columns,
        group=columns.group[flipped],
        time_us=columns.time_us[flipped],
        seq=None if columns.seq is None else columns.seq[flipped],
        numeric={k: v[flipped] for k, v in columns.numeric.items()},
        categorical={k: [v[i] for i in flipped] for k, v in columns.categorical.items()},
    )
    monitor = LiveMonitor(scorer, window_requests=10, update_s=3600)
    try:
        _serve(monitor, scorer, [reversed_columns])
        gauges = monitor.flush()
    finally:
        monitor.stop()
    behind = monitor.totals["order"]
    assert behind[1] == columns.num_rows - len(columns.names)  # all but each first one
    assert gauges["order"] > 0.5


def test_a_forecast_model_is_monitored_and_a_new_version_starts_a_fresh_window(
    scorer, events, tiny_pipeline
):
    """Prometheus takes positive bucket bounds only: a forecast's standardised score goes
    through the normal CDF. A swapped-in model gets its own reference and window; batches
    count the requests they hold."""
    params = tiny_params()
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, task="forecast"))
    manifest = load_manifest(tiny_pipeline["shards"])
    forecaster = SequenceScorer(build_model(model_config(params, manifest)), manifest)
    requests = _requests(events, forecaster, 8)
    monitor = LiveMonitor(forecaster, window_requests=100, update_s=3600)
    try:
        _serve(monitor, forecaster, requests, per_batch=4)
        gauges = monitor.flush()
        assert "length" in gauges and "score" not in gauges  # the shards carry no scores
        assert monitor.requests == 4 * len(requests)
        monitor.rebind(scorer)
        _serve(monitor, forecaster, requests[:1])  # scored by the old version: left out
        _serve(monitor, scorer, requests[:2])
        gauges = monitor.flush()
        assert monitor.requests == 2 and "score" in gauges
    finally:
        monitor.stop()


def test_the_traffic_log_is_a_table_seqops_monitor_reads(scorer, events, tiny_pipeline, tmp_path):
    """The served-traffic log: what each pass scored, as Parquet files of the schema's
    columns; ``seqops monitor --events`` on the folder sees the served sequences."""
    import json

    from pipelines.monitor import main as monitor
    from tests.conftest import REPO

    requests = _requests(events, scorer, 16)
    monitor_ = LiveMonitor(scorer, window_requests=1000, update_s=3600,
                           traffic_log=str(tmp_path / "traffic"))  # fmt: skip
    try:
        _serve(monitor_, scorer, requests[: len(requests) // 2])
        monitor_.flush()
        _serve(monitor_, scorer, requests[len(requests) // 2 :])
        monitor_.flush()
    finally:
        monitor_.stop()
    files = sorted((tmp_path / "traffic").glob("*.parquet"))
    assert len(files) == 2 and not list((tmp_path / "traffic").glob(".*"))
    logged = pa.concat_tables([pa.parquet.read_table(f) for f in files])
    assert logged.num_rows == events.num_rows
    assert set(logged.column_names) == {"account_id", "event_time", "seq_no", "amount", "mcc",
                                        "channel", "country", "device"}  # fmt: skip
    code = monitor(["--events", str(tmp_path / "traffic"), "--shards", str(tiny_pipeline["shards"]),
                    "--params", str(REPO / "params.yaml"), "--report", str(tmp_path / "d.json"),
                    "--html", str(tmp_path / "d.html")])  # fmt: skip
    report = json.loads((tmp_path / "d.json").read_text())
    assert code == 0 and report["current"]["events"] == events.num_rows  # what it trained on
    assert report["current"]["sequences"] == len(pc.unique(events.column("account_id")))
