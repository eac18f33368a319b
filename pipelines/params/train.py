"""``train``: the model spec, optimisation, Ray Train scaling and MLflow experiment
(docs/architecture.md §5).

The model's hyperparameters are ``seqmodels.ModelSpec`` itself (``train.model``), so their
defaults and checks are written once, in ``seqmodels``; this section adds what only training
needs. ``task`` stays here rather than in the spec: it also picks the shard targets the stage
reads, and the data decides the head's sizes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from seqcore.config import ConfigError, build, fail, only_keys
from seqmodels import ModelConfigError, ModelSpec
from seqmodels.config import INCEPTION_KERNELS, TASKS, Task

PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Ray's placement group strategies (train.placement_strategy)."""

log = logging.getLogger("seqops.train")

MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelSpec))
"""The keys of ``train.model``; before the spec they were written flat under ``train``."""

AUTO_MAX_TOKENS = 8192
"""The budget ``max_tokens: auto`` keeps wherever the data is large enough: the fixed default
it replaced, so training on the default data is unchanged."""

ATTENTION_BYTES_PER_TOKEN_CHANNEL = 96
"""Training memory of a transformer's attention per token, per hidden channel, per layer: the
projected queries, keys and values, their rotated copies (rotary positions), the output and
the gradients of each in backward. SDPA's fused kernels never hold the (T, T) scores, so this
is all that grows with the window: 45 (learned positions) to 85 (rotary) bytes measured on
CPU, rounded up (benchmarks/README.md, "Long context")."""


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
    max_tokens: int | Literal["auto"] = "auto"
    """Token budget of one batch per worker (examples x padded length), or ``auto``: resolved
    once per training from the shard manifest's train split (its labelled examples for
    classify) and recorded as ``max_tokens_resolved`` (train report, MLflow param
    ``train.max_tokens_resolved``). The rule: 8192 (the former fixed default) when that
    gives every worker at least ``min_steps_per_pass`` optimizer steps per pass over the
    training examples; otherwise the largest budget that still does; never below
    ``min_batch_examples`` examples of the widest bucket of the train and validation splits
    (fewer where a worker holds fewer), so that every batch respects it, a window of
    thousands of events included (hence above 8192 where a window is longer). A
    transformer's auto budget is also lowered until its attention fits
    ``max_attention_gib``. An integer is used as given; an example longer than it travels
    alone in its batch."""
    min_steps_per_pass: int = 32
    """``max_tokens: auto`` only: the fewest optimizer steps per worker per pass over the
    training examples that it aims at (every bucket makes at least one batch per worker, so
    the default 32 buckets already give about 32)."""
    min_batch_examples: int = 8
    """``max_tokens: auto`` only: the budget holds at least this many examples of the widest
    bucket (or all of a worker's examples, when it holds fewer). On a few dozen series the
    steps rule alone would make batches of one series, whose gradients are too noisy for
    the default learning rate (benchmarks/README.md, "Public series")."""
    min_epoch_tokens: int = 100_000
    """An epoch repeats passes over the training examples until it holds at least this many
    real (unpadded) tokens, all workers together; recorded as ``passes_per_epoch``. One pass
    over a few hundred short sequences is a few dozen small steps: too little training
    between two validations for ``patience`` to tell the plateau before a model starts to
    learn from the end of learning (benchmarks/README.md, "Small and long data"). The
    default keeps one pass per epoch on the default data (133k tokens); 1 = always one pass."""
    max_attention_gib: float = 4.0
    """Transformer only: the most training memory its attention may need per worker
    (estimated: batch rows x window x hidden_size x layers x 96 bytes; linear in the window,
    as SDPA's fused kernels never hold the scores). A window whose single example exceeds it
    is refused before training; an auto budget is lowered to fit."""
    patience: int | Literal["auto"] = "auto"
    """Early stopping: epochs without improvement of the validation loss before stopping, or
    ``auto``: from the validation examples n, round(30 / sqrt(n)) within [3, 10] (recorded
    as ``patience_resolved``). The noise of a mean loss shrinks as 1 / sqrt(n): with 100 or
    more examples 3 epochs tell a plateau from noise; on 10, one example's swing looks like
    a plateau, and the run stops while it is still learning."""
    num_workers: int = 2
    """Ray Train workers (DDP ranks); at most shard.max_workers so each reads its own parts."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker (also its torch threads)."""
    use_gpu: Literal["auto", "always", "never"] = "auto"
    """auto (GPUs when the cluster has them) | always | never."""
    amp: Literal["bf16", "none"] = "bf16"
    """Mixed precision on GPU: bf16 | none. CPUs always run fp32."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Where Ray places the workers (Ray Train's ScalingConfig): PACK fills a node before the
    next (DDP's gradients stay inside a node where they can), SPREAD over nodes where it can,
    STRICT_ forms insist; benchmarks/cluster.py compares one node with two."""
    max_failures: int = 2
    """Worker failures retried from the latest checkpoint (Ray Train FailureConfig); -1 = forever."""
    experiment: str = "seqops"
    """MLflow experiment name."""
    storage_path: str | None = None
    """Ray Train storage for checkpoints: a folder, or an object-store URL (s3://bucket/path,
    pyarrow options as a query) that every node reaches, as a cluster of several nodes needs;
    null = ray_results in data.store when that is set, else .ray_results in the repository."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise fail("train.task", self.task, f"expected one of {', '.join(TASKS)}")
        object.__setattr__(self, "model", model_spec("train.model", self.model))
        try:
            self.model.check_task(self.task)
        except ModelConfigError as exc:
            raise _model_error("train.model", exc) from None
        if self.max_tokens != "auto" and (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or self.max_tokens < 1
        ):
            raise fail("train.max_tokens", self.max_tokens, "expected auto or an integer >= 1")
        for name in ("epochs", "num_workers", "cpus_per_worker"):
            if getattr(self, name) < 1:
                raise fail(f"train.{name}", getattr(self, name), "must be >= 1")
        if self.patience != "auto" and (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 1
        ):
            raise fail("train.patience", self.patience, "expected auto or an integer >= 1")
        for name in ("min_steps_per_pass", "min_batch_examples", "min_epoch_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fail(f"train.{name}", value, "must be an integer >= 1")
        if not self.max_attention_gib > 0:
            raise fail("train.max_attention_gib", self.max_attention_gib, "must be > 0")
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
        if self.placement_strategy not in PLACEMENTS:
            raise fail("train.placement_strategy", self.placement_strategy,
                       f"expected one of {', '.join(PLACEMENTS)}")  # fmt: skip
        if self.max_failures < -1:
            raise fail(
                "train.max_failures", self.max_failures, "must be >= -1 (-1 = retry forever)"
            )

    def with_model(self, **changes: Any) -> TrainConfig:
        """This config with some of ``model``'s hyperparameters changed (sweeps, tests)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, **changes))


