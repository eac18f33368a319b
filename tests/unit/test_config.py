"""params.yaml parsing: the repository's file is valid; bad values name their key; the JSON
Schema that editors read is current and agrees with the loader."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from data_checks.config import CHECK_NAMES
from pipelines.config import params_from_dict, params_schema
from pipelines.params.schema import schema_text
from pipelines.params.train import TrainConfig
from seqcore.config import ConfigError, parse_duration
from seqmodels import ModelSpec


def test_repository_params_are_valid(default_params):
    assert default_params.data.source == "generate"
    assert set(default_params.validate.checks) == set(CHECK_NAMES)
    assert default_params.validate.checks["late_events"].allowed_lateness == 86400
    assert default_params.validate.checks["future_timestamps"].max_ahead == 300
    assert default_params.shard.window.window_len == 256
    assert isinstance(default_params.train.model, ModelSpec)
    assert default_params.train.model.architecture == "lstm"
    assert default_params.register.versions == "passed"  # rejected candidates stay in their run


def test_model_defaults_are_written_once():
    """params.yaml spells out the model's defaults; code and file must not drift apart again."""
    assert TrainConfig().model == ModelSpec()
    assert params_from_dict({}).train.model == ModelSpec()


def test_repository_params_spell_out_the_model_defaults(default_params):
    assert default_params.train.model == ModelSpec()


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"data": {"source": "ftp"}}, "data.source"),
        ({"data": {"colour": 1}}, "data: unknown key"),
        ({"data": {"schema": {"next_event": "nope"}}}, "data.schema.next_event"),
        (
            {"validate": {"checks": {"schema": {"policy": "quarantine"}}}},
            "validate.checks.schema.policy",
        ),
        (
            {"validate": {"checks": {"late_events": {"allowed_lateness": "soon"}}}},
            "allowed_lateness",
        ),
        ({"validate": {"checks": {"nonsense": {}}}}, "unknown check"),
        ({"shard": {"split": {"fractions": [0.5, 0.6, 0.1]}}}, "shard.split.fractions"),
        ({"shard": {"window": {"policy": "random"}}}, "shard.window.policy"),
        ({"shard": {"buckets": {"boundaries": [32, 16]}}}, "shard.buckets.boundaries"),
        ({"shard": {"split": {"method": "time", "train_end": "2025-02-01"}}}, "both cutoffs"),
        ({"seed": "seven"}, "seed"),
        ({"train": {"task": "regress"}}, "train.task"),
        ({"train": {"use_gpu": "maybe"}}, "train.use_gpu"),
        ({"register": {"versions": "rejected"}}, r"register\.versions='rejected': expected all or"),
        ({"train": {"model": "lstm"}}, "train.model"),
        ({"train": {"model": {"architecture": "rnn"}}}, "train.model.architecture"),
        ({"train": {"model": {"colour": 1}}}, "train.model: unknown key"),
        ({"train": {"model": {"dropout": 1.0}}}, "train.model.dropout"),
        (
            {"train": {"model": {"architecture": "transformer", "num_heads": 3}}},
            "train.model.num_heads",
        ),
        (
            {
                "train": {
                    "task": "forecast",
                    "model": {"architecture": "transformer", "causal": False},
                }
            },
            "train.model.causal",
        ),
    ],
)
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        params_from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": {"hidden_size": 0}}, "params: train.model.hidden_size=0: must be >= 1"),
        (
            {"model": {"num_layers": True}},
            "params: train.model.num_layers=True: expected an integer",
        ),
        (
            {"architecture": "gru"},
            "params: train: unknown key(s) architecture; moved to train.model.architecture",
        ),
        (
            {"hidden_size": 8, "ffn_size": 16},
            "unknown key(s) hidden_size, ffn_size; moved to train.model.hidden_size, "
            "train.model.ffn_size",
        ),
        (
            {"model": {"task": "forecast"}},
            "params: train.model: unknown key task; the task is train.task",
        ),
    ],
)
def test_model_keys_are_named_under_train_model(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        params_from_dict({"train": raw})


def test_model_section_overrides_only_what_it_names():
    params = params_from_dict({"train": {"model": {"architecture": "gru", "hidden_size": 32}}})
    assert params.train.model == ModelSpec(architecture="gru", hidden_size=32)
    changed = params.train.with_model(architecture="transformer")
    assert changed.model.hidden_size == 32 and changed.model.resolved_pooling == "mean"


def test_durations():
    assert parse_duration("k", "90s") == 90
    assert parse_duration("k", "1.5h") == 5400
    assert parse_duration("k", 12) == 12
    with pytest.raises(ConfigError):
        parse_duration("k", "-1d")


# --------------------------------------------------------------------------- JSON Schema


@pytest.fixture(scope="module")
def committed_schema(repo_root):
    return json.loads((repo_root / "params.schema.json").read_text())


@pytest.fixture(scope="module")
def validator(committed_schema):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(committed_schema)
    return jsonschema.Draft202012Validator(committed_schema)


def test_committed_schema_is_the_generated_one(repo_root):
    committed = (repo_root / "params.schema.json").read_text()
    assert committed == schema_text(params_schema()), (
        "params.schema.json is stale: python -m pipelines.config --schema > params.schema.json"
    )


def test_params_yaml_names_its_schema_and_validates(repo_root, validator):
    text = (repo_root / "params.yaml").read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=params.schema.json"
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(yaml.safe_load(text))]
    assert errors == []


