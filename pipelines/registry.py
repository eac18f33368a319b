"""Registry operations on the MLflow Model Registry: versions, aliases, an audited history.

Everything goes through the MLflow registry (aliases, tags, descriptions; MLflow 3 has no
stages), so the MLflow UI shows exactly the state this module and the CLI see. The
``champion`` alias marks the serving model; ``challenger`` marks the newest candidate. Each
promotion or rollback is recorded three ways: the alias move itself, tags on the versions
involved, and a bounded JSON history on the registered model (``seqops.champion_history``),
which is what ``rollback`` reads to find the previous champion.

A promotion respects the gate: a version whose recorded gate decision (``gate.decision``, set
by the register stage) is not a pass becomes champion only with an explicit override and a
reason, recorded in the history and as ``seqops.gate_override*`` tags on the version. Each
version carries the sha256 of the files a load reads (``seqops.files_sha256``, copied from the
logged model when it is registered; docs/architecture.md §10); ``seal`` records them on a
version that has none, and is audited like a promotion.

Writes that belong together run inside ``Registry.atomic()``: each write records how to undo
itself, and if any write in the block fails the recorded ones are undone in reverse order
(aliases and tags restored, a new version deleted, or tagged ``gate.decision=incomplete`` when
it cannot be deleted), so a failure never leaves a half-made decision in the registry.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from seqcore.loading import FILES_TAG, ModelLoadError, file_record, logged_record

log = logging.getLogger("seqops.registry")

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "seqops.champion_history"
HISTORY_LIMIT = 20
TAG_VALUE_LIMIT = 4900
"""Characters kept of a tag value (the SQL stores hold 5000)."""
INCOMPLETE = ("gate.decision", "incomplete")
"""The tag a new version gets when a failed registration cannot delete it."""
GATE_PROMOTED = "promoted"
GATE_PASSED = "passed (auto_promote off: champion unchanged)"
GATE_REJECTED = "rejected"
"""The register stage's ``gate.decision`` values; only the first two let a version be promoted
without an override."""
OVERRIDE_TAG = "seqops.gate_override"
KEY_METRICS = (
    "roc_auc",
    "accuracy",
    "macro_f1",
    "log_loss",
    "top1_accuracy",
    "perplexity",
    "mae",
    "rmse",
)


class RegistryError(LookupError):
    """A registry request names something that does not exist or cannot be done."""


def gate_passed(decision: str | None) -> bool:
    return decision in (GATE_PROMOTED, GATE_PASSED)


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True)
class VersionInfo:
    version: int
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    created: int

    def metric(self, name: str) -> float | None:
        value = self.tags.get(f"metric.{name}")
        return None if value in (None, "", "null") else float(value)


def logged_model_id(model_uri: str) -> str | None:
    """``models:/m-...`` (a model logged in MLflow 3) -> its id; None for a registered
    model's ``models:/<name>/<version>`` or ``@alias`` and for any other URI."""
    rest = model_uri.removeprefix("models:/")
    if rest == model_uri or not rest.startswith("m-") or "/" in rest or "@" in rest:
        return None
    return rest


def tag_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:TAG_VALUE_LIMIT]


def _info(mv: Any) -> VersionInfo:
    return VersionInfo(
        version=int(mv.version),
        run_id=str(mv.run_id or ""),
        aliases=tuple(sorted(getattr(mv, "aliases", []) or [])),
        tags=dict(mv.tags or {}),
        created=int(mv.creation_timestamp or 0),
    )


