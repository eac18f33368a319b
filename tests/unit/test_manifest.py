"""The shard manifest as one typed contract: validated at load, errors that name the key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from seqcore.manifest import FORMAT_VERSION, DataContract, Manifest, ManifestError, load_manifest


@pytest.fixture(scope="module")
def raw(tiny_pipeline) -> dict:
    return json.loads((tiny_pipeline["shards"] / "manifest.json").read_text())


def test_round_trip_writes_what_it_reads(raw):
    manifest = Manifest.from_json(raw)
    assert manifest.to_json() == raw
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    body = manifest.body()
    assert "content_hash" not in body and body.items() <= raw.items()


def test_typed_fields_replace_string_keys(raw, tiny_pipeline):
    manifest = load_manifest(tiny_pipeline["shards"])
    assert manifest.window_len == raw["window"]["window_len"]
    assert manifest.schema.entity == raw["schema"]["entity"]
    assert manifest.vocab("mcc") == tuple(raw["features"]["categorical"]["mcc"]["vocab"])
    train = manifest.splits["train"]
    assert list(train.buckets) == sorted(int(b) for b in raw["splits"]["train"]["buckets"])
    assert all(isinstance(b, int) for b in manifest.bucket_boundaries)
    assert manifest.targets.label is not None and manifest.targets.label.num_classes == 2
    assert manifest.targets.next_event.column == raw["targets"]["next_event"]["column"]


def test_the_data_contract_round_trips_typed(raw):
    contract = Manifest.from_json(raw).contract
    assert isinstance(contract, DataContract)  # written by the shard stage from validate
    assert contract.ranges == {"amount": (0.0, 1_000_000.0)}
    assert contract.domains["channel"] == ("pos", "online", "atm", "contactless")
    assert contract.applies("future_timestamps") and contract.max_ahead_s == 300.0
    assert contract.time_floor.isoformat() == "2000-01-01T00:00:00+00:00"
    assert contract.domain_policy == "refuse"
    assert DataContract.from_json(contract.to_json(), "c") == contract


def test_a_manifest_from_before_the_contract_still_loads_and_reads_back_as_written(raw):
    older = {k: v for k, v in raw.items() if k != "contract"}
    manifest = Manifest.from_json(older)
    assert manifest.contract is None
    assert manifest.to_json() == older  # no "contract": null appears in it
    assert Manifest.from_json({**older, "contract": None}).contract is None


def test_absent_targets_are_none_not_missing_keys(raw):
    no_targets = {**raw, "targets": {"label": None, "next_event": None, "forecast": None}}
    targets = Manifest.from_json(no_targets).targets
    assert targets.label is None and targets.next_event is None and targets.forecast is None
    assert Manifest.from_json({**raw, "targets": {}}).targets == targets


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("window"), r"manifest\.window: missing"),
        (lambda r: r["window"].pop("window_len"), r"manifest\.window\.window_len: missing"),
        (
            lambda r: r["splits"]["train"].update(examples="12"),
            r"splits\.train\.examples: expected int",
        ),
        (lambda r: r["splits"].pop("test"), r"manifest\.splits: missing test"),
        (lambda r: r.update(max_workers=True), r"max_workers: expected int"),
        (lambda r: r["targets"]["next_event"].update(column="nope"), r"next_event\.column: 'nope'"),
        (lambda r: r["features"].pop("numeric_order"), r"schema or features unreadable"),
        (lambda r: r["contract"].pop("checks"), r"manifest\.contract\.checks: missing"),
        (
            lambda r: r["contract"]["ranges"].update(amount=[0]),
            r"contract\.ranges\.amount: expected \[min, max\]",
        ),
        (
            lambda r: r["contract"]["ranges"].update(mcc=[0, 1]),
            r"contract\.ranges: 'mcc' not a numeric feature",
        ),
        (
            lambda r: r["contract"]["domains"].update(channel=[1, 2]),
            r"contract\.domains\.channel: expected strings",
        ),
        (lambda r: r["contract"].update(domain_policy="drop"), r"domain_policy: expected one of"),
        (lambda r: r["contract"].update(time_floor="soon"), r"time_floor: expected an ISO-8601"),
    ],
)
def test_a_broken_manifest_fails_at_load_naming_the_key(raw, change, message):
    broken = json.loads(json.dumps(raw))
    change(broken)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(broken)


def test_another_format_version_is_refused_with_the_fix(raw, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(ManifestError, match=rf"format 99, expected {FORMAT_VERSION}.*dvc repro"):
        load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the shard stage first"):
        load_manifest(tmp_path / "absent")


def test_the_content_hash_is_not_part_of_what_it_hashes(raw):
    manifest = Manifest.from_json(raw)
    rehashed = dataclasses.replace(manifest, content_hash="other")
    assert rehashed.body() == manifest.body() and rehashed.to_json() != manifest.to_json()
