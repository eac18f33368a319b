"""The validate stage: the events' parts in, validated parts, quarantine and reports out.

A thin CLI over a pure ``run()`` (STYLE.md 2). The ordering contract (``data_checks.contract``;
docs/architecture.md §2) runs part by part, so the stage holds one part per task whatever
the table's size, and the parts run as Ray tasks (``pipelines.fanout``):

1. one pass over the columns they need gives the verdicts no part reaches alone: the global
   watermark (``data_checks.watermark``) and each domain column's unseen fraction;
2. each part's task runs every row and per-entity check on its part (an entity never spans
   two parts), writes its clean and quarantined rows, and returns its report and its rows of
   the GX sample (evenly spaced over all rows);
3. the reports are merged (``data_checks.merge``) and the GX suite runs once on the sample
   (``contract.finish_report``): the report is the one a run on the whole table gives.

Outputs:

* ``data/validated/part-*.parquet``: rows that passed, one file per events part, grouped by
  entity, arrival order within an entity; published (atomically, the folder at once) only
  when no ``fail``-policy check failed, else the previous output stays;
* ``data/quarantine/quarantine.parquet``: rows set aside by ``quarantine`` policies with
  ``_quarantine_reason``, in part order (always written, possibly empty, so DVC always has
  the output);
* ``reports/validation.json`` and ``reports/data_docs/index.html``: always written, so a
  failed run still explains itself.

For a user's file without ``data.schema.arrival`` the rows' order is the file's, not the order
they reached the system: ``late_events`` is skipped and the report says why.

Exit codes: 0 passed, 1 a blocking check failed (the summary goes to stderr), 2 bad
params or missing input.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_checks import gx_suite, rules
from data_checks.config import ValidateConfig
from data_checks.contract import GX_CHECKS, PartFacts, check_contract, finish_report
from data_checks.docs import write_docs
from data_checks.merge import merge_reports
from data_checks.results import ValidationReport
from data_checks.split import REASON
from data_checks.watermark import BLOCK, IGNORED, late_arrivals
from pipelines.config import Params
from pipelines.fanout import Part, PartFailed, list_parts, map_parts
from pipelines.stage import stage_main
from seqcore.io import write_json, write_parquet_chunks
from seqcore.ray_connect import ClusterUnreachable
from seqcore.schema import ARRIVAL, SchemaConfig
from seqcore.store import (
    Destination,
    FileEntry,
    Scratch,
    check_store,
    output_dir,
    scratch_dir,
)

log = logging.getLogger("seqops.validate")
MEMORY_FACTOR = 4.5
"""A part's contract run takes up to this multiple of its Arrow size beyond the worker's own
memory (1M-row parts of 66 MiB: workers peaked at 533-552 MiB; benchmarks/README.md)."""
FACTS_MIN_BATCH = 1 << 13


@dataclass(frozen=True)
class PartJob:
    """What every part's task needs, sent to the cluster once."""

    schema: SchemaConfig
    config: ValidateConfig
    now: datetime
    arrival_known: bool
    facts: PartFacts
    out: Destination
    scratch: Scratch
    """Where each part's quarantined rows go, for the driver to gather."""
    sample_ids: np.ndarray | None
    """Row numbers, over all parts, of the GX sample (None: every row)."""


@dataclass(frozen=True)
class PartOutcome:
    report: ValidationReport
    sample: pa.Table
    written: FileEntry | None
    """The clean part's entry, when it went to a snapshot (``seqcore.store``)."""


def run(
    params: Params,
    events_dir: Path,
    out_dir: Path,
    quarantine_path: Path,
    report_path: Path,
    docs_dir: Path,
) -> ValidationReport:
    """Validate the events, part by part, and write every output; returns the report."""
    started = time.perf_counter()
    if params.data.store is not None:
        check_store(params.data.store)
    parts = list_parts(events_dir)
    columns = parts[0].schema()
    total = sum(p.rows for p in parts)
    config, schema = params.validate, params.data.schema
    now = params.validate.now or datetime.now(UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    log.info(
        "validating %d events in %d part(s) from %s (now=%s)",
        total, len(parts), events_dir, now.isoformat(),
    )  # fmt: skip
    enabled = {c for c, check in config.checks.items() if check.enabled}
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="gx-import") as pool,
        output_dir(out_dir, params.data.store) as out,
        scratch_dir(params.data.store, _parent(quarantine_path), ".validate-scratch-") as scratch,
    ):
        t0 = time.perf_counter()
        facts = whole_table_facts(params, parts, columns, now, scratch)
        facts_s = time.perf_counter() - t0
        # Seconds of pure-Python imports: started only now, they overlap the parts'
        # checks (Ray workers, or numpy kernels that release the GIL), not the facts.
        if enabled & GX_CHECKS:
            pool.submit(gx_suite.import_gx)
        job = PartJob(
            schema, config, now, arrival_known(params), facts, out.destination,
            scratch, gx_suite.sample_rows(total, config.gx_sample_rows),
        )  # fmt: skip
        outcomes = map_parts(
            validate_part, parts, job, params.data, what="validate",
            memory_factor=MEMORY_FACTOR,
        )  # fmt: skip
        merged = merge_reports(
            [o.report for o in outcomes], [p.offset for p in parts],
            [p.name for p in parts], config.sample_offenders, job.arrival_known,
        )  # fmt: skip
        sample = pa.concat_tables([o.sample for o in outcomes])
        for part, outcome in zip(parts, outcomes, strict=True):
            out.add(part.name, outcome.written)
        del outcomes
        report = finish_report(merged, columns, schema, config, sample, total)
        report = replace(
            report,
            duration_s=time.perf_counter() - started,
            timings={**report.timings, "whole_table_facts": round(facts_s, 4)},
        )
        write_json(report_path, report.to_json())
        write_docs(report, docs_dir)
        _gather_quarantine(scratch, parts, columns, quarantine_path)
        out.keep = not report.failed()
    if report.failed():
        log.error("validation failed: %s", ", ".join(r.name for r in report.failed()))
    else:
        log.info(
            "wrote %d validated events (%d quarantined) in %.2f s",
            report.rows_out, report.rows_quarantined, report.duration_s,
        )  # fmt: skip
    return report


