"""Where the MLflow store is, and the one way to load a logged model's scorer from it.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a team's server), else a SQLite store
``mlflow.db`` plus an artifact folder ``mlartifacts/`` in the repository, the same for tracking
and registry (docs/architecture.md, "Defaults that run on one laptop"). "The repository" is
DVC's: a stage that ``dvc exp run`` runs in a temporary copy (``--temp``, ``--queue``) finds the
parent repository in ``DVC_ROOT`` and logs there (:func:`store_root`), not to a store that is
deleted with the copy. A local store records absolute ``file://`` artifact paths; a store
moved with its ``mlartifacts/`` still loads, as the files are looked up under the store's own
folder when the recorded path is gone (:func:`artifact_source`). Every part that scores
a logged model (evaluation, the promotion gate, online and batch serving) loads it through
:func:`load_scorer`, by URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
``models:/<model id>`` or ``runs:/<run>/<name>``), never by a file path of the run that made it.

Loading runs no code from the artifact (docs/architecture.md §10). A logged model also carries
its pyfunc flavour (``seqcore/mlflow_model.py`` and a copy of the packages) for MLflow's own
tools, but whoever can write to the registry can change those files, so :func:`load_scorer`
reads only the MLmodel (as plain YAML) and the files its ``artifacts:`` list names (weights,
model config, shard manifest), and builds the scorer with the installed code. Before any of
them is read, each is checked against the sha256 recorded when the model was logged
(``seqops.files_sha256`` on the logged model, copied to a registry version when it is
registered; :func:`file_record`), and the MLmodel's ``metadata.seqops_model_format`` must be
one this code reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:  # torch loads with the scorer, only where a model is loaded
    from seqcore.scorer import SequenceScorer

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
DVC_ROOT_ENV = "DVC_ROOT"
"""Set by DVC for every stage command: the repository root, for ``dvc exp run`` the parent
repository's (not the temporary copy an experiment may run in)."""
ARTIFACT_ROOT_ENV = "SEQOPS_ARTIFACT_ROOT"
"""Where a new experiment keeps its files (a folder or any MLflow artifact URI, e.g.
``s3://bucket/prefix``); default ``mlartifacts/`` next to a SQLite store."""

MODEL_FORMAT = 1
"""The layout of a logged model this code writes: a pyfunc flavour whose ``artifacts`` are the
weights (safetensors), the model config and the shard manifest (JSON)."""
SUPPORTED_FORMATS = frozenset({1})
FORMAT_KEY = "seqops_model_format"
"""The MLmodel ``metadata`` key holding the format (``metadata`` of ``log_model``)."""
FILES_TAG = "seqops.files_sha256"
"""Tag (logged model, registry version): JSON {path in the artifact: sha256} of every file
:func:`load_scorer` reads."""
FORMAT_TAG = "seqops.model_format"
"""Tag next to :data:`FILES_TAG`: the format the files were found to have when recorded."""
ARTIFACT_FILES = {
    "weights": "weights.safetensors",
    "model_config": "model_config.json",
    "manifest": "manifest.json",
}
"""The pyfunc ``artifacts`` keys the scorer is built from, and the name each file gets for
``SequenceScorer.from_dir`` (its WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE)."""
MLMODEL = "MLmodel"


class ModelLoadError(LookupError):
    """The model URI names nothing loadable in the store; the message says which and where."""


def store_root(root: str | Path = ".") -> Path:
    """The folder the default store lives in: ``DVC_ROOT`` inside a DVC stage, else ``root``.

    Only the store moves: code, params and ``dvc.lock`` lineage stay those of ``root``, the
    folder the stage runs in (an experiment's own copy)."""
    dvc_root = os.environ.get(DVC_ROOT_ENV)
    if not dvc_root:
        return Path(root).resolve()
    found = Path(dvc_root).resolve()
    if not found.is_dir():  # else SQLite fails later, naming only the database file
        raise FileNotFoundError(
            f"{DVC_ROOT_ENV}={dvc_root} is not a folder: the repository this DVC stage belongs "
            "to has moved or was removed; run the experiment again from the repository"
        )
    return found


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative as written), None for any other
    store or an in-memory database."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def tracking_uri(root: str | Path = ".") -> str:
    """The tracking (and registry) URI: the environment's, else the SQLite file in
    :func:`store_root`. A relative SQLite path in the environment is relative to
    :func:`store_root` too, not to the folder a stage happens to run in."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        path = sqlite_path(env)
        if path is None or path.is_absolute():
            return env
        _, mark, query = env.partition("?")
        return f"sqlite:///{(store_root(root) / path).as_posix()}{mark}{query}"
    return f"sqlite:///{(store_root(root) / DEFAULT_DB).as_posix()}"


def _local_path(location: str) -> Path | None:
    """The folder of a ``file://`` (or scheme-less absolute) artifact location, else None."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme and Path(location).is_absolute():
        return Path(location)
    return None


