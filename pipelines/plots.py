"""The evaluate stage's plots: records for ``dvc plots`` and the PNGs drawn from them.

``plot_data`` turns predictions and their metrics into the JSON records that the ``plots:``
definitions of dvc.yaml draw (one file per name in ``PLOT_FILES``, written for every task);
``render_plots`` draws the same records as PNGs with matplotlib, for MLflow and for readers
without DVC. Curves and calibration bins come from ``pipelines.metrics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines import metrics as M
from pipelines.params.gate import EvaluateConfig
from pipelines.predict import SplitPredictions
from seqcore.io import jsonable

PLOT_FILES = ("by_bucket", "roc", "pr", "reliability", "confusion", "topk_by_bucket", "horizon")
"""Plot data files, each written for every task (empty where it does not apply) so that the
``dvc plots`` definitions in dvc.yaml always find their files."""


def plot_data(
    preds: SplitPredictions, result: dict[str, Any], config: EvaluateConfig
) -> dict[str, list[dict]]:
    """Plot-ready records (``PLOT_FILES``) from predictions and their metrics."""
    task, primary = result["task"], result["primary_metric"]
    buckets = sorted(result["by_bucket"].items(), key=lambda kv: int(kv[0]))
    data: dict[str, list[dict]] = {name: [] for name in PLOT_FILES}
    data["by_bucket"] = [
        {"bucket": int(b), "examples": m["examples"], primary: m.get(primary)} for b, m in buckets
    ]
    if task == "classify":
        keep = preds.label >= 0
        labels, probs = preds.label[keep], preds.probabilities[keep]
        data["roc"] = M.roc_points(labels, probs)
        data["pr"] = M.pr_points(labels, probs)
        data["reliability"] = M.reliability_bins(labels, probs, config.ece_bins)
        data["confusion"] = [  # one row per example: the shape of DVC's confusion template
            {"actual": int(a), "predicted": int(p)}
            for a, p in zip(labels, probs.argmax(axis=1), strict=True)
        ]
    elif task == "next_event":
        data["topk_by_bucket"] = [
            {"bucket": int(b), "top1_accuracy": m.get("top1_accuracy"),
             "top5_accuracy": m.get("top5_accuracy"), "examples": m["examples"]}
            for b, m in buckets
        ]  # fmt: skip
    else:
        overall, h = result["overall"], 1
        while f"mae_h{h}" in overall:
            data["horizon"].append(
                {"step": h, **{k: overall[f"{k}_h{h}"] for k in ("mae", "rmse", "smape")}}
            )
            h += 1
    return jsonable(data)


# --------------------------------------------------------------------------- drawing


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    """A figure on the Agg canvas (no pyplot: no global backend state, safe off the main thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig, ax


def _value(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _bars(ax: Any, labels: list[str], series: dict[str, list[Any]]) -> None:
    x, width = np.arange(len(labels)), 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width, [_value(v) for v in values], width, label=name)
        for j in [j for j, v in enumerate(values) if v is None]:  # undefined, e.g. one class
            ax.text(x[j] + i * width, 0, "n/a", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(
        x + width * (len(series) - 1) / 2,
        labels,
        rotation=0 if len(labels) <= 10 else 90,
        fontsize=7,
    )
    if len(series) > 1:
        ax.legend(fontsize=8)


def _curves(ax: Any, rows: list[dict], x: str, y: str) -> None:
    """One line per class (binary curves have no ``class`` key: the positive class, 1)."""
    for c in sorted({r.get("class", 1) for r in rows}):
        pts = [r for r in rows if r.get("class", 1) == c]
        ax.plot([p[x] for p in pts], [p[y] for p in pts], label=f"class {c}")
    ax.legend(fontsize=8)


def _confusion(ax: Any, rows: list[dict]) -> None:
    k = max(2, 1 + max(max(r["actual"], r["predicted"]) for r in rows))
    matrix = np.zeros((k, k), dtype=np.int64)
    for r in rows:
        matrix[r["actual"], r["predicted"]] += 1
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")  # fmt: skip
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))


def _reliability(ax: Any, rows: list[dict]) -> None:
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.bar([r["lower"] for r in rows], [r["accuracy"] for r in rows], align="edge",
           width=[r["upper"] - r["lower"] for r in rows], edgecolor="black", alpha=0.7)  # fmt: skip
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o-", c="C1")
    ax.set(xlim=(0, 1), ylim=(0, 1))


def render_plots(data: dict[str, list[dict]], result: dict[str, Any], folder: Path) -> list[str]:
    """PNG files for the task into ``folder``; returns their names."""
    primary, overall, written = result["primary_metric"], result["overall"], []

    def save(fig: Any, name: str) -> None:
        fig.savefig(folder / name, metadata={"Software": None})
        written.append(name)

    buckets = [f"{r['bucket']}\nn={r['examples']}" for r in data["by_bucket"]]
    fig, ax = _figure(f"{primary} by length bucket", "bucket (padded length)", primary)
    _bars(ax, buckets, {primary: [r[primary] for r in data["by_bucket"]]})
    save(fig, "by_bucket.png")
    if data["roc"]:
        fig, ax = _figure(f"ROC (AUC {_value(overall['roc_auc']):.3f})", "FPR", "TPR")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        _curves(ax, data["roc"], "fpr", "tpr")
        save(fig, "roc.png")
    if data["pr"]:
        fig, ax = _figure(f"PR (AUC {_value(overall['pr_auc']):.3f})", "recall", "precision")
        _curves(ax, data["pr"], "recall", "precision")
        save(fig, "pr.png")
    if data["confusion"]:
        fig, ax = _figure("confusion matrix", "predicted", "actual")
        _confusion(ax, data["confusion"])
        save(fig, "confusion_matrix.png")
    if data["reliability"]:
        ece = _value(overall.get("ece"))
        fig, ax = _figure(
            f"reliability (ECE {ece:.3f})", "confidence (max probability)", "accuracy"
        )
        _reliability(ax, data["reliability"])
        save(fig, "reliability.png")
    if data["topk_by_bucket"]:
        rows = data["topk_by_bucket"]
        fig, ax = _figure("top-k accuracy by length bucket", "bucket (padded length)", "accuracy")
        _bars(ax, [str(r["bucket"]) for r in rows],
              {k: [r[k] for r in rows] for k in ("top1_accuracy", "top5_accuracy")})  # fmt: skip
        save(fig, "topk_by_bucket.png")
    if data["horizon"]:
        rows = data["horizon"]
        fig, ax = _figure("forecast error by horizon step", "steps ahead", "error (original units)")
        for k in ("mae", "rmse"):
            ax.plot([r["step"] for r in rows], [_value(r[k]) for r in rows], "o-", label=k)
        ax.set_xticks([r["step"] for r in rows])
        ax.legend(fontsize=8)
        save(fig, "horizon.png")
    return written
