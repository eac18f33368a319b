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
BASELINE_PLOT_FILES = ("baseline", "baseline_roc")
"""The model against its baseline (``pipelines.baselines``), written for every task too:
``baseline`` one bar per metric and scorer, ``baseline_roc`` the baseline's ROC (classify)."""
BASELINE_PLOT_METRICS = {
    "classify": ("accuracy", "macro_f1", "roc_auc", "pr_auc"),
    "next_event": ("top1_accuracy", "top5_accuracy"),
    "forecast": ("mae", "rmse"),
}
"""Metrics drawn against the baseline: one scale per task (probabilities, or the column's units)."""
LENGTH_PLOT_FILES = ("by_length",)
"""The primary metric by range of true length, with its bootstrap interval, for every task."""


def plot_data(
    preds: SplitPredictions,
    result: dict[str, Any],
    config: EvaluateConfig,
    baseline_probabilities: np.ndarray | None = None,
) -> dict[str, list[dict]]:
    """Plot-ready records (``PLOT_FILES``, ``BASELINE_PLOT_FILES``) from predictions and their
    metrics; ``result``'s ``class_names`` (index order) name the classes, its ``baseline`` and
    ``baselines`` sections give the baseline's metrics, and ``baseline_probabilities`` (N, K)
    its ROC curve."""
    task, primary = result["task"], result["primary_metric"]
    buckets = sorted(result["by_bucket"].items(), key=lambda kv: int(kv[0]))
    data: dict[str, list[dict]] = {name: [] for name in (*PLOT_FILES, *BASELINE_PLOT_FILES)}
    names = result.get("class_names")
    data["by_bucket"] = [
        {"bucket": int(b), "examples": m["examples"], primary: m.get(primary)} for b, m in buckets
    ]
    if task == "classify":
        keep = preds.label >= 0
        labels, probs = preds.label[keep], preds.probabilities[keep]
        data["roc"] = _named(M.roc_points(labels, probs), names)
        data["pr"] = _named(M.pr_points(labels, probs), names)
        data["reliability"] = M.reliability_bins(labels, probs, config.ece_bins)
        data["confusion"] = [  # one row per example: the shape of DVC's confusion template
            {"actual": _class_name(a, names), "predicted": _class_name(p, names)}
            for a, p in zip(labels.tolist(), probs.argmax(axis=1).tolist(), strict=True)
        ]
        if baseline_probabilities is not None:
            data["baseline_roc"] = _named(
                M.roc_points(labels, np.asarray(baseline_probabilities)[keep]), names
            )
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
            for name, section in (result.get("baselines") or {}).items():
                data["horizon"][-1][f"{name}_mae"] = section["overall"].get(f"mae_h{h}")
            h += 1
    data["baseline"] = _against_baseline(result)
    data["by_length"] = by_length_records(result)
    return jsonable(data)


def _class_name(index: int, names: list[str] | None) -> str | int:
    """A class index's name (the label value), or the index where no names are given."""
    return names[index] if names is not None and 0 <= index < len(names) else int(index)


def _named(points: list[dict[str, Any]], names: list[str] | None) -> list[dict[str, Any]]:
    """Curve points with their ``class`` index (more than two classes) replaced by its name."""
    return [{**p, "class": _class_name(p["class"], names)} if "class" in p else p for p in points]


