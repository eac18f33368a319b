"""Validate part by part equals validate on the whole table (docs/architecture.md §2).

The events are written as the ingest stage writes them, in entity-hash parts; the stage
checks each part alone, given the verdicts no part can reach alone (the global watermark, the
domain columns' unseen fractions), and merges the parts' reports. Its report, clean rows and
quarantine must be those of ``check_contract`` on the parts' concatenation, fault for fault.
These run the parts in process (``data.engine: local``); tests/integration runs them on Ray.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_checks.contract import run_contract
from data_checks.watermark import IGNORED, late_arrivals
from pipelines import validate
from pipelines.config import Params, params_from_dict
from pipelines.generate import generate_events
from pipelines.ingest import write_events
from pipelines.params.data import GenerateConfig
from seqcore.store import read_events
from tests.unit.test_contract import NOW, SCHEMA

ROW_FAULTS = (
    "out_of_order", "duplicates", "seq_gaps", "null_keys", "future_timestamps",
    "before_floor", "late_events", "nan_inf", "unseen_categories",
)  # fmt: skip
CHECKS = (
    "key_nulls", "numeric_finite", "value_ranges", "categorical_domain", "seq_negative",
    "future_timestamps", "time_floor", "time_order", "duplicates", "seq_gaps", "seq_order",
    "late_events", "label_consistency",
)  # fmt: skip
TIMING_KEYS = {"duration_s", "timings_s"}


def faulty_events(n_entities: int = 240, seed: int = 5) -> pa.Table:
    """Generated events with every row-level fault, and labels that differ within some
    entities, in arrival order with ``_arrival``."""
    gen = GenerateConfig(n_entities=n_entities, faults=ROW_FAULTS, fault_rate=0.08)
    table = generate_events(gen, seed=seed)
    labels = table["label"].to_numpy(zero_copy_only=False).copy()
    labels[::97] = 1 - labels[::97]  # a few entities now carry two labels
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    return table.append_column("_arrival", pa.array(np.arange(table.num_rows), pa.int64()))


def stage_params(policy: str, engine: str = "local", **validate: Any) -> Params:
    from pipelines.card_events import CHANNELS, COUNTRIES, DEVICES

    checks = {name: {"policy": policy} for name in CHECKS}
    return params_from_dict(
        {
            "data": {"engine": engine},
            "validate": {
                "now": (NOW + timedelta(days=3650)).isoformat(),
                "checks": checks,
                "domains": {"channel": CHANNELS, "country": COUNTRIES, "device": DEVICES},
                "ranges": {"amount": [0.0, 5000.0]},
                **validate,
            },
        }
    )


def comparable(report: dict) -> dict:
    """The report without wall times, which no two runs share."""
    out = {k: v for k, v in report.items() if k not in TIMING_KEYS}
    out["checks"] = [{k: v for k, v in c.items() if k != "duration_s"} for c in report["checks"]]
    out["great_expectations"] = {
        k: v for k, v in report["great_expectations"].items() if k != "duration_s"
    }
    return out


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Equal schemas and values, NaN equal to NaN (quarantined rows hold NaNs)."""
    return a.schema == b.schema and a.to_pandas().equals(b.to_pandas())


def run_stage(params: Params, events: Path, root: Path) -> tuple[Any, Path, Path]:
    out, quarantine = root / "validated", root / "q" / "quarantine.parquet"
    report = validate.run(params, events, out, quarantine, root / "r.json", root / "docs")
    return report, out, quarantine


