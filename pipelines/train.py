"""The train stage: Ray Train ``TorchTrainer`` (DDP) over the shards, with MLflow lineage.

Before Ray starts, the driver plans the training from the shards' index (``plan``): the
token budget (``train.max_tokens: auto`` resolved), the passes over the data per epoch, and
for classify the labelled examples it trains and validates on (the others are counted, and a
train split without one stops the stage here). It then opens one MLflow run (params
flattened, the resolved budget among them; lineage tags; the shards as the run's input
dataset), starts a local Ray cluster or joins ``RAY_ADDRESS``, and runs
``pipelines.train_loop.train_loop_per_worker`` on ``train.num_workers`` workers: gloo on
CPUs, NCCL with bf16 autocast on GPUs. Worker failures are retried from the latest epoch
checkpoint (``FailureConfig``) and keep logging to the same run. At the end it logs the best
epoch's model as an MLflow pyfunc model with signature, input example, the model config and
the shard manifest inside, so a fresh process can score raw events from the model alone.
Writes ``reports/train.json`` (run id, model URI, best-epoch metrics) for later stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import Params
from pipelines.fanout import list_parts
from pipelines.params.train import (
    AUTO_MAX_TOKENS,
    attention_gib,
    auto_patience,
    check_attention_memory,
    check_receptive_field,
)
from pipelines.sampler import (
    TokenBudgetBatchSampler,
    auto_max_tokens,
    bucket_plan,
    example_owners,
)
from pipelines.shard_reader import read_index
from pipelines.stage import stage_main
from pipelines.tracking import configure, ensure_experiment, flatten, lineage_tags
from pipelines.train_loop import FAIL_ENV, train_loop_per_worker, train_metric
from seqcore.config import ConfigError, to_jsonable
from seqcore.io import atomic_dir, write_json
from seqcore.loading import tracking_uri
from seqcore.manifest import Manifest, load_manifest
from seqcore.profile import Hist, score_hist, scores_of
from seqcore.progress import EpochProgress, ray_log_dir, verbose
from seqcore.ray_connect import ClusterUnreachable, connect
from seqcore.store import is_url, locate, under
from seqmodels import ModelConfig

log = logging.getLogger("seqops.train")
MODEL_ARTIFACT = "model"


class TrainError(RuntimeError):
    """Training could not run or finish; the message says why."""


def model_config(params: Params, manifest: Manifest) -> ModelConfig:
    """The model's config: the spec and task from params, input sizes from the shard manifest."""
    t = params.train
    features, targets = manifest.features, manifest.targets
    if t.task == "classify" and targets.label is None:
        raise TrainError("train.task=classify but the shards have no label (data.schema.label)")
    next_event = targets.next_event
    if t.task == "next_event" and next_event is None:
        raise TrainError("train.task=next_event but data.schema.next_event is not set")
    if t.task == "forecast" and targets.forecast is None:
        raise TrainError("train.task=forecast but data.schema.forecast is not set")
    return ModelConfig.from_spec(
        t.model,
        task=t.task,
        vocab_sizes=tuple(features.vocab_size(c) for c in features.categorical),
        n_numeric=len(features.numeric_order),
        max_len=manifest.window_len,
        num_classes=targets.label.num_classes if targets.label else 2,
        next_event_vocab=next_event.vocab_size if next_event else None,
        horizon=targets.forecast.horizon if targets.forecast else params.shard.forecast_horizon,
    )


@dataclass(frozen=True)
class Plan:
    """What the driver settles from the shards' index before any worker starts."""

    max_tokens: int
    """The token budget every worker batches with (``train.max_tokens``, resolved)."""
    rule: str
    """Why that budget, in words (logged)."""
    steps_per_pass: int
    """Optimizer steps per worker per pass over the training examples with that budget."""
    passes_per_epoch: int
    """Passes over the training examples per epoch (``train.min_epoch_tokens``)."""
    patience: int
    """Epochs without improvement before early stopping (``train.patience``, resolved)."""
    examples: dict[str, int]
    """Examples per split that train or validate (for classify: the labelled ones)."""
    unlabeled: dict[str, int] | None
    """Examples per split whose label is -1 (none); None when the shards hold no label."""


