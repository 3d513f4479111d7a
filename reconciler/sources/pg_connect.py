"""Connections to a PostgreSQL source, and the one way untrusted SQL runs there.

- :func:`resolve_dsn` reads ``source.dsn`` (an ``${env:VAR}`` reference) and
  :func:`masked` shows a DSN without its password; no error here ever quotes a password.
- :func:`untrusted` is the transaction every untrusted query runs in: ``BEGIN READ ONLY``,
  ``statement_timeout`` = ``source.query_timeout``, ``search_path`` = the source's schema.
  PostgreSQL refuses any write inside it, even if the SQL guard were bypassed.
- :func:`engine_error` turns a PostgreSQL error into the same data-free message as a DuckDB
  one (:func:`reconciler.sources.engine_errors.safe_engine_error`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.errors import SegmentError, SourceError
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.workspace.spec_base import ENV_REF_RE

__all__ = [
    "connect",
    "engine_error",
    "error_token",
    "hit_time_limit",
    "masked",
    "resolve_dsn",
    "timed_out",
    "untrusted",
]

CONNECT_TIMEOUT = 10


def resolve_dsn(value: str, where: str) -> str:
    match = ENV_REF_RE.fullmatch(value)
    if match is None:
        return value
    dsn = os.environ.get(match.group(1), "")
    if not dsn:
        raise SourceError(
            f"{where}: the source DSN comes from environment variable {match.group(1)}, which "
            "is not set; set it (in CI: from a secret) to a PostgreSQL connection string"
        )
    return dsn


def masked(dsn: str) -> str:
    """``host:port/dbname (user ...)`` without the password; never the raw text."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unreadable connection string"
    host = parts.get("host") or parts.get("hostaddr") or "local socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f" as {parts['user']}" if parts.get("user") else ""
    return f"postgresql://{host}{port}/{parts.get('dbname') or ''}{user}"


def _scrub(text: str, dsn: str) -> str:
    """A libpq message with any password of ``dsn`` replaced by ***."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        password = None
    text = " ".join(str(text).split())
    return text.replace(str(password), "***") if password else text


def connect(dsn: str, where: str, *, timezone: str = "UTC") -> psycopg.Connection:
    """A connection whose transactions are read-only, its session in ``timezone`` (the
    workspace's: timestamptz values become text as in the engine, whatever the server's
    or the machine's zone); a clear SourceError otherwise."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise SourceError(
            f"{where}: the source DSN is not a valid PostgreSQL connection string (key=value "
            "pairs or a postgresql:// URI); its text is not shown, it may hold a password"
        ) from None
    try:
        conn = psycopg.connect(
            make_conninfo(dsn, application_name="reconcile"),
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=False,
        )
    except psycopg.Error as exc:
        raise SourceError(
            f"{where}: cannot connect to the PostgreSQL source {masked(dsn)}: "
            f"{_scrub(str(exc), dsn)}; check `source.dsn` and that the server is reachable"
        ) from None
    conn.execute("SELECT set_config('TimeZone', %s, false)", [timezone])
    conn.commit()
    conn.read_only = True
    return conn


@contextmanager
def untrusted(
    conn: psycopg.Connection, schema: str, timeout: float, where: str, what: str
) -> Iterator[psycopg.Cursor]:
    """A cursor in a READ ONLY transaction with a statement timeout and the source's schema
    as its search path; rolled back at the end (nothing it did can persist). A timeout is
    reported like DuckDB's (:func:`reconciler.sources.limits.time_limit`)."""
    started = time.monotonic()
    try:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('search_path', %s, true)",
                [f"{int(timeout * 1000)}", pgsql.Identifier(schema).as_string(conn)],
            )
            yield cur
    except psycopg.errors.QueryCanceled as exc:
        if not hit_time_limit(conn, started, timeout):
            raise  # cancelled or terminated by someone else: the caller's "failed" message
        raise timed_out(where, what, timeout) from exc


def hit_time_limit(conn: psycopg.Connection, started: float, timeout: float) -> bool:
    """Whether a ``QueryCanceled`` raised on ``conn`` is the ``statement_timeout``: the
    statement ran (nearly) that long and the connection is still up. A backend cancelled
    or terminated by an administrator (or a server shutting down) also raises it, and is
    a failure of the source, not SQL too slow to run (the server's message text depends on
    its locale, so time is the test)."""
    return not conn.broken and time.monotonic() - started >= 0.9 * timeout


def timed_out(where: str, what: str, timeout: float) -> SegmentError:
    """The error of untrusted SQL that PostgreSQL stopped at ``statement_timeout``."""
    return SegmentError(
        f"{where}: {what} was stopped after {timeout:g} s, the time limit for untrusted "
        "SQL (`source.query_timeout` in reconcile.yaml); make it cheaper (filter early, "
        "avoid cross joins and unbounded recursion) or raise the limit"
    )


#: SQLSTATE classes whose messages are about the query text (names, types), not row values
_TEXT_CLASSES = {"42": "Syntax", "0A": "Not Supported", "25": "Read Only"}
_DATA_CLASSES = {"22": "Conversion", "23": "Constraint", "53": "Out of Memory"}
#: SQLSTATEs of class 42 named for what they are (the rest of it resolves names and types)
_TEXT_STATES = {"42601": "Syntax", "42501": "Permission"}


#: a name or word at the server's error position
_TOKEN = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')


def error_token(exc: psycopg.Error, sent: str) -> str | None:
    """The name the server's error points at in the statement ``sent`` (its position counts
    characters from 1), unquoted; None when it points at no name."""
    position = exc.diag.statement_position
    if not position or not position.isdigit() or not sent:
        return None
    m = _TOKEN.match(sent, int(position) - 1)
    return (m.group(1).replace('""', '"') if m.group(1) else m.group(2)) if m else None


def engine_error(exc: psycopg.Error, sql: str) -> str:
    """The server's message when it is about the query text, else only its class (a
    data exception can quote the value it failed on)."""
    state = exc.sqlstate or ""
    primary = exc.diag.message_primary or str(exc).splitlines()[0]
    if state[:2] in _TEXT_CLASSES:
        # class 42 is more than syntax: a name or type that does not resolve is what DuckDB
        # calls a Binder Error (a misspelt column, a missing GROUP BY, an ambiguous name)
        kind = _TEXT_STATES.get(state) or (
            "Binder" if state[:2] == "42" else _TEXT_CLASSES[state[:2]]
        )
        return f"{kind} Error: {' '.join(primary.split())}"
    cls = _DATA_CLASSES.get(state[:2], "Database")
    detail, _ = safe_engine_error(f"{cls} Error: {primary}", sql)
    return detail
