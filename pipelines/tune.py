"""``seqops tune``: hyperparameter search on Ray Tune, each trial the train stage's own loop.

The search (``params.yaml``'s ``tune``: trials, time, scheduler, space) runs on the shards
that ``dvc repro`` built and ranks trials on the validation split only; the test split stays
unseen until the evaluate stage scores the winner. Each trial is a Ray Tune function trial
running the train stage's loop (``pipelines.train_loop.fit``) in its own process, holding
the CPUs of the ``train.num_workers`` ranks it stands in for, with their tokens per
optimizer step. It reports every epoch to Tune, so ASHA (Li et al. 2020, "A System for
Massively Parallel Hyperparameter Tuning") stops trials that trail at a rung. A trial does
not start a Ray Train run of its own: Ray 2.60 leaves the placement group of a Train run
whose Tune trial was stopped, and the next trial would wait for those CPUs forever.

Every trial is an MLflow child run (``mlflow.parentRunId``) of one parent run holding the
search's settings, its space and its result; the trial logs each epoch there, as training
does, and the search records how each trial ended (``seqops.tune.outcome``).

Before Ray starts, every combination of the space's choices (and both bounds of each
distribution) is checked as the train stage would check it, so a search does not fail an
hour in on a combination params could never hold (a head count that does not divide a
width, a transformer over a window too long for its attention).

The result is written as params, not as a model: ``reports/tune.json`` (every trial), and
``reports/tune_params.yaml`` (the winner's ``train`` keys), which ``--apply`` merges into
``params.yaml`` (comments kept) for ``dvc repro`` to train, or which the printed ``dvc exp
run -S ...`` command trains as a DVC experiment. Either way the model that reaches the
registry comes from the reproducible pipeline, not from a trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.config import Params, check_across_sections
from pipelines.params.train import model_spec
from pipelines.params.tune import Dimension, TuneConfig
from pipelines.stage import stage_main
from pipelines.tracking import configure, ensure_experiment, flatten, lineage_tags
from pipelines.train import (
    Plan,
    TrainError,
    init_ray,
    log_params,
    loop_config,
    prepare,
    storage_root,
    wants_gpu,
)
from pipelines.train_loop import tune_trial_loop
from seqcore.config import ConfigError
from seqcore.io import atomic_file, write_json
from seqcore.loading import tracking_uri
from seqcore.progress import verbose
from seqcore.store import locate
from seqmodels import ModelConfig

log = logging.getLogger("seqops.tune")

MAX_CHECKED = 4096
"""Combinations of the space checked one by one before the search; a larger space is checked
key by key instead (each value against the rest of params)."""

SIGNIFICANT = 3
"""Sampled continuous values are rounded to this many significant digits, so the value a
trial used is the value written to params (0.00123, not 0.0012345678901234)."""


class TuneError(RuntimeError):
    """The search ran and produced nothing usable (no trial finished an epoch)."""


# --------------------------------------------------------------------------- the space


def trial_params(params: Params, values: Mapping[str, Any]) -> Params:
    """``params`` with the ``train`` keys of ``values`` changed (``model.<field>`` for the
    model), checked as ``params.yaml`` itself is: a bad combination raises ``ConfigError``."""
    model = {k.removeprefix("model."): v for k, v in values.items() if k.startswith("model.")}
    train = {k: v for k, v in values.items() if not k.startswith("model.")}
    t = params.train
    spec = {f.name: getattr(t.model, f.name) for f in dataclasses.fields(t.model)}
    try:
        changed = dataclasses.replace(
            t, model=model_spec("train.model", {**spec, **model}), **train
        )
    except TypeError as exc:  # a value of the wrong kind where a number belongs
        raise ConfigError(f"params: train: {exc}") from None
    result = dataclasses.replace(params, train=changed)
    check_across_sections(result)
    return result


def check_space(params: Params) -> int:
    """Refuse a space holding a combination that training would refuse; returns how many
    combinations were checked. Distributions are checked at both bounds."""
    dims = params.tune.dimensions
    corners = [[(d.key, v) for v in d.corners] for d in dims]
    total = math.prod(len(c) for c in corners)
    if total <= MAX_CHECKED:
        combos: Any = (dict(c) for c in itertools.product(*corners))
    else:
        combos = ({key: value} for c in corners for key, value in c)
        total = sum(len(c) for c in corners)
    bad: list[str] = []
    for combo in combos:
        try:
            trial_params(params, combo)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in combo.items())
            bad.append(f"[{shown}]: {str(exc).removeprefix('params: ')}")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ConfigError(
            f"params: tune.space: {len(bad)} of {total} combinations would be refused by "
            f"training, e.g. {'; '.join(bad[:3])}{more}; narrow the choices so that every "
            "combination is valid"
        )
    return total


def search_space(dims: tuple[Dimension, ...]) -> dict[str, Any]:
    """The space as Ray Tune's sampling domains (``randint``'s upper bound made inclusive)."""
    from ray import tune

    space: dict[str, Any] = {}
    for d in dims:
        if d.distribution == "uniform":
            space[d.key] = tune.uniform(d.low, d.high)
        elif d.distribution == "loguniform":
            space[d.key] = tune.loguniform(d.low, d.high)
        elif d.distribution == "randint":
            space[d.key] = tune.randint(int(d.low), int(d.high) + 1)
        elif len(d.choices) == 1:
            space[d.key] = d.choices[0]
        else:
            space[d.key] = tune.choice(list(d.choices))
    return space


def rounded(values: Mapping[str, Any]) -> dict[str, Any]:
    """Floats to ``SIGNIFICANT`` significant digits; other values as they are."""
    return {
        k: float(f"{v:.{SIGNIFICANT}g}") if isinstance(v, float) else v for k, v in values.items()
    }


def trial_resources(params: Params, use_gpu: bool) -> dict[str, float]:
    """What one trial holds: the CPUs (and GPU) of the training it stands in for."""
    t = params.train
    return {"CPU": t.num_workers * t.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}


def concurrency(params: Params) -> int | None:
    """``tune.max_concurrent`` resolved: None (auto) lets the trials' resources decide."""
    value = params.tune.max_concurrent
    return None if value == "auto" else int(value)


