"""The ordering contract: run every check on the events table, apply policies, split rows.

Order (docs/architecture.md §2): ``non_empty`` (an empty table skips everything else), ``schema``,
``types``, then the row checks. A check whose columns are missing or mistyped is
``skipped`` with the reason, so one fault is reported by its own check and nothing crashes.
Policies: ``fail`` reports and the stage exits non-zero; ``quarantine`` sets the offending
rows (whole entities for ``seq_gaps`` and ``label_consistency``) aside with
``_quarantine_reason`` = the first quarantining check, in ``CHECK_NAMES`` order.

Arrival order: the per-entity checks read each entity's rows in ``_arrival`` order. The
watermark check (``late_events``) also needs that order to be the global order rows reached
the system; a caller that knows it is not (a user's file without ``data.schema.arrival``,
where ``_arrival`` is only the file's row order) passes ``arrival_known=False`` and the check
is skipped with the reason.

``clean`` is grouped by entity and in arrival order within an entity: the grouping order
the checks already computed, so validate costs one sort-like pass over the data.
``check_contract`` returns it as a ``data_checks.split.Split`` of row ids that the validate
stage gathers and writes chunk by chunk (no second copy of the table); ``run_contract``
gathers whole tables, for callers that want them in memory.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_checks import gx_suite, ordering
from data_checks.config import CHECK_NAMES, ValidateConfig
from data_checks.ordering import Finding
from data_checks.results import CheckResult, ValidationReport, json_safe, skipped
from data_checks.split import REASON, Split, split_rows
from data_checks.watermark import LateRows
from seqcore.schema import ARRIVAL, SchemaConfig

__all__ = ["NO_ARRIVAL", "REASON", "PartFacts", "Split", "check_contract", "run_contract"]
GX_CHECKS = {"schema", "types", "key_nulls", "value_ranges", "categorical_domain"}
NO_ARRIVAL = (
    "no arrival column mapped: set data.schema.arrival to the column that records when each "
    "row reached the system (e.g. an ingestion timestamp or a log offset); file row order is "
    "not taken as arrival order"
)
"""Why ``late_events`` is skipped when the table's ``_arrival`` is not an arrival order."""
FILE_ORDER = (
    "each entity's rows were compared in file row order (no data.schema.arrival is mapped): "
    "sort the file by entity and time (and seq), or map the arrival column"
)


@dataclass(frozen=True)
class PartFacts:
    """What the contract run on one part needs to know of the whole table.

    Parts hold whole entities, so every per-entity check is exact on its part. Two checks
    are not: ``late_events`` compares with the watermark over the global arrival order
    (``data_checks.watermark``) and ``categorical_domain`` fails on a column's unseen fraction
    over all rows. Their verdicts are computed first, over all parts, and passed here. The
    GX suite does not run per part either: it runs once on a sample drawn across parts.
    """

    late: LateRows | None = None
    """Rows behind the global watermark; must be given when late_events runs."""
    domains: gx_suite.DomainFacts | None = None
    """The domain verdict over all parts; must be given when categorical_domain runs."""
    whole: bool = False
    """The table is the only part: its own watermark and domain verdict are the table's."""


class _Run:
    """State of one contract run: the config, the index and the findings so far."""

    def __init__(
        self,
        table: pa.Table,
        schema: SchemaConfig,
        config: ValidateConfig,
        arrival_known: bool,
        facts: PartFacts | None = None,
    ) -> None:
        self.table, self.schema, self.config = table, schema, config
        self.arrival_known, self.facts = arrival_known, facts
        self.k = config.sample_offenders
        self.results: dict[str, CheckResult] = {}
        self.findings: dict[str, Finding] = {}

    def run(self, name: str, skip: str | None, compute: Callable[[], Finding]) -> None:
        """Run one check unless it is disabled or ``skip`` gives a reason not to."""
        cfg = self.config.checks[name]
        if not cfg.enabled:
            self.results[name] = skipped(name, cfg.policy, "disabled")
            return
        if skip is not None:
            self.results[name] = skipped(name, cfg.policy, skip)
            return
        started = time.perf_counter()
        try:
            finding = compute()
        except Exception as exc:  # a check bug must not hide the other checks' results
            message = f"check raised {type(exc).__name__}: {exc}"
            details = {"traceback": traceback.format_exc(limit=3)[-1500:]}
            self.results[name] = CheckResult(
                name, "fail", cfg.policy, message=message, details=details
            )
            return
        self.findings[name] = finding
        failed = finding.fail or finding.violating_rows > 0 or finding.violating_entities > 0
        status = "fail" if failed else "pass"
        self.results[name] = CheckResult(
            name=name,
            status=status,
            policy=cfg.policy,
            violating_rows=finding.violating_rows,
            violating_entities=finding.violating_entities,
            sample=json_safe(finding.sample),
            message=finding.message,
            details=json_safe(finding.details),
            duration_s=time.perf_counter() - started,
        )

    def note(self, name: str, **details: Any) -> None:
        """Add details to a result already recorded (results are frozen: replace it)."""
        result = self.results[name]
        self.results[name] = replace(result, details={**result.details, **json_safe(details)})


