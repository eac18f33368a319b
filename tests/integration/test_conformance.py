"""The conformance matrix: tables unlike our generator, each through `dvc repro` to a
registered model that scores a raw sequence.

Each case differs from one plain user table (string entity keys, a sequence number, one
numeric and one categorical column, integer class labels) in one way: the ways real tables
differ (string or boolean labels, numeric-only, categorical-only, no sequence number, integer
keys, no label at all for the per-step tasks, an official split column, very long sequences).
The tables are small and the model tiny: the matrix checks that every shape gets through
every stage, not what it learns. Stages run as a user runs them (`dvc repro` in a copy of the
repository) on the session's Ray cluster (``RAY_ADDRESS``), so no case pays a cluster start.

The default suite runs three cases: one table that differs in four ways at once (string
labels, integer keys, no sequence number, no categorical column), a per-step task with no
label, and sequences of thousands of events. The one-difference-per-case matrix, which says
which difference broke when one does, runs with ``make test-matrix`` (marker ``matrix``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.config import merge_params
from tests.integration.conftest import dvc, update_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z


@dataclass(frozen=True)
class Case:
    """One way a user's table differs from the plain one; ``schema`` overrides its mapping."""

    name: str
    entities: int = 15
    task: str = "classify"
    labels: tuple[Any, ...] | None = (0, 1)
    int_keys: bool = False
    seq: bool = True
    numeric: tuple[str, ...] = ("value",)
    categorical: tuple[str, ...] = ("kind",)
    split_column: bool = False
    length: tuple[int, int] = (2, 40)
    params: dict[str, Any] = field(default_factory=dict)


DEFAULT_CASES = [
    Case(
        "combined-shapes",
        labels=("churned", "stayed", "upgraded"),
        int_keys=True,
        seq=False,
        numeric=("x", "y"),
        categorical=(),
    ),
    Case("next-event-no-label", task="next_event", labels=None),
    Case(
        "long-sequences",
        entities=10,
        length=(2000, 2600),
        params={"shard": {"window": {"policy": "full", "max_len": 4096}}},
    ),
]

MATRIX = [
    Case("string-labels", labels=("churned", "stayed", "upgraded")),
    Case("boolean-labels", labels=(False, True)),
    Case("numeric-only", numeric=("x", "y", "z"), categorical=()),
    Case("categorical-only", numeric=(), categorical=("kind", "place")),
    Case("no-seq", seq=False),
    Case("integer-keys", int_keys=True),
    Case("next-event-no-label", task="next_event", labels=None),
    Case("forecast-no-label", task="forecast", labels=None),
    Case("split-column", labels=("a", "b"), split_column=True, entities=20),
    Case(
        "long-sequences",
        entities=10,
        length=(2000, 2600),
        params={"shard": {"window": {"policy": "full", "max_len": 4096}}},
    ),
]