def rebased(recorded: Path, db: Path) -> list[Path]:
    """Where ``recorded`` lies if its ``mlartifacts/`` moved next to ``db``: the path after an
    ``mlartifacts`` segment under ``<folder of db>/mlartifacts/``, from the last segment to
    the first (an experiment may itself be named ``mlartifacts``)."""
    parts = recorded.parts
    base = db.resolve().parent / DEFAULT_ARTIFACTS
    return [
        base.joinpath(*parts[i + 1 :])
        for i in range(len(parts) - 2, -1, -1)
        if parts[i] == DEFAULT_ARTIFACTS
    ]


def artifact_source(location: str, store: str, where: str = "cannot load") -> str:
    """Where to download a model's files recorded at ``location`` from: ``location`` itself,
    unless it is a local folder that is gone and the store is a SQLite file whose own
    ``mlartifacts/`` holds it (the store was moved or copied with its files). Safe because
    each file is then checked against its recorded sha256 before it is read."""
    recorded = _local_path(location)
    if recorded is None or recorded.exists():
        return location
    db = sqlite_path(store)
    candidates = [c for c in rebased(recorded, db) if c != recorded] if db is not None else []
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.as_uri()
    looked = (
        f", nor does {candidates[0]} (the same path in the store's own folder)"
        if candidates
        else ""
    )
    raise ModelLoadError(
        f"{where}: its files were recorded at {recorded}, which does not exist{looked}. "
        f"A local MLflow store records absolute paths: move {DEFAULT_ARTIFACTS}/ together "
        f"with {DEFAULT_DB} (side by side), or set {ARTIFACT_ROOT_ENV} to a location every "
        "user of the store reaches (s3://bucket/prefix) before new experiments are created"
    )


def installed_version() -> str:
    """The installed seqops package's version (recorded in each logged model)."""
    from importlib import metadata

    try:
        return metadata.version("seqops")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class _Located:
    """Where a model URI's files lie and who holds the record of them."""

    location: str
    record: dict[str, str]
    holder: str
    """What holds the record, for messages ("version 3 of model 'x'", "logged model m-...")."""
    how_to_record: str
    run_id: str | None = None
    """The run that logged the model (its evaluation's metrics are there)."""


def _version(client: Any, name: str, version: str) -> _Located:
    mv = client.get_model_version(name, version)
    return _Located(
        location=client.get_model_version_download_uri(name, str(mv.version)),
        record=dict(mv.tags or {}),
        holder=f"version {mv.version} of model {name!r}",
        how_to_record=(
            f"an admin who trusts its current files records them with `seqops registry seal "
            f"{mv.version} --reason ...` (kept in the registry history), or the register stage "
            "registers the model again"
        ),
        run_id=mv.run_id or None,
    )


def _logged(model: Any) -> _Located:
    return _Located(
        location=model.artifact_location,
        record=dict(model.tags or {}),
        holder=f"logged model {model.model_id}",
        how_to_record=(
            "it was logged before seqops recorded its files: train it again (dvc repro train)"
        ),
        run_id=model.source_run_id or None,
    )


def _locate(client: Any, model_uri: str) -> _Located:
    """The files and the record a URI names; ModelLoadError for a form without a record."""
    if model_uri.startswith("models:/"):
        path = model_uri.removeprefix("models:/")
        name, _, alias = path.partition("@")
        head, _, version = path.rpartition("/")
        if alias:
            return _version(
                client, name, str(client.get_model_version_by_alias(name, alias).version)
            )
        if head and version.isdigit():
            return _version(client, head, version)
        if head and version == "latest":
            found = client.search_model_versions(f"name = '{head}'")
            if not found:
                raise ModelLoadError(f"cannot load {model_uri}: model {head!r} has no versions")
            return _version(client, head, str(max(int(v.version) for v in found)))
        if not head and path.startswith("m-"):
            return _logged(client.get_logged_model(path))
    elif model_uri.startswith("runs:/"):
        run_id, _, name = model_uri.removeprefix("runs:/").partition("/")
        experiment = client.get_run(run_id).info.experiment_id
        for model in client.search_logged_models([experiment], filter_string=f"name = '{name}'"):
            if model.source_run_id == run_id:
                return _logged(model)
        raise ModelLoadError(f"run {run_id} has no logged model named {name!r}")
    raise ModelLoadError(
        f"cannot load {model_uri}: name a registered version (models:/<name>/<version>, "
        "models:/<name>@<alias>) or a logged model (models:/<model id>, runs:/<run>/<name>); "
        "a bare artifact location carries no record of its files"
    )