@pytest.mark.parametrize(
    ("doc", "valid"),
    [
        ({"validate": {"checks": {"future_timestamps": {"max_ahead": "5m"}}}}, True),
        ({"validate": {"checks": {"future_timestamps": {"max_ahead": 300}}}}, True),
        ({"validate": {"checks": {"future_timestamps": {"max_ahead": "soon"}}}}, False),
        ({"validate": {"checks": {"late_events": {"allowed_lateness": "1.5h"}}}}, True),
        ({"validate": {"checks": {"nonsense": {}}}}, False),
        ({"validate": {"checks": {"schema": {"policy": "ignore"}}}}, False),
        ({"validate": {"now": "2025-03-01T00:00:00Z"}}, True),
        ({"shard": {"split": {"train_end": "2025-02-01", "val_end": "2025-03-01"}}}, True),
        ({"data": {"generate": {"start": "tomorrow"}}}, False),
        ({"train": {"model": {"architecture": "gru", "pooling": "mean"}}}, True),
        ({"train": {"model": {"architecture": "rnn"}}}, False),
        ({"train": {"model": {"hidden_size": "wide"}}}, False),
        ({"train": {"architecture": "lstm"}}, False),  # the old flat key
        ({"shard": {"window": {"policy": "random"}}}, False),
        ({"shard": {"features": {"numeric_transform": {"amount": "sqrt"}}}}, False),
        ({"register": {"versions": "all"}}, True),
        ({"register": {"versions": "some"}}, False),
    ],
)
def test_schema_agrees_with_the_loader(validator, doc, valid):
    """What the schema accepts, load_params accepts; what it flags, the loader refuses."""
    assert validator.is_valid(doc) == valid
    if valid:
        params_from_dict(doc)
    else:
        with pytest.raises(ConfigError):
            params_from_dict(doc)


NUMERIC_ONLY = {"entity": "id", "time": "t", "seq": None, "numeric": ["x", "y"],
                "categorical": [], "label": "cls", "next_event": None, "forecast": "x"}  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"data": {"schema": {**NUMERIC_ONLY, "label": None}}},
            r"train\.task='classify': needs data\.schema\.label .*not set; map it in "
            r"data\.schema; or a task whose target is mapped: forecast",
        ),
        (
            {
                "data": {"schema": NUMERIC_ONLY},
                "train": {"task": "next_event"},
                "evaluate": {"slices": []},
            },  # fmt: skip
            r"train\.task='next_event': needs data\.schema\.next_event",
        ),
        (
            {"data": {"schema": {**NUMERIC_ONLY, "forecast": None}}, "train": {"task": "forecast"}},
            r"train\.task='forecast': needs data\.schema\.forecast",
        ),
        (
            {"data": {"schema": NUMERIC_ONLY}},  # the default evaluate.slices is [channel]
            r"evaluate\.slices=\['channel'\]: 'channel' not in data\.schema\.categorical \(none\)"
            r".*evaluate\.slices: \[\]",
        ),
        (
            {"train": {"num_workers": 4}},
            r"train\.num_workers=4: exceeds shard\.max_workers=2.*raise shard\.max_workers",
        ),
    ],
)
def test_settings_that_must_agree_across_sections_fail_at_load(raw, message):
    """A mismatch between sections stops the pipeline before ingest, naming the key and the
    fix, instead of failing after training (a numeric-only schema kept evaluate's default
    slice by `channel`)."""
    with pytest.raises(ConfigError, match=message):
        params_from_dict(raw)


