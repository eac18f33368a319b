"""Where a data stage's folder lives: on local disk, or as a snapshot on an object store.

A stage's output folder (events, validated events, shards) is written to local disk by
default and published by a rename (``seqcore.io``). With ``data.store`` set to an
object-store root (``s3://bucket/prefix``, any pyarrow filesystem URL, or a shared mount),
the files go to a new *snapshot* under that root instead, and the local folder keeps only a
pointer to it (docs/architecture.md §9):

* ``<root>/<output>/<UTC time>-<random>/`` holds the files. An object store has no rename,
  so a snapshot is never overwritten: each run writes a new one and publishes it by writing
  ``_SUCCESS`` last (the file list with each file's size and sha256), then the local
  ``_STORE.json`` pointer (the snapshot's URL and the same list) by an atomic rename.
* A reader (``locate``) follows the pointer and refuses a snapshot without ``_SUCCESS``, or
  one whose ``_SUCCESS`` differs from the pointer: an interrupted or concurrent write, or a
  snapshot changed after it was published, is never read as data.
* DVC tracks the local folder, so the pointer is what is versioned and cached; checking out
  an older commit points at the older snapshot, which the store still holds (README,
  "Data on an object store").

Files are written to local disk first and uploaded whole (``Destination.publish``): a task
holds one finished file on its disk, never an open multipart upload per part, and the
upload's size and sha256 come from the finished bytes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from seqcore import io

POINTER = "_STORE.json"
MARKER = "_SUCCESS"
UPLOAD_CHUNK = 8 * 1024**2


class StoreError(RuntimeError):
    """A store or a snapshot that cannot be used; the message names it and the fix."""


def _split_url(url: str) -> tuple[str, str]:
    """``s3://b/p?endpoint_override=h`` -> (``s3://b/p``, ``endpoint_override=h``)."""
    base, _, query = url.partition("?")
    return base.rstrip("/"), query


def is_url(where: str | Path) -> bool:
    return isinstance(where, str) and "://" in where


def under(store: str, name: str) -> str:
    """``name`` inside a store given as a URL (its options kept as the query) or a folder."""
    if not is_url(store):
        return str(Path(store).absolute() / name)
    base, query = _split_url(store)
    return f"{base}/{name}" + (f"?{query}" if query else "")


@dataclass(frozen=True)
class Location:
    """A folder on a pyarrow filesystem. Picklable: Ray tasks receive it as it is."""

    fs: pafs.FileSystem
    root: str
    """The folder's path on ``fs``."""
    uri: str
    """Its name for people and for other processes: a local path or the store URL."""

    @classmethod
    def local(cls, path: str | Path) -> Location:
        path = Path(path).absolute()
        return cls(pafs.LocalFileSystem(), path.as_posix(), str(path))

    @classmethod
    def from_url(cls, url: str) -> Location:
        """A store URL, with pyarrow's options as its query (``?endpoint_override=...``)."""
        base, query = _split_url(url)
        try:
            fs, root = pafs.FileSystem.from_uri(url)
        except (ValueError, OSError) as exc:
            raise StoreError(f"{base}: not a store pyarrow can open ({exc})") from None
        return cls(fs, root.rstrip("/"), url if query else base)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, name: str) -> str:
        """The filesystem path of ``name`` (relative, ``/``-separated) in this folder."""
        return f"{self.root}/{name}" if name else self.root

    def child(self, name: str) -> Location:
        return Location(self.fs, self.path(name), under(self.uri, name))

    def show(self, name: str = "") -> str:
        """``name`` as a user would write it: a local path, or the URL without options."""
        base = _split_url(self.uri)[0]
        return f"{base}/{name}" if name else base

    def exists(self, name: str = "") -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def names(self, pattern: str) -> list[str]:
        """The files directly in this folder whose names match ``pattern``, sorted."""
        selector = pafs.FileSelector(self.root, allow_not_found=True)
        found = [i.base_name for i in self.fs.get_file_info(selector) if i.is_file]
        return sorted(n for n in found if fnmatch.fnmatchcase(n, pattern))

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.path(name)) as handle:
            return bytes(handle.read())

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(name), columns=columns, filesystem=self.fs)


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}


