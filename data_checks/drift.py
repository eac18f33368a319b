"""Drift of a profile against a reference profile (``seqcore.profile``), statistic by statistic.

Each statistic is a histogram over the same bins in both profiles. Two measures decide:

- the **Jensen-Shannon distance** (base 2: 0 for equal distributions, 1 for disjoint ones;
  scipy's ``jensenshannon``) is the size of the change, compared with ``max_distance``;
- a **chi-square test of homogeneity** (scipy's ``chi2_contingency``) says whether the
  difference is more than sampling noise, at ``alpha`` shared by all the statistics
  (Bonferroni).

A statistic drifts when both say so: the test alone flags differences too small to matter on
a large batch, the distance alone flags the noise of a small one.

The test counts independent draws, and events are not: the events of one sequence share
its entity's habits (one home country, a favourite merchant), so 30,000 events of 500
customers may carry no more evidence than 500 draws. Each histogram is scaled to its
effective number of draws, its count over its design effect (``seqcore.profile.Hist``: the
variance between sequences against that of independent events, per statistic: a country
that never changes within a customer counts about once per customer, a merchant that changes
at every event about once per event). Before the test, bins the current batch is
expected to fill fewer than ``min_expected`` times (from the reference's shares) are pooled
into one, as the test needs. The population stability index is reported beside them, for
people used to it; it decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency

from seqcore.config import fail
from seqcore.profile import Hist, Profile


@dataclass(frozen=True)
class DriftThresholds:
    max_distance: float = 0.1
    """Jensen-Shannon distance (base 2) above which a statistic has moved enough to matter."""
    alpha: float = 0.001
    """Chance of a false alarm on a batch from the reference's own distribution, all the
    statistics together."""
    min_expected: float = 5.0
    """Bins expected to hold fewer current counts than this are pooled before the test."""
    min_sequences: int = 30
    """Below this many current sequences nothing decides: every statistic is reported only."""

    def __post_init__(self) -> None:
        for key, value, ok, why in (
            ("max_distance", self.max_distance, lambda v: 0 < v < 1, "a distance in (0, 1)"),
            ("alpha", self.alpha, lambda v: 0 < v < 1, "a probability in (0, 1)"),
            ("min_expected", self.min_expected, lambda v: v > 0, "a count > 0"),
            ("min_sequences", self.min_sequences, lambda v: v >= 1, "an integer >= 1"),
        ):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if key == "min_sequences":
                number = isinstance(value, int) and not isinstance(value, bool)
            if not number or not ok(value):
                raise fail(f"monitor.{key}", value, f"expected {why}")


@dataclass(frozen=True)
class StatisticDrift:
    name: str
    """``length``, ``gap``, ``order``, ``categorical.<col>``, ``numeric.<col>``,
    ``transitions.<col>``, ``score``, ``contract.<check>``."""
    distance: float
    p_value: float
    psi: float | None
    """None when either side is empty."""
    count: int
    """Current counts behind the statistic."""
    drifted: bool
    reference: dict[str, float | None]
    current: dict[str, float | None]
    """A summary people read: the share of out-of-vocabulary events, the median bin, ..."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "drifted": self.drifted,
            "distance": round(self.distance, 6),
            "p_value": self.p_value,
            "psi": None if self.psi is None else round(self.psi, 6),
            "count": self.count,
            "reference": self.reference,
            "current": self.current,
        }


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) between two histograms' shares; 0 when either is
    empty."""
    if not reference.sum() or not current.sum():
        return 0.0
    # scipy takes the root of a difference that rounding can leave just below 0
    return float(np.nan_to_num(jensenshannon(_shares(reference), _shares(current), base=2)))


def _pooled(reference: np.ndarray, current: np.ndarray, min_expected: float) -> np.ndarray:
    """(2, k) counts with the bins expected to be nearly empty in ``current`` pooled."""
    expected = _shares(reference) * current.sum()
    sparse = expected < min_expected
    keep = ~sparse & ((reference > 0) | (current > 0))
    table = [reference[keep], current[keep]]
    if sparse.any() and (reference[sparse].sum() + current[sparse].sum()) > 0:
        table = [np.append(table[0], reference[sparse].sum()),
                 np.append(table[1], current[sparse].sum())]  # fmt: skip
    return np.asarray(table, dtype=np.float64)


def _p_value(
    reference: np.ndarray, current: np.ndarray, sizes: tuple[float, float], min_expected: float
) -> float:
    """The test on both histograms scaled to ``sizes``, their numbers of independent draws."""
    reference, current = _shares(reference) * sizes[0], _shares(current) * sizes[1]
    table = _pooled(reference, current, min_expected)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)


def _psi(reference: np.ndarray, current: np.ndarray) -> float | None:
    if not reference.sum() or not current.sum():
        return None
    p = np.clip(_shares(reference), 1e-6, None)
    q = np.clip(_shares(current), 1e-6, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _median_bin(counts: np.ndarray) -> dict[str, float | None]:
    total = counts.sum()
    return {"median_bin": float(np.searchsorted(np.cumsum(counts), total / 2)) if total else None}


def compare_counts(
    name: str,
    reference: Hist,
    current: Hist,
    thresholds: DriftThresholds,
    tests: int,
    decides: bool = True,
    summary: Any = None,
) -> StatisticDrift:
    """One statistic: its histograms in the reference and now, each tested as its count over
    its design effect in independent draws; ``tests`` statistics share ``alpha``."""
    ref = reference.counts.astype(np.float64)
    cur = current.counts.astype(np.float64)
    distance = js_distance(ref, cur)
    sizes = (reference.total / reference.design_effect(), current.total / current.design_effect())
    p_value = _p_value(ref, cur, sizes, thresholds.min_expected)
    drifted = (
        decides
        and distance > thresholds.max_distance
        and p_value < thresholds.alpha / max(tests, 1)
    )
    describe = summary or _median_bin
    return StatisticDrift(
        name, distance, p_value, _psi(ref, cur), current.total, drifted,
        describe(ref), describe(cur),
    )  # fmt: skip


def _share_of(key: str, index: int) -> Any:
    """A summary: the share of the counts in bin ``index``, as ``key``."""

    def summary(counts: np.ndarray) -> dict[str, float | None]:
        total = counts.sum()
        return {key: float(counts[index] / total) if total else None}

    return summary


ORDERING_CHECKS = (
    "time_order", "duplicates", "seq_negative", "seq_gaps", "seq_order", "future_timestamps",
    "time_floor", "late_events",
)  # fmt: skip
"""The data contract's ordering checks whose violation rates a profile keeps."""


