"""MLflow store selection and the lineage every training run records.

Follows docs/architecture.md §5. Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a team's
server), else a SQLite store ``mlflow.db`` plus an artifact folder ``mlartifacts/`` in the
repository (both git-ignored), the same defaults for tracking and registry. Lineage: the git
commit and whether the tree was dirty, the shard manifest's content hash, the DVC hash of the
shard output from ``dvc.lock``, and library versions, so a run can be traced to exactly the
code and data that made it.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from seqcore.loading import DEFAULT_ARTIFACTS, tracking_uri

LIBRARIES = ("torch", "ray", "mlflow", "pyarrow", "numpy", "great-expectations", "dvc")


def configure(root: str | Path = ".") -> str:
    """Point MLflow's fluent API at :func:`tracking_uri` (called by entry points only)."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, root: str | Path = ".") -> str:
    """The experiment's id, creating it (with a local artifact folder for local stores)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(root))
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if tracking_uri(root).startswith("sqlite:"):
        location = (Path(root).resolve() / DEFAULT_ARTIFACTS / name).as_uri()
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


def lineage_tags(
    root: str | Path, manifest_hash: str, events_sha256: str, shards_out: str = "data/shards"
) -> dict[str, str]:
    """Tags that tie a run to its code, data (the shard manifest's content hash, the events'
    sha256) and environment."""
    tags = dict(git_state(root))
    tags["shard_manifest_hash"] = manifest_hash or "unknown"
    tags["dvc_shards_md5"] = dvc_out_hash(root, "shard", shards_out) or "not-in-dvc.lock"
    tags["events_sha256"] = events_sha256 or "unknown"
    tags.update({f"version.{k}": v for k, v in library_versions().items()})
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
