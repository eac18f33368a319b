"""``train``: the model spec, optimisation, Ray Train scaling and MLflow experiment
(docs/architecture.md §5).

The model's hyperparameters are ``seqmodels.ModelSpec`` itself (``train.model``), so their
defaults and checks are written once, in ``seqmodels``; this section adds what only training
needs. ``task`` stays here rather than in the spec: it also picks the shard targets the stage
reads, and the data decides the head's sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from seqcore.config import ConfigError, build, fail, only_keys
from seqmodels import ModelConfigError, ModelSpec
from seqmodels.config import TASKS, Task

MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelSpec))
"""The keys of ``train.model``; before the spec they were written flat under ``train``."""


def _model_error(key: str, exc: ModelConfigError) -> ConfigError:
    if exc.field is None:
        return ConfigError(f"params: {key}: {exc}")
    return fail(f"{key}.{exc.field}", exc.value, exc.reason)


def model_spec(key: str, raw: ModelSpec | Mapping[str, Any] | None) -> ModelSpec:
    """``raw`` (a params mapping or a spec) as a ``ModelSpec``; errors name ``key.<field>``."""
    if isinstance(raw, ModelSpec):
        return raw.spec  # a whole ModelConfig would smuggle a task and data sizes in
    if raw is not None and not isinstance(raw, Mapping):
        raise fail(key, raw, "expected a mapping")
    values = dict(raw or {})
    if "task" in values:
        raise ConfigError(f"params: {key}: unknown key task; the task is train.task")
    only_keys(key, values, ModelSpec)
    try:
        return ModelSpec(**values)
    except ModelConfigError as exc:
        raise _model_error(key, exc) from None


@dataclass(frozen=True)
class TrainConfig:
    """The train stage (docs/architecture.md §5): model, optimisation, Ray Train, MLflow."""

    task: Task = "classify"
    """classify (entity label) | next_event (next category per step) | forecast (H steps)."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model's hyperparameters (``seqmodels.ModelSpec``); the data sets its input sizes."""
    epochs: int = 8
    """Most epochs; early stopping (``patience``) usually ends sooner."""
    lr: float = 3e-3
    """Peak learning rate (AdamW), reached after warmup, then cosine decay to 10%."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_fraction: float = 0.05
    """Share of all steps spent warming the learning rate up linearly."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    max_tokens: int = 8192
    """Token budget of one batch per worker (examples x padded length)."""
    patience: int = 3
    """Early stopping: epochs without improvement of the validation loss before stopping."""
    num_workers: int = 2
    """Ray Train workers (DDP ranks); at most shard.max_workers so each reads its own parts."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker (also its torch threads)."""
    use_gpu: Literal["auto", "always", "never"] = "auto"
    """auto (GPUs when the cluster has them) | always | never."""
    amp: Literal["bf16", "none"] = "bf16"
    """Mixed precision on GPU: bf16 | none. CPUs always run fp32."""
    max_failures: int = 2
    """Worker failures retried from the latest checkpoint (Ray Train FailureConfig); -1 = forever."""
    experiment: str = "seqops"
    """MLflow experiment name."""
    storage_path: str | None = None
    """Ray Train storage for checkpoints; null = .ray_results in the repository."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise fail("train.task", self.task, f"expected one of {', '.join(TASKS)}")
        object.__setattr__(self, "model", model_spec("train.model", self.model))
        try:
            self.model.check_task(self.task)
        except ModelConfigError as exc:
            raise _model_error("train.model", exc) from None
        for name in ("epochs", "max_tokens", "patience", "num_workers", "cpus_per_worker"):
            if getattr(self, name) < 1:
                raise fail(f"train.{name}", getattr(self, name), "must be >= 1")
        if self.lr <= 0:
            raise fail("train.lr", self.lr, "must be > 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise fail("train.warmup_fraction", self.warmup_fraction, "must be within [0, 1)")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise fail(
                "train.grad_clip/weight_decay", (self.grad_clip, self.weight_decay), "must be >= 0"
            )
        if self.use_gpu not in ("auto", "always", "never"):
            raise fail("train.use_gpu", self.use_gpu, "expected auto, always or never")
        if self.amp not in ("bf16", "none"):
            raise fail("train.amp", self.amp, "expected bf16 or none")
        if self.max_failures < -1:
            raise fail(
                "train.max_failures", self.max_failures, "must be >= -1 (-1 = retry forever)"
            )

    def with_model(self, **changes: Any) -> TrainConfig:
        """This config with some of ``model``'s hyperparameters changed (sweeps, tests)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, **changes))


def train_from_dict(raw: Mapping[str, Any] | None) -> TrainConfig:
    """The ``train`` section; a model key still written flat under ``train`` says where it went."""
    if raw is not None and not isinstance(raw, Mapping):
        raise fail("train", raw, "expected a mapping")
    moved = [key for key in MODEL_KEYS if key in (raw or {})]
    if moved:
        raise ConfigError(
            f"params: train: unknown key(s) {', '.join(moved)}; moved to "
            + ", ".join(f"train.model.{key}" for key in moved)
        )
    return build(TrainConfig, "train", raw)
