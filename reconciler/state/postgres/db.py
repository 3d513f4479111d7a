"""Connections to the PostgreSQL state: a DSN that is never shown (errors name the server as
``postgresql://user@host:port/db``), errors turned into :class:`StateError`, and the schema
created or migrated in one transaction.

Nothing here keeps session state between transactions (no ``SET``, no prepared statements, no
session advisory lock), so the state works through transaction-mode connection poolers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg

from reconciler.errors import StateError
from reconciler.state import versions
from reconciler.state.postgres.tables import ddl

#: the transaction-scoped advisory lock key that serialises creating and migrating a schema
_DDL_LOCK = 0x5E_C0_DC_1E


class PgDatabase:
    """One PostgreSQL state: a server (``dsn``) and a schema in it."""

    def __init__(self, dsn: str, schema: str, connect_timeout: int = 10):
        self.dsn = dsn
        self.schema = schema
        self.connect_timeout = connect_timeout

    @property
    def where(self) -> str:
        """The state's address without its password."""
        return f"{mask_dsn(self.dsn)} (schema {self.schema})"

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        """A connection in autocommit mode: every transaction is an explicit
        ``conn.transaction()`` block, short, and never left open."""
        if not _parses(self.dsn):  # libpq's message would quote the DSN, password and all
            raise StateError(
                "the PostgreSQL state DSN is not a valid connection string (key=value pairs "
                "or a postgresql:// URI, where a '%' or '@' in the password is written %25 or "
                "%40); its text is not shown, it may hold a password. Check `state.dsn` in "
                "reconcile.yaml"
            )
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=autocommit,
                prepare_threshold=None,  # poolers in transaction mode: no prepared statements
                connect_timeout=self.connect_timeout,
                application_name=f"reconcile {os.getpid()}",
            )
            try:  # times and dates in ISO whatever the server's, database's or role's
                # DateStyle (psycopg reads no other; pgbouncer carries DateStyle per client)
                conn.execute("SET DateStyle = 'ISO, YMD'")
                if not autocommit:
                    conn.commit()
            except BaseException:
                conn.close()
                raise
            return conn
        except psycopg.Error as exc:
            raise StateError(
                f"cannot connect to the PostgreSQL state at {mask_dsn(self.dsn)}: "
                f"{self.scrub(exc)}; check `state.dsn` in reconcile.yaml and that the server "
                "is running"
            ) from None

    def scrub(self, exc: BaseException) -> str:
        """An error's first line, with anything that could be the password removed."""
        text = " ".join(str(exc).strip().splitlines()[:1]) or type(exc).__name__
        if not _parses(self.dsn):
            return type(exc).__name__  # nothing to mask by: the message may hold it all
        password = _password(self.dsn)
        if password:
            text = text.replace(password, "***")
        return text[:300]

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn a database error while ``doing`` into a StateError naming the state."""
        try:
            yield
        except psycopg.Error as exc:
            # what to do depends on the cause: a privilege the role lacks is not an outage
            what = (
                "grant the state's role the privileges it lacks (or use a role that may write "
                "the state), then run the command again"
                if isinstance(exc, psycopg.errors.InsufficientPrivilege)
                else "run the command again once the server is reachable"
            )
            raise StateError(
                f"the PostgreSQL state at {self.where} failed while {doing}: "
                f"{self.scrub(exc)}; nothing more was recorded — {what}"
            ) from None

    # ------------------------------------------------------------------ schema
    def version(self, conn: psycopg.Connection) -> int | None:
        """The schema version of the state, or None when it has no tables yet."""
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{self.schema}.meta"]).fetchone()
        if not row or not row[0]:
            return None
        got = conn.execute(
            f"SELECT v FROM {self.schema}.meta WHERE k = 'schema_version'"
        ).fetchone()
        return versions.parse_version(got[0] if got else None, f"the state at {self.where}")

    def ensure_schema(
        self, conn: psycopg.Connection, steps: tuple[versions.Step, ...] = versions.POSTGRES_STEPS
    ) -> None:
        """Create the schema's tables (with a new lineage id) or migrate them forward, in one
        transaction; concurrent callers wait for each other."""
        with self.errors("creating its tables"), conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_DDL_LOCK])
            found = self.version(conn)
            versions.refuse_newer(found, f"the state at {self.where}")
            if found == versions.SCHEMA_VERSION and self._has_lock_table(conn):
                return
            for stmt in ddl(self.schema):
                conn.execute(stmt)
            meta = f"{self.schema}.meta"
            if found is None:
                conn.execute(
                    f"INSERT INTO {meta} VALUES ('schema_version', %s), ('lineage', %s) "
                    "ON CONFLICT (k) DO NOTHING",
                    [str(versions.SCHEMA_VERSION), versions.new_lineage()],
                )
            elif found < versions.SCHEMA_VERSION:
                reached = versions.run_steps(
                    conn.execute,
                    found,
                    steps,
                    catalog=self.schema,
                    lineage=versions.new_lineage(),
                )
                conn.execute(f"UPDATE {meta} SET v = %s WHERE k = 'schema_version'", [str(reached)])

    def check_readable(self, conn: psycopg.Connection) -> int | None:
        found = self.version(conn)
        versions.refuse_newer(found, f"the state at {self.where}")
        return found

    def _has_lock_table(self, conn: psycopg.Connection) -> bool:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{self.schema}.lock"]).fetchone()
        return bool(row and row[0])


def mask_dsn(dsn: str) -> str:
    """``postgresql://user@host:port/dbname`` of a DSN (URL or key=value), never its password."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(an unparsable DSN)"
    user = parts.get("user")
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    port = parts.get("port")
    db = parts.get("dbname") or ""
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{db}"


def _parses(dsn: str) -> bool:
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return False
    return True


def _password(dsn: str) -> str | None:
    try:
        value = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return None
    return str(value) if value else None
