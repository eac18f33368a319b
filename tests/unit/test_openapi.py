"""The OpenAPI document completed for the served model (serving/openapi.py)."""

from __future__ import annotations

import json

import pytest

from seqcore.manifest import Manifest
from serving.config import Limits
from serving.openapi import complete
from serving.schemas import request_model, stream_request_model

ROUTES = {
    "paths": {
        "/v1/score": {"post": {}},
        "/v1/stream/{entity_id}": {"post": {}},
        "/v1/models": {"get": {}},
        "/healthz": {"get": {}},
    }
}


@pytest.fixture(scope="module")
def manifest(tiny_pipeline) -> Manifest:
    return Manifest.from_json(json.loads((tiny_pipeline["shards"] / "manifest.json").read_text()))


def _complete(manifest: Manifest, auth: bool) -> dict:
    schema = manifest.schema
    score = request_model(schema, Limits(), manifest.contract)
    stream = stream_request_model(schema, Limits(), manifest.contract)
    return complete(ROUTES, score, stream, schema, manifest, auth)


def _resolve(doc: dict, node):
    """Follow every $ref of ``node`` within ``doc``: each must resolve."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolve(doc, target)
        return {k: _resolve(doc, v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(doc, v) for v in node]
    return node


def test_the_score_route_documents_the_models_own_columns_with_an_example(manifest):
    doc = _complete(manifest, auth=False)
    body = doc["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]
    schema = _resolve(doc, body["schema"])
    event = schema["properties"]["sequences"]["items"]["properties"]["events"]["items"]
    columns = set(manifest.schema.event_columns) - {manifest.schema.entity}
    assert set(event["required"]) == columns and event["additionalProperties"] is False
    example = body["example"]["sequences"][0]["events"][0]
    assert set(example) == columns
    # The example is a request the served model's validator accepts.
    score = request_model(manifest.schema, Limits(), manifest.contract)
    score.adapter.validate_json(json.dumps(body["example"]))
    replies = doc["paths"]["/v1/score"]["post"]["responses"]
    assert {"200", "401", "413", "422"} <= set(replies)
    stream = doc["paths"]["/v1/stream/{entity_id}"]["post"]["requestBody"]
    assert "events" in _resolve(doc, stream["content"]["application/json"]["schema"])["required"]
    assert "securitySchemes" not in doc.get("components", {})
    assert ROUTES["paths"]["/v1/score"]["post"] == {}  # the route table is not changed


def test_with_tokens_every_route_but_healthz_names_the_bearer_scheme(manifest):
    doc = _complete(manifest, auth=True)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        for op in item.values():
            assert ("security" in op) == (path != "/healthz"), path
