"""This checkout against another revision of the code, side by side on the same machine.

A refactor must not make the pipeline slower, and two separate benchmark runs on a shared,
noisy machine cannot show that: their baselines move between runs. This script checks the
other revision out into a git worktree under ``benchmarks/out/`` and alternates the two
codes round by round (base, ours, ours, base, ...), each step in a fresh child process.

``data`` (default): ``data_throughput.py``'s ``validate`` and ``shard`` steps on the same
cached events, each revision writing into its own work folder; prints the median wall and CPU
seconds and peak RSS of each, and ours / base.

``serving``: ``serving.py --quick --json`` in each checkout, alternately; prints the figures
the serving targets read (light-load p50 overhead per ingress mode, batching on/off, streaming
ratios) side by side.

    .venv/bin/python benchmarks/revisions.py --base main~3 [--events 1000000] [--rounds 5]
    .venv/bin/python benchmarks/revisions.py --base main~3 --bench serving [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    OUT_DIR,
    REPO,
    ensure_events,
    fmt_bytes,
    median,
    print_table,
    run_child,
)


def checkout(rev: str) -> Path:
    """A detached worktree of ``rev`` (reused while it exists)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    tree = OUT_DIR / f"rev-{sha[:12]}"
    if not (tree / ".git").exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=REPO, check=True)
    return tree


def _env(tree: Path) -> dict[str, str]:
    # The project is installed in editable mode from this checkout: PYTHONPATH puts the other
    # tree's packages first, so its children import its code.
    return {**os.environ, "PYTHONPATH": str(tree)}


def compare_data(trees: dict[str, Path], n_events: int, rounds: int) -> None:
    events = ensure_events(n_events)
    runs: dict[tuple[str, str], list[Any]] = {}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]
        for name in order:
            tree = trees[name]
            work = OUT_DIR / f"revisions-work-{name}"
            for step in ("validate", "shard"):  # shard reads validate's output
                args = [str(tree / "benchmarks" / "data_throughput.py"), "--step", step,
                        "--events-dir", str(events), "--work", str(work)]  # fmt: skip
                run = run_child(args, cwd=tree, env=_env(tree))
                runs.setdefault((name, step), []).append(run)
                print(
                    f"  round {r + 1}/{rounds} {name:4s} {step:8s} {run.result['seconds']:6.2f} s "
                    f"wall {run.result['cpu_seconds']:6.2f} s CPU {fmt_bytes(run.peak_rss)}",
                    flush=True,
                )
    rows = []
    for step in ("validate", "shard"):
        base, ours = runs[("base", step)], runs[("ours", step)]
        wall = [median(r.result["seconds"] for r in x) for x in (base, ours)]
        cpu = [median(r.result["cpu_seconds"] for r in x) for x in (base, ours)]
        rss = [max(r.peak_rss for r in x) for x in (base, ours)]
        rows.append([step, f"{wall[0]:.2f}", f"{wall[1]:.2f}", f"{wall[1] / wall[0]:.2f}x",
                     f"{cpu[1] / cpu[0]:.2f}x", fmt_bytes(rss[0]), fmt_bytes(rss[1])])  # fmt: skip
    print(f"\n{n_events} events, {rounds} rounds, medians (ours / base below 1 is faster)")
    print_table(["step", "base wall s", "ours wall s", "wall ours/base", "CPU ours/base",
                 "base peak RSS", "ours peak RSS"], rows)  # fmt: skip


def serving_figures(result: dict[str, Any]) -> dict[str, float]:
    """The figures the serving targets read, from one ``serving.py --json`` result."""
    out: dict[str, float] = {}
    for phase, data in result["phases"].items():
        summary = result["summary"][phase]
        out[f"{phase}: /v1/score p50 ms"] = median(x["p50_ms"] for x in data["light"])
        out[f"{phase}: in-process p50 ms"] = median(x["p50_ms"] for x in data["inprocess"])
        out[f"{phase}: p50 overhead ms"] = summary["overhead_ms"]
        out[f"{phase}: batched req/s"] = median(x["rps"] for x in data["sat"]["on"])
        out[f"{phase}: batching on/off"] = summary["batching_ratio"]
        if "streaming_http" in summary:
            out[f"{phase}: streaming over HTTP"] = summary["streaming_http"]
    out["in-process: stream 1 event ms"] = result["local"]["stream_ms"]
    out["in-process: streaming speed-up"] = result["streaming_inprocess"]
    return out


def compare_serving(trees: dict[str, Path], rounds: int) -> None:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for r in range(rounds):
        for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            tree = trees[name]
            with tempfile.TemporaryDirectory(prefix="bench-rev-") as tmp:
                out = Path(tmp) / "serving.json"
                cmd = [sys.executable, str(tree / "benchmarks" / "serving.py"), "--quick",
                       "--json", str(out)]  # fmt: skip
                subprocess.run(cmd, cwd=tree, env=_env(tree), check=True)
                results[name].append(json.loads(out.read_text()))
            print(f"  round {r + 1}/{rounds} {name} done", flush=True)
    figures = {n: [serving_figures(x) for x in results[n]] for n in trees}
    rows = []
    for label in figures["ours"][0]:
        base = median(f[label] for f in figures["base"] if label in f)
        ours = median(f[label] for f in figures["ours"])
        rows.append([label, f"{base:.2f}", f"{ours:.2f}"])
    print(f"\nserving.py --quick, {rounds} runs each, medians")
    print_table(["figure", "base", "ours"], rows)
    (OUT_DIR / "revisions-serving.json").write_text(json.dumps(results, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--bench", choices=("data", "serving"), default="data")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    trees = {"base": checkout(args.base), "ours": REPO}
    if args.bench == "data":
        compare_data(trees, args.events, args.rounds or 5)
    else:
        compare_serving(trees, args.rounds or 2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
