"""Column-level checks: a Great Expectations 1.x suite plus exact Arrow counterparts.

The suite (schema, types, key nulls, value ranges, categorical domains) is the declarative,
documented part of the contract and runs through GX's own machinery: an ephemeral context,
a pandas data source, a whole-dataframe batch definition and ``Batch.validate(suite)``
(docs.greatexpectations.io, "Validate data" for GX Core 1.x). Converting to pandas and
GX's per-expectation metrics are costly on millions of rows (benchmarks/README.md), so above
``validate.gx_sample_rows`` rows the suite sees an evenly spaced, deterministic sample and
the report says so. Counting and quarantining must be exact on every row, so key nulls,
value ranges and domains are decided by Arrow kernels over the whole table (milliseconds)
and the GX results are attached to them (with ``gx_agrees``). Types come from the Arrow
schema, which holds one type per column for all rows, and GX confirms them on a pandas frame
built to keep each type's meaning; schema and types fail if either side does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_checks import rules
from data_checks.config import ValidateConfig
from data_checks.ordering import EventIndex, Finding, describe, entity_count
from seqcore.schema import ARRIVAL, SchemaConfig

_INT = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
_GX_TYPES = {
    "key": ["StringDtype", *_INT, *(f"{t.capitalize()}Dtype" for t in _INT)],
    "time": ["datetime64[s]", "datetime64[ms]", "datetime64[us]", "datetime64[ns]"],
    "integer": [*_INT, *(f"{t.capitalize()}Dtype" for t in _INT)],
    "number": [*_INT, *(f"{t.capitalize()}Dtype" for t in _INT), "float16", "float32", "float64"],
    "label": [
        "StringDtype",
        *_INT,
        *(f"{t.capitalize()}Dtype" for t in _INT),
        "bool",
        "BooleanDtype",
    ],
}
_EXPECTED = {
    "key": "string or integer",
    "time": "timestamp",
    "integer": "integer",
    "number": "number",
    "label": "string, integer or boolean",
}


def _value_type(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _is_string(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    )


def type_ok(kind_name: str, kind: pa.DataType) -> bool:
    """Whether an Arrow type is acceptable for a column of the given kind."""
    value = _value_type(kind)
    if kind_name == "key":
        return _is_string(value) or pa.types.is_integer(value)
    if kind_name == "time":
        return pa.types.is_timestamp(kind)
    if kind_name == "integer":
        return pa.types.is_integer(kind)
    if kind_name == "number":
        return pa.types.is_integer(kind) or pa.types.is_floating(kind)
    # label: a class name or number, a flag; the shard stage maps its values to class indices
    return _is_string(value) or pa.types.is_integer(value) or pa.types.is_boolean(value)


@dataclass(frozen=True)
class ColumnPlan:
    """Which mapped columns exist and have a usable type: dependent checks need them."""

    kinds: dict[str, str]
    """Mapped column -> kind (key, time, integer, number, label)."""
    missing: list[str]
    wrong: dict[str, str]
    """Present column -> its Arrow type, where that type is not acceptable."""
    usable: set[str] = field(default_factory=set)
    types: dict[str, pa.DataType] = field(default_factory=dict)
    """Arrow type of each present mapped column."""


def plan_columns(table: pa.Table, schema: SchemaConfig) -> ColumnPlan:
    kinds = {schema.entity: "key", schema.time: "time"}
    if schema.seq:
        kinds[schema.seq] = "integer"
    kinds.update({c: "number" for c in schema.numeric})
    kinds.update({c: "key" for c in schema.categorical})
    if schema.label:
        kinds[schema.label] = "label"
    if ARRIVAL in table.column_names:
        kinds[ARRIVAL] = "integer"
    names = set(table.column_names)
    missing = [c for c in kinds if c not in names]
    wrong = {
        c: str(table[c].type) for c in kinds if c in names and not type_ok(kinds[c], table[c].type)
    }
    usable = {c for c in kinds if c in names and c not in wrong}
    types = {c: table[c].type for c in kinds if c in names}
    return ColumnPlan(kinds, missing, wrong, usable, types)


def type_message(plan: ColumnPlan) -> str:
    return "; ".join(
        f"{c}: {t} (expected {_EXPECTED[plan.kinds[c]]})" for c, t in plan.wrong.items()
    )


# --------------------------------------------------------------------------- exact (Arrow)


def _unseen_mask(column: pa.ChunkedArray, allowed: frozenset[Any]) -> np.ndarray:
    """True where a non-null value is outside ``allowed``: the rule judges each chunk's distinct
    values (its dictionary, encoded here if it has none), and rows take their value's answer."""
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        entry_bad = rules.outside_domain(chunk.dictionary.to_pylist(), allowed)
        lookup = np.r_[entry_bad, False]
        parts.append(lookup[pc.fill_null(chunk.indices, len(chunk.dictionary)).to_numpy()])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _outside(column: pa.ChunkedArray, allowed: tuple[Any, ...]) -> np.ndarray:
    return _unseen_mask(column, frozenset(rules.domain_values(allowed, column.type)))