def _needs(plan: gx_suite.ColumnPlan, columns: list[str | None]) -> str | None:
    """A skip reason if any of ``columns`` is unmapped, missing or mistyped, else None."""
    problems = []
    for column in columns:
        if column is None:
            problems.append("no column mapped")
        elif column in plan.missing:
            problems.append(f"{column} is missing")
        elif column in plan.wrong:
            problems.append(f"{column} has type {plan.wrong[column]}")
    return "; ".join(problems) or None


def _usable(
    plan: gx_suite.ColumnPlan, candidates: list[str], role: str
) -> tuple[list[str], str | None, dict[str, str | None]]:
    """The usable columns among ``candidates``, a skip reason if there are none, the rest."""
    usable = [c for c in candidates if c in plan.usable]
    unusable = {c: _needs(plan, [c]) for c in candidates if c not in plan.usable}
    reason = None
    if not usable:
        reason = "; ".join(str(v) for v in unusable.values()) or f"no {role} configured"
    return usable, reason, unusable


def _schema_and_types(run: _Run, plan: gx_suite.ColumnPlan, gx: dict[str, list[dict]]) -> None:
    for name, exact_bad, gx_items in (
        ("schema", {c: "missing" for c in plan.missing}, gx.get("schema", [])),
        ("types", dict(plan.wrong), gx.get("types", [])),
    ):
        cfg = run.config.checks[name]
        if not cfg.enabled:
            run.results[name] = skipped(name, cfg.policy, "disabled")
            continue
        gx_bad = {
            i["column"]: f"GX observed {i.get('observed_value', '?')}"
            for i in gx_items
            if not i["success"] and "exception" not in i
        }
        bad = {**gx_bad, **exact_bad}
        if name == "schema":
            message = f"missing column(s): {', '.join(bad)}" if bad else ""
            sample = [{"column": c, "problem": "missing"} for c in bad]
        else:
            only_gx = [f"{c}: {t}" for c, t in bad.items() if c not in plan.wrong]
            message = "; ".join(filter(None, [gx_suite.type_message(plan), *only_gx]))
            sample = [{"column": c, "type": t, "expected": plan.kinds[c]} for c, t in bad.items()]
        details = {"columns": bad, "gx": gx_items}
        status = "fail" if bad else "pass"
        run.results[name] = CheckResult(
            name, status, cfg.policy, 0, 0, json_safe(sample), message, json_safe(details)
        )


def _attach_gx(run: _Run, gx: dict[str, list[dict]], sampled: bool) -> None:
    """Add the GX suite's view to the exact results it mirrors (key nulls, ranges, domains)."""
    for name in ("key_nulls", "value_ranges", "categorical_domain"):
        result, items = run.results.get(name), gx.get(name)
        if result is None or result.status == "skipped" or not items:
            continue
        gx_pass = all(i["success"] for i in items)
        # On a sample GX may miss rare offenders; it must never see one the exact check missed.
        agrees = gx_pass == (result.status == "pass") or (sampled and gx_pass)
        run.note(name, gx=items, gx_agrees=agrees)


