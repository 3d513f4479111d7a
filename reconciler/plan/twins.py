"""Audiences an activation made on an earlier date, found by their name's shape.

The default audience name, ``"<date created> <segment names>"``, and any template using
``date_created``, give a new audience a new name every day. After a state loss the plan's name
for an audience is therefore not the name of the one the activation made: an exact lookup by
name finds nothing, and apply would create a second audience. :func:`dated_pattern` turns the
template into a pattern matching its name on *any* creation date, so the state-loss check
(:mod:`reconciler.plan.state_loss`) finds those audiences too, and ``reconcile import`` takes
the creation date back from the name it imports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date

from destinations.base import AudienceRef

__all__ = ["created_on", "dated_pattern", "earlier_twins"]

#: a creation date no real audience has: where it shows in the rendered name, the name
#: depends on the creation date
_MARK = date(1000, 1, 1)
_DATE = r"(?P<d>\d{4}-\d{2}-\d{2})"


def dated_pattern(render: Callable[[date], str]) -> re.Pattern[str] | None:
    """A pattern matching the name ``render(date_created)`` gives for any creation date (the
    same date wherever the name repeats it); None when the name does not depend on it."""
    marked = render(_MARK)
    mark = _MARK.isoformat()
    if mark not in marked:
        return None
    first, after, *more = marked.split(mark)
    again = "".join("(?P=d)" + re.escape(part) for part in more)
    return re.compile(re.escape(first) + _DATE + re.escape(after) + again)


def created_on(pattern: re.Pattern[str], name: str) -> date | None:
    """The creation date a name of ``pattern``'s shape carries (None: not of that shape)."""
    m = pattern.fullmatch(name)
    if m is None:
        return None
    try:
        return date.fromisoformat(m.group("d"))
    except ValueError:  # 2026-13-45 is the shape, not a date
        return None


def earlier_twins(
    audiences: Iterable[AudienceRef], pattern: re.Pattern[str], name: str
) -> list[AudienceRef]:
    """The audiences whose names are ``name`` made on another date, newest date first."""
    found = [(d, a) for a in audiences if a.name != name and (d := created_on(pattern, a.name))]
    return [a for _, a in sorted(found, key=lambda pair: (pair[0], pair[1].id), reverse=True)]