def ranked_metric(tune_config: TuneConfig) -> str:
    """The reported value trials are ranked by: the best validation loss so far (what the train
    stage keeps), or the task's validation metric of each epoch."""
    return "best_val_loss" if tune_config.metric == "val_loss" else tune_config.metric


# --------------------------------------------------------------------------- one trial


def trial_loop_config(
    params: Params,
    shards: Path,
    config: ModelConfig,
    planned: Plan,
    uri: str,
    run_id: str,
    use_gpu: bool,
) -> dict[str, Any]:
    """The train stage's loop config for one process standing in for ``train.num_workers``
    DDP ranks: the same tokens per optimizer step (the ranks' budgets together, which DDP
    averages into one step) and the ranks' CPUs as its threads."""
    t = params.train
    cfg = loop_config(params, shards, config, planned, uri, run_id)
    cfg.update(
        max_tokens=planned.max_tokens * t.num_workers,
        threads=t.num_workers * t.cpus_per_worker,
        use_gpu=use_gpu,
        inject_failure=None,
    )
    return cfg


def _trial(
    config: dict[str, Any],
    *,
    params: Params,
    shards: str,
    uri: str,
    experiment_id: str,
    parent_id: str,
    tags: dict[str, str],
    use_gpu: bool,
) -> None:
    """One trial, in its Ray Tune actor: the train stage's loop with ``config``'s keys."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    from ray import tune

    values = rounded(config)
    trial = trial_params(params, values)
    _, model_cfg, planned = prepare(trial, Path(shards))
    client = MlflowClient(uri)
    context = tune.get_context()
    run = client.create_run(
        experiment_id,
        tags={
            **tags,
            "mlflow.parentRunId": parent_id,
            "seqops.stage": "tune-trial",
            "seqops.tune.trial": context.get_trial_id(),
            "seqops.task": trial.train.task,
            "seqops.architecture": model_cfg.architecture,
        },
        run_name=f"{context.get_trial_name()} {model_cfg.architecture}",
    )
    run_id = run.info.run_id
    try:
        log_params(client, run_id, trial, model_cfg, planned)
        client.log_batch(run_id, params=[Param(f"tune.{k}", str(v)) for k, v in values.items()])
        tune_trial_loop(
            trial_loop_config(trial, Path(shards), model_cfg, planned, uri, run_id, use_gpu)
        )
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def trial_outcome(last: Mapping[str, Any], epochs: int, failed: bool = False) -> str:
    """How a trial ended, from the last epoch it reported: ``failed``, ``early_stopping`` (its
    own patience), ``all_epochs``, or ``stopped_by_scheduler`` (ASHA, or the time budget)."""
    if failed:
        return "failed"
    if last.get("stopped_early"):
        return "early_stopping"
    if int(last.get("epoch", -1)) + 1 >= epochs:
        return "all_epochs"
    return "stopped_by_scheduler"


def _progress(total: int, metric: str, mode: str, epochs: int) -> Any:
    """A Tune callback: one line when a trial starts and ends, and a summary a minute."""
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.last_line = self.started
            self.done = 0
            self.best: float | None = None
            self.last: dict[str, dict[str, Any]] = {}

        def _better(self, value: float) -> bool:
            if self.best is None:
                return True
            return value < self.best if mode == "min" else value > self.best

        def on_trial_start(self, iteration, trials, trial, **info):
            shown = ", ".join(f"{k}={v}" for k, v in rounded(trial.config).items())
            log.info("trial %s started: %s", trial.trial_id, shown)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last[trial.trial_id] = result
            value = result.get(metric)
            if isinstance(value, int | float) and self._better(float(value)):
                self.best = float(value)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            result = self.last.get(trial.trial_id, {})
            log.info(
                "trial %s done (%d of %d): %s %.4g after %d epochs (%s)",
                trial.trial_id, self.done, total, metric, result.get(metric, math.nan),
                int(result.get("epoch", -1)) + 1, trial_outcome(result, epochs).replace("_", " "),
            )  # fmt: skip

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            log.warning(
                "trial %s failed (%d of %d); its error is in Ray's logs",
                trial.trial_id, self.done, total,
            )  # fmt: skip

        def on_step_end(self, iteration, trials, **info):
            now = time.monotonic()
            if now - self.last_line < 60:
                return
            self.last_line = now
            running = sum(1 for t in trials if t.status == "RUNNING")
            best = "none yet" if self.best is None else f"{self.best:.4g}"
            log.info(
                "%d of %d trials done, %d running, best %s %s, %.0f s",
                self.done, total, running, metric, best, now - self.started,
            )  # fmt: skip

    return Progress()


# --------------------------------------------------------------------------- the search


def run(
    params: Params,
    shards: Path,
    report_path: Path,
    params_out: Path,
    root: Path = Path("."),
    apply_to: Path | None = None,
) -> dict[str, Any]:
    """Search ``params.tune.space``; returns the summary also written to ``report_path``."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    t, cfg = params.train, params.tune
    checked = check_space(params)
    manifest, _, _ = prepare(params, shards)  # the base config against these shards, first
    metric, mode = ranked_metric(cfg), cfg.mode
    log.info(
        "search: %d trials of %s over %s (%d combinations checked), ranked by %s (%s) on the "
        "validation split, at most %.0f s",
        cfg.trials, cfg.scheduler, ", ".join(d.key for d in cfg.dimensions), checked, metric,
        mode, cfg.time_budget_s,
    )  # fmt: skip
    if not verbose():
        # Tune's own output (a settings table, per-trial tables) repeats what the progress
        # lines say; its older reporter is the one whose verbose=0 prints nothing.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    resources = init_ray(params)
    use_gpu = wants_gpu(params, resources)
    concurrent = concurrency(params)

    configure(root)
    uri = tracking_uri(root)
    experiment_id = ensure_experiment(t.experiment, root)
    client = MlflowClient(uri)
    tags = lineage_tags(root, manifest.content_hash, manifest.input.sha256, source=__file__)
    parent = client.create_run(
        experiment_id,
        tags={**tags, "seqops.stage": "tune", "seqops.task": t.task},
        run_name=f"tune-{t.task}-{cfg.trials}-trials",
    )
    parent_id = parent.info.run_id
    storage = storage_root(params, root)
    started = time.monotonic()
    try:
        settings = flatten(
            "tune", {k: v for k, v in dataclasses.asdict(cfg).items() if k != "space"}
        )
        settings["tune.space"] = json.dumps(dict(cfg.space), sort_keys=True)[:6000]
        settings["tune.max_concurrent_resolved"] = str(concurrent or "by resources")
        client.log_batch(parent_id, params=[Param(k, v) for k, v in sorted(settings.items())])
        scheduler: Any
        if cfg.scheduler == "asha":
            scheduler = ASHAScheduler(
                time_attr="training_iteration",
                max_t=t.epochs,
                grace_period=min(cfg.grace_epochs, t.epochs),
                reduction_factor=cfg.reduction_factor,
            )
        else:
            scheduler = FIFOScheduler()
        trainable = tune.with_parameters(
            _trial,
            params=params,
            shards=locate(shards).uri,
            uri=uri,
            experiment_id=experiment_id,
            parent_id=parent_id,
            tags=tags,
            use_gpu=use_gpu,
        )
        tuner = tune.Tuner(
            tune.with_resources(trainable, trial_resources(params, use_gpu)),
            param_space=search_space(cfg.dimensions),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                scheduler=scheduler,
                # Tune hands max_concurrent_trials only to the search algorithms it makes
                # itself: given one, the limit is the algorithm's own.
                search_alg=BasicVariantGenerator(
                    random_state=params.seed if cfg.seed is None else cfg.seed,
                    max_concurrent=concurrent or 0,
                ),
                num_samples=cfg.trials,
                max_concurrent_trials=concurrent,
                time_budget_s=cfg.time_budget_s,
            ),
            run_config=tune.RunConfig(
                name=f"tune-{parent_id}",
                storage_path=str(storage),
                verbose=0,
                # Each epoch's checkpoint only serves a retry of its own trial.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[_progress(cfg.trials, metric, mode, t.epochs)],
            ),
        )
        grid = tuner.fit()
        trials = _trials(grid, client, experiment_id, parent_id, metric, mode, t.epochs)
        finished = [tr for tr in trials if tr["best"] is not None]
        if not finished:
            raise TuneError(
                f"no trial finished an epoch within tune.time_budget_s={cfg.time_budget_s:g} "
                f"({len(trials)} started); raise the budget or search a smaller space"
            )
        best = (min if mode == "min" else max)(finished, key=lambda tr: tr["best"])
        summary = {
            "parent_run_id": parent_id,
            "experiment_id": experiment_id,
            "metric": cfg.metric,
            "ranked_by": metric,
            "mode": mode,
            "scheduler": cfg.scheduler,
            "trials_requested": cfg.trials,
            "trials_run": len(trials),
            "max_concurrent": concurrent,
            "seconds": round(time.monotonic() - started, 1),
            "best": best,
            "trials": trials,
            "params_file": str(params_out),
            "dvc_exp_run": dvc_exp_command(best["config"]),
        }
        write_params(params_out, best["config"], parent_id, cfg.metric, best["best"])
        write_json(report_path, summary)
        client.log_metric(parent_id, f"best_{cfg.metric}", float(best["best"]))
        client.log_metric(parent_id, "trials_run", len(trials))
        client.set_tag(parent_id, "seqops.tune.best_run_id", best["run_id"] or "unknown")
        client.log_artifact(parent_id, str(report_path))
        client.log_artifact(parent_id, str(params_out))
        client.set_terminated(parent_id, "FINISHED")
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    if apply_to is not None:
        apply_params(apply_to, best["config"])
    return summary


