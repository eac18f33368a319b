"""Per-event preprocessing fitted on the training split and applied identically everywhere.

``fit_features`` learns categorical vocabularies and numeric standardisation statistics from
training rows only; ``FeatureSpec`` stores them JSON-safe in the shard manifest
(docs/architecture.md §3) so that training and online serving apply exactly the same mapping to raw
events. Vocabularies follow the usual PAD=0 / OOV=1 convention (torchtext, fairseq's
``Dictionary``), then categories by descending training frequency. Everything is vectorised:
categorical columns are dictionary-encoded once and only the (small) dictionary is mapped to
vocabulary ids, so no Python object is created per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqcore.arrays import run_offsets, time_us
from seqcore.config import fail
from seqcore.schema import SchemaConfig

PAD_ID = 0
OOV_ID = 1
STD_FLOOR = 1e-6
TIME_DELTA = "time_delta"

Events: TypeAlias = pa.Table | Mapping[str, Any]


@dataclass(frozen=True)
class FeatureConfig:
    """Preprocessing fitted on the training split and stored in the manifest."""

    numeric_transform: Mapping[str, str] = field(default_factory=dict)
    """Per numeric column: ``none`` or ``log1p`` (sign-preserving), then standardised."""
    time_delta: bool = True
    """Add log1p(seconds since the entity's previous event), standardised."""
    min_category_count: int = 1
    """Categories seen fewer times than this in train map to OOV."""

    def __post_init__(self) -> None:
        transforms = dict(self.numeric_transform)
        for col, t in transforms.items():
            if t not in ("none", "log1p"):
                raise fail(f"shard.features.numeric_transform.{col}", t, "expected none or log1p")
        object.__setattr__(self, "numeric_transform", transforms)
        if self.min_category_count < 1:
            raise fail("shard.features.min_category_count", self.min_category_count, "must be >= 1")


def column(events: Events, name: str) -> pa.Array:
    """One column as a single contiguous Arrow array (chunks combined, dictionaries unified)."""
    col = events.column(name) if isinstance(events, pa.Table) else events[name]
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not isinstance(col, pa.Array):
        col = pa.array(np.asarray(col)) if isinstance(col, np.ndarray) else pa.array(col)
    return col


def category_codes(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(per-row dictionary code, -1 for null; the dictionary's values as strings)."""
    if not pa.types.is_dictionary(values.type):
        values = pc.dictionary_encode(values)
    indices = values.indices
    if indices.type not in (pa.int32(), pa.int64()):  # int8/uint* indices: room for -1 and +1
        indices = pc.cast(indices, pa.int64())
    codes = pc.fill_null(indices, -1).to_numpy(zero_copy_only=False)
    return codes, pc.cast(values.dictionary, pa.string())


def time_deltas(t_us: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """log1p(seconds since the entity's previous event); 0 at each entity's first event."""
    delta = np.empty(len(t_us), dtype=np.float64)
    if len(t_us):
        delta[0] = 0.0
        np.subtract(t_us[1:], t_us[:-1], out=delta[1:])
        delta[offsets[:-1]] = 0.0  # first event of every entity has no predecessor
        # Serving may receive slightly disordered events; a negative gap carries no signal.
        np.clip(delta, 0.0, None, out=delta)
        np.log1p(delta / 1e6, out=delta)
    return delta


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.copysign(np.log1p(np.abs(x)), x)


def numeric_values(values: pa.Array) -> np.ndarray:
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise TypeError(f"numeric feature has type {values.type}; expected an integer or float")
    if values.type != pa.float64():
        values = pc.cast(values, pa.float64())
    return values.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class FeatureSpec:
    """Fitted preprocessing: vocabularies and standardisation statistics (train split only)."""

    entity: str
    time: str
    categorical: tuple[str, ...]
    vocab: Mapping[str, tuple[str, ...]]
    """Per categorical column: category strings in id order, the first one having id 2."""
    numeric: tuple[str, ...]
    numeric_transform: Mapping[str, str]
    mean: Mapping[str, float]
    std: Mapping[str, float]
    """Per numeric feature (and ``time_delta``): statistics of the transformed train values."""
    time_delta: bool

    @property
    def numeric_order(self) -> tuple[str, ...]:
        return (*self.numeric, *((TIME_DELTA,) if self.time_delta else ()))

    def vocab_size(self, column: str) -> int:
        return len(self.vocab[column]) + 2

    # ----------------------------------------------------------------- apply

    def category_ids(self, column: str, values: pa.Array) -> np.ndarray:
        """Vocab ids (int32) of one categorical column; unknown or null values get OOV."""
        codes, dictionary = category_codes(values)
        known = pc.index_in(dictionary, value_set=pa.array(self.vocab[column], pa.string()))
        # Map the dictionary once, then every row by its code: one gather per column.
        lookup = pc.fill_null(pc.add(known, 2), OOV_ID).to_numpy(zero_copy_only=False)
        lookup = np.append(lookup.astype(np.int32), np.int32(OOV_ID))  # code -1 (null) -> OOV
        return lookup[codes]

    def standardise(self, name: str, raw: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Transform then standardise one numeric feature; non-finite values become ``fill``."""
        values = np.asarray(raw, dtype=np.float64)[:, None]
        return self.standardise_columns((name,), values, fill)[:, 0]

    def standardise_columns(
        self, names: tuple[str, ...], raw: np.ndarray, fill: float = 0.0
    ) -> np.ndarray:
        """:meth:`standardise` of several features at once: ``raw`` (N, F) float64 in
        ``names`` order -> (N, F) float32."""
        cache: dict[tuple[str, ...], tuple[np.ndarray, ...]]
        cache = self.__dict__.setdefault("_standardise_columns", {})
        if names not in cache:
            logged = [self.numeric_transform.get(n, "none") == "log1p" for n in names]
            cache[names] = (
                np.array(logged, dtype=bool),
                np.array([self.mean[n] for n in names], dtype=np.float64),
                np.array([self.std[n] for n in names], dtype=np.float64),
            )
        logged_mask, mean, std = cache[names]
        if logged_mask.all():  # one feature (the shard's per-column path): no extra copy
            x = _signed_log1p(raw)
        elif logged_mask.any():
            x = np.where(logged_mask, _signed_log1p(raw), raw)
        else:
            x = raw
        z = (x - mean) / std
        return np.where(np.isfinite(z), z, fill).astype(np.float32)

    def inverse_standardise(self, name: str, z: np.ndarray) -> np.ndarray:
        """Map standardised values (e.g. forecasts) back to the column's original units."""
        x = np.asarray(z, dtype=np.float64) * self.std[name] + self.mean[name]
        if self.numeric_transform.get(name, "none") == "log1p":
            x = np.sign(x) * np.expm1(np.abs(x))
        return x

    def transform(
        self, events: Events, *, offsets: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Events grouped by entity and time-ordered -> (cat_ids (N, C) int32, num (N, F) float32).

        ``offsets`` (entity boundaries, length G+1) skips re-deriving them from the entity column.
        Both outputs are column-major so that per-column gathers read contiguous memory.
        """
        n = len(events) if isinstance(events, pa.Table) else len(column(events, self.time))
        cat = np.empty((len(self.categorical), n), dtype=np.int32)
        for i, col in enumerate(self.categorical):
            cat[i] = self.category_ids(col, column(events, col))
        num = np.empty((len(self.numeric_order), n), dtype=np.float32)
        for i, col in enumerate(self.numeric):
            num[i] = self.standardise(col, numeric_values(column(events, col)))
        if self.time_delta:
            if offsets is None:
                offsets = run_offsets(column(events, self.entity))
            delta = time_deltas(time_us(column(events, self.time)), offsets)
            num[len(self.numeric)] = self.standardise(TIME_DELTA, delta)
        return cat.T, num.T

    # ----------------------------------------------------------------- (de)serialise

    def to_dict(self) -> dict[str, Any]:
        return {
            "pad_id": PAD_ID,
            "oov_id": OOV_ID,
            "entity": self.entity,
            "time": self.time,
            "categorical": {
                col: {"vocab": list(self.vocab[col]), "size": self.vocab_size(col)}
                for col in self.categorical
            },
            "categorical_order": list(self.categorical),
            "numeric": {
                name: {
                    "transform": self.numeric_transform.get(name, "none"),
                    "mean": self.mean[name],
                    "std": self.std[name],
                }
                for name in self.numeric_order
            },
            "numeric_order": list(self.numeric_order),
            "time_delta": self.time_delta,
            "std_floor": STD_FLOOR,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSpec:
        order = list(raw["numeric_order"])
        has_delta = bool(raw["time_delta"])
        numeric = tuple(order[:-1] if has_delta else order)
        stats = raw["numeric"]
        return cls(
            entity=raw["entity"],
            time=raw["time"],
            categorical=tuple(raw["categorical_order"]),
            vocab={c: tuple(raw["categorical"][c]["vocab"]) for c in raw["categorical_order"]},
            numeric=numeric,
            numeric_transform={k: stats[k]["transform"] for k in order},
            mean={k: float(stats[k]["mean"]) for k in order},
            std={k: float(stats[k]["std"]) for k in order},
            time_delta=has_delta,
        )


def vocab_counts(values: pa.Array, rows: np.ndarray | None) -> dict[str, int]:
    """How many (training) rows hold each category, by its string: counts of several parts
    add up, and ``vocab_of`` turns the total into the vocabulary."""
    codes, dictionary = category_codes(values)
    if rows is not None:
        codes = codes[rows]
    counts = np.bincount(codes + 1, minlength=len(dictionary) + 1)[1:]  # code -1 is null
    # Distinct dictionary entries can share a string (e.g. 1 and "1"): merge them by string.
    table = pa.table({"value": dictionary, "count": pa.array(counts, pa.int64())})
    table = (
        table.filter(pc.is_valid(table["value"])).group_by("value").aggregate([("count", "sum")])
    )
    table = table.filter(pc.greater(table["count_sum"], 0))
    return dict(zip(table["value"].to_pylist(), table["count_sum"].to_pylist(), strict=True))


def vocab_of(counts: Mapping[str, int], min_count: int) -> tuple[str, ...]:
    """Categories seen at least ``min_count`` times, most frequent first, ties by value
    (code point order, which is UTF-8 byte order: Arrow's string sort)."""
    kept = [(value, n) for value, n in counts.items() if n >= min_count]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return tuple(value for value, _ in kept)


def _fit_vocab(values: pa.Array, rows: np.ndarray | None, min_count: int) -> tuple[str, ...]:
    return vocab_of(vocab_counts(values, rows), min_count)


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of a feature's finite values: what its
    standardisation needs, mergeable over parts (Chan, Golub and LeVeque, 1979)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        finite = x[np.isfinite(x)]
        if not len(finite):
            return cls()
        mean = float(finite.mean())
        # As np.std computes it: the stats of one part are today's single-table stats.
        return cls(len(finite), mean, float(np.sum(np.square(finite - mean))))

    def merge(self, other: Moments) -> Moments:
        if not other.n:
            return self
        if not self.n:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        return Moments(n, mean, self.m2 + other.m2 + delta * delta * self.n * other.n / n)

    def stats(self) -> tuple[float, float]:
        """(mean, std) for standardising, the std floored at ``STD_FLOOR``; (0, 1) if empty."""
        if not self.n:
            return 0.0, 1.0
        return self.mean, max(float(np.sqrt(self.m2 / self.n)), STD_FLOOR)


def _fit_stats(x: np.ndarray) -> tuple[float, float]:
    return Moments.of(x).stats()


@dataclass(frozen=True)
class FeatureCounts:
    """What fitting learns from some training rows, in a form that parts add up (``merge``)."""

    vocab: Mapping[str, Mapping[str, int]]
    moments: Mapping[str, Moments]

    @classmethod
    def of(
        cls,
        events: Events,
        schema: SchemaConfig,
        config: FeatureConfig,
        *,
        rows: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ) -> FeatureCounts:
        """See ``fit_features``."""
        vocab = {col: vocab_counts(column(events, col), rows) for col in schema.categorical}
        moments: dict[str, Moments] = {}
        for col in schema.numeric:
            x = numeric_values(column(events, col))
            x = x if rows is None else x[rows]
            if config.numeric_transform.get(col, "none") == "log1p":
                x = _signed_log1p(x)
            moments[col] = Moments.of(x)
        if config.time_delta:
            if offsets is None:
                offsets = run_offsets(column(events, schema.entity))
            delta = time_deltas(time_us(column(events, schema.time)), offsets)
            moments[TIME_DELTA] = Moments.of(delta if rows is None else delta[rows])
        return cls(vocab, moments)

    @classmethod
    def merge(cls, parts: list[FeatureCounts]) -> FeatureCounts:
        """The counts of the parts' union, parts in order (moments merge left to right)."""
        vocab: dict[str, dict[str, int]] = {}
        moments: dict[str, Moments] = {}
        for part in parts:
            for col, counts in part.vocab.items():
                total = vocab.setdefault(col, {})
                for value, n in counts.items():
                    total[value] = total.get(value, 0) + n
            for name, m in part.moments.items():
                moments[name] = moments.get(name, Moments()).merge(m)
        return cls(vocab, moments)

    def spec(self, schema: SchemaConfig, config: FeatureConfig) -> FeatureSpec:
        transform = {col: config.numeric_transform.get(col, "none") for col in schema.numeric}
        if config.time_delta:
            transform[TIME_DELTA] = "none"
        stats = {name: self.moments.get(name, Moments()).stats() for name in transform}
        return FeatureSpec(
            entity=schema.entity,
            time=schema.time,
            categorical=tuple(schema.categorical),
            vocab={
                col: vocab_of(self.vocab.get(col, {}), config.min_category_count)
                for col in schema.categorical
            },
            numeric=tuple(schema.numeric),
            numeric_transform=transform,
            mean={name: s[0] for name, s in stats.items()},
            std={name: s[1] for name, s in stats.items()},
            time_delta=config.time_delta,
        )


def fit_features(
    events: Events,
    schema: SchemaConfig,
    config: FeatureConfig,
    *,
    rows: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> FeatureSpec:
    """Fit vocabularies and statistics on training events.

    ``events`` are grouped by entity and time-ordered. ``rows`` (a boolean mask) selects the
    training rows when ``events`` holds every split: only they are counted. With a time split
    the training rows of an entity are a prefix, so each one's time delta uses train rows only.
    """
    counts = FeatureCounts.of(events, schema, config, rows=rows, offsets=offsets)
    return counts.spec(schema, config)
