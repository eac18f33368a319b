"""benchmarks/long_context.py measures what it claims, on windows of a few dozen steps.

Its baseline is the transformer before SDPA with the same weights (so the two arms compute
the same function), each arm's child reports the attention kernel that ran, and the parent
turns the children's figures into the table and JSON. No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import pytest
import torch

from benchmarks import long_context
from benchmarks._common import ChildRun, rss_now


@pytest.fixture
def threads():
    """The child step sets torch's thread count: run it with the current one, and restore."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize("task", ["classify", "next_event"])
@torch.no_grad()
def test_the_baseline_and_the_sdpa_arm_compute_the_same_model(task):
    batch = long_context.make_batch(rows=3, length=40, task=task)
    baseline = long_context.build(long_context.BASELINE, task, max_len=40).eval()
    ours = long_context.build("sdpa learned", task, max_len=40).eval()
    assert type(baseline.encoder) is not type(ours.encoder)
    assert baseline.state_dict().keys() == ours.state_dict().keys()
    args = (batch["cat"], batch["num"], batch["length"])
    assert float((baseline(*args) - ours(*args)).abs().max()) <= 1e-5


def test_a_child_step_reports_its_figures_and_the_attention_kernel(tmp_path, threads):
    kernels = {}
    for arm in (long_context.BASELINE, "sdpa rotary"):
        out = tmp_path / f"{arm}.json"
        argv = ["--step", arm, "--length", "24", "--rows", "2", "--steps", "2",
                "--threads", str(threads), "--result", str(out)]  # fmt: skip
        assert long_context.main(argv) == 0
        result = json.loads(out.read_text())
        assert result["arm"] == arm and (result["length"], result["rows"]) == (24, 2)
        assert len(result["seconds"]) == 2 and result["rss_before"] > 0
        kernels[arm] = result["kernels"]
    # Training mode: the baseline's merged mask and dropout run the reference kernel.
    assert "aten::_scaled_dot_product_attention_math" in kernels[long_context.BASELINE]
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels["sdpa rotary"]


def test_the_parent_alternates_arms_and_writes_the_table_and_json(tmp_path, monkeypatch, threads):
    order = []

    def in_process(args, **_):  # the child's own step, without a process
        def value(flag: str) -> str:
            return args[args.index(flag) + 1]

        arm, length, rows = value("--step"), int(value("--length")), int(value("--rows"))
        order.append((length, rows, arm))
        started = time.perf_counter()
        result = long_context.step(arm, length, rows, "classify", 1, threads)
        return ChildRun(result, rss_now(), time.perf_counter() - started)

    monkeypatch.setattr(long_context, "run_child", in_process)
    out = tmp_path / "long_context.json"
    arms = [long_context.BASELINE, "tcn"]
    argv = ["--lengths", "16", "--budget", "16", "--arms", ",".join(arms), "--rounds", "2",
            "--steps", "1", "--threads", str(threads), "--out", str(out)]  # fmt: skip
    assert long_context.main(argv) == 0
    cases = [(16, 1)]  # a budget of one row: no second case
    expected = [(*case, arm) for r in range(2) for case in cases
                for arm in (arms if r % 2 == 0 else arms[::-1])]  # fmt: skip
    assert order == expected
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == len(arms) * len(cases) and "| T " in saved["table"]
    for row in saved["rows"]:
        assert row["rounds"] == 2 and row["seconds_per_step"] > 0
        if row["arm"] == long_context.BASELINE:
            assert row["speedup_vs_baseline"] == pytest.approx(1.0)


def test_cases_are_one_sequence_and_the_token_budgets_rows():
    assert long_context.cases([1000, 2000, 5000]) == [(1000, 1), (1000, 8), (2000, 1),
                                                      (2000, 4), (5000, 1)]  # fmt: skip
    assert long_context.cases([16], budget=48) == [(16, 1), (16, 3)]


def test_a_baseline_over_max_gib_is_skipped_and_its_ratios_left_empty(monkeypatch, threads):
    monkeypatch.setattr(
        long_context, "run_child",
        lambda args, **_: ChildRun({"seconds": [1.0], "rss_before": 0, "kernels": []}, 1, 1.0),
    )  # fmt: skip
    args = argparse.Namespace(
        lengths=[5000], budget=long_context.TOKEN_BUDGET, rounds=1, arms=list(long_context.ARMS), max_gib=1.0, task="classify",
        steps=1, threads=threads,
    )  # fmt: skip
    assert long_context.legacy_gib(5000, 1) > 1.0
    rows = long_context.measure(args)
    assert {r["arm"] for r in rows} == set(long_context.ARMS) - {long_context.BASELINE}
    assert all(r["speedup_vs_baseline"] is None for r in rows)
    assert "| -" in long_context.report(rows, "classify")
