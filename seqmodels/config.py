"""ModelConfig: the typed, validated description of one sequence model (docs/architecture.md §4).

One frozen dataclass says which encoder (``lstm``, ``gru``, ``transformer``), which task head
(``classify``, ``next_event``, ``forecast``) and which sizes; ``build_model(config)`` turns it
into a module. It is stored next to the weights in MLflow, so ``to_dict``/``from_dict`` are a
JSON-safe round trip. Every value is checked on construction and errors name the field and the
bad value (the habit of litgpt's ``args.py``, as in ``pipelines/config.py``).

Values that depend on other fields (``pooling``, ``causal``) default to ``None`` and are
resolved by properties rather than rewritten in ``__post_init__``: that way
``dataclasses.replace(config, architecture="transformer")`` in a sweep gets the transformer's
defaults instead of the LSTM's frozen choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ARCHITECTURES = ("lstm", "gru", "transformer")
TASKS = ("classify", "next_event", "forecast")
PER_STEP_TASKS = ("next_event", "forecast")
POOLINGS = ("last", "mean")
POSITIONS = ("learned", "sinusoidal")
FORECAST_LOSSES = ("huber", "mse")


class ModelConfigError(ValueError):
    """A model setting is missing or invalid; the message names the field (``model.<field>``)."""


def _fail(name: str, value: Any, why: str) -> ModelConfigError:
    return ModelConfigError(f"model.{name}={value!r}: {why}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; True as a layer count is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(name, value, "expected an integer")
    if value < minimum:
        raise _fail(name, value, f"must be >= {minimum}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(name, value, f"expected one of {', '.join(choices)}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Encoder, task head and sizes of one sequence model."""

    architecture: str = "lstm"
    """Encoder: ``lstm`` | ``gru`` (unidirectional) | ``transformer`` (pre-norm)."""
    task: str = "classify"
    """Head: ``classify`` (one label per sequence) | ``next_event`` | ``forecast`` (per step)."""
    vocab_sizes: tuple[int, ...]
    """One vocabulary size per categorical input feature, each counting PAD=0 and OOV=1."""
    n_numeric: int
    """Numeric features per step (the shard's ``features.numeric_order``, time delta included)."""
    embedding_dim: int = 16
    """Embedding width of each categorical feature."""
    hidden_size: int = 64
    """Width of the encoder's per-step representation (the transformer's d_model)."""
    num_layers: int = 2
    """Stacked recurrent layers or transformer blocks."""
    dropout: float = 0.1
    """Dropout on the input embedding, between layers and before the head; in [0, 1)."""
    num_heads: int = 4
    """Transformer attention heads; must divide ``hidden_size``."""
    ffn_size: int = 256
    """Transformer feed-forward width."""
    max_len: int = 256
    """Transformer positions: the longest padded length T it accepts."""
    positions: str = "learned"
    """Transformer position encoding: ``learned`` | ``sinusoidal``."""
    causal: bool | None = None
    """Transformer attends only to earlier steps; None = causal for per-step tasks, else not."""
    pooling: str | None = None
    """Sequence summary for classify: ``last`` | ``mean``; None = last for RNNs, mean for the transformer."""
    num_classes: int = 2
    """classify: number of classes."""
    next_event_vocab: int | None = None
    """next_event: size of the target vocabulary (PAD=0 is never a target); required for that task."""
    horizon: int = 3
    """forecast: steps ahead predicted at each step (the shard's ``forecast_horizon``)."""
    forecast_loss: str = "huber"
    """forecast: ``huber`` (robust to heavy-tailed amounts) | ``mse``."""
    huber_delta: float = 1.0
    """forecast: Huber threshold, in standardised units."""

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("task", self.task, TASKS)
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
        for name in ("embedding_dim", "hidden_size", "num_layers", "num_heads", "ffn_size"):
            _check_int(name, getattr(self, name), 1)
        _check_int("max_len", self.max_len, 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float):
            raise _fail("dropout", self.dropout, "expected a number")
        if not 0.0 <= self.dropout < 1.0:
            raise _fail("dropout", self.dropout, "must be within [0, 1)")
        _check_choice("positions", self.positions, POSITIONS)
        if self.pooling is not None:
            _check_choice("pooling", self.pooling, POOLINGS)
        if self.causal is not None and not isinstance(self.causal, bool):
            raise _fail("causal", self.causal, "expected true, false or null")
        if self.architecture == "transformer" and self.hidden_size % self.num_heads:
            raise _fail("num_heads", self.num_heads, f"must divide hidden_size={self.hidden_size}")
        if self.architecture != "transformer" and self.causal is False:
            raise _fail(
                "causal",
                False,
                f"{self.architecture} is unidirectional; only the transformer can be bidirectional",
            )
        if self.task in PER_STEP_TASKS and self.causal is False:
            # The target at step t describes events after t; a bidirectional encoder sees it.
            raise _fail("causal", False, f"task {self.task} needs a causal encoder")
        _check_int("num_classes", self.num_classes, 2)
        if self.next_event_vocab is not None:
            _check_int("next_event_vocab", self.next_event_vocab, 2)
        elif self.task == "next_event":
            raise _fail("next_event_vocab", None, "required for task next_event")
        _check_int("horizon", self.horizon, 1)
        _check_choice("forecast_loss", self.forecast_loss, FORECAST_LOSSES)
        if isinstance(self.huber_delta, bool) or not isinstance(self.huber_delta, int | float):
            raise _fail("huber_delta", self.huber_delta, "expected a number")
        if self.huber_delta <= 0:
            raise _fail("huber_delta", self.huber_delta, "must be > 0")

    @property
    def n_categorical(self) -> int:
        """Categorical input features (C in ``categorical: (B, T, C)``)."""
        return len(self.vocab_sizes)

    @property
    def resolved_causal(self) -> bool:
        """Whether step t may only see steps <= t (always true for the RNNs)."""
        if self.causal is not None:
            return self.causal
        return self.architecture != "transformer" or self.task in PER_STEP_TASKS

    @property
    def resolved_pooling(self) -> str:
        """``last`` or ``mean``: how ``EncoderOutput.pooled`` summarises the real steps."""
        if self.pooling is not None:
            return self.pooling
        return "mean" if self.architecture == "transformer" else "last"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists); ``from_dict(to_dict())`` gives an equal config."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
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
