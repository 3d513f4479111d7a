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

from reconciler.sources.base import Source
from reconciler.state.schema import attach_state, pid_alive, registered_reader
from reconciler.state.snapshot import attach_reader
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
        self._reader = None if write_state else registered_reader(self.state_path)
        if self._reader is not None:
            self._reader.__enter__()
        self.con = duckdb.connect(":memory:", config=config)
        #: set when an apply is writing the state: this session reads the state as of its
        #: start (the notice says so)
        self.state_notice: str | None = None
        try:
            if write_state:
                attach_state(self.con, self.state_path, write=True)
            else:
                self.state_notice = attach_reader(self.con, self.state_path)
            self.con.execute(f"ATTACH '{_q(staging_path)}' AS {STAGING}")
            source.attach(self.con)
            if lock_down:
                self.con.execute("SET enable_external_access = false")
                self.con.execute("SET lock_configuration = true")
        except BaseException:
            self.close()
            raise

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Another connection to the same instance (defaults to the source catalog)."""
        cur = self.con.cursor()
        cur.execute(f"USE {self.source.catalog}")
        return cur

    def close(self) -> None:
        self.con.close()
        if self._reader is not None:
            self._reader.__exit__(None, None, None)
            self._reader = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_staging_path(ws: Workspace) -> Path:
    """A fresh staging database path, named after this process; staging files of processes
    that are gone (killed mid-plan or mid-apply) are removed first."""
    folder = ws.path(".reconcile/tmp")
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphans(folder)
    fd, name = tempfile.mkstemp(prefix=f"staging-{os.getpid()}-", suffix=".duckdb", dir=folder)
    os.close(fd)
    os.unlink(name)  # DuckDB creates it
    return Path(name)


def remove_staging(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_orphans(folder: Path) -> None:
    """Delete staging files (and their WAL) whose process no longer runs."""
    for p in folder.glob("staging-*"):
        parts = p.name.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if pid is None or not pid_alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()


def _q(path: Path | str) -> str:
    return str(path).replace("'", "''")
