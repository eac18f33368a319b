"""Resolve and load registered model versions, without touching MLflow's global state.

Serving and batch scoring load models only from the MLflow registry (docs/architecture.md §7): an
alias (``models:/<name>@champion``) is resolved once to a version, and exactly that version is
downloaded and loaded, so a promotion that moves the alias in between never mixes versions.
Everything goes through an ``MlflowClient`` and ``download_artifacts(tracking_uri=...)`` for
the URI in the :class:`~serving.config.ModelRef`; nothing here calls ``mlflow.set_*_uri``,
so one process can serve models from several stores and tests need no clean-up.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from seqcore.loading import load_scorer
from seqcore.scorer import SequenceScorer
from serving.config import ModelRef


class ModelNotFoundError(LookupError):
    """The registry has no such model, alias or version (or cannot be reached)."""


def _client(ref: ModelRef) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=ref.tracking_uri, registry_uri=ref.tracking_uri)


def resolve_version(ref: ModelRef) -> Any:
    """The registry's ModelVersion that ``ref`` names now (an alias is followed once)."""
    from mlflow.exceptions import MlflowException

    client = _client(ref)
    try:
        if ref.version is not None:
            return client.get_model_version(ref.name, str(ref.version))
        return client.get_model_version_by_alias(ref.name, str(ref.alias))
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"cannot serve {ref.uri}: not found in the MLflow registry at {ref.tracking_uri} "
            f"({exc.message}); register the model and set the alias first"
        ) from None


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A scorer and the registry facts that every response repeats."""

    scorer: SequenceScorer
    name: str
    alias: str | None
    version: str
    run_id: str
    data_hash: str
    events_sha256: str
    loaded_at: str

    def describe(self) -> dict[str, Any]:
        """The registry facts (every field but the scorer). Not ``dataclasses.asdict``: it
        deep-copies every field, the scorer's model included, before any can be dropped, and
        every response calls this."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "scorer"
        }


def load_version(ref: ModelRef, version: Any, max_tokens: int) -> LoadedModel:
    """Download and load one resolved ModelVersion (``resolve_version``'s answer)."""
    scorer = load_scorer(f"models:/{ref.name}/{version.version}", ref.tracking_uri)
    scorer.max_tokens = max_tokens
    manifest = scorer.manifest
    return LoadedModel(
        scorer=scorer,
        name=ref.name,
        alias=ref.alias,
        version=str(version.version),
        run_id=str(version.run_id),
        data_hash=manifest.content_hash or "unknown",
        events_sha256=manifest.input.sha256 or "unknown",
        loaded_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    )


def load_model(ref: ModelRef, max_tokens: int) -> LoadedModel:
    """Resolve ``ref`` and load exactly that registered version (never a file path)."""
    return load_version(ref, resolve_version(ref), max_tokens)
