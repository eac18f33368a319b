"""Atomic outputs: what an interrupted run leaves is removed by the next write (seqcore/io.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from seqcore.io import atomic_dir, sweep_stale, write_json


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stdout)


def test_the_next_write_removes_what_killed_runs_left(tmp_path):
    out = tmp_path / "shards"
    dead = _dead_pid()
    stale = [tmp_path / f".shards.tmp-{dead}-abc", tmp_path / ".shards.tmp-legacy1"]
    for folder in stale:
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "part-0.parquet").write_bytes(b"x" * 1000)
    (tmp_path / f".shards.old-{dead}").mkdir()
    live = tmp_path / f".shards.tmp-{os.getppid()}-run"  # a write in progress elsewhere
    live.mkdir()
    other = tmp_path / f".other.tmp-{dead}-x"  # another output's: not ours to judge
    other.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text("{}")
        assert tmp.name.startswith(f".shards.tmp-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shards", live.name, other.name])


def test_stale_files_of_a_file_output_go_too(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".report.json.tmp-{dead}-q").write_text("half")
    write_json(tmp_path / "report.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert sweep_stale(tmp_path / "report.json") == []