def _trials(
    grid: Any, client: Any, experiment_id: str, parent_id: str, metric: str, mode: str, epochs: int
) -> list[dict[str, Any]]:
    """Every trial of the result grid: its values, best ranked metric, epochs, outcome and
    child run, whose MLflow status is set from the outcome (FINISHED unless it failed)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    by_trial = {r.data.tags.get("seqops.tune.trial"): r for r in runs}
    out = []
    for result in grid:
        frame = result.metrics_dataframe
        last = result.metrics or {}
        trial_id = last.get("trial_id") or (result.config or {}).get("trial_id")
        best = None
        if frame is not None and metric in frame and frame[metric].notna().any():
            column = frame[metric].dropna()
            best = float(column.min() if mode == "min" else column.max())
        epochs_run = int(last.get("epoch", -1)) + 1
        outcome = trial_outcome(last, epochs, failed=result.error is not None)
        run = by_trial.get(trial_id)
        if run is not None:
            # Decided here, not by the trial: a trial the scheduler stops ends inside a report
            # (or is killed), which is how a search ends most trials, not a failure.
            client.set_tag(run.info.run_id, "seqops.tune.outcome", outcome)
            client.set_terminated(run.info.run_id, "FAILED" if outcome == "failed" else "FINISHED")
        out.append(
            {
                "trial_id": trial_id,
                "run_id": run.info.run_id if run is not None else None,
                "config": rounded(result.config or {}),
                "best": best,
                "epochs_run": max(epochs_run, 0),
                "outcome": outcome,
                "error": None if result.error is None else str(result.error).splitlines()[0][:500],
            }
        )
    return out


# --------------------------------------------------------------------------- the result as params


def _nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """{"lr": 0.001, "model.hidden_size": 64} -> {"lr": 0.001, "model": {"hidden_size": 64}}."""
    out: dict[str, Any] = {}
    for key, value in sorted(values.items()):
        if key.startswith("model."):
            out.setdefault("model", {})[key.removeprefix("model.")] = value
        else:
            out[key] = value
    return out


def write_params(
    path: Path, values: Mapping[str, Any], parent_id: str, metric: str, best: float
) -> None:
    """The winner's ``train`` keys as a params fragment, with where it came from."""
    import yaml

    head = (
        f"# seqops tune: the best trial of MLflow run {parent_id} ({metric} {best:.6g} on the\n"
        "# validation split). Train it with `seqops tune --apply` (merged into params.yaml)\n"
        "# then `dvc repro`, or as a DVC experiment with the command in reports/tune.json.\n"
    )
    body = yaml.safe_dump({"train": _nested(values)}, sort_keys=True)
    with atomic_file(path) as handle:
        handle.write(head + body)