def _column_unseen(
    column: pa.ChunkedArray, allowed: tuple[Any, ...]
) -> tuple[np.ndarray, dict[str, Any]]:
    """A column's unseen-value mask and its counts (see ``domain_counts``)."""
    mask = _outside(column, allowed)
    values: list[tuple[Any, int]] = []
    if mask.any():
        offending = pc.filter(column, pa.array(mask))
        if pa.types.is_dictionary(offending.type):
            offending = pc.cast(offending, offending.type.value_type)
        values = [(d["values"], d["counts"]) for d in pc.value_counts(offending).to_pylist()]
    counts = {
        "present": len(column) - column.null_count,
        "unseen": int(mask.sum()),
        "values": values,
    }
    return mask, counts


def domain_counts(
    table: pa.Table, columns: list[str], domains: Mapping[str, tuple[Any, ...]]
) -> dict[str, dict[str, Any]]:
    """Per column: rows with a value, rows outside the domain and each unseen value's count.

    Counts of several parts add up (``DomainFacts.merge``), which is how the unseen fraction
    of a table held in parts is decided on the whole table, not part by part.
    """
    return {name: _column_unseen(table[name], domains[name])[1] for name in columns}


@dataclass(frozen=True)
class DomainFacts:
    """The categorical_domain verdict of the whole table: its details and failing columns."""

    per_column: dict[str, dict[str, Any]]
    failing: list[str]
    max_unseen: float

    @classmethod
    def merge(cls, counts: list[dict[str, dict[str, Any]]], max_unseen: float) -> DomainFacts:
        """The verdict over parts from each part's ``domain_counts``."""
        per_column: dict[str, dict[str, Any]] = {}
        failing = []
        for name in counts[0] if counts else []:
            present = sum(c[name]["present"] for c in counts)
            unseen = sum(c[name]["unseen"] for c in counts)
            tally: dict[Any, int] = {}
            for part in counts:
                for value, n in part[name]["values"]:
                    tally[value] = tally.get(value, 0) + n
            ranked = sorted(tally.items(), key=lambda item: (-item[1], str(item[0])))
            fraction = unseen / present if present else 0.0
            per_column[name] = {
                "unseen_rows": unseen,
                "unseen_fraction": fraction,
                "unseen_values": [{"value": v, "count": n} for v, n in ranked[:10]],
            }
            if fraction > max_unseen:
                failing.append(name)
        return cls(per_column, failing, max_unseen)

    def message(self) -> str:
        return "; ".join(
            f"{c}: {self.per_column[c]['unseen_fraction']:.2%} unseen "
            f"(max {self.max_unseen:.2%}), e.g. "
            + ", ".join(
                f"{v['value']!r} x{v['count']}" for v in self.per_column[c]["unseen_values"][:3]
            )
            for c in self.failing
        )


