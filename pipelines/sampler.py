"""Token-budget batching over length buckets for data-parallel training.

The idea of fairseq's ``--max-tokens``: a batch holds as many examples as fit in a budget of
padded tokens, so short sequences travel in large batches and long ones in small batches,
and every batch is drawn from one length bucket (no padding beyond the bucket bound). For
DDP every rank must run the same number of steps or the collective ops hang at the end of an
epoch; instead of duplicating examples (torch's ``DistributedSampler``) or dropping them,
ranks that would run short split their largest batches, so each example is seen exactly once
per epoch (only a rank that owns fewer examples than the others' steps, on tiny data, repeats
some of its own). It implements torch's duck-typed ``Sampler`` protocol without importing torch.

``auto_max_tokens`` is the rule that ``train.max_tokens: auto`` resolves by: today's budget
where the data is large enough, a smaller one where an epoch would otherwise be a handful of
steps, and never less than the widest bucket.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping

import numpy as np


class TokenBudgetBatchSampler:
    """Yields lists of global example indices, one bucket per batch, equal count per rank.

    ``padded_lengths``: per example, the length it is padded to (its bucket bound); examples
    with the same value form one bucket. A batch holds ``max(1, max_tokens // bound)``
    examples. ``owner`` (optional) fixes the rank of every example, e.g. ``part % world_size``
    so that each worker reads only its own part files; otherwise examples are dealt to ranks
    afresh each epoch. Shuffling depends only on ``(seed, epoch)``; call ``set_epoch``.

    ``lengths`` (optional, true lengths): examples are then ordered by length inside their
    bucket, ties broken at random, so that a batch holds near-equal lengths and can be trimmed
    to its longest (``to_numpy_batch(..., trim=True)``), as fairseq's ``ordered_indices``
    does; the batch order is still shuffled. Without it batches are random within a bucket.
    """

    def __init__(
        self,
        padded_lengths: np.ndarray,
        max_tokens: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        owner: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
    ) -> None:
        self.padded_lengths = np.asarray(padded_lengths, dtype=np.int64)
        if self.padded_lengths.ndim != 1 or (self.padded_lengths < 1).any():
            raise ValueError("padded_lengths must be a 1-d array of positive lengths")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}"
            )
        if owner is not None:
            owner = np.asarray(owner, dtype=np.int64)
            if owner.shape != self.padded_lengths.shape:
                raise ValueError("owner must give one rank per example")
            if len(owner) and (owner.min() < 0 or owner.max() >= world_size):
                raise ValueError(f"owner ranks must lie in [0, {world_size})")
        self.max_tokens = int(max_tokens)
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.owner = owner
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        if self.lengths is not None and self.lengths.shape != self.padded_lengths.shape:
            raise ValueError("lengths must give one length per example")
        self.epoch = 0
        self._plan: tuple[int, list[list[np.ndarray]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batch_size(self, bound: int) -> int:
        return max(1, self.max_tokens // int(bound))

    # ----------------------------------------------------------------- planning

    def _rank_examples(self, rng: np.random.Generator, members: np.ndarray) -> list[np.ndarray]:
        """One bucket's examples per rank (shuffled, or length-ordered, within the bucket)."""
        if self.shuffle:
            members = members[rng.permutation(len(members))]
        if self.lengths is not None:  # stable sort keeps the shuffled order among equal lengths
            members = members[np.argsort(self.lengths[members], kind="stable")]
        if self.owner is None:
            # Dealing round-robin keeps every rank's share of each bucket within one example.
            return [members[r :: self.world_size] for r in range(self.world_size)]
        return [members[self.owner[members] == r] for r in range(self.world_size)]

    def _split_to(self, batches: list[np.ndarray], target: int, rank: int) -> list[np.ndarray]:
        """Split the largest multi-example batches until there are ``target`` batches."""
        heap = [(-len(b), i, b) for i, b in enumerate(batches)]
        heapq.heapify(heap)
        tie = len(batches)
        while len(heap) < target:
            if not heap:
                raise ValueError(
                    f"rank {rank} holds no examples but every rank must run {target} batches;"
                    f" use fewer ranks (world_size={self.world_size}) or more data"
                )
            if -heap[0][0] < 2:
                # Tiny data: the rank owns fewer examples than the others' steps. Repeating
                # some of its own examples beats a hang in DDP or refusing a small table.
                singles = [b for _, _, b in sorted(heap, key=lambda item: item[1])]
                for k in range(target - len(heap)):
                    heapq.heappush(heap, (-1, tie, singles[k % len(singles)]))
                    tie += 1
                break
            _, _, batch = heapq.heappop(heap)
            half = len(batch) // 2
            for piece in (batch[:half], batch[half:]):
                heapq.heappush(heap, (-len(piece), tie, piece))
                tie += 1
        # Keep the batch order stable (by creation) so the later shuffle alone decides order.
        return [b for _, _, b in sorted(heap, key=lambda item: item[1])]

    def _build(self) -> list[list[np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        per_rank: list[list[np.ndarray]] = [[] for _ in range(self.world_size)]
        for bound in np.unique(self.padded_lengths):
            members = np.flatnonzero(self.padded_lengths == bound)
            size = self.batch_size(bound)
            for r, mine in enumerate(self._rank_examples(rng, members)):
                cuts = np.arange(size, len(mine), size)
                chunks = np.split(mine, cuts) if len(mine) else []
                if self.drop_last and chunks and len(chunks[-1]) < size:
                    chunks = chunks[:-1]
                per_rank[r].extend(chunks)
        counts = [len(b) for b in per_rank]
        if self.drop_last:
            # Dropping is allowed here: trim every rank to the shortest (after shuffling).
            target = min(counts)
            per_rank = [self._order(b, r)[:target] for r, b in enumerate(per_rank)]
        else:
            target = max(counts)
            per_rank = [
                self._split_to(b, target, r) if len(b) < target else b
                for r, b in enumerate(per_rank)
            ]
        return self._aligned(per_rank)

    def _order(self, batches: list[np.ndarray], rank: int) -> list[np.ndarray]:
        if not self.shuffle:
            return batches
        order = np.random.default_rng([self.seed, self.epoch, rank + 1]).permutation(len(batches))
        return [batches[i] for i in order]

    def _width(self, batch: np.ndarray) -> int:
        """The padded width a batch runs at (its longest true length, once trimmed)."""
        if self.lengths is not None and len(batch):
            return int(self.lengths[batch].max())
        return int(self.padded_lengths[batch[0]]) if len(batch) else 0

    def _aligned(self, per_rank: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """Every rank's batches in one shared random order of their width ranks: at each
        step the ranks run batches of about the same width. A DDP step lasts as long as its
        slowest rank, and a recurrent model's step costs about its width whatever the batch,
        so ranks shuffled independently would pair a wide batch with a narrow one and idle
        the narrow one's rank most of the step."""
        if not self.shuffle:
            return per_rank
        steps = len(per_rank[0])
        order = np.random.default_rng([self.seed, self.epoch]).permutation(steps)
        aligned = []
        for batches in per_rank:
            by_width = np.argsort([self._width(b) for b in batches], kind="stable")
            aligned.append([batches[by_width[i]] for i in order])
        return aligned

    def _batches(self) -> list[np.ndarray]:
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._build())
        return self._plan[1][self.rank]

    # ----------------------------------------------------------------- protocol

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            yield batch.tolist()

    def __len__(self) -> int:
        return len(self._batches())


# --------------------------------------------------------------------------- owners

BY_PART = -1
"""In a ``bucket_plan``: the bucket's examples belong to ranks by shard part file."""


def _plan(
    batches: Mapping[int, int], shares: Mapping[int, list[int]], world_size: int
) -> tuple[dict[int, int], list[int]]:
    """``bucket_plan`` from each bucket's batch count and, for a bucket dealt by part, the
    batches each rank's share makes; also every rank's batch count."""
    load = [0] * world_size
    plan: dict[int, int] = {}
    small = []
    for bound, n in batches.items():
        if n >= world_size:  # enough batches for every rank: each draws whole ones of its parts
            plan[bound] = BY_PART
            load = [a + b for a, b in zip(load, shares[bound], strict=True)]
        else:
            small.append(bound)
    if not plan and len(small) < world_size:  # too few buckets to go round
        for bound in small:
            plan[bound] = BY_PART
            load = [a + b for a, b in zip(load, shares[bound], strict=True)]
        return plan, load
    # Widest first, each to the rank with the fewest batches: buckets of neighbouring widths
    # go to different ranks, so that ranks hold batches of about the same widths.
    for bound in sorted(small, reverse=True):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        plan[bound] = rank
        load[rank] += batches[bound]
    return plan, load


def bucket_plan(
    padded_lengths: np.ndarray, parts: np.ndarray, max_tokens: int, world_size: int
) -> dict[int, int]:
    """Which rank draws each bucket's examples: bucket bound -> rank, or ``BY_PART``.

    A bucket of at least ``world_size`` batches is shared by part file (``part %
    world_size``, each rank's share a run of whole batches); a smaller one goes whole to one
    rank, widest first to the rank with the fewest batches so far. The same in every process
    (it depends on the examples only).

    Dealing every bucket's examples to all ranks instead splits a bucket that fills one
    batch into a half-size batch per rank: each rank then runs as many steps as one worker
    would, on half the examples, and a second worker adds no throughput where a step's cost
    hardly grows with its batch (a recurrent model steps through time whatever the batch).
    With fewer buckets than ranks every bucket is shared by part, so that no rank is idle."""
    padded = np.asarray(padded_lengths, dtype=np.int64)
    rank_of = np.asarray(parts, dtype=np.int64) % world_size
    batches, shares = {}, {}
    for bound in np.unique(padded).tolist():
        size = max(1, max_tokens // bound)
        members = padded == bound
        batches[bound] = math.ceil(int(members.sum()) / size)
        counts = np.bincount(rank_of[members], minlength=world_size)
        shares[bound] = [math.ceil(int(c) / size) for c in counts]
    return _plan(batches, shares, world_size)[0]


def example_owners(
    padded_lengths: np.ndarray, parts: np.ndarray, plan: Mapping[int, int], world_size: int
) -> np.ndarray:
    """Every example's rank under ``plan`` (``TokenBudgetBatchSampler``'s ``owner``); -1 for
    an example of a bucket the plan does not name (one with no example it was made from)."""
    padded = np.asarray(padded_lengths, dtype=np.int64)
    by_part = np.asarray(parts, dtype=np.int64) % world_size
    owner = np.full(padded.shape, -1, dtype=np.int64)
    for bound, rank in plan.items():
        members = padded == bound
        owner[members] = by_part[members] if rank == BY_PART else rank
    return owner


# --------------------------------------------------------------------------- the budget


def steps_per_epoch(
    bucket_examples: Mapping[int, int], max_tokens: int, world_size: int = 1
) -> int:
    """Batches one rank draws in an epoch from buckets holding these many examples.

    ``bucket_examples``: padded length (bucket bound) -> examples. As ``bucket_plan`` deals
    them, a bucket shared by part counted as dealt evenly; the most any rank draws. The
    sampler's own count can differ a little (the parts' actual shares; ranks with fewer
    batches split some to keep step with the others).
    """
    full = {int(b): int(n) for b, n in bucket_examples.items() if n > 0}
    batches = {b: math.ceil(n / max(1, max_tokens // b)) for b, n in full.items()}
    shares = {
        b: [math.ceil(math.ceil(n / world_size) / max(1, max_tokens // b))] * world_size
        for b, n in full.items()
    }
    return max(_plan(batches, shares, world_size)[1], default=0)


def auto_max_tokens(
    bucket_examples: Mapping[int, int],
    world_size: int,
    *,
    target: int,
    min_steps: int,
    widest: int = 1,
) -> int:
    """The token budget ``train.max_tokens: auto`` resolves to (the rule of its docstring).

    ``target`` when that gives every rank at least ``min_steps`` batches per epoch; otherwise
    the largest budget that still does, never below the widest bucket (``widest`` raises that
    floor, e.g. to the validation split's widest bucket), so that every batch respects the
    budget and no example has to travel alone above it. When even the floor gives fewer steps
    (a handful of examples), the floor.
    """
    floor = max([int(widest), *(int(b) for b, n in bucket_examples.items() if n > 0)])
    if target <= floor:
        return floor
    if steps_per_epoch(bucket_examples, target, world_size) >= min_steps:
        return int(target)
    if steps_per_epoch(bucket_examples, floor, world_size) < min_steps:
        return floor
    low, high = floor, int(target)  # steps(low) >= min_steps > steps(high); steps fall with B
    while high - low > 1:
        middle = (low + high) // 2
        if steps_per_epoch(bucket_examples, middle, world_size) >= min_steps:
            low = middle
        else:
            high = middle
    return low
