"""Validation of ``goal: export_data`` activations against their destination's capabilities
(the export path itself is checked by the spec: relative, inside the location)."""

from __future__ import annotations

from typing import Any

from reconciler.errors import ConfigError
from reconciler.workspace import yamlfile
from reconciler.workspace.activation_spec import ActionMode, Activation, Goal


def export_errors(
    doc: yamlfile.YamlDoc, act: Activation, destination: str, caps: Any
) -> list[ConfigError]:
    """``goal: export_data`` needs a destination that writes files, and such a destination
    takes nothing else; an export writes below its own folder (no `list: existing`)."""
    exporting = act.goal is Goal.EXPORT_DATA
    if exporting and not caps.export:
        return [
            doc.error(
                f"`goal: export_data` writes files, but destination {destination!r} does not; "
                f"use an integration of a type that does ({_exporting_types()})",
                ("goal",),
            )
        ]
    if caps.export and not exporting:
        return [
            doc.error(
                f"destination {destination!r} writes export files: use `goal: export_data`",
                ("goal",),
            )
        ]
    if exporting and act.target.existing is not None:
        return [
            doc.error(
                "an export writes its own files under `export.path`; remove `list: existing`",
                ("list", "existing"),
            )
        ]
    if exporting and act.on_delete == "clear":
        return [
            doc.error(
                "an export's files stay where they are when the activation is deleted; "
                "use `on_delete: keep`",
                ("on_delete",),
            )
        ]
    if exporting and act.action is ActionMode.REMOVE:
        return [doc.error("`action: remove` cannot export; use maintain or append", ("action",))]
    return []


def _exporting_types() -> str:
    """The installed destination types that write export files (loaded only for this error)."""
    from destinations import registry
    from reconciler.workspace.destination_checks import capabilities_of

    found = [t for t in registry.installed() if getattr(capabilities_of(t), "export", False)]
    return ", ".join(f"`type: {t}`" for t in found) or "none is installed"
