"""`reconcile schema`: every property has a description (editors show it as hover help), and
the schema accepts exactly what `validate` accepts, file by file (test_schema_corpus.py)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from reconciler.cli.main import main

#: subtrees that constrain properties declared elsewhere (rules), not declarations
_RULES = {"if", "then", "else", "not"}


def _schema(*args: str) -> dict[str, Any]:
    res = CliRunner().invoke(main, ["schema", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def undescribed(node: Any, path: str = "#") -> list[str]:
    """Every declared property (in ``properties`` of any schema, ``$defs`` included) that has
    no ``description``, as a JSON pointer."""
    out: list[str] = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if not isinstance(prop, dict) or not str(prop.get("description", "")).strip():
                out.append(f"{path}/properties/{name}")
        for key, value in node.items():
            if key not in _RULES:
                out.extend(undescribed(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(undescribed(value, f"{path}/{i}"))
    return out


def test_every_property_has_a_description():
    bundle = _schema()
    missing = undescribed(bundle)
    assert missing == [], "add Field(description=...) for: " + ", ".join(missing)
    # the walk reaches every file kind, every destination's config and nested models
    defs = bundle["$defs"]
    for name in ("SandboxConfig", "MetaConfig", "WebhookConfig", "ListTarget", "SmtpSettings"):
        assert defs[name]["properties"], name
    for kind in ("reconcile", "activation", "segment", "integration"):
        assert bundle["properties"][kind]["description"]
        assert undescribed(_schema(kind)) == []


def test_the_walk_finds_a_property_without_description():
    schema = {
        "properties": {"a": {"type": "string", "description": "x"}},
        "$defs": {"M": {"properties": {"b": {"type": "integer"}, "c": {"description": " "}}}},
        "allOf": [{"if": {"properties": {"a": {"const": "y"}}}}],
    }
    assert undescribed(schema) == ["#/$defs/M/properties/b", "#/$defs/M/properties/c"]


def test_destination_config_and_credentials_follow_the_type():
    schema = _schema("integration")
    assert set(schema["properties"]["type"]["enum"]) >= {"sandbox", "webhook"}
    hover = schema["$defs"]["SandboxConfig"]["properties"]["batch_size"]["description"]
    assert hover == "members per call"
