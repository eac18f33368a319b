"""The split-leakage check of the ordering contract (docs/architecture.md §2), run on shard output.

Two ways an evaluation can be inflated by the split itself: the same entity on both sides of
an entity split (its habits are memorised, not generalised), or, for a time split, a model
trained on - or given targets from - events after the cutoff it is evaluated beyond
("Leakage in data mining", Kaufman et al., KDD 2011). The check works on what the shard stage
actually produced (entity keys, window end times and the time of the latest event any
per-step target refers to), so a bug in windowing or target masking is caught, not assumed
away. It reports like every other check and never exits the process itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NAME = "split_leakage"
NO_TARGET = np.iinfo(np.int64).min
"""``target_end`` of an example none of whose steps has a target."""


def _iso(us: int | None) -> str | None:
    if us is None or us == NO_TARGET:
        return None
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class SplitExamples:
    """What the check needs from one split's examples (all arrays of equal length)."""

    entity: Any
    """Entity keys (anything ``pyarrow.array`` accepts); compared as strings."""
    window_end: np.ndarray
    """Time of each window's last event, int64 microseconds (UTC)."""
    target_end: np.ndarray
    """Time of the latest event any target of the example refers to; NO_TARGET if none."""


@dataclass
class LeakageResult:
    name: str
    status: str
    """``pass`` or ``fail``."""
    method: str
    violating_examples: int = 0
    violating_entities: int = 0
    sample_offenders: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.passed:
            return f"{self.name}: pass ({self.method} split)"
        return (
            f"{self.name}: FAIL ({self.method} split): {self.violating_examples} examples of"
            f" {self.violating_entities} entities leak across splits; e.g. {self.sample_offenders[:2]}"
        )


def _strings(keys: Any) -> pa.Array:
    arr = keys if isinstance(keys, pa.Array | pa.ChunkedArray) else pa.array(keys)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pc.cast(arr, pa.string())


def _entity_check(splits: Mapping[str, SplitExamples], sample: int) -> LeakageResult:
    keys = {name: _strings(s.entity) for name, s in splits.items()}
    uniques = {name: pc.unique(k) for name, k in keys.items()}
    names = list(splits)
    shared: list[pa.Array] = []
    pairs: dict[str, int] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = uniques[a].filter(pc.is_in(uniques[a], value_set=uniques[b]))
            pairs[f"{a}&{b}"] = len(both)
            if len(both):
                shared.append(both)
    bad = pc.unique(pa.concat_arrays(shared)) if shared else pa.array([], pa.string())
    offenders: list[dict[str, Any]] = []
    examples = 0
    for name in names:
        hit = np.asarray(pc.is_in(keys[name], value_set=bad).to_numpy(zero_copy_only=False))
        examples += int(hit.sum())
        for row in np.flatnonzero(hit)[: max(0, sample - len(offenders))]:
            offenders.append(
                {
                    "split": name,
                    "entity": keys[name][int(row)].as_py(),
                    "reason": "entity in several splits",
                }
            )
    return LeakageResult(
        name=NAME,
        status="fail" if len(bad) else "pass",
        method="entity",
        violating_examples=examples,
        violating_entities=len(bad),
        sample_offenders=offenders,
        details={"shared_entities": pairs, "entities": {n: len(u) for n, u in uniques.items()}},
    )