def run_contract(
    table: pa.Table,
    schema: SchemaConfig,
    config: ValidateConfig,
    now: datetime,
    arrival_known: bool = True,
) -> tuple[ValidationReport, pa.Table, pa.Table]:
    """Validate ``table``; returns the report, the clean rows and the quarantined rows."""
    report, split = check_contract(table, schema, config, now, arrival_known)
    return report, split.clean(), split.quarantine()


def check_contract(
    table: pa.Table,
    schema: SchemaConfig,
    config: ValidateConfig,
    now: datetime,
    arrival_known: bool = True,
    facts: PartFacts | None = None,
) -> tuple[ValidationReport, Split]:
    """Validate ``table``; returns the report and the split of its rows, not yet gathered.

    ``arrival_known``: whether ``_arrival`` is the order rows reached the system (see the
    module docstring); without it ``late_events`` is skipped with ``NO_ARRIVAL``.
    ``facts``: given when ``table`` is one part of the events (``PartFacts``); the GX suite
    is then left to the caller (``finish_report``).
    """
    started = time.perf_counter()
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    run = _Run(table, schema, config, arrival_known, facts)
    n = table.num_rows
    timings: dict[str, float] = {}
    run.run("non_empty", None, lambda: _non_empty(n))
    if n == 0:
        for name in CHECK_NAMES[1:]:
            run.run(name, "the table is empty", lambda: _non_empty(n))
        split = _split(run, None, None, timings)
        return _report(run, split, now, started, timings, {"ran": False})

    plan = gx_suite.plan_columns(table, schema)
    enabled = {c for c in CHECK_NAMES if config.checks[c].enabled}
    use_gx = bool(enabled & GX_CHECKS) and facts is None
    gx_results: dict[str, list[dict]] = {}
    gx_info: dict[str, Any] = {"ran": False}
    # GX's import is seconds of pure Python and the row checks are numpy/Arrow kernels that
    # release the GIL, so the two overlap on a second core. The suite itself (GX's lazily
    # imported engine and its frame, about 0.2 GB) starts only once the checks have freed
    # their index, so its memory never adds to theirs (benchmarks/README.md).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gx-suite") as pool:
        if use_gx:  # a failed import is reported by run_suite, which imports again
            pool.submit(_import_gx, timings)
        # Quarantine needs only the row checks (schema and types can only fail).
        split = _split(run, *_row_checks(run, plan, now, timings), timings)
        suite = None
        if use_gx:
            suite = pool.submit(gx_suite.run_suite, table, schema, config, plan, enabled)
        if suite is not None:
            gx_results, gx_info = suite.result()
    timings["gx_suite"] = gx_info.get("duration_s", 0.0)
    _schema_and_types(run, plan, gx_results)
    _attach_gx(run, gx_results, bool(gx_info.get("sampled")))
    return _report(run, split, now, started, timings, gx_info)


def finish_report(
    report: ValidationReport,
    columns: pa.Schema,
    schema: SchemaConfig,
    config: ValidateConfig,
    sample: pa.Table,
    total_rows: int,
) -> ValidationReport:
    """Add the GX suite, run on ``sample`` of a ``total_rows`` table, and the schema and type
    checks to a report merged from parts (``data_checks.merge``); ``columns``: the parts'
    schema (ingest writes one schema for all parts)."""
    if report.rows_in == 0:
        return report
    plan = gx_suite.plan_columns(columns.empty_table(), schema)
    enabled = {c for c in CHECK_NAMES if config.checks[c].enabled}
    run = _Run(columns.empty_table(), schema, config, arrival_known=True)
    run.results = {r.name: r for r in report.results}
    gx_results: dict[str, list[dict]] = {}
    gx_info: dict[str, Any] = {"ran": False}
    if enabled & GX_CHECKS:
        gx_results, gx_info = gx_suite.run_suite(sample, schema, config, plan, enabled, total_rows)
    _schema_and_types(run, plan, gx_results)
    _attach_gx(run, gx_results, bool(gx_info.get("sampled")))
    timings = {**report.timings, "gx_suite": gx_info.get("duration_s", 0.0)}
    return replace(
        report, results=[run.results[name] for name in CHECK_NAMES], gx=json_safe(gx_info),
        timings=timings,
    )  # fmt: skip


