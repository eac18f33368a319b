"""How much of the bucketed shards is padding, against padding every example to the global max.

Pad tokens as a fraction of all (padded) tokens, for the examples the shard stage's default
windowing makes (``last``, length 256, min_length 2) out of two heavy-tailed length sets:

* ``generator``: the seeded generator with params.yaml's defaults (3000 accounts), split by
  the same salted entity hash as the shard stage;
* ``lognormal-1M``: one million sequences from the same log-normal law (median 30,
  sigma 1.25, clipped to [1, 3000]), a random 80% as the training split.

Boundaries are derived from the training examples only, as the shard stage derives them,
and the pad fraction is reported on the training split (where ``optimal`` is provably the
least padding for its number of buckets) and on every split together (what the shards hold).
Schemes: one bucket at ``window_len`` (the global max), ``quantile`` and ``optimal`` for
several ``n_buckets``. Target: at most 5% padding with the default buckets (params.yaml).
The practice it follows: length bucketing (Krell et al. 2021, arXiv 2107.02027; fairseq's
token-budget batches); ../shared/PERFORMANCE.md for the figures it is read against.

    .venv/bin/python benchmarks/padding.py [--synthetic 1000000]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa

from benchmarks._common import PARAMS, print_table, verdict
from pipelines.config import load_params
from pipelines.generate import generate_arrays
from pipelines.params.shard import BucketConfig, WindowConfig
from pipelines.windows import bucket_boundaries, entity_split, make_windows, padded_tokens

N_BUCKETS = (8, 12, 16, 24, 32)
TARGET_PAD = 0.05


@dataclass(frozen=True)
class WindowLengths:
    """Lengths of the examples one data set yields, and which are in the training split."""

    name: str
    length: np.ndarray  # (n,) int64
    is_train: np.ndarray  # (n,) bool


@dataclass(frozen=True)
class PadRow:
    dataset: str
    scheme: str
    n_buckets: int
    bounds: tuple[int, ...]
    pad_train: float
    """Pad tokens / all tokens over the training examples (the boundaries' fit set)."""
    pad_all: float
    """The same over every split: what the shards hold."""
    tokens_vs_max: float
    """Padded tokens as a share of padding every example to ``window_len``."""


def windows_of(name: str, seq_lengths: np.ndarray, train: np.ndarray, window: WindowConfig):
    """The shard stage's windows of whole sequences (entity split: the full prefix visible)."""
    win = make_windows(seq_lengths, np.zeros_like(seq_lengths), window)
    return WindowLengths(name, win.length.astype(np.int64), train[win.group])


def generator_lengths(seed: int | None = None) -> WindowLengths:
    """Example lengths of the default generated data set, split exactly as the shard stage."""
    params = load_params(PARAMS)
    seed = params.seed if seed is None else seed
    arrays = generate_arrays(params.data.generate, seed)
    seq_lengths = np.bincount(arrays.entity, minlength=len(arrays.entity_ids)).astype(np.int64)
    keys = pa.array(arrays.entity_ids, pa.string())
    split = entity_split(keys, params.shard.split.fractions, f"seqops-split:{seed}")
    return windows_of("generator", seq_lengths, split == 0, params.shard.window)


def lognormal_lengths(
    n: int,
    median: float = 30.0,
    sigma: float = 1.25,
    max_length: int = 3000,
    train_fraction: float = 0.8,
    seed: int = 0,
    window: WindowConfig | None = None,
) -> WindowLengths:
    """Example lengths from ``n`` log-normal sequence lengths (the generator's length law)."""
    rng = np.random.default_rng(seed)
    raw = np.exp(np.log(median) + sigma * rng.standard_normal(n))
    seq_lengths = np.clip(np.rint(raw), 1, max_length).astype(np.int64)
    train = rng.random(n) < train_fraction
    label = f"lognormal-{n / 1e6:g}M" if n >= 1_000_000 else f"lognormal-{n}"
    return windows_of(label, seq_lengths, train, window or WindowConfig())


def _pad(lengths: np.ndarray, bounds: tuple[int, ...]) -> float:
    padded = padded_tokens(lengths, bounds)
    return (padded - int(lengths.sum())) / padded if padded else 0.0


def pad_rows(
    data: WindowLengths, window_len: int, n_buckets: tuple[int, ...] = N_BUCKETS
) -> list[PadRow]:
    """Pad fractions of the global max, then quantile and optimal buckets per ``n_buckets``."""
    train = data.length[data.is_train]
    global_tokens = len(data.length) * window_len

    def row(scheme: str, n: int, bounds: tuple[int, ...]) -> PadRow:
        share = padded_tokens(data.length, bounds) / global_tokens
        return PadRow(
            data.name, scheme, n, bounds, _pad(train, bounds), _pad(data.length, bounds), share
        )

    rows = [row("global max", 1, (window_len,))]
    for method in ("quantile", "optimal"):
        for n in n_buckets:
            bounds, _ = bucket_boundaries(
                train, BucketConfig(method=method, n_buckets=n), window_len
            )
            rows.append(row(method, n, bounds))
    return rows


def default_row(data: WindowLengths) -> PadRow:
    """The buckets params.yaml asks for (explicit boundaries, or method and n_buckets)."""
    params = load_params(PARAMS)
    cfg, window_len = params.shard.buckets, params.shard.window.window_len
    train = data.length[data.is_train]
    bounds, derived = bucket_boundaries(train, cfg, window_len)
    share = padded_tokens(data.length, bounds) / (len(data.length) * window_len)
    scheme = f"default: {derived.split(' ')[0]}"
    pad_train, pad_all = _pad(train, bounds), _pad(data.length, bounds)
    return PadRow(data.name, scheme, len(bounds), bounds, pad_train, pad_all, share)


def _cells(r: PadRow) -> list[object]:
    return [
        r.dataset,
        r.scheme,
        r.n_buckets,
        len(r.bounds),
        f"{r.pad_train:.2%}",
        f"{r.pad_all:.2%}",
        f"{r.tokens_vs_max:.3f}",
        f"{1 / r.tokens_vs_max:.2f}x",
    ]


HEADERS = ["data", "buckets", "n_buckets", "bounds", "pad (train)", "pad (all splits)",
           "tokens / global max", "fewer tokens"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="log-normal sequences")
    args = parser.parse_args(argv)
    window = load_params(PARAMS).shard.window
    table, verdicts = [], []
    for data in (generator_lengths(), lognormal_lengths(args.synthetic, window=window)):
        print(
            f"{data.name}: {len(data.length)} examples ({int(data.is_train.sum())} train), "
            f"mean length {data.length.mean():.1f}, max {data.length.max()}"
        )
        default = default_row(data)
        table += [_cells(r) for r in [*pad_rows(data, window.window_len), default]]
        ok = default.pad_all <= TARGET_PAD
        scheme = f"{default.scheme} ({len(default.bounds)} buckets)"
        target = f"<= {TARGET_PAD:.0%}"
        verdicts.append([data.name, scheme, target, f"{default.pad_all:.2%}", verdict(ok)])
    print_table(HEADERS, table, "Pad tokens / all tokens (examples: last-256 windows)")
    print_table(["data", "scheme", "target", "pad (all splits)", "result"], verdicts, "Target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
