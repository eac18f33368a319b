"""The order-blind baselines on small synthetic shards, and the metrics they share with models."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import baselines as B
from pipelines import metrics as M
from pipelines.params.gate import EvaluateConfig
from pipelines.plots import BASELINE_PLOT_FILES, PLOT_FILES, plot_data, render_plots
from pipelines.predict import SplitPredictions
from pipelines.split_metrics import evaluate_predictions
from seqcore.io import jsonable
from seqcore.manifest import LabelTarget, part_path

# --------------------------------------------------------------------------- synthetic shards


def _fsl(values: np.ndarray, size: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).ravel()), size)


def write_shards(root: Path, splits: dict[str, list[dict]], vocab: dict[str, int], numeric=()):
    """Write shards in the contract's row layout and return a manifest-like object.

    ``splits[split]`` is one dict per bucket: ``length`` (n,), ``cat`` {column: (n, L)},
    ``num`` (n, L, F) or None (no column), ``label`` (n,), ``next_event`` (n, L), ``forecast``
    (n, L, H); a bucket's L is the width of its arrays. Standardisation is the identity.
    """
    entries = {}
    for split, blocks in splits.items():
        buckets = {}
        for block in blocks:
            length = np.asarray(block["length"])
            n, width = len(length), block["next_event"].shape[1]
            cols = {"length": pa.array(length, pa.int32())}
            for c, ids in block.get("cat", {}).items():
                cols[f"cat__{c}"] = _fsl(np.asarray(ids, np.int32), width)
            if block.get("num") is not None:
                num = np.asarray(block["num"], np.float32)
                cols["num"] = _fsl(num, width * num.shape[2])
            cols["label"] = pa.array(np.asarray(block.get("label", np.full(n, -1))), pa.int64())
            cols["next_event"] = _fsl(np.asarray(block["next_event"], np.int32), width)
            forecast = np.asarray(block["forecast"], np.float32)
            cols["forecast"] = _fsl(forecast, width * forecast.shape[2])
            path = root / part_path(split, width, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(cols), path)
            buckets[width] = SimpleNamespace(examples=n, parts=(str(path),))
        buckets = dict(sorted(buckets.items()))
        entries[split] = SimpleNamespace(
            examples=sum(b.examples for b in buckets.values()), buckets=buckets
        )
    features = SimpleNamespace(
        categorical=tuple(vocab),
        vocab_size=lambda c: vocab[c],
        numeric=tuple(numeric),
        numeric_order=tuple(numeric),
        inverse_standardise=lambda column, z: np.asarray(z, np.float64),
    )
    return SimpleNamespace(splits=entries, features=features, targets=SimpleNamespace(
        label=None, next_event=None, forecast=None))  # fmt: skip


def _block(n, width, rng, length=None, **extra):
    length = np.full(n, width) if length is None else np.asarray(length)
    return {
        "length": length,
        "next_event": np.zeros((n, width), np.int64),
        "forecast": np.full((n, width, 1), np.nan),
        **extra,
    }


def _preds(blocks: list[dict], outputs=None) -> SplitPredictions:
    """Predictions aligned with a split's rows (buckets ascending)."""
    blocks = sorted(blocks, key=lambda b: b["next_event"].shape[1])
    length = np.concatenate([b["length"] for b in blocks]).astype(np.int64)
    bucket = np.concatenate([np.full(len(b["length"]), b["next_event"].shape[1]) for b in blocks])
    label = np.concatenate(
        [np.asarray(b.get("label", np.full(len(b["length"]), -1))) for b in blocks]
    )
    next_event = [
        row[:n] for b in blocks for row, n in zip(b["next_event"], b["length"], strict=True)
    ]
    forecast = [row[:n] for b in blocks for row, n in zip(b["forecast"], b["length"], strict=True)]
    return SplitPredictions(
        entity=np.array([f"e{i}" for i in range(len(length))], dtype=object),
        length=length, bucket=bucket.astype(np.int64), label=label.astype(np.int64),
        outputs=list(outputs) if outputs is not None else [np.empty(0)] * len(length),
        next_event=next_event, forecast=forecast,
    )  # fmt: skip


