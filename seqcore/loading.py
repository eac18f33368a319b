"""Where the MLflow store is, and the one way to load a logged model's scorer from it.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a team's server), else a SQLite store
``mlflow.db`` plus an artifact folder ``mlartifacts/`` in the repository, the same for tracking
and registry (docs/architecture.md, "Defaults that run on one laptop"). Every part that scores
a logged model (evaluation, the promotion gate, online and batch serving) loads it through
:func:`load_scorer`, by URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
``runs:/<run>/model`` or an artifact location), never by a file path of the run that made it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the scorer, only where a model is loaded
    from seqcore.scorer import SequenceScorer

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


class ModelLoadError(LookupError):
    """The model URI names nothing loadable in the store; the message says which and where."""


def tracking_uri(root: str | Path = ".") -> str:
    """The tracking (and registry) URI: the environment's, else the repository's SQLite file."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(root).resolve() / DEFAULT_DB).as_posix()}"


def load_scorer(model_uri: str, store_uri: str | None = None) -> SequenceScorer:
    """Download the model at ``model_uri`` from the store at ``store_uri`` (default:
    :func:`tracking_uri`) and build its scorer; the download is removed afterwards, as the
    weights are then in memory. Touches no MLflow global state, so one process can load from
    several stores."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    store = store_uri or tracking_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        source = model_uri
        if model_uri.startswith("models:/"):  # the store says where the artifacts lie
            client = MlflowClient(tracking_uri=store, registry_uri=store)
            path = model_uri.removeprefix("models:/")
            name, _, alias = path.partition("@")
            head, _, version = path.rpartition("/")
            if alias:  # models:/<name>@<alias>
                version = client.get_model_version_by_alias(name, alias).version
                source = client.get_model_version_download_uri(name, str(version))
            elif version.isdigit():  # models:/<name>/<version>
                source = client.get_model_version_download_uri(head, version)
            elif not head and path.startswith("m-"):  # a logged model no version names yet
                source = client.get_logged_model(path).artifact_location
            # Anything else (models:/<name>/latest, ...) MLflow resolves itself below.
        with tempfile.TemporaryDirectory(prefix="seqops-model-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=store
            )
            scorer: SequenceScorer = mlflow.pyfunc.load_model(local).unwrap_python_model().scorer
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model {model_uri} not found in MLflow at {store}: {first}") from None
    return scorer