def _table(case: Case, seed: int) -> pa.Table:
    """A user's events: one label per entity that a model could learn from its events."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(case.length[0], case.length[1] + 1, case.entities)
    n = int(lengths.sum())
    entity = np.repeat(np.arange(case.entities), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    step = rng.integers(1, 3_600, n) * 1_000_000  # weeks at most, even for 2,600 events
    step[np.cumsum(lengths) - lengths] = 0
    cum = np.cumsum(step)
    start = np.repeat(rng.integers(0, 30 * 86_400, case.entities) * 1_000_000, lengths)
    cls = rng.integers(0, len(case.labels or (0,)), case.entities)  # each entity's class
    keys = np.arange(1000, 1000 + case.entities)
    columns: dict[str, Any] = {
        "user": pa.array(keys[entity])
        if case.int_keys
        else pa.array([f"u{k:05d}" for k in keys[entity]]),
        "ts": pa.array(START_US + start + cum - cum[first]).cast(pa.timestamp("us", tz="UTC")),
    }
    if case.seq:
        columns["n"] = pa.array(np.arange(n) - first)
    for i, name in enumerate(case.numeric):
        columns[name] = pa.array(rng.normal(cls[entity] * (i + 1), 1.0, n))
    for name in case.categorical:
        vocab = np.array([f"{name}{j}" for j in range(6)])
        columns[name] = pa.array(vocab[(rng.integers(0, 4, n) + cls[entity]) % 6])
    if case.labels is not None:
        columns["outcome"] = pa.array([case.labels[c] for c in cls[entity]])
    if case.split_column:  # the dataset's official split: every fourth entity is test
        columns["fold"] = pa.array(np.where(entity % 4 == 3, "test", "train"))
    return pa.table(columns)


def _params(case: Case, path: Path) -> dict[str, Any]:
    schema = {
        "entity": "user",
        "time": "ts",
        "seq": "n" if case.seq else None,
        "numeric": list(case.numeric),
        "categorical": list(case.categorical),
        "label": "outcome" if case.labels is not None else None,
        "next_event": case.categorical[0] if case.task == "next_event" else None,
        "forecast": case.numeric[0] if case.task == "forecast" else None,
    }
    # Shares that leave a few entities in val and test even for a handful of entities.
    split = (
        {"method": "column", "column": "fold"}
        if case.split_column
        else {"fractions": [0.6, 0.2, 0.2]}
    )
    params: dict[str, Any] = {
        "data": {"source": "file", "path": str(path), "schema": schema},
        "shard": {
            "split": split,
            "window": {"length": 64, "max_len": 64},
            "buckets": {"n_buckets": 4},
        },
        "train": {
            "task": case.task,
            "model": {"hidden_size": 8, "embedding_dim": 4, "num_layers": 1, "ffn_size": 16},
            "epochs": 2,
            "min_epoch_tokens": 1,  # one pass per epoch: every shape gets through, fast
            "num_workers": 1,  # the shapes are the point here; DDP has tests of its own
        },
        "evaluate": {"slices": [], "invariance_entities": 4},
        # every case's candidate is registered, rejected or not: the test loads version 1
        "register": {"model_name": f"conformance-{case.name}", "versions": "all"},
    }
    return merge_params(params, case.params)


def _replace_params(repo: Path) -> None:
    """Sections that name the default data's columns, emptied (``update_params`` merges)."""
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["validate"]["domains"], raw["validate"]["ranges"] = {}, {}
    raw["shard"]["features"]["numeric_transform"] = {}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


CASES = [
    *(pytest.param(c, id=c.name) for c in DEFAULT_CASES),
    *(pytest.param(c, id=f"matrix-{c.name}", marks=pytest.mark.matrix) for c in MATRIX),
]


@pytest.mark.parametrize("case", CASES)
def test_table_shape_goes_from_events_to_a_registered_model_that_scores(
    case, repo_copy, ray_cluster, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.get_runtime_context().gcs_address)
    repo = repo_copy({})
    table = _table(case, seed=len(case.name))
    events = repo / "user_events.parquet"
    pq.write_table(table, events)
    update_params(repo, _params(case, events))
    _replace_params(repo)
    dvc(repo, "repro")

    promotion = json.loads((repo / "reports/promotion.json").read_text())
    assert promotion["decision"] in (
        "promoted",
        "rejected",
        "passed (auto_promote off: champion unchanged)",
    )
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["task"] == case.task
    assert "baseline" in metrics and "skill" in metrics
    assert json.loads((repo / "reports/evaluation.json").read_text())["task"] == case.task
    assert json.loads((repo / "reports/gate.json").read_text())["version"] == 1

    from seqcore.loading import load_scorer

    scorer = load_scorer(f"models:/conformance-{case.name}/1", f"sqlite:///{repo / 'mlflow.db'}")
    first = table.column("user")[0]
    one = table.filter(pc.equal(table.column("user"), first))
    row = scorer.score_rows(one)[0]
    assert str(row["entity"]) == str(first.as_py())
    if case.task == "classify":
        assert row["predicted"] in case.labels
        assert set(row["probabilities"]) == {str(v) for v in case.labels}
    elif case.task == "next_event":
        assert row["predicted"] in {f"kind{j}" for j in range(6)} | {"<OOV>", "<PAD>"}
    else:
        assert len(row["forecast"]) == scorer.manifest.targets.forecast.horizon
