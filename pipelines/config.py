"""``Params``: all of ``params.yaml``, assembled from the sections their owners define.

Each section is a frozen dataclass validated on construction, whose errors name the dotted key
and the bad value: ``data.schema`` (``seqcore.schema``), ``validate`` (``data_checks.config``),
``shard.features`` (``seqcore.features``) and the stage sections in ``pipelines/params/``.
Stages receive these objects, never raw dicts; ``load_params`` checks the whole file before
any stage runs. ``params_schema`` is the file's JSON Schema, generated from the same dataclasses
(``python -m pipelines.config --schema > params.schema.json``; a unit test keeps it current).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data_checks.config import ValidateConfig
from pipelines.generate import FEATURE_COLUMNS, NUMERIC_COLUMNS, generated_columns, role_names
from pipelines.params.data import DataConfig, GenerateConfig
from pipelines.params.gate import EvaluateConfig, RegisterConfig
from pipelines.params.monitor import MonitorConfig
from pipelines.params.shard import BucketConfig, ShardConfig, SplitConfig, WindowConfig
from pipelines.params.train import TrainConfig, check_attention_memory, train_from_dict
from pipelines.params.tune import TuneConfig
from seqcore.config import ConfigError, build, fail, only_keys
from seqcore.features import FeatureConfig
from seqcore.schema import SchemaConfig


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    seed: int = 7
    """Seed of the generator, the split hashes, batch order and weight initialisation."""
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    """``seqops tune``'s search; no stage of dvc.yaml reads it."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """``seqops monitor``'s thresholds: drift (``data_checks.drift``) and delayed-label
    performance (``pipelines.performance``)."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Sections owned by later stages (train, evaluate, ...), kept raw until they are typed."""


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    raw = dict(raw or {})
    data_raw = dict(raw.get("data") or {})
    only_keys("data", data_raw, DataConfig)
    data = build(
        DataConfig,
        "data",
        data_raw,
        schema=build(SchemaConfig, "data.schema", data_raw.get("schema")),
        generate=build(GenerateConfig, "data.generate", data_raw.get("generate")),
    )
    validate = build(ValidateConfig, "validate", raw.get("validate"))
    shard_raw = dict(raw.get("shard") or {})
    only_keys("shard", shard_raw, ShardConfig)
    shard = build(
        ShardConfig,
        "shard",
        shard_raw,
        split=build(SplitConfig, "shard.split", shard_raw.get("split")),
        window=build(WindowConfig, "shard.window", shard_raw.get("window")),
        buckets=build(BucketConfig, "shard.buckets", shard_raw.get("buckets")),
        features=build(FeatureConfig, "shard.features", shard_raw.get("features")),
    )
    train = train_from_dict(raw.get("train"))
    evaluate = build(EvaluateConfig, "evaluate", raw.get("evaluate"))
    register = build(RegisterConfig, "register", raw.get("register"))
    tune = build(TuneConfig, "tune", raw.get("tune"))
    monitor = build(MonitorConfig, "monitor", raw.get("monitor"))
    known = {
        "seed",
        "data",
        "validate",
        "shard",
        "train",
        "evaluate",
        "register",
        "tune",
        "monitor",
    }
    extra = {k: v for k, v in raw.items() if k not in known}
    seed = raw.get("seed", 7)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise fail("seed", seed, "expected an integer")
    params = Params(
        seed=seed,
        data=data,
        validate=validate,
        shard=shard,
        train=train,
        evaluate=evaluate,
        register=register,
        tune=tune,
        monitor=monitor,
        extra=extra,
    )
    check_across_sections(params)
    return params


# The column each task learns from, by its data.schema key.
TASK_TARGETS = {"classify": "label", "next_event": "next_event", "forecast": "forecast"}