def _artifact_paths(mlmodel: Any, where: str) -> dict[str, str]:
    """The pyfunc ``artifacts:`` paths (relative, inside the model) of the scorer's files."""
    try:
        listed = mlmodel["flavors"]["python_function"]["artifacts"]
        paths = {key: str(listed[key]["path"]) for key in ARTIFACT_FILES}
    except (KeyError, TypeError):
        raise ModelLoadError(
            f"{where}: the MLmodel's python_function flavour does not list the artifacts "
            f"{', '.join(ARTIFACT_FILES)}; not a seqops model"
        ) from None
    for key, rel in paths.items():
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ModelLoadError(f"{where}: artifact {key} has path {rel!r}, outside the model")
    return paths


def _fetch(
    location: str, store: str, dst: Path, check: Callable[[str, Path], None], where: str
) -> tuple[dict[str, Any], Path]:
    """Download the MLmodel and the files it lists, calling ``check(path, local)`` on each
    before it is read; returns the parsed MLmodel and a folder for ``from_dir``."""
    import mlflow
    import yaml

    location = artifact_source(location, store, where)

    def download(rel: str) -> Path:
        into = dst / "download" / str(PurePosixPath(rel).parent)
        into.mkdir(parents=True, exist_ok=True)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/{rel}", dst_path=str(into), tracking_uri=store
            )
        )
        check(rel, local)
        return local

    try:
        mlmodel = yaml.safe_load(download(MLMODEL).read_text())
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{where}: the MLmodel is not valid YAML: {exc}") from None
    folder = dst / "model"
    folder.mkdir()
    for key, rel in _artifact_paths(mlmodel, where).items():
        download(rel).replace(folder / ARTIFACT_FILES[key])
    return mlmodel, folder


def _model_format(mlmodel: dict[str, Any], record: dict[str, str], where: str) -> int:
    """The format the MLmodel records (else the one a seal recorded); refuses what this code
    does not read, naming what it found, what it reads and the fix."""
    metadata = mlmodel.get("metadata") if isinstance(mlmodel, dict) else None
    found = metadata.get(FORMAT_KEY) if isinstance(metadata, dict) else None
    logged_by = metadata.get("seqops_version") if isinstance(metadata, dict) else None
    if found is None and record.get(FORMAT_TAG, "").isdigit():
        found = int(record[FORMAT_TAG])
    supported = ", ".join(str(f) for f in sorted(SUPPORTED_FORMATS))
    installed = f"this seqops ({installed_version()}) reads model format {supported}"
    if found is None:
        raise ModelLoadError(
            f"{where}: no seqops model format recorded (MLmodel metadata.{FORMAT_KEY}); "
            f"{installed}. Train and register the model again with this version; a version "
            "logged by an earlier seqops loads after `seqops registry seal`, which checks it"
        )
    if isinstance(found, bool) or not isinstance(found, int) or found not in SUPPORTED_FORMATS:
        by = f" (logged by seqops {logged_by})" if logged_by else ""
        install = f", or install seqops {logged_by}" if logged_by else ""
        raise ModelLoadError(
            f"{where}: seqops model format {found!r}{by}; {installed}. Train and register the "
            f"model again with this version{install}"
        )
    return found


def _build(folder: Path, where: str) -> SequenceScorer:
    from seqcore.manifest import ManifestError
    from seqcore.scorer import SequenceScorer
    from seqmodels.config import ModelConfigError

    try:
        return SequenceScorer.from_dir(folder)
    except (ManifestError, ModelConfigError) as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def _not_found(model_uri: str, store: str, exc: Exception) -> ModelLoadError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"model {model_uri} not found in MLflow at {store}: {first}")


