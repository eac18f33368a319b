"""The benchmarks measure what they claim: the pandas baseline computes the shard stage's windows,
and the padding benchmark's figures are fractions with optimal buckets beating quantile ones.

No timing is asserted anywhere (the benchmarks print ratios; CI machines are noisy).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest

from benchmarks import data_throughput, padding
from benchmarks._common import PARAMS, write_generated_events
from pipelines import shard
from pipelines.config import load_params


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """(shard stage windows, pandas windows) of a tiny generated input."""
    root = tmp_path_factory.mktemp("bench")
    params = load_params(PARAMS)
    write_generated_events(300, root / "events", seed=11)
    manifest = shard.run(params, root / "events", root / "shards")
    theirs = data_throughput.pandas_windows(
        root / "events",
        manifest.features,
        manifest.bucket_boundaries,
        params.shard.window,
        params.data.schema,
    )
    return data_throughput.shard_windows(root / "shards"), theirs


def test_pandas_baseline_computes_the_shard_stage_windows(windows):
    ours, theirs = windows
    summary = data_throughput.compare_windows(ours, theirs)
    assert summary["windows"] > 250 and summary["buckets"] > 10
    assert summary["num_max_abs_diff"] <= 1e-5
    # The input has sequences longer than the window, so truncation to the last 256 is covered.
    assert max(ours) == 256 and (ours[256]["length"] == 256).any()


@pytest.mark.parametrize("corruption", ["cat_id", "drop_window", "num", "short_window"])
def test_equivalence_check_catches_a_different_windowing(windows, corruption):
    ours, theirs = windows
    bad = copy.deepcopy(theirs)
    width = max(bad)
    if corruption == "cat_id":
        bad[width]["cat"][0, 0, 0] += 1
    elif corruption == "drop_window":
        bad[width] = {k: v[1:] for k, v in bad[width].items()}
    elif corruption == "num":
        bad[width]["num"][0, 0, 0] += 0.01
    else:  # a window one event shorter: last event padded away
        n = bad[width]["length"][0]
        bad[width]["length"][0] = n - 1
        bad[width]["cat"][0, n - 1] = 0
    with pytest.raises(AssertionError):
        data_throughput.compare_windows(ours, bad)


def test_padding_fractions_and_optimal_beats_quantile():
    data = padding.lognormal_lengths(20_000, seed=3)
    rows = padding.pad_rows(data, window_len=256)
    assert all(0.0 <= r.pad_train <= 1.0 and 0.0 <= r.pad_all <= 1.0 for r in rows)
    by = {(r.scheme, r.n_buckets): r for r in rows}
    for n in padding.N_BUCKETS:
        # Optimal is the least padding on the lengths its boundaries are derived from.
        assert by[("optimal", n)].pad_train <= by[("quantile", n)].pad_train + 1e-12
        assert by[("optimal", n)].pad_train < by[("global max", 1)].pad_train
    optimal = [by[("optimal", n)].pad_train for n in padding.N_BUCKETS]
    assert optimal == sorted(optimal, reverse=True)  # more buckets never pad more


def test_padding_default_row_uses_the_params_buckets():
    data = padding.lognormal_lengths(5_000, seed=4)
    row = padding.default_row(data)
    cfg = load_params(PARAMS).shard.buckets
    assert len(row.bounds) <= cfg.n_buckets and row.bounds[-1] == 256
    assert 0.0 <= row.pad_all <= 1.0
    assert np.isclose(
        row.tokens_vs_max * len(data.length) * 256,
        sum(row.bounds[np.searchsorted(row.bounds, x)] for x in data.length),
    )


def test_validate_step_runs_the_stage_and_times_the_phases_it_names(tmp_path, monkeypatch):
    """The step wraps stage functions by name: a renamed one must fail here, not in a 10M run."""
    from data_checks import contract
    from pipelines import validate

    for module in (validate, contract):  # Phases.wrap replaces them: restore after the test
        for name in dir(module):
            if callable(getattr(module, name)) and not name.startswith("__"):
                monkeypatch.setattr(module, name, getattr(module, name))
    write_generated_events(300, tmp_path / "events", seed=11)
    args = argparse.Namespace(events_dir=str(tmp_path / "events"), work=str(tmp_path / "work"))
    result = data_throughput.step_validate(args)
    assert result["rows"] > 0
    phases = {"whole_table_facts", "map_parts", "check_contract", "_row_checks", "_split"}
    assert phases <= set(result["breakdown"])
    assert (tmp_path / "work" / "validated" / "part-00000.parquet").exists()


def test_ingest_step_reads_the_events_as_a_user_folder_and_times_its_phases(tmp_path, monkeypatch):
    from pipelines import ingest

    for name in dir(ingest):  # Phases.wrap replaces them: restore after the test
        if callable(getattr(ingest, name)) and not name.startswith("__"):
            monkeypatch.setattr(ingest, name, getattr(ingest, name))
    write_generated_events(300, tmp_path / "events", seed=11)
    args = argparse.Namespace(events_dir=str(tmp_path / "events"), work=str(tmp_path / "work"))
    result = data_throughput.step_ingest(args)
    assert result["rows"] > 0 and result["parts"] == 1
    assert {"open_dataset", "normalise_user_table", "_finish_part"} <= set(result["breakdown"])
    assert (tmp_path / "work" / "ingested" / "part-00000.parquet").exists()


def test_batch_scoring_arms_score_every_entity_once_with_equal_scores(tmp_path):
    """The baseline loop and score_dataset (its in-process plan: no Ray in unit tests) give
    every entity once, on both layouts, with the scores the scorer gives the whole table."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from benchmarks import batch_scoring
    from serving.config import ModelRef
    from serving.registry import load_model

    model = batch_scoring.build_registered_model(tmp_path / "model")
    write_generated_events(120, tmp_path / "events", seed=5)
    layouts = batch_scoring.write_layouts(tmp_path / "events", tmp_path / "layouts", 2000)
    assert len(list(layouts["parts"].iterdir())) > 1
    ref = ModelRef(name=model["name"], alias="champion", tracking_uri=model["tracking_uri"])
    scorer = load_model(ref, max_tokens=16384).scorer
    expected = scorer.score(pads.dataset(tmp_path / "events", format="parquet").to_table())
    (tmp_path / "expected").mkdir()
    pq.write_table(
        pa.Table.from_pandas(expected.astype({"entity": str}), preserve_index=False),
        tmp_path / "expected" / "scores.parquet",
    )
    for layout, path in layouts.items():
        base = batch_scoring.plain_loop(path, tmp_path / f"base-{layout}", model, 1, 1500)
        assert base["chunks"] > 1  # chunks of whole entities, not one call
        ours = batch_scoring.ours(path, tmp_path / f"ours-{layout}", model, plan="local")
        assert ours["summary"]["plan"] == "local"
        assert base["entities"] == ours["entities"] == len(expected)
        for out in (f"base-{layout}", f"ours-{layout}"):
            check = batch_scoring.compare_outputs(tmp_path / "expected", tmp_path / out)
            assert check["entities"] == len(expected) and check["score_max_abs_diff"] <= 1e-5
    (tmp_path / "one-lost").mkdir()
    pq.write_table(
        pq.read_table(tmp_path / "expected" / "scores.parquet").slice(1),
        tmp_path / "one-lost" / "scores.parquet",
    )
    with pytest.raises(AssertionError, match="different entities"):
        batch_scoring.compare_outputs(tmp_path / "expected", tmp_path / "one-lost")


