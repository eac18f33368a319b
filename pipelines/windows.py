"""Vectorised splitting, windowing, bucketing and padding of entity-grouped event arrays.

Events are held as flat, entity-grouped, time-ordered arrays plus group ``offsets`` (entity
``g`` owns rows ``offsets[g]:offsets[g+1]``). Every step here works on whole arrays with
``np.repeat``/``cumsum`` tricks and one fancy-index gather per output column, so its cost
grows with the number of events without a Python object or loop per entity or event.
Length buckets follow the bucketing/token-budget practice of fairseq and tf.data's
``bucket_by_sequence_length``; the ``optimal`` boundaries are the exact least-padding
solution found by dynamic programming over the length histogram.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.params.shard import BucketConfig, WindowConfig
from seqcore.arrays import group_ids, run_offsets, time_us

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def order_events(
    table: pa.Table, entity: str, time: str, seq: str | None
) -> tuple[pa.Table, np.ndarray, np.ndarray, int]:
    """Group by entity and order by (time, seq) within it; sort only what needs sorting.

    Validated events are already grouped and time-ordered, so the common case costs one
    adjacent comparison per column. Returns (table, offsets, times in us, entities reordered).
    """
    offsets = run_offsets(table.column(entity))
    keys = pc.cast(table.column(entity).take(pa.array(offsets[:-1])), pa.string())
    if pc.count_distinct(keys).as_py() != len(keys):  # some entity is not contiguous
        order = [(entity, "ascending"), (time, "ascending"), *([(seq, "ascending")] if seq else [])]
        perm = pc.sort_indices(table, sort_keys=order)
        table = table.take(perm)
        offsets = run_offsets(table.column(entity))
        moved = np.diff(perm.to_numpy()) != 1  # rows that no longer follow their predecessor
        moved[offsets[1:-1] - 1] = False
        changed = len(np.unique(group_ids(offsets)[1:][moved]))
        return table, offsets, time_us(table.column(time)), changed
    t = time_us(table.column(time))
    step = np.diff(t)
    bad = step < 0
    if seq:
        seq_values = table.column(seq).combine_chunks().to_numpy(zero_copy_only=False)
        bad |= (step == 0) & (np.diff(seq_values) < 0)
    bad[offsets[1:-1] - 1] = False  # a step from one entity to the next is no disorder
    if not bad.any():
        return table, offsets, t, 0
    gid = group_ids(offsets)
    reordered = len(np.unique(gid[1:][bad]))
    keys_table = pa.table({"g": gid, "t": t, **({"s": seq_values} if seq else {})})
    perm = pc.sort_indices(
        keys_table, sort_keys=[(k, "ascending") for k in keys_table.column_names]
    )
    return table.take(perm), offsets, t[perm.to_numpy()], reordered


# --------------------------------------------------------------------------- splits


def _fnv1a_scalar(data: bytes, h: int = _FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def stable_hash(keys: pa.Array, salt: str) -> np.ndarray:
    """Salted 64-bit FNV-1a of each key's UTF-8 string, finished with splitmix64.

    Deterministic across runs, processes and machines (unlike Python's ``hash``) and cheap to
    reimplement anywhere. The loop runs over character positions, not keys.
    """
    strings = pc.cast(keys, pa.string())
    if strings.null_count:
        raise ValueError("entity keys must not be null")
    strings = pa.concat_arrays([strings]) if strings.offset else strings  # normalise buffers
    n = len(strings)
    offs = np.frombuffer(strings.buffers()[1], dtype=np.int32)[: n + 1].astype(np.int64)
    data_buf = strings.buffers()[2]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    lens = np.diff(offs)
    h = np.full(n, _fnv1a_scalar(salt.encode()), dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    for p in range(int(lens.max()) if n else 0):
        active = np.flatnonzero(lens > p)
        h[active] = (h[active] ^ data[offs[active] + p].astype(np.uint64)) * prime
    # splitmix64 finaliser: FNV's high bits mix poorly for short keys.
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def entity_split(keys: pa.Array, fractions: tuple[float, ...], salt: str) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per key from its salted hash and the fractions."""
    u = (stable_hash(keys, salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    edges = np.cumsum(fractions)[:-1]
    return np.searchsorted(edges, u, side="right").astype(np.int8)


def time_cutoffs(t_us: np.ndarray, quantiles: tuple[float, float]) -> tuple[int, int]:
    """Cutoffs at quantiles of event time, snapped to actual event times."""
    if not len(t_us):
        raise ValueError("no events to derive time cutoffs from")
    q = np.quantile(t_us, quantiles, method="inverted_cdf")
    return int(q[0]), int(q[1])


def visible_counts(t_us: np.ndarray, offsets: np.ndarray, cutoff: int) -> np.ndarray:
    """Per entity, how many of its (time-ordered) events are at or before ``cutoff``."""
    if len(offsets) < 2:
        return np.zeros(0, dtype=np.int64)
    return np.add.reduceat(t_us <= cutoff, offsets[:-1], dtype=np.int64)


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Windows:
    """Examples as (entity group, start, end) with positions local to the entity; end exclusive."""

    group: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def length(self) -> np.ndarray:
        return self.end - self.start

    def __len__(self) -> int:
        return len(self.group)


def make_windows(n_visible: np.ndarray, min_end: np.ndarray, window: WindowConfig) -> Windows:
    """Windows of every entity given its visible prefix length and the bound its ends must pass.

    ``last``/``full``: one window ending at the prefix end, kept if that end is > min_end.
    ``sliding``: ends n, n - stride, ... while > min_end; of the windows starting at 0 only the
    longest is kept. All windows shorter than ``min_length`` are dropped.
    """
    n_visible = np.asarray(n_visible, dtype=np.int64)
    min_end = np.broadcast_to(np.asarray(min_end, dtype=np.int64), n_visible.shape)
    if window.policy in ("last", "full"):
        width = window.window_len
        group = np.flatnonzero((n_visible > min_end) & (n_visible > 0))
        end = n_visible[group]
        start = np.maximum(0, end - width)
    else:
        length, stride = window.length, window.stride
        span = np.maximum(n_visible - np.maximum(min_end, 0), 0)
        # Ends n - j*stride for j < ceil(span/stride); j0 is the first end <= length (start 0).
        count = -(-span // stride)
        first_at_zero = np.maximum(0, -(-(n_visible - length) // stride))
        count = np.minimum(count, first_at_zero + 1)
        group = np.repeat(np.arange(len(n_visible), dtype=np.int64), count)
        first = np.cumsum(count) - count
        j = np.arange(len(group), dtype=np.int64) - np.repeat(first, count)
        end = n_visible[group] - j * stride
        start = np.maximum(0, end - length)
    keep = (end - start) >= window.min_length
    return Windows(group[keep], start[keep], end[keep])


# --------------------------------------------------------------------------- buckets


def quantile_rank(n: int, q: float) -> int:
    """The 0-based rank of ``np.quantile(x, q, method="inverted_cdf")`` among ``n`` sorted
    values (the smallest value whose empirical CDF reaches ``q``): what lets parts that never
    meet find a quantile of their union by counting (``counted_quantiles``)."""
    virtual = n * q - 1  # numpy's virtual index for inverted_cdf (alpha = beta = 1)
    below = np.floor(virtual)
    rank = int(below) if virtual == below else int(below) + 1
    return min(max(rank, 0), n - 1)


def counted_quantiles(counts: np.ndarray, quantiles: Sequence[float]) -> list[int]:
    """``inverted_cdf`` quantiles of the values ``0..len(counts)-1`` held ``counts`` times."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    return [int(np.searchsorted(cum, quantile_rank(n, q), side="right")) for q in quantiles]


def _quantile_bounds(counts: np.ndarray, n_buckets: int) -> list[int]:
    qs = np.arange(1, n_buckets + 1) / n_buckets
    return sorted(set(counted_quantiles(counts, qs.tolist())))


def _optimal_bounds(counts: np.ndarray, n_buckets: int, window_len: int) -> list[int]:
    """Least total padded tokens with at most ``n_buckets`` bounds, the last one ``window_len``.

    Bounds only ever need to sit on observed lengths (lowering a bound to the longest length
    it holds never adds padding), so the DP runs over the m distinct lengths: O(k * m^2)
    with m <= window_len, a fraction of a second even for windows of thousands.
    """
    cand = np.unique(np.append(np.flatnonzero(counts), window_len)).astype(np.int64)
    counts = np.append(counts, np.zeros(max(0, window_len + 1 - len(counts)), np.int64))[cand]
    cum = np.concatenate(([0], np.cumsum(counts)))  # cum[i] = examples with length < cand[i]
    m = len(cand)
    k = min(n_buckets, m)
    # cost[j]: least padding of the examples with length <= cand[j] using exactly `level + 1`
    # bounds, the top one cand[j]. Exactly k is as good as at most k: with k <= m a bucket
    # holding two distinct candidates can always be split without adding padding.
    cost = (cand * cum[1:]).astype(np.float64)
    back = np.full((k, m), -1, dtype=np.int64)
    for level in range(1, k):
        new = np.full(m, np.inf)
        for j in range(level, m):
            # previous top bound cand[i], i < j; examples in (cand[i], cand[j]] pad to cand[j]
            total = cost[:j] + cand[j] * (cum[j + 1] - cum[1 : j + 1])
            i = int(np.argmin(total))
            new[j], back[level, j] = total[i], i
        cost = new
    bounds, j = [], m - 1
    for level in range(k - 1, -1, -1):
        bounds.append(int(cand[j]))
        j = int(back[level, j])
    return sorted(bounds)


def bucket_boundaries(
    train_lengths: np.ndarray, config: BucketConfig, window_len: int
) -> tuple[tuple[int, ...], str]:
    """Bucket upper bounds (the last always ``window_len``) and how they were derived."""
    lengths = np.asarray(train_lengths, dtype=np.int64)
    return bucket_boundaries_counted(np.bincount(lengths), config, window_len)


def bucket_boundaries_counted(
    length_counts: np.ndarray, config: BucketConfig, window_len: int
) -> tuple[tuple[int, ...], str]:
    """:func:`bucket_boundaries` from how many train examples have each length (index):
    the bounds depend on the lengths' counts only, which parts can add up."""
    if config.boundaries is not None:
        bounds = [b for b in config.boundaries if b < window_len] + [window_len]
        return tuple(bounds), "explicit"
    counts = np.asarray(length_counts, dtype=np.int64)
    if not counts.sum():
        return (window_len,), f"{config.method} (no train examples)"
    if config.method == "quantile":
        bounds = [b for b in _quantile_bounds(counts, config.n_buckets) if b < window_len]
        return (*bounds, window_len), "quantile of train example lengths"
    bounds = _optimal_bounds(counts, config.n_buckets, window_len)
    return tuple(bounds), "optimal (least padded tokens) over train example lengths"


def assign_buckets(lengths: np.ndarray, bounds: tuple[int, ...]) -> np.ndarray:
    """Index of the smallest bound >= each length."""
    return np.searchsorted(np.asarray(bounds), lengths, side="left")


def padded_tokens(lengths: np.ndarray, bounds: tuple[int, ...]) -> int:
    return int(np.asarray(bounds)[assign_buckets(lengths, bounds)].sum())


# --------------------------------------------------------------------------- gather


@dataclass(frozen=True)
class PaddedIndex:
    """Row indices of a padded (n, L) batch of windows; masked slots point at a valid row."""

    idx: np.ndarray  # (n, L) int64 global row index
    mask: np.ndarray  # (n, L) bool, True for real steps [0, length)
    limit: np.ndarray  # (n,) int64 global end of the visible prefix (targets stop before it)
    pad: np.ndarray  # (n, L) bool, ~mask

    @classmethod
    def build(
        cls, start: np.ndarray, length: np.ndarray, limit: np.ndarray, width: int
    ) -> PaddedIndex:
        pos = np.arange(width, dtype=np.int64)
        mask = pos < length[:, None]
        idx = np.where(mask, start[:, None] + pos, start[:, None])
        return cls(idx, mask, limit, ~mask)

    def take(self, values: np.ndarray, fill: float | int = 0) -> np.ndarray:
        """values[idx] with ``fill`` beyond each example's length: one gather."""
        out = values.take(self.idx)
        np.copyto(out, fill, where=self.pad, casting="unsafe")
        return out

    def take_next(self, values: np.ndarray, fill: float | int = 0) -> np.ndarray:
        """values of the next event at every step, ``fill`` where it is not visible."""
        nxt = self.idx + 1
        valid = self.mask & (nxt < self.limit[:, None])
        out = values[np.where(valid, nxt, self.idx)]
        out[~valid] = fill
        return out

    def take_ahead(self, values: np.ndarray, horizon: int, fill: float = np.nan) -> np.ndarray:
        """(n, L, H) values at steps t+1..t+H, ``fill`` where not visible or t is a pad.

        One gather of (n, L+H) values then a strided view, instead of an (n, L, H) index.
        """
        width = self.idx.shape[1]
        start = self.idx[:, :1]
        src = start + np.arange(width + horizon, dtype=np.int64)
        valid = src < self.limit[:, None]
        ahead = values[np.where(valid, src, start)]
        ahead[~valid] = fill
        view = np.lib.stride_tricks.sliding_window_view(ahead, horizon, axis=1)
        out = view[:, 1 : width + 1].copy()  # (n, L, H): out[:, t, h] = ahead[:, t + 1 + h]
        out[self.pad] = fill
        return out

    def target_offset(
        self, next_event: np.ndarray | None, forecast: np.ndarray | None
    ) -> np.ndarray:
        """(n,) offset from the window start of the latest event a written target refers to.

        Read off the target arrays themselves (next_event != 0, forecast not NaN), -1 if none,
        so the leakage check verifies what was written rather than what was intended.
        """
        n, width = self.mask.shape
        latest = np.full(n, -1, dtype=np.int64)
        planes = [] if next_event is None else [(next_event != 0, 1)]
        if forecast is not None:
            planes += [(~np.isnan(forecast[:, :, h]), h + 1) for h in range(forecast.shape[2])]
        for valid, ahead in planes:  # valid (n, L): the last valid step t refers to t + ahead
            last = width - 1 - valid[:, ::-1].argmax(axis=1)
            latest = np.maximum(latest, np.where(valid.any(axis=1), last + ahead, -1))
        return latest
