"""The OpenAPI document of the scoring API, filled in for the model a replica serves.

The routes read their bodies themselves (``serving.http_edge.read_body``: bounded in size and
time before pydantic sees a byte), so FastAPI cannot infer their request schemas. The body's
shape depends on the served model anyway: its keys are the model's own columns. So the
document FastAPI generates is completed here from the validators the replica built for its
champion (``serving.schemas``): the request schemas of ``/v1/score`` and ``/v1/stream``, an
example request of the model's schema, the reply's shape and the bearer-token scheme
(``serving.auth``).
"""

from __future__ import annotations

import copy
from typing import Any

from seqcore.manifest import Manifest
from seqcore.schema import SchemaConfig
from serving.schemas import RequestModel, feature_columns

EXAMPLE_TIME = "2025-01-01T00:00:00Z"
REF_TEMPLATE = "#/components/schemas/{model}"
ERROR_REPLY = {
    "type": "object",
    "required": ["error", "field"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, and the fix"},
        "field": {"type": ["string", "null"], "description": "e.g. sequences[3].events[7].amount"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "error_count": {"type": "integer"},
    },
}
SCORE_REPLY = {
    "type": "object",
    "required": ["model", "scores"],
    "properties": {
        "model": {
            "type": "object",
            "description": "the registered version that scored: name, alias, version, run_id, "
            "data_hash, task, variant (champion or challenger)",
        },
        "scores": {
            "type": "array",
            "description": "one row per sequence, in request order",
            "items": {
                "type": "object",
                "required": ["entity"],
                "properties": {
                    "entity": {"type": "string"},
                    "score": {"type": "number"},
                    "predicted": {},
                    "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                    "n_events": {"type": "integer"},
                },
            },
        },
    },
}


def example_event(schema: SchemaConfig, manifest: Manifest) -> dict[str, Any]:
    """One event of the model's schema with plausible values: a known category of each
    categorical column, 1.0 for numbers."""
    event: dict[str, Any] = {schema.time: EXAMPLE_TIME}
    if schema.seq:
        event[schema.seq] = 0
    for column in schema.numeric:
        event[column] = 1.0
    for column in schema.categorical:
        known = manifest.features.vocab.get(column) or ("a",)
        event[column] = known[0]
    return {k: event[k] for k in feature_columns(schema) if k in event}


def _body(doc: dict[str, Any], model: RequestModel, example: dict[str, Any]) -> dict[str, Any]:
    """A request body of ``model``'s JSON schema; its named parts go to the document's
    ``components/schemas``, where OpenAPI resolves ``$ref``s (not inside the body)."""
    schema_json = model.adapter.json_schema(ref_template=REF_TEMPLATE)
    shared = doc.setdefault("components", {}).setdefault("schemas", {})
    shared.update(schema_json.pop("$defs", {}))
    return {
        "required": True,
        "content": {"application/json": {"schema": schema_json, "example": example}},
    }


def _replies(ok: dict[str, Any]) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": ERROR_REPLY}}}
    return {
        "200": {"description": "scored", "content": {"application/json": {"schema": ok}}},
        "401": {"description": "no or unknown bearer token", **error},
        "403": {"description": "the token lacks the route's scope", **error},
        "408": {"description": "the body did not arrive within body_timeout_s", **error},
        "413": {"description": "the body exceeds max_body_bytes", **error},
        "415": {"description": "not application/json", **error},
        "422": {"description": "a field breaks the schema, a limit or the data contract", **error},
    }


def complete(
    document: dict[str, Any],
    score: RequestModel,
    stream: RequestModel,
    schema: SchemaConfig,
    manifest: Manifest,
    auth_enabled: bool,
) -> dict[str, Any]:
    """``document`` (FastAPI's, for the routes) with the served model's request and reply
    schemas, an example and the token scheme; ``document`` itself is left as it was."""
    doc = copy.deepcopy(document)
    event = example_event(schema, manifest)
    paths = doc.setdefault("paths", {})
    score_op = paths.get("/v1/score", {}).get("post")
    if score_op is not None:
        example = {"sequences": [{"entity": "entity-1", "events": [event]}]}
        score_op["requestBody"] = _body(doc, score, example)
        score_op["responses"] = _replies(SCORE_REPLY)
        score_op["summary"] = "Score one or more sequences of raw events"
    for path, item in paths.items():
        if path.startswith("/v1/stream/") and "post" in item:
            op = item["post"]
            op["requestBody"] = _body(doc, stream, {"events": [event]})
            op["responses"] = _replies({"type": "object"})
            op["summary"] = "Add events to one entity's stream and score it"
    if auth_enabled:
        components = doc.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "an API token (serving/auth.py); scopes score and admin",
        }
        for path, item in paths.items():
            if path != "/healthz":
                for op in item.values():
                    op["security"] = [{"bearer": []}]
    return doc
