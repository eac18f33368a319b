"""MLflow store selection and the lineage every training run records.

Follows docs/architecture.md §5. Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a team's
server), else a SQLite store ``mlflow.db`` plus an artifact folder ``mlartifacts/`` in the
repository (both git-ignored), the same defaults for tracking and registry; inside a DVC stage
the repository is ``DVC_ROOT``, so ``dvc exp run --temp``/``--queue`` log to the parent
repository's store (``seqcore.loading.store_root``). A new experiment keeps its files under
``SEQOPS_ARTIFACT_ROOT`` when set. Lineage: the git commit and whether the tree was dirty (of
the folder the stage runs in), the shard manifest's content hash, the DVC hash of the shard
output from ``dvc.lock``, library versions, the DVC experiment's name and baseline, and
MLflow's own source tags (``mlflow.source.*``, ``mlflow.user``; MLflow's "Source" and
"User" fields), so a run can be traced to exactly the code and data that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from pipelines.registry import actor
from seqcore.loading import (
    ARTIFACT_ROOT_ENV,
    DEFAULT_ARTIFACTS,
    sqlite_path,
    store_root,
    tracking_uri,
)

LIBRARIES = ("torch", "ray", "mlflow", "pyarrow", "numpy", "great-expectations", "dvc")
DVC_TAGS = {
    "DVC_STAGE": "dvc.stage",
    "DVC_EXP_NAME": "dvc.exp_name",
    "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev",
}
"""What DVC tells a stage about itself (env -> run tag): with the experiment's name,
``dvc exp show`` and ``dvc metrics diff <name>`` find the run's experiment."""


