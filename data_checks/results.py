"""Structured results of the ordering contract: one ``CheckResult`` per check, one report.

Every check reports the same fields (docs/architecture.md §2): name, status, policy, how many rows
and entities violate it and a small sample of offenders. The report is what
``reports/validation.json`` holds and what the data docs and the stage's exit summary are
rendered from, so everything in it is plain JSON (no NaN, no datetimes, no numpy scalars).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np

STATUSES = ("pass", "fail", "skipped")


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars unwrapped, times as ISO strings.

    Non-finite floats become strings ("NaN", "inf") because the report is written with
    ``allow_nan=False``: a NaN amount is exactly what a sample of offenders may contain.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, Sequence | np.ndarray | set | frozenset):
        return [json_safe(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check of the contract."""

    name: str
    status: str
    """``pass``, ``fail`` or ``skipped`` (disabled, or its columns are missing/mistyped)."""
    policy: str
    """``fail`` (the stage exits non-zero) or ``quarantine`` (offenders were set aside)."""
    violating_rows: int = 0
    violating_entities: int = 0
    sample: list[dict[str, Any]] = field(default_factory=list)
    """A few offending rows or entities (small JSON-safe dicts)."""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name}: status {self.status!r} not in {STATUSES}")

    @property
    def blocking(self) -> bool:
        """A failure that must stop the pipeline (as opposed to one handled by quarantine)."""
        return self.status == "fail" and self.policy == "fail"

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["duration_s"] = round(self.duration_s, 4)
        return json_safe(out)


def skipped(name: str, policy: str, reason: str) -> CheckResult:
    return CheckResult(name=name, status="skipped", policy=policy, message=reason)


@dataclass(frozen=True)
class ValidationReport:
    """All check results of one validate run plus the row accounting."""

    results: list[CheckResult]
    rows_in: int
    rows_out: int
    rows_quarantined: int
    gx: dict[str, Any] = field(default_factory=dict)
    """How the Great Expectations suite ran: ``ran``, ``sampled``, ``sample_rows``, ``rows``..."""
    duration_s: float = 0.0
    now: str | None = None
    """The reference time of the future check (ISO, UTC)."""
    quarantined: dict[str, int] = field(default_factory=dict)
    """Rows set aside per check (a row counts for the first quarantining check only)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in shared steps (GX suite, index build, split); checks carry their own."""

    def result(self, name: str) -> CheckResult:
        for res in self.results:
            if res.name == name:
                return res
        raise KeyError(name)

    def failed(self) -> list[CheckResult]:
        """Checks that failed under the ``fail`` policy: the stage must exit non-zero."""
        return [r for r in self.results if r.blocking]

    @property
    def passed(self) -> bool:
        return not self.failed()

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (``reports/validation.json``)."""
        return json_safe(
            {
                "passed": self.passed,
                "failed": [r.name for r in self.failed()],
                "rows_in": self.rows_in,
                "rows_out": self.rows_out,
                "rows_quarantined": self.rows_quarantined,
                "quarantined_by_check": self.quarantined,
                "now": self.now,
                "duration_s": round(self.duration_s, 4),
                "great_expectations": self.gx,
                "timings_s": self.timings,
                "checks": [r.to_json() for r in self.results],
            }
        )

    def summary(self) -> str:
        """Readable text naming each failed check, its counts and examples: entity keys for
        row and entity checks, column names for column checks (schema, types)."""
        lines = [
            f"validation: {self.rows_in} rows in, {self.rows_out} out, "
            f"{self.rows_quarantined} quarantined"
        ]
        failed = self.failed()
        if not failed:
            lines.append("all blocking checks passed")
        for res in failed:
            kind, examples = offender_examples(res)
            if kind == "columns":
                counts = f"{len(columns_of(res))} column(s)"
            else:
                counts = (
                    f"{res.violating_rows} row(s), {res.violating_entities} "
                    f"entit{'y' if res.violating_entities == 1 else 'ies'}"
                )
            lines.append(
                f"FAILED {res.name}: {counts}" + (f" - {res.message}" if res.message else "")
            )
            if examples:
                lines.append(f"  e.g. {kind}: {', '.join(examples)}")
        for res in self.results:
            if res.status == "fail" and res.policy == "quarantine":
                lines.append(f"quarantined {res.name}: {res.violating_rows} row(s)")
        return "\n".join(lines)


def columns_of(result: CheckResult) -> list[str]:
    """The columns a column-level result names (its sample items carry ``column``)."""
    return list(
        dict.fromkeys(
            str(row["column"]) for row in result.sample if "column" in row and "entity" not in row
        )
    )


def offender_examples(result: CheckResult, limit: int = 5) -> tuple[str, list[str]]:
    """What a result's sample shows, and up to ``limit`` examples of it: ``entities`` (the
    keys of offending rows or entities; a null key is none) or ``columns`` (schema and type
    checks, whose offenders are columns)."""
    columns = columns_of(result)
    if columns:
        return "columns", [repr(c) for c in columns[:limit]]
    keys: list[str] = []
    for row in result.sample:
        key = row.get("entity")
        if key is not None and repr(key) not in keys:
            keys.append(repr(key))
        if len(keys) >= limit:
            break
    return "entities", keys