def dvc_exp_command(values: Mapping[str, Any]) -> str:
    """The ``dvc exp run`` that trains ``values`` as an experiment of this repository."""
    sets = " ".join(f"-S 'train.{k}={_yaml_scalar(v)}'" for k, v in sorted(values.items()))
    return f"dvc exp run {sets}"


def _yaml_scalar(value: Any) -> str:
    import yaml

    return str(yaml.safe_dump(value, default_flow_style=True)).strip().removesuffix("...").strip()


def apply_params(path: Path, values: Mapping[str, Any]) -> None:
    """Merge the winner's keys into ``path``'s ``train`` section, keeping its comments and
    order (ruamel's round trip), atomically."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments, order and quoting kept
    yaml.preserve_quotes = True
    yaml.width = 4096  # ruamel refolds long flow mappings at its default width of 80
    # ruamel writes None as an empty value; params.yaml spells it null.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    doc = yaml.load(path.read_text())
    train = doc.setdefault("train", {})
    for key, value in _nested(values).items():
        if isinstance(value, dict):
            section = train.setdefault(key, {})
            for sub, v in value.items():
                section[sub] = v
        else:
            train[key] = value
    with atomic_file(path) as handle:
        yaml.dump(doc, handle)


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", default="data/shards", help="shards built by dvc repro")
    parser.add_argument("--report", default="reports/tune.json", help="every trial, and the best")
    parser.add_argument(
        "--out", default="reports/tune_params.yaml", help="the best trial's train keys"
    )
    parser.add_argument(
        "--apply", action="store_true", help="merge the best train keys into the params file"
    )
    parser.add_argument("--trials", type=int, default=None, help="override tune.trials")
    parser.add_argument(
        "--time-budget", type=float, default=None, help="override tune.time_budget_s (seconds)"
    )


def _command(params: Params, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.trials is not None:
        changes["trials"] = args.trials
    if args.time_budget is not None:
        changes["time_budget_s"] = args.time_budget
    if changes:
        try:
            params = dataclasses.replace(params, tune=dataclasses.replace(params.tune, **changes))
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("tune.time_budget_s", "--time-budget")) from None
    summary = run(
        params,
        Path(args.shards),
        Path(args.report),
        Path(args.out),
        apply_to=Path(args.params) if args.apply else None,
    )
    best = summary["best"]
    shown = ", ".join(f"{k}={v}" for k, v in best["config"].items())
    log.info(
        "best of %d trials: %s %.6g (%s), MLflow run %s", summary["trials_run"],
        summary["ranked_by"], best["best"], shown, best["run_id"],
    )  # fmt: skip
    if args.apply:
        log.info("merged into %s: train it with `dvc repro`", args.params)
    else:
        log.info("written to %s; train it with: %s", args.out, summary["dvc_exp_run"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "tune", _arguments, _command, argv, doc=__doc__, failures=(TrainError, TuneError)
    )


if __name__ == "__main__":
    sys.exit(main())
