"""``tune``: the hyperparameter search of ``seqops tune`` (docs/architecture.md §5).

The search space names ``train`` keys (``lr``, ``max_tokens``, ``model.hidden_size``, ...),
each with a list of choices or one distribution; every trial is today's training with
those keys changed, so a trial and the ``dvc repro`` that later trains the winner run the
same code on the same shards. Keys that decide where or how training runs rather than what
is learned (the task, workers, devices, the MLflow experiment) cannot be searched: a
winner found with them changed would not be the model ``dvc repro`` trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from seqcore.config import fail
from seqmodels import ModelSpec

DISTRIBUTIONS = ("uniform", "loguniform", "randint")
"""A dimension written as a mapping: ``{loguniform: [lo, hi]}`` and so on; bounds inclusive."""

FIXED_KEYS = frozenset(
    {"task", "num_workers", "cpus_per_worker", "use_gpu", "amp", "max_failures", "experiment"}
    | {"storage_path", "epochs", "placement_strategy"}
)
"""``train`` keys that are not searched: they change where or how a model trains (or, for
``epochs``, are the scheduler's own bound), not what it learns."""

METRICS = {"loss": "min", "accuracy": "max", "top1": "max", "mae": "min"}
"""Validation metrics a search can rank trials by (``val_<name>``), and their direction."""

DEFAULT_SPACE: Mapping[str, Any] = {
    "model.architecture": ["lstm", "gru", "transformer", "tcn"],
    "model.hidden_size": [32, 64, 128],
    "model.num_layers": ["auto", 2, 4],
    "model.dropout": {"uniform": [0.0, 0.3]},
    "lr": {"loguniform": [3.0e-4, 1.0e-2]},
    "max_tokens": ["auto", 4096, 16384],
}


@dataclass(frozen=True)
class Dimension:
    """One searched ``train`` key: ``choices`` or a ``distribution`` over ``[low, high]``."""

    key: str
    """The key under ``train`` (``model.<field>`` for the model's hyperparameters)."""
    choices: tuple[Any, ...] = ()
    distribution: str | None = None
    low: float = 0.0
    high: float = 0.0

    @property
    def corners(self) -> tuple[Any, ...]:
        """The values a check must try: every choice, or both bounds of a distribution."""
        if self.distribution is None:
            return self.choices
        if self.distribution == "randint":
            return (int(self.low), int(self.high))
        return (self.low, self.high)


def _train_keys() -> set[str]:
    from pipelines.params.train import TrainConfig

    keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    return keys | {f"model.{f.name}" for f in dataclasses.fields(ModelSpec)}


def _dimension(key: str, raw: Any) -> Dimension:
    where = f"tune.space.{key}"
    if key not in _train_keys():
        raise fail(
            where, raw, "not a train key; search keys of train (lr, max_tokens, ...) or "
            "train.model (model.hidden_size, ...)",
        )  # fmt: skip
    if key in FIXED_KEYS:
        raise fail(
            where, raw, "decides where or how training runs, not what it learns; set it in "
            "train (epochs bounds every trial and is the scheduler's budget)",
        )  # fmt: skip
    if isinstance(raw, list | tuple):
        if not raw:
            raise fail(where, raw, "an empty list of choices")
        return Dimension(key, choices=tuple(raw))
    if isinstance(raw, Mapping):
        if len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
            raise fail(where, dict(raw), f"expected one of {', '.join(DISTRIBUTIONS)}: [low, high]")
        kind, bounds = next(iter(raw.items()))
        numbers = isinstance(bounds, list | tuple) and all(
            isinstance(b, int | float) and not isinstance(b, bool) for b in bounds
        )
        if not numbers or len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise fail(where, dict(raw), "expected [low, high] with low < high")
        if kind == "loguniform" and bounds[0] <= 0:
            raise fail(where, dict(raw), "loguniform needs low > 0")
        if kind == "randint" and not all(isinstance(b, int) for b in bounds):
            raise fail(where, dict(raw), "randint needs integer bounds")
        return Dimension(key, distribution=kind, low=bounds[0], high=bounds[1])
    return Dimension(key, choices=(raw,))  # a single value: fixed for every trial


@dataclass(frozen=True)
class TuneConfig:
    """``seqops tune``: trials, time, the scheduler and the search space."""

    trials: int = 12
    """Configurations sampled from the space (Ray Tune's ``num_samples``)."""
    time_budget_s: float = 3600.0
    """After this many seconds no trial starts and running ones are stopped; the best so far
    is still written."""
    max_concurrent: int | Literal["auto"] = "auto"
    """Trials at once; auto = the cluster's CPUs // (train.num_workers x cpus_per_worker)."""
    metric: str = "val_loss"
    """What ranks trials, on the validation split: val_loss, or the task's val_accuracy
    (classify), val_top1 (next_event), val_mae (forecast)."""
    scheduler: Literal["asha", "fifo"] = "asha"
    """asha: stop trials that trail at each rung (Li et al. 2020); fifo: run every trial to
    its end (train.epochs, or its own early stopping)."""
    grace_epochs: int = 2
    """ASHA: epochs every trial runs before it may be stopped."""
    reduction_factor: int = 3
    """ASHA: one trial in reduction_factor goes on past each rung."""
    seed: int | None = None
    """Seed of the sampler; null = params.yaml's seed, so a search repeats."""
    space: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    """``train`` key -> a list of choices, one value, or ``{uniform|loguniform|randint:
    [low, high]}``."""

    def __post_init__(self) -> None:
        for name in ("trials", "grace_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail(f"tune.{name}", value, "must be an integer >= 1")
        if isinstance(self.reduction_factor, bool) or not (
            isinstance(self.reduction_factor, int) and self.reduction_factor >= 2
        ):
            raise fail("tune.reduction_factor", self.reduction_factor, "must be an integer >= 2")
        if not (
            isinstance(self.time_budget_s, int | float)
            and math.isfinite(self.time_budget_s)
            and self.time_budget_s > 0
        ):
            raise fail("tune.time_budget_s", self.time_budget_s, "must be a number of seconds > 0")
        if self.max_concurrent != "auto" and (
            isinstance(self.max_concurrent, bool)
            or not isinstance(self.max_concurrent, int)
            or self.max_concurrent < 1
        ):
            raise fail(
                "tune.max_concurrent", self.max_concurrent, "expected auto or an integer >= 1"
            )
        if self.scheduler not in ("asha", "fifo"):
            raise fail("tune.scheduler", self.scheduler, "expected asha or fifo")
        name = self.metric.removeprefix("val_")
        if not self.metric.startswith("val_") or name not in METRICS:
            known = ", ".join(f"val_{m}" for m in METRICS)
            raise fail("tune.metric", self.metric, f"expected one of {known} (validation only)")
        if not isinstance(self.space, Mapping) or not self.space:
            raise fail("tune.space", self.space, "expected a mapping of train keys to search")
        self.dimensions  # noqa: B018 - parse now, so a bad space fails when params load

    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        return tuple(_dimension(str(k), v) for k, v in self.space.items())

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if METRICS[self.metric.removeprefix("val_")] == "min" else "max"
