"""The engine session: one DuckDB instance in which the source (read-only), the recorded
state and the staging tables of a plan are attached side by side, so every membership diff is
a set operation in SQL and Python memory grows with the change, not with the audience.

A *planning* session runs untrusted segment SQL: the state is attached read-only and external
access is disabled before any user SQL runs. An *apply* session runs only our own SQL and
attaches the state read-write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import duckdb

from reconciler.errors import StateError
from reconciler.sources.base import Source
from reconciler.state.lock import StateLock
from reconciler.state.store import CATALOG as STATE
from reconciler.state.store import create_schema
from reconciler.workspace.loader import Workspace

STAGING = "__reconcile_staging"


def default_memory_limit() -> str:
    return os.environ.get("RECONCILE_MEMORY_LIMIT", "1GB")


class Session:
    def __init__(
        self,
        ws: Workspace,
        source: Source,
        *,
        write_state: bool,
        staging_path: Path,
        lock_down: bool,
    ):
        self.ws = ws
        self.source = source
        self.state_path = ws.path(ws.config.state.path)
        self.staging_path = staging_path
        tmp = ws.path(".reconcile/tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        spec = ws.config.source
        config = {
            "memory_limit": getattr(spec, "memory_limit", None) or default_memory_limit(),
            "temp_directory": str(tmp),
            "max_temp_directory_size": getattr(spec, "max_temp_directory_size", None) or "10GB",
            "preserve_insertion_order": "false",
        }
        threads = getattr(spec, "threads", None) or os.environ.get("RECONCILE_THREADS")
        if threads:
            config["threads"] = int(threads)
        self.con = duckdb.connect(":memory:", config=config)
        try:
            attach_state(self.con, self.state_path, write=write_state)
            self.con.execute(f"ATTACH '{_q(staging_path)}' AS {STAGING}")
            source.attach(self.con)
            if lock_down:
                self.con.execute("SET enable_external_access = false")
                self.con.execute("SET lock_configuration = true")
        except BaseException:
            self.con.close()
            raise

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Another connection to the same instance (defaults to the source catalog)."""
        cur = self.con.cursor()
        cur.execute(f"USE {self.source.catalog}")
        return cur

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach_state(con: duckdb.DuckDBPyConnection, path: Path, *, write: bool) -> None:
    """Attach the state as catalog ``__reconcile_state``: read-write (created if missing),
    read-only, or — read-only with no state yet — an empty in-memory one, so nothing is
    written. Failures say whether another process holds the file or it is unreadable."""
    try:
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            con.execute(f"ATTACH '{_q(path)}' AS {STATE}")
            create_schema(con)
        elif path.exists():
            con.execute(f"ATTACH '{_q(path)}' AS {STATE} (READ_ONLY)")
        else:
            con.execute(f"ATTACH ':memory:' AS {STATE}")
            create_schema(con)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():  # not held by another process: unreadable
            raise StateError(
                f"cannot open the state {path}: {' '.join(str(exc).split())}; it is not "
                "a readable state database, restore it from a backup"
            ) from exc
        holder = StateLock(path.with_suffix(".lock")).holder()
        who = f" by {holder}" if holder else ""
        raise StateError(
            f"cannot open the state {path}: it is in use{who}. Wait for it to finish. ({exc})"
        ) from exc
    except duckdb.Error as exc:
        raise StateError(f"cannot open the state {path}: {exc}") from exc


def new_staging_path(ws: Workspace) -> Path:
    folder = ws.path(".reconcile/tmp")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="staging-", suffix=".duckdb", dir=folder)
    os.close(fd)
    os.unlink(name)  # DuckDB creates it
    return Path(name)


def remove_staging(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _q(path: Path | str) -> str:
    return str(path).replace("'", "''")
