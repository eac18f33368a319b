"""Public UCR/UEA classification sets through the real pipeline, against published deep models.

Five sets that ship as ``.ts`` files inside aeon's wheel (``aeon/datasets/data/``): ACSF1
(univariate, 1,460 steps, 10 classes), OSULeaf (427 steps, 6 classes), ArrowHead (251 steps,
3 classes), BasicMotions (6 channels, 100 steps, 4 classes) and GunPoint (150 steps,
2 classes). The files are read from the downloaded wheel (opened as a zip): nothing is
downloaded at run time and aeon is never installed or imported. Once, before the first run:

    .venv/bin/pip download aeon==1.6.0 --no-deps -d benchmarks/out/wheels

(the script prints this command when the wheel is missing; ``--wheel PATH`` reads another
copy). Each set becomes the events table a user would bring (``data.source: file``, Parquet):
one row per time step per series, the entity ``train-00017`` / ``test-00003``, synthetic
timestamps one second apart, one numeric column per channel (``ch0``...), the class as a
string and the official split in a ``split`` column (``shard.split.method: column``), where a
seeded, stratified share of the official train series (``--val-fraction``) is marked ``val``
for early stopping; the test series are never seen before scoring.

Then the stages run as dvc.yaml runs them (``python -m pipelines.<stage> --params ...``, each
in its own process, ``benchmarks/small_data.py``'s helpers), in
``benchmarks/out/quality_public/<set>/``: ingest -> validate -> shard once per set (cached;
``--fresh`` rebuilds), then the train stage once per architecture into an MLflow SQLite store
in ``runs/<architecture>-<settings hash>/``; the logged model is loaded back from MLflow and
scores the official test split (accuracy). The order-blind baseline
(``pipelines.baselines.order_blind_baseline``) is fitted on the same train split.

Published accuracies (``PUBLISHED``) are the authors' own result files, each number with its
repository, path and commit. The target per set is the issue's: within 2 accuracy points of the
best published deep model, the run (data preparation, training and scoring) under 15 minutes.

    .venv/bin/python benchmarks/quality_public.py [--sets GunPoint,ArrowHead]
        [--architectures tcn,lstm] [--epochs 40] [--train model.num_layers=5 --train lr=0.001]
        [--batch-series 8] [--val-fraction 0.2] [--wheel PATH] [--fresh]

Prints a table and writes ``benchmarks/out/quality_public.json`` (runs of earlier invocations
with other sets or settings are kept; a rerun of the same set, architecture and settings
replaces its row).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks._common import OUT_DIR, PARAMS, print_table
from benchmarks.small_data import data_stages, fresh_dir, test_quality, train_stage
from pipelines.config import merge_params

# --------------------------------------------------------------------------- the data

WHEEL_PACKAGE = "aeon"
WHEEL_VERSION = "1.6.0"
WHEEL_NAME = f"{WHEEL_PACKAGE}-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "d05227086706f80111ac5fee8de4d5d3115bb3bcfd1c786c8629393055816409"
"""sha256 of the wheel PyPI served for aeon 1.6.0 (the one these results were measured on);
another file is read anyway, with a warning, since the .ts files rarely change."""
WHEELS_DIR = OUT_DIR / "wheels"
DOWNLOAD = (
    f".venv/bin/pip download {WHEEL_PACKAGE}=={WHEEL_VERSION} --no-deps -d "
    f"{WHEELS_DIR.relative_to(OUT_DIR.parents[1])}"
)
SETS = ("GunPoint", "ArrowHead", "BasicMotions", "OSULeaf", "ACSF1")
"""The sets the defaults were tuned and tested on."""
HELD_OUT = ("ItalyPowerDemand", "JapaneseVowels", "PickupGestureWiimoteZ")
"""Sets kept aside, never tuned on: do the defaults carry over? (``--sets held-out``).
JapaneseVowels (12 channels, 7-29 steps) and PickupGestureWiimoteZ (29-361 steps) have
series of different lengths, which the pipeline takes as they are (no resampling)."""
OUT = OUT_DIR / "quality_public"
RESULTS = OUT_DIR / "quality_public.json"
START = np.datetime64("2020-01-01T00:00:00", "ms")
"""Synthetic time of every series' first step (the sets have no timestamps)."""
STEP = np.timedelta64(1000, "ms")

# --------------------------------------------------------------------------- published

