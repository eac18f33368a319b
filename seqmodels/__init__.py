"""PyTorch sequence encoders (LSTM, GRU, Transformer, TCN) and task heads; no I/O.

The models of docs/architecture.md §4. The configuration types (``ModelSpec``, ``ModelConfig``)
import without torch, so reading ``params.yaml`` (which holds a ``ModelSpec``) stays cheap for
the stages that never build a model; the modules are imported on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seqmodels.config import ModelConfig, ModelConfigError, ModelSpec

if TYPE_CHECKING:
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
    from seqmodels.tcn import TCNEncoder
    from seqmodels.transformer import TransformerEncoder

_LAZY = {
    "seqmodels.heads": (
        "ClassifyHead",
        "ForecastHead",
        "NextEventHead",
        "classify_loss",
        "forecast_loss",
        "next_event_loss",
    ),
    "seqmodels.masking": (
        "OOV",
        "PAD",
        "EncoderOutput",
        "EventEmbedding",
        "RecurrentState",
        "causal_mask",
        "last_step",
        "lengths_to_mask",
        "masked_mean",
    ),
    "seqmodels.model": ("SequenceModel", "build_model"),
    "seqmodels.recurrent": ("RecurrentEncoder",),
    "seqmodels.tcn": ("TCNEncoder",),
    "seqmodels.transformer": ("TransformerEncoder",),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    # PEP 562: the torch modules load when one of their names is first asked for.
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'seqmodels' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "OOV",
    "PAD",
    "ClassifyHead",
    "EncoderOutput",
    "EventEmbedding",
    "ForecastHead",
    "ModelConfig",
    "ModelConfigError",
    "ModelSpec",
    "NextEventHead",
    "RecurrentEncoder",
    "RecurrentState",
    "SequenceModel",
    "TCNEncoder",
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
