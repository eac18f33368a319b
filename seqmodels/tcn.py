"""Temporal convolutional encoder (TCN): residual blocks of dilated 1-D convolutions.

Follows Bai, Kolter & Koltun (2018), "An Empirical Evaluation of Generic Convolutional and
Recurrent Networks for Sequence Modeling" (arXiv:1803.01271): block i holds two convolutions of
width ``kernel_size`` and dilation 2^i, with a residual connection around them, so the steps
one output reads grow exponentially with depth while the cost grows linearly. The receptive
field is ``1 + 2 (kernel_size - 1)(2^num_layers - 1)`` steps (``ModelSpec.receptive_field``):
each convolution adds ``(kernel_size - 1) * dilation`` steps. Same interface as
``seqmodels/recurrent.py``; every step of every sequence is computed at once, so a long window
costs no sequential loop, unlike the RNNs, and no T x T scores, unlike the transformer.

Differences from the paper, each for docs/architecture.md §4's "padding must never change a
result":

* Normalisation: LayerNorm over the channels of each step (pre-norm, as the transformer here,
  plus a final LayerNorm) instead of weight norm. It never mixes steps or sequences; BatchNorm
  would put padded positions and the other sequences of a batch into every result, and give
  another result in training than in scoring.
* Padding. Batches are right padded. Causal (the default): each convolution pads its input on
  the left by ``(kernel_size - 1) * dilation`` zeros, so step t reads steps <= t only and a
  real step never reads a right pad at all. Bidirectional (``causal: false``, classify only):
  centred convolutions that do read later steps; pads are set to zero before every
  convolution, so a real step near the end reads zeros where the sequence alone would read the
  convolution's own zero padding: the same numbers, in a batch or alone. The causal encoder
  clears pads the same way (one code path), which also keeps ``steps`` zero at pads.
* State: none yet; streaming rescores the window (``state`` / ``return_state`` are refused).
  A causal TCN's state would be each convolution's last ``(kernel_size - 1) * dilation``
  inputs (a follow-up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.config import ModelConfig
from seqmodels.masking import (
    EncoderOutput,
    EventEmbedding,
    RecurrentState,
    check_inputs,
    lengths_to_mask,
    pool,
    refuse_state,
)


class TemporalBlock(nn.Module):
    """Two dilated convolutions with pre-norm and a residual: (B, T, H) -> (B, T, H)."""

    def __init__(
        self, hidden_size: int, kernel_size: int, dilation: int, dropout: float, causal: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.conv1 = nn.Conv1d(hidden_size, hidden_size, kernel_size, dilation=dilation)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.conv2 = nn.Conv1d(hidden_size, hidden_size, kernel_size, dilation=dilation)
        self.dropout = nn.Dropout(dropout)
        span = (kernel_size - 1) * dilation  # steps one convolution adds to the receptive field
        self.padding = (span, 0) if causal else (span // 2, span - span // 2)  # (left, right)

    def convolve(self, conv: nn.Conv1d, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        # Pads are zeroed first: the norm's bias and the previous convolution's bias make them
        # non-zero, and the bidirectional encoder reads them (see the module docstring).
        x = torch.where(real, x, 0.0).transpose(1, 2)  # (B, H, T)
        x = F.pad(x, self.padding)  # (B, H, left + T + right)
        out: torch.Tensor = conv(x).transpose(1, 2)  # (B, T, H)
        return out

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """x (B, T, H), zero at pads; real (B, T, 1) True at real steps."""
        y = self.convolve(self.conv1, F.gelu(self.norm1(x)), real)
        y = self.convolve(self.conv2, self.dropout(F.gelu(self.norm2(y))), real)
        return torch.where(real, x + self.dropout(y), 0.0)


class TCNEncoder(nn.Module):
    """Events (B, T) -> per-step (B, T, H) and pooled (B, H); no recurrent state."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = EventEmbedding(
            config.vocab_sizes,
            config.n_numeric,
            config.embedding_dim,
            config.hidden_size,
            config.dropout,
        )
        self.causal = config.resolved_causal
        self.blocks = nn.ModuleList(
            TemporalBlock(config.hidden_size, config.kernel_size, 2**i, config.dropout, self.causal)
            for i in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(config.hidden_size)
        self.pooling = config.resolved_pooling
        receptive = config.receptive_field
        assert receptive is not None  # set for every tcn config
        self.receptive_field = receptive  # input steps one output reads (centred unless causal)

    def forward(
        self,
        categorical: torch.Tensor,
        numeric: torch.Tensor,
        lengths: torch.Tensor,
        state: RecurrentState | None = None,
        *,
        return_state: bool = False,
    ) -> EncoderOutput:
        """Encode a right-padded batch: categorical (B, T, C), numeric (B, T, F), lengths (B,)."""
        refuse_state("tcn", state, return_state)
        lengths = check_inputs(
            categorical, numeric, lengths, self.config.n_categorical, self.config.n_numeric
        )
        mask = lengths_to_mask(lengths, categorical.shape[1])  # (B, T)
        real = mask.unsqueeze(-1)  # (B, T, 1)
        x = self.embed(categorical, numeric, mask)  # (B, T, H), zero at pads
        for block in self.blocks:
            x = block(x, real)  # (B, T, H)
        steps = torch.where(real, self.final_norm(x), 0.0)
        pooled = pool(steps, lengths, mask, self.pooling)  # (B, H)
        return EncoderOutput(steps, pooled, None)
