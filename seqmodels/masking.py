"""Padding-correct pieces every encoder imports: masks, pooling, the input layer, the output type.

Batches are right padded (real steps are positions ``[0, length)``, docs/architecture.md §3),
so one ``lengths`` vector describes the padding of every tensor in a batch. The rule these
helpers enforce is docs/architecture.md §4's "padding must never change a result": whatever
sits in a padded position (zeros from the shard writer, or garbage) is replaced before it can
reach a real step, and summaries (last step, mean) read real steps only. Kept as free
functions and one small module rather than a base class, so each encoder file reads top to
bottom on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

PAD = 0
"""Vocabulary id of padding (and of "no target" in next_event targets)."""
OOV = 1
"""Vocabulary id of categories unseen in training."""

PERIODIC_FREQUENCIES = 16
"""Frequencies per numeric feature of the periodic embedding (k in the paper, which tunes it
within [1, 128]; its library's default is 48)."""
PERIODIC_INIT_SCALE = 0.1
"""Standard deviation of the periodic embedding's initial frequencies (sigma in the paper, its
most sensitive setting): inputs are standardised, so 0.1 starts each code close to a smooth
function of the value over a few standard deviations and lets training sharpen it."""

RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""GRU: h ``(num_layers, B, H)``; LSTM: (h, c), each ``(num_layers, B, H)``."""


class EncoderOutput(NamedTuple):
    """What every encoder returns (a NamedTuple so tracing and export see plain tensors)."""

    steps: torch.Tensor
    """(B, T, H) per-step representations; zero at padded steps."""
    pooled: torch.Tensor
    """(B, H) one summary per sequence (last real step or mean of real steps)."""
    state: RecurrentState | None
    """Recurrent state after each sequence's last real step, when asked for; else None."""


def check_inputs(
    categorical: torch.Tensor,
    numeric: torch.Tensor,
    lengths: torch.Tensor,
    n_categorical: int,
    n_numeric: int,
) -> torch.Tensor:
    """Validate the shared encoder inputs; returns ``lengths`` as int64."""
    if categorical.dim() != 3 or categorical.shape[-1] != n_categorical:
        raise ValueError(
            f"categorical: expected shape (B, T, {n_categorical}), got {tuple(categorical.shape)}"
        )
    if categorical.is_floating_point():
        raise ValueError(f"categorical: expected integer vocab ids, got {categorical.dtype}")
    batch, steps = categorical.shape[:2]
    if tuple(numeric.shape) != (batch, steps, n_numeric):
        raise ValueError(
            f"numeric: expected shape ({batch}, {steps}, {n_numeric}), got {tuple(numeric.shape)}"
        )
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},), got {tuple(lengths.shape)}")
    lengths = lengths.long()
    # Every sequence needs one real step: last-step pooling and attention rows need a key.
    if batch and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
        raise ValueError(
            f"lengths: every length must be within [1, T={steps}], got {lengths.tolist()}"
        )
    return lengths


def refuse_state(encoder: str, state: object, return_state: bool) -> None:
    """Encoders without a recurrent state (transformer, TCN) share the RNNs' interface; a
    caller that passes or asks for a state gets this error rather than a silent None."""
    if state is not None or return_state:
        raise ValueError(
            f"state: the {encoder} keeps no recurrent state; rescore the whole window "
            "(use an lstm or gru model for stateful streaming)"
        )


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask, True at real steps ``t < length``."""
    positions = torch.arange(max_len, device=lengths.device)  # (T,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)


def causal_mask(size: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool attention mask, True where a query may NOT attend (a later key).

    PyTorch's convention for boolean ``attn_mask`` in ``nn.TransformerEncoder``.
    """
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(diagonal=1)


