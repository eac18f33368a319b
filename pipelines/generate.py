"""Seeded, deterministic generator of an enterprise-like card-transaction event log.

The default data set of ``dvc repro`` (no download) and the 10M+ event benchmark input.
What it is built to exercise:

* heavy-tailed per-entity lengths (log-normal, clipped to [1, max_length]), the case that
  length bucketing is for (Krell et al. 2021, arXiv 2107.02027);
* an entity label that *needs order*: a share of accounts hold a block of k small online
  payments and one large payment. In "fraud" order (card testing: the small burst, then the
  large one) the label is 1; in "decoy" order (large first, then the small ones) it is 0.
  Both orders hold the same multiset of events, so an order-blind model (event counts,
  amount statistics) cannot tell them apart while a sequence model can;
* a next event that is partly predictable: merchant categories follow a sparse Markov chain
  mixed with each account's own preferences;
* a numeric series to forecast: log-amount is a per-account level plus an AR(1) process plus
  a merchant-category offset.

Work is vectorised over entities; the only Python loop runs over sequence positions (at
most ``max_length`` iterations), never over events, so the benchmark's large inputs stay
cheap to make. Faults (``pipelines.faults``) are planted into the clean arrays last; the
shared event columns and their Arrow table live in ``pipelines.card_events``. Output rows
are in arrival order (global event-time order), as a real event stream would be, so the
generator has no arrival column: ingest takes its row order as the arrival order
(``seqcore.schema.ARRIVAL``).

Column names: the entity key, time, sequence number and label are named by ``data.schema``;
the features always come out as ``FEATURE_COLUMNS`` (``amount``, ``mcc``, ``channel``,
``country``, ``device``), so a schema for generated data may map only those
(``pipelines.config.check_across_sections`` refuses any other when params are loaded).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.card_events import (
    CHANNELS,
    COUNTRIES,
    DEVICES,
    MCC_CODES,
    US_PER_S,
    EventArrays,
)
from pipelines.faults import apply_faults
from pipelines.params.data import GenerateConfig
from seqcore.config import parse_time
from seqcore.schema import SchemaConfig

FEATURE_COLUMNS = ("amount", "mcc", "channel", "country", "device")
"""The feature columns the generator emits, whatever ``data.schema`` names its other roles."""
NUMERIC_COLUMNS = ("amount",)
"""Of ``FEATURE_COLUMNS``, the numeric ones (the rest are categorical)."""

_SMALL_MCC = MCC_CODES.index("5815")  # digital goods: the card-testing burst
_LARGE_MCC = MCC_CODES.index("5732")  # electronics: the cash-out purchase
_ATM_MCC = MCC_CODES.index("6011")
_ONLINE = CHANNELS.index("online")
_WEB = DEVICES.index("web")


def _markov_matrix(rng: np.random.Generator, k: int) -> np.ndarray:
    """A sparse-ish transition matrix: each category has a few likely successors."""
    matrix = rng.dirichlet(np.full(k, 0.3), size=k)
    for i in range(k):  # k is 20: the loop is over categories, not events
        favourites = rng.choice(k, size=2, replace=False)
        matrix[i, favourites] += 1.5
    return matrix / matrix.sum(axis=1, keepdims=True)


def _sample_rows(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """Draw one category per row of a cumulative-probability matrix (n, K)."""
    u = rng.random(size=(cum.shape[0], 1))
    return np.minimum((u > cum).sum(axis=1), cum.shape[1] - 1).astype(np.int32)


def generate_arrays(cfg: GenerateConfig, seed: int) -> EventArrays:
    """Clean events, entity-major. See the module docstring for what they contain."""
    rng = np.random.default_rng(seed)
    n_ent = cfg.n_entities
    k_mcc = len(MCC_CODES)

    lengths = np.exp(np.log(cfg.median_length) + cfg.length_sigma * rng.standard_normal(n_ent))
    lengths = np.clip(np.rint(lengths), 1, cfg.max_length).astype(np.int64)
    offsets = np.zeros(n_ent + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n = int(offsets[-1])
    ent = np.repeat(np.arange(n_ent, dtype=np.int64), lengths)
    pos = np.arange(n, dtype=np.int64) - offsets[:-1][ent]

    # Per-account traits.
    preference = rng.dirichlet(np.full(k_mcc, 0.5), size=n_ent)  # (E, K)
    pref_cum = np.cumsum(preference, axis=1)
    level = rng.normal(3.2, 0.6, size=n_ent)  # log-amount level
    rate_per_day = np.exp(rng.normal(np.log(3.0), 0.7, size=n_ent))
    home = rng.choice(len(COUNTRIES), size=n_ent, p=_country_weights())
    start_us = parse_time("data.generate.start", cfg.start).timestamp() * US_PER_S
    span_s = cfg.span_days * 86400.0
    first_s = rng.random(n_ent) * span_s * 0.5  # entities start in the first half of the span

    markov_cum = np.cumsum(_markov_matrix(rng, k_mcc), axis=1)
    mcc_offset = rng.normal(0.0, 0.7, size=k_mcc)
    mcc = np.empty(n, dtype=np.int32)
    ar = np.empty(n, dtype=np.float64)
    # Loop over positions; each step is vectorised over the entities still that long.
    by_pos = np.argsort(pos, kind="stable")
    pos_counts = np.bincount(pos, minlength=int(lengths.max(initial=0)))
    cursor = 0
    for t, count in enumerate(pos_counts):
        idx = by_pos[cursor : cursor + count]
        cursor += count
        if t == 0:
            mcc[idx] = _sample_rows(rng, pref_cum[ent[idx]])
            ar[idx] = rng.normal(0.0, 0.5, size=count)
            continue
        follow = rng.random(count) < 0.7
        from_chain = _sample_rows(rng, markov_cum[mcc[idx - 1]])
        from_pref = _sample_rows(rng, pref_cum[ent[idx]])
        mcc[idx] = np.where(follow, from_chain, from_pref)
        ar[idx] = 0.6 * ar[idx - 1] + rng.normal(0.0, 0.4, size=count)

    amount = np.exp(level[ent] + mcc_offset[mcc] + ar)
    channel_p = np.tile([0.45, 0.25, 0.0, 0.30], (k_mcc, 1))
    channel_p[_ATM_MCC] = [0.0, 0.0, 1.0, 0.0]
    channel_p[_SMALL_MCC] = [0.05, 0.9, 0.0, 0.05]
    channel = _sample_rows(rng, np.cumsum(channel_p, axis=1)[mcc])
    device = _device_for(rng, channel)
    travelling = rng.random(n) < 0.04
    country = np.where(travelling, rng.integers(0, len(COUNTRIES), size=n), home[ent]).astype(
        np.int32
    )

    # Inter-event gaps (seconds): exponential around each account's rate.
    gaps = rng.exponential(86400.0 / rate_per_day[ent])
    label = np.zeros(n_ent, dtype=np.int64)
    _plant_patterns(rng, cfg, lengths, offsets, mcc, channel, device, amount, gaps, label)
    flip = rng.random(n_ent) < cfg.label_noise
    label = np.where(flip, 1 - label, label)

    gaps[offsets[:-1][lengths > 0]] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[offsets[:-1]][ent]
    # Squeeze long histories into the span so that every event lies in [start, start + span]
    # (a log has an end; timestamps must not run into the future of the validate stage).
    duration = np.zeros(n_ent)
    duration[lengths > 0] = elapsed[offsets[1:][lengths > 0] - 1]
    scale = np.minimum(1.0, (span_s - first_s) / np.maximum(duration, 1e-9))
    time_us = (start_us + (first_s[ent] + elapsed * scale[ent]) * US_PER_S).astype(np.int64)

    ids = rng.permutation(max(n_ent, 1))[:n_ent]
    return EventArrays(
        entity=ent,
        time=time_us,
        time_valid=np.ones(n, dtype=bool),
        arrival=time_us.copy(),
        seq=pos,
        amount=np.round(amount, 2),
        mcc=mcc,
        channel=channel,
        country=country,
        device=device,
        label=label[ent],
        entity_ids=[f"A{i:08d}" for i in ids],
        channels=list(CHANNELS),
    )


def _country_weights() -> np.ndarray:
    w = np.array([0.4, 0.12, 0.1, 0.08, 0.06, 0.06, 0.05, 0.05, 0.04, 0.04])
    return w / w.sum()


def _device_for(rng: np.random.Generator, channel: np.ndarray) -> np.ndarray:
    """Devices follow the channel: chip readers at POS, apps or web online, ATMs at ATMs."""
    table = np.array(
        [
            [0.85, 0.0, 0.0, 0.0, 0.15],  # pos
            [0.0, 0.55, 0.45, 0.0, 0.0],  # online
            [0.0, 0.0, 0.0, 1.0, 0.0],  # atm
            [0.3, 0.4, 0.0, 0.0, 0.3],  # contactless
        ]
    )
    return _sample_rows(rng, np.cumsum(table, axis=1)[channel])


def _plant_patterns(
    rng: np.random.Generator,
    cfg: GenerateConfig,
    lengths: np.ndarray,
    offsets: np.ndarray,
    mcc: np.ndarray,
    channel: np.ndarray,
    device: np.ndarray,
    amount: np.ndarray,
    gaps: np.ndarray,
    label: np.ndarray,
) -> None:
    """Overwrite a block of k small + 1 large payment near the end of chosen accounts.

    Fraud order (small burst, then large) sets label 1; decoy order (large, then burst)
    keeps 0. The block sits within the last ~64 events so that ``last`` windows see it.
    """
    burst = rng.integers(3, 7, size=lengths.size)  # k small payments
    eligible = lengths >= burst + 2
    chosen = eligible & (rng.random(lengths.size) < cfg.pattern_rate)
    fraud = chosen & (rng.random(lengths.size) < 0.5)
    label[fraud] = 1
    ents = np.flatnonzero(chosen)
    k = burst[ents]
    room = lengths[ents] - (k + 1)
    start = offsets[ents] + room - rng.integers(0, np.minimum(48, room) + 1)
    block_len = k + 1
    block = np.repeat(start - np.cumsum(block_len) + block_len, block_len) + np.arange(
        block_len.sum()
    )
    j = block - np.repeat(start, block_len)  # position inside the block: 0..k
    k_rep, fraud_rep = np.repeat(k, block_len), np.repeat(fraud[ents], block_len)
    is_large = np.where(fraud_rep, j == k_rep, j == 0)
    small, large = block[~is_large], block[is_large]
    mcc[small], mcc[large] = _SMALL_MCC, _LARGE_MCC
    channel[block], device[block] = _ONLINE, _WEB
    amount[small] = rng.uniform(0.5, 2.5, size=small.size)
    amount[large] = rng.uniform(800.0, 4000.0, size=large.size)
    inner = block[j > 0]
    gaps[inner] = rng.uniform(20.0, 300.0, size=inner.size)


DEFAULT_NAMES = {"entity": "account_id", "time": "event_time", "seq": "seq_no", "label": "label"}
"""The column names of the roles ``data.schema`` names, when it leaves them at their defaults."""


def role_names(schema: SchemaConfig) -> dict[str, str]:
    """The generator's column names for ``schema``: its own where the schema maps none."""
    return {
        "entity": schema.entity,
        "time": schema.time,
        "seq": schema.seq or DEFAULT_NAMES["seq"],
        "label": schema.label or DEFAULT_NAMES["label"],
    }


def generated_columns(names: dict[str, str] | None = None) -> list[str]:
    """The columns ``generate_events`` emits (before faults drop one) for these role names."""
    names = names or DEFAULT_NAMES
    return [names["entity"], names["time"], names["seq"], *FEATURE_COLUMNS, names["label"]]


def generate_events(
    cfg: GenerateConfig, seed: int, names: dict[str, str] | None = None
) -> pa.Table:
    """The generated events table, with the faults of ``cfg.faults`` planted."""
    arrays = generate_arrays(cfg, seed)
    return apply_faults(arrays, cfg, seed, names or DEFAULT_NAMES)
