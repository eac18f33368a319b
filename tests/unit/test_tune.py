"""``tune`` params and the pieces of ``seqops tune`` that need no cluster: the space's checks,
trial params, the written result and its merge into params.yaml."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipelines.config import load_params, merge_params, params_from_dict
from pipelines.params.tune import TuneConfig
from pipelines.train import Plan
from pipelines.tune import (
    apply_params,
    check_space,
    dvc_exp_command,
    rounded,
    search_space,
    trial_loop_config,
    trial_params,
    write_params,
)
from seqcore.config import ConfigError
from seqmodels import ModelConfig
from tests.conftest import REPO


def _params(tune: dict | None = None, **overrides):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    merge_params(raw, overrides)
    if tune is not None:
        raw["tune"] = tune
    return params_from_dict(raw)


def test_the_repository_space_is_valid_in_every_combination():
    params = load_params(REPO / "params.yaml")
    assert check_space(params) == 432  # 4 x 3 x 3 x 2 x 2 x 3 corners
    assert {d.key for d in params.tune.dimensions} >= {"lr", "model.architecture"}


@pytest.mark.parametrize(
    ("space", "named"),
    [
        ({"epochs": [4, 8]}, "tune.space.epochs"),  # the scheduler's own bound
        ({"num_workers": [1, 2]}, "tune.space.num_workers"),  # where, not what
        ({"task": ["forecast"]}, "tune.space.task"),
        ({"model.widht": [1]}, "tune.space.model.widht"),
        ({"learning_rate": [0.1]}, "tune.space.learning_rate"),
        ({"lr": []}, "empty"),
        ({"lr": {"loguniform": [0.0, 0.1]}}, "low > 0"),
        ({"lr": {"uniform": [0.1, 0.01]}}, "low < high"),
        ({"lr": {"normal": [0.0, 1.0]}}, "uniform, loguniform, randint"),
        ({"model.num_layers": {"randint": [1.5, 4]}}, "integer bounds"),
    ],
)
def test_a_bad_space_names_the_key_and_the_fix(space, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        _params({"space": space})


@pytest.mark.parametrize(
    ("tune", "key"),
    [
        ({"trials": 0}, "tune.trials"),
        ({"time_budget_s": -1}, "tune.time_budget_s"),
        ({"max_concurrent": 0}, "tune.max_concurrent"),
        ({"scheduler": "hyperband"}, "tune.scheduler"),
        ({"reduction_factor": 1}, "tune.reduction_factor"),
        ({"metric": "test_accuracy"}, "tune.metric"),  # validation only
        ({"space": {}}, "tune.space"),
    ],
)
def test_bad_search_settings_are_refused_when_params_load(tune, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _params(tune)


def test_the_metric_must_be_one_the_task_reports():
    with pytest.raises(ConfigError, match=r"tune\.metric.*val_accuracy"):
        _params({"metric": "val_mae"})  # classify reports val_loss and val_accuracy
    assert _params({"metric": "val_accuracy"}).tune.mode == "max"
    assert _params({"metric": "val_loss"}).tune.mode == "min"


def test_a_combination_training_would_refuse_stops_the_search_before_it_starts():
    # 3 heads divide 48 but not 64: only some combinations are bad, and the error shows one.
    params = _params(
        {"space": {"model.architecture": ["transformer"], "model.hidden_size": [48, 64]}},
        train={"model": {"num_heads": 3}},
    )
    with pytest.raises(ConfigError) as caught:
        check_space(params)
    message = str(caught.value)
    assert "1 of 2 combinations" in message and "model.hidden_size=64" in message
    assert "num_heads" in message


def test_a_large_space_is_checked_key_by_key():
    space = {f"model.{k}": [v] for k, v in (("dropout", 0.1), ("embedding_dim", 8))}
    space["lr"] = [round(0.001 * i, 4) for i in range(1, 80)]
    space["model.hidden_size"] = list(range(8, 136, 2))  # 79 x 64 > the combination limit
    params = _params({"space": space})
    assert check_space(params) == 79 + 64 + 2


def test_trial_params_change_train_and_model_keys_and_keep_the_rest():
    params = load_params(REPO / "params.yaml")
    trial = trial_params(params, {"lr": 0.001, "model.architecture": "tcn", "max_tokens": 4096})
    assert trial.train.lr == 0.001 and trial.train.max_tokens == 4096
    assert trial.train.model.architecture == "tcn"
    assert trial.train.model.hidden_size == params.train.model.hidden_size
    assert trial.shard == params.shard and trial.seed == params.seed
    with pytest.raises(ConfigError, match=r"train\.model\.dropout"):
        trial_params(params, {"model.dropout": 1.5})


def test_sampled_values_are_rounded_to_what_is_written():
    assert rounded({"lr": 0.0012345678, "model.hidden_size": 64, "a": "tcn"}) == {
        "lr": 0.00123,
        "model.hidden_size": 64,
        "a": "tcn",
    }


def test_the_space_becomes_tune_domains_with_inclusive_integer_bounds():
    from ray.tune.search.sample import Categorical, Float, Integer

    config = TuneConfig(
        space={
            "lr": {"loguniform": [1e-4, 1e-2]},
            "model.num_layers": {"randint": [1, 3]},
            "model.architecture": ["lstm", "tcn"],
            "model.dropout": 0.2,
        }
    )
    space = search_space(config.dimensions)
    assert isinstance(space["lr"], Float) and isinstance(space["model.architecture"], Categorical)
    assert isinstance(space["model.num_layers"], Integer)
    assert (space["model.num_layers"].lower, space["model.num_layers"].upper) == (1, 4)
    assert space["model.dropout"] == 0.2


def test_a_trial_stands_in_for_all_workers_with_their_tokens_per_step():
    params = load_params(REPO / "params.yaml")
    planned = Plan(
        max_tokens=4096, rule="given", steps_per_pass=10, passes_per_epoch=1, patience=3,
        examples={"train": 1}, unlabeled=None,
    )  # fmt: skip
    spec = params.train.model
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    config = ModelConfig(**fields, vocab_sizes=(5,), n_numeric=1)
    cfg = trial_loop_config(params, REPO, config, planned, "sqlite:///x.db", "run", False)
    workers = params.train.num_workers
    assert cfg["max_tokens"] == 4096 * workers
    assert cfg["threads"] == workers * params.train.cpus_per_worker
    assert cfg["inject_failure"] is None and cfg["run_id"] == "run"


def test_the_best_values_are_written_as_a_params_fragment_and_a_dvc_command(tmp_path):
    values = {"lr": 0.00123, "model.architecture": "tcn", "max_tokens": "auto"}
    out = tmp_path / "tune_params.yaml"
    write_params(out, values, "parent123", "val_loss", 0.4567)
    text = out.read_text()
    assert "parent123" in text
    assert yaml.safe_load(text) == {
        "train": {"lr": 0.00123, "max_tokens": "auto", "model": {"architecture": "tcn"}}
    }
    command = dvc_exp_command(values)
    assert command == (
        "dvc exp run -S 'train.lr=0.00123' -S 'train.max_tokens=auto' "
        "-S 'train.model.architecture=tcn'"
    )


def test_apply_changes_only_the_searched_keys_and_keeps_comments(tmp_path):
    target = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    target.write_text(original)
    apply_params(target, {"lr": 0.00123, "model.architecture": "tcn", "model.dropout": 0.15})
    before, after = original.splitlines(), target.read_text().splitlines()
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 3
    for old, new in changed:  # the comment after each value stays
        assert old.partition("#")[2] == new.partition("#")[2]
    applied, base = load_params(target).train, load_params(REPO / "params.yaml").train
    assert applied.lr == 0.00123 and applied.model.architecture == "tcn"
    assert applied.model.dropout == 0.15
    assert dataclasses.replace(applied, lr=base.lr, model=base.model) == base
