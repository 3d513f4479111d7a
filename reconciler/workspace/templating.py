"""One sandboxed Jinja environment for everything users template: segment SQL, audience
names and (later) notification messages. Templates come from pull requests, so they are
untrusted: the sandbox (``template_sandbox``) forbids attribute tricks and bounds the time
and size of every render, and undefined names are errors.

Time is fixed by the plan's ``as_of``: ``today`` and ``days_ago(n)`` are the dates in the
workspace timezone at that instant, also when a saved plan is applied later.
"""

from __future__ import annotations

import unicodedata
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from jinja2 import TemplateError, TemplateSyntaxError, UndefinedError

from destinations.identity.text import INVISIBLE
from reconciler.workspace.template_budget import LIMITS, Limits, TemplateFailed
from reconciler.workspace.template_sandbox import render

__all__ = [
    "DEFAULT_NAME",
    "LIMITS",
    "Limits",
    "TemplateFailed",
    "local_date",
    "render_name",
    "render_sql",
    "render_template",
]


def local_date(as_of: datetime, timezone: str) -> date:
    return as_of.astimezone(ZoneInfo(timezone)).date()


def _sql_date(d: date) -> str:
    return f"DATE '{d.isoformat()}'"


def render_sql(sql: str, as_of: datetime, timezone: str, limits: Limits = LIMITS) -> str:
    """Render segment SQL; ``today`` / ``days_ago(n)`` become SQL date literals."""
    today = local_date(as_of, timezone)

    def days_ago(n: int) -> str:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TemplateFailed(f"days_ago() takes a whole number of days >= 0, not {n!r}")
        if n > (today - date.min).days:  # before year 1 (Python's words were about C ints)
            raise TemplateFailed(
                f"days_ago() takes at most {(today - date.min).days:,} days (back to year 1), "
                f"not {n:,}"
            )
        return _sql_date(today - timedelta(days=n))

    context = {"today": _sql_date(today), "days_ago": days_ago}
    return _render(sql, context, "today, days_ago(n)", limits)


def render_name(
    template: str,
    *,
    as_of: datetime,
    timezone: str,
    date_created: date,
    activation: str,
    segments: list[str],
    limits: Limits = LIMITS,
) -> str:
    """Render an audience name. Context: ``date_created`` (fixed when the audience was
    first created), ``today``, ``activation`` (the id), ``segments`` (names)."""
    name = _render(
        template,
        {
            "date_created": date_created.isoformat(),
            "today": local_date(as_of, timezone).isoformat(),
            "activation": activation,
            "segments": list(segments),
        },
        "date_created, today, activation, segments",
        limits,
    ).strip()
    if not name:
        raise TemplateFailed("the audience name renders empty")
    bad = next((c for c in name if unicodedata.category(c) in _CONTROL or c in _BIDI), None)
    if bad is not None:
        # a newline or an escape sequence would also reach terminals and PR comments
        raise TemplateFailed(
            f"the audience name holds a control character (U+{ord(bad):04X}); remove it"
        )
    hidden = next((c for c in name if c in _HIDDEN), None)
    if hidden is not None:
        raise TemplateFailed(
            f"the audience name holds an invisible character (U+{ord(hidden):04X}): it would "
            "look the same as a name without it; remove it"
        )
    return name


_CONTROL = ("Cc", "Zl", "Zp", "Cs")  # Cs: an unpaired surrogate, which is no text at all
#: text-direction overrides, which make a name read differently from what it is
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

#: invisible formatting characters (zero-width space, byte order mark, soft hyphen, direction
#: marks): a name holding one looks like another. The joiners (U+200C, U+200D) stay: emoji
#: sequences and some scripts need them
_HIDDEN = frozenset(INVISIBLE) - {"\u200c", "\u200d"}

DEFAULT_NAME = "{{ date_created }} {{ segments | join(', ') }}"


def render_template(source: str, context: dict, names: str, *, html: bool = False) -> str:
    """Render a user-editable template (notification messages) in the same bounded sandbox;
    ``html`` autoescapes every value. ``names`` lists the context for error messages."""
    return _render(source, context, names, LIMITS, html=html)


def _render(source: str, context: dict, names: str, limits: Limits, *, html: bool = False) -> str:
    try:
        return render(source, context, limits, html=html)
    except TemplateFailed as exc:
        exc.line = exc.line or _template_line(exc)
        raise
    except TemplateSyntaxError as exc:
        raise TemplateFailed(f"template error: {exc.message or exc}", exc.lineno) from exc
    except UndefinedError as exc:
        raise TemplateFailed(
            f"template error: {exc.message or exc}; the names available are {names}",
            _template_line(exc),
        ) from exc
    except TemplateError as exc:  # includes the sandbox's SecurityError
        raise TemplateFailed(f"template error: {exc.message or exc}", _template_line(exc)) from exc
    except RecursionError as exc:
        raise TemplateFailed("template error: the template nests or recurses too deeply") from exc
    except Exception as exc:  # type errors and the like inside the template
        raise TemplateFailed(f"template error: {exc}", _template_line(exc)) from exc


def _template_line(exc: BaseException) -> int | None:
    """The template line an error was raised at (Jinja rewrites tracebacks to point there)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
