"""The PostgreSQL source: profiles live in a PostgreSQL schema; segment SQL, consent
conditions and ``freshness_sql`` run *there* (psycopg 3, a READ ONLY transaction with a
statement timeout, see :mod:`~reconciler.sources.pg_connect`), checked first by the same
guard as DuckDB SQL (:mod:`~reconciler.sources.pg_guard`).

Only what the diff needs travels into the engine's DuckDB session, in bulk — ``COPY ... TO
STDOUT`` streamed into a CSV file that DuckDB reads, never a Python loop over rows:

- at :meth:`attach`, the key, the identifier columns, the attribute columns some integration
  maps and one boolean per integration consent condition, evaluated in PostgreSQL, as the table
  ``source.<profiles>`` — the plan and apply join it like the DuckDB source's table;
- per segment, its keys (:meth:`materialise`).

Seam: when the state lives on the same server (a PostgreSQL state backend), the diff can run
inside PostgreSQL instead; :meth:`materialise` is the one place membership leaves the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import sqlglot
from psycopg import sql as pgsql

from reconciler.errors import Location, SegmentError, SourceError
from reconciler.sources import pg_catalog, pg_connect, pg_keys
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.guard import SqlPolicy, SqlRejected, check_condition, check_segment_sql
from reconciler.sources.identifier_columns import check_identifier_columns
from reconciler.sources.pg_twins import TEXT_SETTINGS
from reconciler.sources.pg_types import csv_relation, display_type, duck_type, unreadable_columns
from reconciler.workspace.spec import PostgresSource

SOURCE_CATALOG = "source"
CONSENT_PREFIX = "__reconcile_consent_"


class PostgresProfilesSource:
    dialect = "postgres"
    catalog = SOURCE_CATALOG

    def __init__(
        self,
        spec: PostgresSource,
        root: Path,
        locate: Callable[..., Location] | None = None,
        consents: dict[str, tuple[str, str]] | None = None,
        mapped: set[str] | None = None,
        timezone: str = "UTC",
    ):
        self.spec = spec
        #: the session's TimeZone: timestamptz values become text as the engine's do
        self.timezone = timezone
        self.profiles = spec.profiles
        self.schema = spec.schema_
        self.root = root
        self.locate = locate or (
            lambda *loc: Location("reconcile.yaml", None, ".".join(map(str, loc)))
        )
        #: integration -> (consent condition, where it is written)
        self.consents = consents or {}
        #: the attribute columns some integration maps (None: all); only these travel
        self.mapped = mapped
        #: integration -> the projection's column holding its consent flag
        self.consent_columns = {
            n: f"{CONSENT_PREFIX}{i}" for i, n in enumerate(sorted(self.consents))
        }
        self.timeout = float(spec.query_timeout)
        self.policy = SqlPolicy(
            profiles_table=self.profiles.table,
            tables=tuple(spec.tables),
            catalog="",
            schema=self.schema,
        )
        #: the diff in PostgreSQL (set at attach; None: every profile is copied)
        self.pushdown: Any = None
        #: a plan's session: run the membership diff in PostgreSQL (``source.diff``)
        self.diff_in_source = False
        #: an apply's session: copy only the profiles of these keys (a SQL relation ``k``)
        self.only_keys_of: str | None = None
        self._dsn: str | None = None
        self._conn: psycopg.Connection | None = None
        #: the profiles relation, read from the server's catalog
        self.profiles_catalog = pg_catalog.ProfilesCatalog(self)
        self.key_column: pg_keys.Column | None = None  # the key's type (set at attach)
        self.folder: Path | None = None  # where COPY output lands for DuckDB to read

    # ------------------------------------------------------------------ connection
    @property
    def dsn(self) -> str:
        if self._dsn is None:
            self._dsn = pg_connect.resolve_dsn(self.spec.dsn, str(self.locate("source", "dsn")))
        return self._dsn

    def connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = pg_connect.connect(
                self.dsn, str(self.locate("source", "dsn")), timezone=self.timezone
            )
        return self._conn

    def describe(self) -> str:
        return f"PostgreSQL {pg_connect.masked(self.dsn)} schema {self.schema!r}"

    @property
    def allowed_directories(self) -> tuple[str, ...]:
        return (str(self.folder) + os.sep,) if self.folder else ()

    def close(self) -> None:
        if self.pushdown is not None:
            self.pushdown.close()
            self.pushdown = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    # ------------------------------------------------------------------ prepare / attach
    def prepare(self, as_of_date: date) -> None:
        """Check that the profiles table is there and readable (or fill the demo's). A
        failure closes the connection: no session owns the source yet to close it."""
        try:
            self._prepare(as_of_date)
        except BaseException:
            self.close()
            raise

    def _prepare(self, as_of_date: date) -> None:
        columns = self.profiles_catalog.columns()
        if columns:
            return
        if self.spec.demo:
            from reconciler.sources import pg_demo

            with self._tmp() as tmp:
                pg_demo.fill(
                    self.connection(),
                    self.schema,
                    self.profiles.table,
                    self.spec.demo_profiles,
                    as_of_date,
                    tmp,
                )
            return
        raise self.profiles_catalog.missing()

    def _lost(self, exc: psycopg.Error) -> SourceError:
        detail = " ".join(str(exc).split()) if not isinstance(exc, psycopg.DataError) else ""
        return SourceError(
            f"{self.locate('source', 'dsn')}: the PostgreSQL source {pg_connect.masked(self.dsn)} "
            f"failed: {detail or type(exc).__name__}"
        )

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Copy the contract columns of the profiles table, with the consent flags computed
        in PostgreSQL, into ``source.<table>`` of the session, and make it the default.
        With the diff in PostgreSQL (:attr:`pushdown`), the table starts empty and receives
        only the rows of profiles whose membership changes."""
        columns = self.profiles_catalog.columns()
        check_identifier_columns(
            self.profiles, self.profiles_catalog.identifier_types(columns), self.locate, "postgres"
        )
        self.key_column = pg_keys.checked_key(columns, self.profiles, self.locate)
        select, types = self.projection(columns)
        # in memory: beyond the session's memory_limit DuckDB spills it to temp_directory
        # (a database file instead costs ~1 s more CPU per million profiles, measured)
        con.execute(f"ATTACH ':memory:' AS {SOURCE_CATALOG}")
        con.execute(f"USE {SOURCE_CATALOG}")
        self.folder = self._new_folder()
        if (self.diff_in_source or self.only_keys_of) and self.pushdown_wanted(columns):
            from reconciler.sources.pg_pushdown import Pushdown

            body = ", ".join(f'"{c}" {t}' for c, t in types.items())
            con.execute(f'CREATE TABLE "{self.profiles.table}" ({body})')
            pushdown = Pushdown(self, con, columns, select, types)
            if self.only_keys_of is None:  # a plan: each activation's diff ships its rows
                self.pushdown = pushdown
                return
            try:  # an apply: the profiles of the plan's member changes, nothing else
                pushdown.ship_profiles_of(self.only_keys_of)
            finally:
                pushdown.close()
            return
        query = self.profiles_query(select)
        what = "the consent conditions" if self.consents else "reading the profiles table"
        try:
            self.copy_into(con, query, f'"{self.profiles.table}"', types, self._where(), what)
        except duckdb.Error as exc:  # a value DuckDB cannot read as the column's type
            detail, _ = safe_engine_error(exc, query)
            raise SourceError(
                f"{self._where()}: the profiles table {self.profiles.table!r} in "
                f"{self.describe()} could not be read into the engine: {detail}"
            ) from None

    def projection(
        self, columns: dict[str, tuple[str, int | None, int | None]]
    ) -> tuple[list[str], dict[str, str]]:
        """What travels of a profile: the key, identifier and mapped attribute columns and
        one consent flag per integration (SQL select list over ``p``; DuckDB types)."""
        wanted: list[tuple[str, tuple[str | int, ...]]] = [
            (self.profiles.key, ("key",)),
            *((c, ("identifiers", t)) for t, c in self.profiles.identifiers.items()),
            *((c, ("attributes", i)) for i, c in enumerate(self.profiles.attributes)),
        ]
        if not columns:
            raise self.profiles_catalog.missing()
        missing = [(c, loc) for c, loc in wanted if c not in columns]
        if missing:
            raise SourceError(
                f"{self.locate('source', 'profiles', *missing[0][1])}: the profiles table "
                f"{self.profiles.table!r} in {self.describe()} has no column(s) "
                f"{[c for c, _ in missing]}; fix the names under `source.profiles` (the table "
                f"has: {', '.join(sorted(columns))})"
            )
        travel = [
            c
            for c, loc in wanted
            if loc[0] != "attributes" or self.mapped is None or c in self.mapped
        ]
        names = list(dict.fromkeys(travel))
        select = [f"p.{pgsql.Identifier(c).as_string()}" for c in names]
        types = {c: duck_type(*columns[c]) for c in names}
        if key_sql := pg_keys.key_select(self.profiles.key, columns[self.profiles.key]):
            select[names.index(self.profiles.key)], types[self.profiles.key] = key_sql, "VARCHAR"
        for integration, (condition, where) in sorted(self.consents.items()):
            col = self.consent_columns[integration]
            select.append(f"coalesce((\n{self._condition(condition, where)}\n), false) AS {col}")
            types[col] = "BOOLEAN"
        return select, types

    def profiles_query(self, select: list[str], where: str = "") -> str:
        table = pgsql.Identifier(self.profiles.table).as_string()
        return f"SELECT {', '.join(select)} FROM {table} AS p {where}"

    def pushdown_wanted(self, columns: dict[str, tuple[str, int | None, int | None]]) -> bool:
        """The diff runs in PostgreSQL unless switched off (``source.diff: engine``) or the
        key's text could differ between PostgreSQL and the engine (its type)."""
        return self.spec.diff == "postgres" and pg_keys.same_text(columns[self.profiles.key])

    def _condition(self, condition: str, where: str) -> str:
        """A consent condition, checked by the guard and regenerated from its tree."""
        try:
            check_condition(condition, "postgres", self.policy)
            checked = check_segment_sql(
                f"SELECT (\n{condition}\n) FROM {self.profiles.table}",
                "postgres",
                policy=self.policy,
            )
        except SqlRejected as exc:
            raise SegmentError(f"{where}: consent condition: {exc}") from exc
        tree = sqlglot.parse_one(checked, read="postgres")
        return tree.expressions[0].sql(dialect="postgres", identify=True)

    def consent_condition(self, integration: str) -> str:
        """The consent condition of ``integration`` as PostgreSQL SQL over ``p`` (checked)."""
        if integration not in self.consents:
            return "TRUE"
        return self._condition(*self.consents[integration])

    def consent_expression(self, integration: str) -> str:
        """The consent flag of ``integration``, evaluated in PostgreSQL at :meth:`attach`."""
        if integration not in self.consents:
            return "TRUE"
        return f'p."{self.consent_columns[integration]}"'

    def _where(self) -> str:
        return str(self.locate("source", "profiles", "table"))

    # ------------------------------------------------------------------ untrusted queries
    def describe_query(self, sql: str, where: str, what: str) -> list[tuple[str, str]]:
        """The columns ``sql`` returns: (name, PostgreSQL type)."""
        conn = self.connection()
        statement = f"SELECT * FROM (\n{sql}\n) AS q LIMIT 0"
        try:
            with pg_connect.untrusted(conn, self.schema, self.timeout, where, what) as cur:
                cur.execute(statement)
                return [(d.name, display_type(d.type_display)) for d in cur.description or []]
        except psycopg.Error as exc:
            raise self._failed(exc, sql, where, what, statement) from None

    def fetch(self, sql: str, where: str, what: str) -> list[tuple]:
        """All rows of a small untrusted query (``freshness_sql``)."""
        conn = self.connection()
        try:
            with pg_connect.untrusted(conn, self.schema, self.timeout, where, what) as cur:
                cur.execute(sql)
                return cur.fetchall()
        except psycopg.Error as exc:
            raise self._failed(exc, sql, where, what, sql) from None

    def materialise(
        self,
        con: duckdb.DuckDBPyConnection,
        sql: str,
        column: str,
        table: str,
        where: str,
        what: str,
    ) -> None:
        """The segment's keys (``column`` of ``sql``, as the key's text: :mod:`.pg_keys`) into
        temp table ``table`` (column ``k``) of the session, by COPY: where membership leaves."""
        key = pg_keys.segment_key_sql(f"q.{pgsql.Identifier(column).as_string()}", self.key_column)
        query = f"SELECT {key} FROM (\n{sql}\n) AS q"
        self.copy_into(con, query, table, {"k": "VARCHAR"}, where, what, temp=True, user_sql=sql)

    def copy_into(
        self,
        con: duckdb.DuckDBPyConnection,
        query: str,
        table: str,
        types: dict[str, str],
        where: str,
        what: str,
        *,
        temp: bool = False,
        user_sql: str = "",
    ) -> None:
        """``COPY (query) TO STDOUT`` streamed to a CSV file, read by DuckDB into ``table``."""
        assert self.folder is not None, "attach() first"
        fd, name = tempfile.mkstemp(suffix=".csv", dir=self.folder)
        conn = self.connection()
        copy_sql = f"COPY ({query}) TO STDOUT WITH (FORMAT csv)"
        try:
            with (
                os.fdopen(fd, "wb") as out,
                pg_connect.untrusted(conn, self.schema, self.timeout, where, what) as cur,
            ):
                cur.execute(TEXT_SETTINGS, [self.timezone])  # values as the engine writes them
                with cur.copy(copy_sql) as copy:
                    out.writelines(copy)  # libpq's buffers, straight to the file
            kind = "TEMP TABLE" if temp else "TABLE"
            try:
                con.execute(
                    f"CREATE OR REPLACE {kind} {table} AS SELECT * FROM {csv_relation(name, types)}"
                )
            except duckdb.Error as exc:  # a value the engine cannot read as the column's type
                raise self.read_error(con, name, types, exc, query) from None
        except psycopg.Error as exc:
            raise self._failed(exc, user_sql or query, where, what, copy_sql) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def read_error(
        self,
        con: duckdb.DuckDBPyConnection,
        path: str,
        types: dict[str, str],
        exc: duckdb.Error,
        query: str,
    ) -> SourceError:
        """The error for a COPY file at ``path`` that the engine could not read as ``types``:
        naming the columns whose values do not cast (never a value: it may be personal data),
        else the engine's error kind."""
        head = (
            f"{self._where()}: the profiles table {self.profiles.table!r} in "
            f"{self.describe()} could not be read into the engine"
        )
        bad = unreadable_columns(con, path, types)
        if not bad:
            detail, _ = safe_engine_error(exc, query)
            return SourceError(f"{head}: {detail}")
        return SourceError(
            f"{head}: column(s) {', '.join(f'{c!r} (read as {types[c]})' for c in bad)} hold "
            "values that type cannot (a numeric NaN, a date before year 1 or after 9999, "
            "...); fix those values, or read the column through a view that casts it (e.g. "
            "to text)"
        )

    def _failed(
        self, exc: psycopg.Error, sql: str, where: str, what: str, sent: str = ""
    ) -> Exception:
        """The error of untrusted ``sql`` (run inside the statement ``sent``); a
        :class:`SegmentError` carries the name the server pointed at as ``token``
        (:func:`pg_connect.error_token`)."""
        if isinstance(exc, psycopg.errors.QueryCanceled) or (
            isinstance(exc, psycopg.OperationalError)
            and self._conn is not None
            and self._conn.broken
        ):  # cancelled by someone else (a timeout is reported before this) or connection gone
            return self._lost(exc)
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return self.profiles_catalog.refused(exc, where, what)
        error = SegmentError(
            f"{where}: {what} failed when run in PostgreSQL: {pg_connect.engine_error(exc, sql)}; "
            "fix the SQL and plan again"
        )
        error.token = pg_connect.error_token(exc, sent)
        return error

    # ------------------------------------------------------------------ temp files
    def _new_folder(self) -> Path:
        base = self.root / ".reconcile" / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        from reconciler.state.schema import pid_alive

        for old in base.glob("pgcopy-*"):
            pid = old.name.split("-")[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"pgcopy-{os.getpid()}-", dir=base))

    @contextlib.contextmanager
    def _tmp(self):
        folder = self._new_folder()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