def check_across_sections(params: Params) -> None:
    """What no single section can check: settings that must agree across sections. Checked
    when params are loaded, so a mismatch stops ``dvc repro`` before ingest, not after an
    hour of training."""
    schema, task = params.data.schema, params.train.task
    target = TASK_TARGETS[task]
    if not getattr(schema, target):
        mapped = [t for t, key in TASK_TARGETS.items() if getattr(schema, key)]
        others = f"; or a task whose target is mapped: {', '.join(mapped)}" if mapped else ""
        raise fail(
            "train.task",
            task,
            f"needs data.schema.{target} (the column it learns to predict), which is not set; "
            f"map it in data.schema{others}",
        )
    unknown = [c for c in params.evaluate.slices if c not in schema.categorical]
    if unknown:
        known = ", ".join(schema.categorical) or "none"
        raise fail(
            "evaluate.slices",
            list(params.evaluate.slices),
            f"{', '.join(map(repr, unknown))} not in data.schema.categorical ({known}); "
            "slice by categorical columns only, or set evaluate.slices: []",
        )
    if params.train.num_workers > params.shard.max_workers:
        raise fail(
            "train.num_workers",
            params.train.num_workers,
            f"exceeds shard.max_workers={params.shard.max_workers}: each worker reads its own "
            "part files; raise shard.max_workers or lower train.num_workers",
        )
    check_attention_memory(params.train, params.shard.window.window_len)
    ranked = {"classify": "val_accuracy", "next_event": "val_top1", "forecast": "val_mae"}[task]
    if params.tune.metric not in ("val_loss", ranked):
        raise fail(
            "tune.metric",
            params.tune.metric,
            f"train.task={task} reports val_loss and {ranked} on the validation split",
        )
    split = params.shard.split
    if split.method == "column" and split.column in schema.source_columns:
        raise fail(
            "shard.split.column",
            split.column,
            "is mapped to a role in data.schema; the split column must be a column of its own",
        )
    if params.data.source == "generate":
        if split.method == "column":
            raise fail(
                "shard.split.method",
                "column",
                "generated data has no split column; use entity or time, or data.source: file",
            )
        check_generated_schema(schema)


def check_generated_schema(schema: SchemaConfig) -> None:
    """With ``data.source: generate``, every column the schema maps must be one the generator
    emits: it names the key, entity, time, seq and label columns as the schema says, but its
    features are fixed (``pipelines.generate.FEATURE_COLUMNS``)."""
    numeric = list(NUMERIC_COLUMNS)
    categorical = [c for c in FEATURE_COLUMNS if c not in NUMERIC_COLUMNS]
    columns = ", ".join(generated_columns(role_names(schema)))
    produces = (
        f"data.source: generate produces the columns {columns} (numeric: {', '.join(numeric)}; "
        f"categorical: {', '.join(categorical)})"
    )
    fix = "map only those, or set data.source: file to read your own table"
    if schema.arrival is not None:
        raise fail(
            "data.schema.arrival",
            schema.arrival,
            f"{produces}, and no arrival column: generated rows are produced in arrival order; "
            "set data.schema.arrival: null",
        )
    for key, allowed in (
        ("numeric", numeric),
        ("categorical", categorical),
        ("next_event", categorical),
        ("forecast", numeric),
    ):
        value = getattr(schema, key)
        mapped = [value] if isinstance(value, str) else list(value or ())
        wrong = [c for c in mapped if c not in allowed]
        if wrong:
            where = [
                f"{c!r} is {'categorical' if c in categorical else 'numeric'} there"
                if c in FEATURE_COLUMNS
                else f"no column {c!r}"
                for c in wrong
            ]
            shown = value if isinstance(value, str) else list(value)
            raise fail(f"data.schema.{key}", shown, f"{'; '.join(where)}: {produces}; {fix}")
    for key in ("entity", "time", "seq", "label"):
        value = getattr(schema, key)
        if value in FEATURE_COLUMNS:
            raise fail(
                f"data.schema.{key}",
                value,
                f"{value!r} is a feature column of generated data ({produces}); name the "
                f"{key} column something else",
            )


def merge_params(raw: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides into raw params (in place, and returned): a mapping merges key by key into
    the mapping it meets, anything else replaces; how tests and benchmarks vary params.yaml."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(raw.get(key), dict):
            merge_params(raw[key], value)
        else:
            raw[key] = value
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"params: {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"params: {path} is not valid YAML: {exc}") from None
    return params_from_dict(raw)


def params_schema() -> dict[str, Any]:
    """The JSON Schema of params.yaml (the committed ``params.schema.json``)."""
    from pipelines.params.schema import json_schema

    return json_schema(Params, "seqops params.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check params.yaml, or print its JSON Schema (params.schema.json)."
    )
    parser.add_argument("--params", default="params.yaml", help="the file to check")
    parser.add_argument(
        "--schema",
        action="store_true",
        help="print the JSON Schema instead: python -m pipelines.config --schema > params.schema.json",
    )
    args = parser.parse_args(argv)
    if args.schema:
        from pipelines.params.schema import schema_text

        sys.stdout.write(schema_text(params_schema()))
        return 0
    try:
        load_params(args.params)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.params}: valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
