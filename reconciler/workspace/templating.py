"""One sandboxed Jinja environment for everything users template: segment SQL, audience
names and (later) notification messages. Templates come from pull requests, so they are
untrusted: the sandbox forbids attribute tricks and undefined names are errors.

Time is fixed by the plan's ``as_of``: ``today`` and ``days_ago(n)`` are the dates in the
workspace timezone at that instant, also when a saved plan is applied later.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: results larger than this (characters, or digits of a number) are refused
MAX_RESULT = 100_000


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus bounds on ``*`` and ``**`` so a template from a pull request cannot
    hang the runner with ``{{ 9**9**9 }}`` or ``{{ 'a' * 10**10 }}``."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        numbers = isinstance(left, int | float) and isinstance(right, int | float)
        if operator == "**" and numbers and abs(right) > 64 and abs(left) > 1:
            raise TemplateFailed(f"exponent {right} is too large in a template")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > MAX_RESULT
                ):
                    raise TemplateFailed("a repeated string or list is too long in a template")
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > 4 * MAX_RESULT
            ):
                raise TemplateFailed("a number is too large in a template")
        return super().call_binop(context, operator, left, right)


_ENV = _BoundedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_HTML_ENV = _BoundedEnvironment(
    undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True
)


class TemplateFailed(Exception):
    """A template did not render; the caller adds the file and field. ``line`` is the line
    within the template, when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


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

    return _render(sql, {"today": _sql_date(today), "days_ago": days_ago}, "today, days_ago(n)")


def render_name(
    template: str,
    *,
    as_of: datetime,
    timezone: str,
    date_created: date,
    activation: str,
    segments: list[str],
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
    ).strip()
    if not name:
        raise TemplateFailed("the audience name renders empty")
    return name


DEFAULT_NAME = "{{ date_created }} {{ segments | join(', ') }}"


def render_template(source: str, context: dict, names: str, *, html: bool = False) -> str:
    """Render a user-editable template (notification messages) in the same sandbox;
    ``html`` autoescapes every value. ``names`` lists the context for error messages."""
    return _render(source, context, names, _HTML_ENV if html else _ENV)


def _render(source: str, context: dict, names: str, env: _BoundedEnvironment = _ENV) -> str:
    try:
        return env.from_string(source).render(context)
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
