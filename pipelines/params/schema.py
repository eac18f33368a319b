"""The JSON Schema of ``params.yaml``, generated from the section dataclasses.

Editors read it (``# yaml-language-server: $schema=params.schema.json`` on the file's first
line) to complete keys, show each key's docstring and flag unknown keys, wrong types and
values outside a ``Literal``'s choices. pydantic v2 writes the schema of stdlib dataclasses
(``TypeAdapter(...).json_schema()``); this module adds what the types alone do not say: the
attribute docstrings as descriptions, unknown keys refused as ``load_params`` refuses them,
durations that are a number of seconds or a string such as ``5m``, ISO times, and the
``validate.checks`` mapping keyed by check name. The loader stays the authority: the schema
checks shapes, ``__post_init__`` checks ranges and the rules between fields.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import json
import textwrap
import typing
from typing import Any

from data_checks.config import CHECK_NAMES, POLICIES

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DURATION = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*$"},
    ],
    "description": "Seconds, or a duration such as '90s', '5m', '1h', '1d', '2w'.",
}
TIME = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}",
    "description": "ISO-8601 time such as 2025-01-01T00:00:00Z (naive times are UTC); quote it.",
}
# Fields whose Python type is the parsed value while params.yaml holds a string: (class, field).
OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("CheckConfig", "max_ahead"): DURATION,
    ("CheckConfig", "allowed_lateness"): DURATION,
    ("CheckConfig", "policy"): {"enum": list(POLICIES)},
    ("GenerateConfig", "start"): TIME,
    ("FeatureConfig", "numeric_transform"): {
        "type": "object",
        "additionalProperties": {"enum": ["none", "log1p"]},
    },
}

RAW_FIELDS = ("extra",)
"""``Params`` fields that hold what the loader kept raw, not a key of params.yaml."""


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of ``cls`` (the string after ``name: type``)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0]
    docs: dict[str, str] = {}
    if not isinstance(body, ast.ClassDef):
        return docs
    for stmt, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _dataclasses_under(root: type) -> dict[str, type]:
    """Every dataclass reachable from ``root``'s field types, by class name."""
    found: dict[str, type] = {}

    def visit(tp: Any) -> None:
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if found.setdefault(tp.__name__, tp) is not tp:
                raise ValueError(f"two config classes named {tp.__name__}")
            for hint in typing.get_type_hints(tp).values():
                visit(hint)
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return found


def _is_time(prop: dict[str, Any]) -> bool:
    return prop.get("format") == "date-time"


def _replace(prop: dict[str, Any], new: dict[str, Any]) -> None:
    """``prop`` becomes ``new``, keeping its default."""
    default = prop.get("default")
    prop.clear()
    prop.update(copy.deepcopy(new))
    if default is not None:
        prop["default"] = default


def _polish(name: str, definition: dict[str, Any], docs: dict[str, str]) -> None:
    """Descriptions from docstrings, no pydantic titles, times as ISO strings."""
    definition.pop("title", None)
    for key, prop in definition.get("properties", {}).items():
        prop.pop("title", None)
        if _is_time(prop):
            _replace(prop, TIME)
        for option in prop.get("anyOf", []):
            if _is_time(option):
                _replace(option, TIME)
        if (name, key) in OVERRIDES:
            _replace(prop, OVERRIDES[name, key])
        # The field's own docstring first, then what the value's format says (durations, times).
        described = [docs.get(key), prop.get("description")]
        if any(described):
            prop["description"] = " ".join(d for d in described if d)


def json_schema(root: type, title: str) -> dict[str, Any]:
    """The JSON Schema of a mapping that ``root`` (the ``Params`` dataclass) is built from."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(root).json_schema()
    classes = _dataclasses_under(root)
    defs = schema.setdefault("$defs", {})
    unknown = sorted(set(defs) - set(classes))
    if unknown:
        raise ValueError(f"schema definitions without a config class: {', '.join(unknown)}")
    seen: set[tuple[str, str]] = set()
    for name, definition in defs.items():
        _polish(name, definition, attribute_docs(classes[name]))
        # load_params refuses unknown keys inside a section (seqcore.config.only_keys).
        definition["additionalProperties"] = False
        seen.update((name, key) for key in definition.get("properties", {}))
    missing = sorted(f"{c}.{f}" for c, f in OVERRIDES if (c, f) not in seen)
    if missing:
        raise ValueError(f"schema overrides name no field: {', '.join(missing)}")

    # The loader fills a check's name from its key in validate.checks.
    check = defs["CheckConfig"]
    check["properties"].pop("name")
    check.pop("required", None)
    defs["ValidateConfig"]["properties"]["checks"] = {
        "type": "object",
        "description": "One entry per check of the ordering contract; absent checks use defaults.",
        "properties": {n: {"$ref": "#/$defs/CheckConfig"} for n in CHECK_NAMES},
        "additionalProperties": False,
    }

    _polish(root.__name__, schema, attribute_docs(root))
    for kept_raw in RAW_FIELDS:
        schema["properties"].pop(kept_raw, None)
    return {"$schema": SCHEMA_DIALECT, "title": title, **schema}


def schema_text(schema: dict[str, Any]) -> str:
    """The schema as the committed file holds it (stable order, one trailing newline)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
