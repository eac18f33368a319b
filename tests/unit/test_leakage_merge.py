"""The split-leakage check run part by part and merged (``merge_leakage``) gives the check
over all examples: the shard stage runs it in each part's task (an entity's events are all in
one part), so no process holds every example's key. Only which offenders are sampled may
differ; each sampled one is a real offender."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pytest

from data_checks.leakage import SplitExamples, check_split_leakage, merge_leakage

DAY = 86_400 * 1_000_000
TRAIN_END, VAL_END = 100 * DAY, 120 * DAY


def _examples(rng: np.random.Generator, n_entities: int, leaks: bool, method: str):
    """Examples of every split, several per entity; ``leaks`` plants violations."""
    out: dict[str, dict[str, list]] = {
        s: {"e": [], "w": [], "t": []} for s in ("train", "val", "test")
    }
    for e in range(n_entities):
        key = f"user-{e}" if e % 3 else e  # keys of mixed kinds are compared as strings
        split = ("train", "val", "test")[e % 3]
        low, high = {
            "train": (0, TRAIN_END),
            "val": (TRAIN_END, VAL_END),
            "test": (VAL_END, 150 * DAY),
        }[split]
        for _ in range(rng.integers(1, 5)):
            end = int(rng.integers(low + 1, high))
            target = (
                int(rng.integers(low + 1, end + 1))
                if rng.random() < 0.8
                else np.iinfo(np.int64).min
            )
            if leaks and method == "time" and rng.random() < 0.05:
                end = high + DAY if split != "test" else low - DAY
            out[split]["e"].append(str(key))
            out[split]["w"].append(end)
            out[split]["t"].append(target)
        if leaks and method == "entity" and e % 17 == 0:
            other = "test" if split != "test" else "train"
            out[other]["e"].append(str(key))
            out[other]["w"].append(VAL_END + DAY)
            out[other]["t"].append(np.iinfo(np.int64).min)
    return out


def _split(raw, keep) -> dict[str, SplitExamples]:
    result = {}
    for split, cols in raw.items():
        rows = [i for i, key in enumerate(cols["e"]) if keep(key)]
        result[split] = SplitExamples(
            entity=pa.array([cols["e"][i] for i in rows], pa.string()),
            window_end=np.array([cols["w"][i] for i in rows], np.int64),
            target_end=np.array([cols["t"][i] for i in rows], np.int64),
        )
    return result


@pytest.mark.parametrize("method", ["entity", "time"])
@pytest.mark.parametrize("leaks", [False, True])
@pytest.mark.parametrize("n_parts", [1, 3, 7])
def test_parts_merge_into_the_check_over_all_examples(method, leaks, n_parts):
    rng = np.random.default_rng(11)
    raw = _examples(rng, 200, leaks, method)
    cut = {"train_end_us": TRAIN_END, "val_end_us": VAL_END}
    whole = check_split_leakage(method, _split(raw, lambda k: True), **cut, sample_offenders=10_000)
    parts = [
        check_split_leakage(
            method, _split(raw, lambda k, p=p: zlib.crc32(k.encode()) % n_parts == p), **cut
        )
        for p in range(n_parts)
    ]
    merged = merge_leakage(parts, sample_offenders=5)
    assert merged.status == ("fail" if leaks else "pass") == whole.status
    assert merged.violating_examples == whole.violating_examples
    assert merged.violating_entities == whole.violating_entities
    assert merged.details == whole.details
    assert len(merged.sample_offenders) == min(5, whole.violating_examples)
    assert all(o in whole.sample_offenders for o in merged.sample_offenders)