def _time_check(
    splits: Mapping[str, SplitExamples], train_end: int, val_end: int, sample: int
) -> LeakageResult:
    # (split, lowest allowed window end (exclusive), latest allowed window end and target)
    rules = {"train": (None, train_end), "val": (train_end, val_end), "test": (val_end, None)}
    offenders: list[dict[str, Any]] = []
    bad_keys: list[pa.Array] = []
    examples = 0
    details: dict[str, Any] = {"train_end": _iso(train_end), "val_end": _iso(val_end)}
    for name, s in splits.items():
        low, high = rules[name]
        end = np.asarray(s.window_end, dtype=np.int64)
        target = np.asarray(s.target_end, dtype=np.int64)
        reasons = []
        if low is not None:
            reasons.append(
                (end <= low, f"window ends at or before the previous cutoff {_iso(low)}")
            )
        if high is not None:
            reasons.append((end > high, f"window ends after the cutoff {_iso(high)}"))
            reasons.append((target > high, f"a target lies after the cutoff {_iso(high)}"))
        hit = np.zeros(len(end), dtype=bool)
        for mask, why in reasons:
            hit |= mask
            for row in np.flatnonzero(mask)[: max(0, sample - len(offenders))]:
                offenders.append(
                    {
                        "split": name,
                        "entity": _strings(s.entity)[int(row)].as_py(),
                        "window_end": _iso(int(end[row])),
                        "target_end": _iso(int(target[row])),
                        "reason": why,
                    }
                )
        examples += int(hit.sum())
        if hit.any():
            bad_keys.append(_strings(s.entity).filter(pa.array(hit)))
        has_target = target != NO_TARGET
        details[name] = {
            "examples": len(end),
            "min_window_end": _iso(int(end.min())) if len(end) else None,
            "max_window_end": _iso(int(end.max())) if len(end) else None,
            "max_target_end": _iso(int(target[has_target].max())) if has_target.any() else None,
        }
    entities = len(pc.unique(pa.concat_arrays(bad_keys))) if bad_keys else 0
    return LeakageResult(
        name=NAME,
        status="fail" if examples else "pass",
        method="time",
        violating_examples=examples,
        violating_entities=entities,
        sample_offenders=offenders,
        details=details,
    )


def check_split_leakage(
    method: str,
    splits: Mapping[str, SplitExamples],
    *,
    train_end_us: int | None = None,
    val_end_us: int | None = None,
    sample_offenders: int = 5,
) -> LeakageResult:
    """No entity in two splits (``entity``), or train/val/test separated in time (``time``).

    For ``time``: max window end of train <= train_end < min window end of val, max window
    end of val <= val_end < min window end of test, and no target of train (val) refers to an
    event after train_end (val_end). ``splits`` maps ``train``/``val``/``test`` to examples.
    """
    if method == "entity":
        return _entity_check(splits, sample_offenders)
    if method == "time":
        if train_end_us is None or val_end_us is None:
            raise ValueError("the time method needs train_end_us and val_end_us")
        return _time_check(splits, int(train_end_us), int(val_end_us), sample_offenders)
    raise ValueError(f"unknown split method {method!r}; expected entity or time")


def _when(iso: str | None) -> datetime | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _extreme(values: list[str | None], pick: Any) -> str | None:
    found = [v for v in values if v is not None]
    return pick(found, key=_when) if found else None


def merge_leakage(results: Sequence[LeakageResult], sample_offenders: int = 5) -> LeakageResult:
    """One result from results over disjoint sets of entities (the shard stage's parts: an
    entity's events are all in one part), equal to ``check_split_leakage`` over all their
    examples except for which offenders are sampled (the first parts' first)."""
    first = results[0]
    examples = sum(r.violating_examples for r in results)
    entities = sum(r.violating_entities for r in results)
    offenders = [o for r in results for o in r.sample_offenders][:sample_offenders]
    details: dict[str, Any]
    if first.method == "entity":
        details = {
            key: {name: sum(r.details[key][name] for r in results) for name in first.details[key]}
            for key in ("shared_entities", "entities")
        }
        failed = entities > 0
    else:
        details = {"train_end": first.details["train_end"], "val_end": first.details["val_end"]}
        for name, split in first.details.items():
            if not isinstance(split, dict):
                continue
            each = [r.details[name] for r in results]
            details[name] = {
                "examples": sum(d["examples"] for d in each),
                "min_window_end": _extreme([d["min_window_end"] for d in each], min),
                "max_window_end": _extreme([d["max_window_end"] for d in each], max),
                "max_target_end": _extreme([d["max_target_end"] for d in each], max),
            }
        failed = examples > 0
    return LeakageResult(
        name=NAME,
        status="fail" if failed else "pass",
        method=first.method,
        violating_examples=examples,
        violating_entities=entities,
        sample_offenders=offenders,
        details=details,
    )