def plan(params: Params, manifest: Manifest, shards: Path) -> Plan:
    """The budget and the examples of this training, checked before Ray starts.

    Classify trains and validates on labelled examples only (label -1 means the entity has
    none; the shards keep those for the per-step tasks) and fails here when no training
    example has a label or a label is not a class index of ``targets.label``.
    """
    t = params.train
    index = {split: read_index(shards, split) for split in ("train", "val", "test")}
    label = manifest.targets.label
    unlabeled = None
    if label is not None:
        unlabeled = {split: int((i["label"] < 0).sum()) for split, i in index.items()}
    keep = {split: np.ones(len(i["label"]), bool) for split, i in index.items()}
    if t.task == "classify":
        assert label is not None  # model_config refused classify without a label target
        keep = {split: i["label"] >= 0 for split, i in index.items()}
        total = len(index["train"]["label"])
        if not keep["train"].any():
            raise TrainError(
                f"train.task=classify: none of the {total} training examples has a label "
                f"(column {label.column!r} is empty for every training entity); such entities "
                "are kept in the shards for next_event/forecast but cannot train a classifier: "
                "label some entities, or train another task"
            )
        labels = np.concatenate([i["label"] for i in index.values()])
        if labels.max(initial=-1) >= label.num_classes:
            raise TrainError(
                f"shards: label {int(labels.max())} is not a class index of the manifest's "
                f"{label.num_classes} classes (targets.label); rebuild the shards (dvc repro shard)"
            )
        if not keep["val"].any():
            log.warning(
                "classify: the validation split holds no labelled example; val_loss is 0 in "
                "every epoch, so early stopping and the best epoch mean nothing"
            )
    scored = params.evaluate.split  # what evaluate and the gate will score after training
    if not keep[scored].any():
        what = "labelled examples" if t.task == "classify" else "examples"
        raise TrainError(
            f"evaluate.split={scored!r}: the shards' {scored} split holds no {what} "
            f"({manifest.splits[scored].examples} examples, {manifest.splits[scored].entities} "
            "entities), so the model could not be evaluated after training; give that split "
            "more entities (shard.split.fractions, or more data) before training"
        )
    train, world = index["train"], t.num_workers
    lengths = train["length"][keep["train"]]
    bounds = {split: i["bucket"][keep[split]] for split, i in index.items()}
    widest = int(max(bounds["train"].max(initial=1), bounds["val"].max(initial=1)))
    budget, rule = _budget(params, bounds["train"], widest)
    parts = train["part"][keep["train"]]
    owner = example_owners(
        bounds["train"], parts, bucket_plan(bounds["train"], parts, budget, world), world
    )
    sampler = TokenBudgetBatchSampler(bounds["train"], budget, world_size=world, owner=owner)
    try:
        steps = len(sampler)
    except ValueError as exc:  # a rank owns too few examples to keep step with the others
        raise TrainError(f"train.num_workers={world}: {exc}") from None
    return Plan(
        max_tokens=budget,
        rule=rule,
        steps_per_pass=steps,
        passes_per_epoch=max(1, math.ceil(t.min_epoch_tokens / max(1, int(lengths.sum())))),
        patience=(
            auto_patience(int(keep["val"].sum())) if t.patience == "auto" else int(t.patience)
        ),
        examples={split: int(k.sum()) for split, k in keep.items()},
        unlabeled=unlabeled,
    )