AUTO_PATIENCE = (3, 10)
"""The range ``patience: auto`` resolves within."""


def auto_patience(val_examples: int) -> int:
    """``patience: auto`` for ``val_examples`` validation examples (the rule of its docstring)."""
    low, high = AUTO_PATIENCE
    if val_examples <= 0:
        return low
    return int(min(high, max(low, round(30 / math.sqrt(val_examples)))))


def attention_gib(spec: ModelSpec, widths: Iterable[int], max_tokens: int) -> float:
    """A transformer's estimated attention memory in training, GiB per worker: the largest
    over ``widths`` (padded lengths a batch may have) of rows x width x hidden_size x layers x
    ``ATTENTION_BYTES_PER_TOKEN_CHANNEL``, with rows = ``max(1, max_tokens // width)`` as the
    batch sampler makes them. Linear in the window: the attention runs in SDPA's fused
    kernels, which compute the scores block by block. 0 for the other encoders."""
    if spec.architecture != "transformer":
        return 0.0
    tokens = max((max(1, max_tokens // w) * w for w in map(int, widths)), default=0)
    layers = spec.depth_for(max(map(int, widths), default=1))
    per_token = spec.hidden_size * layers * ATTENTION_BYTES_PER_TOKEN_CHANNEL
    return tokens * per_token / 1024**3


def check_attention_memory(train: TrainConfig, window_len: int) -> None:
    """Refuse a transformer whose attention over one window of ``window_len`` events (the
    least any batch of the widest bucket holds) would need more than ``max_attention_gib``.
    The need grows linearly with the window (about 60 MiB at 5,000 events with the default
    64 channels and 2 layers), so this only stops windows of hundreds of thousands of
    events; the time of a step still grows with the square of the window."""
    need = attention_gib(train.model, [window_len], 1)
    if need > train.max_attention_gib:
        raise fail(
            "train.model.architecture",
            train.model.architecture,
            f"attention over a window of {window_len} events needs about {need:.1f} GiB per "
            f"worker in training (train.max_attention_gib={train.max_attention_gib}); use "
            "lstm, gru or tcn for windows this long, shorten the window (shard.window.length or "
            "max_len), use a smaller hidden_size or fewer layers, or raise "
            "train.max_attention_gib",
        )


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


def check_receptive_field(train: TrainConfig, window_len: int) -> str | None:
    """A note (logged, not an error) when a TCN's depth does not fit the shards' window of
    ``window_len`` events, and the note; None when it fits or the encoder is not a TCN.

    A receptive field shorter than the window can be what the user wants (local patterns, mean
    pooling), but each step's output, and ``last`` pooling, sees only the most recent events.
    Blocks whose dilation reaches past the window read only padding beyond their own step and
    cost a padding of up to (kernel_size - 1) x dilation steps per convolution."""
    spec = train.model
    if spec.num_layers == "auto":
        return None  # resolved to the fewest blocks that cover the window
    field = spec.receptive_field
    if field is None:
        return None
    covering = spec.tcn_covering_depth(window_len)
    if spec.block == "inception":
        shape, formula = "block=inception", f"1 + {max(INCEPTION_KERNELS) - 1} num_layers"
    else:
        shape = f"kernel_size={spec.kernel_size}"
        formula = "1 + 2 (kernel_size - 1)(2^num_layers - 1)"
    if field < window_len:
        note = (
            f"train.model: the tcn's receptive field is {field} events ({shape}, "
            f"num_layers={spec.num_layers}), shorter than the window of "
            f"{window_len}: each step's output sees only its last {field} events; "
            f"num_layers={covering} covers the window ({formula})"
        )
    elif spec.block == "dilated" and 2 ** (spec.num_layers - 1) >= window_len:
        note = (
            f"train.model: num_layers={spec.num_layers}: the tcn's last blocks have a dilation "
            f"of at least the window of {window_len} events and read only padding beyond "
            f"their own step; num_layers={covering} already covers the window"
        )
    else:
        return None
    log.info(note)
    return note
