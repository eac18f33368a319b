"""What a person watching a stage in a terminal reads: one line per training epoch, and no
Ray or MLflow internals unless asked for.

Rank 0 of the training loop logs each epoch's metrics to the MLflow run
(``pipelines.train_loop``). :class:`EpochProgress` follows that run from the driver in a
thread and prints one line per epoch: loss, the task's metric, the epoch's wall time, the best
epoch so far and how long the remaining epochs take at most (early stopping may end sooner).
Reading the run rather than Ray's stdout forwarding keeps the lines the same on a local
cluster and at ``RAY_ADDRESS``, and lets the driver stop forwarding worker output.

:func:`quiet` is the default for every stage: Ray's driver log level is raised, worker and
actor output stays in Ray's session log files instead of the terminal, MLflow's informational
messages and hints and its download progress bars are hidden. ``SEQOPS_VERBOSE=1`` (or a
stage's ``--verbose``) shows all of it again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from typing import Any, TextIO

VERBOSE_ENV = "SEQOPS_VERBOSE"


def verbose() -> bool:
    """Whether the user asked for Ray's and MLflow's own output (``SEQOPS_VERBOSE``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet() -> None:
    """Hide MLflow's informational output in this process unless :func:`verbose`; Ray's is
    handled where it starts (:func:`ray_init_options`)."""
    if verbose():
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow sets its loggers' level from this when it is imported, later in most stages.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow's hints about inferred signatures and dataset sources address MLflow users
    # writing their own models; seqops writes both itself.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")


def ray_init_options() -> dict[str, Any]:
    """``ray.init`` keywords for a driver: worker and actor output goes to Ray's log files
    only, and Ray's own driver messages below errors are hidden, unless :func:`verbose`."""
    if verbose():
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.ERROR}


def ray_log_dir() -> str:
    """Where Ray keeps the session's logs (workers' and actors' output included)."""
    try:
        from ray._private import worker  # no public API names the session folder

        node = worker._global_node
        if node is not None:
            return os.path.join(node.get_session_dir_path(), "logs")
    except (ImportError, AttributeError):
        pass
    return "/tmp/ray/session_latest/logs"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _value(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"


class EpochProgress:
    """Prints one line per epoch that rank 0 logged to ``run_id``, from a driver thread.

    ``metric`` is the task's training metric (``accuracy``, ``top1_accuracy``, ``mae``);
    ``epochs`` the configured maximum. Use as a context manager around ``trainer.fit()``:
    leaving it prints the epochs not yet printed."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        epochs: int,
        metric: str,
        *,
        interval: float = 1.0,
        out: TextIO | None = None,
        prefix: str = "train",
    ) -> None:
        self.client, self.run_id, self.epochs = client, run_id, int(epochs)
        self.metric, self.interval, self.prefix = metric, interval, prefix
        self.out = out if out is not None else sys.stderr
        self.printed = -1
        self.started = time.time()
        self._last_ms: int | None = None
        self._walls: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="seqops-progress", daemon=True)

    def __enter__(self) -> EpochProgress:
        self.started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # a busy store must not end training; the next poll retries
                continue

    def _history(self, key: str) -> dict[int, Any]:
        return {m.step: m for m in self.client.get_metric_history(self.run_id, key)}

    def poll(self) -> list[str]:
        """Print (and return) the lines of epochs logged since the last poll."""
        val_loss = self._history("val_loss")
        new = sorted(step for step in val_loss if step > self.printed)
        if not new:
            return []
        keys = ("train_loss", f"val_{self.metric}", "epoch_seconds", "best_epoch")
        histories = {key: self._history(key) for key in keys}
        lines = []
        for step in new:
            lines.append(self._line(step, val_loss[step], histories))
            self.printed = step
        for line in lines:
            print(line, file=self.out, flush=True)
        return lines

    def _line(self, step: int, val_loss: Any, histories: dict[str, dict[int, Any]]) -> str:
        def value(key: str) -> float | None:
            m = histories[key].get(step)
            return None if m is None else float(m.value)

        # The wall time between two epochs' records includes validation and the checkpoint;
        # the first epoch has only its own training time (start-up is not an epoch's cost).
        if self._last_ms is None:
            wall = value("epoch_seconds") or (val_loss.timestamp / 1000 - self.started)
        else:
            wall = (val_loss.timestamp - self._last_ms) / 1000
        self._last_ms = val_loss.timestamp
        self._walls.append(wall)
        done = step + 1
        left = (self.epochs - done) * sum(self._walls) / len(self._walls)
        parts = [f"{self.prefix}: epoch {done}/{self.epochs}"]
        for key, label in (("train_loss", "train_loss"), (f"val_{self.metric}", None)):
            v = value(key)
            if v is not None:
                parts.append(f"{label or key} {_value(v)}")
            if key == "train_loss":
                parts.append(f"val_loss {_value(float(val_loss.value))}")
        parts.append(f"{_duration(wall)}")
        best = value("best_epoch")
        if best is not None:
            parts.append(f"best epoch {int(best) + 1}")
        if done < self.epochs:
            parts.append(f"up to ~{_duration(left)} left")
        return "  ".join(parts)


def _rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    return f"{v / 1e3:.0f}k" if v >= 1e4 else f"{v:.0f}"


class RowProgress:
    """Progress of a stage that streams rows: at most one log line per ``every_s`` seconds,
    "12,345,678 of 100,000,000 rows (12%), 1.2M rows/s, about 3 min left", and a last line
    when done, so a long run shows it is moving without flooding the terminal or the log."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        total: int | None,
        *,
        every_s: float = 10.0,
        clock: Any = time.monotonic,
        parts: int | None = None,
    ) -> None:
        self.log, self.what, self.total = log, what, total
        self.every_s, self.clock = every_s, clock
        self.started = self.last = clock()
        self.done = 0
        self.parts, self.parts_done = parts, 0

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: "
        if self.parts is not None:
            text += f"{self.parts_done} of {self.parts} parts, "
        text += f"{self.done:,}"
        if self.total:
            text += f" of {self.total:,} rows ({100 * self.done / self.total:.0f}%)"
        else:
            text += " rows"
        text += f", {_rate(rate)} rows/s"
        if self.total and 0 < self.done < self.total and rate > 0:
            text += f", about {_duration((self.total - self.done) / rate)} left"
        return text

    def advance(self, rows: int, parts: int = 0) -> None:
        self.done += rows
        self.parts_done += parts
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.log.info(self.line())

    def finish(self) -> None:
        self.log.info(self.line())
