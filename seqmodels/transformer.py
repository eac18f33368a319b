"""Transformer encoder: pre-norm blocks, key-padding mask, causal or bidirectional attention.

Follows Vaswani et al. (2017), "Attention Is All You Need", with the pre-norm placement of
Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture" (plus a final
LayerNorm, which pre-norm stacks need because the residual stream is never normalised
otherwise). Same interface as ``seqmodels/recurrent.py``.

* Attention: ``torch.nn.functional.scaled_dot_product_attention`` (SDPA), so the fused kernels
  (flash attention on CPU and CUDA, memory-efficient attention on CUDA) compute it block by
  block: training memory grows with T, not T^2, and no (T, T) or (B, heads, T, T) tensor is
  built here. The blocks keep the parameter names and shapes of ``nn.TransformerEncoderLayer``
  (``norm_first=True``, gelu, ``batch_first``) under ``blocks.layers.<i>``, so the weights of
  every model trained with that module load unchanged and give the same outputs.
* Padding: the input layer clears pads first (a masked weight of 0 times a NaN value is still
  NaN), and pads are zeroed in the output. Causal attention takes no mask at all
  (``is_causal``): batches are right padded, so a real query never has a pad among its
  earlier keys; pad queries do read earlier pads, which changes nothing a real step sees.
  Bidirectional attention masks pad keys with a (B, 1, 1, T) mask, broadcast by the kernel.
  Every real query has at least one real key (itself, position 0 is real), so no softmax row
  is empty.
* Direction: causal (step t sees steps <= t) for the per-step tasks, whose targets are later
  events; bidirectional for classify unless ``ModelConfig.causal`` says otherwise.
* Order: without positions attention is permutation invariant. ``learned`` and ``sinusoidal``
  add a position vector to the input, up to ``max_len`` positions; a longer batch is an error
  rather than a silent truncation. ``rotary`` (RoPE, Su et al. 2021, "RoFormer", arXiv
  2104.09864) rotates each head's queries and keys by an angle proportional to the position
  in every layer, so scores depend on the distance between steps; it has no table and no
  length limit, ``max_len`` is not checked, and a model scores windows longer than any it was
  trained on (how well it extrapolates is an empirical question, not a guarantee).
* Dropout on the attention weights is applied in training on CUDA only: there the fused
  kernels draw it block by block, while on CPU any ``dropout_p > 0`` sends SDPA to its
  reference kernel, which materialises the (B, heads, T, T) weights and their dropout mask.
  Dropout on the embeddings, the residual branches and the feed-forward layer applies on
  every device.
* State: there is no recurrent state to carry; streaming a transformer means rescoring the
  window, so ``state`` / ``return_state`` are refused with a clear error.
"""

from __future__ import annotations

import copy
import math

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

ROTARY_BASE = 10000.0
"""RoPE's wavelength base (Su et al. 2021): pair i of a head turns by t * base^(-2i/d)."""

Rotary = tuple[torch.Tensor, torch.Tensor]
"""(cos, sin), each (T, head_dim): the rotation of every position, shared by all layers."""