_DL4TSC = "hfawaz/dl-4-tsc"
_INCEPTION = "hfawaz/InceptionTime"
_PAPER_TABLE = f"{_DL4TSC} results/results-uea-avg-std.csv @ eb2953e (mean of 10 runs, UCR 2015 archive: the review's table)"
_UCR128 = f"{_DL4TSC} results/results-ucr-128.csv @ 4c2cdff (mean of the 5 runs, UCR 2018 archive)"
_IT128 = f"{_INCEPTION} results-InceptionTime-128.csv @ 365ce4d (the InceptionTime ensemble, UCR 2018 archive)"
_MTS_TABLE = f"{_DL4TSC} results/results-mts-avg-std.csv @ eb2953e (mean of 10 runs, Baydogan's MTS archive: the review's table)"
_IT85 = f"{_INCEPTION} results-InceptionTime-85.csv @ 365ce4d (the InceptionTime ensemble, UCR 2015 archive)"
_ITMTS = (
    f"{_INCEPTION} results-mts.csv @ 0d623a3 (UEA 2018 multivariate archive; the authors removed "
    "this file in 365ce4d and commented out its README link, so read it as unconfirmed)"
)


@dataclass(frozen=True)
class Published:
    """One published accuracy on a set's official test split, and where it was read."""

    model: str
    accuracy: float | None
    """None: the set is not in that publication's tables (nothing is filled in)."""
    source: str


PUBLISHED: dict[str, tuple[Published, ...]] = {
    # Fawaz et al. (2019), "Deep learning for time series classification: a review" (FCN and
    # ResNet, its two best), and Ismail Fawaz et al. (2020), "InceptionTime". The review's
    # table covers the UCR 2015 archive (GunPoint is Gun_Point there) and Baydogan's MTS
    # archive; ACSF1 is only in the 2018 archive, which the authors' repository added later.
    "GunPoint": (
        Published("FCN", 1.000, _PAPER_TABLE),
        Published("ResNet", 0.991, _PAPER_TABLE),
        Published("InceptionTime", 1.0, _IT128),
    ),
    "ArrowHead": (
        Published("FCN", 0.843, _PAPER_TABLE),
        Published("ResNet", 0.845, _PAPER_TABLE),
        Published("InceptionTime", 0.8457, _IT128),
    ),
    "OSULeaf": (
        Published("FCN", 0.977, _PAPER_TABLE),
        Published("ResNet", 0.979, _PAPER_TABLE),
        Published("InceptionTime", 0.9421, _IT128),
    ),
    "ACSF1": (
        Published("FCN", 0.898, _UCR128),
        Published("ResNet", 0.916, _UCR128),
        Published("InceptionTime", 0.92, _IT128),
    ),
    "BasicMotions": (
        # Not in the review (its multivariate archive is Baydogan's 13 sets, without it).
        Published("FCN", None, f"{_DL4TSC} results/results-mts.csv: set not included"),
        Published("ResNet", None, f"{_DL4TSC} results/results-mts.csv: set not included"),
        Published("InceptionTime", 1.0, _ITMTS),
    ),
    # Held out (HELD_OUT). ItalyPowerDemand is in both archives; the review's table and the
    # 2015 InceptionTime file are cited, as for GunPoint. PickupGestureWiimoteZ is only in the
    # 2018 archive. JapaneseVowels: the review used Baydogan's release, InceptionTime the UEA
    # 2018 one (aeon ships the latter; both 270 train / 370 test series).
    "ItalyPowerDemand": (
        Published("FCN", 0.961, _PAPER_TABLE),
        Published("ResNet", 0.963, _PAPER_TABLE),
        Published("InceptionTime", 0.9679, _IT85),
    ),
    "JapaneseVowels": (
        Published("FCN", 0.993, _MTS_TABLE),
        Published("ResNet", 0.992, _MTS_TABLE),
        Published("InceptionTime", 0.9919, _ITMTS),
    ),
    "PickupGestureWiimoteZ": (
        Published("FCN", 0.744, _UCR128),
        Published("ResNet", 0.704, _UCR128),
        Published("InceptionTime", 0.76, _IT128),
    ),
}


def best_published(name: str) -> Published | None:
    known = [p for p in PUBLISHED.get(name, ()) if p.accuracy is not None]
    return max(known, key=lambda p: p.accuracy or 0.0) if known else None


# --------------------------------------------------------------------------- .ts files