def load_scorer(model_uri: str, store_uri: str | None = None) -> SequenceScorer:
    """Build the scorer of the model at ``model_uri`` in the store at ``store_uri`` (default:
    :func:`tracking_uri`) with the installed code, from the files the MLmodel lists, each
    verified against the recorded sha256 before it is read. The download is removed
    afterwards, as the weights are then in memory. Touches no MLflow global state, so one
    process can load from several stores."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from seqcore.io import sha256_file

    store = store_uri or tracking_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        located = _locate(MlflowClient(tracking_uri=store, registry_uri=store), model_uri)
        where = f"cannot load {model_uri} ({located.holder})"
        try:
            recorded = json.loads(located.record[FILES_TAG])
        except (KeyError, json.JSONDecodeError, TypeError):
            raise ModelLoadError(
                f"{where}: no record of its files' sha256 ({FILES_TAG}), so they cannot be "
                f"checked; {located.how_to_record}"
            ) from None

        def verify(rel: str, local: Path) -> None:
            expected, found = recorded.get(rel), sha256_file(local)
            if expected is None:
                raise ModelLoadError(
                    f"{where}: {rel} has no recorded sha256; {located.how_to_record}"
                )
            if found != expected:
                raise ModelLoadError(
                    f"{where}: {rel} has sha256 {found}, but {located.holder} recorded "
                    f"{expected}; the file changed after it was recorded"
                )

        with tempfile.TemporaryDirectory(prefix="seqops-model-") as tmp:
            mlmodel, folder = _fetch(located.location, store, Path(tmp), verify, where)
            _model_format(mlmodel, located.record, where)
            return _build(folder, where)
    except (MlflowException, OSError) as exc:
        raise _not_found(model_uri, store, exc) from None


def pinned(model_uri: str, store_uri: str | None = None) -> tuple[str, str | None]:
    """The URI of one version and the run that logged it: ``models:/<name>@<alias>`` as the
    version the alias names now (``models:/<name>/<v>``), so that what is read next comes
    from that version even if the alias moves meanwhile; any other URI as it is. The run id
    is None when MLflow does not say; ModelLoadError as :func:`load_scorer` for a URI it
    cannot resolve."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    store = store_uri or tracking_uri()
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    try:
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        if model_uri.startswith("models:/") and alias:
            mv = client.get_model_version_by_alias(name, alias)
            return f"models:/{name}/{mv.version}", mv.run_id or None
        return model_uri, _locate(client, model_uri).run_id
    except MlflowException as exc:
        raise _not_found(model_uri, store, exc) from None


def file_record(model_uri: str, store_uri: str | None = None) -> dict[str, str]:
    """The record (tags :data:`FILES_TAG`, :data:`FORMAT_TAG`) of the files at ``model_uri``
    as they are now, after building a scorer from them with the installed code: what the
    train stage sets on a model it logs, and ``seqops registry seal`` on a version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from seqcore.io import sha256_file

    store = store_uri or tracking_uri()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    hashes: dict[str, str] = {}
    try:
        located = _locate(MlflowClient(tracking_uri=store, registry_uri=store), model_uri)
        where = f"cannot record {model_uri} ({located.holder})"
        with tempfile.TemporaryDirectory(prefix="seqops-model-") as tmp:
            mlmodel, folder = _fetch(
                located.location, store, Path(tmp),
                lambda rel, local: hashes.__setitem__(rel, sha256_file(local)), where,
            )  # fmt: skip
            # A seal vouches for files logged before formats were recorded; the build below
            # is what shows that this code reads them.
            found = _model_format(mlmodel, {FORMAT_TAG: str(MODEL_FORMAT)}, where)
            _build(folder, where)
    except (MlflowException, OSError) as exc:
        raise _not_found(model_uri, store, exc) from None
    return {FILES_TAG: json.dumps(hashes, sort_keys=True), FORMAT_TAG: str(found)}


def logged_record(client: Any, model_uri: str) -> dict[str, str]:
    """The record of the logged model that ``model_uri`` (``models:/<model id>``,
    ``runs:/<run>/<name>``) names, for a registry version made from it; empty when the URI
    names no logged model or it has none."""
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith(("models:/m-", "runs:/")):
        return {}
    try:
        record = _locate(client, model_uri).record
    except (ModelLoadError, MlflowException):
        return {}
    return {k: record[k] for k in (FILES_TAG, FORMAT_TAG) if k in record}
