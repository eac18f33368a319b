"""Where a registered version came from, as a revision DVC can read: ``seqops metrics diff``
compares the workspace's metrics with those of the champion's (or any version's) commit or
DVC experiment, which is what a reviewer of a new candidate wants to see, rather than
``dvc metrics diff``'s default of the last commit.

A training run records the commit it ran at (``git_commit``, ``git_dirty``) and, under
``dvc exp run``, the experiment's name (``dvc.exp_name``; ``pipelines.tracking``). An
experiment's name is preferred while its ref exists: the commit of a ``--temp`` or
``--queue`` experiment is its baseline, whose committed metrics belong to another run.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXP_NAME_TAG = "dvc.exp_name"


@dataclass(frozen=True)
class Origin:
    """The revision a version's metrics were committed at, and what a reader should know."""

    version: int
    revision: str
    how: str
    """A sentence: which version, which run, and why this revision."""
    warning: str | None = None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)


def _experiment_exists(root: Path, name: str) -> bool:
    refs = _git(root, "for-each-ref", "--format=%(refname)", "refs/exps/")
    return refs.returncode == 0 and any(
        line.rsplit("/", 1)[-1] == name for line in refs.stdout.splitlines()
    )


def _commit_exists(root: Path, commit: str) -> bool:
    return _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def version_origin(registry: Any, against: str, root: Path = Path(".")) -> Origin:
    """The revision of the version that ``against`` names (an alias such as ``champion``,
    or a version number); :class:`LookupError` with the reason and the fix otherwise."""
    from mlflow.exceptions import MlflowException

    if against.isdigit():
        info = registry.version(int(against))
    else:
        info = registry.alias(against)
        if info is None:
            registry.require()
            raise LookupError(
                f"model {registry.name!r} has no version with alias {against!r}; "
                "`seqops registry list` shows the versions and their aliases"
            )
    try:
        tags = dict(registry.client.get_run(info.run_id).data.tags)
    except MlflowException:
        tags = {}
    tags = {**{k.removeprefix("code."): v for k, v in info.tags.items()}, **tags}
    who = f"version {info.version} of {registry.name!r} (run {info.run_id or 'unknown'})"
    name = tags.get(EXP_NAME_TAG)
    if name and _experiment_exists(root, name):
        return Origin(info.version, name, f"{who} came from DVC experiment {name!r}")
    commit = tags.get("git_commit", "unknown")
    if commit == "unknown" or not _commit_exists(root, commit):
        gone = f" (experiment {name!r} is no longer in this repository)" if name else ""
        raise LookupError(
            f"{who} records commit {commit!r}{gone}, which this repository does not have; "
            "fetch it (git fetch, dvc exp pull) or compare in the MLflow UI"
        )
    warning = None
    if tags.get("git_dirty") == "true":
        warning = (
            f"its run started from uncommitted changes on {commit[:12]}, so the metrics "
            "committed there may not be its own"
        )
    if name:
        warning = (warning + "; " if warning else "") + (
            f"experiment {name!r} is no longer here, so this is its baseline commit"
        )
    return Origin(info.version, commit, f"{who} came from commit {commit[:12]}", warning)
