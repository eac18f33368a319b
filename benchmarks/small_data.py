"""Small and long data: the whole pipeline on a few hundred entities, fixed against auto budget.

Runs the stage modules as dvc.yaml does (``python -m pipelines.<stage> --params ...``), each
in its own process, on two generated data sets of 300 entities (``data.generate.n_entities``):

* ``small``: params.yaml's generator otherwise (median 30 events, heavy tail), ``last``
  windows of 256;
* ``long``: 2,000-5,000 events per entity (``median_length`` 3000, ``length_sigma`` 0.25,
  ``max_length`` 5000), ``shard.window.policy: full`` with ``max_len`` 5000.

ingest -> validate -> shard run once per case and seed (``--seeds``: params.yaml's ``seed``,
so each seed is another data set, split and training; cached under
``benchmarks/out/small_data/<case>-seed<seed>/``); then the train stage runs once per
``train.max_tokens`` value (``--budgets``, default ``8192,auto``), each into its own MLflow
SQLite store in that folder; ``--train KEY=VALUE`` sets another train key for every run.
Reported per run: the train stage's wall time (process start to exit: imports, Ray start-up,
fit, model logging), ``fit_seconds``, epochs, the resolved budget, passes per epoch,
optimizer steps per worker per pass, the best validation loss and the last epoch's
validation accuracy, and the logged model's test accuracy and ROC-AUC (loaded back from
MLflow, scored on the test split's labelled examples). Timings are single runs on a shared
machine: read them as orders of magnitude. A run of another checkout (the code before a
change) is this script copied into it, run with ``PYTHONPATH`` at its root and ``--out``
at the same folder, so both train on the same cached shards.

    .venv/bin/python benchmarks/small_data.py [--cases small,long] [--budgets 8192,auto]
        [--seeds 7,8,9] [--epochs 8] [--train min_epoch_tokens=1] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from benchmarks._common import OUT_DIR, PARAMS, REPO, print_table

CASES: dict[str, dict[str, Any]] = {
    "small": {"data": {"generate": {"n_entities": 300}}},
    "long": {
        "data": {
            "generate": {
                "n_entities": 300,
                "median_length": 3000,
                "length_sigma": 0.25,
                "max_length": 5000,
            }
        },
        "shard": {"window": {"policy": "full", "max_len": 5000}},
    },
}


def _merge(base: dict, changes: dict) -> dict:
    """``pipelines.config.merge_params``, kept here: the script also runs copied into
    older checkouts (the before arm), which lack it."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def write_params(path: Path, *changes: dict) -> Path:
    raw = yaml.safe_load(PARAMS.read_text())
    for change in changes:
        _merge(raw, change)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage(name: str, params: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """Run one stage module as dvc.yaml does; its wall seconds (the whole process)."""
    cmd = [sys.executable, "-m", f"pipelines.{name}", "--params", str(params), *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return seconds


def data_stages(params: Path, folder: Path) -> dict[str, float]:
    """ingest -> validate -> shard with ``params``, their outputs under ``folder`` as dvc.yaml
    names them; each stage's wall seconds."""
    return {
        "ingest": stage("ingest", params, "--out", str(folder / "events"),
                        "--metrics", str(folder / "ingest.json")),
        "validate": stage("validate", params, "--events", str(folder / "events"),
                          "--out", str(folder / "validated"),
                          "--quarantine", str(folder / "quarantine" / "quarantine.parquet"),
                          "--report", str(folder / "validation.json"),
                          "--docs", str(folder / "data_docs")),
        "shard": stage("shard", params, "--events", str(folder / "validated"),
                       "--out", str(folder / "shards"), "--metrics", str(folder / "shard.json")),
    }  # fmt: skip


def prepare(case: str, seed: int, folder: Path, fresh: bool) -> dict[str, Any]:
    """ingest -> validate -> shard for one case, once; their wall seconds and the shard sizes."""
    done = folder / "data.json"
    if done.exists() and not fresh:
        return json.loads(done.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    params = write_params(folder / "params.yaml", CASES[case], {"seed": seed})
    seconds = data_stages(params, folder)
    manifest = json.loads((folder / "shards" / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    info = {
        "seconds": seconds,
        "events": manifest["input"]["events_count"],
        "entities": manifest["input"]["entities"],
        "train_examples": train["examples"],
        "train_real_tokens": train["real_tokens"],
        "train_padded_tokens": train["padded_tokens"],
        "buckets": [int(b) for b in train["buckets"]],
        "window_len": manifest["window"]["window_len"],
    }
    done.write_text(json.dumps(info, indent=2))
    return info


def test_quality(model_uri: str, tracking_uri: str, shards: Path) -> dict[str, float]:
    """The logged model, loaded back from MLflow, on the test split's labelled examples."""
    import numpy as np
    from sklearn.metrics import accuracy_score, roc_auc_score

    from pipelines.predict import predict_split
    from seqcore.loading import load_scorer

    scorer = load_scorer(model_uri, tracking_uri)
    preds = predict_split(scorer.model, shards, "test")
    keep = preds.label >= 0
    probs, labels = preds.probabilities[keep], preds.label[keep]
    auc = roc_auc_score(labels, probs[:, 1]) if len(np.unique(labels)) == 2 else float("nan")
    return {
        "test_examples": int(keep.sum()),
        "test_accuracy": float(accuracy_score(labels, probs.argmax(1))),
        "test_roc_auc": float(auc),
    }


def fresh_dir(path: Path) -> Path:
    """``path`` emptied (a run's folder: its params, MLflow store and Ray results)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def train_stage(params: Path, folder: Path, run_dir: Path) -> tuple[float, dict[str, Any], str]:
    """The train stage on ``folder``'s shards into an MLflow store of its own in ``run_dir``:
    the stage's wall seconds, its report and the store's tracking URI."""
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    report = run_dir / "train.json"
    seconds = stage("train", params, "--shards", str(folder / "shards"),
                    "--events", str(folder / "validated"),
                    "--report", str(report), "--model-dir", str(run_dir / "model"), env=env)  # fmt: skip
    return seconds, json.loads(report.read_text()), uri


def train_once(
    case: str, seed: int, folder: Path, budget: str, epochs: int, extra: dict[str, Any]
) -> dict[str, Any]:
    max_tokens: int | str = budget if budget == "auto" else int(budget)
    run_dir = fresh_dir(folder / f"train-{budget}")
    train = {"max_tokens": max_tokens, "epochs": epochs, "storage_path": str(run_dir / "ray")}
    params = write_params(
        run_dir / "params.yaml", CASES[case], {"seed": seed, "train": {**train, **extra}}
    )
    seconds, summary, uri = train_stage(params, folder, run_dir)
    last = summary.get("last_epoch_metrics", {})
    passes = summary.get("passes_per_epoch", 1)  # absent before passes existed: one
    steps = last.get("steps_per_s", 0.0) * last.get("epoch_seconds", 0.0) / passes
    return {
        "case": case,
        "seed": seed,
        "budget": budget,
        "resolved": summary.get("max_tokens_resolved", max_tokens),
        "passes_per_epoch": passes,
        "stage_seconds": round(seconds, 1),
        "fit_seconds": summary["fit_seconds"],
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "steps_per_pass": summary.get("steps_per_pass", round(steps)),
        "best_val_loss": summary["best_val_loss"],
        "val_accuracy": last.get("val_accuracy", float("nan")),
        **test_quality(summary["model_uri"], uri, folder / "shards"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="small,long")
    parser.add_argument("--budgets", default="8192,auto")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="7", help="params seed: data, split and training")
    parser.add_argument(
        "--train", action="append", default=[], metavar="KEY=VALUE",
        help="another train.KEY for every run (a YAML value), e.g. min_epoch_tokens=1",
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached data")
    parser.add_argument("--out", default=str(OUT_DIR / "small_data"))
    args = parser.parse_args()

    out = Path(args.out)
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.train)}
    rows, data = [], {}
    for case in args.cases.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            folder = out / f"{case}-seed{seed}"
            data[folder.name] = prepare(case, seed, folder, args.fresh)
            print(f"{folder.name}: {json.dumps(data[folder.name])}", flush=True)
            for budget in args.budgets.split(","):
                row = train_once(case, seed, folder, budget, args.epochs, extra)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print_table(
        ["case", "seed", "max_tokens", "resolved", "passes", "train stage s", "fit s",
         "epochs (best)", "steps/pass/worker", "best val loss", "val acc", "test acc",
         "test ROC-AUC"],
        [[r["case"], r["seed"], r["budget"], r["resolved"], r["passes_per_epoch"],
          r["stage_seconds"], r["fit_seconds"], f"{r['epochs_run']} ({r['best_epoch']})",
          r["steps_per_pass"],
          f"{r['best_val_loss']:.4f}", f"{r['val_accuracy']:.3f}", f"{r['test_accuracy']:.3f}",
          f"{r['test_roc_auc']:.3f}"] for r in rows],
    )  # fmt: skip
    (out / "result.json").write_text(json.dumps({"data": data, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