def _against_baseline(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per metric and scorer (the model, then each baseline): ``bar`` labels it."""
    if "baseline" not in result:
        return []
    baselines = result.get("baselines") or {result["baseline"]["name"]: result["baseline"]}
    scorers = {"model": result["overall"], **{k: b["overall"] for k, b in baselines.items()}}
    return [
        {"metric": m, "scorer": s, "bar": f"{m}: {s}", "value": overall.get(m)}
        for m in BASELINE_PLOT_METRICS.get(result["task"], ())
        for s, overall in scorers.items()
    ]


def by_length_records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per length range (``result["by_length"]``, in order): the primary metric's
    value and interval; ``x: value, y: range`` draws it with DVC's bar_horizontal template."""
    primary = result["primary_metric"]
    rows = []
    for r in result.get("by_length") or []:
        lo, hi = (r.get("ci") or {}).get(primary) or (None, None)
        rows.append({"range": r["range"], "lo": r["lo"], "hi": r["hi"], "examples": r["examples"],
                     "metric": primary, "value": r["metrics"].get(primary), "ci_lo": lo,
                     "ci_hi": hi})  # fmt: skip
    return rows


def _by_length(ax: Any, rows: list[dict[str, Any]], overall: Any) -> None:
    """Points with interval bars per range, on a categorical axis labelled with the counts."""
    x = np.arange(len(rows))
    value = np.array([_value(r["value"]) for r in rows])
    lo = np.array([_value(r["ci_lo"]) for r in rows])
    hi = np.array([_value(r["ci_hi"]) for r in rows])
    errors = np.nan_to_num(np.vstack([value - lo, hi - value]), nan=0.0).clip(min=0.0)
    ax.errorbar(x, value, yerr=errors, fmt="o", capsize=4, c="C0")
    for j in np.flatnonzero(np.isnan(value)):  # undefined, e.g. one class in the range
        ax.text(x[j], np.nanmean(value) if np.isfinite(value).any() else 0.5, "n/a",
                ha="center", fontsize=8)  # fmt: skip
    if overall is not None:
        ax.axhline(float(overall), ls=":", c="grey", label="overall")
        ax.legend(fontsize=8)
    ax.set_xticks(x, [f"{r['range']}\nn={r['examples']}" for r in rows], fontsize=8)
    ax.set_xlim(-0.5, len(rows) - 0.5)


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


def _curves(
    ax: Any, rows: list[dict], x: str, y: str, positive: Any = 1, who: str = "", ls: str = "-"
) -> None:
    """One line per class (binary curves have no ``class`` key: the ``positive`` class, index
    1), labelled ``who`` (the model or the baseline) and the class."""
    classes = list(dict.fromkeys(r.get("class", positive) for r in rows))
    for i, c in enumerate(classes):
        pts = [r for r in rows if r.get("class", positive) == c]
        ax.plot([p[x] for p in pts], [p[y] for p in pts], ls=ls, c=f"C{i % 10}",
                label=f"{who}class {c}".strip())  # fmt: skip
    ax.legend(fontsize=8)


def _confusion(ax: Any, rows: list[dict], names: list[Any] | None = None) -> None:
    """Counts of (actual, predicted) rows, classes in ``names`` order (sorted when absent)."""
    seen = {r[k] for r in rows for k in ("actual", "predicted")}
    order = list(names or []) + sorted((v for v in seen if v not in set(names or [])), key=str)
    if len(order) < 2:
        order.append("")
    at = {name: i for i, name in enumerate(order)}
    k = len(order)
    matrix = np.zeros((k, k), dtype=np.int64)
    for r in rows:
        matrix[at[r["actual"]], at[r["predicted"]]] += 1
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")  # fmt: skip
    labels = [str(name) for name in order]
    ax.set_xticks(range(k), labels, rotation=0 if k <= 6 else 90, fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)


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
    if data.get("by_length"):
        level = (result.get("length_ranges") or {}).get("confidence")
        band = f" ({level:.0%} bootstrap interval)" if level else ""
        fig, ax = _figure(f"{primary} by length{band}", "true length (events)", primary)
        _by_length(ax, data["by_length"], overall.get(primary))
        save(fig, "by_length.png")
    names = result.get("class_names")
    positive = names[1] if names and len(names) == 2 else 1
    if data["roc"]:
        title = f"ROC (AUC {_value(overall['roc_auc']):.3f}"
        baseline = data.get("baseline_roc") or []
        if baseline:
            title += f"; baseline {_value(result['baseline']['overall'].get('roc_auc')):.3f}"
        fig, ax = _figure(title + ")", "FPR", "TPR")
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        _curves(ax, data["roc"], "fpr", "tpr", positive, "model " if baseline else "")
        if baseline:
            _curves(ax, baseline, "fpr", "tpr", positive, "baseline ", "--")
        save(fig, "roc.png")
    if data["pr"]:
        fig, ax = _figure(f"PR (AUC {_value(overall['pr_auc']):.3f})", "recall", "precision")
        _curves(ax, data["pr"], "recall", "precision", positive)
        save(fig, "pr.png")
    if data["confusion"]:
        fig, ax = _figure("confusion matrix", "predicted", "actual")
        _confusion(ax, data["confusion"], names)
        save(fig, "confusion_matrix.png")
    if data.get("baseline"):
        rows = data["baseline"]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        series: dict[str, list[Any]] = {}
        for r in rows:
            series.setdefault(r["scorer"], []).append(r["value"])
        skill = result.get("skill") or {}
        verdict = {True: "beats", False: "does not beat"}[bool(skill.get("beats_baseline"))]
        fig, ax = _figure(f"model {verdict} the baseline on {skill.get('metric')}", "", "value")
        _bars(ax, metrics, series)
        save(fig, "baseline.png")
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
        for k in [k for k in rows[0] if k.endswith("_mae") and k != "mae"]:  # the baselines'
            ax.plot([r["step"] for r in rows], [_value(r[k]) for r in rows], "x--", label=k)
        ax.set_xticks([r["step"] for r in rows])
        ax.legend(fontsize=8)
        save(fig, "horizon.png")
    return written
