"""Markdown rendering of a :class:`~reconciler.plan.model.Plan`: the pull-request comment.

The layout lives in ``templates/plan.md.j2``; this module turns the plan into plain rows and
blocks for it. Autoescaping is off (this is Markdown, not HTML), so every user-provided name goes
through the ``md`` filter, which escapes what would break a table or the formatting (``|``,
backticks, ...). Names inside HTML tags (``<summary>``) go through Jinja's ``e`` filter instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import jinja2

from reconciler.plan import state_loss
from reconciler.plan.model import ActivationPlan, Change, ConfigChange, Plan
from reconciler.render.estimates import DestinationCalls, summary_line
from reconciler.render.text import (
    attribute_line,
    audience_line,
    effective_change,
    export_lines,
    mass_removal_line,
    num,
    pct,
    text_diff,
    value,
)

__all__ = ["escape_md", "render_markdown"]

#: a commit id as git prints it (abbreviated or full, SHA-1 or SHA-256)
COMMIT = re.compile(r"[0-9a-f]{7,64}")
SPEC_PATHS = 5  # changed fields named per activation in the spec-changes table

_MD_SPECIAL = re.compile(r"([\\`|*_~\[\]<>&])")
CHANGE_LABELS = {
    Change.CREATE: "create",
    Change.UPDATE: "update",
    Change.DELETE: "delete",
    Change.NOOP: "no changes",
    Change.PAUSED: "paused",
}


#: characters of one user value shown in a comment
MAX_SHOWN = 300
#: what GitHub turns into a link by itself: a scheme's "://" and "www."
_AUTOLINK = re.compile(r"(?i)(?<=[a-z0-9+.-]):/|\bwww\.")


def escape_md(text: Any) -> str:
    """Escape Markdown specials in user text so it cannot break a table cell or the layout
    (``&`` too: ``&#64;`` would render as ``@``), and keep an ``@name`` from notifying a
    GitHub user or team and a ``#123`` from referencing an issue (a zero-width space after
    the ``@`` or ``#``: it reads the same)."""
    flat = " ".join(str(text).splitlines())
    if len(flat) > MAX_SHOWN:  # a 30,000-character name pushed the deletions out of the comment
        flat = f"{flat[:MAX_SHOWN]}… ({len(flat):,} characters)"
    escaped = _MD_SPECIAL.sub(r"\\\1", flat).replace("@", "@\u200b").replace("#", "#\u200b")
    # no autolink either: "approve at https://…" in a name would be a link in the bot's comment
    return _AUTOLINK.sub(lambda m: m.group(0)[:-1] + "\u200b" + m.group(0)[-1], escaped)


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
        "audiences": export_lines(a) or [audience_line(a, au) for au in a.audiences],
        "attributes": [line for au in a.audiences if (line := attribute_line(au))],
        "diff": diff,
        "fence": _fence(diff),
    }


def _spec_row(a: ActivationPlan) -> dict[str, Any]:
    if a.change is Change.CREATE:
        what = "new activation"
    elif a.change is Change.DELETE:
        kept = "cleared" if a.on_delete == "clear" else "kept"
        what = f"leaves management (the audience is {kept})"
    else:
        paths = [c.path for c in a.config_changes]
        paths += [f"segment {s.name} definition" for s in a.segments if s.changed]
        paths += [f"audience name ({au.name})" for au in a.audiences if au.rename_from]
        what = (
            ", ".join(
                paths[:SPEC_PATHS]
                + ([f"and {len(paths) - SPEC_PATHS} more"] if len(paths) > SPEC_PATHS else [])
            )
            or "spec"
        )
    return {
        "activation": a.id,
        "change": CHANGE_LABELS[a.change],
        "destination": f"{a.destination} ({a.destination_type})",
        "what": what,
    }


def render_markdown(
    plan: Plan,
    *,
    max_chars: int | None = None,
    commit: str | None = None,
    calls: Sequence[DestinationCalls] | None = None,
) -> str:
    """The plan as a GitHub-flavoured Markdown pull-request comment.

    Spec changes (created, updated, deleted activations) come before data movement (member
    counts per audience); unchanged activations are collapsed. With ``max_chars`` the comment
    stays within that many characters: what does not fit is left out, with a notice pointing
    to the full plan (``reconcile show PLANFILE --format markdown``, the job summary in CI).
    ``commit`` names the commit the plan was made from; ``calls`` adds a small line with the
    requests each destination needs.
    """
    if commit is not None and not COMMIT.fullmatch(commit):
        raise ValueError(f"not a commit id: {commit!r}")
    macros: Any = environment().get_template("plan.md.j2").module
    pieces = _pieces(macros, plan, commit)
    footer = macros.footer(
        plan, plan.as_of.isoformat(), commit, [summary_line(c) for c in calls or ()]
    )
    whole = "".join(header + piece for header, piece in pieces) + footer
    if max_chars is None or len(whole) <= max_chars:
        return whole
    notice = macros.truncated(10**9)  # the longest notice: its room is kept free
    room = max_chars - len(footer) - len(notice)
    if len(pieces[0][1]) > room:
        raise ValueError(f"max_chars={max_chars} leaves no room for the plan's summary")
    kept: list[str] = []
    for n, (header, piece) in enumerate(pieces):
        if len(header) + len(piece) > room:
            kept.append(macros.truncated(len(pieces) - n))
            break
        kept.append(header + piece)
        room -= len(header) + len(piece)
    return "".join(kept) + footer


def _pieces(macros: Any, plan: Plan, commit: str | None) -> list[tuple[str, str]]:
    """The comment as ``(header, piece)`` pairs in reading order; a table's header goes with its
    first row, so a cut never leaves a table without rows or a block half open."""
    changed = [a for a in plan.activations if a.has_changes]
    unchanged = [a for a in plan.activations if not a.has_changes]
    pieces = [("", macros.head(plan, plan.summary, plan.has_changes, commit))]
    if plan.state_notice or plan.state_loss:
        pieces.append(("", macros.state(plan.state_notice, state_loss.summary_lines(plan))))
    pieces += [
        ("", macros.warning(a, mass_removal_line(a, au)))
        for a in changed
        for au in a.audiences
        if au.mass_removal and au.sent
    ]
    pieces += [("", macros.notice(a, w)) for a in plan.activations for w in a.warnings]
    # what destroys first: a comment cut to fit never leaves out a deletion or a removal
    # while it shows additions (sorted() keeps the plan's order within each kind)
    spec = sorted(
        (a for a in changed if a.change in (Change.CREATE, Change.UPDATE, Change.DELETE)),
        key=lambda a: a.change is not Change.DELETE,
    )
    rows = sorted(
        (r for a in changed if a.member_changes or not a.audiences for r in _rows(a)),
        key=lambda r: not (r["remove"] or r["change"] == CHANGE_LABELS[Change.DELETE]),
    )
    for header, items in (
        (macros.spec_header(), [macros.spec_row(_spec_row(a)) for a in spec]),
        (macros.data_header(), [macros.data_row(r) for r in rows]),
    ):
        pieces += [(header if i == 0 else "", item) for i, item in enumerate(items)]
    pieces += [("", macros.detail(_detail(a))) for a in changed]
    if unchanged:
        pieces.append(("", macros.unchanged(unchanged)))
    return pieces
