"""Task heads and their padding-aware losses (docs/architecture.md §4; targets as in §3).

* ``classify``: pooled (B, H) -> (B, num_classes) logits; one entity-level label per sequence
  (the shard's ``label``; -1 means "no label" and is skipped).
* ``next_event``: steps (B, T, H) -> (B, T, next_event_vocab) logits; the target at step t is
  the vocab id of event t+1 (the shard's ``next_event``), 0 = PAD = no target.
* ``forecast``: steps (B, T, H) -> (B, T, horizon); the target at step t is the standardised
  value at t+1..t+horizon (the shard's ``forecast``), NaN where none exists.

Every loss reads real targets only: steps at or beyond a sequence's length are dropped by the
lengths mask whatever their target holds, missing targets (PAD, NaN, -1) are dropped, and the
result is the mean over the targets that remain. A batch without a single target gives a
zero that still carries a gradient, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.config import ModelConfig
from seqmodels.masking import PAD, EncoderOutput, lengths_to_mask

NO_LABEL = -1
"""The shard's ``label`` when the data has none."""


class ClassifyHead(nn.Module):
    """pooled (B, H) -> (B, num_classes) logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden_size, config.num_classes)

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        return self.out(self.dropout(encoded.pooled))  # (B, K)


class NextEventHead(nn.Module):
    """steps (B, T, H) -> (B, T, V) logits over the next event's category."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.next_event_vocab is None:
            raise ValueError("model.next_event_vocab=None: required for task next_event")
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden_size, config.next_event_vocab)

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        return self.out(self.dropout(encoded.steps))  # (B, T, V)


class ForecastHead(nn.Module):
    """steps (B, T, H) -> (B, T, horizon) forecasts of the next ``horizon`` values."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden_size, config.horizon)

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        return self.out(self.dropout(encoded.steps))  # (B, T, horizon)


HEADS: dict[str, type[nn.Module]] = {
    "classify": ClassifyHead,
    "next_event": NextEventHead,
    "forecast": ForecastHead,
}


def _reduce(values: torch.Tensor, anchor: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mean or sum of per-target losses; an empty selection gives a differentiable zero."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected mean or sum, got {reduction!r}")
    if values.numel() == 0:
        return anchor.sum() * 0.0  # keeps the graph, so backward() still works
    return values.mean() if reduction == "mean" else values.sum()


def classify_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of (B, K) logits against (B,) labels; labels < 0 (no label) are skipped.

    ``reduction="sum"`` lets an evaluation loop add batches and divide by the target count.
    """
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels: expected shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    labels = labels.long()
    keep = labels >= 0  # (B,)
    per_item = F.cross_entropy(logits[keep], labels[keep], reduction="none")
    return _reduce(per_item, logits, reduction)


def next_event_loss(
    logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of (B, T, V) logits against (B, T) next-event ids at real steps.

    Targets equal to PAD=0 (no next event within the window) and every padded step are skipped.
    """
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets: expected shape {tuple(logits.shape[:2])}, got {tuple(targets.shape)}"
        )
    mask = lengths_to_mask(lengths.long(), logits.shape[1])  # (B, T)
    targets = torch.where(mask, targets.long(), PAD)  # (B, T)
    keep = targets != PAD  # (B, T)
    per_step = F.cross_entropy(logits[keep], targets[keep], reduction="none")  # (N,)
    return _reduce(per_step, logits, reduction)


def forecast_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    lengths: torch.Tensor,
    kind: str = "huber",
    delta: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Huber or MSE of (B, T, horizon) forecasts against targets, at real steps with a value.

    ``targets`` may also be the shard's flat (B, T * horizon) row-major layout. NaN/inf targets
    (no future value exists) and padded steps are skipped; selecting before the loss keeps NaN
    out of the gradient as well as out of the value.
    """
    if targets.dim() == 2 and predictions.dim() == 3:
        targets = targets.reshape(predictions.shape)  # (B, T*H) -> (B, T, H)
    if targets.shape != predictions.shape:
        raise ValueError(
            f"targets: expected shape {tuple(predictions.shape)}, got {tuple(targets.shape)}"
        )
    mask = lengths_to_mask(lengths.long(), predictions.shape[1])  # (B, T)
    keep = mask.unsqueeze(-1) & torch.isfinite(targets)  # (B, T, H)
    pred, target = predictions[keep], targets[keep].to(predictions.dtype)  # (N,)
    if kind == "huber":
        per_value = F.huber_loss(pred, target, delta=delta, reduction="none")
    elif kind == "mse":
        per_value = F.mse_loss(pred, target, reduction="none")
    else:
        raise ValueError(f"kind: expected huber or mse, got {kind!r}")
    return _reduce(per_value, predictions, reduction)
