"""Rollout of a second version beside the champion: traffic split, shadow scoring, challenger.

Application args (``serving.config.Rollout``): ``challenger_alias`` serves a second registered
version in :class:`ChallengerHolder`, a deployment of its own, so that its replicas, CPUs and
batching are tuned apart from the champion's and a slow or failing challenger never holds up
the ingress. ``challenger_percent`` sends that share of entities to it (:func:`variant`:
sticky per entity while the split is unchanged); ``shadow`` mirrors every request the champion
answers to it (:class:`Shadow`), logging and counting both scores but never returning the
challenger's. The ingress calls it through a ``DeploymentHandle`` (Ray docs, "Deploy
Compositions of Models").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram

from data_checks.rules import EventRules
from seqcore.encoding import EventColumns
from serving.config import ServingConfig
from serving.holder import HoldsModel, ModelServer, short_gil_switch
from serving.schemas import RequestError, apply_rules

log = logging.getLogger("ray.serve")
REGISTRY_FACTS = ("name", "version", "run_id")


def variant(entity: str, challenger_percent: float) -> str:
    """``challenger`` for ``challenger_percent`` of entities, else ``champion``: a hash of the
    entity key, so an entity always sees the same version while the split is unchanged."""
    if challenger_percent <= 0:
        return "champion"
    digest = hashlib.blake2b(f"split\x00{entity}".encode(), digest_size=8)
    bucket = int.from_bytes(digest.digest(), "big") % 10_000
    return "challenger" if bucket < challenger_percent * 100 else "champion"


def _append_line(path: str, line: str) -> None:
    with open(
        path, "a", encoding="utf-8"
    ) as handle:  # one write per line: appends interleave whole
        handle.write(line + "\n")


class Shadow:
    """Mirrors requests the champion answered to the challenger, off the reply's path: each
    comparison is logged (and appended to ``log_path`` as a JSON line when set) and counted
    (``seqops_shadow_requests``, ``seqops_shadow_abs_diff``)."""

    def __init__(self, challenger: DeploymentHandle, log_path: str | None) -> None:
        self.challenger, self.log_path = challenger, log_path
        self._tasks: set[asyncio.Task] = set()  # keeps mirrored calls alive until done
        self.mirrored = Counter(
            "seqops_shadow_requests", "Requests mirrored to the challenger", ("outcome",)
        )
        self.abs_diff = Histogram(
            "seqops_shadow_abs_diff",
            "Largest |champion - challenger| score per mirrored request",
            [1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0],
        )

    def mirror(self, request: EventColumns, served: dict[str, Any]) -> None:
        """Score ``request`` with the challenger too, in the background."""
        task = asyncio.create_task(self._compare(request, served))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(self, request: EventColumns, served: dict[str, Any]) -> None:
        try:
            shadow = await self.challenger.score.remote(request)
        except Exception as exc:
            self.mirrored.inc(tags={"outcome": "error"})
            log.warning("shadow: challenger failed: %r", exc)
            return
        if "refused" in shadow:  # the challenger's contract refuses what the champion took
            self.mirrored.inc(tags={"outcome": "refused"})
            log.info("shadow: challenger refused: %s", shadow["refused"]["error"])
            return
        pairs = list(zip(served["scores"], shadow["scores"], strict=True))
        largest = max(abs(float(a["score"]) - float(b["score"])) for a, b in pairs)
        record: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "champion": {k: served["model"][k] for k in REGISTRY_FACTS},
            "challenger": {k: shadow["model"][k] for k in REGISTRY_FACTS},
            "scores": [
                {"entity": a["entity"], "champion": a["score"], "challenger": b["score"]}
                for a, b in pairs
            ],
            "max_abs_diff": largest,
        }
        self.mirrored.inc(tags={"outcome": "ok"})
        self.abs_diff.observe(largest)
        line = json.dumps(record)
        log.info("shadow: %s", line)
        if self.log_path:
            await asyncio.to_thread(_append_line, self.log_path, line)


@serve.deployment
class ChallengerHolder(HoldsModel):
    """The challenger (``rollout.challenger_alias``): a :class:`~serving.holder.ModelServer`
    in a deployment of its own."""

    def __init__(self, config: ServingConfig) -> None:
        short_gil_switch()
        self.server = ModelServer(config, "ChallengerHolder")
        self._rules: tuple[Any, EventRules] | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``user_config``: max_batch_size, batch_wait_timeout_s, max_tokens."""
        self.server.reconfigure(user_config)

    async def score(self, request: EventColumns) -> dict[str, Any]:
        """Scores, or ``{"refused": {"status", "error", "field", ...}}`` when the events break
        the challenger's own data contract (the ingress checked the champion's; the two
        versions may have been trained under different rules)."""
        model = self.server.model
        if self._rules is None or self._rules[0] is not model:
            self._rules = (model, EventRules(model.scorer.manifest.contract, model.scorer.schema))
        lengths = np.bincount(request.group, minlength=len(request.names)).tolist()
        try:
            checked = apply_rules(self._rules[1], request, lengths, "sequences[{i}].events", None)
        except RequestError as exc:
            return {"refused": {"status": exc.status, **exc.body()}}
        return await self.server.score(checked)