def _classify_split(rng, n, width, classes=3):
    """Labels that the count of one category decides: class c has category id 2 + c often."""
    label = rng.integers(0, classes, n)
    ids = rng.integers(2, 2 + classes, (n, width))
    ids[:, : width // 2] = (2 + label)[:, None]
    amount = rng.normal(size=(n, width, 1)) + label[:, None, None]
    return _block(n, width, rng, label=label, cat={"mcc": ids}, num=amount)


# --------------------------------------------------------------------------- classify


def test_classify_baseline_handles_more_than_two_classes_and_several_buckets(tmp_path):
    rng = np.random.default_rng(0)
    train = [_classify_split(rng, 300, 8), _classify_split(rng, 200, 4)]
    test = [_classify_split(rng, 60, 8), _classify_split(rng, 40, 4)]
    manifest = write_shards(tmp_path, {"train": train, "test": test}, {"mcc": 5}, ["amount"])
    scored = B.classify_baseline(tmp_path, manifest, "test", 3, seed=1)
    assert scored.name == "order_blind_logistic_regression"
    assert scored.probabilities.shape == (100, 3)
    np.testing.assert_allclose(scored.probabilities.sum(1), 1.0)
    preds = _preds(test)
    values = M.classify_metrics(preds.label, scored.probabilities)
    assert values["accuracy"] > 0.9 and values["roc_auc"] > 0.9
    assert scored.fit == {"split": "train", "windows": 500, "labelled": 500, "sampled": False,
                          "features": 5 + 4 + 1}  # fmt: skip


def test_classify_baseline_with_one_numeric_channel_and_no_categorical_column(tmp_path):
    rng = np.random.default_rng(1)

    def split(n):
        label = rng.integers(0, 2, n)
        num = rng.normal(size=(n, 6, 1)) + 2.0 * label[:, None, None]
        return [_block(n, 6, rng, label=label, num=num)]

    manifest = write_shards(tmp_path, {"train": split(200), "test": split(50)}, {}, ["amount"])
    scored = B.classify_baseline(tmp_path, manifest, "test", 2)
    test_labels = pq.read_table(tmp_path / part_path("test", 6, 0)).column("label").to_numpy()
    assert M.classify_metrics(test_labels, scored.probabilities)["roc_auc"] > 0.9
    assert scored.fit["features"] == 4 + 1  # mean, std, min, max, log length


def test_classify_baseline_with_no_numeric_column(tmp_path):
    rng = np.random.default_rng(2)
    train, test = [_classify_split(rng, 200, 6, 2)], [_classify_split(rng, 40, 6, 2)]
    for block in (*train, *test):
        block["num"] = None
    manifest = write_shards(tmp_path, {"train": train, "test": test}, {"mcc": 4})
    scored = B.classify_baseline(tmp_path, manifest, "test", 2)
    assert scored.fit["features"] == 4 + 1
    assert M.classify_metrics(_preds(test).label, scored.probabilities)["accuracy"] > 0.9


def test_a_train_split_with_one_class_gives_the_class_prior(tmp_path):
    rng = np.random.default_rng(3)
    train, test = [_classify_split(rng, 30, 4, 2)], [_classify_split(rng, 10, 4, 2)]
    train[0]["label"][:] = 1
    train[0]["label"][:5] = -1  # unlabelled windows are not counted
    manifest = write_shards(tmp_path, {"train": train, "test": test}, {"mcc": 4}, ["amount"])
    scored = B.classify_baseline(tmp_path, manifest, "test", 2)
    assert scored.name == "class_prior"
    assert "class prior" in scored.description and "1 class(es) [1]" in scored.description
    np.testing.assert_allclose(scored.probabilities, [[1 / 27, 26 / 27]] * 10)
    assert scored.fit["labelled"] == 25


def test_fit_order_blind_maps_probabilities_to_every_class_index():
    x = np.array([[0.0], [0.1], [5.0], [5.1]])
    clf, prior = B.fit_order_blind(x, np.array([0, 0, 2, 2]), num_classes=4)
    probs = B.predict_order_blind(clf, prior, x, 4)
    assert probs.shape == (4, 4) and (probs[:, [1, 3]] == 0).all()
    assert probs.argmax(1).tolist() == [0, 0, 2, 2]
    clf, prior = B.fit_order_blind(x, np.full(4, -1), num_classes=2)  # no labels: uniform
    assert clf is None and prior.tolist() == [0.5, 0.5]


def test_fit_sample_is_seeded_and_capped(tmp_path):
    rng = np.random.default_rng(4)
    train = [_classify_split(rng, 50, 4, 2), _classify_split(rng, 30, 8, 2)]
    manifest = write_shards(tmp_path, {"train": train}, {"mcc": 4}, ["amount"])
    first = B._sample(manifest, "train", 20, seed=5)
    assert sum(len(v) for v in first.values()) == 20
    assert all(v.max() < manifest.splits["train"].buckets[b].examples for b, v in first.items())
    again = B._sample(manifest, "train", 20, seed=5)
    assert all(np.array_equal(first[b], again[b]) for b in first)
    assert B._sample(manifest, "train", 80, seed=5) is None
    x, y, _ = B._bags(tmp_path, manifest, "train", first)
    assert len(x) == len(y) == 20


# --------------------------------------------------------------------------- next_event


def test_rank_table_breaks_ties_by_the_lower_id():
    ranks = M.rank_table(np.array([[0.0, 0.3, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    assert ranks.tolist() == [[3, 1, 2, 0], [0, 1, 2, 3]]


def test_table_stats_equal_next_event_stats_on_materialised_outputs():
    rng = np.random.default_rng(6)
    table = rng.dirichlet(np.ones(7), size=7)
    table[:, 3] = table[:, 4]  # ties
    current = rng.integers(0, 7, (12, 9))
    targets = rng.integers(0, 7, (12, 9))
    targets[:, -2:] = 0
    outputs = [table[row] for row in current]
    expected = M.next_event_stats(outputs, list(targets))
    np.testing.assert_allclose(M.next_event_stats_from_table(table, current, targets), expected)


def test_a_successor_table_gives_a_perfect_transition_baseline():
    current = np.arange(2, 9)  # next id = current id + 1
    table = B.fit_transitions(current, current + 1, vocab_size=10)
    eval_current = np.array([[2, 3, 4, 5], [6, 7, 8, 8]])
    stats = M.next_event_stats_from_table(table, eval_current, eval_current + 1)
    values = M.next_event_from_stats(stats)
    assert values["top1_accuracy"] == 1.0 and values["top5_accuracy"] == 1.0
    assert values["targets"] == 8


def test_an_unseen_current_value_falls_back_to_the_overall_next_value():
    current = np.array([2, 2, 2, 3, 3, 4])
    following = np.array([5, 5, 6, 5, 7, 6])  # overall: 5 (3 times), then 6, then 7
    table = B.fit_transitions(current, following, vocab_size=9)
    assert table[8].argmax() == 5  # 8 never a current value
    assert M.rank_table(table)[8, [5, 6, 7]].tolist() == [0, 1, 2]
    assert table[3].argmax() == 5  # 5 and 7 once each after 3: the overall more frequent
    assert table[:, 0].max() == 0 and (table[:, 1:] > 0).all()  # PAD never, nothing else 0
    np.testing.assert_allclose(table.sum(1), 1.0)


def test_transition_baseline_on_shards_ignores_pairs_without_a_target(tmp_path):
    rng = np.random.default_rng(7)

    def block(n, width):
        ids = rng.integers(2, 8, (n, width))
        nxt = np.where(np.arange(width)[None, :] < width - 1, ids % 6 + 2, 0)
        return _block(n, width, rng, cat={"mcc": ids}, next_event=nxt)

    train, test = [block(40, 5), block(20, 3)], [block(10, 5), block(5, 3)]
    manifest = write_shards(tmp_path, {"train": train, "test": test}, {"mcc": 8})
    manifest.targets.next_event = SimpleNamespace(column="mcc", vocab_size=8)
    scored, stats = B.transition_baseline(tmp_path, manifest, "test")
    assert scored.name == "transition_table" and scored.fit["pairs"] == 40 * 4 + 20 * 2
    assert stats.shape == (15, 4)
    assert M.next_event_from_stats(stats)["top1_accuracy"] == 1.0  # next = f(current)


# --------------------------------------------------------------------------- forecast


def test_dense_forecast_stats_equal_forecast_stats():
    rng = np.random.default_rng(8)
    y = rng.normal(size=(6, 5, 2))
    y[rng.random(y.shape) < 0.2] = np.nan
    pred = rng.normal(size=(6, 5, 2))
    length = np.array([5, 3, 1, 5, 2, 4])
    expected = M.forecast_stats([p[:n] for p, n in zip(pred, length, strict=True)],
                                [t[:n] for t, n in zip(y, length, strict=True)])  # fmt: skip
    np.testing.assert_allclose(M.forecast_stats_dense(pred, y, length), expected)


def test_carry_forward_fills_gaps_with_the_last_value():
    values = np.array([[1.0, np.nan, 3.0, np.nan, np.nan], [2.0, 4.0, np.nan, 5.0, np.nan]])
    assert B._carry_forward(values).tolist() == [[1, 1, 3, 3, 3], [2, 4, 4, 5, 5]]


def _forecast_block(series: np.ndarray, horizon: int = 2):
    """Windows of whole series: num holds each step's value, forecast the next ``horizon``."""
    n, width = series.shape
    ahead = np.full((n, width, horizon), np.nan)
    for h in range(horizon):
        ahead[:, : width - 1 - h, h] = series[:, 1 + h :]
    return {"length": np.full(n, width), "num": series[..., None].astype(np.float32),
            "next_event": np.zeros((n, width), np.int64), "forecast": ahead}  # fmt: skip


def _forecast_manifest(tmp_path, train, test):
    manifest = write_shards(tmp_path, {"train": train, "test": test}, {}, ["amount"])
    manifest.targets.forecast = SimpleNamespace(column="amount", horizon=2)
    return manifest


def test_a_constant_series_gives_last_value_mae_zero(tmp_path):
    series = np.full((4, 6), 7.0)
    manifest = _forecast_manifest(tmp_path, [_forecast_block(series)], [_forecast_block(series)])
    both, scale = B.forecast_baselines(tmp_path, manifest, "test")
    last = M.forecast_from_stats(both["last_value"][1])
    assert last["mae"] == 0.0 and last["rmse"] == 0.0 and last["targets"] == 4 * (5 + 4)
    assert M.forecast_from_stats(both["train_mean"][1])["mae"] == pytest.approx(0.0)
    assert both["train_mean"][0].fit["mean"] == 7.0
    assert scale["value"] == 0.0  # no change between consecutive events: MASE undefined


def test_forecast_baselines_and_mase_on_a_trend(tmp_path):
    train = _forecast_block(np.tile(np.arange(6.0), (3, 1)))  # 0..5: steps of 1
    test = _forecast_block(np.tile(np.arange(10.0, 16.0), (2, 1)))
    manifest = _forecast_manifest(tmp_path, [train], [test])
    both, scale = B.forecast_baselines(tmp_path, manifest, "test")
    assert scale["value"] == 1.0 and scale["method"] == "in_sample_naive"
    last = M.forecast_from_stats(both["last_value"][1])
    assert last["mae_h1"] == 1.0 and last["mae_h2"] == 2.0  # a step behind per step ahead
    mean = both["train_mean"][0].fit["mean"]
    assert mean == pytest.approx(np.mean([1, 2, 3, 4, 5]))  # one-step targets of train

    preds = _preds([test])
    preds.outputs = [np.asarray(f) for f in preds.forecast]  # a perfect model (identity units)
    manifest.features.inverse_standardise = lambda column, z: np.asarray(z, np.float64)
    model = M.forecast_from_stats(M.forecast_stats(preds.outputs, preds.forecast))
    report = B.baseline_report(preds, manifest, "forecast", tmp_path, "test", model)
    sections = report.sections
    assert set(sections) == {"mase_scale", "baselines", "baseline", "skill"}
    assert sections["baseline"]["name"] == "last_value"  # the stronger on these windows
    assert sections["baselines"]["last_value"]["overall"]["mase"] == pytest.approx(1.5)
    assert report.model_overall == {"mase": 0.0}
    skill = sections["skill"]
    assert skill["metric"] == "mae" and skill["improvement"] == pytest.approx(1.5)
    assert skill["beats_baseline"] is True and skill["relative"] == pytest.approx(1.0)


def test_an_undefined_mase_scale_is_null_with_reasons(tmp_path):
    series = np.full((2, 4), 3.0)
    manifest = _forecast_manifest(tmp_path, [_forecast_block(series)], [_forecast_block(series)])
    preds = _preds([_forecast_block(series)])
    report = B.baseline_report(preds, manifest, "forecast", tmp_path, "test", {"mae": 0.5})
    assert np.isnan(report.model_overall["mase"])
    assert "scale is 0" in report.undefined["overall.mase"]
    assert "baselines.last_value.overall.mase" in report.undefined
    assert "baseline.overall.mase" in report.undefined
    assert report.sections["skill"]["beats_baseline"] is False  # 0.5 against 0
    assert "skill.relative" in report.undefined  # the baseline's mae is 0


# --------------------------------------------------------------------------- skill and report


@pytest.mark.parametrize(
    ("metric", "model", "baseline", "lower", "improvement", "beats"),
    [
        ("roc_auc", 0.8, 0.6, False, 0.2, True),
        ("mae", 2.0, 3.0, True, 1.0, True),
        ("mae", 3.0, 2.0, True, -1.0, False),
        ("top1_accuracy", 0.5, 0.5, False, 0.0, False),  # strictly better only
    ],
)
def test_skill_is_positive_when_the_model_is_better(
    metric, model, baseline, lower, improvement, beats
):
    out = M.skill(metric, model, baseline, lower)
    assert out["improvement"] == pytest.approx(improvement) and out["beats_baseline"] is beats
    assert out["relative"] == pytest.approx(improvement / abs(baseline))
    assert "undefined" not in out


def test_skill_with_an_undefined_value_is_null_and_not_beaten():
    out = M.skill("roc_auc", 0.7, None, False)
    assert np.isnan(out["improvement"]) and out["beats_baseline"] is False
    assert "baseline's roc_auc is undefined" in out["undefined"]["improvement"]
    assert jsonable(out)["improvement"] is None


def test_classify_report_has_the_sections_the_gate_reads(tmp_path):
    rng = np.random.default_rng(9)
    train, test = [_classify_split(rng, 200, 6, 2)], [_classify_split(rng, 30, 6, 2)]
    manifest = write_shards(tmp_path, {"train": train, "test": test}, {"mcc": 4}, ["amount"])
    preds = _preds(test, outputs=rng.dirichlet([1, 1], size=30))
    model = M.classify_metrics(preds.label, preds.probabilities)
    report = B.baseline_report(preds, manifest, "classify", tmp_path, "test", model, seed=3)
    base = report.sections["baseline"]
    assert set(report.sections) == {"baseline", "skill"}
    assert set(base) == {"name", "description", "fit", "primary_metric", "primary_value",
                         "overall"}  # fmt: skip
    assert (
        base["primary_metric"] == "roc_auc" and base["primary_value"] == base["overall"]["roc_auc"]
    )
    assert set(base["overall"]) == {*model} - {"labelled"} | {"examples"}
    skill = report.sections["skill"]
    assert skill["model"] == model["roc_auc"] and skill["baseline"] == base["primary_value"]
    assert skill["improvement"] == pytest.approx(model["roc_auc"] - base["primary_value"])
    assert report.probabilities.shape == (30, 2)
    json.dumps(jsonable(report.sections), allow_nan=False)

    shuffled = _preds(test)
    shuffled.bucket = shuffled.bucket[:-1]
    with pytest.raises(ValueError, match="differ from the model's predictions"):
        B.baseline_report(shuffled, manifest, "classify", tmp_path, "test", model)


def test_class_names_are_the_label_values_in_index_order():
    def manifest(classes):
        return SimpleNamespace(targets=SimpleNamespace(label=LabelTarget("label", classes)))

    assert B.class_names(manifest((0, 1)), 2) == ["0", "1"]
    assert B.class_names(manifest(("fraud", "ok", True)), 3) == ["fraud", "ok", "True"]
    assert B.class_names(manifest(("only",)), 2) == ["only", "<class 1>"]
    assert B.class_names(SimpleNamespace(targets=SimpleNamespace(label=None)), 2) == [
        "<class 0>", "<class 1>"]  # fmt: skip


def test_plots_name_classes_and_draw_the_baseline(tmp_path):
    rng = np.random.default_rng(10)
    train, test = [_classify_split(rng, 200, 6, 3)], [_classify_split(rng, 60, 6, 3)]
    manifest = write_shards(tmp_path, {"train": train, "test": test}, {"mcc": 5}, ["amount"])
    preds = _preds(test, outputs=rng.dirichlet([1, 1, 1], size=60))
    config = EvaluateConfig(slices=())
    result = evaluate_predictions(preds, manifest, "classify", config, {})
    report = B.baseline_report(preds, manifest, "classify", tmp_path, "test", result["overall"])
    result = jsonable({**result, **report.sections, "class_names": ["low", "mid", "high"]})
    data = plot_data(preds, result, config, report.probabilities)
    assert {*PLOT_FILES, *BASELINE_PLOT_FILES} <= set(data)
    assert {r["actual"] for r in data["confusion"]} <= {"low", "mid", "high"}
    assert {r["class"] for r in data["roc"]} == {r["class"] for r in data["baseline_roc"]}
    assert {r["class"] for r in data["roc"]} == {"low", "mid", "high"}
    bars = data["baseline"]
    assert {r["scorer"] for r in bars} == {"model", "order_blind_logistic_regression"}
    assert {r["metric"] for r in bars} == {"accuracy", "macro_f1", "roc_auc", "pr_auc"}
    written = render_plots(data, result, tmp_path)
    assert {"roc.png", "confusion_matrix.png", "baseline.png"} <= set(written)


def test_forecast_plots_draw_both_baselines_by_horizon_step(tmp_path):
    train = _forecast_block(np.tile(np.arange(6.0), (3, 1)))
    test = _forecast_block(np.tile(np.arange(10.0, 16.0), (2, 1)))
    manifest = _forecast_manifest(tmp_path, [train], [test])
    preds = _preds([test])
    preds.outputs = [np.asarray(f) + 0.5 for f in preds.forecast]
    config = EvaluateConfig(slices=())
    result = evaluate_predictions(preds, manifest, "forecast", config, {})
    report = B.baseline_report(preds, manifest, "forecast", tmp_path, "test", result["overall"])
    result = jsonable({**result, **report.sections})
    data = plot_data(preds, result, config)
    assert [r["step"] for r in data["horizon"]] == [1, 2]
    assert [r["last_value_mae"] for r in data["horizon"]] == [1.0, 2.0]
    assert {r["scorer"] for r in data["baseline"]} == {"model", "last_value", "train_mean"}
    assert data["baseline_roc"] == [] and data["roc"] == []
    assert {"horizon.png", "baseline.png"} <= set(render_plots(data, result, tmp_path))
