"""Renderers of a :class:`~reconciler.plan.model.Plan`: ``text`` (terminal), ``markdown`` (pull-request
comment) and ``json`` (scripts). Every front end goes through :func:`render`.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.plan.model import Plan
from reconciler.render.estimates import CallLimits, DestinationCalls, destination_calls
from reconciler.render.json import render_json
from reconciler.render.markdown import render_markdown
from reconciler.render.text import render_text

__all__ = [
    "FORMATS",
    "CallLimits",
    "DestinationCalls",
    "destination_calls",
    "render",
    "render_json",
    "render_markdown",
    "render_text",
]

FORMATS = ("text", "markdown", "json")


def render(
    plan: Plan,
    fmt: str,
    *,
    color: bool = False,
    calls: Sequence[DestinationCalls] | None = None,
) -> str:
    """Render ``plan`` as ``text``, ``markdown`` or ``json``; ``color`` applies to text only;
    ``calls`` (from :func:`destination_calls`) adds the requests each destination needs.

    Raises ``ValueError`` for any other format.
    """
    if fmt == "text":
        return render_text(plan, color=color, calls=calls)
    if fmt == "markdown":
        return render_markdown(plan, calls=calls)
    if fmt == "json":
        return render_json(plan, calls=calls)
    raise ValueError(f"unknown plan format {fmt!r}; choose one of: {', '.join(FORMATS)}")
