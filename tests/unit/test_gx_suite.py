"""The Great Expectations 1.x column suite and its exact Arrow counterparts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data_checks import gx_suite, ordering
from data_checks.config import ValidateConfig
from seqcore.schema import SchemaConfig
from tests.unit.test_contract import CHANNELS, config, make_events, make_rows, table_from_rows

SCHEMA = SchemaConfig()
GX_CHECKS = {"schema", "types", "key_nulls", "value_ranges", "categorical_domain"}


@pytest.fixture(scope="module")
def clean_suite():
    """One GX run on a clean table (module-scoped: the GX import alone takes seconds)."""
    table = make_events()
    plan = gx_suite.plan_columns(table, SCHEMA)
    return table, plan, gx_suite.run_suite(table, SCHEMA, config(), plan, GX_CHECKS)


def index(table: pa.Table, plan: gx_suite.ColumnPlan) -> ordering.EventIndex:
    return ordering.build_index(table, "account_id", "event_time", "seq_no", plan.usable)


def test_plan_accepts_the_contract_types_and_names_wrong_ones():
    table = make_events()
    assert gx_suite.plan_columns(table, SCHEMA).wrong == {}
    bad = table.set_column(0, "account_id", pc.cast(table["account_id"].is_null(), pa.float64()))
    bad = bad.set_column(3, "amount", pc.cast(bad["amount"], pa.string())).drop_columns(["device"])
    plan = gx_suite.plan_columns(bad, SCHEMA)
    assert plan.missing == ["device"]
    assert plan.wrong == {"account_id": "double", "amount": "string"}
    assert "amount" not in plan.usable and "event_time" in plan.usable
    assert "amount: string (expected number)" in gx_suite.type_message(plan)


def test_gx_frame_keeps_the_arrow_types_meaning():
    table = pa.table(
        {
            "s": pa.array(["a", None]).dictionary_encode(),
            "i": pa.array([1, None], pa.int64()),
            "t": pa.array([0, 1], pa.timestamp("us", tz="UTC")),
            "f": pa.array([np.inf, 2.0]),
        }
    )
    frame = gx_suite.to_gx_frame(table)
    assert [str(d) for d in frame.dtypes] == ["string", "Int64", "datetime64[us]", "float64"]
    assert np.isnan(frame["f"][0])


def test_clean_table_passes_every_expectation(clean_suite):
    _, plan, (grouped, info) = clean_suite
    assert info["ran"] and info["success"] and not info["sampled"]
    assert info["statistics"]["evaluated_expectations"] == sum(len(v) for v in grouped.values())
    assert set(grouped) == GX_CHECKS
    assert {i["column"] for i in grouped["schema"]} == set(plan.kinds)
    assert all(i["success"] for items in grouped.values() for i in items)


def test_gx_type_expectation_sees_the_same_wrong_type_as_arrow():
    table = make_events()
    table = table.set_column(3, "amount", pc.cast(table["amount"], pa.string()))
    plan = gx_suite.plan_columns(table, SCHEMA)
    grouped, info = gx_suite.run_suite(table, SCHEMA, config(), plan, GX_CHECKS)
    failed = {i["column"] for i in grouped["types"] if not i["success"]}
    assert failed == set(plan.wrong) == {"amount"}
    assert "value_ranges" not in grouped  # no range expectation on a mistyped column


def test_sampling_is_deterministic_evenly_spaced_and_reported():
    assert gx_suite.sample_rows(10, 20) is None
    rows = gx_suite.sample_rows(1000, 4)
    assert rows.tolist() == [0, 250, 500, 750]
    table = make_events()
    plan = gx_suite.plan_columns(table, SCHEMA)
    cfg = ValidateConfig(gx_sample_rows=8, domains={"channel": CHANNELS})
    grouped, info = gx_suite.run_suite(table, SCHEMA, cfg, plan, GX_CHECKS)
    assert info["sampled"] and info["sample_rows"] == 8 and info["rows"] == 32
    assert info["sampling"] == "evenly spaced rows"
    nulls = [i for i in grouped["key_nulls"] if i["column"] == "account_id"][0]
    assert nulls["success"]


def test_categorical_domain_reports_unseen_values_fraction_and_threshold():
    rows = make_rows()
    rows[2]["channel"] = "crypto_kiosk"  # 1 of 32 rows: 3.1%
    table = table_from_rows(rows)
    plan = gx_suite.plan_columns(table, SCHEMA)
    ix = index(table, plan)
    domains = {"channel": tuple(CHANNELS)}
    found = gx_suite.categorical_domain(ix, ["channel"], domains, 0.05, k=5)
    assert found.violating_rows == 0  # under the tolerated share: reported, not failed
    channel = found.details["per_column"]["channel"]
    assert channel["unseen_values"] == [{"value": "crypto_kiosk", "count": 1}]
    assert channel["unseen_fraction"] == pytest.approx(1 / 32)
    found = gx_suite.categorical_domain(ix, ["channel"], domains, 0.01, k=5)
    assert found.rows.tolist() == [2] and "crypto_kiosk" in found.message
    assert found.sample[0]["channel"] == "crypto_kiosk"
    grouped, _ = gx_suite.run_suite(table, SCHEMA, config(), plan, {"categorical_domain"})
    gx_channel = [i for i in grouped["categorical_domain"] if i["column"] == "channel"][0]
    assert not gx_channel["success"] and gx_channel["unexpected_count"] == 1


def test_integer_categories_are_matched_as_integers():
    table = pa.table({"code": pa.array([1, 2, 3, None], pa.int32())})
    plan_ix = ordering.build_index(table, "x", "y", None, set())
    found = gx_suite.categorical_domain(plan_ix, ["code"], {"code": ("1", 2, "x")}, 0.0, k=5)
    assert found.rows.tolist() == [2]


def test_value_ranges_count_only_finite_values_outside_the_bounds():
    rows = make_rows()
    rows[1]["amount"], rows[2]["amount"], rows[3]["amount"] = -5.0, np.inf, np.nan
    rows[4]["amount"] = 2e6
    table = table_from_rows(rows)
    plan = gx_suite.plan_columns(table, SCHEMA)
    found = gx_suite.value_ranges(index(table, plan), ["amount"], {"amount": (0.0, 1e6)}, k=5)
    assert found.rows.tolist() == [1, 4]
    assert [s["amount"] for s in found.sample] == [-5.0, 2e6]
    open_top = gx_suite.value_ranges(index(table, plan), ["amount"], {"amount": (0.0, None)}, k=5)
    assert open_top.rows.tolist() == [1]
    grouped, _ = gx_suite.run_suite(table, SCHEMA, config(), plan, {"value_ranges"})
    assert grouped["value_ranges"][0]["unexpected_count"] == 2  # inf became NaN: not counted


@pytest.mark.parametrize(
    "labels",
    [
        pa.array(["churned", None] * 16, pa.string()),
        pa.array(["churned", "stayed"] * 16, pa.large_string()),
        pa.array(["churned", None] * 16).dictionary_encode(),
        pa.array([True, None] * 16),
        pa.array([3, 7] * 16, pa.int16()),
    ],
    ids=["string", "large_string", "dictionary", "boolean", "integer"],
)
def test_labels_of_any_class_type_are_usable_for_arrow_and_gx(labels):
    table = make_events().set_column(8, "label", labels)
    plan = gx_suite.plan_columns(table, SCHEMA)
    assert plan.wrong == {} and "label" in plan.usable
    grouped, info = gx_suite.run_suite(table, SCHEMA, config(), plan, {"types"})
    label_type = [i for i in grouped["types"] if i["column"] == "label"][0]
    assert info["ran"] and label_type["success"], label_type


def test_a_float_label_is_named_with_the_accepted_types():
    table = make_events()
    table = table.set_column(8, "label", pc.cast(table["label"], pa.float64()))
    plan = gx_suite.plan_columns(table, SCHEMA)
    assert plan.wrong == {"label": "double"}
    assert gx_suite.type_message(plan) == "label: double (expected string, integer or boolean)"


def test_column_checks_count_entities_without_the_null_key():
    rows = make_rows()
    rows[1]["amount"] = -5.0
    rows[2]["amount"] = -6.0
    rows[2]["account_id"] = None
    table = table_from_rows(rows)
    plan = gx_suite.plan_columns(table, SCHEMA)
    found = gx_suite.value_ranges(index(table, plan), ["amount"], {"amount": (0.0, 1e6)}, k=5)
    assert (found.violating_rows, found.violating_entities) == (2, 1)