def sinusoidal_positions(max_len: int, dim: int) -> torch.Tensor:
    """(max_len, dim) fixed sin/cos position table of Vaswani et al. (2017), §3.5."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])  # odd dim: one cos fewer
    return table


def rotary_angles(total: int, head_dim: int, device: torch.device | None = None) -> Rotary:
    """(cos, sin) of RoPE for positions 0..total-1, each (total, head_dim).

    The "rotate half" layout (GPT-NeoX): channel i is paired with channel i + head_dim / 2,
    a fixed permutation of the paper's adjacent pairs, which the learned projections absorb.
    """
    inv_freq = ROTARY_BASE ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    )  # (d/2,)
    position = torch.arange(total, dtype=torch.float32, device=device)  # (T,)
    angles = torch.outer(position, inv_freq)  # (T, d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, d)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Rotate queries or keys (B, heads, T, d) by their position's angles."""
    cos, sin = (t.to(x.dtype) for t in rotary)  # bf16 under autocast: keep SDPA's dtypes equal
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class SelfAttention(nn.Module):
    """Multi-head self-attention through SDPA: (B, T, H) -> (B, T, H).

    The parameters of ``nn.MultiheadAttention`` (``in_proj_weight`` (3H, H) holding the query,
    key and value projections in that order, ``in_proj_bias``, ``out_proj``), created and
    initialised in its order, so a seed gives the same weights as that module.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden_size))
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        causal: bool,
        rotary: Rotary | None,
    ) -> torch.Tensor:
        """``key_mask``: (B, 1, 1, T) bool, True at real keys, or None (attend to all)."""
        batch, total, hidden = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3H)
        qkv = qkv.view(batch, total, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, d)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        dropout = self.dropout if self.training and x.is_cuda else 0.0  # see the module doc
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=dropout, is_causal=causal
        )  # (B, heads, T, d)
        return self.out_proj(out.transpose(1, 2).reshape(batch, total, hidden))


class EncoderBlock(nn.Module):
    """Pre-norm block with ``nn.TransformerEncoderLayer``'s parameters (norm_first, gelu):
    x + attention(norm1(x)), then x + linear2(gelu(linear1(norm2(x))))."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_size: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(hidden_size, num_heads, dropout)
        self.linear1 = nn.Linear(hidden_size, ffn_size)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_size, hidden_size)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        causal: bool,
        rotary: Rotary | None,
    ) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), key_mask, causal, rotary))
        ffn = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout2(ffn)


class EncoderBlocks(nn.Module):
    """The stack, as ``blocks.layers.<i>`` (``nn.TransformerEncoder``'s names)."""

    def __init__(self, block: EncoderBlock, num_layers: int) -> None:
        super().__init__()
        # Copies of one block, as nn.TransformerEncoder makes them: a seed gives the weights
        # today's models started from, so a comparison of the two trains the same model.
        self.layers = nn.ModuleList(copy.deepcopy(block) for _ in range(num_layers))

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        causal: bool,
        rotary: Rotary | None,
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_mask, causal, rotary)
        return x


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
            numeric_embedding=config.numeric_embedding,
        )
        self.max_len = config.max_len
        self.position_kind = config.positions
        self.head_dim = config.hidden_size // config.num_heads
        self.position: nn.Embedding | None = None
        if config.positions == "learned":
            self.position = nn.Embedding(config.max_len, config.hidden_size)
        elif config.positions == "sinusoidal":
            # Not persistent: derived from the config, so it is not stored with the weights.
            self.register_buffer(
                "position_table",
                sinusoidal_positions(config.max_len, config.hidden_size),
                persistent=False,
            )
        self.dropout = nn.Dropout(config.dropout)
        block = EncoderBlock(config.hidden_size, config.num_heads, config.ffn_size, config.dropout)
        self.blocks = EncoderBlocks(block, config.depth)
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
        if self.position_kind != "rotary" and total > self.max_len:
            raise ValueError(
                f"sequence length T={total} exceeds the transformer's max_len={self.max_len} "
                "(model.max_len); keep the most recent max_len events or retrain with a larger "
                "max_len (positions: rotary has no such limit)"
            )
        mask = lengths_to_mask(lengths, total)  # (B, T)
        real = mask.unsqueeze(-1)  # (B, T, 1)
        x = self.embed(categorical, numeric, mask)  # (B, T, H); pads exactly zero
        rotary: Rotary | None = None
        if self.position is not None:
            x = torch.where(real, x + self.position.weight[:total], 0.0)
        elif self.position_kind == "sinusoidal":
            x = torch.where(real, x + self.position_table[:total], 0.0)
        else:
            rotary = rotary_angles(total, self.head_dim, x.device)
        x = self.dropout(x)

        key_mask = None
        if not self.causal and int(lengths.min()) < total:  # no pads, no mask: a faster kernel
            key_mask = mask[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        steps = self.blocks(x, key_mask, self.causal, rotary)  # (B, T, H)
        steps = torch.where(real, self.final_norm(steps), 0.0)
        pooled = pool(steps, lengths, mask, self.pooling)  # (B, H)
        return EncoderOutput(steps, pooled, None)