def test_a_numeric_only_schema_loads_when_the_sections_agree():
    data = {"source": "file", "path": "events.parquet", "schema": NUMERIC_ONLY}
    params = params_from_dict({"data": data, "evaluate": {"slices": []}})
    assert params.data.schema.categorical == () and params.train.task == "classify"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"numeric": ["value"], "forecast": None},
            r"data\.schema\.numeric=\['value'\]: no column 'value': data\.source: generate "
            r"produces the columns account_id, event_time, seq_no, amount, mcc, channel, "
            r"country, device, label",
        ),
        (
            {"categorical": ["mcc", "channel", "page"]},
            r"data\.schema\.categorical=\['mcc', 'channel', 'page'\]: no column 'page'.*set "
            r"data\.source: file",
        ),
        (
            {"numeric": ["amount", "mcc"], "categorical": ["channel"], "next_event": "channel"},
            r"data\.schema\.numeric=\['amount', 'mcc'\]: 'mcc' is categorical there",
        ),
        (
            {"arrival": "ingested_at"},
            r"data\.schema\.arrival='ingested_at': .*no arrival column: generated rows are "
            r"produced in arrival order; set data\.schema\.arrival: null",
        ),
        (
            {"entity": "device", "categorical": ["mcc", "channel", "country"]},
            r"data\.schema\.entity='device': 'device' is a feature column of generated data",
        ),
    ],
)
def test_a_generated_source_refuses_columns_the_generator_does_not_produce(schema, message):
    """The generator names entity, time, seq and label as the schema says but emits fixed
    features: a schema mapping anything else fails when params load, not in a later stage."""
    with pytest.raises(ConfigError, match=message):
        params_from_dict({"data": {"schema": schema}})


def test_the_same_schema_loads_for_a_users_file():
    schema = {**NUMERIC_ONLY, "arrival": "ingested_at"}
    raw = {"data": {"source": "file", "path": "events.csv", "schema": schema}}
    params = params_from_dict({**raw, "evaluate": {"slices": []}})
    assert params.data.schema.arrival == "ingested_at"
    assert "ingested_at" not in params.data.schema.event_columns
    assert "ingested_at" not in params.data.schema.required_columns
    assert params.data.schema.source_columns[-1] == "ingested_at"


@pytest.mark.parametrize("column", ["event_time", "seq_no", "mcc", "label"])
def test_the_arrival_column_is_a_column_of_its_own(column):
    raw = {"data": {"source": "file", "path": "x.csv", "schema": {"arrival": column}}}
    with pytest.raises(ConfigError, match=r"data\.schema\.arrival=.*is already mapped as"):
        params_from_dict(raw)


def test_the_generators_columns_are_the_ones_the_config_check_names():
    from pipelines.generate import generate_events, generated_columns, role_names
    from pipelines.params.data import GenerateConfig
    from seqcore.schema import SchemaConfig

    schema = SchemaConfig(entity="acct", time="ts", seq=None, label=None)
    names = role_names(schema)
    table = generate_events(GenerateConfig(n_entities=5), seed=1, names=names)
    assert table.column_names == generated_columns(names)


def test_a_split_column_needs_a_file_and_a_column_of_its_own():
    column = {"split": {"method": "column", "column": "fold"}}
    with pytest.raises(ConfigError, match=r"shard\.split\.method='column': generated data has no"):
        params_from_dict({"shard": column})
    data = {"source": "file", "path": "events.parquet"}
    taken = {"split": {"method": "column", "column": "label"}}
    with pytest.raises(ConfigError, match=r"shard\.split\.column='label': is mapped to a role"):
        params_from_dict({"data": data, "shard": taken})
    assert params_from_dict({"data": data, "shard": column}).shard.split.column == "fold"
