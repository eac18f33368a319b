"""The shard manifest: the typed, versioned contract between the stages and serving.

The shard stage writes ``data/shards/manifest.json`` (docs/architecture.md §3); training
reads its splits and sizes, evaluation its buckets and vocabularies, and every logged model
carries it so that the model alone can score raw events (§5, §7). One class holds it, built
and validated in one place (:meth:`Manifest.from_json`): a missing key or a wrong type fails
at load with the key's path, not later and far away in a reader. Optional parts are explicit:
a target the data does not have is ``None``.

``to_json`` writes the same JSON that ``from_json`` reads, key for key, so the content hash
over the written manifest stays the one that lineage tags and served responses repeat.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from seqcore.config import to_jsonable
from seqcore.features import FeatureSpec
from seqcore.profile import Hist, Profile
from seqcore.schema import SchemaConfig
from seqcore.store import POINTER, is_url, locate

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DOMAIN_POLICIES = ("refuse", "oov")
"""What the scoring endpoint does with a category outside its declared domain: ``refuse`` it
(422) or score it as an ``oov`` (out-of-vocabulary) category."""
SPLITS = ("train", "val", "test")
T = TypeVar("T")


class ManifestError(ValueError):
    """A manifest is missing, of another format, or lacks or mistypes a key (named)."""


def part_path(split: str, bound: int, k: int) -> str:
    """Where part ``k`` of bucket ``bound`` of ``split`` lies, relative to the shard folder."""
    return f"{split}/bucket={bound}/part-{k:05d}.parquet"


# --------------------------------------------------------------------------- reading helpers


def _get(raw: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: expected an object, found {type(raw).__name__}")
    if key not in raw:
        raise ManifestError(f"{where}.{key}: missing")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):  # no field holds a bool
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ManifestError(f"{where}.{key}: expected {names}, found {value!r}")
    return value


def _read(cls: type[T], raw: Mapping[str, Any], where: str, **given: Any) -> T:
    """A dataclass from JSON: every field not ``given`` is required and checked against its
    annotated type (``int``, ``float``, ``str``; a ``tuple`` is read from a list)."""
    values = dict(given)
    for name, hint in typing.get_type_hints(cls).items():
        if name in values:
            continue
        if typing.get_origin(hint) is tuple:
            values[name] = tuple(_get(raw, name, where, list))
        elif hint is float:  # JSON writes 0.0 as 0
            values[name] = float(_get(raw, name, where, (int, float)))
        else:
            values[name] = _get(raw, name, where, hint)
    return cls(**values)


def _optional(raw: Mapping[str, Any], key: str, where: str, cls: type[T]) -> T | None:
    """An optional part: ``None`` when absent or null, else read as :func:`_read` reads it."""
    value = raw.get(key)
    return None if value is None else _read(cls, value, f"{where}.{key}")


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class BucketEntry:
    """One length bucket of one split: token counts and its part files."""

    examples: int
    real_tokens: int
    padded_tokens: int
    pad_fraction: float
    parts: tuple[str, ...]


@dataclass(frozen=True)
class SplitEntry:
    """One split: counts over all its buckets, and each bucket by its padded length."""

    examples: int
    real_tokens: int
    padded_tokens: int
    pad_fraction: float
    entities: int
    buckets: Mapping[int, BucketEntry]
    """Padded length L -> bucket, in increasing L."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> SplitEntry:
        buckets = _get(raw, "buckets", where, dict)
        try:
            bounds = sorted(int(b) for b in buckets)
        except ValueError:
            raise ManifestError(f"{where}.buckets: keys must be padded lengths") from None
        entries = {b: _read(BucketEntry, buckets[str(b)], f"{where}.buckets.{b}") for b in bounds}
        return _read(cls, raw, where, buckets=entries)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["buckets"] = {str(b): to_jsonable(e) for b, e in self.buckets.items()}
        return out


