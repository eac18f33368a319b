"""Streaming steps of a recurrent model: a few new events of one sequence, in numpy.

A streaming call usually brings one event. Through PyTorch that event pays a fixed cost per
operator call that dwarfs the arithmetic of one step of a small recurrent model (figures in
benchmarks/README.md, "Streaming"), and the model's padded-batch path adds masks and input
checks that one unpadded sequence does not need. :class:`RecurrentStepper` holds an
eval-mode LSTM/GRU model's weights as numpy arrays and runs the same equations (PyTorch's
documented ``nn.LSTM``/``nn.GRU`` cells, the ``EventEmbedding`` input layer and the task
head's linear map) for up to :data:`CELL_STEPS` steps at a few microseconds per operation.
Longer runs use the model itself (``SequenceModel.encode`` on a batch of one), whose fused
loop wins there. Both give the model's results within float32 rounding (tested against the model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

CELL_STEPS = 8
"""Up to this many new steps run through the numpy cells; more go through the model."""

NumpyState = tuple[np.ndarray, np.ndarray] | np.ndarray
"""LSTM (h, c), GRU h; each (num_layers, H) float32: one sequence's recurrent state."""


def _array(tensor: torch.Tensor, transpose: bool = False) -> np.ndarray:
    value = tensor.detach().cpu().float()
    return np.ascontiguousarray((value.T if transpose else value).numpy())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function as 0.5 (1 + tanh(x / 2)): equal, and it cannot overflow where
    1 / (1 + exp(-x)) does (x < -88 in float32)."""
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


class RecurrentStepper:
    """One eval-mode LSTM/GRU :class:`seqmodels.SequenceModel` as numpy arrays (a snapshot:
    build another after the weights change)."""

    def __init__(self, model: Any) -> None:
        encoder, rnn = model.encoder, getattr(model.encoder, "rnn", None)
        if not isinstance(rnn, nn.LSTM | nn.GRU) or rnn.bidirectional or rnn.proj_size:
            raise ValueError("RecurrentStepper: needs a unidirectional LSTM/GRU encoder")
        if model.training:
            raise ValueError("RecurrentStepper: the model is in training mode; call .eval()")
        embed = encoder.embed
        self.lstm = isinstance(rnn, nn.LSTM)
        self.task = model.config.task
        self.sizes = np.asarray(embed.vocab_sizes.tolist(), dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])  # rows of each table
        tables = [_array(e.weight) for e in embed.embeddings]  # none for a numeric-only schema
        self.table = (
            np.concatenate(tables) if tables else np.zeros((0, 1), np.float32)
        )  # (sum V, E)
        self.project_w = _array(embed.project.weight, transpose=True)  # (C*E + F, H)
        self.project_b = _array(embed.project.bias)
        self.layers = []
        for w_ih, w_hh, *biases in rnn.all_weights:
            b_ih, b_hh = (_array(b) for b in biases) if biases else (None, None)
            self.layers.append((_array(w_ih, True), _array(w_hh, True), b_ih, b_hh))
        self.hidden = rnn.hidden_size
        self.head_w = _array(model.head.out.weight, transpose=True)  # (H, K)
        self.head_b = _array(model.head.out.bias)

    def zero_state(self) -> NumpyState:
        h = np.zeros((len(self.layers), self.hidden), dtype=np.float32)
        return (h, h.copy()) if self.lstm else h

    def embed(self, categorical: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        """(T, C) vocab ids, (T, F) features -> (T, H): ``EventEmbedding`` on real steps."""
        bad = (categorical < 0) | (categorical >= self.sizes)
        if bad.any():  # the message EventEmbedding.forward gives
            feature = int(np.argwhere(bad)[0, 1])
            raise ValueError(
                f"categorical[..., {feature}]: id outside [0, {int(self.sizes[feature])}) "
                "at a real step; map unseen categories to OOV=1 before scoring"
            )
        rows = self.table[categorical + self.offsets]  # (T, C, E)
        x = np.concatenate([rows.reshape(len(rows), -1), numeric], axis=1)
        out: np.ndarray = x @ self.project_w + self.project_b
        return out

    def steps(
        self, categorical: np.ndarray, numeric: np.ndarray, state: NumpyState | None
    ) -> tuple[np.ndarray, NumpyState]:
        """New events of one sequence -> the top layer's outputs (T, H) and the new state."""
        inputs = self.embed(categorical, numeric.astype(np.float32, copy=False))
        state = self.zero_state() if state is None else state
        h_all, c_all = state if isinstance(state, tuple) else (state, None)
        h_out, c_out = np.empty_like(h_all), None if c_all is None else np.empty_like(c_all)
        size = self.hidden
        gate = [slice(k * size, (k + 1) * size) for k in range(4)]
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            x_gates = inputs @ w_ih  # (T, G*H): every step's input part at once
            if b_ih is not None:
                x_gates += b_ih
            h = h_all[layer]
            c = c_all[layer] if c_all is not None else None
            outputs = np.empty((len(inputs), size), dtype=np.float32)
            for t in range(len(inputs)):
                h_gates = h @ w_hh
                if b_hh is not None:
                    h_gates = h_gates + b_hh
                if c is not None:  # LSTM: gates i, f, g, o
                    gates = x_gates[t] + h_gates
                    i, f, g, o = (gates[k] for k in gate)
                    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                    h = _sigmoid(o) * np.tanh(c)
                else:  # GRU: gates r, z, n; the reset gate scales W_hn h + b_hn
                    x_r, x_z, x_n = (x_gates[t, k] for k in gate[:3])
                    h_r, h_z, h_n = (h_gates[k] for k in gate[:3])
                    r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
                    n = np.tanh(x_n + r * h_n)
                    h = (1.0 - z) * n + z * h
                outputs[t] = h
            h_out[layer] = h
            if c_out is not None:
                c_out[layer] = c
            inputs = outputs
        return inputs, ((h_out, c_out) if c_out is not None else h_out)

    def head(self, x: np.ndarray) -> np.ndarray:
        """(N, H) -> the task's output per row: probabilities (classify, next_event) or
        standardised forecasts, as ``SequenceModel.forward`` then the scorer's softmax."""
        out: np.ndarray = x @ self.head_w + self.head_b
        if self.task in ("classify", "next_event"):
            out = np.exp(out - out.max(axis=-1, keepdims=True))
            out /= out.sum(axis=-1, keepdims=True)
        return out


def to_torch_state(state: NumpyState | None) -> Any:
    """A numpy state (num_layers, H) -> the module's batch-of-one form (num_layers, 1, H)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(torch.from_numpy(np.ascontiguousarray(s))[:, None] for s in state)
    return torch.from_numpy(np.ascontiguousarray(state))[:, None]


def to_numpy_state(state: Any) -> NumpyState:
    """The module's (num_layers, 1, H) state -> the numpy form (num_layers, H)."""
    if isinstance(state, tuple):
        return tuple(s[:, 0].detach().cpu().float().numpy().copy() for s in state)
    return state[:, 0].detach().cpu().float().numpy().copy()
