"""Markdown rendering of a :class:`~reconciler.plan.model.Plan`: the pull-request comment.

The layout lives in ``templates/plan.md.j2``; this module turns the plan into plain rows and
blocks for it. Autoescaping is off (this is Markdown, not HTML), so every user-provided name goes
through the ``md`` filter, which escapes what would break a table or the formatting (``|``,
backticks, ...). Names inside HTML tags (``<summary>``) go through Jinja's ``e`` filter instead.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jinja2

from reconciler.plan.model import ActivationPlan, Change, ConfigChange, Plan
from reconciler.render.text import (
    audience_line,
    effective_change,
    mass_removal_line,
    num,
    pct,
    text_diff,
    value,
)

__all__ = ["escape_md", "render_markdown"]

_MD_SPECIAL = re.compile(r"([\\`|*_~\[\]<>])")
CHANGE_LABELS = {
    Change.CREATE: "create",
    Change.UPDATE: "update",
    Change.DELETE: "delete",
    Change.NOOP: "no changes",
    Change.PAUSED: "paused",
}


def escape_md(text: Any) -> str:
    """Escape Markdown specials in user text so it cannot break a table cell or the layout."""
    flat = " ".join(str(text).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", flat)


@cache
def environment() -> jinja2.Environment:
    """The Jinja environment of the Markdown templates (package data, autoescape off)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reconciler", "render/templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = escape_md
    env.filters["num"] = num
    return env


def _config_diff(changes: list[ConfigChange]) -> list[str]:
    """Config changes as the lines of a ```diff block (GitHub colours ``+``/``-`` lines)."""
    lines: list[str] = []
    for c in changes:
        if any(isinstance(v, str) and "\n" in v for v in (c.old, c.new)):
            lines.append(f"@@ {c.path} @@")
            lines += [f"{sign} {line}".rstrip() for sign, line in text_diff(c.old, c.new)]
            continue
        if c.kind != "added":
            lines.append(f"- {c.path}: {value(c.old)}")
        if c.kind != "removed":
            lines.append(f"+ {c.path}: {value(c.new)}")
    return lines


def _fence(lines: list[str]) -> str:
    """A code fence longer than any run of backticks in the block."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    return "`" * max(3, longest + 1)


def _rows(a: ActivationPlan) -> list[dict[str, Any]]:
    change = CHANGE_LABELS[effective_change(a)]
    destination = f"{a.destination} ({a.destination_type})"
    rows = []
    for au in a.audiences:
        marks = ["new"] if au.create else []
        marks += [] if au.sent else ["control: recorded, not sent"]
        if au.forget:
            marks.append(f"forget {num(au.forget)}")
        rows.append(
            {
                "activation": a.id,
                "change": change,
                "warn": au.mass_removal and au.sent,
                "destination": destination,
                "audience": au.name,
                "rename_from": au.rename_from,
                "marks": ", ".join(marks),
                "add": au.add,
                "remove": au.remove,
                "update": au.update,
            }
        )
    if not rows:
        rows.append(
            {
                "activation": a.id,
                "change": change,
                "warn": False,
                "destination": destination,
                "audience": "",
                "rename_from": None,
                "marks": "",
                "add": 0,
                "remove": 0,
                "update": 0,
            }
        )
    return rows


def _detail(a: ActivationPlan) -> dict[str, Any]:
    diff = _config_diff(a.config_changes)
    return {
        "a": a,
        "change": CHANGE_LABELS[effective_change(a)],
        "match": f"can match {num(a.matchable)} of {num(a.audience_size)} "
        f"({pct(a.matchable, a.audience_size)})",
        "audiences": [audience_line(a, au) for au in a.audiences],
        "diff": diff,
        "fence": _fence(diff),
    }


def render_markdown(plan: Plan) -> str:
    """The plan as a GitHub-flavoured Markdown pull-request comment."""
    changed = [a for a in plan.activations if a.has_changes]
    warnings = [
        (a, mass_removal_line(a, au))
        for a in changed
        for au in a.audiences
        if au.mass_removal and au.sent
    ]
    template = environment().get_template("plan.md.j2")
    return template.render(
        plan=plan,
        s=plan.summary,
        has_changes=plan.has_changes,
        rows=[row for a in changed for row in _rows(a)],
        details=[_detail(a) for a in changed],
        warnings=warnings,
        unchanged=[a for a in plan.activations if not a.has_changes],
        as_of=plan.as_of.isoformat(),
    )
