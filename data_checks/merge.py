"""One report from the contract runs of an events table's parts (docs/architecture.md §2).

Parts are the ingest stage's entity-hash parts, read in name order: their concatenation is
the table a single run would see, so a row's number there is its part's offset plus its row
in the part, and entities never span parts. Counts add up; entity counts too, since an
entity's rows share a part. Samples are re-drawn by the single run's rule from the parts'
samples (each part's holds what the rule can pick from it), so the merged report reads as
one run on the whole table would: same counts, same offenders, same messages. The GX suite
and the schema and type checks are not per part: ``contract.finish_report`` adds them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from data_checks import ordering
from data_checks.config import CHECK_NAMES
from data_checks.contract import file_order_hints
from data_checks.results import CheckResult, ValidationReport

ROW_KEYS = ("row", "duplicate_of_row")
"""Sample fields holding row numbers, shifted by the part's offset."""
BY_ENTITY = {"seq_gaps", "label_consistency"}
"""Checks whose samples list entities in order of first appearance, not rows."""
SUMMED: dict[str, list[tuple[str, ...]]] = {
    "key_nulls": [("null_entity",), ("null_time",)],
    "numeric_finite": [("per_column", "*")],
    "value_ranges": [("per_column", "*", "out_of_range")],
    "seq_gaps": [("missing_seq_numbers",), ("gaps",)],
    "seq_order": [("compared_rows",)],
    "label_consistency": [("labeled_entities",), ("unlabeled_entities",)],
}
"""Details that count rows or entities; every other detail is the same in every part."""
RAISED = "check raised"


def merge_reports(
    reports: Sequence[ValidationReport],
    offsets: Sequence[int],
    names: Sequence[str],
    k: int,
    arrival_known: bool,
) -> ValidationReport:
    """The report of the table made of parts ``names`` (``offsets``: each part's first row)."""
    results = []
    for name in CHECK_NAMES:
        parts = [r.result(name) for r in reports]
        results.append(_merge_result(name, parts, offsets, names, k))
    by_name = {r.name: r for r in results}
    if not arrival_known:
        file_order_hints(by_name)
    quarantined: dict[str, int] = {}
    timings: dict[str, float] = {}
    for report in reports:
        for check, n in report.quarantined.items():
            quarantined[check] = quarantined.get(check, 0) + n
        for step, seconds in report.timings.items():
            timings[step] = round(timings.get(step, 0.0) + seconds, 4)
    return ValidationReport(
        results=[by_name[name] for name in CHECK_NAMES],
        rows_in=sum(r.rows_in for r in reports),
        rows_out=sum(r.rows_out for r in reports),
        rows_quarantined=sum(r.rows_quarantined for r in reports),
        now=reports[0].now,
        quarantined={c: quarantined[c] for c in CHECK_NAMES if c in quarantined},
        timings=timings,
    )


def _merge_result(
    name: str,
    parts: list[CheckResult],
    offsets: Sequence[int],
    names: Sequence[str],
    k: int,
) -> CheckResult:
    if all(p.status == "skipped" for p in parts):
        return parts[0]
    for part_name, part in zip(names, parts, strict=True):
        if part.message.startswith(RAISED):  # a bug in a check: name the part it met
            return replace(part, message=f"{part.message} (in part {part_name})")
    rows = sum(p.violating_rows for p in parts)
    entities = sum(p.violating_entities for p in parts)
    shifted = [_shift(p.sample, offset) for p, offset in zip(parts, offsets, strict=True)]
    if name in BY_ENTITY:
        sample = [item for part in shifted for item in part][:k]
    else:
        sample = merge_row_samples(shifted, k)
    details = _merge_details(name, [p.details for p in parts])
    message = next((p.message for p in parts if p.message), "")
    if name == "seq_gaps":
        message = ordering.seq_gaps_message(details["missing_seq_numbers"], entities)
    elif name == "seq_order":
        message = ordering.seq_order_message(rows, entities)
    elif name == "time_order":
        message = ""  # file_order_hints adds its hint to the merged verdict
    elif name == "label_consistency":
        label, unlabeled = details["label_column"], details["unlabeled_entities"]
        message = ordering.label_message(entities, sample, label, unlabeled)
    return CheckResult(
        name=name,
        status="fail" if any(p.status == "fail" for p in parts) else "pass",
        policy=parts[0].policy,
        violating_rows=rows,
        violating_entities=entities,
        sample=sample,
        message=message,
        details=details,
        duration_s=sum(p.duration_s for p in parts),
    )


def _shift(sample: list[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    if not offset:
        return sample
    return [
        {key: value + offset if key in ROW_KEYS else value for key, value in item.items()}
        for item in sample
    ]


def merge_row_samples(parts: Sequence[list[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """``ordering.describe``'s choice over the concatenated parts: the first offending row of
    each of the first ``k`` entities, filled with the earliest further rows if fewer."""
    items = [item for part in parts for item in part]  # ascending row numbers
    seen: set[Any] = set()
    picked: list[int] = []
    for i, item in enumerate(items):
        key = item.get("entity")
        if key not in seen:
            seen.add(key)
            picked.append(i)
            if len(picked) == k:
                break
    if len(picked) < k:
        chosen = set(picked)
        picked += [i for i in range(len(items)) if i not in chosen][: k - len(picked)]
    return [items[i] for i in sorted(picked)]


def _merge_details(name: str, details: list[dict[str, Any]]) -> dict[str, Any]:
    merged = copy.deepcopy(details[0])
    for path in SUMMED.get(name, []):
        _sum_at(merged, details, path)
    return merged


def _sum_at(target: dict[str, Any], sources: list[dict[str, Any]], path: tuple[str, ...]) -> None:
    head, rest = path[0], path[1:]
    keys = list(target) if head == "*" else [head]
    for key in keys:
        if key not in target:
            continue
        if rest:
            _sum_at(target[key], [s[key] for s in sources], rest)
        else:
            target[key] = sum(s[key] for s in sources)