class TsFormatError(ValueError):
    """A .ts file this reader does not understand (the message names the line)."""


@dataclass
class TsSet:
    """One .ts file: its header and its series (channels x steps each) with string labels."""

    name: str
    header: dict[str, str]
    series: list[np.ndarray] = field(default_factory=list)
    """float64 arrays of shape (channels, length); NaN where the file has ``?``."""
    labels: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.series[0].shape[0]) if self.series else 0

    @property
    def lengths(self) -> np.ndarray:
        return np.array([s.shape[1] for s in self.series], dtype=np.int64)


def _flag(header: Mapping[str, str], key: str) -> bool:
    return header.get(key, "false").split()[0].lower() == "true"


def parse_ts(text: str, name: str = "") -> TsSet:
    """Parse the sktime/aeon ``.ts`` format (classification, without timestamps).

    Header lines start with ``@`` (keys are case-insensitive), ``#`` lines are comments, and
    after ``@data`` each line is one series: its channels separated by ``:``, each channel's
    values by ``,``, then the class label (``@classLabel true``). ``?`` is a missing value.
    Channels of one series may not differ in length (no set here does; the format allows
    it only with timestamps, which this reader refuses).
    """
    out = TsSet(name=name, header={})
    in_data = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise TsFormatError(f"{name}: line {number}: expected a @ header line")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                if _flag(out.header, "timestamps"):
                    raise TsFormatError(f"{name}: @timeStamps true is not supported")
                in_data = True
                continue
            out.header[key] = value.strip()
            continue
        out.series.append(_series(line, out.header, name, number, out.labels))
    if not in_data:
        raise TsFormatError(f"{name}: no @data line")
    if not out.series:
        raise TsFormatError(f"{name}: no series after @data")
    if len({s.shape[0] for s in out.series}) != 1:
        raise TsFormatError(f"{name}: series with different numbers of channels")
    dims = out.header.get("dimensions")
    if dims is not None and int(dims) != out.channels:
        raise TsFormatError(f"{name}: @dimensions {dims}, but the series have {out.channels}")
    return out


def _series(line: str, header: Mapping[str, str], name: str, number: int, labels: list[str]) -> np.ndarray:  # fmt: skip
    fields = line.split(":")
    if _flag(header, "classlabel"):
        if len(fields) < 2:
            raise TsFormatError(f"{name}: line {number}: no class label after the values")
        labels.append(fields.pop().strip())
        allowed = header["classlabel"].split()[1:]
        if allowed and labels[-1] not in allowed:
            raise TsFormatError(
                f"{name}: line {number}: label {labels[-1]!r} is not in @classLabel {allowed}"
            )
    try:
        channels = [
            np.array([np.nan if v.strip() == "?" else float(v) for v in f.split(",")])
            for f in fields
        ]
    except ValueError as exc:
        raise TsFormatError(f"{name}: line {number}: {exc}") from None
    if len({len(c) for c in channels}) != 1:
        raise TsFormatError(f"{name}: line {number}: channels of different lengths")
    return np.stack(channels)


def wheel_member(names: Sequence[str], set_name: str, part: str) -> str:
    """The zip path of ``<set>_<part>.ts`` (aeon: aeon/datasets/data/<set>/; sktime alike)."""
    want = f"/{set_name}_{part}.ts"
    found = [n for n in names if n.endswith(want) and "/datasets/data/" in n]
    if not found:
        raise FileNotFoundError(f"no {set_name}_{part}.ts under datasets/data/ in the wheel")
    return sorted(found, key=len)[0]