def test_batch_scoring_ratios_are_per_round_against_the_faster_baseline():
    from benchmarks.batch_scoring import Arm, figures

    def results(*seconds):
        return [{"seconds": s, "cpu_s": s, "entities": 100} for s in seconds]

    arms = [
        Arm("baseline-2t", "parts", None, results(4.0, 2.0, 6.0)),
        Arm("baseline-1t", "parts", None, results(3.0, 3.0, 3.0)),
        Arm("ours", "parts", None, results(1.5, 4.0, 2.0)),
    ]
    first = {f"{a.name}/parts": {"seconds": 9.0} for a in arms}
    rows = {f["arm"]: f for f in figures(arms, first)}
    # Rounds: faster baseline 3.0, 2.0, 3.0 -> ours' ratios 2.0, 0.5, 1.5.
    assert rows["ours"]["ratio"] == 1.5
    assert (rows["ours"]["ratio_min"], rows["ours"]["ratio_max"]) == (0.5, 2.0)
    assert rows["ours"]["sequences_per_s"] == 100 / 2.0  # entities / median wall seconds
    assert rows["baseline-1t"]["ratio"] == 1.0 and rows["baseline-2t"]["ratio"] == 0.75


def test_serving_load_client_times_every_request_and_counts_errors(tmp_path):
    """The load process of benchmarks/serving.py against a tiny local HTTP server."""
    import http.server
    import threading

    from benchmarks import serving

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, body))
            status = 500 if b"fail" in body else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bodies = tmp_path / "bodies.json"
        bodies.write_text('[{"a": 1}, {"b": "fail"}, {"c": 3}, {"d": 4}, {"e": 5}]')
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = serving.load(url, "/v1/x/{i}", bodies, concurrency=2)
    finally:
        server.shutdown()
    assert result["requests"] == 5 and result["errors"] == 1
    assert sorted(p for p, _ in seen) == [f"/v1/x/{i}" for i in range(5)]
    assert 0 < result["p50_ms"] <= result["p99_ms"] and result["rps"] > 0


