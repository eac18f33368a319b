"""SequenceModel: one encoder plus one task head, built from a ModelConfig.

The models of docs/architecture.md §4. The model keeps the encoders' shared signature,
``(categorical, numeric, lengths, state)``, and returns the task's output tensor, so training,
batch scoring and serving call every architecture the same way. Weights are stored with
safetensors only (no pickle: loading a stored model never executes code); the config travels
in the file's metadata as JSON so a weights file alone can be rebuilt with
``SequenceModel.from_weights``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from seqmodels.config import ModelConfig
from seqmodels.heads import HEADS, classify_loss, forecast_loss, next_event_loss
from seqmodels.masking import EncoderOutput, RecurrentState
from seqmodels.recurrent import CELLS, RecurrentEncoder
from seqmodels.tcn import TCNEncoder
from seqmodels.transformer import TransformerEncoder

ENCODERS: dict[str, type[nn.Module]] = {
    "lstm": RecurrentEncoder,  # the architecture picks nn.LSTM or nn.GRU inside
    "gru": RecurrentEncoder,
    "transformer": TransformerEncoder,
    "tcn": TCNEncoder,
}

# The shard column holding each task's target (docs/architecture.md §3), for mapping-style targets.
TARGET_COLUMNS = {"classify": "label", "next_event": "next_event", "forecast": "forecast"}

_CONFIG_KEY = "seqops.model_config"


class SequenceModel(nn.Module):
    """Encoder + head. forward -> classify (B, K) | next_event (B, T, V) | forecast (B, T, horizon)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ENCODERS[config.architecture](config)
        self.head = HEADS[config.task](config)

    @property
    def supports_state(self) -> bool:
        """Whether the encoder can carry a recurrent state between calls (LSTM, GRU)."""
        return self.config.architecture in CELLS

    def encode(
        self,
        categorical: torch.Tensor,
        numeric: torch.Tensor,
        lengths: torch.Tensor,
        state: RecurrentState | None = None,
        *,
        return_state: bool = False,
    ) -> EncoderOutput:
        """The encoder's steps (B, T, H), pooled (B, H) and (if asked) final state."""
        out: EncoderOutput = self.encoder(
            categorical, numeric, lengths, state, return_state=return_state
        )
        return out

    def forward(
        self,
        categorical: torch.Tensor,
        numeric: torch.Tensor,
        lengths: torch.Tensor,
        state: RecurrentState | None = None,
    ) -> torch.Tensor:
        """categorical (B, T, C) ids, numeric (B, T, F), lengths (B,) -> the task's output."""
        output: torch.Tensor = self.head(self.encode(categorical, numeric, lengths, state))
        return output

    def forward_with_state(
        self,
        categorical: torch.Tensor,
        numeric: torch.Tensor,
        lengths: torch.Tensor,
        state: RecurrentState | None = None,
    ) -> tuple[torch.Tensor, RecurrentState]:
        """Streaming scoring: the task's output for the new events and the state to carry.

        Scoring events[:k] and then events[k:] with the returned state equals scoring all events
        at once (per-step outputs, classify with ``pooling="last"``, and the state). Classify
        with mean pooling averages over the new events only. LSTM/GRU only.
        """
        if not self.supports_state:
            raise ValueError(
                f"state: a {self.config.architecture} model keeps no recurrent state; "
                "rescore the window with forward()"
            )
        encoded = self.encode(categorical, numeric, lengths, state, return_state=True)
        assert encoded.state is not None  # return_state=True on an RNN always sets it
        return self.head(encoded), encoded.state

    def loss(
        self,
        outputs: torch.Tensor,
        batch_targets: torch.Tensor | Mapping[str, torch.Tensor],
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        """The task's loss over real targets only (see ``seqmodels.heads``).

        ``batch_targets`` is the task's target tensor, or a mapping holding it under its shard
        column name (``label``, ``next_event`` or ``forecast``).
        """
        task = self.config.task
        if isinstance(batch_targets, Mapping):
            column = TARGET_COLUMNS[task]
            if column not in batch_targets:
                raise KeyError(f"batch_targets: task {task} needs the {column!r} target")
            targets = batch_targets[column]
        else:
            targets = batch_targets
        if task == "classify":
            return classify_loss(outputs, targets)
        if task == "next_event":
            return next_event_loss(outputs, targets, lengths)
        return forecast_loss(
            outputs, targets, lengths, kind=self.config.forecast_loss, delta=self.config.huber_delta
        )

    def save_weights(self, path: str | Path) -> None:
        """Write the weights (and the config as metadata) to a safetensors file."""
        tensors = {name: t.detach().contiguous() for name, t in self.state_dict().items()}
        metadata = {_CONFIG_KEY: json.dumps(self.config.to_dict(), sort_keys=True)}
        save_file(tensors, str(path), metadata=metadata)

    def load_weights(self, path: str | Path) -> None:
        """Load a safetensors file written by ``save_weights``; names and shapes must match."""
        device = next(self.parameters()).device
        self.load_state_dict(load_file(str(path), device=str(device)), strict=True)

    @classmethod
    def from_weights(cls, path: str | Path) -> SequenceModel:
        """Rebuild a model from a ``save_weights`` file alone (config from its metadata)."""
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if _CONFIG_KEY not in metadata:
            raise ValueError(f"{path}: no {_CONFIG_KEY} metadata; was it written by save_weights?")
        model = cls(ModelConfig.from_dict(json.loads(metadata[_CONFIG_KEY])))
        model.load_weights(path)
        return model


def build_model(config: ModelConfig) -> SequenceModel:
    """The model a config describes, freshly initialised (seed torch first for repeatability)."""
    return SequenceModel(config)
