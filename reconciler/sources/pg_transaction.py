"""The one transaction a PostgreSQL source's membership diff runs in, and the rows that cross
between it and the engine: the session's cursor (REPEATABLE READ, its temporary tables created
first, then READ ONLY with the statement timeout and search path of untrusted SQL), one
statement at a time with errors that name where they came from, and bulk moves both ways
(COPY through a CSV file in the source's folder). The base of
:class:`reconciler.sources.pg_pushdown.Pushdown`."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import psycopg
from psycopg import sql as pgsql

from reconciler.sources import pg_connect
from reconciler.sources.pg_twins import TEXT_SETTINGS
from reconciler.sources.pg_types import csv_relation

if TYPE_CHECKING:
    from reconciler.sources.postgres_source import PostgresProfilesSource

#: the temporary tables of a plan (the session's own pg_temp schema), made in its
#: transaction and gone with it
DDL = (
    "CREATE TEMP TABLE rk_seg (seg integer, k text) ON COMMIT DROP",
    "CREATE TEMP TABLE rk_desired (key text, held boolean, unknown boolean, "
    "suppressed boolean, no_consent boolean, matchable boolean, grp text, fp bigint) "
    "ON COMMIT DROP",
    "CREATE TEMP TABLE rk_recorded (key text, grp text, fp bigint) ON COMMIT DROP",
    "CREATE TEMP TABLE rk_dups (k text) ON COMMIT DROP",
    "CREATE TEMP TABLE rk_moving (k text) ON COMMIT DROP",
    "CREATE TEMP TABLE rk_leavers (key text, excluded boolean, rows integer) ON COMMIT DROP",
    "CREATE TEMP TABLE rk_members (key text, grp text, fp bigint, n integer) ON COMMIT DROP",
)


class PushdownTransaction:
    """The PostgreSQL transaction of one engine session and the COPY moves in and out of it
    (see the module's docstring)."""

    def __init__(self, source: PostgresProfilesSource, con: duckdb.DuckDBPyConnection):
        self.source, self.con = source, con
        #: rows that travelled into the engine (profiles, desired and recorded rows, keys)
        self.shipped_rows = 0
        self._cur: psycopg.Cursor | None = None
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ the transaction
    def cursor(self) -> psycopg.Cursor:
        """The cursor of the session's transaction (REPEATABLE READ: one snapshot), opened on
        first use: its temporary tables are created first, then it turns READ ONLY (PostgreSQL refuses every write
        from then on, temporary tables aside, and never lets it turn back) with the statement
        timeout and search path of untrusted SQL. One transaction holds everything, so it
        also works through a transaction-pooling connection pooler."""
        if self._cur is None:
            conn = self.source.connection()
            conn.read_only = False  # BEGIN read-write: only for the DDL below
            self._stack.callback(setattr, conn, "read_only", True)  # after the rollback
            try:
                self._stack.enter_context(conn.transaction(force_rollback=True))
                cur = self._stack.enter_context(conn.cursor())
                # one snapshot for every statement: segments, profiles and recorded members
                # are read as of the same moment
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                for statement in DDL:
                    cur.execute(statement)
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(
                    "SELECT set_config('statement_timeout', %s, true), "
                    "set_config('search_path', %s, true)",
                    [
                        f"{int(self.source.timeout * 1000)}",
                        pgsql.Identifier(self.source.schema).as_string(conn),
                    ],
                )
                cur.execute(TEXT_SETTINGS, [self.source.timezone])  # values as the engine's
            except psycopg.Error as exc:
                self.close()
                raise self.source._lost(exc) from None
            self._cur = cur
        return self._cur

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._stack.close()
        self._cur = None

    def run(self, sql: str, params: Sequence[Any] = (), *, where: str, what: str, user: str = ""):
        """One statement in the transaction; a timeout or an error names ``where``."""
        cur = self.cursor()
        started = time.monotonic()
        try:
            # no parameters: no placeholder parsing (user SQL may hold a literal %)
            return cur.execute(sql, list(params) if params else None)
        except psycopg.Error as exc:
            raise self._error(exc, cur, started, user or sql, where, what, sql) from None

    def _error(
        self,
        exc: psycopg.Error,
        cur: psycopg.Cursor,
        started: float,
        sql: str,
        where: str,
        what: str,
        sent: str = "",
    ) -> Exception:
        """The statement's timeout as the time limit of untrusted SQL; anything else (an
        administrator's cancel included) as the source's failure."""
        timeout = self.source.timeout
        if isinstance(exc, psycopg.errors.QueryCanceled) and pg_connect.hit_time_limit(
            cur.connection, started, timeout
        ):
            return pg_connect.timed_out(where, what, timeout)
        return self.source._failed(exc, sql, where, what, sent)

    # ------------------------------------------------------------------ bulk moves
    def copy_out(self, query: str, into: str, types: dict[str, str], join: str = "") -> int:
        """``COPY (query) TO STDOUT`` into a CSV file that DuckDB reads (``into`` is the
        statement's head: ``CREATE … AS`` or ``INSERT INTO …``)."""
        cur = self.cursor()
        assert self.source.folder is not None
        fd, name = tempfile.mkstemp(suffix=".csv", dir=self.source.folder)
        try:
            with os.fdopen(fd, "wb") as out:
                started = time.monotonic()
                try:
                    with cur.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)") as copy:
                        out.writelines(copy)
                except psycopg.Error as exc:
                    where, what = self.source._where(), "the membership diff"
                    raise self._error(exc, cur, started, query, where, what) from None
            count = max(cur.rowcount, 0)
            try:
                self.con.execute(f"{into} SELECT r.* FROM {csv_relation(name, types)} r {join}")
            except duckdb.Error as exc:  # a value the engine cannot read as the column's type
                raise self.source.read_error(self.con, name, types, exc, query) from None
            self.shipped_rows += count
            return count
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def copy_in(self, query: str, table: str, columns: str) -> None:
        """The rows of an engine ``query`` into a PostgreSQL temporary ``table`` (COPY)."""
        cur = self.cursor()
        assert self.source.folder is not None
        fd, name = tempfile.mkstemp(suffix=".csv", dir=self.source.folder)
        os.close(fd)
        try:
            quoted = name.replace("'", "''")
            self.con.execute(f"COPY ({query}) TO '{quoted}' (FORMAT csv, HEADER false)")
            with (
                open(name, "rb") as f,
                cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy,
            ):
                while block := f.read(1 << 20):
                    copy.write(block)
        except psycopg.Error as exc:
            raise self.source._lost(exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