@pytest.mark.parametrize("policy", ["quarantine", "fail"])
def test_parts_give_the_report_and_rows_of_the_whole_table(tmp_path, policy):
    events = tmp_path / "events"
    table = faulty_events()
    write_events(table, events, -(-table.num_rows // 5), "account_id")
    assert len(list(events.glob("part-*.parquet"))) == 5
    params = stage_params(policy, gx_sample_rows=1500)
    whole = read_events(events)  # the parts' concatenation: what one run would see
    expected, clean, quarantine = run_contract(
        whole, SCHEMA, params.validate, params.validate.now or NOW, arrival_known=True
    )
    fired = {r.name for r in expected.results if r.violating_rows or r.violating_entities}
    assert fired >= {"time_order", "late_events", "seq_gaps", "categorical_domain"}
    assert expected.gx["sampled"]

    report, out, quarantine_path = run_stage(params, events, tmp_path)
    assert comparable(report.to_json()) == comparable(expected.to_json())
    assert same_rows(pq.read_table(quarantine_path), quarantine)
    if policy == "fail":
        assert report.failed() and not out.exists()
    else:
        assert not report.failed()
        assert read_events(out).equals(clean)
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in events.iterdir())


def test_global_verdicts_differ_from_any_part_alone(tmp_path):
    """The watermark and the unseen fraction are the whole table's: rows are late against
    other parts' entities, and a column passes or fails on its fraction over all rows."""
    events = tmp_path / "events"
    write_events(faulty_events(seed=9), events, 1500, "account_id")
    parts = [pq.read_table(p) for p in sorted(events.iterdir())]
    params = stage_params("quarantine")
    fraction = _domain_fraction(read_events(events), params)
    highest = max(_domain_fraction(part, params) for part in parts)
    assert fraction < highest
    checks = {name: {"policy": "quarantine"} for name in CHECKS}
    checks["categorical_domain"] = {
        "policy": "quarantine",
        "max_unseen_fraction": (fraction + highest) / 2,  # the table passes, a part would fail
    }
    params = stage_params("quarantine", checks=checks)
    cfg = params.validate
    report, _, _ = run_stage(params, events, tmp_path)
    alone = [run_contract(part, SCHEMA, cfg, cfg.now or NOW)[0] for part in parts]
    assert report.result("categorical_domain").status == "pass"
    assert "fail" in {r.result("categorical_domain").status for r in alone}
    late = report.result("late_events").violating_rows
    assert late > sum(r.result("late_events").violating_rows for r in alone)


def _domain_fraction(table: pa.Table, params: Params) -> float:
    from data_checks.gx_suite import domain_counts

    counts = domain_counts(table, ["channel"], params.validate.domains)["channel"]
    return counts["unseen"] / counts["present"]


def test_file_order_without_arrival_column(tmp_path):
    """A user's file without data.schema.arrival: late_events is skipped, and order faults
    say the order compared was the file's, as the whole-table run says."""
    events = tmp_path / "events"
    table = faulty_events(seed=13)
    write_events(table, events, -(-table.num_rows // 3), "account_id")
    params = stage_params("quarantine")
    params = dataclasses.replace(
        params, data=dataclasses.replace(params.data, source="file", path=str(events))
    )
    expected, clean, _ = run_contract(
        read_events(events), SCHEMA, params.validate, params.validate.now or NOW,
        arrival_known=False,
    )  # fmt: skip
    report, out, _ = run_stage(params, events, tmp_path)
    assert report.result("late_events").status == "skipped"
    assert comparable(report.to_json()) == comparable(expected.to_json())
    assert read_events(out).equals(clean)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_watermark_over_parts_equals_the_running_max_over_arrival(block):
    rng = np.random.default_rng(0)
    n = 5000
    times = np.cumsum(rng.integers(0, 10, n)) + rng.integers(-200, 50, n)
    times[rng.random(n) < 0.05] = IGNORED
    owner = rng.integers(0, 4, n)
    parts = [(f"p{i}", iter([(np.flatnonzero(owner == i), times[owner == i])])) for i in range(4)]
    late = late_arrivals(parts, 0.0, "ms", block=block)
    seen = np.where(times == IGNORED, IGNORED, times)
    watermark = np.maximum.accumulate(seen)
    expected = np.flatnonzero((times < watermark) & (times != IGNORED))
    np.testing.assert_array_equal(late.arrival, expected)
    np.testing.assert_allclose(late.behind_s, (watermark - times)[expected] / 1000)


def test_parts_out_of_arrival_order_are_refused():
    parts = [("part-00001.parquet", iter([(np.array([3, 1]), np.array([5, 6]))]))]
    with pytest.raises(ValueError, match="part-00001.parquet: rows are not in _arrival order"):
        late_arrivals(parts, 1.0, "s")
