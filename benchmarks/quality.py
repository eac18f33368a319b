"""Quality: every encoder against the order-blind baseline on the default classify task.

Trains LSTM, GRU, Transformer and TCN with the real train stage (Ray Train, 2 CPU workers) on the
shards of `dvc repro` (data/shards), each into a throw-away MLflow store, loads each logged
model back from MLflow, scores the test split, and fits the order-blind logistic regression
(``pipelines.baselines.order_blind_baseline``) on the same train/test examples.

    python benchmarks/quality.py [--shards data/shards] [--epochs 8]

Prints a table (accuracy, ROC-AUC on the test split) and writes benchmarks/out/quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default=str(REPO / "data/shards"))
    parser.add_argument("--events", default=str(REPO / "data/validated"))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--architectures", default="lstm,gru,transformer,tcn")
    args = parser.parse_args()

    import mlflow
    from sklearn.metrics import accuracy_score, roc_auc_score

    from pipelines import train
    from pipelines.baselines import order_blind_baseline
    from pipelines.config import load_params
    from pipelines.predict import predict_split
    from seqcore.loading import load_scorer
    from seqcore.manifest import load_manifest

    params = load_params(REPO / "params.yaml")
    shards = Path(args.shards)
    manifest = load_manifest(shards)
    rows = []
    for arch in args.architectures.split(","):
        changes = {"task": "classify"}
        if args.epochs:
            changes["epochs"] = args.epochs
        train_config = dataclasses.replace(params.train.with_model(architecture=arch), **changes)
        p = dataclasses.replace(params, train=train_config)
        with tempfile.TemporaryDirectory(prefix=f"seqops-quality-{arch}-") as tmp:
            # A throw-away store per model (set_tracking_uri also exports the env variable).
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
            mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
            summary = train.run(p, shards, Path(args.events), None, root=Path(tmp))
            scorer = load_scorer(summary["model_uri"], os.environ["MLFLOW_TRACKING_URI"])
            preds = predict_split(scorer.model, shards, "test")
        probs = preds.probabilities
        rows.append(
            {
                "model": arch,
                "accuracy": float(accuracy_score(preds.label, probs.argmax(1))),
                "roc_auc": float(roc_auc_score(preds.label, probs[:, 1])),
                "epochs_run": summary["epochs_run"],
                "fit_seconds": summary["fit_seconds"],
            }
        )
        print(rows[-1], flush=True)
    base = order_blind_baseline(shards, seed=params.seed)
    rows.append({"model": "order-blind logistic regression", **base})
    n_test = manifest.splits["test"].examples
    print(f"\nTest split: {n_test} entities (classify; label needs event order)\n")
    print("| model | accuracy | ROC-AUC |\n|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['accuracy']:.3f} | {row['roc_auc']:.3f} |")
    margin = min(r["accuracy"] for r in rows[:-1]) - base["accuracy"]
    print(f"\nsmallest encoder margin over the baseline: {margin:+.3f} accuracy")
    out = REPO / "benchmarks/out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"rows": rows, "test_examples": n_test}, indent=2))
    return 0 if np.isfinite(margin) else 1


if __name__ == "__main__":
    sys.exit(main())
