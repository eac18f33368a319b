"""ModelSpec and ModelConfig: the typed, validated description of one sequence model
(docs/architecture.md §4).

``ModelSpec`` holds the user's choices, the model's hyperparameters (which encoder, its widths
and depth, dropout, the transformer's switches, the forecast loss), with the one set of
defaults: the training config holds a ``ModelSpec`` (``params.yaml``'s ``train.model``) instead
of copying its fields. ``ModelConfig`` is a spec plus the task head and the sizes that the data
decides (vocabularies, numeric features, longest window, classes, horizon); ``build_model``
turns it into a module. A ``ModelConfig`` is stored next to the weights in MLflow, so
``to_dict``/``from_dict`` are a flat, JSON-safe round trip. Every value is checked on
construction and errors name the field and the bad value (the habit of litgpt's ``args.py``).

Values that depend on other fields (``pooling``, ``causal``) default to ``None`` and are
resolved by properties rather than rewritten in ``__post_init__``: that way
``dataclasses.replace(spec, architecture="transformer")`` in a sweep gets the transformer's
defaults instead of the LSTM's frozen choice.

A field added together with an architecture (``kernel_size``, for the TCN) is left out of
``to_dict`` for the other architectures while it holds its default, so the stored configs of
those models stay byte for byte what they were; so is a field every architecture reads that
came later (``numeric_embedding``) while it holds its default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

Architecture = Literal["lstm", "gru", "transformer", "tcn"]
Task = Literal["classify", "next_event", "forecast"]
Pooling = Literal["last", "mean"]
Positions = Literal["learned", "sinusoidal", "rotary"]
ForecastLoss = Literal["huber", "mse"]
NumericEmbedding = Literal["linear", "periodic"]
TcnBlock = Literal["dilated", "inception"]

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
TASKS: tuple[str, ...] = get_args(Task)
PER_STEP_TASKS = ("next_event", "forecast")
POOLINGS: tuple[str, ...] = get_args(Pooling)
POSITIONS: tuple[str, ...] = get_args(Positions)
FORECAST_LOSSES: tuple[str, ...] = get_args(ForecastLoss)
NUMERIC_EMBEDDINGS: tuple[str, ...] = get_args(NumericEmbedding)
TCN_BLOCKS: tuple[str, ...] = get_args(TcnBlock)
BIDIRECTIONAL = ("transformer", "tcn")
"""The encoders that can also read later steps (``causal: false``, classify only)."""

MAX_TCN_LAYERS = 16
"""Block i of a TCN has dilation 2^i and pads its input by (kernel_size - 1) * 2^i steps, so
depth costs exponentially more padding: 16 blocks already reach 65,536 x 2 (kernel_size - 1)
events, past any window this project shards."""

INCEPTION_KERNELS = (9, 19, 39)
"""Widths of an inception block's three convolutions: InceptionTime's 10/20/40 (Ismail Fawaz
et al. 2020), made odd so that a bidirectional block is centred on its step."""
INCEPTION_DEPTH = 6
"""``num_layers: auto`` for inception blocks: InceptionTime's depth, whatever the window."""

AUTO_DEPTH = 2
"""``num_layers: auto`` for the RNNs and the transformer (the depth the defaults measured)."""

ARCHITECTURE_FIELDS = {"kernel_size": "tcn", "block": "tcn"}
"""Fields only one architecture reads, written by ``to_dict`` for the others only when set
away from their default (see the module docstring)."""
LATER_FIELDS = ("numeric_embedding", "block")
"""Fields that came after models were stored, written by ``to_dict`` only when set away from
their default, for the same reason (``block``: a dilated TCN's config stays what it was, so
code from before the field loads it)."""

_Config = TypeVar("_Config", bound="ModelSpec")