def _import_gx(timings: dict[str, float]) -> None:
    t0 = time.perf_counter()
    gx_suite.import_gx()
    timings["gx_import"] = time.perf_counter() - t0


def _row_checks(
    run: _Run, plan: gx_suite.ColumnPlan, now: datetime, timings: dict
) -> tuple[np.ndarray, Callable[[np.ndarray], pa.Array] | None]:
    """Every check after schema/types; returns the grouping order and an entity gatherer.

    The index arrays live only inside this call (the gatherer keeps the entity codes), so
    they are freed before the gather.
    """
    table, schema, config, k = run.table, run.schema, run.config, run.k
    cfg = config.checks
    t0 = time.perf_counter()
    ix = ordering.build_index(table, schema.entity, schema.time, schema.seq, plan.usable)
    timings["index"] = time.perf_counter() - t0
    keys_present = [c for c in (schema.entity, schema.time) if c not in plan.missing]
    run.run(
        "key_nulls",
        None if keys_present else _needs(plan, [schema.entity, schema.time]),
        lambda: ordering.key_nulls(ix, schema.entity, schema.time, k),
    )
    numeric, why, _ = _usable(plan, list(schema.numeric), "numeric column")
    run.run("numeric_finite", why, lambda: ordering.numeric_finite(ix, numeric, k))
    ranged, why, no_range = _usable(
        plan, [c for c in config.ranges if c in schema.numeric], "range"
    )
    run.run("value_ranges", why, lambda: gx_suite.value_ranges(ix, ranged, config.ranges, k))
    domained, why, no_domain = _usable(
        plan, [c for c in config.domains if c in schema.categorical], "domain"
    )
    max_unseen = cfg["categorical_domain"].max_unseen_fraction
    known = None
    if run.facts is not None and not run.facts.whole:
        known = run.facts.domains
        if known is None and not why:
            why = "no domain verdict over all parts was given (a bug in the caller)"
    run.run(
        "categorical_domain",
        why,
        lambda: gx_suite.categorical_domain(ix, domained, config.domains, max_unseen, k, known),
    )
    for name, unusable in (("value_ranges", no_range), ("categorical_domain", no_domain)):
        if unusable and run.results[name].status != "skipped":  # e.g. device dropped: noted
            run.note(name, skipped_columns=unusable)
    seq_values, seq_valid = _seq_arrays(table, schema.seq, plan)
    no_seq = "no sequence-number column mapped (data.schema.seq is null)"
    run.run(
        "seq_negative",
        no_seq if schema.seq is None else _needs(plan, [schema.seq]),
        lambda: ordering.seq_negative(ix, seq_values, seq_valid, k),
    )
    if "seq_negative" in run.findings:  # a negative seq is that check's fault, not a gap's
        seq_valid = seq_valid.copy()
        seq_valid[run.findings["seq_negative"].rows] = False

    time_need = _needs(plan, [schema.time])
    entity_need = _needs(plan, [schema.entity, schema.time])
    max_ahead, floor = cfg["future_timestamps"].max_ahead, cfg["time_floor"].floor
    assert floor is not None  # CheckConfig always fills the floor
    run.run(
        "future_timestamps", time_need, lambda: ordering.future_timestamps(ix, now, max_ahead, k)
    )
    run.run("time_floor", time_need, lambda: ordering.time_floor(ix, floor, k))
    # Rows already out of range in time would also look out of order or late: they are
    # those two checks' faults only.
    exclude = np.zeros(table.num_rows, dtype=bool)
    for name in ("future_timestamps", "time_floor"):
        if name in run.findings:
            exclude[run.findings[name].rows] = True
    run.run("time_order", entity_need, lambda: ordering.time_order(ix, exclude, k))
    dup_need = entity_need or (_needs(plan, [schema.seq]) if schema.seq else None)
    run.run("duplicates", dup_need, lambda: ordering.duplicates(ix, seq_values, k, exclude))
    gap_need = entity_need or _needs(plan, [schema.seq])
    run.run("seq_gaps", gap_need, lambda: ordering.seq_gaps(ix, seq_values, seq_valid, k))
    seq_need = no_seq if schema.seq is None else gap_need
    run.run(
        "seq_order",
        seq_need,
        lambda: ordering.seq_order(
            ix,
            seq_values,
            seq_valid,
            exclude,
            k,
            run.findings["time_order"].rows if "time_order" in run.findings else None,
        ),
    )
    lateness = cfg["late_events"].allowed_lateness
    run.run(
        "late_events",
        time_need or (None if run.arrival_known else NO_ARRIVAL),
        lambda: _late_events(run, ix, lateness, exclude),
    )
    label_need = (
        "no label column mapped (data.schema.label is null)"
        if schema.label is None
        else _needs(plan, [schema.entity, schema.label])
    )
    run.run(
        "label_consistency",
        label_need,
        lambda: ordering.label_consistency(ix, str(schema.label), k),
    )
    if not run.arrival_known:
        file_order_hints(run.results)
    return ix.order, ix.entity_gatherer()


