"""`reconcile init`: write a starter workspace (never overwriting a file)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from reconciler.errors import ReconcileError

#: template name -> path in the new workspace (dot files are stored without the dot)
RENAMES = {"gitignore": ".gitignore", "github": ".github"}


def _walk(node, prefix: Path = Path()):
    for child in node.iterdir():
        rel = prefix / RENAMES.get(child.name, child.name)
        if child.is_dir():
            yield from _walk(child, rel)
        elif child.name != "__init__.py" and not child.name.endswith(".pyc"):
            yield child, rel


def scaffold(target: Path) -> list[Path]:
    template = files("reconciler.workspace") / "template"
    plan = list(_walk(template))
    existing = [rel for _, rel in plan if (target / rel).exists()]
    if existing:
        raise ReconcileError(
            f"{target} already has {', '.join(map(str, existing))}; "
            "init writes a new workspace and never overwrites files"
        )
    written = []
    for src, rel in plan:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(src.read_text())
        written.append(dest)
    return written