def _budget(params: Params, train_bounds: np.ndarray, widest: int) -> tuple[int, str]:
    """``train.max_tokens`` resolved (the rule of its docstring) and why, in words."""
    t = params.train
    bounds, counts = np.unique(train_bounds, return_counts=True)
    buckets = dict(zip(bounds.tolist(), counts.tolist(), strict=True))
    widths = [*buckets, widest]
    if t.max_tokens != "auto":
        need = attention_gib(t.model, widths, t.max_tokens)
        if need > t.max_attention_gib:
            log.warning(
                "train.max_tokens=%d: the transformer's attention may need about %.1f GiB per "
                "worker (train.max_attention_gib=%s); max_tokens: auto lowers the budget to fit",
                t.max_tokens, need, t.max_attention_gib,
            )  # fmt: skip
        return int(t.max_tokens), "given"
    rows = max(1, min(t.min_batch_examples, len(train_bounds) // t.num_workers))
    floor = rows * widest  # the floor auto_max_tokens applies: rows examples of the widest
    budget = auto_max_tokens(
        buckets, t.num_workers, target=AUTO_MAX_TOKENS, min_steps=t.min_steps_per_pass,
        widest=floor,
    )  # fmt: skip
    if budget == AUTO_MAX_TOKENS:
        rule = f"the default, >= {t.min_steps_per_pass} steps per worker per pass"
    elif budget == floor:
        rule = f"{rows} example(s) of the widest bucket ({widest} events)"
    else:
        rule = f"the largest budget giving >= {t.min_steps_per_pass} steps per worker per pass"
    if attention_gib(t.model, widths, budget) > t.max_attention_gib:
        low, high = widest, budget  # the attention estimate grows with the budget
        while high - low > 1:
            middle = (low + high) // 2
            fits = attention_gib(t.model, widths, middle) <= t.max_attention_gib
            low, high = (middle, high) if fits else (low, middle)
        budget = low
        rule = "lowered until the transformer's attention fits train.max_attention_gib"
    return budget, f"auto: {rule}"


def init_ray(params: Params) -> dict[str, float]:
    """Join ``RAY_ADDRESS`` (checked first: one line when nothing answers) or start a local
    cluster sized for ``train.num_workers``; returns the cluster's resources."""
    import ray

    t = params.train
    try:
        connect(
            num_cpus=max(os.cpu_count() or 1, t.num_workers * t.cpus_per_worker),
            object_store_memory=256 * 1024**2,
        )
    except ClusterUnreachable as exc:
        raise TrainError(str(exc)) from None
    return ray.cluster_resources()


def _first_rows(events: Path, columns: list[str], n: int) -> pa.Table:
    """The first ``n`` rows of an events file or folder of parts, reading no more than that."""
    parts = list_parts(events) if events.is_file() or events.is_dir() else []
    tables, rows = [], 0
    for part in parts:
        for batch in part.file().iter_batches(batch_size=n, columns=columns):
            tables.append(pa.Table.from_batches([batch]))
            rows += batch.num_rows
            if rows >= n:
                return pa.concat_tables(tables).slice(0, n)
    if not tables:
        raise FileNotFoundError(f"{events}: no events (run the validate stage first)")
    return pa.concat_tables(tables)


def _input_example(validated: Path, manifest: Manifest, rows: int = 12):
    """A few raw events of two entities, as a user would send them."""
    schema = manifest.schema
    table = _first_rows(validated, schema.event_columns, 4000)
    entities = pc.unique(table[schema.entity]).slice(0, 2)
    table = table.filter(pc.is_in(table[schema.entity], value_set=entities)).slice(0, rows)
    frame = table.to_pandas()
    for col in schema.categorical:
        frame[col] = frame[col].astype(str)
    # MLflow signatures hold naive datetimes only: the model reads naive times as UTC.
    frame[schema.time] = frame[schema.time].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame


def _pip_requirements() -> list[str]:
    reqs = []
    libs = ("torch", "mlflow", "pyarrow", "numpy", "pandas", "safetensors", "pyyaml")
    for lib in (*libs, "rtdl_num_embeddings"):
        try:
            reqs.append(f"{lib}=={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def validation_scores(weights: Path, config: ModelConfig, shards: Path) -> Hist | None:
    """The model's scores of the validation split's entities, each on its latest window
    (what ``seqops monitor`` and the endpoint score: with ``window.policy: sliding`` the
    earlier windows are left out), by bin (``seqcore.profile.score_hist``). None when the
    split is empty."""
    from pipelines.predict import predict_split
    from seqmodels import SequenceModel

    model = SequenceModel(config)
    model.load_weights(weights)
    preds = predict_split(model, shards, "val")
    if not len(preds.entity):
        log.warning("the validation split is empty: the model carries no score reference")
        return None
    _, entity = np.unique(preds.entity.astype(str), return_inverse=True)
    ends = preds.window_end if preds.window_end is not None else np.zeros(len(entity))
    order = np.lexsort((ends, entity))  # by entity, then window end
    last = order[np.r_[entity[order][1:] != entity[order][:-1], True]]
    return score_hist(config.task, scores_of(config.task, [preds.outputs[i] for i in last]))


def _log_model(
    run_id: str,
    best: Path,
    config: ModelConfig,
    manifest: Manifest,
    validated: Path,
    model_dir: Path | None,
) -> str:
    """Log the best weights as the run's MLflow model and record, on the logged model, the
    sha256 of the files that ``seqcore.loading.load_scorer`` reads (and checks) later. The
    MLmodel's metadata names the model format and the code that wrote it; the pyfunc flavour
    (code and all) is for MLflow's own tools, seqops never runs it."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from seqcore.loading import FORMAT_KEY, MODEL_FORMAT, file_record, installed_version
    from seqcore.scorer import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, SequenceScorer

    with tempfile.TemporaryDirectory(prefix="seqops-model-") as tmp:
        folder = Path(tmp)
        shutil.copy(best, folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        (folder / MANIFEST_FILE).write_text(
            json.dumps(manifest.to_json(), indent=2, sort_keys=True)
        )
        if model_dir is not None:  # the stage's DVC output: the same files MLflow gets
            with atomic_dir(model_dir) as out:
                for item in folder.iterdir():
                    shutil.copy(item, out / item.name)
                (out / "mlflow_run.json").write_text(json.dumps({"run_id": run_id}) + "\n")
        example = _input_example(validated, manifest)
        output = SequenceScorer.from_dir(folder).score(example)
        signature = infer_signature(example, output)
        package_root = Path(__file__).resolve().parents[1]
        with mlflow.start_run(run_id=run_id) as active:
            metadata = {
                FORMAT_KEY: MODEL_FORMAT,
                "seqops_version": installed_version(),
                "git_commit": active.data.tags.get("git_commit", "unknown"),
                "git_dirty": active.data.tags.get("git_dirty", "unknown"),
            }
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(package_root / "seqcore" / "mlflow_model.py"),
                artifacts={
                    "weights": str(folder / WEIGHTS_FILE),
                    "model_config": str(folder / CONFIG_FILE),
                    "manifest": str(folder / MANIFEST_FILE),
                },
                code_paths=[str(package_root / p) for p in ("seqcore", "seqmodels")],
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                metadata=metadata,
            )
    store = mlflow.get_tracking_uri()
    # Hashed as the store holds the files, which is what a later load downloads and checks.
    record = file_record(str(info.model_uri), store)
    MlflowClient(tracking_uri=store).set_logged_model_tags(info.model_id, record)
    return str(info.model_uri)


def prepare(params: Params, shards: Path) -> tuple[Manifest, ModelConfig, Plan]:
    """The shards' manifest, the model config and the plan of one training, every check that
    can fail done before Ray starts."""
    t = params.train
    manifest = load_manifest(shards)
    if t.num_workers > manifest.max_workers:
        raise TrainError(
            f"train.num_workers={t.num_workers} exceeds shard.max_workers={manifest.max_workers}: "
            "each worker reads its own part files; raise shard.max_workers and rerun the shard stage"
        )
    config = model_config(params, manifest)
    try:
        check_attention_memory(t, manifest.window_len)
    except ConfigError as exc:
        raise TrainError(str(exc)) from None
    check_receptive_field(t, manifest.window_len)  # a note, not an error
    planned = plan(params, manifest, shards)
    log.info(
        "train.max_tokens=%s resolved to %d (%s): %d steps per worker per pass, %d passes per "
        "epoch; examples %s", t.max_tokens, planned.max_tokens, planned.rule,
        planned.steps_per_pass, planned.passes_per_epoch, planned.examples,
    )  # fmt: skip
    if planned.unlabeled and t.task == "classify":
        log.info("classify leaves out the examples without a label: %s", planned.unlabeled)
    return manifest, config, planned


def wants_gpu(params: Params, resources: dict[str, float]) -> bool:
    """``train.use_gpu`` resolved against the cluster's resources."""
    t = params.train
    gpus = resources.get("GPU", 0) >= t.num_workers
    return t.use_gpu == "always" or (t.use_gpu == "auto" and gpus)


def log_params(
    client: Any, run_id: str, params: Params, config: ModelConfig, planned: Plan
) -> None:
    """The run's params: seed, train and shard sections, the model config, the resolved plan."""
    from mlflow.entities import Param

    flat = flatten(
        "", to_jsonable({"seed": params.seed, "train": params.train, "shard": params.shard})
    )
    flat.update(flatten("model", config.to_dict()))
    flat["train.max_tokens_resolved"] = str(planned.max_tokens)
    flat["train.passes_per_epoch"] = str(planned.passes_per_epoch)
    flat["train.patience_resolved"] = str(planned.patience)
    for split, n in (planned.unlabeled or {}).items():
        flat[f"unlabeled_examples.{split}"] = str(n)
    items = [Param(k, v) for k, v in sorted(flat.items())]
    for i in range(0, len(items), 90):  # MLflow's log_batch takes at most 100 params
        client.log_batch(run_id, params=items[i : i + 90])


def storage_root(params: Params, root: Path) -> str:
    """Where Ray Train (and Tune) keep checkpoints: ``train.storage_path`` (a folder, or an
    object-store URL that every node reaches, as a cluster of several nodes needs); else
    ``ray_results`` in ``data.store``, which every node reaches already; else .ray_results in
    the repository."""
    t = params.train
    if not t.storage_path and params.data.store:
        return under(params.data.store, "ray_results")
    if not t.storage_path:
        return str((root / ".ray_results").resolve())
    return t.storage_path if is_url(t.storage_path) else str(Path(t.storage_path).resolve())


def loop_config(
    params: Params, shards: Path, config: ModelConfig, planned: Plan, uri: str, run_id: str
) -> dict[str, Any]:
    """What ``train_loop_per_worker`` reads: everything a worker needs, JSON-safe."""
    t = params.train
    return {
        "shards": locate(shards).uri,  # a worker on any node reads a snapshot's URL
        "model": config.to_dict(),
        "seed": params.seed,
        "epochs": t.epochs,
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "warmup_fraction": t.warmup_fraction,
        "grad_clip": t.grad_clip,
        "max_tokens": planned.max_tokens,
        "passes": planned.passes_per_epoch,
        "patience": planned.patience,
        "threads": t.cpus_per_worker,
        "amp": t.amp,
        "tracking_uri": uri,
        "run_id": run_id,
        "inject_failure": os.environ.get(FAIL_ENV),
    }


def make_trainer(
    params: Params,
    config: dict[str, Any],
    *,
    use_gpu: bool,
    storage: str,
    name: str,
) -> Any:
    """A ``TorchTrainer`` over ``train_loop_per_worker``: gloo on CPUs, NCCL on GPUs, retried
    from the latest epoch checkpoint after a worker failure."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = params.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=t.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def run(
    params: Params,
    shards: Path,
    validated: Path,
    report_path: Path | None,
    root: Path = Path("."),
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Train one model; returns the summary also written to ``report_path``."""
    from mlflow.tracking import MlflowClient

    t = params.train
    manifest, config, planned = prepare(params, shards)
    use_gpu = wants_gpu(params, init_ray(params))

    configure(root)
    uri = tracking_uri(root)
    experiment_id = ensure_experiment(t.experiment, root)
    client = MlflowClient(uri)
    tags = lineage_tags(root, manifest.content_hash, manifest.input.sha256, source=__file__)
    tags.update(
        {"seqops.stage": "train", "seqops.task": t.task, "seqops.architecture": config.architecture}
    )
    mlflow_run = client.create_run(
        experiment_id, tags=tags, run_name=f"{config.architecture}-{t.task}"
    )
    run_id = mlflow_run.info.run_id
    try:
        log_params(client, run_id, params, config, planned)
        _log_dataset(run_id, shards, manifest)

        storage = storage_root(params, root)
        trainer = make_trainer(
            params,
            loop_config(params, shards, config, planned, uri, run_id),
            use_gpu=use_gpu,
            storage=storage,
            name=f"seqops-{run_id}",
        )
        log.info(
            "%d workers on %s, up to %d epochs (early stopping after %d without improvement); "
            "Ray's own output: %s", t.num_workers, "GPU" if use_gpu else "CPU", t.epochs,
            planned.patience, "here (SEQOPS_VERBOSE)" if verbose() else ray_log_dir(),
        )  # fmt: skip
        started = time.perf_counter()
        with EpochProgress(client, run_id, t.epochs, train_metric(t.task)):
            result = trainer.fit()
        fit_seconds = time.perf_counter() - started
        if result.error is not None or result.checkpoint is None:
            raise TrainError(f"training failed: {result.error}")
        with result.checkpoint.as_directory() as ckpt:
            state = json.loads((Path(ckpt) / "state.json").read_text())
            best = Path(ckpt) / "best.safetensors"
            scored = dataclasses.replace(manifest, scores=validation_scores(best, config, shards))
            model_uri = _log_model(run_id, best, config, scored, validated, model_dir)
        final = dict(result.metrics or {})
        summary = {
            "run_id": run_id,
            "experiment_id": experiment_id,
            "model_uri": model_uri,
            "task": t.task,
            "architecture": config.architecture,
            "receptive_field": config.receptive_field,
            "epochs_run": int(state["epoch"]) + 1,
            "best_epoch": int(state["best_epoch"]),
            "best_val_loss": float(state["best"]),
            "fit_seconds": round(fit_seconds, 2),
            "device": "gpu" if use_gpu else "cpu",
            "workers": t.num_workers,
            "max_tokens": t.max_tokens,
            "max_tokens_resolved": planned.max_tokens,
            "steps_per_pass": planned.steps_per_pass,
            "passes_per_epoch": planned.passes_per_epoch,
            "patience_resolved": planned.patience,
            "examples": planned.examples,
            "unlabeled_examples": planned.unlabeled,
            "last_epoch_metrics": {k: v for k, v in final.items() if isinstance(v, int | float)},
        }
        client.log_metric(run_id, "fit_seconds", fit_seconds)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    if report_path is not None:
        write_json(report_path, summary)
    return summary


def _log_dataset(run_id: str, shards: Path, manifest: Manifest) -> None:
    """Register the shards as the run's input dataset (digest = manifest content hash)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    dataset = MetaDataset(  # type: ignore[abstract]
        source=resolve_dataset_source(locate(shards).show()),
        name="shards",
        digest=manifest.content_hash[:32],
    )
    with mlflow.start_run(run_id=run_id):
        mlflow.log_input(dataset, context="training")


# --------------------------------------------------------------------------- command line


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--events", default="data/validated")
    parser.add_argument("--report", default="reports/train.json")
    parser.add_argument("--model-dir", default="models/model", help="best model's files (DVC out)")


def _command(params: Params, args: argparse.Namespace) -> int:
    summary = run(params, Path(args.shards), Path(args.events), Path(args.report),
                  model_dir=Path(args.model_dir))  # fmt: skip
    log.info("run %s: best epoch %d of %d run, val loss %.4f, model %s", summary["run_id"],
             summary["best_epoch"] + 1, summary["epochs_run"], summary["best_val_loss"],
             summary["model_uri"])  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("train", _arguments, _command, argv, doc=__doc__, failures=(TrainError,))


if __name__ == "__main__":
    sys.exit(main())
