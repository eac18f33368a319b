"""params.yaml parsing: the repository's file is valid; bad values name their key."""

from __future__ import annotations

import pytest

from data_checks.config import CHECK_NAMES
from pipelines.config import params_from_dict
from seqcore.config import ConfigError, parse_duration


def test_repository_params_are_valid(default_params):
    assert default_params.data.source == "generate"
    assert set(default_params.validate.checks) == set(CHECK_NAMES)
    assert default_params.validate.checks["late_events"].allowed_lateness == 86400
    assert default_params.validate.checks["future_timestamps"].max_ahead == 300
    assert default_params.shard.window.window_len == 256


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
    ],
)
def test_bad_values_name_their_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        params_from_dict(raw)


def test_durations():
    assert parse_duration("k", "90s") == 90
    assert parse_duration("k", "1.5h") == 5400
    assert parse_duration("k", 12) == 12
    with pytest.raises(ConfigError):
        parse_duration("k", "-1d")