def categorical_domain(
    ix: EventIndex,
    columns: list[str],
    domains: Mapping[str, tuple[Any, ...]],
    max_unseen: float,
    k: int,
    known: DomainFacts | None = None,
) -> Finding:
    """Values outside each column's declared domain; fails above ``max_unseen`` per column.

    ``known``: the verdict over the whole table when ``ix`` holds one part of it; without it
    the verdict is this table's own.
    """
    table = ix.table
    if known is None:  # this table's own verdict: each column's mask serves counts and rows
        seen = {name: _column_unseen(table[name], domains[name]) for name in columns}
        facts = DomainFacts.merge([{n: c for n, (_, c) in seen.items()}], max_unseen)
        masks = {name: seen[name][0] for name in facts.failing}
    else:
        facts = known
        masks = {name: _outside(table[name], domains[name]) for name in facts.failing}
    bad = np.zeros(table.num_rows, dtype=bool)
    for mask in masks.values():
        bad |= mask
    rows = np.flatnonzero(bad)
    entities = entity_count(ix, rows)
    details = {
        "per_column": facts.per_column,
        "max_unseen_fraction": max_unseen,
        "failing_columns": facts.failing,
    }
    sample = describe(ix, rows, k, columns=facts.failing)
    return Finding(rows, int(rows.size), entities, sample, details, facts.message())


def value_ranges(
    ix: EventIndex, columns: list[str], ranges: Mapping[str, tuple[Any, Any]], k: int
) -> Finding:
    """Finite values outside each column's inclusive [min, max]; NaN/inf are numeric_finite's."""
    bad = np.zeros(ix.n_rows, dtype=bool)
    per_column = {}
    for name in columns:
        low, high = ranges[name]
        values = ix.table[name].to_numpy().astype(np.float64, copy=False)  # nulls -> NaN
        out = rules.out_of_range(values, low, high)
        per_column[name] = {"out_of_range": int(out.sum()), "min": low, "max": high}
        bad |= out
    rows = np.flatnonzero(bad)
    sample = describe(ix, rows, k, columns=columns)
    entities = entity_count(ix, rows)
    return Finding(rows, int(rows.size), entities, sample, {"per_column": per_column})


# --------------------------------------------------------------------------- GX suite


def sample_rows(n_rows: int, limit: int) -> np.ndarray | None:
    """Evenly spaced row ids (deterministic, spanning the whole stream), or None for all."""
    if n_rows <= limit:
        return None
    return np.arange(limit, dtype=np.int64) * n_rows // limit


def to_gx_frame(table: pa.Table) -> Any:
    """A pandas frame whose dtypes keep the Arrow types' meaning for GX's type checks.

    Strings become ``StringDtype`` (not ``object``, which GX checks value by value),
    integers nullable ``Int*`` (so a null does not turn them into floats), UTC timestamps
    naive ``datetime64``; ``+-inf`` becomes NaN so that ranges see only finite values.
    """
    import pandas as pd

    columns = {}
    for name in table.column_names:
        column = table[name]
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        if pa.types.is_string_view(column.type) or pa.types.is_large_string(column.type):
            column = pc.cast(column, pa.string())
        if pa.types.is_timestamp(column.type) and column.type.tz is not None:
            column = pc.cast(column, pa.timestamp(column.type.unit))
        columns[name] = column
    mapping = {pa.string(): pd.StringDtype(), pa.bool_(): pd.BooleanDtype()}
    for bits in (8, 16, 32, 64):
        mapping[getattr(pa, f"int{bits}")()] = getattr(pd, f"Int{bits}Dtype")()
        mapping[getattr(pa, f"uint{bits}")()] = getattr(pd, f"UInt{bits}Dtype")()
    frame = pa.table(columns).to_pandas(types_mapper=mapping.get)
    for name in frame.columns:
        if frame[name].dtype.kind == "f":
            frame[name] = frame[name].replace([np.inf, -np.inf], np.nan)
    return frame


