"""JSON Schema of the workspace files, for editors (YAML language server) and CI checks.

Every property carries a description (from the models' docstrings and ``Field(description=…)``,
so editors show hover help), and the schema refuses what ``validate`` refuses file by file:
besides the models' own rules, an integration's ``config`` and ``credentials`` are checked
against the installed destination type it names. What needs more than one file (a segment
that exists, an integration's mapping) or the data (segment SQL) only ``validate`` checks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from reconciler.workspace.activation_spec import Activation
from reconciler.workspace.spec import Integration, Segment, WorkspaceConfig

MODELS: dict[str, type[BaseModel]] = {
    "reconcile": WorkspaceConfig,
    "activation": Activation,
    "segment": Segment,
    "integration": Integration,
}
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(kind: str | None = None) -> dict[str, Any]:
    if kind is not None:
        schema = _schema_of(kind)
        schema["$schema"] = DIALECT
        return schema
    # one document a validator can resolve: every model's definitions hoisted to the root
    # (``#/$defs/...`` in each model's schema then points where it should)
    defs: dict[str, Any] = {}
    properties = {}
    for name in MODELS:
        schema = _schema_of(name)
        defs.update(schema.pop("$defs", {}))
        properties[name] = schema
    return {
        "$schema": DIALECT,
        "title": "activation reconciler workspace files",
        "description": "Pick one with `reconcile schema KIND`; this document bundles all.",
        "type": "object",
        "properties": properties,
        "$defs": defs,
    }


def _schema_of(kind: str) -> dict[str, Any]:
    schema = MODELS[kind].model_json_schema(by_alias=True)
    if kind == "integration":
        _add_destination_types(schema)
    return schema


def _add_destination_types(schema: dict[str, Any]) -> None:
    """``type`` is one of the installed adapters; each type's ``config`` follows its config
    model and ``credentials`` names exactly the credentials it takes."""
    from destinations import registry
    from reconciler.errors import ConfigError

    defs = schema.setdefault("$defs", {})
    types, rules = [], []
    for type_name in registry.installed():
        try:
            factory = registry.load(type_name)
        except ConfigError:
            continue  # a broken adapter: `validate` refuses integrations that use it
        types.append(type_name)
        config = factory.config_model.model_json_schema(by_alias=True)
        defs.update(config.pop("$defs", {}))
        name = config.get("title") or factory.config_model.__name__
        defs[name] = config
        fields = factory.credentials_model.model_fields
        credentials: dict[str, Any] = {"propertyNames": {"enum": sorted(fields)}}
        required = sorted(n for n, f in fields.items() if f.is_required())
        if required:
            credentials["required"] = required
        then: dict[str, Any] = {
            "properties": {"config": {"$ref": f"#/$defs/{name}"}, "credentials": credentials}
        }
        if required:
            then["required"] = ["credentials"]
        rules.append(
            {
                "if": {"properties": {"type": {"const": type_name}}, "required": ["type"]},
                "then": then,
            }
        )
    schema["properties"]["type"]["enum"] = types
    schema.setdefault("allOf", []).extend(rules)
