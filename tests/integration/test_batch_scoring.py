"""Batch scoring on Ray against the session's tiny registered model.

The model is registered under this module's own name with alias ``champion``; batch scores
must be the numbers :class:`seqcore.scorer.SequenceScorer` gives (the online code path) for
every entity, exactly once, with lineage naming the version that produced them, whichever
plan ran: ``files`` (entity-disjoint files: grouped ranges, hash shares, packed small files),
``shuffle`` (entities span files) or ``local``. The planner's units are checked on their own
(no Ray): together they hold every event once, and no entity is split between units.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import REPO, register_versions, stage_env

pytestmark = pytest.mark.integration

MODEL = "seqops-batch-test"


@pytest.fixture(scope="module")
def registry(trained_run) -> dict:
    """The trained model registered as a version of MODEL, aliased champion."""
    registered = register_versions(trained_run, MODEL)
    version = registered["versions"][0]
    registered["client"].set_registered_model_alias(MODEL, "champion", version)
    # The validate stage's one part of the tiny data: a file grouped by entity.
    (grouped,) = sorted(trained_run["validated"].glob("part-*.parquet"))
    return {**registered, "version": version, "events": grouped}


def _shuffled_parts(events: pa.Table, folder, parts: int = 3) -> None:
    """The events in random row order over several files, so entities span files."""
    order = np.random.default_rng(0).permutation(events.num_rows)
    shuffled = events.take(pa.array(order))
    folder.mkdir()
    step = -(-shuffled.num_rows // parts)
    for i in range(parts):
        pq.write_table(shuffled.slice(i * step, step), folder / f"part-{i}.parquet")


def _entity_parts(events: pa.Table, folder, rows_per_part: int) -> None:
    """Entity-hash part files in arrival (here: random) order, as the ingest stage writes."""
    from pipelines.ingest import write_events

    order = np.random.default_rng(1).permutation(events.num_rows)
    write_events(events.take(pa.array(order)), folder, rows_per_part, "account_id")


# input, score_dataset options, the plan that must run, its tasks and events read per event
CASES = {
    # One file grouped by entity, one row group: two ranges, each reading the row group.
    "validated-ranges": ("validated", {"rows_per_block": 2000}, "files", 2, 2),
    # Three entity-hash parts on two slots: two hash shares of each part.
    "parts-shares": ("parts", {"rows_per_block": 2000}, "files", 6, 2),
    # The same parts below rows_per_block: packed whole into one unit per slot.
    "parts-packed": ("parts", {"rows_per_block": 10**6}, "files", 2, 1),
    "shuffled": ("shuffled", {"rows_per_block": 2000}, "shuffle", None, 1),
    "local": ("validated", {"local_max_rows": 10**9}, "local", 1, 1),
}


def test_batch_scores_equal_online_scores(ray_cluster, registry, tmp_path):
    from serving.batch import score_dataset

    events = pq.read_table(registry["events"])
    expected = registry["scorer"].score(events).set_index("entity")
    inputs = {
        "validated": registry["events"],
        "shuffled": tmp_path / "shuffled",
        "parts": tmp_path / "parts",
    }
    _shuffled_parts(events, inputs["shuffled"])
    _entity_parts(events, inputs["parts"], rows_per_part=-(-events.num_rows // 3))
    assert len(list(inputs["parts"].iterdir())) == 3

    for label, (name, options, plan, tasks, reads) in CASES.items():
        out = tmp_path / f"scores-{label}"
        summary = score_dataset(
            inputs[name], out, MODEL, alias="champion", tracking_uri=registry["uri"],
            **{"local_max_rows": 0, **options},
        )  # fmt: skip
        assert summary["plan"] == plan, label
        if plan != "local":  # the test must exercise several scoring tasks
            assert summary["blocks"] > 1, label
        assert summary["blocks"] == (tasks or summary["blocks"]), label
        assert summary["rows_read"] == reads * events.num_rows, label
        scores = pads.dataset(out, format="parquet").to_table()
        entities = scores["entity"].to_pylist()
        assert len(entities) == len(set(entities)) == len(expected), label  # each exactly once
        assert set(entities) == set(expected.index), label
        assert summary["entities"] == len(expected)
        assert summary["events"] == events.num_rows

        got = scores.to_pandas().set_index("entity").loc[expected.index]
        np.testing.assert_allclose(got["score"], expected["score"], rtol=0, atol=1e-5)
        # map<string, double> reads back as (class, probability) pairs, in class order
        probs = np.stack([[p for _, p in pairs] for pairs in got["probabilities"]])
        wanted = np.stack([list(named.values()) for named in expected["probabilities"]])
        np.testing.assert_allclose(probs, wanted, rtol=0, atol=1e-5)
        assert (got["predicted"] == expected["predicted"]).all(), label
        assert (got["n_events"] == expected["n_events"]).all(), label
        assert (got["window_end"] == expected["window_end"]).all(), label

        assert scores.schema.field("probabilities").type == pa.map_(pa.string(), pa.float64())
        assert set(pc.unique(scores["model_name"]).to_pylist()) == {MODEL}
        assert set(pc.unique(scores["model_version"]).to_pylist()) == {registry["version"]}
        assert set(pc.unique(scores["run_id"]).to_pylist()) == {registry["run_id"]}
        content_hash = registry["scorer"].manifest.content_hash
        assert set(pc.unique(scores["data_hash"]).to_pylist()) == {content_hash}
        assert scores["scored_at"].null_count == 0
        assert scores["contract_error"].null_count == scores.num_rows  # clean data: all scored
        assert summary["model_version"] == registry["version"]
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert leftovers == [], "temporary folders left beside the output"


@pytest.mark.parametrize("plan", ["local", "files"])
def test_entities_the_data_contract_refuses_are_listed_not_scored(
    ray_cluster, registry, tmp_path, plan
):
    """The rules /v1/score applies hold in batch too: an entity with one event out of range,
    one dated in the far future and one with a negative sequence number each get a row with
    ``contract_error`` and no score; every other entity scores as before."""
    from serving.batch import score_dataset

    events = pq.read_table(registry["events"])
    accounts = pc.unique(events["account_id"]).to_pylist()
    bad = {accounts[0]: "amount", accounts[1]: "event_time", accounts[2]: "seq_no"}
    columns = {name: events[name].to_pylist() for name in ("account_id", "amount", "event_time", "seq_no")}  # fmt: skip
    for column in ("amount", "event_time", "seq_no"):
        row = columns["account_id"].index(next(a for a, c in bad.items() if c == column))
        columns[column][row] = {
            "amount": 1e308,
            "event_time": columns["event_time"][row].replace(year=9999),
            "seq_no": -5,
        }[column]
    for column in ("amount", "event_time", "seq_no"):
        index = events.schema.get_field_index(column)
        events = events.set_column(index, column, pa.array(columns[column], events[column].type))
    source = tmp_path / "events.parquet"
    pq.write_table(events, source)
    out = tmp_path / "scores"
    options = {"local_max_rows": 10**9} if plan == "local" else {"local_max_rows": 0}
    summary = score_dataset(source, out, MODEL, alias="champion",
                            tracking_uri=registry["uri"], **options)  # fmt: skip
    assert summary["plan"] == plan
    scores = pads.dataset(out, format="parquet").to_table().to_pandas().set_index("entity")
    assert len(scores) == len(accounts)  # every entity once, refused ones included
    refused = scores[scores["contract_error"].notna()]
    assert sorted(refused.index) == sorted(bad)
    for entity, column in bad.items():
        why = refused.loc[entity, "contract_error"]
        rule = {
            "amount": "value_ranges",
            "event_time": "future_timestamps",
            "seq_no": "seq_negative",
        }
        assert why.startswith(rule[column]), why
        assert np.isnan(refused.loc[entity, "score"])
        assert refused.loc[entity, "n_events"] == columns["account_id"].count(entity)
    clean = events.filter(pc.invert(pc.is_in(events["account_id"], pa.array(list(bad)))))
    expected = registry["scorer"].score(clean).set_index("entity")
    got = scores.loc[expected.index]
    np.testing.assert_allclose(got["score"], expected["score"], rtol=0, atol=1e-5)


def test_files_plan_refuses_entities_spanning_files(registry, tmp_path):
    from serving.batch import score_dataset

    _shuffled_parts(pq.read_table(registry["events"]), tmp_path / "shuffled")
    out = tmp_path / "scores"
    with pytest.raises(ValueError, match="entities of .* span files; use plan='shuffle'"):
        score_dataset(
            tmp_path / "shuffled", out, MODEL, alias="champion", tracking_uri=registry["uri"],
            plan="files",
        )  # fmt: skip
    assert not out.exists()


def _units_cover(files: list, rows_per_block: int, slots: int) -> list:
    """plan_units over ``files``; asserts every event is in one unit and no entity is split."""
    from serving.batch_plan import plan_units, read_unit, scan_file, spanning_entities

    facts = [scan_file(str(f), "account_id") for f in files]
    assert spanning_entities(facts) == 0
    units = plan_units(facts, slots, rows_per_block)
    tables = [read_unit(u, ["account_id", "seq_no"], "account_id") for u in units]
    assert sum(t.num_rows for t in tables) == sum(f.rows for f in facts)  # each event once
    owner: dict = {}
    for i, table in enumerate(tables):
        for key in pc.unique(table["account_id"]).to_pylist():
            assert owner.setdefault(key, i) == i, f"entity {key} split between units"
    assert len(owner) == sum(len(f.entities) for f in facts)
    return units


def test_plan_units_never_split_an_entity(registry, tmp_path):
    events = pq.read_table(registry["events"])
    rows = events.num_rows

    # One file grouped by entity, small row groups: ranges cut at entity boundaries.
    grouped = tmp_path / "grouped.parquet"
    pq.write_table(events, grouped, row_group_size=-(-rows // 6))
    units = _units_cover([grouped], rows_per_block=-(-rows // 3), slots=2)
    assert len(units) == 3 and all(u.shares == 1 for u in units)
    assert all(len(u.pieces) == 1 and u.pieces[0].stop - u.pieces[0].start < rows for u in units)
    # Ranges are not cut below a row group's size unless the slots would idle.
    assert len(_units_cover([grouped], rows_per_block=100, slots=2)) == 6
    pq.write_table(events, grouped)  # one row group
    assert len(_units_cover([grouped], rows_per_block=100, slots=2)) == 2

    # Entity-hash parts in arrival order: hash shares of whole files, only as many as needed.
    _entity_parts(events, tmp_path / "parts4", rows_per_part=-(-rows // 4))
    parts = sorted((tmp_path / "parts4").iterdir())
    assert len(parts) == 4
    assert all(u.shares == 1 for u in _units_cover(parts, rows_per_block=100, slots=2))
    _entity_parts(events, tmp_path / "parts3", rows_per_part=-(-rows // 3))
    shared = _units_cover(sorted((tmp_path / "parts3").iterdir()), rows_per_block=100, slots=2)
    assert len(shared) == 6 and all(u.shares == 2 for u in shared)
    # Small files are packed whole into bins.
    packed = _units_cover(parts, rows_per_block=10**6, slots=2)
    assert len(packed) == 2 and sorted(len(u.pieces) for u in packed) == [2, 2]


def test_missing_alias_fails_clearly(registry, tmp_path):
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


def test_cli_scores_and_reports_the_plan(registry, tmp_path):
    out = tmp_path / "scores"
    cli = subprocess.run(
        [sys.executable, "-m", "serving.batch", "--events", str(registry["events"]),
         "--out", str(out), "--model-name", MODEL, "--plan", "local",
         "--tracking-uri", registry["uri"]],
        cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    summary = json.loads(cli.stdout.strip().splitlines()[-1])
    assert summary["plan"] == "local" and summary["alias"] == "champion"
    scores = pads.dataset(out, format="parquet").to_table()
    assert scores.num_rows == summary["entities"] == len(registry["scorer"].score(
        pq.read_table(registry["events"])))  # fmt: skip


def _corrupt_page(path, column: str) -> None:
    """Overwrite the first page header of ``column`` in row group 0: reading it fails."""
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().get_field_index(column))
    with open(path, "r+b") as handle:
        handle.seek(chunk.dictionary_page_offset or chunk.data_page_offset)
        handle.write(b"\xff" * 16)


def test_failed_run_keeps_previous_output(ray_cluster, registry, tmp_path):
    from serving.batch import score_dataset

    out = tmp_path / "scores"
    out.mkdir()
    (out / "previous.parquet").write_bytes(b"previous run")

    with pytest.raises(FileNotFoundError, match="no-such-events"):
        score_dataset(
            tmp_path / "no-such-events.parquet", out, MODEL, alias="champion",
            tracking_uri=registry["uri"],
        )  # fmt: skip

    # Files whose event-time types differ: refused before any scoring, naming the file.
    bad = tmp_path / "bad-events"
    _shuffled_parts(pq.read_table(registry["events"]), bad, parts=2)
    part = pq.read_table(bad / "part-1.parquet")
    time_col = registry["scorer"].schema.time
    index = part.schema.get_field_index(time_col)
    as_text = pc.cast(pc.cast(part.column(index), pa.int64()), pa.string())
    pq.write_table(part.set_column(index, time_col, as_text), bad / "part-1.parquet")
    with pytest.raises(ValueError, match=rf"part-1.parquet: column {time_col} is string"):
        score_dataset(
            bad, out, MODEL, alias="champion", tracking_uri=registry["uri"], rows_per_block=2000
        )

    # A failure inside the Ray tasks: a data page that cannot be read (the footer and the
    # entity column are intact, so planning succeeds), for both Ray plans.
    events = pq.read_table(registry["events"])
    _entity_parts(events, tmp_path / "corrupt-parts", rows_per_part=3000)
    _shuffled_parts(events, tmp_path / "corrupt-shuffled")
    for plan in ("files", "shuffle"):
        folder = tmp_path / ("corrupt-parts" if plan == "files" else "corrupt-shuffled")
        _corrupt_page(sorted(folder.iterdir())[-1], "amount")
        with pytest.raises(Exception, match="deserialize|page header"):
            score_dataset(
                folder, out, MODEL, alias="champion", tracking_uri=registry["uri"],
                rows_per_block=2000, local_max_rows=0, plan=plan,
            )  # fmt: skip

    assert [p.name for p in out.iterdir()] == ["previous.parquet"]
    assert (out / "previous.parquet").read_bytes() == b"previous run"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "temporary folders left beside the output"