def contract_hists(report: Mapping[str, Any]) -> dict[str, Hist]:
    """A validation report's ordering checks (``ValidationReport.to_json``, what
    reports/validation.json holds) as two-bin histograms of rows: clean, violating. Checks
    that did not run (disabled, skipped for a missing column) are left out. The counts are
    rows, not sequences: the test takes them as independent draws, so the distance decides."""
    rows = int(report.get("rows_in") or 0)
    found = {}
    for check in report.get("checks") or []:
        if check["name"] in ORDERING_CHECKS and check["status"] != "skipped" and rows:
            bad = min(int(check.get("violating_rows") or 0), rows)
            counts = np.asarray([rows - bad, bad], np.int64)
            found[check["name"]] = Hist(counts, np.zeros(2, np.int64), np.zeros(2, np.int64))
    return found


def _top_share(counts: np.ndarray) -> dict[str, float | None]:
    """The share of scores in the upper half of the bins (probabilities >= 0.5; forecasts
    above the training mean): what a reviewer reads first of a score shift."""
    total = counts.sum()
    upper = counts[len(counts) // 2 :].sum()
    return {"upper_half_share": float(upper / total) if total else None}


def _repeats(counts: np.ndarray) -> dict[str, float | None]:
    """The share of transitions between known categories that repeat the previous event's
    (codes 1..top; out-of-vocabulary and "the rest" pairs are not one category)."""
    width = int(round(np.sqrt(len(counts))))
    pairs = counts.reshape(width, width)[1:-1, 1:-1]
    total = pairs.sum()
    return {"repeat_share": float(np.trace(pairs) / total) if total else None}


SUMMARIES: dict[str, Any] = {
    "order": _share_of("out_of_order_share", 1),
    "categorical": _share_of("oov_share", 0),
    "contract": _share_of("violating_share", 1),
    "transitions": _repeats,
    "score": _top_share,
}
"""What a statistic's report summarises, by its name's first part (default: the median
bin)."""


def compare(
    reference: Profile, current: Profile, thresholds: DriftThresholds
) -> list[StatisticDrift]:
    """Every statistic the two profiles share (``Profile.histograms``: the same name is the
    same bins), in that order."""
    ref, cur = reference.histograms(), current.histograms()
    shared = [name for name in ref if name in cur]
    decides = current.sequences >= thresholds.min_sequences
    return [
        compare_counts(
            name,
            ref[name],
            cur[name],
            thresholds,
            len(shared),
            decides,
            SUMMARIES.get(name.split(".")[0]),
        )  # fmt: skip
        for name in shared
    ]
