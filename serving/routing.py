"""Entity affinity: every streaming call for one entity reaches the replica holding its state.

A Ray Serve custom request router (Ray docs, "Use Custom Algorithm for Request Routing";
``RequestRouter.choose_replicas``) that picks a replica by **rendezvous (highest random
weight) hashing** of the entity key over the running replicas' ids (Thaler & Ravishankar,
1998): every router, in every ingress replica or proxy, computes the same owner from the same
replica set without talking to the others, and when a replica leaves or joins only the
entities it owned (or now owns) move. A moved entity reaches a replica without its state and
is answered as a reset (``serving.streaming``), never silently.

The owner is the only candidate offered, so a request waits for its owner's capacity rather
than spilling to another replica. Calls that carry no entity (``info``, ``stats``) go to any
replica, least loaded first, as with the default router.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

ROUTED_METHOD = "update"
"""The deployment method whose first argument is the entity key."""


def _weight(entity: str, replica: str) -> int:
    digest = hashlib.blake2b(f"{replica}\x00{entity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(entity: str, replica_ids: list[str]) -> str:
    """The replica id that owns ``entity`` among ``replica_ids`` (rendezvous hashing)."""
    if not replica_ids:
        raise ValueError("owner: no replicas to choose from")
    return max(replica_ids, key=lambda replica: (_weight(entity, replica), replica))


def entity_key(request: PendingRequest | None) -> str | None:
    """The entity a pending request is for, if it is a streaming call."""
    if request is None:
        return None
    metadata: Any = request.metadata
    if getattr(metadata, "call_method", ROUTED_METHOD) != ROUTED_METHOD:
        return None
    if request.args and isinstance(request.args[0], str):
        return request.args[0]
    key = request.kwargs.get("entity_id")
    return key if isinstance(key, str) else None


class EntityAffinityRouter(RequestRouter):
    """Routes ``update(entity_id, ...)`` calls to the entity's owner replica."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        key = entity_key(pending_request)
        if key is None or not candidate_replicas:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[owner(key, sorted(by_id))]]]
