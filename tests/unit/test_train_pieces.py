"""Training building blocks without Ray: data ownership, schedule, model config, lineage."""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest

from pipelines.tracking import dvc_out_hash, flatten, git_state, lineage_tags, pipeline_outputs
from pipelines.train import TrainError, model_config
from pipelines.train_loop import ShardData, _lr_lambda, _maybe_fail
from seqcore.manifest import load_manifest
from tests.conftest import tiny_params


@pytest.mark.parametrize("world", [1, 2])
def test_ranks_read_disjoint_parts_covering_every_example_once(tiny_pipeline, world):
    seen = []
    for rank in range(world):
        data = ShardData(str(tiny_pipeline["shards"]), "train", rank, world)
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
    assert config.spec == params.train.model and config.task == params.train.task
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