@dataclass(frozen=True)
class LabelTarget:
    """classify: the entity label column and its classes, as the user's own values.

    A label may be a string, an integer or a boolean; the shards hold each example's class
    *index* (its position in :attr:`classes`, ``missing`` when it has none), and everything
    that shows a prediction names the class by its value (:meth:`name`). Classes are the
    distinct labels of the training rows, sorted, so the same data gives the same indices;
    an example of another split whose label training never saw counts as unlabelled.
    """

    column: str
    classes: tuple[Any, ...]
    """Label values in class-index order (JSON strings, integers or booleans)."""
    missing: int = -1
    """Class index of an example without a label."""
    unlabeled: Mapping[str, int] = field(default_factory=dict)
    """Per split: examples without a (known) label, left out of classify training and metrics."""

    @property
    def num_classes(self) -> int:
        """Outputs a classifier needs: one per class, at least two."""
        return max(2, len(self.classes))

    def name(self, index: int) -> Any:
        """The label value of class ``index`` (a placeholder for the padding class of a
        one-class training set, which no data can predict)."""
        return self.classes[index] if 0 <= index < len(self.classes) else f"<class {index}>"

    @property
    def names(self) -> tuple[Any, ...]:
        """The value of every output of a classifier, in output order."""
        return tuple(self.name(i) for i in range(self.num_classes))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> LabelTarget:
        unlabeled = raw.get("unlabeled") or {}  # absent in manifests written before it existed
        if not isinstance(unlabeled, Mapping):
            raise ManifestError(f"{where}.unlabeled: expected an object, found {unlabeled!r}")
        classes = tuple(_get(raw, "classes", where, list))
        bad = [c for c in classes if not isinstance(c, str | int | bool)]
        if bad or len(set(classes)) != len(classes):
            raise ManifestError(
                f"{where}.classes: expected distinct strings, integers or booleans, found {classes!r}"
            )
        return cls(
            column=_get(raw, "column", where, str),
            classes=classes,
            missing=_get(raw, "missing", where, int),
            unlabeled={str(k): int(v) for k, v in unlabeled.items()},
        )


@dataclass(frozen=True)
class NextEventTarget:
    """next_event: the categorical column whose next value is predicted at each step."""

    column: str
    vocab_size: int
    no_target: int = 0


@dataclass(frozen=True)
class ForecastTarget:
    """forecast: the numeric column predicted ``horizon`` steps ahead, and how to map the
    standardised prediction back to its units."""

    column: str
    horizon: int
    transform: str
    mean: float
    std: float
    inverse: str = "x = z * std + mean; then sign(x) * expm1(|x|) if transform is log1p"
    no_target: str = "NaN"


@dataclass(frozen=True)
class Targets:
    """What the shards can train: each target is None when the schema maps no column."""

    label: LabelTarget | None = None
    next_event: NextEventTarget | None = None
    forecast: ForecastTarget | None = None

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> Targets:
        return cls(
            label=None
            if raw.get("label") is None
            else LabelTarget.from_json(raw["label"], f"{where}.label"),
            next_event=_optional(raw, "next_event", where, NextEventTarget),
            forecast=_optional(raw, "forecast", where, ForecastTarget),
        )


@dataclass(frozen=True)
class WindowInfo:
    """The windowing policy the shards were cut with (``shard.window``) and its longest
    example, which is also the window a scorer keeps per entity."""

    policy: str
    length: int
    stride: int
    max_len: int
    min_length: int
    window_len: int


@dataclass(frozen=True)
class InputInfo:
    """The validated events the shards were built from."""

    events: str
    sha256: str
    events_count: int
    entities: int
    reordered_entities: int


