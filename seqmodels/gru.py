"""GRU encoder: unidirectional, right-padded batches, exact per-sequence final state.

Follows Cho et al. (2014) via ``torch.nn.GRU``; the same interface and padding rules as
``seqmodels/lstm.py``. Unidirectional on purpose: the output at step t depends only on events
<= t, so the per-step tasks do not see their targets and streaming can carry the state.

Padding and state (PERFORMANCE.md "Padding and bucketing"):

* Outputs. With right padding the output at every real step t < length is computed before
  any pad is read, so a plain padded run is already correct there, and plain padded batches
  are faster than ``pack_padded_sequence`` on CPU. Training and batch scoring never pack.
* Final state. ``nn.GRU`` on a padded batch returns h after step T-1, i.e. after the pads,
  for every sequence shorter than T. The top layer's h at length-1 is in the outputs, but
  the lower layers' h is not, so for a stacked GRU no gather can recover the state. Hence the
  state is computed only when asked for (``return_state=True``, the streaming path): if every
  sequence fills the batch (length == T) the padded run's final h is exact and is returned;
  otherwise the batch is packed so each recurrence stops at its own length.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqmodels.config import ModelConfig
from seqmodels.masking import (
    EncoderOutput,
    EventEmbedding,
    RecurrentState,
    check_inputs,
    lengths_to_mask,
    pool,
)


class GRUEncoder(nn.Module):
    """Events (B, T) -> per-step (B, T, H), pooled (B, H) and optionally the h state."""

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
        self.rnn = nn.GRU(
            input_size=config.hidden_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            # nn.GRU applies dropout between layers only; it warns when there is one layer.
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
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
        """Encode a right-padded batch.

        categorical: (B, T, C) vocab ids; numeric: (B, T, F); lengths: (B,) real steps.
        state: h (num_layers, B, H) from a previous call's ``return_state=True``: the new
        events continue each sequence from there (streaming). ``return_state=True`` returns
        the state after each sequence's last real step.
        """
        lengths = check_inputs(
            categorical, numeric, lengths, self.config.n_categorical, self.config.n_numeric
        )
        if state is not None and not isinstance(state, torch.Tensor):
            raise ValueError("state: the GRU state is one tensor h (num_layers, B, H)")
        total = categorical.shape[1]
        mask = lengths_to_mask(lengths, total)  # (B, T)
        x = self.embed(categorical, numeric, mask)  # (B, T, H)

        ragged = bool((lengths < total).any())
        if return_state and ragged:
            # Only packing stops the recurrence of each sequence at its own length (see top).
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, final = self.rnn(packed, state)  # nn.GRU re-sorts state and final
            steps, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=total)
        else:
            steps, final = self.rnn(x, state)  # (B, T, H); final exact only if not ragged

        steps = torch.where(mask.unsqueeze(-1), steps, 0.0)  # pads hold state-after-pads: clear
        pooled = pool(steps, lengths, mask, self.pooling)  # (B, H)
        return EncoderOutput(steps, pooled, final if return_state else None)
