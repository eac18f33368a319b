"""Sequence profiles (``seqcore.profile``) and drift against them (``data_checks.drift``,
``seqops monitor``).

Planted drifts on generated data, each caught by its own statistic: sequences twice as long,
a new category on 10% of events, gaps ten times longer, events' values shuffled within each
sequence (same shares, another order: transitions), rows shuffled within each sequence (the
arrival order). A fresh sample of the reference's own distribution raises no alarm: 20
generated worlds, each split into a reference and a fresh sample of other entities.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from data_checks.drift import DriftThresholds, compare
from pipelines.config import params_from_dict
from pipelines.generate import generate_events
from pipelines.monitor import main as monitor
from pipelines.monitor import profile_batch
from seqcore.config import ConfigError
from seqcore.encoding import encode
from seqcore.features import FeatureConfig, fit_features
from seqcore.profile import Hist, Profile, profile_sequences, table_arrival, transition_column

pytestmark = pytest.mark.filterwarnings(
    "ignore:Series.values returning:DeprecationWarning", "ignore:Series.values returning"
)
SCHEMA = params_from_dict({}).data.schema
THRESHOLDS = DriftThresholds()


def _sorted(table: pa.Table) -> pa.Table:
    keys = [(SCHEMA.entity, "ascending"), (SCHEMA.time, "ascending"), (SCHEMA.seq, "ascending")]
    return table.take(pc.sort_indices(table, sort_keys=keys))


def _profile(table: pa.Table, spec) -> Profile:
    profile = profile_sequences(encode(table, spec, SCHEMA), spec, transition_column(SCHEMA))
    profile.order = table_arrival(table, SCHEMA)
    return profile


def _world(seed: int, n_entities: int = 1500, fresh: int = 400):
    """A generated table split by entity: (reference rows, fresh rows, features fitted on the
    reference)."""
    cfg = params_from_dict({"data": {"generate": {"n_entities": n_entities}}}).data.generate
    table = generate_events(cfg, seed)
    keys = pc.unique(table.column(SCHEMA.entity))
    chosen = np.random.default_rng(seed).choice(len(keys), fresh, replace=False)
    is_fresh = pc.is_in(table.column(SCHEMA.entity), value_set=keys.take(pa.array(chosen)))
    reference, current = table.filter(pc.invert(is_fresh)), table.filter(is_fresh)
    spec = fit_features(_sorted(reference), SCHEMA, FeatureConfig({"amount": "log1p"}))
    return reference, current, spec


@pytest.fixture(scope="module")
def world():
    reference, current, spec = _world(11)
    return _profile(reference, spec), current, spec


def _drifted(world, table: pa.Table) -> set[str]:
    reference, _, spec = world
    return {s.name for s in compare(reference, _profile(table, spec), THRESHOLDS) if s.drifted}


def _frame(table: pa.Table) -> pd.DataFrame:
    return _sorted(table).to_pandas()


def doubled(table: pa.Table) -> pa.Table:
    """Every sequence followed by a copy of itself an hour after its end."""
    df = _frame(table)
    by = df.groupby(SCHEMA.entity)
    copy = df.copy()
    copy[SCHEMA.time] += by[SCHEMA.time].transform(lambda t: t.max() - t.min()) + pd.Timedelta("1h")
    copy[SCHEMA.seq] += by[SCHEMA.seq].transform("count")
    both = pd.concat([df, copy]).sort_values([SCHEMA.entity, SCHEMA.time, SCHEMA.seq])
    return pa.Table.from_pandas(both, preserve_index=False)


def new_category(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    mcc = np.asarray(table.column("mcc").to_pylist(), dtype=object)
    mcc[rng.random(len(mcc)) < 0.1] = "9999"
    return table.set_column(table.column_names.index("mcc"), "mcc", pa.array(mcc.tolist()))


def slower(table: pa.Table) -> pa.Table:
    """Gaps ten times longer: each sequence stretched from its first event."""
    df = _frame(table)
    start = df.groupby(SCHEMA.entity)[SCHEMA.time].transform("min")
    df[SCHEMA.time] = start + (df[SCHEMA.time] - start) * 10
    return pa.Table.from_pandas(df, preserve_index=False)


def _within(df: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [rng.permutation(rows) for rows in df.groupby(SCHEMA.entity).indices.values()]
    )


def values_shuffled(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Same times, same values per sequence, in another order."""
    df = _frame(table)
    values = [c for c in df.columns if c not in (SCHEMA.entity, SCHEMA.time, SCHEMA.seq)]
    rows = np.concatenate(list(df.groupby(SCHEMA.entity).indices.values()))
    df.loc[rows, values] = df.loc[_within(df, rng), values].to_numpy()
    return pa.Table.from_pandas(df, preserve_index=False)


