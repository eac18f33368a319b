"""Helpers shared by the benchmark scripts: cached inputs, child processes, peak RSS, tables.

Every benchmark prints ratios against a baseline measured side by side in the same script,
never an absolute time: the 2-core CI machine is noisy, ratios of interleaved runs are not.
Each measured step runs in a fresh child process so that one step's heap, caches and
imports cannot inflate the next one's time or peak RSS; the parent collects the child's own
resource usage with ``os.wait4`` (per child, unlike ``RUSAGE_CHILDREN``, which keeps the
maximum over every child ever waited for).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "benchmarks" / "out"
"""Git-ignored cache of generated inputs and scratch outputs."""
PARAMS = REPO / "params.yaml"


# --------------------------------------------------------------------------- measuring


def rss_now() -> int:
    """Current resident set size of this process in bytes (Linux /proc)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class ChildRun:
    """One step run in its own process: what it reported, its peak RSS, its wall time."""

    result: dict[str, Any]
    peak_rss: int
    """ru_maxrss of that child alone, bytes."""
    wall_s: float
    """The whole child, interpreter start and imports included."""


def run_child(
    args: Sequence[str],
    timeout_s: float = 3600.0,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
) -> ChildRun:
    """Run ``python <args> --result <file>`` and read back the JSON the child wrote there.

    ``cwd`` and ``env`` run it in another checkout (``benchmarks/revisions.py``)."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        result_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        cmd = [sys.executable, *args, "--result", str(result_path)]
        started = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = started + timeout_s
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    proc.kill()
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped here
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not result_path.exists():
            tail = log_path.read_text()[-4000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
        return ChildRun(json.loads(result_path.read_text()), usage.ru_maxrss * 1024, wall)


class ProcessTree:
    """Peak memory and CPU time of every process below this one, sampled: a stage on a
    local Ray cluster runs in processes that Ray starts (GCS, raylet, workers), whose memory
    the child's own ``ru_maxrss`` does not include.

    Per process the peak RSS; for all of them together the peak of the summed PSS
    (proportional set size), since Ray's object store is shared memory that the store and
    every process reading an object map: summing their RSS would count those pages twice.
    """

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.sum_peak = 0

    def sample(self) -> None:
        import psutil

        total = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                memory = proc.memory_full_info()
                times = proc.cpu_times()
                if proc.pid not in self.role:
                    self.role[proc.pid] = _role(proc, self.me)
            except psutil.Error:  # exited between the listing and the read
                continue
            total += memory.pss
            self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), memory.rss)
            self.cpu[proc.pid] = times.user + times.system
        self.sum_peak = max(self.sum_peak, total)

    def summary(self) -> dict[str, Any]:
        """Peak of the summed PSS over the tree, and per role the largest process's peak RSS
        and the CPU seconds of all its processes."""
        roles: dict[str, dict[str, float]] = {}
        for pid, peak in self.peak.items():
            entry = roles.setdefault(self.role[pid], {"max_peak_rss": 0, "cpu_s": 0.0, "n": 0})
            entry["max_peak_rss"] = max(entry["max_peak_rss"], peak)
            entry["cpu_s"] += self.cpu.get(pid, 0.0)
            entry["n"] += 1
        return {"sum_peak_pss": self.sum_peak, "roles": roles}


def _role(proc: Any, me: Any) -> str:
    if proc.pid == me.pid:
        return "driver"
    name = " ".join(proc.cmdline()[:2])
    if "ray::" in name or "default_worker" in name:
        return "ray worker"
    return "ray services"


class Phases:
    """Which wrapped function the main thread is in, and the highest RSS sampled in each.

    A daemon thread reads /proc every 10 ms: enough to say where the peak is (the exact peak
    is the child's ``ru_maxrss``). Wrapping costs one function call per stage call.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, int] = {}
        self._main = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.tree = ProcessTree()

    def __enter__(self) -> Phases:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        ticks = 0
        while not self._stop.wait(0.01):
            phase = self.stack[-1] if self.stack else "(between)"
            self.peaks[phase] = max(self.peaks.get(phase, 0), rss_now())
            ticks += 1
            if ticks % 10 == 0:  # the process tree costs a /proc walk: every 100 ms
                self.tree.sample()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block and attribute the RSS sampled meanwhile to ``name``."""
        if threading.get_ident() != self._main:  # e.g. a pool thread: not a phase
            yield
            return
        self.stack.append(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.stack.pop()

    def wrap(self, module: Any, name: str) -> None:
        """Make every call of ``module.name`` a phase (a breakdown; the code is unchanged)."""
        inner: Callable[..., Any] = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return inner(*args, **kwargs)

        setattr(module, name, wrapper)

    def measure(self, step: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
        """Run ``step``; its result and wall seconds, CPU seconds (all threads), breakdowns."""
        rss_before = rss_now()
        wall, cpu = time.perf_counter(), time.process_time()
        with self:
            out = step()
        figures = {
            "seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu,
            "rss_before": rss_before,
            "breakdown": dict(self.seconds),
            "phase_peak_rss": dict(self.peaks),
            "tree": self.tree.summary(),
        }
        return out, figures


def write_result(path: str | Path | None, result: dict[str, Any]) -> None:
    """What a child step hands back to its parent (see ``run_child``)."""
    if path is not None:
        Path(path).write_text(json.dumps(result, indent=2, default=str))


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# --------------------------------------------------------------------------- inputs


def _mean_length(median_length: float, sigma: float, max_length: int) -> float:
    """Mean of the generator's clipped, rounded log-normal length law (by simulation)."""
    rng = np.random.default_rng(12345)
    draws = np.exp(np.log(median_length) + sigma * rng.standard_normal(1_000_000))
    return float(np.clip(np.rint(draws), 1, max_length).mean())


def write_generated_events(
    n_entities: int, out: Path, seed: int = 7, n_events: int | None = None
) -> dict[str, Any]:
    """Generate events (params.yaml's generator, no faults) and write them as ingest does.

    With ``n_events`` the arrival-ordered stream is cut after that many rows, which keeps
    every entity's events a time-ordered prefix (a log observed up to a point in time: still
    clean for the contract); nothing is written if there are fewer. Returns the row count
    and the part files written.
    """
    from pipelines.config import load_params
    from pipelines.generate import generate_events
    from pipelines.ingest import write_events
    from seqcore.schema import ARRIVAL

    params = load_params(PARAMS)
    schema = params.data.schema
    names = {"entity": schema.entity, "time": schema.time, "seq": schema.seq or "seq_no"}
    names["label"] = schema.label or "label"
    cfg = replace(params.data.generate, n_entities=n_entities, faults=())
    table = generate_events(cfg, seed, names)
    if n_events is not None:
        if table.num_rows < n_events:
            return {"rows": table.num_rows, "parts": []}
        table = table.slice(0, n_events)
    table = table.append_column(ARRIVAL, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    parts = write_events(table, out, params.data.rows_per_part, schema.entity)
    return {"rows": table.num_rows, "parts": parts}


def ensure_events(n_events: int, seed: int = 7) -> Path:
    """A cached directory of exactly ``n_events`` ingest-written events (``_arrival`` included).

    Generated once into ``benchmarks/out/`` with enough entities for ``n_events``. The
    generator's peak is a few times the table (about 4 GB at 10M events), so callers that
    measure memory run this in a separate process first.
    """
    from pipelines.config import load_params

    out = OUT_DIR / f"events-{n_events}-seed{seed}"
    done = out.with_name(out.name + ".json")  # beside, not in, the Parquet folder
    if done.exists() and out.is_dir():
        return out
    gen = load_params(PARAMS).data.generate
    mean = _mean_length(gen.median_length, gen.length_sigma, gen.max_length)
    n_entities = math.ceil(n_events / mean * 1.03) + 10
    while True:
        written = write_generated_events(n_entities, out, seed, n_events)
        if written["parts"]:
            break
        n_entities = math.ceil(n_entities * n_events / max(written["rows"], 1) * 1.02) + 10
    meta = {"events": n_events, "entities_generated": n_entities, "seed": seed, **written}
    done.write_text(json.dumps(meta, indent=2))
    return out


CHUNK_EVENTS = 10_000_000
"""Above this many events, ``ensure_events_chunked`` generates the table in pieces."""


def ensure_events_chunked(n_events: int, rows_per_part: int, seed: int = 7) -> Path:
    """A cached folder of about ``n_events`` ingest-written events in parts of
    ``rows_per_part`` rows, for tables the generator cannot build at once (it peaks at a few
    times the table: 100M events would need some 40 GB).

    Chunks of ``CHUNK_EVENTS`` come from the generator with seeds of their own, each chunk's
    entities renamed apart and its times shifted past the previous chunk's, so the stream is
    one clean log in arrival order; rows go through ingest's ``PartWriter`` as they come.
    """
    from pipelines.config import load_params
    from pipelines.generate import generate_events
    from pipelines.ingest import PartWriter, dictionary_columns, n_parts_for
    from seqcore.io import atomic_dir
    from seqcore.schema import ARRIVAL

    out = OUT_DIR / f"events-{n_events}-seed{seed}-parts{rows_per_part}"
    done = out.with_name(out.name + ".json")
    if done.exists() and out.is_dir():
        return out
    params = load_params(PARAMS)
    schema, gen = params.data.schema, params.data.generate
    names = {"entity": schema.entity, "time": schema.time, "seq": schema.seq or "seq_no"}
    names["label"] = schema.label or "label"
    mean = _mean_length(gen.median_length, gen.length_sigma, gen.max_length)
    per_chunk = math.ceil(CHUNK_EVENTS / mean)
    rows, offset, chunk = 0, 0, 0
    n_chunks = math.ceil(n_events / CHUNK_EVENTS)
    with atomic_dir(out) as tmp:
        writer = PartWriter(
            tmp, n_parts_for(n_events, rows_per_part), schema.entity, dictionary_columns(schema)
        )
        with writer.aborting():
            while rows < n_events:
                cfg = replace(gen, n_entities=per_chunk, faults=())
                table = generate_events(cfg, seed + chunk, names)
                table = table.slice(0, min(table.num_rows, n_events - rows))
                keys = pa.compute.binary_join_element_wise(
                    f"c{chunk}-", pa.compute.cast(table[schema.entity], pa.string()), ""
                )
                table = table.set_column(table.schema.get_field_index(schema.entity),
                                         schema.entity, keys)  # fmt: skip
                # Chunk k's times, compressed n_chunks-fold, follow chunk k-1's: one clean
                # log that ends where a single generator run would (not in the future).
                times = table[schema.time]
                t = pa.compute.cast(times, pa.int64()).to_numpy()
                low = int(t.min())
                moved = (t - low) // n_chunks + (offset or low)
                offset = int(moved.max()) + 1_000_000  # the next chunk: a second later
                table = table.set_column(
                    table.schema.get_field_index(schema.time), schema.time,
                    pa.array(moved).cast(times.type),
                )  # fmt: skip
                arrival = np.arange(rows, rows + table.num_rows, dtype=np.int64)
                writer.write(table.append_column(ARRIVAL, pa.array(arrival)))
                rows += table.num_rows
                chunk += 1
                del table
            writer.close(writer.schema or pa.schema([]))
    done.write_text(json.dumps({"events": rows, "chunks": chunk, "seed": seed}, indent=2))
    return out


# --------------------------------------------------------------------------- printing


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def fmt_rate(events: float, seconds: float) -> str:
    return f"{events / seconds / 1e6:.2f} M/s" if seconds > 0 else "-"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    """A plain-text (Markdown-compatible) table; returns it as well as printing it."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = (f"\n{title}\n" if title else "\n") + "\n".join(lines)
    print(text, flush=True)
    return text
