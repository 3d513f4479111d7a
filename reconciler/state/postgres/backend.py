"""The PostgreSQL state backend (``state: {backend: postgres, dsn: …, schema: …}``).

An engine session gets a *working copy* of the state: a DuckDB file beside the staging
tables, attached as catalog ``__reconcile_state`` and filled from PostgreSQL in bulk
(``COPY … TO STDOUT``) from one consistent snapshot when the session opens, so the planner's
and the applier's SQL runs unchanged. Readers need no lock and see the last committed state
while an apply runs; the apply's writes go to PostgreSQL as they happen
(:mod:`~reconciler.state.postgres.store`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import duckdb
import psycopg

from reconciler.errors import StateError
from reconciler.state.backend import AttachedState
from reconciler.state.postgres import mirror
from reconciler.state.postgres.db import PgDatabase
from reconciler.state.postgres.lock import PostgresLock, held_lock_id
from reconciler.state.postgres.reader import PostgresStateReader
from reconciler.state.postgres.store import PostgresStateStore
from reconciler.state.schema import CATALOG, create_schema


class PostgresBackend:
    name = "postgres"

    def __init__(self, dsn: str, schema: str, *, tmp: Path, heartbeat: float = 10.0):
        self.db = PgDatabase(dsn, schema)
        self.tmp = tmp
        self.heartbeat = heartbeat

    @property
    def where(self) -> str:
        return self.db.where

    def lock(self) -> PostgresLock:
        return PostgresLock(self.db, self.heartbeat)

    def attach(
        self, con: duckdb.DuckDBPyConnection, *, write: bool, members: bool = True
    ) -> AttachedState:
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f"staging-{os.getpid()}-pgstate-", suffix=".duckdb", dir=self.tmp
        )
        os.close(fd)
        os.unlink(name)  # DuckDB creates it
        copy = Path(name)
        pg = self.db.connect()
        try:
            con.execute(f"ATTACH '{_q(copy)}' AS {CATALOG}")
            create_schema(con)
            con.execute(f"DELETE FROM {CATALOG}.meta")  # the state's own rows come next
            if write:
                self.db.ensure_schema(pg)
            with self.db.errors("reading the state"):
                found = self.db.check_readable(pg)
                if found is not None:
                    mirror.load(pg, self.db.schema, con, CATALOG, self.tmp, members=members)
        except BaseException:
            pg.close()
            _remove(copy)
            raise
        attached = _PostgresAttached(con, self.db, pg, copy, self.tmp, write=write, members=members)
        if not write:
            attached.notice = self._apply_running(pg)
        return attached

    def _apply_running(self, pg: psycopg.Connection) -> str | None:
        """The notice of a reader while an apply holds the lock: the PostgreSQL state is read
        as it is (what the apply recorded so far), not as of the apply's start."""
        try:
            info = self.lock().info(pg)
        except (StateError, psycopg.Error):
            return None
        if info is None or info.stale or info.id == held_lock_id(self.db):
            return None  # nobody, a dead holder, or this very process (its own planning)
        return (
            f"`{info.command}` (pid {info.pid} on {info.host}, user {info.user}) is running "
            f"since {info.started}; showing what it has recorded so far (a plan saved now is "
            "refused as stale once it finishes)"
        )


class _PostgresAttached:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        db: PgDatabase,
        pg: psycopg.Connection,
        copy: Path,
        tmp: Path,
        *,
        write: bool,
        members: bool,
    ):
        self.con, self.db, self.pg, self.copy, self.tmp = con, db, pg, copy, tmp
        self.write, self.members = write, members
        self.notice: str | None = None  # an apply is running (PostgresBackend._apply_running)
        self._reader: PostgresStateReader | None = None

    def reader(self) -> PostgresStateReader:
        # one reader per session: it knows which activations' members it copied already
        if self._reader is None:
            self._reader = PostgresStateReader(
                self.con, self.db, self.pg, self.members, tmp=self.tmp
            )
            self._reader.notice = self.notice
        return self._reader

    def store(self) -> PostgresStateStore:
        if not self.write:
            raise RuntimeError("the state was opened read-only")
        return PostgresStateStore(self.con, self.db, self.pg, self.tmp)

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.execute(f"DETACH {CATALOG}")
        self.pg.close()
        _remove(self.copy)


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _q(path: Path) -> str:
    return str(path).replace("'", "''")
