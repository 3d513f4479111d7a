"""The PostgreSQL server of the tests (127.0.0.1:5432, trust auth, database ``test``).

``pg_dsn`` yields a DSN whose ``search_path`` is a fresh schema (dropped afterwards), plus
the schema's name as ``pg_dsn.schema``. Without a server the tests skip with the reason —
except under ``CI=true``, where an unreachable server FAILS them: CI must not go green
without having run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

HOST = os.environ.get("RECONCILE_TEST_PGHOST", "127.0.0.1")
PORT = os.environ.get("RECONCILE_TEST_PGPORT", "5432")
DATABASE = os.environ.get("RECONCILE_TEST_PGDATABASE", "test")
USERS = ("postgres", "root")


class PgDsn(str):
    """A DSN (a ``str``) that also knows its schema."""

    schema: str
    base: str  # the DSN without the search_path option


def server_dsn() -> str:
    """A DSN for the first user the server accepts; skip (or fail under CI) otherwise."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        _unavailable(f"psycopg is not installed ({exc})")
    problems = []
    for user in USERS:
        dsn = f"host={HOST} port={PORT} dbname={DATABASE} user={user} connect_timeout=5"
        try:
            psycopg.connect(dsn).close()
            return dsn
        except psycopg.Error as exc:
            problems.append(" ".join(str(exc).split()))
    _unavailable(f"PostgreSQL at {HOST}:{PORT}/{DATABASE} is not reachable: {problems[-1]}")
    raise AssertionError  # unreachable


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):  # as the tool reads it
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pg_dsn() -> Iterator[PgDsn]:
    import psycopg
    from psycopg import sql

    base = server_dsn()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    dsn = PgDsn(f"{base} options='-c search_path={schema}'")
    dsn.schema, dsn.base = schema, base
    try:
        yield dsn
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
