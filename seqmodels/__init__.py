"""PyTorch sequence encoders (LSTM, GRU, Transformer) and task heads; no I/O (ARCHITECTURE §4)."""

from seqmodels.config import ModelConfig, ModelConfigError
from seqmodels.gru import GRUEncoder
from seqmodels.heads import (
    ClassifyHead,
    ForecastHead,
    NextEventHead,
    classify_loss,
    forecast_loss,
    next_event_loss,
)
from seqmodels.lstm import LSTMEncoder
from seqmodels.masking import (
    OOV,
    PAD,
    EncoderOutput,
    EventEmbedding,
    RecurrentState,
    causal_mask,
    last_step,
    lengths_to_mask,
    masked_mean,
)
from seqmodels.model import SequenceModel, build_model
from seqmodels.transformer import TransformerEncoder

__all__ = [
    "OOV",
    "PAD",
    "ClassifyHead",
    "EncoderOutput",
    "EventEmbedding",
    "ForecastHead",
    "GRUEncoder",
    "LSTMEncoder",
    "ModelConfig",
    "ModelConfigError",
    "NextEventHead",
    "RecurrentState",
    "SequenceModel",
    "TransformerEncoder",
    "build_model",
    "causal_mask",
    "classify_loss",
    "forecast_loss",
    "last_step",
    "lengths_to_mask",
    "masked_mean",
    "next_event_loss",
]
