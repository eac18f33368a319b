"""The MLflow pyfunc flavour of a seqops model, logged as "models from code".

MLflow runs this file to build the model when it is loaded (``mlflow.models.set_model``), so no
pickled Python object is stored; the weights are a safetensors file and the config and shard
manifest are JSON artifacts. ``predict`` takes raw events (a DataFrame with the manifest's
schema columns, any order, several entities) and returns one row per entity, so that the
model alone is enough to score raw events (docs/architecture.md §5).

This flavour, and the copy of ``seqcore``/``seqmodels`` logged with it, is for MLflow's own
tools (``mlflow.pyfunc.load_model``, ``mlflow models serve``), which run the artifact's code.
seqops itself never does: :func:`seqcore.loading.load_scorer` builds the scorer with the
installed code from the weights, config and manifest alone (docs/architecture.md §10).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from seqcore.scorer import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, SequenceScorer


class SeqopsModel(PythonModel):
    """Raw events -> per-entity predictions via :class:`seqcore.scorer.SequenceScorer`."""

    def load_context(self, context: Any) -> None:
        folder = Path(tempfile.mkdtemp(prefix="seqops-model-"))
        for key, name in (
            ("weights", WEIGHTS_FILE),
            ("model_config", CONFIG_FILE),
            ("manifest", MANIFEST_FILE),
        ):
            shutil.copy(context.artifacts[key], folder / name)
        self.scorer = SequenceScorer.from_dir(folder)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return self.scorer.score(model_input)


mlflow.models.set_model(SeqopsModel())