def validate_part(part: Part, job: PartJob) -> PartOutcome:
    """The contract on one part: writes its clean and quarantined rows, returns its report
    and its rows of the GX sample. Runs as a Ray task (``pipelines.fanout``)."""
    table = part.read()
    report, split = check_contract(
        table, job.schema, job.config, job.now, job.arrival_known, facts=job.facts
    )
    if split.quarantine_count:
        name = f"quarantine/{part.name}"
        write_parquet_chunks(
            split.quarantine_chunks(), split.quarantine_schema, job.scratch.path(name)
        )
        job.scratch.put(name)
    written = None
    if not report.failed():
        write_parquet_chunks(split.clean_chunks(), table.schema, job.out.local(part.name))
        written = job.out.publish(part.name, digest=False)
    if job.sample_ids is None:
        sample = table
    else:
        ids = job.sample_ids
        local = ids[(ids >= part.offset) & (ids < part.offset + part.rows)] - part.offset
        sample = table.take(pa.array(local))
    return PartOutcome(report, sample, written)


def whole_table_facts(
    params: Params, parts: list[Part], columns: pa.Schema, now: datetime, scratch: Scratch
) -> PartFacts:
    """The verdicts no part can reach alone (``PartFacts``): the global watermark
    (late_events) and each domain column's unseen fraction (categorical_domain).

    Each part's task (``part_facts``) reads only the columns these need, counts its domain
    values and writes its rows' (arrival, time) to ``scratch``; the watermark is then one
    merge of those arrays in arrival order (``data_checks.watermark``)."""
    if len(parts) == 1:
        return PartFacts(whole=True)
    config, schema = params.validate, params.data.schema
    plan = gx_suite.plan_columns(columns.empty_table(), schema)
    checks = config.checks
    time_ok = schema.time in plan.usable
    need_late = checks["late_events"].enabled and time_ok and arrival_known(params)
    domained = [c for c in config.domains if c in schema.categorical and c in plan.usable]
    if not checks["categorical_domain"].enabled:
        domained = []
    if not (need_late or domained):
        return PartFacts()
    job = FactsJob(schema, config, now, time_ok, need_late, domained, scratch)
    counts = map_parts(
        part_facts, parts, job, params.data, what="validate: whole-table facts",
        memory_factor=1.0,
    )  # fmt: skip
    late = None
    if need_late:
        unit = columns.field(schema.time).type.unit
        # Each cursor holds one batch: about a block's share per part keeps the merge's
        # memory the same for 10 parts or 1,000.
        batch = max(FACTS_MIN_BATCH, BLOCK // len(parts))
        streams = [(p.name, _saved_batches(scratch, p.name, batch)) for p in parts]
        late = late_arrivals(streams, checks["late_events"].allowed_lateness, unit)
    domains = None
    if domained:
        max_unseen = checks["categorical_domain"].max_unseen_fraction
        domains = gx_suite.DomainFacts.merge([c for c in counts if c is not None], max_unseen)
    return PartFacts(late=late, domains=domains)


@dataclass(frozen=True)
class FactsJob:
    """What every part's ``part_facts`` task needs."""

    schema: SchemaConfig
    config: ValidateConfig
    now: datetime
    time_ok: bool
    need_late: bool
    domained: list[str]
    scratch: Scratch


def part_facts(part: Part, job: FactsJob) -> dict[str, dict[str, Any]] | None:
    """One part's share of the whole-table verdicts (a Ray task): its domain counts, and its
    rows' arrival and time (``IGNORED`` where the whole-table watermark does not look: null
    key or time, a time the future or floor check flags) saved to ``job.scratch``."""
    schema = job.schema
    reader = part.file(read_dictionary=job.domained)
    names = set(reader.schema_arrow.names)
    wanted = [*job.domained]
    if job.need_late:
        wanted += [schema.time, *([ARRIVAL] if ARRIVAL in names else [])]
        if schema.entity in names and _may_hold_nulls(reader, schema.entity):
            wanted.append(schema.entity)
    table = reader.read(columns=list(dict.fromkeys(wanted)))
    counts = None
    if job.domained:
        counts = gx_suite.domain_counts(table, job.domained, job.config.domains)
    if job.need_late:
        column = table[schema.time]
        times = pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy().copy()
        use = np.ones(times.size, dtype=bool)
        for name in (schema.entity, schema.time):
            if name in table.column_names and table[name].null_count:
                use &= pc.is_valid(table[name]).to_numpy(zero_copy_only=False)
        use &= ~_excluded(job.config, job.time_ok, job.now, times, column.type.unit)
        times[~use] = IGNORED
        if ARRIVAL in table.column_names:
            arrival = table[ARRIVAL].to_numpy().astype(np.int64, copy=False)
        else:
            arrival = np.arange(part.offset, part.offset + times.size, dtype=np.int64)
        for kind, values in (("arrival", arrival), ("time", times)):
            name = f"{part.name}.{kind}.npy"
            np.save(job.scratch.path(name), values)
            job.scratch.put(name)
    return counts


def _excluded(
    config: ValidateConfig, time_ok: bool, now: datetime, times: np.ndarray, unit: str
) -> np.ndarray:
    """The rows the whole-table watermark leaves out: times the future and floor checks
    flag (``contract._row_checks``' ``exclude``), when those checks run."""
    checks = config.checks
    out = np.zeros(times.size, dtype=bool)
    if checks["future_timestamps"].enabled and time_ok:
        out |= rules.future(times, unit, now, checks["future_timestamps"].max_ahead)
    floor = checks["time_floor"].floor
    if checks["time_floor"].enabled and time_ok and floor is not None:
        out |= rules.before_floor(times, unit, floor)
    return out


def _saved_batches(
    scratch: Scratch, name: str, batch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A part's saved (arrival, time) arrays, ``batch`` rows at a time: read, not
    memory-mapped, so the merge holds one batch per part, not the pages it went through."""
    names = (f"{name}.arrival.npy", f"{name}.time.npy")
    with (
        open(scratch.get(names[0]), "rb") as arrival,
        open(scratch.get(names[1]), "rb") as times,
    ):
        for handle in (arrival, times):
            if np.lib.format.read_magic(handle) == (1, 0):
                np.lib.format.read_array_header_1_0(handle)
            else:
                np.lib.format.read_array_header_2_0(handle)
        while True:
            a = np.fromfile(arrival, dtype=np.int64, count=batch)
            if not a.size:
                break
            yield a, np.fromfile(times, dtype=np.int64, count=a.size)
    for fetched in names:
        scratch.done(fetched)


def _may_hold_nulls(reader: pq.ParquetFile, column: str) -> bool:
    """False when every row group's statistics say ``column`` has no nulls."""
    meta = reader.metadata
    index = reader.schema_arrow.get_field_index(column)
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return True
    return False


def _parent(path: Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path).parent


def _gather_quarantine(scratch: Scratch, parts: list[Part], columns: pa.Schema, path: Path) -> None:
    """One quarantine file from the parts' own, in part order (one row group at a time);
    written even when empty, so DVC always has the output."""
    names = [f"quarantine/{p.name}" for p in parts if scratch.has(f"quarantine/{p.name}")]
    schema = columns.append(pa.field(REASON, pa.string()))

    def chunks() -> Iterator[pa.Table]:
        for name in names:
            reader = pq.ParquetFile(scratch.get(name))
            for i in range(reader.num_row_groups):
                yield reader.read_row_group(i)
            scratch.done(name)

    write_parquet_chunks(chunks(), schema, path)


def arrival_known(params: Params) -> bool:
    """Whether ingest's ``_arrival`` is the order rows reached the system: generated rows are
    produced in arrival order, a user's file is ranked by ``data.schema.arrival``; a file
    without that column has only its row order, which late_events must not read as arrival."""
    return params.data.source == "generate" or params.data.schema.arrival is not None


def _quiet_gx(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith("great_expectations")


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=Path, default=Path("data/events"))
    parser.add_argument("--out", type=Path, default=Path("data/validated"))
    parser.add_argument(
        "--quarantine", type=Path, default=Path("data/quarantine/quarantine.parquet")
    )
    parser.add_argument("--report", type=Path, default=Path("reports/validation.json"))
    parser.add_argument("--docs", type=Path, default=Path("reports/data_docs"))


def _command(params: Params, args: argparse.Namespace) -> int:
    for handler in logging.getLogger().handlers:  # GX forces some of its loggers to INFO
        handler.addFilter(_quiet_gx)
    report = run(params, args.events, args.out, args.quarantine, args.report, args.docs)
    if report.failed():
        print(report.summary(), file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "validate", _arguments, _command, argv, doc=__doc__,
        failures=(PartFailed, ClusterUnreachable),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
