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
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "activation reconciler workspace files",
        "description": "Pick one with `reconcile schema KIND`; this document bundles all.",
        "properties": {k: m.model_json_schema(by_alias=True) for k, m in MODELS.items()},
    }