def _expectations(
    schema: SchemaConfig, config: ValidateConfig, plan: ColumnPlan, enabled: set[str]
) -> list[Any]:
    """The suite's expectations, each tagged with the contract check it belongs to."""
    import great_expectations as gx

    ex = gx.expectations
    present = [c for c in plan.kinds if c not in plan.missing]
    out: list[Any] = []
    if "schema" in enabled:
        out += [ex.ExpectColumnToExist(column=c, meta={"check": "schema"}) for c in plan.kinds]
    if "types" in enabled:
        meta = {"check": "types"}
        for c in present:
            out.append(
                ex.ExpectColumnValuesToBeInTypeList(
                    column=c, type_list=_GX_TYPES[plan.kinds[c]], meta=meta
                )
            )
    if "key_nulls" in enabled:
        meta = {"check": "key_nulls"}
        keys = [c for c in (schema.entity, schema.time) if c in present]
        out += [ex.ExpectColumnValuesToNotBeNull(column=c, meta=meta) for c in keys]
    if "value_ranges" in enabled:
        meta = {"check": "value_ranges"}
        for c, (low, high) in config.ranges.items():
            if c in plan.usable and c in schema.numeric and (low, high) != (None, None):
                out.append(
                    ex.ExpectColumnValuesToBeBetween(
                        column=c, min_value=low, max_value=high, meta=meta
                    )
                )
    if "categorical_domain" in enabled:
        meta = {"check": "categorical_domain"}
        mostly = 1.0 - config.checks["categorical_domain"].max_unseen_fraction
        for c, domain in config.domains.items():
            if c in plan.usable and c in schema.categorical:
                allowed = list(rules.domain_values(domain, plan.types[c]))
                out.append(
                    ex.ExpectColumnValuesToBeInSet(
                        column=c, value_set=allowed, mostly=mostly, meta=meta
                    )
                )
    return out


def _summarise(result: Any, k: int) -> dict[str, Any]:
    cfg = result.expectation_config
    res = result.result or {}
    out = {
        "expectation": cfg.type,
        "column": cfg.kwargs.get("column"),
        "success": bool(result.success),
    }
    for key in ("observed_value", "unexpected_count", "unexpected_percent", "missing_count"):
        if key in res:
            out[key] = res[key]
    if res.get("partial_unexpected_list"):
        out["partial_unexpected_list"] = list(res["partial_unexpected_list"])[:k]
    info = result.exception_info or {}
    if info.get("raised_exception"):
        out["exception"] = str(info.get("exception_message"))[:300]
    return out


def import_gx() -> Any:
    """Import Great Expectations (seconds of pure Python), with its analytics off."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # a pipeline stage never phones home
    import great_expectations as gx

    return gx


def run_suite(
    table: pa.Table,
    schema: SchemaConfig,
    config: ValidateConfig,
    plan: ColumnPlan,
    enabled: set[str],
    total_rows: int | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Run the GX suite (on a sample above ``gx_sample_rows``); results grouped by check.

    ``total_rows``: the rows of the table ``table`` is already a sample of (the parts'
    evenly spaced rows, ``contract.finish_report``). GX problems (an unusable column, an
    internal error) are reported, never raised: the exact Arrow checks still decide, so a
    GX hiccup cannot hide a fault or stop the stage.
    """
    started = time.perf_counter()
    rows = sample_rows(table.num_rows, config.gx_sample_rows)
    total = table.num_rows if total_rows is None else total_rows
    seen = table.num_rows if rows is None else int(rows.size)
    info: dict[str, Any] = {
        "ran": False,
        "rows": total,
        "sampled": seen < total,
        "sample_rows": seen,
        "sampling": "evenly spaced rows" if seen < total else "all rows",
    }
    grouped: dict[str, list[dict[str, Any]]] = {}
    try:
        gx = import_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        expectations = _expectations(schema, config, plan, enabled)
        if not expectations:
            return grouped, info
        present = [c for c in plan.kinds if c not in plan.missing]
        subset = table.select(present)
        frame = to_gx_frame(subset if rows is None else subset.take(pa.array(rows)))
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch_definition = (
            context.data_sources.add_pandas("seqops")
            .add_dataframe_asset("events")
            .add_batch_definition_whole_dataframe("events")
        )
        # Validating the batch directly skips the stores a ValidationDefinition would
        # serialise into: a third of GX's time on small tables, and nothing is kept anyway.
        suite = gx.ExpectationSuite(name="seqops_events", expectations=expectations)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        fmt = {"result_format": "SUMMARY", "partial_unexpected_count": config.sample_offenders}
        outcome = batch.validate(suite, result_format=fmt)
        for result in outcome.results:
            meta = result.expectation_config.meta if result.expectation_config else None
            check = (meta or {}).get("check", "other")
            grouped.setdefault(check, []).append(_summarise(result, config.sample_offenders))
        info.update(ran=True, version=gx.__version__, success=bool(outcome.success))
        info["statistics"] = dict(outcome.statistics)
    except Exception as exc:  # GX is advisory here; the exact checks still run
        info["error"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        info["duration_s"] = round(time.perf_counter() - started, 4)
    return grouped, info
