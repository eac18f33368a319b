"""Sequence profiles: what the traffic a model sees looks like, as counts that add up.

A :class:`Profile` holds histograms over bins fixed in advance, so the profiles of parts,
batches or single requests merge by adding counts, and two profiles always compare bin by bin
(docs/architecture.md §10):

- ``length``: events per sequence, in power-of-two bins;
- ``gap``: seconds between consecutive events of a sequence, in half-decade bins;
- ``categorical``: per column, events by vocabulary id as the model encodes them (the
  ``CATEGORY_BINS`` most frequent training categories one by one, then the rest together,
  then out-of-vocabulary: an unseen category *is* drift, not noise);
- ``numeric``: per column, the standardised value the model sees, in half-standard-deviation
  bins;
- ``transitions``: first-order transitions of one categorical column, between its
  ``TRANSITION_IDS`` most frequent training categories, the rest and out-of-vocabulary: what
  changes when the order of events changes and every category's share stays the same;
- ``order``: events that arrived right after an event of their sequence that is later (by
  time, then sequence number), counted in the order the rows came in;
- ``score``: the model's score of each sequence (:func:`scores_of`), in twentieths of a
  probability or, for a forecast, half-standard-deviation bins of the standardised value.
  Only a model has it: the train stage scores the validation split for the reference
  (``Manifest.scores``).

Events of one sequence are not independent draws (one customer's home country, favourite
merchant), so each histogram also keeps, per bin, the sums over sequences that give the
variance of its counts between sequences (:class:`Hist`): what a drift test needs to know how
much evidence a batch of a few hundred long sequences really holds.

Counts are computed from encoded sequences (``seqcore.encoding``): what every scoring path
holds already, so profiling a request is no second pass over its raw events. Vocabulary ids
are in training-frequency order (``seqcore.features.vocab_of``), so "the k most frequent" is
"ids below k + 2" without another count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqcore.arrays import time_us
from seqcore.encoding import EncodedSequence
from seqcore.features import OOV_ID, TIME_DELTA, FeatureSpec
from seqcore.schema import SchemaConfig

LENGTH_EDGES = tuple(2**k for k in range(17))
"""Upper bounds (inclusive) of the length bins: 1, 2, 3-4, 5-8, ..., 32769-65536, then more."""
GAP_EDGES_S = tuple(float(10 ** (k / 2)) for k in range(15))
"""Lower bounds of the gap bins after the first ([0, 1 s)): 1 s, 3.2 s, 10 s, ..., 10^7 s."""
Z_EDGES = tuple(float(z) / 2 for z in range(-8, 9))
"""Bin edges of a standardised numeric value: -4, -3.5, ..., 4 (and beyond, each side)."""
CATEGORY_BINS = 64
DENSE_CELLS = 1 << 23
"""(sequence, bin) cells counted with one bincount up to this many, or four per item (8
bytes a cell); beyond, by sorting."""
TRANSITION_IDS = 16
PROBABILITY_EDGES = tuple(k / 20 for k in range(1, 20))
"""Inner edges of the score bins of a probability: [0, 0.05), [0.05, 0.1), ..., [0.95, 1]."""


BINS: dict[str, Any] = {
    "length_upper": list(LENGTH_EDGES),
    "gap_lower_s": list(GAP_EDGES_S),
    "z_edges": list(Z_EDGES),
    "category_top": CATEGORY_BINS,
    "transition_top": TRANSITION_IDS,
}
"""The bins a profile is counted over, recorded in it and checked when it is read."""


@dataclass(eq=False)
class Hist:
    """Counts per bin of items grouped in sequences, with what their spread between sequences
    needs: for sequence i holding c_ib of its n_i items in bin b, ``sq`` = sum_i c_ib^2,
    ``cross`` = sum_i n_i c_ib and ``size_sq`` = sum_i n_i^2. All add up under ``merge``."""

    counts: np.ndarray
    sq: np.ndarray
    cross: np.ndarray
    size_sq: int = 0

    @classmethod
    def zeros(cls, bins: int) -> Hist:
        return cls(np.zeros(bins, np.int64), np.zeros(bins, np.int64), np.zeros(bins, np.int64))

    @classmethod
    def of(cls, sequence: np.ndarray, bin_of: np.ndarray, bins: int) -> Hist:
        """Items by their sequence (a non-negative index, items of one sequence contiguous
        or not) and the bin they fall in (0 <= bin < ``bins``)."""
        if not len(bin_of):
            return cls.zeros(bins)
        sequence = np.asarray(sequence, dtype=np.int64)
        bin_of = np.asarray(bin_of, dtype=np.int64)
        if sequence.min() < 0 or bin_of.min() < 0 or bin_of.max() >= bins:
            raise ValueError(f"sequence indexes must be >= 0 and bins in [0, {bins})")
        key = sequence * bins + bin_of
        span = int(key.max()) + 1
        if span <= max(DENSE_CELLS, 4 * len(key)):  # counting beats sorting
            dense = np.bincount(key, minlength=span)
            cell = np.flatnonzero(dense)
            count = dense[cell]
        else:
            cell, count = np.unique(key, return_counts=True)
        seq_of_cell, bin_of_cell = np.divmod(cell, bins)
        _, size_index = np.unique(seq_of_cell, return_inverse=True)
        sizes = np.bincount(size_index, weights=count).astype(np.int64)
        return cls(
            np.bincount(bin_of_cell, weights=count, minlength=bins).astype(np.int64),
            np.bincount(bin_of_cell, weights=count * count, minlength=bins).astype(np.int64),
            np.bincount(bin_of_cell, weights=count * sizes[size_index], minlength=bins).astype(
                np.int64
            ),
            int(np.sum(sizes * sizes)),
        )

    @classmethod
    def counts_of(cls, bin_of: np.ndarray, bins: int) -> Hist:
        """Counts alone, without the spread between sequences (``sq``, ``cross`` and
        ``size_sq`` left 0: :meth:`design_effect` is then meaningless): what a distance
        needs, at a tenth of :meth:`of`'s cost."""
        counts = np.bincount(np.asarray(bin_of, dtype=np.int64), minlength=bins)
        if len(counts) > bins:
            raise ValueError(f"bins must be in [0, {bins})")
        return cls(counts.astype(np.int64), np.zeros(bins, np.int64), np.zeros(bins, np.int64))

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hist):
            return NotImplemented
        return self.size_sq == other.size_sq and all(
            np.array_equal(a, b)
            for a, b in (
                (self.counts, other.counts),
                (self.sq, other.sq),
                (self.cross, other.cross),
            )
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like the arrays it holds

    def merge(self, other: Hist) -> Hist:
        return Hist(
            self.counts + other.counts,
            self.sq + other.sq,
            self.cross + other.cross,
            self.size_sq + other.size_sq,
        )

    def design_effect(self) -> float:
        """How many times the chi-square statistic of these counts is inflated over that of
        as many independent items (the first-order Rao-Scott correction: the mean of the
        bins' design effects, each weighted as the statistic weights it; at least 1). Items
        of a sequence that are all alike give about the size-weighted mean sequence size
        (``size_sq / total``), items that vary within every sequence as they do between
        sequences give 1. Each bin's between-sequence variance is taken around the shares
        estimated from these counts, so it is divided by ``n - size_sq / n``, not ``n``."""
        n = self.total
        if n == 0:
            return 1.0
        effective_n = n - self.size_sq / n
        if effective_n <= 0:  # one sequence: nothing to tell its items apart by
            return max(1.0, self.size_sq / n)
        p = self.counts / n
        filled = p > 0
        if filled.sum() < 2:
            return max(1.0, self.size_sq / n)
        between = (self.sq - 2 * p * self.cross + p * p * self.size_sq)[filled]
        effects = between / (effective_n * p[filled])
        return max(1.0, float(effects.sum() / (filled.sum() - 1)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "sq": self.sq.tolist(),
            "cross": self.cross.tolist(),
            "size_sq": self.size_sq,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Hist:
        return cls(
            np.asarray(raw["counts"], np.int64),
            np.asarray(raw["sq"], np.int64),
            np.asarray(raw["cross"], np.int64),
            int(raw["size_sq"]),
        )


def category_codes(ids: np.ndarray, top: int) -> np.ndarray:
    """Vocabulary ids -> profile codes: 0 out-of-vocabulary, 1..top the ``top`` most frequent
    training categories, top + 1 every other category."""
    codes = np.where(ids >= top + 2, top + 1, ids - 1)
    return np.where(ids == OOV_ID, 0, codes).astype(np.int64)


def _hists(raw: Mapping[str, Any]) -> dict[str, Hist]:
    return {k: Hist.from_dict(v) for k, v in raw.items()}


@dataclass
class Profile:
    """Histograms of a set of sequences (module docstring); ``merge`` adds two up."""

    events: int = 0
    length: Hist = field(default_factory=lambda: Hist.zeros(len(LENGTH_EDGES) + 1))
    gap: Hist = field(default_factory=lambda: Hist.zeros(len(GAP_EDGES_S) + 1))
    categorical: dict[str, Hist] = field(default_factory=dict)
    numeric: dict[str, Hist] = field(default_factory=dict)
    transition_column: str | None = None
    transitions: Hist | None = None
    """Counts of (code before, code after) pairs, flattened: (TRANSITION_IDS + 2)^2 bins."""
    order: Hist | None = None
    """Events after their sequence's first, in arrival order: in order with the event of
    their sequence that arrived before them (bin 0) or behind it (bin 1); None where the
    arrival order is unknown."""
    score: Hist | None = None
    """The model's score per sequence (:func:`score_hist`); None without a model."""
    contract: dict[str, Hist] = field(default_factory=dict)
    """Per ordering check of the data contract, the rows it ran on: clean (bin 0) and
    violating (bin 1), as the validate stage counted them (``data_checks.drift.contract_hists``);
    empty where no check ran."""

    @property
    def sequences(self) -> int:
        """Non-empty sequences: each is counted once in the length histogram."""
        return self.length.total

    def histograms(self) -> dict[str, Hist]:
        """Every statistic the profile holds, by the name drift reports use: ``length``,
        ``gap``, ``order``, ``categorical.<col>``, ``numeric.<col>``, ``transitions.<col>``,
        ``score``, ``contract.<check>``."""
        found = {"length": self.length, "gap": self.gap}
        if self.order is not None:
            found["order"] = self.order
        found |= {f"categorical.{k}": v for k, v in sorted(self.categorical.items())}
        found |= {f"numeric.{k}": v for k, v in sorted(self.numeric.items())}
        if self.transitions is not None:
            found[f"transitions.{self.transition_column}"] = self.transitions
        if self.score is not None:
            found["score"] = self.score
        found |= {f"contract.{k}": v for k, v in sorted(self.contract.items())}
        return found

    def merge(self, other: Profile) -> Profile:
        def add(a: dict[str, Hist], b: dict[str, Hist]) -> dict[str, Hist]:
            return {k: a[k].merge(b[k]) if k in a and k in b else a.get(k) or b[k]
                    for k in sorted({*a, *b})}  # fmt: skip

        def either(a: Hist | None, b: Hist | None) -> Hist | None:
            return b if a is None else a if b is None else a.merge(b)

        return Profile(
            events=self.events + other.events,
            length=self.length.merge(other.length),
            gap=self.gap.merge(other.gap),
            categorical=add(self.categorical, other.categorical),
            numeric=add(self.numeric, other.numeric),
            transition_column=self.transition_column or other.transition_column,
            transitions=either(self.transitions, other.transitions),
            order=either(self.order, other.order),
            score=either(self.score, other.score),
            contract=add(self.contract, other.contract),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences,
            "events": self.events,
            "bins": BINS,
            "length": self.length.to_dict(),
            "gap": self.gap.to_dict(),
            "categorical": {k: v.to_dict() for k, v in sorted(self.categorical.items())},
            "numeric": {k: v.to_dict() for k, v in sorted(self.numeric.items())},
            "transition_column": self.transition_column,
            "transitions": None if self.transitions is None else self.transitions.to_dict(),
            "order": None if self.order is None else self.order.to_dict(),
            **({} if self.score is None else {"score": self.score.to_dict()}),
            **(
                {"contract": {k: v.to_dict() for k, v in sorted(self.contract.items())}}
                if self.contract
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Profile:
        """Refuses a profile over other bins than this code's (ValueError): it would compare
        bin by bin with the wrong ones."""
        if raw.get("bins") != BINS:
            raise ValueError(
                "profiled over other bins than this version of seqops uses; rebuild the "
                "shards (dvc repro shard) and retrain, or monitor with the seqops that wrote it"
            )
        transitions, order, score = raw.get("transitions"), raw.get("order"), raw.get("score")
        return cls(
            events=int(raw["events"]),
            length=Hist.from_dict(raw["length"]),
            gap=Hist.from_dict(raw["gap"]),
            categorical=_hists(raw["categorical"]),
            numeric=_hists(raw["numeric"]),
            transition_column=raw.get("transition_column"),
            transitions=None if transitions is None else Hist.from_dict(transitions),
            order=None if order is None else Hist.from_dict(order),
            score=None if score is None else Hist.from_dict(score),
            contract=_hists(raw.get("contract") or {}),
        )


def transition_column(schema: SchemaConfig) -> str | None:
    """The column whose transitions a profile counts: the next_event target's, else the
    first categorical column (none without categorical columns)."""
    return schema.next_event or (schema.categorical[0] if schema.categorical else None)


def _bins(edges: Sequence[float], values: np.ndarray, side: str) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), values, side=side)  # type: ignore[call-overload]


def profile_events(
    offsets: np.ndarray,
    t_us: np.ndarray,
    cat: np.ndarray,
    num: np.ndarray,
    spec: FeatureSpec,
    transition_column: str | None,
    spread: bool = True,
) -> Profile:
    """The profile of encoded events grouped into sequences: ``offsets`` (G + 1, from 0)
    bound each sequence's rows of ``t_us`` (N,), ``cat`` (N, C) vocabulary ids in
    ``spec.categorical`` order and ``num`` (N, F) standardised values in
    ``spec.numeric_order``, each sequence time-ordered. Empty sequences are left out.
    ``spread=False``: counts alone (:meth:`Hist.counts_of`), for distances only."""

    def hist(sequence: np.ndarray, bin_of: np.ndarray, bins: int) -> Hist:
        return Hist.of(sequence, bin_of, bins) if spread else Hist.counts_of(bin_of, bins)

    sizes = np.diff(offsets)
    n = int(offsets[-1]) if len(offsets) else 0
    seq_of = np.repeat(np.arange(len(sizes)), sizes)
    kept = sizes[sizes > 0]
    follows = seq_of[1:] == seq_of[:-1]  # event i + 1 continues the sequence of event i
    gap_s = np.clip(np.diff(t_us)[follows] / 1e6, 0.0, None)
    pair_seq = seq_of[1:][follows]
    profile = Profile(
        events=n,
        length=hist(
            np.arange(len(kept)), _bins(LENGTH_EDGES, kept, "left"), len(LENGTH_EDGES) + 1
        ),  # fmt: skip
        gap=hist(pair_seq, _bins(GAP_EDGES_S, gap_s, "right"), len(GAP_EDGES_S) + 1),
    )
    for i, col in enumerate(spec.categorical):
        codes = category_codes(cat[:, i], CATEGORY_BINS)
        profile.categorical[col] = hist(seq_of, codes, CATEGORY_BINS + 2)
    for i, col in enumerate(spec.numeric_order):
        if col != TIME_DELTA:  # the gap histogram says it in seconds
            profile.numeric[col] = hist(seq_of, _bins(Z_EDGES, num[:, i], "right"),
                                           len(Z_EDGES) + 1)  # fmt: skip
    if transition_column is not None and transition_column in spec.categorical:
        codes = category_codes(cat[:, spec.categorical.index(transition_column)], TRANSITION_IDS)
        width = TRANSITION_IDS + 2
        pairs = codes[:-1][follows] * width + codes[1:][follows]
        profile.transition_column = transition_column
        profile.transitions = hist(pair_seq, pairs, width * width)
    return profile


def profile_sequences(
    sequences: Sequence[EncodedSequence],
    spec: FeatureSpec,
    transition_column: str | None,
    spread: bool = True,
) -> Profile:
    """:func:`profile_events` of sequences as ``seqcore.encoding.encode`` gives them."""
    sizes = [len(s.event_time_us) for s in sequences]
    return profile_events(
        np.concatenate(([0], np.cumsum(sizes))).astype(np.int64),
        np.concatenate([s.event_time_us for s in sequences]) if sequences else np.zeros(0),
        np.concatenate([s.cat_ids for s in sequences])
        if sequences
        else np.zeros((0, len(spec.categorical)), np.int32),
        np.concatenate([s.num for s in sequences])
        if sequences
        else np.zeros((0, len(spec.numeric_order)), np.float32),
        spec,
        transition_column,
        spread,
    )


def arrival_order(group: np.ndarray, t_us: np.ndarray, seq: np.ndarray | None) -> Hist:
    """Events after the first of their group, in order (bin 0) or behind the group's previous
    event by (time, seq) (bin 1): rows in the order they arrived, ``group`` a non-negative
    int key. Arrivals at times 10, 5, 6, 7 count one event behind: the 5."""
    if len(group) < 2:
        return Hist.zeros(2)
    order = np.argsort(group, kind="stable")  # each group's rows, still in arrival order
    g, t = np.asarray(group)[order], t_us[order]
    same = g[1:] == g[:-1]
    dt = np.diff(t)
    behind = dt < 0
    if seq is not None:
        behind |= (dt == 0) & (np.diff(np.asarray(seq)[order]) < 0)
    return Hist.of(g[1:][same], behind[same].astype(np.int64), 2)


def table_arrival(table: pa.Table, schema: SchemaConfig) -> Hist:
    """:func:`arrival_order` of an events table's rows as they stand (its row order taken as
    the order they arrived)."""
    entity = table.column(schema.entity).combine_chunks()
    seq = None
    if schema.seq and schema.seq in table.column_names:
        seq = pc.cast(table.column(schema.seq), pa.int64()).combine_chunks()
    return arrival_order(
        pc.dictionary_encode(entity).indices.to_numpy(zero_copy_only=False),
        time_us(table.column(schema.time)),
        None if seq is None else seq.to_numpy(zero_copy_only=False),
    )


def scores_of(task: str, outputs: Sequence[np.ndarray]) -> np.ndarray:
    """One score per sequence from the model's outputs (``SequenceScorer.forward_sequences``,
    ``pipelines.predict.predict_split``), as the response's ``score`` says it: classify, the
    last class's probability (the positive one of a binary label); next_event, the
    probability of the predicted event after the last one; forecast, the first step's
    forecast after the last event, standardised (its bins are in standard deviations)."""
    if not len(outputs):
        return np.zeros(0)
    if task == "classify":
        return np.asarray([out[-1] for out in outputs], dtype=np.float64)
    if task == "next_event":
        return np.asarray([out[-1].max() for out in outputs], dtype=np.float64)
    return np.asarray([out[-1][0] for out in outputs], dtype=np.float64)


def score_codes(task: str, scores: np.ndarray) -> tuple[np.ndarray, int]:
    """The bins of :func:`scores_of`'s scores, and how many there are."""
    if task == "forecast":
        return _bins(Z_EDGES, np.nan_to_num(scores), "right"), len(Z_EDGES) + 1
    return _bins(PROBABILITY_EDGES, scores, "right"), len(PROBABILITY_EDGES) + 1


def score_hist(task: str, scores: np.ndarray) -> Hist:
    """Scores by bin, one score per sequence."""
    codes, bins = score_codes(task, scores)
    return Hist.of(np.arange(len(codes)), codes, bins)
