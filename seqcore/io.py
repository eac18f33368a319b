"""Atomic outputs and content hashes shared by every stage.

A stage writes each output into a temporary sibling and renames it into place only when it
is complete, so an interrupted stage leaves either the old output or none, never half of one
(the same idea as DVC's own cache writes). A temporary sibling is named after the process
that writes it (``.<name>.tmp-<pid>-<random>``); one that a killed run left behind is removed
by the next write of the same output (:func:`sweep_stale`), so interrupted runs do not pile up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; published outputs get the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep_stale(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.<name>.tmp-*``, ``.<name>.old-*``) whose
    writing process is gone, and return them. A sibling of a live process is another write in
    progress and is left alone; one without a process id in its name predates that naming."""
    removed: list[Path] = []
    for kind in ("tmp", "old"):
        marker = f".{path.name}.{kind}-"
        try:
            entries = [e for e in os.scandir(path.parent) if e.name.startswith(marker)]
        except FileNotFoundError:
            return removed
        for entry in entries:
            pid = entry.name[len(marker) :].split("-", 1)[0]
            if pid.isdigit() and (int(pid) == os.getpid() or _alive(int(pid))):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _tmp_prefix(path: Path) -> str:
    """Create ``path``'s parent, sweep what killed runs left there (not inside a temporary
    folder of our own, which is new), and name a temporary sibling after this process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if ".tmp-" not in path.parent.name:
        sweep_stale(path)
    return f".{path.name}.tmp-{os.getpid()}-"


def _tmp_sibling(path: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    _publish_mode(tmp, directory=True)
    return tmp


def _replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``; an existing directory is moved aside first, then removed."""
    if path.is_dir() and not path.is_symlink():
        trash = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, trash)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Staged:
    """A directory being written for ``atomic_dir``-like publishing (``staged_dir``)."""

    path: Path
    keep: bool = True
    """Set to False to discard it and leave the published directory as it was."""


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Staged]:
    """Like ``atomic_dir``, but the block may decide not to publish (``staged.keep = False``)
    without raising: the new directory is removed and ``path`` stays as it was."""
    path = Path(path)
    staged = Staged(_tmp_sibling(path))
    try:
        yield staged
        if staged.keep:
            _replace(staged.path, path)
        else:
            shutil.rmtree(staged.path, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged.path, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish_mode(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def jsonable(obj: Any) -> Any:
    """numpy -> Python, NaN/inf -> None (reports are written with allow_nan=False)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, keys sorted so that reruns produce identical bytes."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, default=str, allow_nan=False)
        handle.write("\n")


def write_parquet(table: pa.Table, path: str | Path, **kwargs: Any) -> None:
    """Write one Parquet file atomically."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp_name, **kwargs)
        _publish_mode(Path(tmp_name), directory=False)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_parquet_chunks(
    chunks: Iterable[pa.Table], schema: pa.Schema, path: str | Path, **kwargs: Any
) -> int:
    """Write tables of ``schema`` one after another into one Parquet file, atomically.

    Only one chunk needs to be in memory at a time (each becomes one or more row groups);
    the file appears complete or not at all. Returns the number of rows written.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    os.close(fd)
    rows = 0
    try:
        with pq.ParquetWriter(tmp_name, schema, **kwargs) as writer:
            for chunk in chunks:
                writer.write_table(chunk)
                rows += chunk.num_rows
            if rows == 0:  # one empty row group, as write_table writes for an empty table
                writer.write_table(schema.empty_table())
        _publish_mode(Path(tmp_name), directory=False)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return rows


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: str | Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by POSIX path relative to it, sorted."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def combined_hash(hashes: dict[str, str]) -> str:
    """One hash over a {relative path: file hash} mapping (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(hashes):
        digest.update(f"{name}\0{hashes[name]}\n".encode())
    return digest.hexdigest()