def last_step(steps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> (B, H): the output at each sequence's own last real step (length - 1).

    ``steps[:, -1]`` would read padding for every sequence shorter than T.
    """
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, steps.shape[-1])  # (B, 1, H)
    return steps.gather(1, index).squeeze(1)  # (B, H)


def masked_mean(steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H): mean over real steps only (pads neither add nor count)."""
    weights = mask.unsqueeze(-1).to(steps.dtype)  # (B, T, 1)
    total = torch.where(mask.unsqueeze(-1), steps, 0.0).sum(dim=1)  # (B, H)
    return total / weights.sum(dim=1).clamp(min=1.0)


def pool(steps: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """The sequence summary named by ``ModelConfig.resolved_pooling``: (B, T, H) -> (B, H)."""
    if how == "last":
        return last_step(steps, lengths)
    if how == "mean":
        return masked_mean(steps, mask)
    raise ValueError(f"pooling: expected last or mean, got {how!r}")


class EventEmbedding(nn.Module):
    """Input layer: categorical ids + numeric features per step -> (B, T, hidden).

    Each categorical feature has its own embedding (``padding_idx=0``); the embeddings and the
    numeric features are concatenated and linearly projected to ``hidden_size``. (Projecting
    the numeric features first and then the concatenation would be two linear maps in a row,
    the same function class as this single one.)

    ``numeric_embedding="periodic"`` first maps each numeric feature to its own
    ``embedding_dim`` vector, ReLU(Linear([sin 2 pi c x, cos 2 pi c x])) with learned
    frequencies c per feature (Gorishniy, Rubachev & Babenko (2022), "On Embeddings for
    Numerical Features in Tabular Deep Learning", their PLR embedding, from the authors'
    ``rtdl_num_embeddings``), so the encoder sees a learned non-linear code of each value
    instead of the value alone (benchmarks/README.md, "Numeric input embedding").

    Padded steps are cleared with ``torch.where`` (never by multiplying with the mask: NaN * 0
    is NaN), on the inputs and on the output. Out-of-range ids in pads would break the lookup;
    a NaN in a pad would reach the projection's weight gradient (its backward multiplies the
    inputs by a zero gradient) and, in the transformer, the attention output (a masked weight
    of 0 times a NaN value is NaN); the projection's bias would make pads non-zero.
    """

    vocab_sizes: torch.Tensor  # (C,) buffer: ids at or above it are invalid

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        n_numeric: int,
        embedding_dim: int,
        hidden_size: int,
        dropout: float = 0.0,
        numeric_embedding: str = "linear",
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(size, embedding_dim, padding_idx=PAD) for size in vocab_sizes
        )
        self.n_numeric = n_numeric
        periodic = numeric_embedding == "periodic" and n_numeric > 0
        numeric_width = n_numeric * embedding_dim if periodic else n_numeric
        self.project = nn.Linear(len(vocab_sizes) * embedding_dim + numeric_width, hidden_size)
        self.dropout = nn.Dropout(dropout)
        # Built after the layers above so that a seeded linear model draws the same weights.
        self.numeric: nn.Module | None = None
        if periodic:
            # Imported here: a model with linear inputs loads without the package.
            from rtdl_num_embeddings import PeriodicEmbeddings

            self.numeric = PeriodicEmbeddings(
                n_numeric,
                embedding_dim,
                n_frequencies=PERIODIC_FREQUENCIES,
                frequency_init_scale=PERIODIC_INIT_SCALE,
                lite=False,
            )
        self.register_buffer(
            "vocab_sizes", torch.tensor(list(vocab_sizes), dtype=torch.long), persistent=False
        )

    def forward(
        self, categorical: torch.Tensor, numeric: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        real = mask.unsqueeze(-1)  # (B, T, 1)
        ids = torch.where(real, categorical, PAD)  # (B, T, C)
        if ids.numel():
            bad = (ids < 0) | (ids >= self.vocab_sizes)  # (B, T, C)
            if bool(bad.any()):
                feature = int(bad.nonzero()[0, 2])
                raise ValueError(
                    f"categorical[..., {feature}]: id outside [0, {int(self.vocab_sizes[feature])}) "
                    "at a real step; map unseen categories to OOV=1 before scoring"
                )
        parts = [embed(ids[..., i]) for i, embed in enumerate(self.embeddings)]  # C x (B, T, E)
        values = torch.where(real, numeric, 0.0)  # (B, T, F)
        if self.numeric is not None:
            # The module takes one batch dimension: (B*T, F) -> (B*T, F, E) -> (B, T, F*E).
            coded = self.numeric(values.reshape(-1, self.n_numeric))
            values = coded.reshape(*values.shape[:-1], -1)
        parts.append(values)
        x = self.project(torch.cat(parts, dim=-1))  # (B, T, C*E + F) -> (B, T, H)
        x = torch.where(real, x, 0.0)
        return self.dropout(x)