def rows_shuffled(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """Same events, arriving in another order within each sequence."""
    df = _frame(table)
    return pa.Table.from_pandas(df.iloc[_within(df, rng)], preserve_index=False)


@pytest.mark.parametrize(
    ("plant", "statistic"),
    [
        (lambda t, rng: doubled(t), "length"),
        (new_category, "categorical.mcc"),
        (lambda t, rng: slower(t), "gap"),
        (values_shuffled, "transitions.mcc"),
        (rows_shuffled, "order"),
    ],
    ids=["lengths-doubled", "new-category", "gaps-x10", "order-of-values", "arrival-order"],
)
def test_each_planted_drift_is_caught_by_its_own_statistic(world, plant, statistic):
    _, current, _ = world
    assert statistic in _drifted(world, plant(current, np.random.default_rng(5)))


def test_shuffled_values_keep_every_share_and_change_only_the_order(world):
    """The case tabular drift tools miss: no categorical share moves."""
    drifted = _drifted(world, values_shuffled(world[1], np.random.default_rng(5)))
    assert drifted == {"transitions.mcc"}


@pytest.mark.slow
def test_fresh_samples_of_the_reference_raise_at_most_one_alarm_in_twenty():
    alarms = {}
    for seed in range(20):
        reference, current, spec = _world(100 + seed)
        found = compare(_profile(reference, spec), _profile(current, spec), THRESHOLDS)
        if any(s.drifted for s in found):
            alarms[seed] = [s.to_dict() for s in found if s.drifted]
    assert len(alarms) <= 1, alarms


def test_a_batch_too_small_is_reported_and_never_flagged(world):
    reference, current, spec = world
    few = current.filter(pc.is_in(current.column(SCHEMA.entity),
                                  value_set=pc.unique(current.column(SCHEMA.entity))[:10]))  # fmt: skip
    found = compare(reference, _profile(doubled(few), spec), THRESHOLDS)
    assert not any(s.drifted for s in found)
    assert next(s for s in found if s.name == "length").distance > THRESHOLDS.max_distance


def test_profiles_of_parts_add_up_to_the_profile_of_the_whole(world):
    _, current, spec = world
    keys = pc.unique(current.column(SCHEMA.entity))
    half = pc.is_in(current.column(SCHEMA.entity), value_set=keys[: len(keys) // 2])
    a, b = current.filter(half), current.filter(pc.invert(half))
    assert _profile(a, spec).merge(_profile(b, spec)).to_dict() == _profile(current, spec).to_dict()
    round_trip = Profile.from_dict(json.loads(json.dumps(_profile(a, spec).to_dict())))
    assert round_trip.to_dict() == _profile(a, spec).to_dict()


def test_the_design_effect_counts_sequences_whose_events_are_alike_about_once():
    sizes = np.full(200, 25)
    sequence = np.repeat(np.arange(200), sizes)
    rng = np.random.default_rng(0)
    alike = np.repeat(rng.integers(0, 4, 200), sizes)  # one value per sequence
    varied = rng.integers(0, 4, len(sequence))  # independent events
    assert Hist.of(sequence, alike, 4).design_effect() == pytest.approx(25, rel=0.1)
    assert Hist.of(sequence, varied, 4).design_effect() == pytest.approx(1, abs=0.3)


def test_a_table_unlike_the_generator_profiles_and_drifts(tmp_path):
    """Integer keys, no categorical columns, no sequence numbers: no transitions, no
    categorical statistics; lengths still drift."""
    from seqcore.schema import SchemaConfig

    schema = SchemaConfig(entity="unit", time="ts", seq=None, numeric=("x",), categorical=(),
                          label=None, next_event=None, forecast="x")  # fmt: skip
    rng = np.random.default_rng(1)

    def table(n_units: int, length: int) -> pa.Table:
        unit = np.repeat(np.arange(n_units), length)
        ts = np.tile(np.arange(length), n_units) * 60_000_000 + 1_700_000_000_000_000
        return pa.table({"unit": unit, "ts": pa.array(ts, pa.timestamp("us", "UTC")),
                         "x": rng.normal(size=len(unit))})  # fmt: skip

    reference = table(300, 5)
    spec = fit_features(reference, schema, FeatureConfig())
    assert transition_column(schema) is None

    def profile(t: pa.Table) -> Profile:
        return profile_sequences(encode(t, spec, schema), spec, transition_column(schema))

    base = profile(reference)
    assert base.transitions is None and base.categorical == {}
    same = compare(base, profile(table(200, 5)), THRESHOLDS)
    assert not any(s.drifted for s in same)
    longer = compare(base, profile(table(200, 10)), THRESHOLDS)
    assert {s.name for s in longer if s.drifted} == {"length"}


def test_thresholds_are_checked_with_the_params():
    with pytest.raises(ConfigError, match="monitor.max_distance"):
        params_from_dict({"monitor": {"max_distance": 1.5}})


# ----------------------------------------------------------------------- seqops monitor


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A small pipeline's shards (their manifest holds the training profile) and events."""
    from pipelines import ingest, shard, validate

    root = tmp_path_factory.mktemp("monitor")
    raw = {
        "seed": 3,
        "data": {"engine": "local", "generate": {"n_entities": 800}},
        "validate": {"now": "2026-06-01T00:00:00Z"},
        "shard": {"buckets": {"n_buckets": 4}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    params = params_from_dict(raw)
    ingest.run(params, root / "data" / "events")
    validate.run(params, root / "data" / "events", root / "data" / "validated",
                 root / "q.parquet", root / "v.json", root / "docs")  # fmt: skip
    shard.run(params, root / "data" / "validated", root / "data" / "shards", root / "v.json")
    return root


def _monitor(root, events, capsys) -> tuple[int, str]:
    code = monitor([
        "--events", str(events), "--shards", str(root / "data" / "shards"),
        "--params", str(root / "params.yaml"), "--report", str(root / "drift.json"),
        "--html", str(root / "drift.html"),
    ])  # fmt: skip
    return code, capsys.readouterr().out


def test_monitor_passes_the_training_events_and_fails_a_drifted_batch(shards, capsys):
    code, out = _monitor(shards, shards / "data" / "events", capsys)
    assert code == 0, out
    report = json.loads((shards / "drift.json").read_text())
    assert report["passed"] and report["decides"] and report["reference"]["sequences"] > 0
    assert "<table>" in (shards / "drift.html").read_text()

    from seqcore.store import read_events

    events = read_events(shards / "data" / "events").drop_columns(["_arrival"])
    pq.write_table(new_category(events, np.random.default_rng(2)), shards / "new.parquet")
    code, out = _monitor(shards, shards / "new.parquet", capsys)
    assert code == 1, out
    report = json.loads((shards / "drift.json").read_text())
    assert "categorical.mcc" in report["drifted"] and not report["passed"]
    stat = next(s for s in report["statistics"] if s["name"] == "categorical.mcc")
    assert stat["current"]["oov_share"] == pytest.approx(0.1, abs=0.02)
    assert "DRIFT" in (shards / "drift.html").read_text()


def test_ordering_violations_are_compared_with_the_validate_stages_rates(shards, capsys):
    """The training profile carries the validate stage's rate per ordering check (none
    here); a batch where 5% of events arrive twice, sorted in among the rest, shows it."""
    from seqcore.manifest import load_manifest
    from seqcore.store import read_events

    reference = load_manifest(shards / "data" / "shards").profile
    assert {"duplicates", "time_order", "seq_gaps"} <= set(reference.contract)
    report = json.loads((shards / "v.json").read_text())
    assert all(h.total == report["rows_in"] for h in reference.contract.values())

    events = read_events(shards / "data" / "events").drop_columns(["_arrival"])
    again = events.take(
        pa.array(np.flatnonzero(np.random.default_rng(4).random(len(events)) < 0.05))
    )
    pq.write_table(_sorted(pa.concat_tables([events, again])), shards / "twice.parquet")
    code, out = _monitor(shards, shards / "twice.parquet", capsys)
    result = json.loads((shards / "drift.json").read_text())
    assert code == 1 and "contract.duplicates" in result["drifted"], out
    stat = next(s for s in result["statistics"] if s["name"] == "contract.duplicates")
    assert stat["current"]["violating_share"] == pytest.approx(0.05, abs=0.02)
    assert stat["reference"]["violating_share"] == 0.0
    # sorted in: nothing arrived out of order; a duplicate's gap to its twin is 0 s
    assert not {"length", "order"} & set(result["drifted"]) and "gap" in result["drifted"]


def test_monitor_refuses_what_it_cannot_read_with_exit_2(shards, capsys):
    code = monitor(["--events", str(shards / "missing.parquet"), "--shards",
                    str(shards / "data" / "shards"), "--params", str(shards / "params.yaml"),
                    "--report", str(shards / "x.json"), "--html", str(shards / "x.html")])  # fmt: skip
    assert code == 2
    assert "missing.parquet" in capsys.readouterr().err
    assert not (shards / "x.json").exists()


def test_profile_batch_reads_the_arrival_order_of_rows(shards):
    from seqcore.manifest import load_manifest
    from seqcore.store import read_events

    manifest = load_manifest(shards / "data" / "shards")
    events = read_events(shards / "data" / "events")
    ordered = profile_batch(events, manifest)
    shuffled = profile_batch(rows_shuffled(events, np.random.default_rng(1)), manifest)
    assert ordered.order.counts[1] == 0
    assert shuffled.order.counts[1] > 0.3 * shuffled.order.total


def test_a_batch_of_single_events_reports_without_gaps(world):
    """No sequence with two events: no gap, no transition; the report is still JSON."""
    reference, current, spec = world
    first = _sorted(current)
    starts = pc.is_in(pc.cast(pa.array(range(first.num_rows)), pa.int64()),
                      value_set=pa.array(_starts(first)))  # fmt: skip
    found = compare(reference, _profile(first.filter(starts), spec), THRESHOLDS)
    gap = next(s for s in found if s.name == "gap")
    assert gap.count == 0 and gap.current == {"median_bin": None} and gap.psi is None
    json.dumps([s.to_dict() for s in found], allow_nan=False)


def _starts(table: pa.Table) -> list[int]:
    keys = table.column(SCHEMA.entity).to_numpy(zero_copy_only=False)
    return [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist()]


def test_a_profile_over_other_bins_is_refused_naming_the_fix(world):
    from seqcore.manifest import ManifestError, _profile

    raw = world[0].to_dict()
    raw["bins"] = {**raw["bins"], "category_top": 32}
    with pytest.raises(ManifestError, match="rebuild the shards"):
        _profile(raw, "manifest.profile")


def test_monitor_reads_new_traffic_without_labels(shards, capsys):
    from seqcore.store import read_events

    events = read_events(shards / "data" / "events").drop_columns(["_arrival", "label"])
    pq.write_table(events, shards / "unlabelled.parquet")
    code, out = _monitor(shards, shards / "unlabelled.parquet", capsys)
    assert code == 0, out


def test_monitor_checks_where_it_writes_before_reading(shards, capsys):
    (shards / "a-folder").mkdir(exist_ok=True)
    code = monitor(["--events", str(shards / "data" / "events"), "--shards",
                    str(shards / "data" / "shards"), "--params", str(shards / "params.yaml"),
                    "--report", str(shards / "a-folder"), "--html", str(shards / "x.html")])  # fmt: skip
    assert code == 2
    assert "is a folder" in capsys.readouterr().err