def file_order_hints(results: dict[str, CheckResult]) -> None:
    """Say in time_order's and seq_order's failures that the order compared was the file's."""
    for name in ("time_order", "seq_order"):
        result = results[name]
        if result.status == "fail" and not result.message.startswith(FILE_ORDER):
            hint = FILE_ORDER + (f"; {result.message}" if result.message else "")
            results[name] = replace(result, message=hint)


def _late_events(
    run: _Run, ix: ordering.EventIndex, lateness: float, exclude: np.ndarray
) -> Finding:
    if run.facts is None or run.facts.whole:
        return ordering.late_events(ix, ordering.arrival_order(ix.table), lateness, exclude, run.k)
    if run.facts.late is None or ARRIVAL not in ix.table.column_names:
        raise ValueError("no watermark over all parts was given (a bug in the caller)")
    arrival = ix.table[ARRIVAL].to_numpy().astype(np.int64, copy=False)
    rows, behind = run.facts.late.rows_in(arrival)
    details = {"allowed_lateness_s": lateness}
    return ordering.finding(ix, rows, run.k, {"behind_watermark_s": behind}, details=details)


def _non_empty(n: int) -> Finding:
    message = "" if n else "the events table has no rows"
    return Finding(np.zeros(0, np.int64), 0, 0, message=message, fail=n == 0)


def _seq_arrays(table: pa.Table, seq: str | None, plan: gx_suite.ColumnPlan) -> tuple[Any, Any]:
    if seq is None or seq not in plan.usable:
        return None, None
    column = table[seq]
    values = pc.fill_null(pc.cast(column, pa.int64()), ordering.INT64_MIN).to_numpy()
    valid = (
        pc.is_valid(column).to_numpy(zero_copy_only=False)
        if column.null_count
        else np.ones(len(values), bool)
    )
    return values, valid


def _split(
    run: _Run,
    order: np.ndarray | None,
    gather_entity: Callable[[np.ndarray], pa.Array] | None,
    timings: dict[str, float],
) -> Split:
    """Apply the quarantine policies: which rows stay (in ``order``) and which go, and why."""
    t0 = time.perf_counter()
    offenders = {}
    for name in CHECK_NAMES:
        result, finding = run.results.get(name), run.findings.get(name)
        if result and result.status == "fail" and result.policy == "quarantine" and finding:
            offenders[name] = finding.rows
    split = split_rows(run.table, offenders, order, run.schema.entity, gather_entity)
    # Hand memory the checks freed back to the OS before the gathers and the GX suite.
    pa.default_memory_pool().release_unused()
    timings["split"] = time.perf_counter() - t0
    return split


def _report(
    run: _Run,
    split: Split,
    now: datetime,
    started: float,
    timings: dict[str, float],
    gx_info: dict[str, Any],
) -> tuple[ValidationReport, Split]:
    report = ValidationReport(
        results=[run.results[name] for name in CHECK_NAMES],
        rows_in=run.table.num_rows,
        rows_out=split.clean_count,
        rows_quarantined=split.quarantine_count,
        gx=json_safe(gx_info),
        duration_s=time.perf_counter() - started,
        now=now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        quarantined=split.quarantined,
        timings={k: round(v, 4) for k, v in timings.items()},
    )
    return report, split
