"""The PostgreSQL state lock: one row in ``<schema>.lock``, claimed and released in short
transactions (never a session advisory lock held across the apply, so it works through
connection poolers), kept alive by a heartbeat thread.

A killed holder leaves its row behind; once its heartbeat is three intervals old the lock is
reported *stale*, with its id, and ``reconcile state unlock LOCK_ID`` breaks exactly that lock.
Every state write checks, in its own transaction, that this process's lock row still exists
(:func:`held_lock_id`): a holder whose lock was broken cannot write any more.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import datetime

import psycopg

from reconciler.errors import StateError, StateLocked
from reconciler.state.backend import LockInfo, lock_user
from reconciler.state.postgres.db import PgDatabase
from reconciler.state.schema import pid_alive

#: (dsn, schema) -> id of the lock this process holds there
_HELD: dict[tuple[str, str], str] = {}


def held_lock_id(db: PgDatabase) -> str | None:
    return _HELD.get((db.dsn, db.schema))


class PostgresLock:
    def __init__(self, db: PgDatabase, heartbeat: float = 10.0):
        self.db = db
        self.heartbeat = heartbeat
        self.lock_id: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set when the heartbeat found the lock row gone (someone broke the lock)
        self.lost = threading.Event()

    # ------------------------------------------------------------------ claiming
    def acquire(self, operation: str, timeout: float = 0.0) -> None:
        deadline = time.monotonic() + timeout
        with self.db.connect(autocommit=True) as conn:
            self.db.ensure_schema(conn)
            lock_id = uuid.uuid4().hex[:12]
            while True:
                with self.db.errors("claiming the lock"):
                    row = conn.execute(
                        f"""INSERT INTO {self.db.schema}.lock VALUES
                            ('state', %s, %s, %s, %s, %s, now(), now(), %s)
                            ON CONFLICT (name) DO NOTHING RETURNING id""",
                        [
                            lock_id,
                            lock_user(),
                            socket.gethostname(),
                            os.getpid(),
                            f"reconcile {operation}",
                            self.heartbeat,
                        ],
                    ).fetchone()
                if row:
                    break
                info = self._info(conn)
                if info is None:
                    continue  # released meanwhile
                if self._abandoned(info):  # its process is gone: it cannot be released
                    with self.db.errors("taking over an abandoned lock"):
                        conn.execute(f"DELETE FROM {self.db.schema}.lock WHERE id = %s", [info.id])
                    continue
                if time.monotonic() >= deadline:
                    raise StateLocked(info.describe())
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.lock_id = lock_id
        _HELD[(self.db.dsn, self.db.schema)] = lock_id
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="state-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.wait(self.heartbeat):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self.db.dsn, autocommit=True, prepare_threshold=None, connect_timeout=5
                    )
                cur = conn.execute(
                    f"UPDATE {self.db.schema}.lock SET heartbeat = now() WHERE id = %s",
                    [self.lock_id],
                )
                if cur.rowcount == 0:
                    self.lost.set()
                    break
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None  # the server is away: try again at the next beat
        if conn is not None:
            conn.close()

    def release(self) -> None:
        if self.lock_id is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        lock_id, self.lock_id = self.lock_id, None
        _HELD.pop((self.db.dsn, self.db.schema), None)
        try:
            with self.db.connect(autocommit=True) as conn:
                conn.execute(f"DELETE FROM {self.db.schema}.lock WHERE id = %s", [lock_id])
        except (StateError, psycopg.Error):
            pass  # the server is gone: the row goes stale and is reported as such

    # ------------------------------------------------------------------ looking
    def info(self, conn: psycopg.Connection | None = None) -> LockInfo | None:
        """Who holds the lock, read on ``conn`` (an open connection) or a new one."""
        if conn is not None:
            return self._info(conn)
        with self.db.connect(autocommit=True) as new:
            return self._info(new)

    def _info(self, conn: psycopg.Connection) -> LockInfo | None:
        with self.db.errors("reading the lock"):
            if not self.db._has_lock_table(conn):
                return None
            row = conn.execute(
                f"""SELECT id, holder, host, pid, command, started, heartbeat,
                       now() - heartbeat > make_interval(secs => 3 * beat_seconds)
                    FROM {self.db.schema}.lock WHERE name = 'state'"""
            ).fetchone()
        if row is None:
            return None
        return LockInfo(
            id=row[0],
            user=row[1],
            host=row[2],
            pid=row[3],
            command=row[4],
            started=_iso(row[5]),
            heartbeat=_iso(row[6]),
            stale=bool(row[7]),
        )

    @staticmethod
    def _abandoned(info: LockInfo) -> bool:
        """A stale lock (no heartbeat for three intervals) of a process of this machine that
        no longer runs: one that exited on a lost connection could not delete its row, and
        no one else can still be using it."""
        return (
            info.stale
            and info.host == socket.gethostname()
            and isinstance(info.pid, int)
            and not pid_alive(info.pid)
        )

    def holder(self, *, exclude_self: bool = False) -> str | None:
        info = self.info()
        if info is None or (exclude_self and info.id == self.lock_id):
            return None
        return info.describe()

    def force_unlock(self, lock_id: str) -> bool:
        """Break the lock ``lock_id`` (only that one); False when no such lock is held. A
        holder that is alive — its process running on this machine, or a fresh heartbeat from
        another one — is refused, as the embedded backend refuses: breaking it let a second apply run while
        the first went on sending what it could no longer record."""
        with self.db.connect(autocommit=True) as conn, self.db.errors("breaking the lock"):
            if not self.db._has_lock_table(conn):
                return False
            info = self._info(conn)
            if info is not None and info.id == lock_id:
                here = info.host == socket.gethostname()
                # this machine's process is checked; another machine's is alive while its
                # heartbeat is fresh
                alive = (
                    (isinstance(info.pid, int) and pid_alive(info.pid)) if here else not info.stale
                )
                if alive:
                    raise StateError(
                        f"lock {lock_id} is held by a live process: {info.describe()}; it "
                        "cannot be broken while that process runs — stop it (its lock ends "
                        "with it), or wait until its heartbeat is three intervals old"
                    )
            cur = conn.execute(f"DELETE FROM {self.db.schema}.lock WHERE id = %s", [lock_id])
            return cur.rowcount > 0

    def __enter__(self) -> PostgresLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
