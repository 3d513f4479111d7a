"""One sandboxed Jinja environment for everything users template: segment SQL, audience
names and (later) notification messages. Templates come from pull requests, so they are
untrusted: the sandbox forbids attribute tricks and undefined names are errors.

Time is fixed by the plan's ``as_of``: ``today`` and ``days_ago(n)`` are the dates in the
workspace timezone at that instant, also when a saved plan is applied later.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)


class TemplateFailed(Exception):
    """A template did not render; the caller adds the file and field."""


def local_date(as_of: datetime, timezone: str) -> date:
    return as_of.astimezone(ZoneInfo(timezone)).date()


def _sql_date(d: date) -> str:
    return f"DATE '{d.isoformat()}'"


def render_sql(sql: str, as_of: datetime, timezone: str) -> str:
    """Render segment SQL; ``today`` / ``days_ago(n)`` become SQL date literals."""
    today = local_date(as_of, timezone)

    def days_ago(n: int) -> str:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TemplateFailed(f"days_ago() takes a whole number of days >= 0, not {n!r}")
        return _sql_date(today - timedelta(days=n))

    return _render(sql, {"today": _sql_date(today), "days_ago": days_ago})


def render_name(template: str, *, as_of: datetime, timezone: str, date_created: date,
                activation: str, segments: list[str]) -> str:
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
    ).strip()
    if not name:
        raise TemplateFailed("the audience name renders empty")
    return name


DEFAULT_NAME = "{{ date_created }} {{ segments | join(', ') }}"


def _render(source: str, context: dict) -> str:
    try:
        return _ENV.from_string(source).render(context)
    except TemplateFailed:
        raise
    except TemplateError as exc:
        raise TemplateFailed(f"template error: {exc.message or exc}") from exc
    except Exception as exc:  # sandbox SecurityError, type errors inside the template
        raise TemplateFailed(f"template error: {exc}") from exc