def test_serving_long_history_is_one_ordered_entity():
    import pyarrow as pa

    from benchmarks import serving

    schema = load_params(PARAMS).data.schema
    n = 50
    events = pa.table({
        schema.entity: [f"e{i % 7}" for i in range(n)],
        schema.time: pa.array(np.arange(n)[::-1] * 10**6, pa.timestamp("us", "UTC")),
        schema.seq: np.zeros(n, dtype=np.int64),
        **{c: np.ones(n) for c in schema.numeric},
        **{c: pa.array(["x"] * n).dictionary_encode() for c in schema.categorical},
    })  # fmt: skip
    history = serving.long_history(events, schema, 20)
    assert history.num_rows == 21 and set(history[schema.entity].to_pylist()) == {"long-history"}
    times = history[schema.time].cast(pa.int64()).to_numpy()
    assert (np.diff(times) > 0).all() and (np.diff(history[schema.seq].to_numpy()) == 1).all()
    assert all(pa.types.is_string(history.schema.field(c).type) for c in schema.categorical)


def _recording_server(reply: bytes):
    """A keep-alive HTTP server on loopback that records (path, body) and answers ``reply``."""
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def test_serving_stream_load_keeps_every_entity_in_time_order(tmp_path):
    """The stream-load client: each entity once first, then random entities, every entity's
    events in strictly increasing time (one thread owns each entity), statuses counted."""
    import json
    from datetime import datetime

    from benchmarks import serving

    schema = load_params(PARAMS).data.schema
    events = [{schema.time: "2025-01-01T00:00:00+00:00", schema.seq: 0, "x": i} for i in range(3)]
    spec = tmp_path / "events.json"
    spec.write_text(json.dumps({"events": events, "time": schema.time, "seq": schema.seq}))
    server, seen = _recording_server(b'{"score": {"state": {"status": "continued"}}}')
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        first = serving.load(url, "/s/v1/stream/{entity}", spec, 3, 0.0, entities=10)
        calls = len(seen)
        timed = serving.load(url, "/s/v1/stream/{entity}", spec, 3, 0.5, entities=10)
    finally:
        server.shutdown()
    assert first["requests"] == calls == 10 and first["errors"] == 0
    assert sorted(p for p, _ in seen[:calls]) == sorted(f"/s/v1/stream/e-{e}" for e in range(10))
    assert first["statuses"] == {"continued": 10}
    assert timed["requests"] == len(seen) - calls > 10 and timed["statuses"]["continued"] > 10
    last: dict[str, datetime] = {}
    for path, body in seen:
        (event,) = json.loads(body)["events"]
        stamp = datetime.fromisoformat(event[schema.time])
        assert stamp > last.get(path, datetime.min.replace(tzinfo=stamp.tzinfo)), path
        last[path] = stamp


def test_serving_stepped_events_follow_the_history():
    import pyarrow as pa

    from benchmarks import serving

    schema = load_params(PARAMS).data.schema
    n = 12
    events = pa.table({
        schema.entity: ["e"] * n,
        schema.time: pa.array(np.arange(n) * 10**6, pa.timestamp("us", "UTC")),
        schema.seq: np.zeros(n, dtype=np.int64),
        **{c: np.ones(n) for c in schema.numeric},
        **{c: pa.array(["x"] * n) for c in schema.categorical},
    })  # fmt: skip
    history = serving.long_history(events, schema, 10)
    steps = serving.stepped_events(history.slice(10), schema, 4)
    times = [history[schema.time][9].as_py().isoformat(), *[e[schema.time] for e in steps]]
    assert times == sorted(times) and len(set(times)) == 5
    assert [e[schema.seq] for e in steps] == [10, 11, 12, 13]
    assert schema.entity not in steps[0]
