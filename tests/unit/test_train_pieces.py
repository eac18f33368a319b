"""Training building blocks without Ray: data ownership, schedule, model config, lineage."""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest

from pipelines.params.train import auto_patience
from pipelines.tracking import dvc_out_hash, flatten, git_state, lineage_tags, pipeline_outputs
from pipelines.train import TrainError, model_config
from pipelines.train_loop import ShardData, _lr_lambda, _maybe_fail
from seqcore.manifest import load_manifest
from tests.conftest import tiny_params


@pytest.mark.parametrize("max_tokens", [1, 4096])  # buckets shared by part; small ones whole
@pytest.mark.parametrize("world", [1, 2])
def test_ranks_read_disjoint_parts_covering_every_example_once(tiny_pipeline, world, max_tokens):
    seen = []
    for rank in range(world):
        data = ShardData(str(tiny_pipeline["shards"]), "train", rank, world, max_tokens=max_tokens)
        assert data.table.num_rows == len(data.mine)
        # Global index -> this rank's table row: lengths agree row by row.
        local = data.local_of_global[data.mine]
        np.testing.assert_array_equal(
            data.table.column("length").to_numpy()[local], data.lengths[data.mine]
        )
        seen.append(data.mine)
    total = ShardData(str(tiny_pipeline["shards"]), "train", 0, 1)
    merged = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(merged, np.arange(len(total.padded)))


def test_batches_are_trimmed_to_their_longest_example(tiny_pipeline):
    import torch

    data = ShardData(str(tiny_pipeline["shards"]), "train", 0, 1)
    idx = np.flatnonzero(data.padded == data.padded.max())[:3]
    batch = data.batch(idx, torch.device("cpu"))
    assert batch["cat"].shape[1] == int(data.lengths[idx].max())


def test_schedule_warms_up_then_decays_to_a_tenth():
    factor = _lr_lambda(100, 0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(50) < factor(20) < 1.0
    assert factor(99) == pytest.approx(0.1, abs=0.01)


def test_model_config_takes_sizes_from_the_manifest(tiny_pipeline):
    manifest = load_manifest(tiny_pipeline["shards"])
    params = tiny_params()
    config = model_config(params, manifest)
    features = manifest.features
    assert config.vocab_sizes == tuple(features.vocab_size(c) for c in features.categorical)
    assert config.n_numeric == len(features.numeric_order)
    assert config.max_len == manifest.window.window_len
    # The hyperparameters are params.yaml's train.model, unchanged; the task is train.task.
    resolved = params.train.model.depth_for(manifest.window.window_len)
    assert config.num_layers == resolved
    assert config.spec == dataclasses.replace(params.train.model, num_layers=resolved)
    assert config.task == params.train.task
    assert config.hidden_size == 16 and config.num_layers == 2 and config.ffn_size == 32
    nxt = model_config(
        dataclasses.replace(params, train=dataclasses.replace(params.train, task="next_event")),
        manifest,
    )
    assert nxt.next_event_vocab == manifest.targets.next_event.vocab_size
    broken = dataclasses.replace(
        manifest, targets=dataclasses.replace(manifest.targets, label=None)
    )
    with pytest.raises(TrainError, match="label"):
        model_config(params, broken)


def test_failure_injection_fires_once(tmp_path):
    spec = f"epoch=1,rank=0,marker={tmp_path / 'marker'}"
    _maybe_fail(spec, 0, 0)
    _maybe_fail(spec, 1, 1)
    with pytest.raises(RuntimeError, match="injected"):
        _maybe_fail(spec, 1, 0)
    _maybe_fail(spec, 1, 0)  # the marker makes it a one-off


def test_lineage_tags_name_commit_dirtiness_data_hashes_and_versions(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("commit", "-qm", "first")
    assert git_state(tmp_path)["git_dirty"] == "false"
    (tmp_path / "a.txt").write_text("two")
    state = git_state(tmp_path)
    assert state["git_dirty"] == "true" and len(state["git_commit"]) == 40
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  shard:\n    outs:\n    - path: data/shards\n      md5: abc.dir\n"
    )
    assert dvc_out_hash(tmp_path, "shard", "data/shards") == "abc.dir"
    tags = lineage_tags(tmp_path, "h1", "h2")
    assert tags["shard_manifest_hash"] == "h1" and tags["dvc_shards_md5"] == "abc.dir"
    assert tags["events_sha256"] == "h2" and tags["version.torch"] != "missing"
    assert git_state(tmp_path / "nowhere")["git_commit"] == "unknown"


def test_flatten_params():
    assert flatten("", {"a": {"b": 1, "c": [1, 2]}, "d": None}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
    }


def test_pipeline_outputs_do_not_make_the_tree_dirty(tmp_path):
    """A clean clone that ran `dvc repro` (which rewrites dvc.lock, metrics and plots) is
    still clean; an edited file is not."""

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
            cwd=tmp_path, check=True, capture_output=True,
        )  # fmt: skip

    (tmp_path / "reports").mkdir()
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: x\n    outs: [data/out]\n"
        "    metrics:\n      - reports/m.json:\n          cache: false\n"
        "plots:\n  - reports/plots\n"
    )
    files = ["dvc.lock", "reports/m.json", "code.py", "params.yaml"]
    for name in files:
        (tmp_path / name).write_text("one")
    git("init", "-q")
    git("add", "dvc.yaml", *files)
    git("commit", "-qm", "first")
    assert pipeline_outputs(tmp_path) == ["data/out", "dvc.lock", "reports/m.json", "reports/plots"]
    (tmp_path / "dvc.lock").write_text("two")
    (tmp_path / "reports" / "m.json").write_text("two")
    assert git_state(tmp_path)["git_dirty"] == "false"
    for edited in ("params.yaml", "code.py"):
        (tmp_path / edited).write_text("two")
        assert git_state(tmp_path)["git_dirty"] == "true"
        git("checkout", "-q", "--", edited)


