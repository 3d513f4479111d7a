"""The notification message of one run, rendered from Jinja templates in the project's
sandbox: the defaults in ``reconciler/notify/templates/``, each replaceable by a file of the
same name in the workspace folder ``notifications.templates``.

    subject.txt.j2    the e-mail subject (one line)
    email.txt.j2      the plain-text e-mail body
    email.html.j2     the HTML e-mail body (every value autoescaped)
    webhook.json.j2   the webhook JSON body (Slack-compatible: {"text": ..., "blocks": [...]})

A template that fails to render is a :class:`TemplateProblem` naming its file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from reconciler.notify.report import CONTEXT_NAMES, sample_report, template_context
from reconciler.workspace.templating import TemplateFailed, render_template
from reconciler.workspace.yamlfile import within

TEMPLATE_NAMES = ("subject.txt.j2", "email.txt.j2", "email.html.j2", "webhook.json.j2")
#: a template file larger than this is refused (they are read on every run)
MAX_TEMPLATE = 100_000


class TemplateProblem(Exception):
    """A notification template is missing, unreadable or does not render."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.message, self.file, self.line = message, file, line
        where = file if line is None else f"{file}:{line}"
        super().__init__(f"{where}: {message}" if file else message)


@dataclass(frozen=True)
class EmailMessage:
    subject: str
    text: str
    html: str


class Templates:
    """The templates in force for a workspace: its overrides, else the defaults."""

    def __init__(self, root: Path | None = None, folder: str | None = None):
        self.root, self.folder = root, folder
        self._sources: dict[str, tuple[str, str]] = {}

    def source(self, name: str) -> tuple[str, str]:
        """(text, display name) of template ``name``."""
        if name not in self._sources:
            self._sources[name] = self._read(name)
        return self._sources[name]

    def _read(self, name: str) -> tuple[str, str]:
        if self.root is not None and self.folder is not None:
            path = self.root / self.folder / name
            display = f"{self.folder.rstrip('/')}/{name}"
            if path.exists() or path.is_symlink():
                # a pipe would block, a device never end, a link leave the workspace
                if not within(path, self.root) or not path.is_file():
                    raise TemplateProblem(
                        "template is a link to somewhere outside the workspace, or not a "
                        "regular file; templates must be files inside it",
                        display,
                    )
                try:
                    if path.stat().st_size > MAX_TEMPLATE:
                        raise TemplateProblem(
                            f"template is larger than {MAX_TEMPLATE:,} bytes", display
                        )
                    return path.read_text(encoding="utf-8"), display
                except (OSError, UnicodeDecodeError) as exc:
                    raise TemplateProblem(f"cannot read template: {exc}", display) from exc
        text = (
            resources.files("reconciler.notify")
            .joinpath("templates")
            .joinpath(name)
            .read_text("utf-8")
        )
        return text, f"reconciler/notify/templates/{name}"

    def render(self, name: str, context: dict[str, Any]) -> str:
        text, display = self.source(name)
        try:
            return render_template(text, context, CONTEXT_NAMES, html=name.endswith(".html.j2"))
        except TemplateFailed as exc:
            raise TemplateProblem(str(exc), display, exc.line) from exc

    def email(self, context: dict[str, Any]) -> EmailMessage:
        subject = " ".join(self.render("subject.txt.j2", context).split())
        if not subject:
            raise TemplateProblem("the subject renders empty", self.source("subject.txt.j2")[1])
        return EmailMessage(
            subject=subject[:250],
            text=self.render("email.txt.j2", context),
            html=self.render("email.html.j2", context),
        )

    def webhook(self, context: dict[str, Any]) -> dict[str, Any]:
        rendered = self.render("webhook.json.j2", context)
        display = self.source("webhook.json.j2")[1]
        try:
            body = json.loads(rendered)
        except json.JSONDecodeError as exc:
            raise TemplateProblem(
                f"does not render valid JSON ({exc.msg} at line {exc.lineno} of the output); "
                "write values with the tojson filter",
                display,
            ) from exc
        if not isinstance(body, dict):
            raise TemplateProblem("must render a JSON object ({...})", display)
        return body


def check_template_folder(root: Path, folder: str) -> list[TemplateProblem]:
    """What ``validate`` says about a workspace's template folder: it exists, holds only
    known template names, and each override renders for a sample run."""
    path = root / folder
    if path.exists() and not path.resolve().is_relative_to(root.resolve()):
        # listing it would show another folder's file names
        return [
            TemplateProblem(
                f"templates folder {folder!r} is a link to somewhere outside the workspace; "
                "templates must be files inside it"
            )
        ]
    if not path.is_dir():
        return [
            TemplateProblem(
                f"templates folder {folder!r} does not exist in the workspace; create it, "
                "or remove `templates` to use the default messages"
            )
        ]
    problems = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith(".") or entry.name in TEMPLATE_NAMES:
            continue
        problems.append(
            TemplateProblem(
                f"unknown template file {entry.name!r}; the templates are "
                f"{', '.join(TEMPLATE_NAMES)}",
                f"{folder.rstrip('/')}/{entry.name}",
            )
        )
    templates = Templates(root, folder)
    context = template_context(sample_report())
    for name in TEMPLATE_NAMES:
        if not ((path / name).exists() or (path / name).is_symlink()):
            continue
        try:
            if name == "webhook.json.j2":
                templates.webhook(context)
            elif name == "subject.txt.j2":
                templates.email(context)
            else:
                templates.render(name, context)
        except TemplateProblem as exc:
            problems.append(exc)
    return problems