def configure(root: str | Path = ".") -> str:
    """Point MLflow's fluent API at :func:`tracking_uri` (called by entry points only)."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def artifact_location(name: str, root: str | Path = ".") -> str | None:
    """Where a new experiment ``name`` keeps its files: under ``SEQOPS_ARTIFACT_ROOT`` when
    set (an artifact URI, or a folder, relative to :func:`store_root`), else in
    ``mlartifacts/`` next to a SQLite store (what a moved store is rebased onto), else None
    (the tracking server's default)."""
    configured = os.environ.get(ARTIFACT_ROOT_ENV)
    if configured:
        if len(urlsplit(configured).scheme) > 1:  # a URI; one letter is a Windows drive
            return f"{configured.rstrip('/')}/{name}"
        folder = Path(configured).expanduser()
        return (store_root(root) / folder / name).resolve().as_uri()
    db = sqlite_path(tracking_uri(root))
    if db is None:
        return None
    return (db.resolve().parent / DEFAULT_ARTIFACTS / name).as_uri()


def ensure_experiment(name: str, root: str | Path = ".") -> str:
    """The experiment's id, creating it where :func:`artifact_location` says. An existing
    experiment keeps the location it was created with."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(root))
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = artifact_location(name, root)
    return str(client.create_experiment(name, artifact_location=location))


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def pipeline_outputs(root: str | Path = ".") -> list[str]:
    """What the pipeline writes itself: ``dvc.lock`` and every out, metric and plot that
    ``dvc.yaml`` declares (paths relative to ``root``)."""
    path = Path(root) / "dvc.yaml"
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        return ["dvc.lock"]
    entries: list[Any] = list(data.get("plots") or [])
    for stage in (data.get("stages") or {}).values():
        for key in ("outs", "metrics", "plots"):
            entries += stage.get(key) or []
    names = {next(iter(e)) if isinstance(e, dict) else e for e in entries}
    return sorted({"dvc.lock", *(str(n) for n in names if isinstance(n, str))})


def git_state(root: str | Path = ".") -> dict[str, str]:
    """Commit and dirtiness of the working tree (``unknown`` outside a git checkout).

    Dirty means edited code, params or anything else tracked, not the outputs and lock file
    that ``dvc repro`` itself rewrites: a clean clone that ran the pipeline stays clean."""
    root = Path(root)
    commit = _git(root, "rev-parse", "HEAD")
    excluded = [f":(exclude){p}" for p in pipeline_outputs(root)]
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    return {
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
    }


def dvc_out_hash(root: str | Path, stage: str, out: str) -> str | None:
    """The hash DVC recorded in dvc.lock for one stage output (None if not recorded yet)."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return None
    data = yaml.safe_load(lock.read_text()) or {}
    for entry in (data.get("stages", {}).get(stage, {}) or {}).get("outs", []) or []:
        if entry.get("path") == out:
            return entry.get("md5") or entry.get("hash") or None
    return None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "missing"
    return versions


def _public_url(url: str) -> str:
    """A remote's URL without the credentials an https remote may carry."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url


def _entry(root: Path, source: str | Path | None) -> str:
    """``source`` (else the script this process runs), relative to ``root`` when inside it."""
    main = str(source) if source else (sys.argv[0] if sys.argv and sys.argv[0] else "")
    if not main or not Path(main).is_file():
        return main or "<console>"
    path, base = Path(main).resolve(), root.resolve()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


def source_tags(
    root: str | Path = ".",
    state: dict[str, str] | None = None,
    source: str | Path | None = None,
) -> dict[str, str]:
    """MLflow's own run tags for where a run came from (its UI's "Source", "User", git
    fields): the entry (``source``, e.g. the stage's module file, else the script this
    process runs), ``LOCAL``, the commit, branch and ``origin`` of ``root``'s checkout
    (``origin`` of the parent repository for a DVC experiment's temporary copy, which has
    none), and the user. A tag is left out where git does not know it."""
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_DIRTY,
        MLFLOW_GIT_REPO_URL,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
        MLFLOW_USER,
    )

    root = Path(root)
    state = git_state(root) if state is None else state
    tags = {
        MLFLOW_SOURCE_NAME: _entry(root, source),
        MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
        MLFLOW_USER: actor(),
    }
    if state["git_commit"] != "unknown":
        tags[MLFLOW_GIT_COMMIT] = state["git_commit"]
    if state["git_dirty"] != "unknown":
        tags[MLFLOW_GIT_DIRTY] = state["git_dirty"]
    branch = _git(root, "symbolic-ref", "--short", "-q", "HEAD")  # none when detached
    if branch:
        tags[MLFLOW_GIT_BRANCH] = branch
    url = _git(root, "remote", "get-url", "origin")
    parent = store_root(root)
    if not url and parent != root.resolve():
        url = _git(parent, "remote", "get-url", "origin")
    if url:
        tags[MLFLOW_GIT_REPO_URL] = _public_url(url)
    return tags


def lineage_tags(
    root: str | Path,
    manifest_hash: str,
    events_sha256: str,
    shards_out: str = "data/shards",
    source: str | Path | None = None,
) -> dict[str, str]:
    """Tags that tie a run to its code, data (the shard manifest's content hash, the events'
    sha256), environment, DVC stage and experiment, with MLflow's source tags (``source``:
    the stage's own file, whichever command started it)."""
    tags = dict(git_state(root))
    tags["shard_manifest_hash"] = manifest_hash or "unknown"
    tags["dvc_shards_md5"] = dvc_out_hash(root, "shard", shards_out) or "not-in-dvc.lock"
    tags["events_sha256"] = events_sha256 or "unknown"
    tags.update({f"version.{k}": v for k, v in library_versions().items()})
    tags.update({tag: os.environ[env] for env, tag in DVC_TAGS.items() if os.environ.get(env)})
    tags.update(source_tags(root, tags, source))
    return tags


def flatten(prefix: str, value: Any, out: dict[str, str] | None = None) -> dict[str, str]:
    """Nested params -> {"a.b.c": "value"} for MLflow params (values as strings, <= 6000 chars)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for key, sub in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = str(value)[:6000]
    return out
