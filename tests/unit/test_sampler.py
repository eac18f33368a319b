"""Token-budget batches: each example once per epoch, the same step count on every rank."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.sampler import TokenBudgetBatchSampler


def _bounds(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice([8, 16, 32, 64, 256], size=n, p=[0.4, 0.25, 0.2, 0.1, 0.05])


def _epoch(bounds, world_size, epoch=0, **kwargs):
    per_rank = []
    for rank in range(world_size):
        sampler = TokenBudgetBatchSampler(bounds, rank=rank, world_size=world_size, **kwargs)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        per_rank.append(batches)
    return per_rank


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_every_example_once_equal_steps_and_budget(world_size):
    bounds = _bounds()
    per_rank = _epoch(bounds, world_size, max_tokens=512, seed=1)
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert np.array_equal(np.sort(seen), np.arange(len(bounds)))  # exactly once, none missing
    assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
    for batches in per_rank:
        for batch in batches:
            assert len(set(bounds[batch])) == 1  # one bucket per batch
            assert len(batch) * bounds[batch[0]] <= 512 or len(batch) == 1
    # the budget is used, not just respected: some batch fills more than half of it
    assert max(len(b) * bounds[b[0]] for b in per_rank[0]) > 256


def test_shuffle_is_deterministic_per_seed_and_epoch():
    bounds = _bounds()
    a = _epoch(bounds, 2, epoch=3, max_tokens=256, seed=5)
    assert a == _epoch(bounds, 2, epoch=3, max_tokens=256, seed=5)
    assert a != _epoch(bounds, 2, epoch=4, max_tokens=256, seed=5)
    assert a != _epoch(bounds, 2, epoch=3, max_tokens=256, seed=6)
    fixed = _epoch(bounds, 1, max_tokens=256, shuffle=False)[0]
    assert np.array_equal(np.concatenate(fixed), np.argsort(bounds, kind="stable"))


def test_owner_partition_is_respected_and_balanced_by_splitting():
    bounds = _bounds(500)
    owner = np.arange(500) % 4 % 2  # part k -> rank k % world_size, parts dealt round-robin
    per_rank = _epoch(bounds, 2, max_tokens=512, seed=0, owner=owner)
    for rank, batches in enumerate(per_rank):
        assert (owner[np.concatenate(batches)] == rank).all()
    assert len(per_rank[0]) == len(per_rank[1])
    # rank 1 owns 3 examples in 3 buckets; rank 0's single big batch must be split, not padded
    bounds = np.array([8] * 10 + [8, 16, 32])
    owner = np.array([0] * 10 + [1, 1, 1])
    per_rank = _epoch(bounds, 2, max_tokens=1000, seed=0, owner=owner)
    assert [len(b) for b in per_rank] == [3, 3]
    assert sorted(len(b) for b in per_rank[0]) == [2, 3, 5]
    assert np.array_equal(np.sort(np.concatenate(per_rank[0])), np.arange(10))


def test_a_rank_short_of_examples_repeats_its_own_and_an_empty_rank_is_refused():
    # rank 1 owns one example in one bucket; rank 0 runs two batches (two buckets)
    bounds, owner = np.array([8, 16, 8]), np.array([0, 0, 1])
    per_rank = _epoch(bounds, 2, max_tokens=64, seed=0, owner=owner)
    assert [len(b) for b in per_rank] == [2, 2]
    assert [list(b) for b in per_rank[1]] == [[2], [2]]
    with pytest.raises(ValueError, match="rank 2 holds no examples"):
        _epoch(np.array([8, 8]), 3, max_tokens=64)
    with pytest.raises(ValueError, match="rank"):
        TokenBudgetBatchSampler(np.array([8]), 64, rank=2, world_size=2)
    with pytest.raises(ValueError, match="owner"):
        TokenBudgetBatchSampler(np.array([8]), 64, world_size=2, owner=np.array([2]))


def test_oversized_examples_travel_alone_and_drop_last_drops_partial_batches():
    per_rank = _epoch(np.array([300, 300, 8]), 1, max_tokens=100)
    assert sorted(len(b) for b in per_rank[0]) == [1, 1, 1]
    bounds = np.array([8] * 10)
    per_rank = _epoch(bounds, 2, max_tokens=32, drop_last=True)  # 5 per rank: 4 + 1 (dropped)
    assert [[len(b) for b in r] for r in per_rank] == [[4], [4]]


def test_true_lengths_give_near_equal_lengths_per_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 65, 2000)
    bounds = np.where(lengths <= 16, 16, 64)

    def trimmed_padding(per_rank):
        batches = [b for r in per_rank for b in r]
        return sum(len(b) * lengths[b].max() for b in batches) / lengths.sum() - 1

    ordered = _epoch(bounds, 2, max_tokens=512, seed=3, lengths=lengths)
    shuffled = _epoch(bounds, 2, max_tokens=512, seed=3)
    assert np.array_equal(np.sort(np.concatenate(sum(ordered, []))), np.arange(2000))
    assert trimmed_padding(ordered) < 0.05 < trimmed_padding(shuffled)
    assert ordered != _epoch(bounds, 2, max_tokens=512, seed=3, epoch=1, lengths=lengths)


def test_steps_per_epoch_counts_each_ranks_batches_per_bucket():
    from pipelines.sampler import steps_per_epoch

    # 100 examples of 64 (16 per batch) and 10 of 256 (4 per batch) over 2 ranks.
    assert steps_per_epoch({64: 100, 256: 10, 512: 0}, 1024, world_size=2) == 4 + 2
    assert steps_per_epoch({64: 100}, 32, world_size=1) == 100  # an example above it goes alone
    bounds = _bounds(500)
    owner = np.arange(500) % 2
    sampler = TokenBudgetBatchSampler(bounds, 512, world_size=2, owner=owner)
    counts = dict(zip(*np.unique(bounds, return_counts=True), strict=True))
    assert len(sampler) >= steps_per_epoch(counts, 512, world_size=2)


def test_auto_budget_keeps_the_target_on_large_data_and_shrinks_on_small():
    from pipelines.sampler import auto_max_tokens, steps_per_epoch

    def auto(buckets, **kw):
        return auto_max_tokens(buckets, 2, **{"target": 8192, "min_steps": 32, **kw})

    large = {b: 2000 for b in (16, 32, 64, 128, 256)}
    assert steps_per_epoch(large, 8192, 2) >= 32 and auto(large) == 8192
    small = {32: 60, 64: 60, 128: 60, 256: 60}
    assert steps_per_epoch(small, 8192, 2) < 32
    budget = auto(small)
    assert 256 <= budget < 8192
    assert steps_per_epoch(small, budget, 2) >= 32 > steps_per_epoch(small, budget + 1, 2)
    # Too few examples for the step target: the widest bucket, never below it.
    assert auto({256: 3, 1024: 3}) == 1024
    assert auto({256: 3}, widest=2000) == 2000
    # A window longer than the target: every batch still fits the budget.
    assert auto({5000: 200, 3000: 200}) == 8192
    assert auto({12000: 400, 3000: 400}) == 12000


def _plan_epoch(bounds, parts, max_tokens, world, epoch=0):
    from pipelines.sampler import bucket_plan, example_owners

    owner = example_owners(bounds, parts, bucket_plan(bounds, parts, max_tokens, world), world)
    return owner, _epoch(bounds, world, epoch, max_tokens=max_tokens, owner=owner, seed=3)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("max_tokens", [64, 512, 4096])
def test_a_bucket_plan_sees_every_example_once_in_equal_steps(world, max_tokens):
    bounds = _bounds(700, seed=world)
    parts = np.arange(700) % 4  # the shard stage deals each bucket round-robin over 4 files
    owner, per_rank = _plan_epoch(bounds, parts, max_tokens, world)
    assert len({len(batches) for batches in per_rank}) == 1
    for rank, batches in enumerate(per_rank):
        for batch in batches:
            assert len(set(bounds[batch])) == 1 and (owner[batch] == rank).all()
    seen = np.sort(np.concatenate([np.concatenate(b) for b in per_rank]))
    np.testing.assert_array_equal(seen, np.arange(700))


def test_ranks_draw_whole_batches_where_a_bucket_fills_one():
    """Buckets that each fill one batch: two ranks draw the same full batches one rank
    would, each half of them, instead of every batch halved (the same steps as one rank)."""
    rng = np.random.default_rng(0)
    bounds = np.repeat(np.arange(8, 8 * 33, 8), 20)[rng.permutation(640)]  # 32 buckets of 20
    parts = np.arange(640) % 2
    _, [one] = _plan_epoch(bounds, parts, 10_000, 1)
    _, two = _plan_epoch(bounds, parts, 10_000, 2)
    assert len(one) == 32 and [len(b) for b in two] == [16, 16]
    assert sorted(len(b) for r in two for b in r) == sorted(len(b) for b in one) == [20] * 32


def test_fewer_buckets_than_ranks_are_shared_by_part():
    from pipelines.sampler import BY_PART, bucket_plan

    bounds = np.full(10, 64)
    parts = np.arange(10) % 2
    assert bucket_plan(bounds, parts, 10_000, 2) == {64: BY_PART}
    _, per_rank = _plan_epoch(bounds, parts, 10_000, 2)
    assert [len(b) for b in per_rank] == [1, 1]  # nobody idle, each example once


def test_steps_per_epoch_follows_the_bucket_plan():
    from pipelines.sampler import steps_per_epoch

    rng = np.random.default_rng(4)
    for world in (1, 2, 3):
        bounds = rng.choice([16, 32, 64, 128, 256], 900, p=[0.5, 0.2, 0.15, 0.1, 0.05])
        parts = rng.integers(0, 6, 900)
        owner, per_rank = _plan_epoch(bounds, parts, 2048, world)
        counts = dict(zip(*np.unique(bounds, return_counts=True), strict=True))
        assert abs(steps_per_epoch(counts, 2048, world) - len(per_rank[0])) <= world


def test_ranks_run_batches_of_about_the_same_width_at_each_step():
    """A DDP step lasts as long as its widest batch: the ranks' batches are put in one shared
    order of width, still shuffled from step to step."""
    rng = np.random.default_rng(2)
    lengths = np.clip(rng.lognormal(np.log(30), 1.0, 3000).astype(int), 2, 256)
    bounds = np.array([8, 16, 32, 64, 128, 256])[
        np.searchsorted([8, 16, 32, 64, 128, 256], lengths)
    ]
    parts = np.arange(3000) % 2
    from pipelines.sampler import bucket_plan, example_owners

    owner = example_owners(bounds, parts, bucket_plan(bounds, parts, 2048, 2), 2)
    per_rank = _epoch(bounds, 2, max_tokens=2048, owner=owner, lengths=lengths, seed=5)
    widths = np.array([[lengths[b].max() for b in batches] for batches in per_rank])
    assert np.abs(widths[0] - widths[1]).mean() < 0.2 * widths.mean()
    steps = np.arange(widths.shape[1])
    assert abs(np.corrcoef(steps, widths[0])[0, 1]) < 0.3  # not run in width order
    again = _epoch(bounds, 2, epoch=1, max_tokens=2048, owner=owner, lengths=lengths, seed=5)
    assert again[0] != per_rank[0]