@dataclass(frozen=True)
class DataContract:
    """The validate stage's rules for single events, as ``validate`` stood when the shards were
    built: what the scoring endpoint holds a served model's requests to (docs/architecture.md
    §2, §7). The rules themselves live in ``data_checks.rules``; this is their configuration.

    A rule applies only where its check is in :attr:`checks`. Checks that need an entity's
    history or the whole table (order, duplicates, gaps, lateness, labels) are not here: a
    request is not a table, and its types are checked by the request validator.
    """

    checks: tuple[str, ...]
    """The enabled checks among those a single event can fail (``validate.checks.<name>``)."""
    ranges: Mapping[str, tuple[float | None, float | None]]
    """value_ranges: inclusive [min, max] per numeric feature (``validate.ranges``); None for an
    open side."""
    domains: Mapping[str, tuple[str, ...]]
    """categorical_domain: allowed values per categorical feature (``validate.domains``), as the
    strings a request carries."""
    domain_policy: str
    """categorical_domain at the endpoint: one of ``DOMAIN_POLICIES``
    (``validate.checks.categorical_domain.unseen_at_serving``)."""
    time_floor: datetime
    """time_floor: events before this time are refused (``validate.checks.time_floor.floor``)."""
    max_ahead_s: float
    """future_timestamps: seconds an event may lie ahead of the server's clock
    (``validate.checks.future_timestamps.max_ahead``)."""

    def applies(self, check: str) -> bool:
        return check in self.checks

    def to_json(self) -> dict[str, Any]:
        return {
            "checks": list(self.checks),
            "ranges": {c: list(bounds) for c, bounds in self.ranges.items()},
            "domains": {c: list(values) for c, values in self.domains.items()},
            "domain_policy": self.domain_policy,
            "time_floor": to_jsonable(self.time_floor),
            "max_ahead_s": self.max_ahead_s,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> DataContract:
        checks = _get(raw, "checks", where, list)
        if not all(isinstance(c, str) for c in checks):
            raise ManifestError(f"{where}.checks: expected check names, found {checks!r}")
        ranges = {}
        for column, bounds in _get(raw, "ranges", where, dict).items():
            ok = isinstance(bounds, list) and len(bounds) == 2
            if not ok or not all(_number_or_none(b) for b in bounds):
                raise ManifestError(
                    f"{where}.ranges.{column}: expected [min, max], found {bounds!r}"
                )
            ranges[column] = (bounds[0], bounds[1])
        domains = {}
        for column, values in _get(raw, "domains", where, dict).items():
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ManifestError(f"{where}.domains.{column}: expected strings, found {values!r}")
            domains[column] = tuple(values)
        policy = _get(raw, "domain_policy", where, str)
        if policy not in DOMAIN_POLICIES:
            raise ManifestError(
                f"{where}.domain_policy: expected one of {', '.join(DOMAIN_POLICIES)}, "
                f"found {policy!r}"
            )
        floor_text = _get(raw, "time_floor", where, str)
        try:
            floor = datetime.fromisoformat(floor_text.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError(
                f"{where}.time_floor: expected an ISO-8601 time, found {floor_text!r}"
            ) from None
        return cls(
            checks=tuple(checks),
            ranges=ranges,
            domains=domains,
            domain_policy=policy,
            time_floor=floor if floor.tzinfo else floor.replace(tzinfo=UTC),
            max_ahead_s=float(_get(raw, "max_ahead_s", where, (int, float))),
        )


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


# --------------------------------------------------------------------------- the manifest


def _profile(raw: Any, where: str) -> Profile | None:
    if raw is None:
        return None
    try:
        return Profile.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"{where}: unreadable: {exc}") from None


def _scores(raw: Any, where: str) -> Hist | None:
    if raw is None:
        return None
    try:
        return Hist.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: unreadable: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """Everything needed to read the shards and to rebuild their preprocessing at serving."""

    schema: SchemaConfig
    features: FeatureSpec
    targets: Targets
    bucket_boundaries: tuple[int, ...]
    buckets_derived: str
    """How the boundaries were chosen (explicit, quantile or optimal over train lengths)."""
    window: WindowInfo
    split: Mapping[str, Any]
    """The split rule and its parameters (method, fractions and salt, or time cutoffs)."""
    splits: Mapping[str, SplitEntry]
    leakage: Mapping[str, Any]
    """The split-leakage check's report (``data_checks.leakage``)."""
    input: InputInfo
    max_workers: int
    """Part files per split and bucket: the most training workers the shards can feed."""
    seed: int
    contract: DataContract | None = None
    """The data contract's rules for served requests; None in manifests written before it
    existed, whose models are served with type checks only."""
    profile: Profile | None = None
    """The training split's sequence profile (``seqcore.profile``), the reference drift is
    measured against; None in manifests written before it existed."""
    files: Mapping[str, str] = field(default_factory=dict)
    """sha256 of every shard file, by path relative to the shard folder."""
    content_hash: str = ""
    """One hash over every shard file and the rest of the manifest ("" until computed)."""
    scores: Hist | None = None
    """The model's scores of the validation split (``seqcore.profile.score_hist``): added by
    the train stage to the model's copy of the manifest, so the reference travels with the
    model. Not covered by ``content_hash``, which names the shards the model learned from."""
    format_version: int = FORMAT_VERSION

    @property
    def window_len(self) -> int:
        return self.window.window_len

    @property
    def split_method(self) -> str:
        return str(self.split.get("method", "?"))

    def vocab(self, column: str) -> tuple[str, ...]:
        """A categorical column's training vocabulary (ids from 2; 0 is PAD, 1 is OOV)."""
        return tuple(self.features.vocab[column])

    # ------------------------------------------------------------------ JSON

    def body(self) -> dict[str, Any]:
        """The manifest as JSON types, without ``content_hash`` (what the hash covers)."""
        return {
            "format_version": self.format_version,
            "schema": to_jsonable(self.schema),
            "features": self.features.to_dict(),
            "targets": to_jsonable(self.targets),
            "buckets": {
                "boundaries": list(self.bucket_boundaries),
                "derived": self.buckets_derived,
            },
            "window": to_jsonable(self.window),
            "split": to_jsonable(self.split),
            "splits": {name: entry.to_json() for name, entry in self.splits.items()},
            "leakage": to_jsonable(self.leakage),
            "input": to_jsonable(self.input),
            "max_workers": self.max_workers,
            "seed": self.seed,
            # Absent, not null, when there is none: an older manifest reads back as written.
            **({} if self.contract is None else {"contract": self.contract.to_json()}),
            **({} if self.profile is None else {"profile": self.profile.to_dict()}),
            "files": dict(self.files),
        }

    def to_json(self) -> dict[str, Any]:
        scores = {} if self.scores is None else {"scores": self.scores.to_dict()}
        return {**self.body(), **scores, "content_hash": self.content_hash}

    @property
    def reference(self) -> Profile | None:
        """What drift is measured against: the training profile with the model's validation
        scores (``scores``) when the manifest is a model's; None before profiles existed."""
        if self.profile is None:
            return None
        return dataclasses.replace(self.profile, score=self.scores)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], source: str = "manifest") -> Manifest:
        """Build and validate; errors name ``source`` and the key's path."""
        where = source
        version = raw.get("format_version") if isinstance(raw, Mapping) else None
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"{where}: shard format {version!r}, expected {FORMAT_VERSION} "
                "(rebuild the shards with this version: dvc repro shard)"
            )
        schema_raw = _get(raw, "schema", where, dict)
        try:
            schema = SchemaConfig(
                **{k: v for k, v in schema_raw.items() if k in SchemaConfig.__dataclass_fields__}
            )
            features = FeatureSpec.from_dict(_get(raw, "features", where, dict))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: schema or features unreadable: {exc}") from None
        buckets = _get(raw, "buckets", where, dict)
        splits_raw = _get(raw, "splits", where, dict)
        manifest = cls(
            schema=schema,
            features=features,
            targets=Targets.from_json(_get(raw, "targets", where, dict), f"{where}.targets"),
            bucket_boundaries=tuple(_get(buckets, "boundaries", f"{where}.buckets", list)),
            buckets_derived=str(buckets.get("derived", "")),
            window=_read(WindowInfo, _get(raw, "window", where, dict), f"{where}.window"),
            split=dict(_get(raw, "split", where, dict)),
            splits={
                name: SplitEntry.from_json(entry, f"{where}.splits.{name}")
                for name, entry in splits_raw.items()
            },
            leakage=dict(raw.get("leakage") or {}),
            input=_read(InputInfo, _get(raw, "input", where, dict), f"{where}.input"),
            max_workers=_get(raw, "max_workers", where, int),
            seed=_get(raw, "seed", where, int),
            contract=None
            if raw.get("contract") is None
            else DataContract.from_json(raw["contract"], f"{where}.contract"),
            profile=_profile(raw.get("profile"), f"{where}.profile"),
            files=dict(raw.get("files") or {}),
            content_hash=str(raw.get("content_hash") or ""),
            scores=_scores(raw.get("scores"), f"{where}.scores"),
        )
        manifest._check(where)
        return manifest

    def _check(self, where: str) -> None:
        """Facts that tie the parts together, checked once here instead of in every reader."""
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ManifestError(f"{where}.splits: missing {', '.join(missing)}")
        for name, target in (("next_event", self.targets.next_event),):
            if target is not None and target.column not in self.features.categorical:
                raise ManifestError(
                    f"{where}.targets.{name}.column: {target.column!r} is not a categorical "
                    "feature of this manifest"
                )
        forecast = self.targets.forecast
        if forecast is not None and forecast.column not in self.features.numeric:
            raise ManifestError(
                f"{where}.targets.forecast.column: {forecast.column!r} is not a numeric "
                "feature of this manifest"
            )
        if self.max_workers < 1:
            raise ManifestError(f"{where}.max_workers: must be >= 1, found {self.max_workers}")
        if self.contract is not None:
            for part, kind, columns in (
                ("ranges", "numeric", self.features.numeric),
                ("domains", "categorical", self.features.categorical),
            ):
                stray = [c for c in getattr(self.contract, part) if c not in columns]
                if stray:
                    raise ManifestError(
                        f"{where}.contract.{part}: {', '.join(map(repr, stray))} not a {kind} "
                        "feature of this manifest"
                    )

    # ------------------------------------------------------------------ files

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a ``manifest.json`` file, or the one inside a shard folder (local, or a
        snapshot on an object store: ``seqcore.store.locate``)."""
        if is_url(str(path)) or (Path(path) / POINTER).is_file():
            folder = locate(path)
            where, read = folder.show(MANIFEST_FILE), lambda: folder.read_bytes(MANIFEST_FILE)
        else:
            file = Path(path) / MANIFEST_FILE if Path(path).is_dir() else Path(path)
            where, read = str(file), file.read_bytes
        try:
            raw = json.loads(read())
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: not found (run the shard stage first)") from None
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not valid JSON: {exc}") from None
        return cls.from_json(raw, where)


def load_manifest(shard_dir: str | Path) -> Manifest:
    """The shard folder's manifest, validated; refuses a format this code does not know."""
    return Manifest.read(shard_dir)
