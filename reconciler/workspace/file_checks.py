"""Checks of the workspace's files and paths that need no parsing of their contents: a
YAML file that would be skipped without a word, and the files an integration or the state
may not share with the workspace's own (the state, the source database)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ConfigError, Location
from reconciler.workspace import yamlfile

if TYPE_CHECKING:
    from reconciler.workspace.loader import Workspace

__all__ = ["reserved_path_errors", "state_path_errors", "unread_files"]


def _resolve(ws: Workspace, text: str) -> Path:
    """A path of a workspace file as the tool opens it (relative to the workspace)."""
    p = Path(text).expanduser()
    return (p if p.is_absolute() else ws.root / p).resolve()


def reserved_path_errors(ws: Workspace, doc: yamlfile.YamlDoc, integ: Any) -> list[ConfigError]:
    """An integration keeping its data in a file (its ``config.path``) may not name the
    workspace's own state or source database: it would fail mid-apply on the file's lock,
    or overwrite what reconcile reads."""
    path = integ.config.get("path") if isinstance(integ.config, dict) else None
    if not isinstance(path, str) or not path:
        return []
    reserved = {"the state file": getattr(ws.config.state, "path", None)}
    reserved["the source database"] = getattr(ws.config.source, "path", None)

    mine = _resolve(ws, path)
    return [
        doc.error(
            f"{path!r} is {what} of this workspace; choose a file of its own", ("config", "path")
        )
        for what, other in reserved.items()
        if isinstance(other, str) and _resolve(ws, other) == mine
    ]


def state_path_errors(ws: Workspace, doc: yamlfile.YamlDoc) -> list[ConfigError]:
    """An embedded state's file must be a file of its own: not empty (the workspace folder)
    and not the source database (apply would write its tables into the source, then fail
    on the file's lock)."""
    path = getattr(ws.config.state, "path", None)
    if not isinstance(path, str):
        return []
    if not path.strip():
        return [
            doc.error(
                "the state file's path is empty; omit it for .reconcile/state.duckdb",
                ("state", "path"),
            )
        ]
    source = getattr(ws.config.source, "path", None)

    if isinstance(source, str) and source.strip() and _resolve(ws, source) == _resolve(ws, path):
        return [
            doc.error(
                f"{path!r} is the source database (source.path); the state needs a file of its own",
                ("state", "path"),
            )
        ]
    return []


def unread_files(root: Path, kind: str) -> list[ConfigError]:
    """A file meant to be read that would be skipped without a word: ``x.YAML`` (only
    lowercase ``.yaml`` / ``.yml`` are read) or a YAML file in a subfolder."""
    folder = root / kind
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".yaml", ".yml"):
            continue
        if path.parent != folder:
            why = f"is not read: {kind} are the YAML files directly in {kind}/; move it there"
        elif path.suffix not in (".yaml", ".yml"):
            why = f"is not read: rename it to {path.stem}.yaml (the extension in lowercase)"
        else:
            continue
        out.append(ConfigError(why, Location(str(path.relative_to(root)))))
    return out