class Registry:
    """Thin, audited operations over ``MlflowClient`` for one registered model."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name
        self._journal: list[tuple[str, Callable[[], None]]] | None = None

    # ------------------------------------------------------------------ reads

    def exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            return False
        return True

    def require(self) -> None:
        if not self.exists():
            known = sorted(m.name for m in self.client.search_registered_models())
            raise RegistryError(
                f"registered model {self.name!r} not found; known models: {', '.join(known) or 'none'}"
            )

    def versions(self) -> list[VersionInfo]:
        self.require()
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(
            (_info(self.client.get_model_version(self.name, mv.version)) for mv in found),
            key=lambda v: v.version,
        )

    def version(self, version: int | str) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        self.require()
        try:
            return _info(self.client.get_model_version(self.name, str(int(version))))
        except (MlflowException, ValueError):
            known = ", ".join(str(v.version) for v in self.versions()) or "none"
            raise RegistryError(
                f"model {self.name!r} has no version {version!r}; versions: {known}"
            ) from None

    def alias(self, alias: str) -> VersionInfo | None:
        from mlflow.exceptions import MlflowException

        if not self.exists():
            return None
        try:
            return _info(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException:
            return None

    def history(self) -> list[dict[str, Any]]:
        if not self.exists():
            return []
        raw = self.client.get_registered_model(self.name).tags.get(HISTORY_TAG)
        return json.loads(raw) if raw else []

    # ------------------------------------------------------------------ writes

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Registry writes in this block all land, or the ones made are undone (then the error
        is raised again). Blocks nest: the outermost one undoes."""
        if self._journal is not None:
            yield
            return
        self._journal = []
        try:
            yield
        except BaseException:
            journal, self._journal = self._journal, None
            for what, undo in reversed(journal):
                try:
                    undo()
                except Exception as exc:  # keep undoing the rest; the original error wins
                    log.error("registry %s: could not undo %s: %s", self.name, what, exc)
            raise
        finally:
            self._journal = None

    def _on_failure(self, what: str, undo: Callable[[], None]) -> None:
        if self._journal is not None:
            self._journal.append((what, undo))

    def _set_alias(self, alias: str, version: int | str) -> None:
        previous = self.alias(alias)

        def restore() -> None:
            if previous is None:
                self.client.delete_registered_model_alias(self.name, alias)
            else:
                self.client.set_registered_model_alias(self.name, alias, str(previous.version))

        self._on_failure(f"alias {alias} -> v{version}", restore)
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def register(
        self, model_uri: str, run_id: str, description: str, tags: dict[str, Any]
    ) -> VersionInfo:
        """A new version from a logged model, created with its description and all its tags
        in one request; it becomes the ``challenger``. Undone if a later write of an
        enclosing ``atomic()`` block fails. The logged model's record of its files' sha256 is
        copied to the version, which is what loading ``models:/<name>/<version>`` checks."""
        from mlflow.exceptions import MlflowException

        tags = {**logged_record(self.client, model_uri), **tags}
        with self.atomic():
            if not self.exists():
                with contextlib.suppress(MlflowException):  # created concurrently
                    self.client.create_registered_model(
                        self.name, description="seqops sequence model"
                    )
                    self._on_failure(f"registered model {self.name}", self._delete_if_empty)
            mv = self.client.create_model_version(
                self.name,
                source=model_uri,
                run_id=run_id,
                # An MLflow server refuses a models:/<id> source without its model_id (a
                # SQLite store takes either); it also links the version to the logged model.
                model_id=logged_model_id(model_uri),
                description=description,
                tags={k: tag_text(v) for k, v in tags.items()},
            )
            self._on_failure(f"version {mv.version}", lambda: self._withdraw(mv.version))
            self._set_alias(CHALLENGER, mv.version)
            return self.version(mv.version)

    def _withdraw(self, version: int | str) -> None:
        """Delete a version made by a failed block; tag it incomplete if it cannot be."""
        try:
            self.client.delete_model_version(self.name, str(version))
        except Exception:
            self.client.set_model_version_tag(self.name, str(version), *INCOMPLETE)
            raise

    def _delete_if_empty(self) -> None:
        if not self.client.search_model_versions(f"name = '{self.name}'"):
            self.client.delete_registered_model(self.name)

    def set_tags(self, version: int, tags: dict[str, Any]) -> None:
        before = self.version(version).tags if self._journal is not None else {}
        for key, value in tags.items():
            old = before.get(key)

            def restore(key: str = key, old: str | None = old) -> None:
                if old is None:
                    self.client.delete_model_version_tag(self.name, str(version), key)
                else:
                    self.client.set_model_version_tag(self.name, str(version), key, old)

            self._on_failure(f"tag {key} of v{version}", restore)
            self.client.set_model_version_tag(self.name, str(version), key, tag_text(value))

    def _append_history(self, entry: dict[str, Any]) -> None:
        previous = self.client.get_registered_model(self.name).tags.get(HISTORY_TAG)
        history = [*(json.loads(previous) if previous else []), entry][-HISTORY_LIMIT:]

        def restore() -> None:
            if previous is None:
                self.client.delete_registered_model_tag(self.name, HISTORY_TAG)
            else:
                self.client.set_registered_model_tag(self.name, HISTORY_TAG, previous)

        self._on_failure("champion history", restore)
        self.client.set_registered_model_tag(
            self.name, HISTORY_TAG, json.dumps(history, sort_keys=True)
        )

    def promote(
        self,
        version: int,
        reason: str,
        evidence: dict[str, Any] | None = None,
        action: str = "promote",
        *,
        override_gate: bool = False,
    ) -> dict[str, Any]:
        """Move ``champion`` to ``version`` and record who, when, why and what it replaced;
        all of it or, if a write fails, none of it. A version the gate did not pass (rejected,
        or never evaluated) needs ``override_gate``, which is recorded with the reason; a
        rollback returns to a version that was champion before and is not gated again."""
        target = self.version(version)
        if not reason or not reason.strip():
            raise RegistryError("a promotion needs a reason (it is recorded in the registry)")
        decision = target.tags.get("gate.decision")
        overridden = action == "promote" and not gate_passed(decision)
        if overridden and not override_gate:
            raise RegistryError(self._gate_refusal(target))
        with self.atomic():
            return self._promote(target, reason, evidence, action, overridden)

    def _gate_refusal(self, target: VersionInfo) -> str:
        decision = target.tags.get("gate.decision")
        if decision is None:
            found = (
                "has no gate decision (gate.decision): it was not registered by the register "
                "stage, so the promotion gate never evaluated it"
            )
        else:
            reasons = target.tags.get("gate.reasons") or "none recorded"
            at = target.tags.get("gate.decided_at", "?")
            found = (
                f"was not passed by the promotion gate: {decision!r} at {at}; reasons: {reasons}"
            )
        return (
            f"version {target.version} of model {self.name!r} {found}. Champion unchanged; to "
            f"promote it anyway: seqops registry promote {target.version} --override-gate "
            '--reason "..." (the override is recorded in the registry)'
        )

    def _promote(
        self,
        target: VersionInfo,
        reason: str,
        evidence: dict[str, Any] | None,
        action: str,
        overridden: bool = False,
    ) -> dict[str, Any]:
        previous = self.alias(CHAMPION)
        entry = {
            "action": action,
            "version": target.version,
            "previous": previous.version if previous else None,
            "reason": reason.strip(),
            "by": actor(),
            "at": now_iso(),
        }
        if overridden:  # the decision the promotion went against, "none" if never evaluated
            entry["gate_override"] = target.tags.get("gate.decision", "none")
        if evidence:
            entry["evidence"] = evidence
        self._set_alias(CHAMPION, target.version)
        tags = {
            "champion.since": entry["at"],
            "champion.reason": entry["reason"],
            "champion.by": entry["by"],
        }
        if overridden:
            tags.update({
                OVERRIDE_TAG: "true",
                f"{OVERRIDE_TAG}_decision": entry["gate_override"],
                f"{OVERRIDE_TAG}_reason": entry["reason"],
                f"{OVERRIDE_TAG}_by": entry["by"],
                f"{OVERRIDE_TAG}_at": entry["at"],
            })  # fmt: skip
        self.set_tags(target.version, tags)
        if previous and previous.version != target.version:
            self.set_tags(
                previous.version,
                {"champion.replaced_at": entry["at"], "champion.replaced_by": str(target.version)},
            )
        self._append_history({k: v for k, v in entry.items() if k != "evidence"})
        return entry

    def rollback(self, reason: str) -> dict[str, Any]:
        """Champion back to the version that held it before the current one."""
        current = self.alias(CHAMPION)
        if current is None:
            raise RegistryError(f"model {self.name!r} has no champion to roll back")
        # Walk the promotion chain, not the alias moves: rolling back twice goes two steps
        # back instead of toggling between the last two champions.
        for entry in reversed(self.history()):
            if entry.get("version") == current.version and entry.get("action") == "promote":
                if entry.get("previous") is None:
                    break
                return self.promote(int(entry["previous"]), reason, action="rollback")
        raise RegistryError(
            f"model {self.name!r}: no earlier champion recorded before version {current.version}"
        )

    def seal(self, version: int, reason: str, replace: bool = False) -> dict[str, Any]:
        """Record the sha256 of ``version``'s current files (those a load reads), after
        checking that the installed code builds a scorer from them; for a version registered
        without a record (before seqops recorded them, or outside the register stage).
        Audited like a promotion. A version that has a record keeps it unless ``replace``."""
        target = self.version(version)
        if not reason or not reason.strip():
            raise RegistryError("sealing needs a reason (it is recorded in the registry)")
        if FILES_TAG in target.tags and not replace:
            raise RegistryError(
                f"version {target.version} of model {self.name!r} already has a record of its "
                f"files ({FILES_TAG}); --replace records the files as they are now instead"
            )
        try:
            record = file_record(f"models:/{self.name}/{target.version}", self.client.tracking_uri)
        except ModelLoadError as exc:
            raise RegistryError(f"cannot seal: {exc}") from None
        entry = {
            "action": "seal",
            "version": target.version,
            "reason": reason.strip(),
            "by": actor(),
            "at": now_iso(),
            "replaced": FILES_TAG in target.tags,
        }
        with self.atomic():
            self.set_tags(
                target.version,
                {**record, "seqops.sealed_by": entry["by"], "seqops.sealed_at": entry["at"],
                 "seqops.seal_reason": entry["reason"]},
            )  # fmt: skip
            self._append_history(entry)
        return {**entry, "files": json.loads(record[FILES_TAG])}

    # ------------------------------------------------------------------ views

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for v in self.versions():
            row: dict[str, Any] = {
                "version": v.version,
                "aliases": ",".join(v.aliases) or "-",
                "run_id": v.run_id[:12],
            }
            for metric in KEY_METRICS:
                value = v.metric(metric)
                if value is not None:
                    row[metric] = round(value, 4)
            row["gate"] = v.tags.get("gate.decision", "-")
            if v.tags.get(OVERRIDE_TAG) == "true":
                row["gate"] += " (overridden)"
            rows.append(row)
        return rows

    def compare(self, a: int, b: int) -> list[tuple[str, str, str]]:
        left, right = self.version(a), self.version(b)
        keys = sorted(
            {
                k
                for k in (*left.tags, *right.tags)
                if k.startswith(("metric.", "data.", "code.", "train.", "gate."))
            }
        )
        rows = [
            ("aliases", ",".join(left.aliases) or "-", ",".join(right.aliases) or "-"),
            ("run_id", left.run_id, right.run_id),
        ]
        rows += [(k, left.tags.get(k, "-"), right.tags.get(k, "-")) for k in keys]
        return rows
