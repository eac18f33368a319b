"""PyTorch sequence encoders (LSTM, GRU, Transformer) and task heads; no I/O.

The models of docs/architecture.md §4.
"""

from seqmodels.config import ModelConfig, ModelConfigError
from seqmodels.heads import (
    ClassifyHead,
    ForecastHead,
    NextEventHead,
    classify_loss,
    forecast_loss,
    next_event_loss,
)
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
from seqmodels.recurrent import RecurrentEncoder
from seqmodels.transformer import TransformerEncoder

__all__ = [
    "OOV",
    "PAD",
    "ClassifyHead",
    "EncoderOutput",
    "EventEmbedding",
    "ForecastHead",
    "ModelConfig",
    "ModelConfigError",
    "NextEventHead",
    "RecurrentEncoder",
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
