"""JSON Schema of the workspace files, for editors (YAML language server) and CI checks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from reconciler.workspace.spec import Activation, Integration, Segment, WorkspaceConfig

MODELS: dict[str, type[BaseModel]] = {
    "reconcile": WorkspaceConfig,
    "activation": Activation,
    "segment": Segment,
    "integration": Integration,
}


def json_schema(kind: str | None = None) -> dict[str, Any]:
    if kind is not None:
        schema = MODELS[kind].model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        return schema
    # one document a validator can resolve: every model's definitions hoisted to the root
    # (``#/$defs/...`` in each model's schema then points where it should)
    defs: dict[str, Any] = {}
    properties = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(by_alias=True)
        defs.update(schema.pop("$defs", {}))
        properties[name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "activation reconciler workspace files",
        "description": "Pick one with `reconcile schema KIND`; this document bundles all.",
        "type": "object",
        "properties": properties,
        "$defs": defs,
    }