def test_max_tokens_is_auto_or_a_positive_integer():
    from pipelines.params.train import TrainConfig
    from seqcore.config import ConfigError

    assert TrainConfig().max_tokens == "auto"
    assert TrainConfig(max_tokens=4096).max_tokens == 4096
    for bad in ("big", 0, True, 1.5):
        with pytest.raises(ConfigError, match="train.max_tokens"):
            TrainConfig(max_tokens=bad)
    with pytest.raises(ConfigError, match="min_steps_per_pass"):
        TrainConfig(min_steps_per_pass=0)


def test_a_transformer_window_whose_attention_is_absurd_is_refused():
    from pipelines.params.train import TrainConfig, attention_gib, check_attention_memory
    from seqcore.config import ConfigError

    lstm = TrainConfig()
    transformer = lstm.with_model(architecture="transformer")
    assert attention_gib(lstm.model, [5000], 8192) == 0.0
    # rows x width x hidden x layers x 96 bytes: linear in the window (SDPA's fused kernels).
    expected = 8192 * 64 * 2 * 96 / 1024**3
    assert attention_gib(transformer.model, [4096, 256], 8192) == pytest.approx(expected)
    check_attention_memory(lstm, 1_000_000)
    check_attention_memory(transformer, 5000)
    with pytest.raises(ConfigError, match="train.model.architecture.*lstm, gru or tcn"):
        check_attention_memory(transformer, 400_000)