def read_set(wheel: Path, set_name: str) -> tuple[TsSet, TsSet]:
    """The official (train, test) of a set, read from the wheel as a zip (never installed)."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        parts = []
        for part in ("TRAIN", "TEST"):
            member = wheel_member(names, set_name, part)
            text = io.TextIOWrapper(zf.open(member), encoding="utf-8").read()
            parts.append(parse_ts(text, f"{set_name}_{part}"))
    train, test = parts
    if train.channels != test.channels:
        raise TsFormatError(f"{set_name}: train has {train.channels} channels, test {test.channels}")  # fmt: skip
    return train, test


def find_wheel(path: str | None) -> Path:
    """``--wheel`` or the pinned wheel in benchmarks/out/wheels; exits with the download
    command when there is none (the benchmark never downloads anything itself)."""
    wheel = Path(path) if path else WHEELS_DIR / WHEEL_NAME
    if not wheel.is_file():
        sys.exit(f"{wheel}: not found. Download it once (about 6 MB), from the repository root:\n"
                 f"    {DOWNLOAD}\nor pass --wheel PATH to an aeon (or sktime) wheel.")  # fmt: skip
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if wheel.name == WHEEL_NAME and digest != WHEEL_SHA256:
        print(f"warning: {wheel} has sha256 {digest}, not {WHEEL_SHA256}", file=sys.stderr)
    return wheel


# --------------------------------------------------------------------------- events table


def stratified_val(labels: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """A seeded, stratified choice of ``fraction`` of the train series (per class, rounded,
    at least one of every class that has two or more) to hold out for validation; a bool mask.

    Stratified, not by key hash as the column method's own ``val_fraction``: with 36 to 100
    train series a hash can leave a class out of validation altogether."""
    labels_arr = np.asarray(labels)
    mask = np.zeros(len(labels_arr), dtype=bool)
    rng = np.random.default_rng(seed)
    for cls in sorted(set(labels_arr.tolist())):
        idx = np.flatnonzero(labels_arr == cls)
        n = len(idx)
        k = min(max(round(fraction * n), 1 if n >= 2 and fraction > 0 else 0), n - 1)
        mask[rng.permutation(idx)[:k]] = True
    return mask


def events_table(train: TsSet, test: TsSet, val_fraction: float = 0.2, seed: int = 7) -> pa.Table:
    """One row per time step per series, in series then time order: ``series`` (entity),
    ``time`` (UTC, one second apart from ``START``), ``ch0``... (one float per channel),
    ``label`` (string) and ``split`` (train / val / test). Steps with a missing value in any
    channel are left out: their time still advances, so the gap shows in the times."""
    val = stratified_val(train.labels, val_fraction, seed)
    entities: list[str] = []
    splits: list[str] = []
    for prefix, part, held in (("train", train, val), ("test", test, None)):
        for i in range(len(part.series)):
            entities.append(f"{prefix}-{i:05d}")
            splits.append("test" if held is None else ("val" if held[i] else "train"))
    series = [*train.series, *test.series]
    labels = [*train.labels, *test.labels]
    lengths = np.array([s.shape[1] for s in series], dtype=np.int64)
    values = np.concatenate(series, axis=1)  # (channels, rows)
    owner = np.repeat(np.arange(len(series)), lengths)
    step = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = ~np.isnan(values).any(axis=0)
    owner, step, values = owner[keep], step[keep], values[:, keep]
    columns: dict[str, pa.Array] = {
        "series": pa.array(np.asarray(entities, dtype=object)[owner], pa.string()),
        "time": pa.array(START + step * STEP, pa.timestamp("ms", tz="UTC")),
    }
    for c in range(values.shape[0]):
        columns[f"ch{c}"] = pa.array(values[c], pa.float64())
    columns["label"] = pa.array(np.asarray(labels, dtype=object)[owner], pa.string())
    columns["split"] = pa.array(np.asarray(splits, dtype=object)[owner], pa.string())
    return pa.table(columns)


# --------------------------------------------------------------------------- params


def set_params(events: Path, channels: int, length: int, seed: int) -> dict[str, Any]:
    """params.yaml with this table mapped (README, "Bring your own data"): no sequence number,
    categories or arrival column; the card data's domains, ranges, log1p of ``amount`` and
    slices replaced, not merged; whole series as windows; the official split."""
    raw = yaml.safe_load(PARAMS.read_text())
    numeric = [f"ch{c}" for c in range(channels)]
    merge_params(raw, {
        "seed": seed,
        "data": {"source": "file", "path": str(events), "format": "parquet",
                 "schema": {"entity": "series", "time": "time", "seq": None, "numeric": numeric,
                            "categorical": [], "label": "label", "next_event": None,
                            "forecast": None, "arrival": None}},
        "shard": {"split": {"method": "column", "column": "split"},
                  "window": {"policy": "full", "max_len": length, "length": length,
                             "min_length": 2},
                  # Every step is one second after the last: a constant, no information.
                  "features": {"time_delta": False}},
        "train": {"task": "classify"},
    })  # fmt: skip
    raw["validate"]["domains"] = {}
    raw["validate"]["ranges"] = {}
    raw["shard"]["features"]["numeric_transform"] = {}
    raw["evaluate"]["slices"] = []
    return raw


ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    # Classify with the whole series in view: a bidirectional TCN with mean pooling, as the
    # published FCN/ResNet/InceptionTime pool globally over time.
    "tcn": {"model": {"architecture": "tcn", "causal": False, "pooling": "mean"}},
    "lstm": {"model": {"architecture": "lstm"}},
    "gru": {"model": {"architecture": "gru"}},
    "transformer": {"model": {"architecture": "transformer"}},
}


def dotted(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` (YAML values; ``model.num_layers=5`` nests) as a train mapping."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--train {item!r}: expected KEY=VALUE")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


# --------------------------------------------------------------------------- running


def prepare(name: str, wheel: Path, folder: Path, val_fraction: float, seed: int, fresh: bool) -> dict[str, Any]:  # fmt: skip
    """Events table -> ingest -> validate -> shard for one set, once (cached in ``data.json``),
    and the order-blind baseline on its shards."""
    done = folder / "data.json"
    key = {"wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
           "val_fraction": val_fraction, "seed": seed}  # fmt: skip
    if done.exists() and not fresh:
        info: dict[str, Any] = json.loads(done.read_text())
        if all(info.get(k) == v for k, v in key.items()):
            return info
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    train, test = read_set(wheel, name)
    table = events_table(train, test, val_fraction, seed)
    events = folder / "events.parquet"
    pq.write_table(table, events)
    length = int(max(train.lengths.max(), test.lengths.max()))
    raw = set_params(events, train.channels, length, seed)
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    convert = time.perf_counter() - started
    seconds = {"convert": convert, **data_stages(params, folder)}
    from pipelines.baselines import order_blind_baseline

    started = time.perf_counter()
    baseline = order_blind_baseline(folder / "shards", seed=seed)
    seconds["baseline"] = time.perf_counter() - started
    manifest = json.loads((folder / "shards" / "manifest.json").read_text())
    info = {
        **key,
        "set": name,
        "length": length,
        "variable_length": bool(len({*train.lengths.tolist(), *test.lengths.tolist()}) > 1),
        "channels": train.channels,
        "classes": len(set(train.labels) | set(test.labels)),
        "n_train": len(train.series),
        "n_test": len(test.series),
        "examples": {s: e["examples"] for s, e in manifest["splits"].items()},
        "events": manifest["input"]["events_count"],
        "seconds": seconds,
        "baseline_accuracy": baseline["accuracy"],
    }
    done.write_text(json.dumps(info, indent=2))
    return info


def settings_tag(train: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(train, sort_keys=True).encode()).hexdigest()[:8]


def train_once(folder: Path, info: Mapping[str, Any], arch: str, train: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The train stage on the set's shards into its own MLflow store; the logged model, loaded
    back, scores the official test split."""
    tag = f"{arch}-{settings_tag(train)}"
    run_dir = fresh_dir(folder / "runs" / tag)
    raw = yaml.safe_load((folder / "params.yaml").read_text())
    # The data sections are the set's (cached with its shards); the train section is today's
    # params.yaml, so a run measures the current defaults, not those of the day the set was cached.
    raw["train"] = yaml.safe_load(PARAMS.read_text())["train"]
    merge_params(raw, {"train": {**train, "storage_path": str(run_dir / "ray")}})
    params = run_dir / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    seconds, summary, uri = train_stage(params, folder, run_dir)
    started = time.perf_counter()
    quality = test_quality(summary["model_uri"], uri, folder / "shards")
    score_seconds = time.perf_counter() - started
    last = summary.get("last_epoch_metrics", {})
    return {
        "run": tag,
        "train_settings": train,
        "train_seconds": round(seconds, 1),
        "score_seconds": round(score_seconds, 1),
        "fit_seconds": summary.get("fit_seconds"),
        "epochs_run": summary.get("epochs_run"),
        "best_epoch": summary.get("best_epoch"),
        "best_val_loss": summary.get("best_val_loss"),
        "val_accuracy": last.get("val_accuracy"),
        "max_tokens_resolved": summary.get("max_tokens_resolved"),
        **quality,
    }