def _entries(raw: Any, where: str) -> dict[str, FileEntry]:
    try:
        return {n: FileEntry(int(e["size"]), str(e["sha256"])) for n, e in raw["files"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise StoreError(
            f"{where}: not a snapshot record (no files with size and sha256)"
        ) from None


def content_hash(files: dict[str, FileEntry]) -> str:
    """One hash naming a folder's contents: ``seqcore.io.combined_hash`` of its files."""
    return io.combined_hash({name: e.sha256 for name, e in files.items()})


def _pointer(folder: Path) -> Path | None:
    pointer = folder / POINTER
    return pointer if pointer.is_file() else None


def locate(where: str | Path) -> Location:
    """The folder to read at ``where``: a local folder, the snapshot its ``_STORE.json`` names,
    or a snapshot URL. A snapshot must be complete (``_SUCCESS``) and, through a pointer,
    the one the pointer recorded."""
    if is_url(str(where)) and not str(where).startswith("file://"):
        location = Location.from_url(str(where))
        _complete(location)
        return location
    folder = Path(str(where).removeprefix("file://"))
    pointer = _pointer(folder) if folder.is_dir() else None
    if pointer is None:
        return Location.local(folder)
    try:
        record = json.loads(pointer.read_text())
        uri = str(record["uri"])
    except (ValueError, KeyError, TypeError):
        raise StoreError(
            f"{pointer}: not a snapshot pointer; rerun the stage that writes {folder}"
        ) from None
    location = Location.local(uri) if not is_url(uri) else Location.from_url(uri)
    marker = _complete(location)
    if marker != _entries(record, str(pointer)):
        raise StoreError(
            f"{location.show()}: its {MARKER} lists other files than {pointer} recorded: the "
            f"snapshot was changed after it was published; rerun the stage that writes {folder}"
        )
    return location


def _complete(location: Location) -> dict[str, FileEntry]:
    try:
        raw = location.read_json(MARKER)
    except FileNotFoundError:
        raise StoreError(
            f"{location.show()}: no {MARKER} in it, so it is not a published snapshot (a run "
            "that was interrupted, or one still writing); rerun the stage that writes it"
        ) from None
    except OSError as exc:
        raise StoreError(f"{location.show()}: cannot read its {MARKER} ({exc})") from None
    return _entries(raw, location.show(MARKER))


def snapshot_files(location: Location) -> dict[str, FileEntry] | None:
    """A snapshot's files as its ``_SUCCESS`` lists them; None for a plain local folder."""
    if location.is_local and not location.exists(MARKER):
        return None
    return _complete(location)


def check_store(url: str) -> Location:
    """Open the store root and prove it writable (one small object written and removed), so
    that a stage fails at its start, not after its work, on a wrong URL or missing rights."""
    if is_url(url) and not url.startswith("file://"):
        try:
            location = Location.from_url(url)
        except StoreError as exc:
            raise StoreError(f"data.store: {exc}") from None
    else:
        location = Location.local(url.removeprefix("file://"))
    probe = f"_probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        location.fs.create_dir(location.root, recursive=True)
        with location.fs.open_output_stream(location.path(probe)) as handle:
            handle.write(b"seqops")
        location.fs.delete_file(location.path(probe))
    except OSError as exc:
        raise StoreError(
            f"data.store: cannot write to {location.show()} ({exc}); check the URL, its "
            "endpoint and the credentials in the environment (AWS_ACCESS_KEY_ID, ...)"
        ) from None
    return location


def _sha256(path: Path) -> str:
    return io.sha256_file(path)


def _node_folder(folder: Path, remote: bool) -> Path:
    """``folder`` itself, or for files on their way to a store, the folder of its name in
    the temporary folder of whichever node the caller runs on."""
    return Path(tempfile.gettempdir()) / folder.name if remote else folder


def _writable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _upload(path: Path, location: Location, name: str) -> None:
    """Copy a finished local file to ``name`` in ``location``, then remove it from disk."""
    target = location.path(name)
    location.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    with open(path, "rb") as source, location.fs.open_output_stream(target) as sink:
        shutil.copyfileobj(source, sink, UPLOAD_CHUNK)
    path.unlink()


@dataclass(frozen=True)
class Destination:
    """Where a task writes the files of an output being published. Picklable.

    A file is written at ``local(name)``; ``publish(name)`` then moves it into the output and
    returns its size and sha256. For a local output the two places are the same folder; for
    a snapshot the file is written to the temporary folder of whichever node runs the task,
    uploaded, and its local copy removed."""

    location: Location
    folder: Path
    """A local output's folder; for a snapshot, the name of each node's staging folder."""
    remote: bool
    """Whether files are uploaded from ``staging`` to ``location`` (a snapshot), or are
    written in place (a local output: ``staging`` is the folder itself)."""

    @property
    def staging(self) -> Path:
        return _node_folder(self.folder, self.remote)

    def local(self, name: str) -> Path:
        return _writable(self.staging / name)

    def publish(self, name: str, digest: bool = True) -> FileEntry | None:
        """Make the file written at ``local(name)`` part of the output. Its entry (size,
        sha256) is always computed for a snapshot, and for a local output when ``digest``."""
        path = self.staging / name
        if not self.remote:
            return FileEntry(path.stat().st_size, _sha256(path)) if digest else None
        entry = FileEntry(path.stat().st_size, _sha256(path))
        _upload(path, self.location, name)
        return entry


@dataclass
class Output:
    """An output folder being written (``output_dir``)."""

    destination: Destination
    files: dict[str, FileEntry] = field(default_factory=dict)
    """Every published file's entry (a snapshot needs all; a local output those it wants)."""
    keep: bool = True
    """Set to False to discard the new output and leave the published one as it was."""
    local_copies: dict[str, bytes] = field(default_factory=dict)
    """Small files (a manifest) a snapshot's local folder keeps beside its pointer, so that
    people and DVC see them; they are in the snapshot too."""

    @property
    def location(self) -> Location:
        return self.destination.location

    @property
    def staging(self) -> Path:
        return self.destination.staging

    def add(self, name: str, entry: FileEntry | None) -> None:
        if entry is not None:
            self.files[name] = entry

    def publish(self, name: str, digest: bool = True) -> None:
        self.add(name, self.destination.publish(name, digest))


def _snapshot_name() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def output_dir(out_dir: str | Path, store: str | None) -> Iterator[Output]:
    """Write the output folder ``out_dir``: locally (``store`` None) or as a new snapshot
    under ``store``, published only if the block succeeds and leaves ``keep`` True.

    Locally this is ``seqcore.io.staged_dir``: files are written in place in a temporary
    sibling renamed over ``out_dir``. With a store, files are staged in a temporary local
    folder and uploaded one by one (``Output.publish``); at the end every staged file not
    yet published is, then ``_SUCCESS``, then ``out_dir`` becomes the pointer alone plus
    the block's ``Output.local_copies``. A failed or discarded snapshot is deleted from the
    store. (A local output on a cluster of several nodes would scatter the files over their
    disks: ``pipelines.fanout`` refuses that.)"""
    out_dir = Path(out_dir)
    if store is None:
        with io.staged_dir(out_dir) as staged:
            output = Output(Destination(Location.local(staged.path), staged.path, remote=False))
            yield output
            staged.keep = output.keep
        return
    root = check_store(store)
    snapshot = _snapshot_name()
    location = root.child(f"{out_dir.name}/{snapshot}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    output = Output(Destination(location, Path(f"seqops-{out_dir.name}-{snapshot}"), remote=True))
    tmp = output.staging
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        try:
            yield output
            if output.keep:
                for path in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                    name = path.relative_to(tmp).as_posix()
                    if name not in output.files:
                        output.publish(name)
                record = {
                    "uri": location.uri,
                    "created": datetime.now(UTC).isoformat(),
                    "content_hash": content_hash(output.files),
                    "files": {n: output.files[n].to_json() for n in sorted(output.files)},
                }
                body = json.dumps(record, indent=2, sort_keys=True) + "\n"
                with location.fs.open_output_stream(location.path(MARKER)) as sink:
                    sink.write(body.encode())
                with io.atomic_dir(out_dir) as local:
                    (local / POINTER).write_text(body)
                    for name, data in output.local_copies.items():
                        (local / name).write_bytes(data)
        except BaseException:
            with contextlib.suppress(OSError):
                location.fs.delete_dir(location.root)
            raise
        if not output.keep:
            with contextlib.suppress(OSError):
                location.fs.delete_dir(location.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_events(where: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read an events output (a folder of part-*.parquet, local or a snapshot, or one file)
    in arrival order.

    Parts are read in name order and each part keeps its rows in arrival order, so the
    result is the arrival order the ingest stage recorded.
    """
    if not is_url(str(where)) and Path(where).is_file():
        return pq.read_table(where, columns=columns)
    if not is_url(str(where)) and not Path(where).exists():
        raise FileNotFoundError(f"{where}: not found (run the ingest stage first)")
    folder = locate(where)
    names = folder.names("part-*.parquet")
    if not names:
        raise FileNotFoundError(
            f"{folder.show()}: no part-*.parquet files (run the ingest stage first)"
        )
    tables = [folder.read_table(name, columns=columns) for name in names]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


@dataclass(frozen=True)
class Scratch:
    """Files a stage's tasks hand on (to the driver, to a reduce task), deleted with the run.

    On one machine a local folder. With ``data.store`` a prefix under the store, so that a
    task on any node of a cluster reaches what a task on another wrote: a file is written
    to this node's disk (``path``), uploaded (``put``), and fetched to the reader's disk
    (``get``). Picklable: Ray tasks receive it as it is."""

    folder: Path
    """Local: the scratch folder. Remote: this run's folder name under each node's temp."""
    remote: Location | None = None

    @property
    def local(self) -> Path:
        return _node_folder(self.folder, self.remote is not None)

    def path(self, name: str) -> Path:
        """Where to write ``name`` on this node (then ``put`` it)."""
        return _writable(self.local / name)

    def put(self, name: str) -> None:
        """Hand on the file written at ``path(name)``: uploaded and removed from this disk."""
        if self.remote is not None:
            _upload(self.local / name, self.remote, name)

    def has(self, name: str) -> bool:
        if self.remote is None:
            return (self.folder / name).exists()
        return self.remote.exists(name)

    def get(self, name: str) -> Path:
        """``name`` on this node's disk, fetched when it is elsewhere (``done`` removes it)."""
        local = self.local / name
        if self.remote is None or local.exists():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{os.getpid()}.part")
        with (
            self.remote.fs.open_input_stream(self.remote.path(name)) as src,
            open(partial, "wb") as sink,
        ):
            shutil.copyfileobj(src, sink, UPLOAD_CHUNK)
        os.replace(partial, local)
        return local

    def done(self, name: str) -> None:
        """A fetched copy is no longer needed on this node."""
        if self.remote is not None:
            (self.local / name).unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(store: str | None, near: Path, prefix: str) -> Iterator[Scratch]:
    """A ``Scratch`` for one run: a temporary folder beside ``near`` (``store`` None), or a
    prefix under ``store``'s ``_scratch/``; removed at the end, whatever happens."""
    if store is None:
        near.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=prefix, dir=near) as tmp:
            yield Scratch(Path(tmp))
        return
    name = f"{prefix.strip('.-')}-{_snapshot_name()}"
    remote = check_store(store).child(f"_scratch/{name}")
    scratch = Scratch(Path(name), remote)
    try:
        yield scratch
    finally:
        with contextlib.suppress(OSError):
            remote.fs.delete_dir(remote.root)
        shutil.rmtree(scratch.local, ignore_errors=True)
