"""Recurrent encoder (LSTM or GRU): unidirectional, right-padded batches, exact final state.

One module for both recurrent architectures of docs/architecture.md §4, because they differ
only in the cell: ``ModelConfig.architecture`` picks ``torch.nn.LSTM`` (Hochreiter &
Schmidhuber, 1997) or ``torch.nn.GRU`` (Cho et al., 2014), and everything around the cell
(input layer, padding, packing, pooling) is the same. The one other difference is the
recurrent state: the LSTM carries (h, c), the GRU carries h alone (``RecurrentState`` in
``seqmodels/masking.py``); :data:`CELLS` records both facts per architecture, so the encoder
code below never branches on the architecture.

Unidirectional on purpose: the output at step t depends only on events <= t, so the same
encoder serves the per-step tasks (next_event, forecast) without leaking targets, and
streaming scoring can continue from a carried state.

Padding and state (benchmarks/README.md, "Padding"; pytorch/pytorch#149194):

* Outputs. With right padding the output at every real step t < length is computed before
  any pad is read, so a plain padded run is already correct there. Plain padded batches are
  also faster than ``pack_padded_sequence`` on CPU, so training and batch scoring never pack.
* Final state. ``nn.LSTM``/``nn.GRU`` on a padded batch return the state after step T-1,
  i.e. after the pads, for every sequence shorter than T. The top layer's h at length-1
  could be gathered from the outputs, but the lower layers' h and every layer's LSTM cell
  state c never appear in the outputs, so no gather can recover them. Hence: the state is
  computed only when asked for (``return_state=True``, the streaming path), and then

  - if every sequence fills the batch (length == T, e.g. one entity scored at a time, or a
    full bucket), the padded run's final state is exact and is returned as is;
  - otherwise the batch is packed, which stops each sequence's recurrence at its own length.

  Training never asks for the state, so it never pays for packing.

The submodules are named ``embed`` and ``rnn`` (state_dict keys ``encoder.embed.*`` and
``encoder.rnn.weight_ih_l0`` ...): stored weights and ``seqmodels.stepping`` rely on them.
"""

from __future__ import annotations

from typing import NamedTuple

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


class Cell(NamedTuple):
    """What differs between the recurrent architectures."""

    module: type[nn.LSTM] | type[nn.GRU]
    state_type: type
    """The Python type of a carried state: ``tuple`` (h, c) or one ``torch.Tensor`` h."""
    state_doc: str
    """How the state looks, for error messages."""


CELLS = {
    "lstm": Cell(nn.LSTM, tuple, "a tuple (h, c)"),
    "gru": Cell(nn.GRU, torch.Tensor, "one tensor h (num_layers, B, H)"),
}


class RecurrentEncoder(nn.Module):
    """Events (B, T) -> per-step (B, T, H), pooled (B, H) and optionally the recurrent state."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.architecture not in CELLS:
            raise ValueError(
                f"architecture: RecurrentEncoder builds {' or '.join(CELLS)}, "
                f"got {config.architecture!r}"
            )
        self.config = config
        self.cell = CELLS[config.architecture]
        # Built in this order (input layer, then the cell) so a seeded build draws the same
        # initial weights as ever.
        self.embed = EventEmbedding(
            config.vocab_sizes,
            config.n_numeric,
            config.embedding_dim,
            config.hidden_size,
            config.dropout,
            numeric_embedding=config.numeric_embedding,
        )
        self.rnn = self.cell.module(
            input_size=config.hidden_size,
            hidden_size=config.hidden_size,
            num_layers=config.depth,
            batch_first=True,
            # Dropout applies between layers only; PyTorch warns when there is one layer.
            dropout=config.dropout if config.depth > 1 else 0.0,
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
        state: LSTM (h, c) or GRU h, each (num_layers, B, H), from a previous call's
        ``return_state=True``: the new events continue each sequence from there (streaming).
        ``return_state=True`` returns the state after each sequence's last real step.
        """
        lengths = check_inputs(
            categorical, numeric, lengths, self.config.n_categorical, self.config.n_numeric
        )
        if state is not None and not isinstance(state, self.cell.state_type):
            # nn.LSTM given a bare h (or nn.GRU a tuple) fails deep inside with a vaguer message.
            name = self.config.architecture.upper()
            raise ValueError(f"state: the {name} state is {self.cell.state_doc}")
        total = categorical.shape[1]
        mask = lengths_to_mask(lengths, total)  # (B, T)
        x = self.embed(categorical, numeric, mask)  # (B, T, H)

        ragged = bool((lengths < total).any())
        if return_state and ragged:
            # Only packing stops the recurrence of each sequence at its own length (see top).
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, final = self.rnn(packed, state)  # the module re-sorts state and final
            steps, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=total)
        else:
            steps, final = self.rnn(x, state)  # (B, T, H); final exact only if not ragged

        steps = torch.where(mask.unsqueeze(-1), steps, 0.0)  # pads hold state-after-pads: clear
        pooled = pool(steps, lengths, mask, self.pooling)  # (B, H)
        return EncoderOutput(steps, pooled, final if return_state else None)
