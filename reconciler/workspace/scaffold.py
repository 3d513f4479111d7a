"""`reconcile init`: add a starter workspace to a directory, new or inside an existing repository.

Nothing that exists is overwritten: an existing file is kept (and reported), an existing
``.gitignore`` only gets the lines it lacks, and a directory that already holds a workspace
(``reconcile.yaml``) gets no sample files, only the workflows. The GitHub workflows go where GitHub reads them,
the ``.github/workflows/`` of the repository root (the git top-level of the directory, or the
directory itself outside git), rendered with the workspace's path relative to that root and
the pinned requirement that installs this very version of the tool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import version
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from reconciler.errors import ReconcileError

__all__ = ["GITIGNORE_LINES", "InitResult", "render_workflows", "repository_root", "scaffold"]

DISTRIBUTION = "activation-reconciler"
GITIGNORE_LINES = (".reconcile/", "*.plan")
#: what a workspace path may contain: it is written into YAML and shell without quoting rules
SAFE_PATH = re.compile(r"[A-Za-z0-9._/-]+")
SAFE_REQUIREMENT = re.compile(r"[A-Za-z0-9._/:@+=<>!~, \[\]-]+")
TOKEN = re.compile(r"@([A-Z]+)@")


@dataclass
class InitResult:
    root: Path  # the repository root: where .github/workflows/ went
    workspace: Path
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # existed already: left as they were
    gitignore: Path | None = None  # the existing .gitignore that got our lines appended


def tool_version() -> str:
    return version(DISTRIBUTION)


def repository_root(directory: Path) -> Path:
    """The git top-level holding ``directory`` (a ``.git`` dir or file), else ``directory``."""
    directory = directory.resolve()
    for candidate in (directory, *directory.parents):
        if (candidate / ".git").exists():
            return candidate
    return directory


def _template() -> Traversable:
    return files("reconciler.workspace") / "template"


def _walk(node: Traversable, prefix: Path = Path()):
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        rel = prefix / child.name
        if child.is_dir():
            yield from _walk(child, rel)
        elif child.name != "__init__.py" and not child.name.endswith(".pyc"):
            yield child, rel


def render_workflows(
    workspace: str,
    *,
    install: str | None = None,
    allow_ephemeral_state: bool = False,
) -> dict[str, str]:
    """The GitHub workflows for a workspace at ``workspace`` (relative to the repository root,
    ``.`` for the root itself): file name -> text.

    ``install`` is the pip requirement the workflows install (default: this version from
    PyPI). A workspace below the root gets its path in the file names, so several workspaces
    can share a repository.
    """
    if workspace != "." and (
        not SAFE_PATH.fullmatch(workspace) or ".." in workspace.split("/") or workspace[0] == "/"
    ):
        raise ReconcileError(
            f"workspace path {workspace!r} cannot go into a workflow: use letters, digits "
            "and . _ - / only"
        )
    requirement = install or f"{DISTRIBUTION}=={tool_version()}"
    if not SAFE_REQUIREMENT.fullmatch(requirement):
        raise ReconcileError(f"--install {requirement!r} is not a pip requirement")
    if not _pinned(requirement):  # the workflows promise a pinned tool
        raise ReconcileError(
            f"--install {requirement!r} is not pinned: give an exact version "
            f"({DISTRIBUTION}==X.Y.Z), a git URL at a tag or commit "
            f"({DISTRIBUTION} @ git+https://github.com/OWNER/REPO@v0.1.0) or a local path"
        )
    slug = "" if workspace == "." else "-" + workspace.strip("/").replace("/", "-")
    values = {
        "VERSION": tool_version(),
        "WORKSPACE": workspace,
        "PREFIX": "" if workspace == "." else workspace.strip("/") + "/",
        "SLUG": slug,
        "INSTALL": requirement,
        "EPHEMERAL": "true" if allow_ephemeral_state else "false",
    }
    out = {}
    for src, rel in _walk(_template() / "github" / "workflows"):
        text = TOKEN.sub(lambda m: values[m.group(1)], src.read_text())
        out[rel.stem + slug + rel.suffix] = text
    return out


def _pinned(requirement: str) -> bool:
    """An exact version (``==``, nothing looser), a URL at a ref (``...@v1``) or a path."""
    text = requirement.strip()
    if text.startswith((".", "/")):
        return True
    if " @ " in text:
        url = text.split(" @ ", 1)[1]
        return "@" in url.rsplit("/", 1)[-1]
    return "==" in text and not any(op in text for op in (">", "<", "~", "!", "*", ","))


def scaffold(target: Path, *, install: str | None = None) -> InitResult:
    """Write the starter workspace into ``target`` and the workflows into its repository root."""
    target = target.resolve()
    if target.exists() and not target.is_dir():
        raise ReconcileError(f"{target} is a file; init needs a directory")
    root = repository_root(target)
    workspace = target.relative_to(root).as_posix()
    workflows = render_workflows(workspace, install=install)  # checks before writing anything
    for name in workflows:
        _check_not_another(root / ".github" / "workflows" / name, workspace)
    result = InitResult(root=root, workspace=target)
    existing = (target / "reconcile.yaml").exists()
    files = (
        []
        if existing
        else [(target / rel, src) for src, rel in _walk(_template()) if rel.parts[0] != "github"]
    )
    # every path first: nothing is written through a link (a cloned repository may hold
    # links to files outside it), and a refusal leaves the directory as it was
    for path in [
        *(p for p, _ in files),
        *(root / ".github" / "workflows" / name for name in workflows),
        target / ".gitignore",
    ]:
        _check_inside(path, root)
    if existing:
        # an existing workspace: its files are the user's; a sample activation would be sent
        result.kept.append(target / "reconcile.yaml")
    for path, src in files:
        _write(path, src.read_text(), result)
    for name, text in workflows.items():
        _write(root / ".github" / "workflows" / name, text, result)
    _gitignore(target / ".gitignore", result)
    return result


def _check_inside(path: Path, root: Path) -> None:
    """Refuse to write ``path`` when it is a symbolic link (even to nothing) or when one of
    its folders below ``root`` is a link leading outside ``root`` (or to nothing)."""
    if path.is_symlink():
        raise ReconcileError(
            f"{path} is a symbolic link; init writes no file through a link (remove it, or "
            "init another directory)"
        )
    inside = root.resolve()
    folder = root
    for part in path.parent.relative_to(root).parts:
        folder = folder / part
        if not folder.is_symlink():
            if not folder.exists():
                return  # created by init: a plain folder
            continue
        if not folder.exists() or not folder.resolve().is_relative_to(inside):
            raise ReconcileError(
                f"{folder} is a symbolic link leading outside {root} (or to nothing); init "
                "writes only inside the repository"
            )


_WORKSPACE_LINE = re.compile(r'^\s*RECONCILE_WORKSPACE:\s*"([^"]*)"', re.MULTILINE)


def _check_not_another(path: Path, workspace: str) -> None:
    """A workflow file of that name kept from an earlier init must be this workspace's:
    ``a/b`` and ``a-b`` give the same file names, and the second would get no CI."""
    if not path.is_file():
        return
    m = _WORKSPACE_LINE.search(path.read_text(errors="replace"))
    if m and m.group(1) != workspace:
        raise ReconcileError(
            f"{path} already runs the workspace {m.group(1)!r}, and the workflows of "
            f"{workspace!r} would have the same file names; move one of the two workspaces "
            "to a path that differs in more than '/' and '-'"
        )


def _write(dest: Path, text: str, result: InitResult) -> None:
    if dest.exists():
        result.kept.append(dest)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    result.created.append(dest)


def _gitignore(path: Path, result: InitResult) -> None:
    """Create ``.gitignore``, or append to an existing one the lines it lacks (only those)."""
    if not path.exists():
        _write(path, "".join(f"{line}\n" for line in GITIGNORE_LINES), result)
        return
    text = path.read_text()
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present]
    if not missing:
        result.kept.append(path)
        return
    sep = "" if not text or text.endswith("\n") else "\n"
    path.write_text(text + sep + "# activation reconciler\n" + "".join(f"{m}\n" for m in missing))
    result.gitignore = path