def result_row(name: str, info: Mapping[str, Any], arch: str, run: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    best = best_published(name)
    prep = sum(v for k, v in info["seconds"].items() if k != "baseline")
    wall = prep + run["train_seconds"] + run["score_seconds"]
    gap = None if best is None else round(100 * (best.accuracy or 0.0) - 100 * run["test_accuracy"], 1)  # fmt: skip
    met = None if gap is None else bool(gap <= 2.0 and wall < 900)
    return {
        "set": name,
        "architecture": arch,
        **{k: info[k] for k in ("length", "channels", "classes", "n_train", "n_test")},
        "test_accuracy": run["test_accuracy"],
        "baseline_accuracy": info["baseline_accuracy"],
        "best_published": None if best is None else vars(best),
        "gap_points": gap,
        "wall_seconds": round(wall, 1),
        "prepare_seconds": round(prep, 1),
        "target_met": met,
        **run,
    }


def print_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    def pub(r: Mapping[str, Any]) -> str:
        b = r["best_published"]
        return "none" if b is None else f"{b['accuracy']:.3f} ({b['model']})"

    return print_table(
        ["set", "length", "channels", "classes", "train/test", "architecture", "run", "test acc",
         "baseline acc", "best published", "gap (points)", "wall s", "target met"],
        [[r["set"], r["length"], r["channels"], r["classes"], f"{r['n_train']}/{r['n_test']}",
          r["architecture"], r["run"], f"{r['test_accuracy']:.3f}", f"{r['baseline_accuracy']:.3f}",
          pub(r), "-" if r["gap_points"] is None else f"{r['gap_points']:+.1f}",
          f"{r['wall_seconds']:.0f}",
          {True: "yes", False: "no", None: "n/a"}[r["target_met"]]] for r in rows],
    )  # fmt: skip


def save(rows: Sequence[Mapping[str, Any]], wheel: Path) -> None:
    """Merge this invocation's rows into the results file (same set and run: replaced)."""
    kept: list[Mapping[str, Any]] = []
    if RESULTS.exists():
        kept = json.loads(RESULTS.read_text()).get("runs", [])
    new = {(r["set"], r["run"]) for r in rows}
    runs = [r for r in kept if (r["set"], r["run"]) not in new] + list(rows)
    published = {k: [vars(p) for p in v] for k, v in PUBLISHED.items()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"wheel": {"path": str(wheel), "name": wheel.name},
                                   "published": published, "runs": runs}, indent=2))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=",".join(SETS),
                        help=f"comma separated; 'held-out' = {','.join(HELD_OUT)}")  # fmt: skip
    parser.add_argument("--architectures", default="tcn,lstm")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default params.yaml's)")  # fmt: skip
    parser.add_argument(
        "--train", action="append", default=[], metavar="KEY=VALUE",
        help="another train key for every run (YAML value; dots nest: model.num_layers=5)",
    )  # fmt: skip
    parser.add_argument("--batch-series", type=int, default=None,
                        help="train.max_tokens as this many whole series per worker batch")  # fmt: skip
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of the official train series held out (stratified) for validation")  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="params seed: validation choice, training")  # fmt: skip
    parser.add_argument("--wheel", default=None, help=f"the wheel to read (default {WHEELS_DIR / WHEEL_NAME})")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="rebuild each set's events and shards")
    args = parser.parse_args(argv)
    if not 0.0 < args.val_fraction < 1.0:
        parser.error("--val-fraction must be within (0, 1)")

    wheel = find_wheel(args.wheel)
    extra = dotted(args.train)
    if args.epochs is not None:
        extra["epochs"] = args.epochs
    rows = []
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    names = [n for name in names for n in (HELD_OUT if name == "held-out" else (name,))]
    for name in names:
        folder = OUT / name
        info = prepare(name, wheel, folder, args.val_fraction, args.seed, args.fresh)
        print(f"{name}: {json.dumps({k: v for k, v in info.items() if k != 'wheel_sha256'})}", flush=True)  # fmt: skip
        for arch in [a.strip() for a in args.architectures.split(",") if a.strip()]:
            if arch not in ARCH_DEFAULTS:
                parser.error(f"--architectures: {arch!r} is not one of {sorted(ARCH_DEFAULTS)}")
            train = merge_params(json.loads(json.dumps(ARCH_DEFAULTS[arch])), extra)
            if args.batch_series and "max_tokens" not in extra:
                # A budget in series, whatever their length (every window is one series).
                train["max_tokens"] = args.batch_series * info["length"]
            run = train_once(folder, info, arch, train)
            rows.append(result_row(name, info, arch, run))
            print(json.dumps(rows[-1], default=str), flush=True)
            save(rows[-1:], wheel)
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
