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
* State: none; a causal TCN's output at step t reads only its last ``receptive_field``
  inputs, so streaming keeps those events and rescores them (``serving/streaming.py``);
  ``state`` / ``return_state`` are refused.

``block: inception`` swaps each block for an InceptionTime-style one (Ismail Fawaz et al.
(2020), "InceptionTime: Finding AlexNet for Time Series Classification", arXiv:1909.04939): a
1x1 bottleneck, then convolutions of widths ``INCEPTION_KERNELS`` side by side with a
width-3 max-pool branch, concatenated; no dilation, depth 6 by default. The same pre-norm,
residual and padding rules as above, and one more for the max-pool: pads enter it as -inf,
the value a max-pool's own padding has, so they never win.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.config import INCEPTION_KERNELS, ModelConfig
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
        self.padding = _span_padding(span, causal)

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


def _span_padding(span: int, causal: bool) -> tuple[int, int]:
    """(left, right) padding of a convolution that reads ``span`` steps besides its own."""
    return (span, 0) if causal else (span // 2, span - span // 2)


class InceptionBlock(nn.Module):
    """Bottleneck, three convolutions of widths ``INCEPTION_KERNELS`` and a max-pool branch
    side by side, pre-norm and a residual: (B, T, H) -> (B, T, H), H divisible by 4."""

    def __init__(self, hidden_size: int, dropout: float, causal: bool) -> None:
        super().__init__()
        branch = hidden_size // 4
        self.norm = nn.LayerNorm(hidden_size)
        self.bottleneck = nn.Linear(hidden_size, branch)
        self.convs = nn.ModuleList(nn.Conv1d(branch, branch, k) for k in INCEPTION_KERNELS)
        self.paddings = [_span_padding(k - 1, causal) for k in INCEPTION_KERNELS]
        self.pool_padding = _span_padding(2, causal)
        self.pool_project = nn.Linear(hidden_size, branch)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """x (B, T, H), zero at pads; real (B, T, 1) True at real steps."""
        h = self.norm(x)
        narrow = torch.where(real, self.bottleneck(h), 0.0).transpose(1, 2)  # (B, H/4, T)
        outs = [
            conv(F.pad(narrow, padding)).transpose(1, 2)  # (B, T, H/4)
            for conv, padding in zip(self.convs, self.paddings, strict=True)
        ]
        # Pads as -inf before the max-pool, as its own padding is: a pad never wins a max.
        wide = torch.where(real, h, float("-inf")).transpose(1, 2)  # (B, H, T)
        pooled = F.max_pool1d(F.pad(wide, self.pool_padding, value=float("-inf")), 3, stride=1)
        pooled = torch.where(real, pooled.transpose(1, 2), 0.0)  # (B, T, H)
        outs.append(self.pool_project(pooled))
        y = F.gelu(torch.cat(outs, dim=-1))  # (B, T, H)
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
            numeric_embedding=config.numeric_embedding,
        )
        self.causal = config.resolved_causal
        blocks: list[nn.Module] = [
            InceptionBlock(config.hidden_size, config.dropout, self.causal)
            if config.block == "inception"
            else TemporalBlock(
                config.hidden_size, config.kernel_size, 2**i, config.dropout, self.causal
            )
            for i in range(config.depth)
        ]
        self.blocks = nn.ModuleList(blocks)
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
