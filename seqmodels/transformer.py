"""Transformer encoder: pre-norm blocks, key-padding mask, causal or bidirectional attention.

Follows Vaswani et al. (2017), "Attention Is All You Need", with the pre-norm placement of
Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture" (``norm_first``,
plus a final LayerNorm, which pre-norm stacks need because the residual stream is never
normalised otherwise). Same interface as ``seqmodels/recurrent.py``.

* Padding: a key-padding mask keeps every query from attending to pads, and the input layer
  clears pads first (a masked weight of 0 times a NaN value is still NaN). Every real query
  has at least one real key (itself, position 0 is real), so no softmax row is empty.
* Direction: causal (step t sees steps <= t) for the per-step tasks, whose targets are later
  events; bidirectional for classify unless ``ModelConfig.causal`` says otherwise.
* Order: without positions attention is permutation invariant, so learned or sinusoidal
  positions (up to ``max_len``) are added; a longer batch is an error rather than a silent
  truncation.
* State: there is no recurrent state to carry; streaming a transformer means rescoring the
  window, so ``state`` / ``return_state`` are refused with a clear error.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqmodels.config import ModelConfig
from seqmodels.masking import (
    EncoderOutput,
    EventEmbedding,
    RecurrentState,
    causal_mask,
    check_inputs,
    lengths_to_mask,
    pool,
    refuse_state,
)


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """(max_len, dim) fixed sin/cos position table of Vaswani et al. (2017), §3.5."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])  # odd dim: one cos fewer
    return table


class TransformerEncoder(nn.Module):
    """Events (B, T) -> per-step (B, T, H) and pooled (B, H); no recurrent state."""

    position_table: torch.Tensor  # (max_len, H) buffer, sinusoidal positions only

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = EventEmbedding(
            config.vocab_sizes,
            config.n_numeric,
            config.embedding_dim,
            config.hidden_size,
            dropout=0.0,  # dropout is applied once, after the positions are added
        )
        self.max_len = config.max_len
        self.position: nn.Embedding | None = None
        if config.positions == "learned":
            self.position = nn.Embedding(config.max_len, config.hidden_size)
        else:
            # Not persistent: derived from the config, so it is not stored with the weights.
            self.register_buffer(
                "position_table",
                sinusoidal_positions(config.max_len, config.hidden_size),
                persistent=False,
            )
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=config.hidden_size,
            nhead=config.num_heads,
            dim_feedforward=config.ffn_size,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors are unavailable with norm_first; saying so avoids a warning.
        self.blocks = nn.TransformerEncoder(
            layer, num_layers=config.num_layers, enable_nested_tensor=False
        )
        self.final_norm = nn.LayerNorm(config.hidden_size)
        self.causal = config.resolved_causal
        self.pooling = config.resolved_pooling

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
        refuse_state("transformer", state, return_state)
        lengths = check_inputs(
            categorical, numeric, lengths, self.config.n_categorical, self.config.n_numeric
        )
        total = categorical.shape[1]
        if total > self.max_len:
            raise ValueError(
                f"sequence length T={total} exceeds the transformer's max_len={self.max_len} "
                "(model.max_len); keep the most recent max_len events or retrain with a larger max_len"
            )
        mask = lengths_to_mask(lengths, total)  # (B, T)
        real = mask.unsqueeze(-1)  # (B, T, 1)
        x = self.embed(categorical, numeric, mask)  # (B, T, H)
        if self.position is not None:
            positions = self.position.weight[:total]  # (T, H)
        else:
            positions = self.position_table[:total]  # (T, H)
        x = torch.where(real, x + positions, 0.0)  # (B, T, H); pads stay exactly zero
        x = self.dropout(x)

        attn_mask = causal_mask(total, x.device) if self.causal else None  # (T, T)
        steps = self.blocks(x, mask=attn_mask, src_key_padding_mask=~mask)  # (B, T, H)
        steps = torch.where(real, self.final_norm(steps), 0.0)
        pooled = pool(steps, lengths, mask, self.pooling)  # (B, H)
        return EncoderOutput(steps, pooled, None)
