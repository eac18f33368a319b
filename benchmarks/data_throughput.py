"""Throughput and peak memory of the validate and shard stages against side-by-side baselines.

On one generated events table (10M events by default, written by ingest's writer so it has
``_arrival``), each measured step runs alone in a fresh child process, and the steps are
interleaved round by round (baseline, ours, ours, baseline, ...), medians reported:

1. baseline: ``pyarrow.parquet.read_table`` of the events + ``Table.sort_by(entity, time)``,
   the floor any grouping of events costs (../shared/PERFORMANCE.md: "validate + shard should
   cost at most about twice that again", i.e. at most 3x in all);
2. ours: ``pipelines.validate.run`` then ``pipelines.shard.run`` on the same events, the real
   stage code writing real outputs; target (validate + shard) / baseline <= 3;
3. pandas: the shard stage's default windowing (``last``, 256, min_length 2, the same buckets
   and the same per-event features, each window padded to its bucket bound) written the way a
   data scientist would: ``sort_values``, ``groupby``, per-group ``tail`` + ``np.pad``,
   ``np.stack``. Its per-entity loop is too slow for 10M events (minutes per run), so it is
   timed on a 1M-event input against our two stages on that same input (``--pandas-events``);
   target pandas / (validate + shard) >= 5. It is given the fitted vocabularies, statistics
   and boundaries (from the shard manifest) for free and writes nothing, so the ratio is
   conservative;
4. peak RSS of each step (its child's ``ru_maxrss``) against the Arrow size of the events
   table (``Table.nbytes``); target at most 3x for validate and for shard.

``--check`` runs ``check_equivalence()``: on a small generated input the pandas windows must
equal the shard stage's (entities, lengths, bucket widths, categorical ids, numeric features).

``--scaling 10000000,30000000,100000000`` (``scaling()``): validate + shard on the events in
parts of 1M rows, run on Ray with 2 workers and with 1, in process (``data.engine: local``)
and, up to 10M, as one part (the single-process path of before), beside read_table +
sort_by; the peak RSS of every process of a step (driver, Ray workers, Ray's own services,
sampled by ``_common.ProcessTree``). Above 30M events the table is generated in chunks
straight into parts and the baseline is the smallest size's, scaled linearly.

    .venv/bin/python benchmarks/data_throughput.py [--events 10000000 | --quick] [--rounds 3]
    .venv/bin/python benchmarks/data_throughput.py --check
    .venv/bin/python benchmarks/data_throughput.py --scaling 10000000,100000000 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks._common import (
    OUT_DIR,
    PARAMS,
    ChildRun,
    Phases,
    ensure_events,
    ensure_events_chunked,
    fmt_bytes,
    fmt_rate,
    median,
    print_table,
    run_child,
    verdict,
    write_generated_events,
    write_result,
)

if TYPE_CHECKING:
    from pipelines.params.shard import WindowConfig
    from seqcore.features import FeatureSpec
    from seqcore.schema import SchemaConfig

TARGET_OURS_VS_SORT = 3.0
TARGET_PANDAS_VS_OURS = 5.0
TARGET_RSS_VS_TABLE = 3.0
SCRIPT = str(Path(__file__).resolve())


# --------------------------------------------------------------------------- pandas baseline


def pandas_windows(
    events: str | Path,
    spec: FeatureSpec,
    bounds: list[int] | tuple[int, ...],
    window: WindowConfig,
    schema: SchemaConfig,
) -> dict[int, dict[str, np.ndarray]]:
    """The shard stage's ``last`` windows, the way a typical pandas user writes them.

    ``spec`` is the shard manifest's fitted ``FeatureSpec`` (vocabularies, statistics) and
    ``bounds`` its bucket boundaries. Returns, per bucket width: ``entity`` (n,), ``length``
    (n,), ``cat`` (n, L, C) int32 vocabulary ids and ``num`` (n, L, F) float32 features,
    padded with 0 after each window's events: the shard stage's model inputs.
    """
    import pandas as pd

    if window.policy != "last":
        raise ValueError(f"the pandas baseline implements the 'last' policy, not {window.policy!r}")
    keys = [schema.entity, schema.time, *([schema.seq] if schema.seq else [])]
    df = pd.read_parquet(events, columns=[*keys, *spec.categorical, *spec.numeric])
    df = df.sort_values(keys)

    for col in spec.categorical:  # PAD 0, OOV 1, then the vocabulary
        vocab = {value: i + 2 for i, value in enumerate(spec.vocab[col])}
        df[col] = df[col].map(vocab).astype("float64").fillna(1).astype("int32")
    for col in spec.numeric:
        x = df[col].astype("float64")
        if spec.numeric_transform.get(col) == "log1p":
            x = np.sign(x) * np.log1p(x.abs())
        df[col] = ((x - spec.mean[col]) / spec.std[col]).fillna(0.0).astype("float32")
    num_cols = list(spec.numeric)
    if spec.time_delta:
        gap = df.groupby(schema.entity)[schema.time].diff().dt.total_seconds()
        delta = np.log1p(gap.fillna(0.0).clip(lower=0.0))
        df["time_delta"] = ((delta - spec.mean["time_delta"]) / spec.std["time_delta"]).astype(
            "float32"
        )
        num_cols.append("time_delta")
    cat_cols = list(spec.categorical)

    upper = np.asarray(bounds)
    rows: dict[int, list[tuple[Any, int, np.ndarray, np.ndarray]]] = {}
    for entity, group in df.groupby(schema.entity):
        w = group.tail(window.length)
        n = len(w)
        if n < window.min_length:
            continue
        width = int(upper[np.searchsorted(upper, n)])
        cat = np.pad(w[cat_cols].to_numpy(np.int32), ((0, width - n), (0, 0)))
        num = np.pad(w[num_cols].to_numpy(np.float32), ((0, width - n), (0, 0)))
        rows.setdefault(width, []).append((entity, n, cat, num))
    return {
        width: {
            "entity": np.array([str(r[0]) for r in items], dtype=object),
            "length": np.array([r[1] for r in items], dtype=np.int64),
            "cat": np.stack([r[2] for r in items]),
            "num": np.stack([r[3] for r in items]),
        }
        for width, items in sorted(rows.items())
    }


def shard_windows(shard_dir: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """The shard stage's written windows in ``pandas_windows``' layout, all splits together."""
    from pipelines.shard_reader import read_bucket
    from seqcore.manifest import load_manifest

    manifest = load_manifest(shard_dir)
    spec = manifest.features
    parts: dict[int, list[dict[str, np.ndarray]]] = {}
    for split, entry in manifest.splits.items():
        for bound in entry.buckets:
            table, width = read_bucket(shard_dir, split, bound), bound
            n = table.num_rows

            def flat(name: str, table=table) -> np.ndarray:
                return table.column(name).combine_chunks().flatten().to_numpy()

            cat = [flat(f"cat__{c}").reshape(n, width) for c in spec.categorical]
            parts.setdefault(width, []).append(
                {
                    "entity": np.array(table.column("entity").to_pylist(), dtype=object),
                    "length": table.column("length").to_numpy().astype(np.int64),
                    "cat": np.stack(cat, axis=-1),
                    "num": flat("num").reshape(n, width, -1),
                }
            )
    return {
        width: {k: np.concatenate([p[k] for p in items]) for k in items[0]}
        for width, items in sorted(parts.items())
    }


def compare_windows(
    ours: dict[int, dict[str, np.ndarray]],
    theirs: dict[int, dict[str, np.ndarray]],
    atol: float = 1e-5,
) -> dict[str, Any]:
    """Raise AssertionError unless both hold the same windows; return what was compared."""
    ours = {w: b for w, b in ours.items() if len(b["entity"])}
    theirs = {w: b for w, b in theirs.items() if len(b["entity"])}
    assert sorted(ours) == sorted(theirs), (
        f"bucket widths differ: {sorted(ours)} vs {sorted(theirs)}"
    )
    windows = events = 0
    worst = 0.0
    for width in ours:
        a, b = ours[width], theirs[width]
        ia, ib = np.argsort(a["entity"]), np.argsort(b["entity"])
        assert np.array_equal(a["entity"][ia], b["entity"][ib]), f"bucket {width}: entities differ"
        assert np.array_equal(a["length"][ia], b["length"][ib]), f"bucket {width}: lengths differ"
        assert a["cat"].shape == b["cat"].shape, f"bucket {width}: cat shapes differ"
        assert np.array_equal(a["cat"][ia], b["cat"][ib]), f"bucket {width}: categorical ids differ"
        assert a["num"].shape == b["num"].shape, f"bucket {width}: num shapes differ"
        diff = np.abs(a["num"][ia].astype(np.float64) - b["num"][ib])
        worst = max(worst, float(diff.max(initial=0.0)))
        assert worst <= atol, f"bucket {width}: numeric features differ by up to {worst:.3g}"
        windows += len(ia)
        events += int(a["length"].sum())
    return {"buckets": len(ours), "windows": windows, "events": events, "num_max_abs_diff": worst}


def check_equivalence(
    work: str | Path | None = None, n_entities: int = 300, seed: int = 7
) -> dict[str, Any]:
    """On a small generated input, pandas' windows must equal those the shard stage writes.

    The shard stage runs on the raw (arrival-ordered) events: it groups and orders them
    itself, so no validate run (and no Great Expectations import) is needed for this check.
    """
    from pipelines import shard
    from pipelines.config import load_params

    params = load_params(PARAMS)
    own_tmp = work is None
    root = Path(tempfile.mkdtemp(prefix="bench-check-")) if own_tmp else Path(work)
    try:
        write_generated_events(n_entities, root / "events", seed)
        manifest = shard.run(params, root / "events", root / "shards")
        spec = manifest.features
        bounds = manifest.bucket_boundaries
        theirs = pandas_windows(
            root / "events", spec, bounds, params.shard.window, params.data.schema
        )
        return compare_windows(shard_windows(root / "shards"), theirs)
    finally:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- child steps


def step_generate(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    path = ensure_events(args.n)
    table = pq.read_table(path)
    return {"path": str(path), "rows": table.num_rows, "nbytes": table.nbytes}


def step_baseline(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from pipelines.config import load_params

    schema = load_params(PARAMS).data.schema
    sort_keys = [(schema.entity, "ascending"), (schema.time, "ascending")]
    phases, sizes = Phases(), {}

    def step() -> None:
        with phases.phase("read_table"):
            table = pq.read_table(args.events_dir)
        sizes.update(rows=table.num_rows, nbytes=table.nbytes)
        with phases.phase("sort_by"):
            ordered = table.sort_by(sort_keys)
        assert ordered.num_rows == table.num_rows

    _, figures = phases.measure(step)
    return {**figures, **sizes}


def step_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """The ingest stage reading the same events as a user's folder of Parquet files
    (``data.source: file``, no arrival column): a stream, so its peak RSS is the measure."""
    import dataclasses

    from pipelines import ingest
    from pipelines.config import load_params

    params = load_params(PARAMS)
    data = dataclasses.replace(params.data, source="file", path=str(args.events_dir))
    phases = Phases()
    for name in ("open_dataset", "normalise_user_table", "_finish_part"):
        phases.wrap(ingest, name)
    summary, figures = phases.measure(
        lambda: ingest.run(dataclasses.replace(params, data=data), Path(args.work) / "ingested")
    )
    return {**figures, "rows": summary["rows"], "parts": summary["parts"]}


def _engine_params(args: argparse.Namespace) -> Any:
    """params.yaml, with ``--engine`` and ``--workers`` (the scaling runs) applied."""
    from pipelines.config import load_params

    params = load_params(PARAMS)
    engine, workers = getattr(args, "engine", None), getattr(args, "workers", None)
    if engine or workers:
        data = dataclasses.replace(
            params.data, engine=engine or params.data.engine, workers=workers
        )
        params = dataclasses.replace(params, data=data)
    return params


def step_chunked(args: argparse.Namespace) -> dict[str, Any]:
    """``--n`` events generated in chunks straight into parts (``ensure_events_chunked``)."""
    from pipelines.fanout import list_parts

    out = ensure_events_chunked(args.n, args.rows_per_part)
    parts = list_parts(out)
    return {
        "path": str(out),
        "rows": sum(p.rows for p in parts),
        "parts": len(parts),
        "nbytes": sum(p.arrow_bytes for p in parts),  # from the footers: not read whole
    }


def step_repartition(args: argparse.Namespace) -> dict[str, Any]:
    """The cached ``--n`` events rewritten in parts of ``--rows-per-part`` rows (one part:
    the whole table, today's single-process validate); each part keeps arrival order."""
    import pyarrow.parquet as pq

    from pipelines.config import load_params
    from pipelines.ingest import write_events
    from seqcore.store import read_events

    source = ensure_events(args.n)
    out = source.with_name(f"{source.name}-parts{args.rows_per_part}")
    if not out.is_dir():
        entity = load_params(PARAMS).data.schema.entity
        write_events(read_events(source), out, args.rows_per_part, entity)
    parts = sorted(out.glob("part-*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    return {"path": str(out), "rows": rows, "parts": len(parts)}


def step_validate(args: argparse.Namespace) -> dict[str, Any]:
    from data_checks import contract
    from pipelines import validate

    params = _engine_params(args)
    work = Path(args.work)
    phases = Phases()
    for name in (
        "whole_table_facts",
        "map_parts",
        "finish_report",
        "_gather_quarantine",
        "write_docs",
        "write_json",
    ):
        phases.wrap(validate, name)
    # Inside map_parts, seen here when the parts run in this process (data.engine: local).
    for name in ("check_contract", "write_parquet_chunks"):
        phases.wrap(validate, name)  # write_parquet_chunks: gathers + Parquet, chunk by chunk
    for name in ("_row_checks", "_split"):  # inside check_contract
        phases.wrap(contract, name)
    report, figures = phases.measure(
        lambda: validate.run(
            params,
            Path(args.events_dir),
            work / "validated",
            work / "quarantine" / "quarantine.parquet",
            work / "reports" / "validation.json",
            work / "reports" / "data_docs",
        )
    )
    if report.failed():
        raise RuntimeError(f"validation failed: {report.summary()}")
    figures["breakdown"].update({f"timings.{k}": v for k, v in report.timings.items()})
    return {**figures, "rows": report.rows_out}


def step_shard(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines import shard
    from seqcore import io

    params = _engine_params(args)
    work = Path(args.work)
    phases = Phases()
    # Driver-side steps only: the parts' tasks (fit_part, write_part) are sent to Ray
    # workers, which a wrapper holding this process's sampler thread cannot follow.
    for name in ("_split_plan", "map_parts", "_fit", "_reduce", "check_split_leakage"):
        phases.wrap(shard, name)
    phases.wrap(io, "sha256_tree")
    manifest, figures = phases.measure(
        lambda: shard.run(params, work / "validated", work / "shards")
    )
    examples = sum(entry.examples for entry in manifest.splits.values())
    return {**figures, "rows": manifest.input.events_count, "examples": examples}


def step_pandas(args: argparse.Namespace) -> dict[str, Any]:
    import pandas  # noqa: F401  (imported before the clock starts, like pyarrow elsewhere)

    from pipelines.config import load_params
    from seqcore.manifest import Manifest

    params = load_params(PARAMS)
    manifest = Manifest.read(Path(args.work) / "shards")
    spec = manifest.features
    bounds = manifest.bucket_boundaries
    out, figures = Phases().measure(
        lambda: pandas_windows(
            args.events_dir, spec, bounds, params.shard.window, params.data.schema
        )
    )
    examples = sum(len(b["entity"]) for b in out.values())
    return {**figures, "rows": manifest.input.events_count, "examples": examples}


STEPS = {
    "chunked": step_chunked,
    "repartition": step_repartition,
    "ingest": step_ingest,
    "generate": step_generate,
    "baseline": step_baseline,
    "validate": step_validate,
    "shard": step_shard,
    "pandas": step_pandas,
}


# --------------------------------------------------------------------------- orchestration


def _child(step: str, **kwargs: Any) -> ChildRun:
    args = [SCRIPT, "--step", step]
    for key, value in kwargs.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return run_child(args)


def _rounds(
    label: str, events_dir: Path, work: Path, jobs: list[str], rounds: int
) -> dict[str, list[ChildRun]]:
    """Run ``jobs`` in fresh children, ``rounds`` times, reversing the order every other round.

    Round 0 runs in the given order, so that shard finds validate's output and pandas the
    shard manifest; reversed rounds reuse the previous round's (identical) outputs.
    """
    runs: dict[str, list[ChildRun]] = {job: [] for job in jobs}
    for r in range(rounds):
        for job in jobs if r % 2 == 0 else jobs[::-1]:
            run = _child(job, events_dir=events_dir, work=work)
            runs[job].append(run)
            res = run.result
            print(
                f"  [{label}] round {r + 1}/{rounds} {job:8s} {res['seconds']:7.2f} s wall "
                f"{res['cpu_seconds']:7.2f} s CPU  peak RSS {fmt_bytes(run.peak_rss)}",
                flush=True,
            )
    return runs


def _med(runs: list[ChildRun], key: str = "seconds") -> float:
    return median(r.result[key] for r in runs)


def _sum(*series: list[ChildRun], key: str = "seconds") -> list[float]:
    """Per round, the sum of ``key`` over the given steps (e.g. validate + shard)."""
    return [sum(r.result[key] for r in group) for group in zip(*series, strict=True)]


def _ratios(num: list[float], den: list[float]) -> str:
    return ", ".join(f"{a / b:.2f}" for a, b in zip(num, den, strict=True))


def _print_breakdown(name: str, runs: list[ChildRun]) -> None:
    """Median seconds and sampled peak RSS of each phase of one step."""
    phases = dict.fromkeys([*runs[0].result["breakdown"], *runs[0].result["phase_peak_rss"]])
    parts = []
    for phase in phases:
        secs = median(r.result["breakdown"].get(phase, 0.0) for r in runs)
        peak = median(r.result["phase_peak_rss"].get(phase, 0) for r in runs)
        parts.append(f"{phase} {secs:.2f} s" + (f" / {fmt_bytes(peak)}" if peak else ""))
    print(f"  {name}: " + "; ".join(parts))


def measure(n_events: int, pandas_events: int, rounds: int, pandas_rounds: int) -> dict[str, float]:
    """Every measurement; prints the tables and returns the headline ratios."""
    pandas_events = min(pandas_events, n_events)
    same = pandas_events == n_events
    print(
        f"inputs: {n_events} events, pandas comparison on {pandas_events}; generated once "
        f"into {OUT_DIR}",
        flush=True,
    )
    big_in = _child("generate", n=n_events).result
    small_in = big_in if same else _child("generate", n=pandas_events).result
    work = OUT_DIR / "throughput-work"
    shutil.rmtree(work, ignore_errors=True)
    size = f"{n_events / 1e6:g}M"
    small_size = f"{pandas_events / 1e6:g}M"

    jobs = ["baseline", "ingest", "validate", "shard", *(["pandas"] if same else [])]
    big = _rounds(size, Path(big_in["path"]), work / size, jobs, rounds)
    small = big
    if not same:
        small_jobs = ["validate", "shard", "pandas"]
        small_dir, small_work = Path(small_in["path"]), work / small_size
        small = _rounds(small_size, small_dir, small_work, small_jobs, pandas_rounds)

    n, nbytes = big_in["rows"], big_in["nbytes"]
    ours = _sum(big["validate"], big["shard"])
    ours_cpu = _sum(big["validate"], big["shard"], key="cpu_seconds")
    base = _sum(big["baseline"])
    base_cpu = _sum(big["baseline"], key="cpu_seconds")
    small_ours = _sum(small["validate"], small["shard"])
    small_ours_cpu = _sum(small["validate"], small["shard"], key="cpu_seconds")
    pd_wall = _sum(small["pandas"])
    pd_cpu = _sum(small["pandas"], key="cpu_seconds")

    steps = [
        ("baseline: read_table + sort_by", big["baseline"], n),
        ("ingest.run (the events as a user's folder)", big["ingest"], n),
        ("validate.run", big["validate"], n),
        ("shard.run", big["shard"], n),
    ]
    if not same:
        steps += [
            (f"validate.run ({small_size})", small["validate"], pandas_events),
            (f"shard.run ({small_size})", small["shard"], pandas_events),
        ]
    steps.append((f"pandas windows ({small_size})", small["pandas"], pandas_events))
    rows = []
    for name, runs, events in steps:
        wall = [r.result["seconds"] for r in runs]
        peak = median(r.peak_rss for r in runs)
        own = median(r.peak_rss - r.result["rss_before"] for r in runs)
        rows.append(
            [
                name,
                f"{median(wall):.2f}",
                f"{min(wall):.2f}-{max(wall):.2f}",
                f"{_med(runs, 'cpu_seconds'):.2f}",
                fmt_rate(events, median(wall)),
                fmt_bytes(peak),
                fmt_bytes(_med(runs, "rss_before")),
                f"{peak / nbytes:.2f}x" if events == n else "-",
                f"{own / nbytes:.2f}x" if events == n else "-",
            ]
        )
    rows.append(
        ["validate + shard", f"{median(ours):.2f}", f"{min(ours):.2f}-{max(ours):.2f}",
         f"{median(ours_cpu):.2f}", fmt_rate(n, median(ours)), "-", "-", "-", "-"]
    )  # fmt: skip
    headers = ["step", "wall s (median)", "range", "CPU s", "events/s", "peak RSS",
               "RSS at start", "peak / nbytes", "(peak - start) / nbytes"]  # fmt: skip
    print_table(
        headers,
        rows,
        f"Steps on {n} events, {rounds} rounds, each step in a fresh process "
        f"(events table as Arrow: {fmt_bytes(nbytes)})",
    )
    print("\nPhases (median wall seconds / highest RSS sampled during the phase):")
    for name in ("baseline", "validate", "shard"):
        _print_breakdown(name, big[name])
    print(f"  per-round (validate + shard) / baseline: {_ratios(ours, base)}")
    print(
        f"  per-round pandas / (validate + shard) at {small_size}: {_ratios(pd_wall, small_ours)}"
    )

    ratio_sort = median(ours) / median(base)
    ratio_pd = median(pd_wall) / median(small_ours)
    rss = {name: median(r.peak_rss for r in big[name]) / nbytes for name in big}
    targets = [
        ["(validate + shard) / (read_table + sort_by)", f"<= {TARGET_OURS_VS_SORT:g}x",
         f"{ratio_sort:.2f}x", f"{median(ours_cpu) / median(base_cpu):.2f}x",
         verdict(ratio_sort <= TARGET_OURS_VS_SORT)],
        ["  validate / (read_table + sort_by)", "", f"{_med(big['validate']) / median(base):.2f}x",
         f"{_med(big['validate'], 'cpu_seconds') / median(base_cpu):.2f}x", ""],
        ["  shard / (read_table + sort_by)", "", f"{_med(big['shard']) / median(base):.2f}x",
         f"{_med(big['shard'], 'cpu_seconds') / median(base_cpu):.2f}x", ""],
        [f"pandas / (validate + shard), both on {small_size}", f">= {TARGET_PANDAS_VS_OURS:g}x",
         f"{ratio_pd:.2f}x", f"{median(pd_cpu) / median(small_ours_cpu):.2f}x",
         verdict(ratio_pd >= TARGET_PANDAS_VS_OURS)],
        ["validate peak RSS / events nbytes", f"<= {TARGET_RSS_VS_TABLE:g}x",
         f"{rss['validate']:.2f}x", "", verdict(rss["validate"] <= TARGET_RSS_VS_TABLE)],
        ["shard peak RSS / events nbytes", f"<= {TARGET_RSS_VS_TABLE:g}x",
         f"{rss['shard']:.2f}x", "", verdict(rss["shard"] <= TARGET_RSS_VS_TABLE)],
        ["  baseline peak RSS / events nbytes (reference)", "", f"{rss['baseline']:.2f}x", "", ""],
        ["  ingest peak RSS / events nbytes (streams: flat in N)", "",
         f"{rss['ingest']:.2f}x", "", ""],
    ]  # fmt: skip
    if not same:  # not side by side (different loops), so CPU time only, and only a guess
        scaled = median(pd_cpu) * n / pandas_events / median(ours_cpu)
        label = f"  estimate: pandas x{n / pandas_events:g} (linear) / (validate + shard) at {size}"
        targets.append([label, "", "", f"{scaled:.1f}x", ""])
    print_table(["check", "target", "wall ratio", "CPU ratio", "result"], targets, "Targets")
    return {
        "ours_vs_sort": ratio_sort,
        "pandas_vs_ours": ratio_pd,
        "rss_validate": rss["validate"],
        "rss_shard": rss["shard"],
    }


SCALING_PART_ROWS = 1_000_000
"""Parts of the scaling runs: ten per 10M events, so two workers share them evenly."""
WHOLE_MAX = 10_000_000
"""Above this, today's whole-table run is left out (it needs ~3x the table in memory)."""
BASELINE_MAX = 30_000_000
"""Above this, read_table + sort_by is not run: its 10M or 30M figure is scaled linearly."""
TARGET_TWO_VS_ONE = 1.7
TARGET_ONE_VS_WHOLE = 1.10
TARGET_TREE_RSS = 1.5 * 1024**3


def scaling(sizes: list[int], rounds: int) -> None:
    """Validate + shard in parts on Ray with 1 and 2 workers, in process, and as today's
    whole-table run (one part), side by side per size with pyarrow's read + sort_by, and the
    peak RSS of every process (driver, Ray workers, Ray's own services)."""
    work = OUT_DIR / "scaling-work"
    summary_rows, targets = [], []
    measured_base: tuple[int, float] | None = None  # (events, seconds) of a real baseline
    for n in sizes:
        if n > WHOLE_MAX * 3:  # the generator cannot build it at once: chunks, into parts
            parts = _child("chunked", n=n, rows_per_part=SCALING_PART_ROWS).result
            ensure = {"nbytes": parts["nbytes"]}
        else:
            ensure = _child("generate", n=n).result
            parts = _child("repartition", n=n, rows_per_part=SCALING_PART_ROWS).result
        arms: dict[str, dict[str, Any]] = {
            "ray, 2 workers": {"engine": "ray", "workers": 2},
            "ray, 1 worker": {"engine": "ray", "workers": 1},
            "in process (parts)": {"engine": "local"},
        }
        if n > BASELINE_MAX:  # the memory figure is the point here: one arm, one round
            arms = {"ray, 2 workers": arms["ray, 2 workers"]}
        inputs = {name: parts["path"] for name in arms}
        if n <= WHOLE_MAX:
            whole = _child("repartition", n=n, rows_per_part=n).result
            arms["today: whole table"] = {"engine": "local"}
            inputs["today: whole table"] = whole["path"]
        runs: dict[str, dict[str, list[ChildRun]]] = {
            name: {"validate": [], "shard": []} for name in arms
        }
        baseline: list[ChildRun] = []
        names = list(arms)
        for r in range(rounds):
            if n <= BASELINE_MAX:
                baseline.append(_child("baseline", events_dir=parts["path"], work=work / "base"))
            for name in names if r % 2 == 0 else names[::-1]:
                where = work / name.replace(" ", "_").replace(",", "").replace(":", "")
                for step in ("validate", "shard"):
                    run = _child(step, events_dir=inputs[name], work=where, **arms[name])
                    runs[name][step].append(run)
                    print(
                        f"  [{n / 1e6:g}M] round {r + 1}/{rounds} {name:20s} {step:8s} "
                        f"{run.result['seconds']:7.2f} s  all processes peak PSS "
                        f"{fmt_bytes(run.result['tree']['sum_peak_pss'])}",
                        flush=True,
                    )
        table = f"{fmt_bytes(ensure['nbytes'])} in Arrow"
        if baseline:
            base = median(b.result["seconds"] for b in baseline)
            measured_base = measured_base or (n, base)
            peak = fmt_bytes(median(b.peak_rss for b in baseline))
            summary_rows.append(
                [f"{n / 1e6:g}M", f"baseline: read_table + sort_by ({table})", "", "",
                 f"{base:.2f}", fmt_rate(n, base), peak, "-", "-", peak]
            )  # fmt: skip
        else:  # it would need ~3x the table in memory: the measured figure, scaled linearly
            assert measured_base is not None, "run a size <= BASELINE_MAX first"
            base = measured_base[1] * n / measured_base[0]
            summary_rows.append(
                [f"{n / 1e6:g}M", f"baseline: {measured_base[0] / 1e6:g}M's scaled linearly "
                 f"({table})", "", "", f"{base:.2f}", fmt_rate(n, base), "-", "-", "-", "-"]
            )  # fmt: skip
        for name, steps in runs.items():
            both = _sum(steps["validate"], steps["shard"])
            group = steps["validate"] + steps["shard"]
            workers = [
                g.result["tree"]["roles"].get("ray worker", {}).get("max_peak_rss", 0)
                for g in group
            ]
            services = [
                g.result["tree"]["roles"].get("ray services", {}).get("max_peak_rss", 0)
                for g in group
            ]
            summary_rows.append(
                [
                    f"{n / 1e6:g}M", name, f"{_med(steps['validate']):.2f}",
                    f"{_med(steps['shard']):.2f}", f"{median(both):.2f}",
                    fmt_rate(n, median(both)), fmt_bytes(max(g.peak_rss for g in group)),
                    fmt_bytes(max(workers)) if max(workers) else "-",
                    fmt_bytes(max(services)) if max(services) else "-",
                    fmt_bytes(max(g.result["tree"]["sum_peak_pss"] for g in group)),
                ]
            )  # fmt: skip
        total = {name: median(_sum(st["validate"], st["shard"])) for name, st in runs.items()}
        two = total["ray, 2 workers"]
        one = total.get("ray, 1 worker", two)
        if "ray, 1 worker" in total:
            targets.append(
                [f"{n / 1e6:g}M: (validate + shard) 2 workers / 1 worker (throughput)",
                 f">= {TARGET_TWO_VS_ONE}x", f"{one / two:.2f}x",
                 verdict(one / two >= TARGET_TWO_VS_ONE)]
            )  # fmt: skip
        best = min(two, one)
        targets.append(
            [f"{n / 1e6:g}M: (validate + shard) on Ray / (read_table + sort_by)",
             f"<= {TARGET_OURS_VS_SORT:g}x", f"{best / base:.2f}x",
             verdict(best / base <= TARGET_OURS_VS_SORT)]
        )  # fmt: skip
        if "today: whole table" in total:
            whole_s = total["today: whole table"]
            targets.append(
                [f"{n / 1e6:g}M: 1 worker / today's whole-table run (time)",
                 f"<= {TARGET_ONE_VS_WHOLE}x", f"{one / whole_s:.2f}x",
                 verdict(one / whole_s <= TARGET_ONE_VS_WHOLE)]
            )  # fmt: skip
        tree = max(
            g.result["tree"]["sum_peak_pss"]
            for g in runs["ray, 2 workers"]["validate"] + runs["ray, 2 workers"]["shard"]
        )
        targets.append(
            [f"{n / 1e6:g}M: 2 workers, peak memory (PSS) of all processes together",
             f"<= {fmt_bytes(TARGET_TREE_RSS)}, flat in N", fmt_bytes(tree),
             verdict(tree <= TARGET_TREE_RSS)]
        )  # fmt: skip
    headers = ["events", "run", "validate s", "shard s", "validate + shard s", "events/s",
               "driver peak", "largest Ray worker", "largest Ray service",
               "all processes peak (PSS)"]  # fmt: skip
    print_table(headers, summary_rows, f"validate + shard in parts of {SCALING_PART_ROWS:,} rows "
                f"(medians of {rounds} rounds; peaks: the highest of the runs)")  # fmt: skip
    print_table(["check", "target", "measured", "result"], targets, "Targets")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="about 1M events instead")
    parser.add_argument(
        "--pandas-events",
        type=int,
        default=1_000_000,
        help="input size of the pandas comparison (its per-entity loop is slow)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds on the main input")
    parser.add_argument(
        "--pandas-rounds", type=int, default=3, help="rounds of the separate pandas comparison"
    )
    parser.add_argument("--check", action="store_true", help="run check_equivalence() only")
    # Internal: one measured step in this (child) process.
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--rows-per-part", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--scaling",
        help="comma-separated event counts: validate on Ray with 2 workers against 1, and "
        "against today's whole-table run, with the RSS of every process (see scaling())",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.step:
        write_result(args.result, STEPS[args.step](args))
        return 0
    if args.scaling:
        scaling([int(float(n)) for n in args.scaling.split(",")], args.rounds)
        return 0
    if args.check:
        summary = check_equivalence(n_entities=2000)
        print(f"check_equivalence: pandas windows == shard stage windows: {summary}")
        return 0
    n_events = 1_000_000 if args.quick else args.events
    measure(n_events, args.pandas_events, args.rounds, args.pandas_rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
