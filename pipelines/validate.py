"""The validate stage: the events table in, validated events, quarantine and reports out.

A thin CLI over a pure ``run()`` (STYLE.md 2). It reads ``data/events`` once, runs the
ordering contract (``data_checks.contract``; docs/architecture.md §2) and writes:

* ``data/validated/events.parquet``: rows that passed, grouped by entity, arrival order
  within an entity; written only when no ``fail``-policy check failed. It is gathered and
  written a million rows at a time (``data_checks.split``), so the stage never holds a
  second copy of the events table (benchmarks/README.md);
* ``data/quarantine/quarantine.parquet``: rows set aside by ``quarantine`` policies with
  ``_quarantine_reason`` (always written, possibly empty, so DVC always has the output);
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
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from data_checks.contract import check_contract
from data_checks.docs import write_docs
from data_checks.results import ValidationReport
from pipelines.config import Params
from pipelines.stage import stage_main
from seqcore.io import read_events, write_json, write_parquet_chunks

log = logging.getLogger("seqops.validate")
VALIDATED_FILE = "events.parquet"


def run(
    params: Params,
    events_dir: Path,
    out_dir: Path,
    quarantine_path: Path,
    report_path: Path,
    docs_dir: Path,
) -> ValidationReport:
    """Validate the events table and write every output; returns the report."""
    table = read_events(events_dir)
    # The reader's buffers are no longer needed: return them before the contract's gather.
    pa.default_memory_pool().release_unused()
    now = params.validate.now or datetime.now(UTC)
    log.info("validating %d events from %s (now=%s)", table.num_rows, events_dir, now.isoformat())
    report, split = check_contract(
        table, params.data.schema, params.validate, now, arrival_known=arrival_known(params)
    )

    write_json(report_path, report.to_json())
    write_docs(report, docs_dir)
    write_parquet_chunks(split.quarantine_chunks(), split.quarantine_schema, quarantine_path)
    if report.failed():
        log.error("validation failed: %s", ", ".join(r.name for r in report.failed()))
    else:
        write_parquet_chunks(split.clean_chunks(), table.schema, Path(out_dir) / VALIDATED_FILE)
        log.info(
            "wrote %d validated events (%d quarantined) in %.2f s",
            report.rows_out,
            report.rows_quarantined,
            report.duration_s,
        )
    return report


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
    return stage_main("validate", _arguments, _command, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