class ModelConfigError(ValueError):
    """A model setting is missing or invalid; the message names the field (``model.<field>``).

    ``field``, ``value`` and ``reason`` let a caller that reads the setting from elsewhere
    (``params.yaml``'s ``train.model``) name it by its own key.
    """

    def __init__(
        self, message: str, *, field: str | None = None, value: Any = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.field, self.value, self.reason = field, value, reason or message


def _fail(name: str, value: Any, why: str) -> ModelConfigError:
    return ModelConfigError(f"model.{name}={value!r}: {why}", field=name, value=value, reason=why)


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; True as a layer count is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(name, value, "expected an integer")
    if value < minimum:
        raise _fail(name, value, f"must be >= {minimum}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, value, "expected a number")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(name, value, f"expected one of {', '.join(choices)}")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The model's hyperparameters: encoder, widths, depth and the switches a user picks."""

    architecture: Architecture = "lstm"
    """Encoder: ``lstm`` | ``gru`` (unidirectional) | ``transformer`` (pre-norm) | ``tcn``
    (dilated convolutions)."""
    embedding_dim: int = 16
    """Embedding width of each categorical feature."""
    hidden_size: int = 64
    """Width of the encoder's per-step representation (the transformer's d_model)."""
    num_layers: int | Literal["auto"] = "auto"
    """Stacked recurrent layers, transformer blocks or TCN blocks (each doubles the dilation);
    ``auto`` is resolved against the data's window by ``depth_for``: 2 for the RNNs and the
    transformer, for a TCN the fewest blocks whose receptive field covers the window."""
    dropout: float = 0.1
    """Dropout on the input embedding, between layers and before the head; in [0, 1)."""
    num_heads: int = 4
    """Transformer attention heads; must divide ``hidden_size``."""
    ffn_size: int = 128
    """Transformer feed-forward width."""
    positions: Positions = "learned"
    """Transformer position encoding: ``learned`` | ``sinusoidal`` (both added to the input, up
    to ``max_len`` steps) | ``rotary`` (RoPE in every layer; no length limit; needs an even
    ``hidden_size / num_heads``)."""
    causal: bool | None = None
    """Transformer/TCN read only earlier steps; null = transformer causal for per-step tasks,
    else not; TCN always causal. false is for classify only (the RNNs are always causal)."""
    pooling: Pooling | None = None
    """Sequence summary for classify: ``last`` | ``mean``; null = last for RNNs, mean for the
    transformer and the TCN."""
    forecast_loss: ForecastLoss = "huber"
    """forecast: ``huber`` (robust to heavy-tailed amounts) | ``mse``."""
    huber_delta: float = 1.0
    """forecast: Huber threshold, in standardised units."""
    kernel_size: int = 3
    """TCN: width of each dilated convolution (>= 2); the receptive field is
    1 + 2 (kernel_size - 1)(2^num_layers - 1) steps."""
    block: TcnBlock = "dilated"
    """TCN: ``dilated`` (two convolutions of ``kernel_size``, dilation 2^i in block i) |
    ``inception`` (InceptionTime-style: convolutions of widths ``INCEPTION_KERNELS`` side by
    side with a max-pool branch; receptive field 1 + 38 num_layers; auto depth 6;
    ``kernel_size`` is not read)."""
    numeric_embedding: NumericEmbedding = "linear"
    """Numeric inputs: ``linear`` (the values, projected with the embeddings) | ``periodic``
    (each feature first coded by learned sines and cosines, ``embedding_dim`` wide)."""

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        for name in ("embedding_dim", "hidden_size", "num_heads", "ffn_size"):
            _check_int(name, getattr(self, name), 1)
        if self.num_layers != "auto":
            _check_int("num_layers", self.num_layers, 1)
        _check_int("kernel_size", self.kernel_size, 2)
        if (
            self.architecture == "tcn"
            and self.num_layers != "auto"
            and self.num_layers > MAX_TCN_LAYERS
        ):
            raise _fail(
                "num_layers",
                self.num_layers,
                f"a tcn takes at most {MAX_TCN_LAYERS} blocks ({MAX_TCN_LAYERS} reach "
                f"{self.tcn_receptive_field(MAX_TCN_LAYERS)} events)",
            )
        _check_number("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise _fail("dropout", self.dropout, "must be within [0, 1)")
        _check_choice("positions", self.positions, POSITIONS)
        if self.pooling is not None:
            _check_choice("pooling", self.pooling, POOLINGS)
        if self.causal is not None and not isinstance(self.causal, bool):
            raise _fail("causal", self.causal, "expected true, false or null")
        if self.architecture == "transformer" and self.hidden_size % self.num_heads:
            raise _fail("num_heads", self.num_heads, f"must divide hidden_size={self.hidden_size}")
        head_dim = self.hidden_size // self.num_heads
        if self.architecture == "transformer" and self.positions == "rotary" and head_dim % 2:
            # RoPE turns pairs of channels of each head; an odd head size leaves one unpaired.
            raise _fail(
                "num_heads",
                self.num_heads,
                f"positions: rotary needs an even head size (model.hidden_size / "
                f"model.num_heads), got {self.hidden_size} / {self.num_heads} = {head_dim}",
            )
        if self.architecture not in BIDIRECTIONAL and self.causal is False:
            raise _fail(
                "causal",
                False,
                f"{self.architecture} is unidirectional; only the "
                f"{' and '.join(BIDIRECTIONAL)} can be bidirectional",
            )
        _check_choice("forecast_loss", self.forecast_loss, FORECAST_LOSSES)
        _check_choice("numeric_embedding", self.numeric_embedding, NUMERIC_EMBEDDINGS)
        _check_choice("block", self.block, TCN_BLOCKS)
        if self.architecture == "tcn" and self.block == "inception" and self.hidden_size % 4:
            # Four branches (three widths and the max-pool) of hidden_size / 4 channels each.
            raise _fail("hidden_size", self.hidden_size, "block: inception needs a multiple of 4")
        _check_number("huber_delta", self.huber_delta)
        if self.huber_delta <= 0:
            raise _fail("huber_delta", self.huber_delta, "must be > 0")

    def check_task(self, task: str) -> None:
        """Refuse a task this spec cannot serve (a bidirectional encoder for a per-step task)."""
        _check_choice("task", task, TASKS)
        if task in PER_STEP_TASKS and self.causal is False:
            # The target at step t describes events after t; a bidirectional encoder sees it.
            raise _fail("causal", False, f"task {task} needs a causal encoder")

    def causal_for(self, task: str) -> bool:
        """Whether step t may only see steps <= t under ``task`` (always true for the RNNs,
        by default for the TCN, so that streaming can keep its last inputs as state)."""
        if self.causal is not None:
            return self.causal
        return self.architecture != "transformer" or task in PER_STEP_TASKS

    @property
    def resolved_pooling(self) -> str:
        """``last`` or ``mean``: how ``EncoderOutput.pooled`` summarises the real steps."""
        if self.pooling is not None:
            return self.pooling
        return "mean" if self.architecture in ("transformer", "tcn") else "last"

    @property
    def receptive_field(self) -> int | None:
        """TCN: the input steps one output step reads, ``1 + 2 (k - 1)(2^L - 1)`` (two
        convolutions of width k per block, dilation 2^i in block i); None for the other
        encoders (an RNN's reach is unbounded, a transformer's is the window)."""
        if self.architecture != "tcn" or self.num_layers == "auto":
            return None
        return self.tcn_receptive_field(self.num_layers)

    def depth_for(self, window_len: int) -> int:
        """``num_layers`` resolved for windows of ``window_len`` events: as given, or for
        ``auto`` ``AUTO_DEPTH`` (RNNs, transformer) or the fewest TCN blocks whose receptive
        field covers the window (at most ``MAX_TCN_LAYERS``). A TCN that reaches only part
        of a long series classifies it from local patterns alone (benchmarks/README.md,
        "Public series")."""
        if self.num_layers != "auto":
            return int(self.num_layers)
        if self.architecture != "tcn":
            return AUTO_DEPTH
        if self.block == "inception":
            return INCEPTION_DEPTH
        return self.tcn_covering_depth(window_len)

    def tcn_covering_depth(self, window_len: int) -> int:
        """The fewest blocks of this spec's TCN kernel whose receptive field covers
        ``window_len`` events (at most ``MAX_TCN_LAYERS``)."""
        return next(
            (n for n in range(1, MAX_TCN_LAYERS) if self.tcn_receptive_field(n) >= window_len),
            MAX_TCN_LAYERS,
        )

    def tcn_receptive_field(self, num_layers: int) -> int:
        """The receptive field of this spec's TCN kernel with ``num_layers`` blocks."""
        if self.block == "inception":
            return 1 + (max(INCEPTION_KERNELS) - 1) * num_layers
        return 1 + 2 * (self.kernel_size - 1) * (2**num_layers - 1)

    @property
    def spec(self) -> ModelSpec:
        """The hyperparameters alone (a ``ModelConfig`` without its task and data sizes)."""
        return ModelSpec(**_spec_values(self))

    @property
    def depth(self) -> int:
        """``num_layers`` as a number: a built model's (resolved on construction)."""
        if self.num_layers == "auto":
            raise _fail("num_layers", "auto", "a spec's depth is known once the window is")
        return int(self.num_layers)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists), one flat mapping; ``from_dict`` inverts it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            owner = ARCHITECTURE_FIELDS.get(f.name)
            unread = owner not in (None, self.architecture)
            if (unread or f.name in LATER_FIELDS) and value == f.default:
                continue  # from_dict restores the default
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_Config], raw: Mapping[str, Any]) -> _Config:
        """Build from a mapping (a stored ``to_dict`` or a params section); unknown keys fail."""
        if not isinstance(raw, Mapping):
            raise ModelConfigError(f"model: expected a mapping, got {type(raw).__name__}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ModelConfigError(
                f"model: unknown key(s) {', '.join(map(str, unknown))}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(raw))
        if missing:
            raise ModelConfigError(f"model: missing required key(s) {', '.join(missing)}")
        return cls(**dict(raw))


def _spec_values(spec: ModelSpec) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(ModelSpec)}


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ModelSpec):
    """A ``ModelSpec`` plus the task head and the sizes the data decides: one buildable model.

    Stored as ``model_config.json`` next to the weights; ``to_dict`` is one flat mapping of
    every field, the spec's and these, so stored files keep loading with ``from_dict``.
    """

    task: Task = "classify"
    """Head: ``classify`` (one label per sequence) | ``next_event`` | ``forecast`` (per step)."""
    vocab_sizes: tuple[int, ...]
    """One vocabulary size per categorical input feature, each counting PAD=0 and OOV=1."""
    n_numeric: int
    """Numeric features per step (the shard's ``features.numeric_order``, time delta included)."""
    max_len: int = 256
    """Transformer positions: the longest padded length T it accepts (learned and sinusoidal
    positions; rotary has no limit)."""
    num_classes: int = 2
    """classify: number of classes."""
    next_event_vocab: int | None = None
    """next_event: size of the target vocabulary (PAD=0 is never a target); required for that task."""
    horizon: int = 3
    """forecast: steps ahead predicted at each step (the shard's ``forecast_horizon``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_layers == "auto":
            # max_len is the data's window, which is what auto is resolved against: a built
            # model, and the config stored with its weights, always has a number here.
            object.__setattr__(self, "num_layers", self.depth_for(self.max_len))
        self.check_task(self.task)
        if isinstance(self.vocab_sizes, str | bytes) or not isinstance(
            self.vocab_sizes, tuple | list
        ):
            raise _fail("vocab_sizes", self.vocab_sizes, "expected a list of integers")
        object.__setattr__(self, "vocab_sizes", tuple(self.vocab_sizes))
        for i, size in enumerate(self.vocab_sizes):
            _check_int(f"vocab_sizes[{i}]", size, 2)  # PAD and OOV at least
        _check_int("n_numeric", self.n_numeric, 0)
        if not self.vocab_sizes and self.n_numeric == 0:
            raise _fail(
                "n_numeric", 0, "a model needs at least one input feature (vocab_sizes empty)"
            )
        _check_int("max_len", self.max_len, 1)
        _check_int("num_classes", self.num_classes, 2)
        if self.next_event_vocab is not None:
            _check_int("next_event_vocab", self.next_event_vocab, 2)
        elif self.task == "next_event":
            raise _fail("next_event_vocab", None, "required for task next_event")
        _check_int("horizon", self.horizon, 1)

    @classmethod
    def from_spec(cls, spec: ModelSpec, **task_and_sizes: Any) -> ModelConfig:
        """``spec``'s hyperparameters with the task and the data's sizes (``vocab_sizes``, ...)."""
        return cls(**_spec_values(spec), **task_and_sizes)

    @property
    def n_categorical(self) -> int:
        """Categorical input features (C in ``categorical: (B, T, C)``)."""
        return len(self.vocab_sizes)

    @property
    def resolved_causal(self) -> bool:
        """Whether step t may only see steps <= t (always true for the RNNs)."""
        return self.causal_for(self.task)