def _with_labels(tiny_pipeline, tmp_path, relabel):
    """A copy of the tiny shards whose label column is ``relabel(labels)`` in every part."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shutil.copytree(tiny_pipeline["shards"], shards)
    for path in sorted(shards.glob("*/bucket=*/part-*.parquet")):
        table = pq.read_table(path)
        i = table.schema.get_field_index("label")
        labels = relabel(table.column("label").to_numpy().copy())
        pq.write_table(table.set_column(i, "label", pa.array(labels, pa.int64())), path)
    return shards


def _classify(**train_changes):
    params = tiny_params()
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **train_changes))


def test_plan_resolves_the_budget_and_counts_unlabelled_examples(tiny_pipeline, tmp_path):
    from pipelines.sampler import steps_per_epoch
    from pipelines.train import plan

    every_third = lambda labels: np.where(np.arange(len(labels)) % 3 == 0, -1, labels)  # noqa: E731
    shards = _with_labels(tiny_pipeline, tmp_path, every_third)
    manifest = load_manifest(shards)
    planned = plan(_classify(max_tokens="auto", min_epoch_tokens=100_000), manifest, shards)
    for split, n in planned.unlabeled.items():
        assert n > 0 and planned.examples[split] + n == manifest.splits[split].examples
    # Small data: the budget shrinks below 8192 until an epoch has enough steps.
    train = ShardData(str(shards), "train", 0, 1, labelled_only=True)
    buckets = dict(zip(*np.unique(train.padded, return_counts=True), strict=True))
    assert train.unlabeled == planned.unlabeled["train"]
    assert len(train.padded) == planned.examples["train"]
    widest = max(buckets)
    assert widest <= planned.max_tokens < 8192
    steps = steps_per_epoch(buckets, planned.max_tokens, 2)
    assert planned.steps_per_pass >= steps
    real = int(train.lengths.sum())
    assert planned.passes_per_epoch == -(-100_000 // real) > 1  # tiny data: many passes
    one = plan(_classify(min_epoch_tokens=1), manifest, shards)
    assert one.passes_per_epoch == 1
    # At least 32 steps, or as many as the budget's floor allows: 8 examples of the widest
    # bucket (min_batch_examples), so that no batch is a lone series.
    floor = 8 * widest
    assert planned.max_tokens == floor and "8 example(s) of the widest bucket" in planned.rule
    assert steps < 32 and steps_per_epoch(buckets, planned.max_tokens - 1, 2) < 32
    lone = plan(_classify(max_tokens="auto", min_batch_examples=1), manifest, shards)
    assert lone.max_tokens >= widest and steps_per_epoch(buckets, lone.max_tokens + 1, 2) < 32
    assert plan(_classify(max_tokens=8192), manifest, shards).max_tokens == 8192
    # patience: auto waits longer on a small validation split (10 examples here).
    assert planned.patience == auto_patience(planned.examples["val"]) == 9
    assert plan(_classify(patience=4), manifest, shards).patience == 4
    # The per-step tasks keep every example.
    nxt = plan(_classify(task="next_event"), manifest, shards)
    assert nxt.examples["train"] == manifest.splits["train"].examples


def test_classify_without_a_labelled_training_example_fails_before_training(
    tiny_pipeline, tmp_path
):
    from pipelines.train import plan

    shards = _with_labels(tiny_pipeline, tmp_path, lambda labels: np.full_like(labels, -1))
    with pytest.raises(TrainError, match="none of the .* training examples has a label"):
        plan(_classify(), load_manifest(shards), shards)
    assert plan(_classify(task="forecast"), load_manifest(shards), shards).examples["train"] > 0


@pytest.mark.parametrize("max_tokens", [1, 4096])
def test_labelled_only_data_addresses_the_labelled_rows(tiny_pipeline, tmp_path, max_tokens):
    import torch

    odd = lambda labels: np.where(np.arange(len(labels)) % 2 == 1, -1, labels)  # noqa: E731
    shards = _with_labels(tiny_pipeline, tmp_path / str(max_tokens), odd)
    for rank in range(2):
        data = ShardData(str(shards), "train", rank, 2, labelled_only=True, max_tokens=max_tokens)
        assert data.unlabeled > 0
        for bound in np.unique(data.padded[data.mine]):
            rows = data.mine[data.padded[data.mine] == bound]
            batch = data.batch(rows, torch.device("cpu"))
            assert (batch["label"] >= 0).all() and len(batch["label"]) == len(rows)
            np.testing.assert_array_equal(batch["length"].numpy(), data.lengths[rows])


def test_an_auto_budget_is_lowered_until_a_transformers_attention_fits(tiny_pipeline):
    from pipelines.params.train import attention_gib
    from pipelines.train import plan

    shards = tiny_pipeline["shards"]
    manifest = load_manifest(shards)
    params = _classify(max_tokens="auto", min_steps_per_pass=1, min_epoch_tokens=1)
    assert plan(params, manifest, shards).max_tokens == 8192
    limit = 0.001  # GiB: a few rows of the widest bucket
    small = dataclasses.replace(
        params.train.with_model(architecture="transformer"), max_attention_gib=limit
    )
    planned = plan(dataclasses.replace(params, train=small), manifest, shards)
    widths = list(manifest.splits["train"].buckets)
    assert max(widths) <= planned.max_tokens < 8192 and "attention" in planned.rule
    assert attention_gib(small.model, widths, planned.max_tokens) <= limit
    assert attention_gib(small.model, widths, planned.max_tokens + 1) > limit


def test_plan_refuses_a_training_whose_evaluated_split_would_be_empty(tiny_pipeline, tmp_path):
    """An empty evaluated split fails before training, not in evaluate after it."""
    from pipelines.train import TrainError, plan

    relabelled = _with_labels(tiny_pipeline, tmp_path, lambda labels: labels)
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in sorted(relabelled.glob("test/bucket=*/part-*.parquet")):  # no test labels
        table = pq.read_table(path)
        i = table.schema.get_field_index("label")
        pq.write_table(table.set_column(i, "label", pa.array([-1] * len(table), pa.int64())), path)
    with pytest.raises(TrainError, match=r"evaluate\.split='test': .*no labelled examples"):
        plan(_classify(), load_manifest(relabelled), relabelled)


@pytest.mark.parametrize(
    ("val_examples", "patience"), [(0, 3), (8, 10), (10, 9), (25, 6), (100, 3), (30_000, 3)]
)
def test_auto_patience_waits_longer_on_a_small_validation_split(val_examples, patience):
    assert auto_patience(val_examples) == patience


def test_patience_is_auto_or_a_positive_integer():
    from pipelines.params.train import TrainConfig
    from seqcore.config import ConfigError

    assert TrainConfig().patience == "auto" and TrainConfig(patience=2).patience == 2
    for bad in (0, "soon", True, 1.5):
        with pytest.raises(ConfigError, match="train.patience"):
            TrainConfig(patience=bad)
    with pytest.raises(ConfigError, match="min_batch_examples"):
        TrainConfig(min_batch_examples=0)
