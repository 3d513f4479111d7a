"""``validate``'s findings in each ``--format``: ``text`` (``file:line: field: message``),
``json`` (one document) and ``github`` (workflow annotations GitHub shows on the lines of a
pull request). Errors and warnings arrive sorted by file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler.errors import ConfigError

TITLE = "reconcile validate"


def as_dict(e: ConfigError) -> dict[str, Any]:
    loc = e.location
    return {
        "file": loc.file if loc else None,
        "line": loc.line if loc else None,
        "field": loc.field if loc else None,
        "message": e.message,
    }


def render_json(
    errors: Sequence[ConfigError], warnings: Sequence[ConfigError], counts: dict[str, int]
) -> str:
    doc: dict[str, Any] = {
        "valid": not errors,
        "problems": [as_dict(e) for e in errors],
        "warnings": [as_dict(w) for w in warnings],
    }
    if not errors:
        doc.update(counts)
    return json.dumps(doc, indent=2)


def render_github(
    errors: Sequence[ConfigError], warnings: Sequence[ConfigError], folder: str = ""
) -> str:
    """``::error file=F,line=N,title=...::field: message`` (``::warning`` for warnings).
    ``folder``: the workspace's path inside the repository (:func:`repository_folder`), put
    before each file: GitHub reads annotation paths from the repository's root."""
    lines = [_annotation("error", e, folder) for e in errors]
    lines += [_annotation("warning", w, folder) for w in warnings]
    return "\n".join(lines)


def repository_folder(root: Path) -> str:
    """Where the workspace ``root`` is inside its repository (``marketing/audiences/``; ""
    at the root or outside any repository): the checkout GitHub names (``GITHUB_WORKSPACE``),
    else the nearest folder above holding ``.git``."""
    root = root.resolve()
    named = os.environ.get("GITHUB_WORKSPACE")
    tops = [Path(named).resolve()] if named else []
    tops += [d for d in (root, *root.parents) if (d / ".git").exists()][:1]
    for top in tops:
        if root == top or top in root.parents:
            rel = root.relative_to(top).as_posix()
            return "" if rel == "." else rel + "/"
    return ""


def _annotation(level: str, e: ConfigError, folder: str = "") -> str:
    p = as_dict(e)
    if p["file"]:
        p["file"] = folder + p["file"]
    props = [(k, p[k]) for k in ("file", "line") if p[k]] + [("title", TITLE)]
    text = (f"{p['field']}: " if p["field"] else "") + str(p["message"])
    where = ",".join(f"{k}={escape_property(str(v))}" for k, v in props)
    return f"::{level} {where}::{escape_data(text)}"


def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's runner unescapes it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    """A workflow command's property value (``file=``, ``title=``): also ``:`` and ``,``, so a
    file name cannot end the properties or add its own (``a,line=99,title=x::...``)."""
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def warning_lines(warnings: Sequence[ConfigError]) -> list[str]:
    return [f"Warning: {w}" for w in warnings]
