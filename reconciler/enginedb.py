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
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb

from reconciler.sources.base import Source
from reconciler.sources.limits import APPLY_ROOM_FACTOR, ROOM_FACTOR, memory_cap
from reconciler.state.backend import AttachedState, open_backend
from reconciler.state.schema import pid_alive
from reconciler.state.store import StateReader
from reconciler.state.writer import StateStore
from reconciler.workspace.loader import Workspace

STAGING = "__reconcile_staging"


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "BYTES": 1}


def memory_bytes(setting: str) -> int:
    """DuckDB's formatted memory setting (``953.6 MiB``) in bytes; 0 if not understood."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", setting)
    if not m or m.group(2).upper() not in _UNITS:
        return 0
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


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
        self.backend = open_backend(ws)
        self.state: AttachedState | None = None
        self.staging_path = staging_path
        tmp = ws.path(".reconcile/tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        spec = ws.config.source
        config = {
            "memory_limit": getattr(spec, "memory_limit", None) or default_memory_limit(),
            "temp_directory": str(tmp),
            "max_temp_directory_size": getattr(spec, "max_temp_directory_size", None) or "10GB",
            "preserve_insertion_order": "false",
            # nothing fetched from the network on the engine's own initiative (a file that is
            # not DuckDB's made it download a reader extension during `validate --offline`)
            "autoinstall_known_extensions": "false",
        }
        if write_state:
            # an apply commits a batch of members at a time: at DuckDB's default threshold
            # (16 MB of WAL) it checkpointed every few batches, rewriting the state's newest
            # row groups each time; 64 MB cost ~0.6 s less CPU in a 383k-member Meta apply
            # (benchmarks/results, 2026-11-30) and keeps little more in memory
            config["checkpoint_threshold"] = "64MB"
        else:
            # a planning session writes nothing but its scratch staging file (the member
            # changes, read once by the apply and then deleted): compressing them cost more
            # CPU than the diff that produced them
            config["force_compression"] = "uncompressed"
        threads = getattr(spec, "threads", None) or os.environ.get("RECONCILE_THREADS")
        if threads:
            config["threads"] = int(threads)
        #: the process's memory cap while the session is open (limits.memory_cap): what
        #: DuckDB's memory_limit does not count (giant strings built by untrusted SQL)
        self._cap = contextlib.ExitStack()
        factor = APPLY_ROOM_FACTOR if write_state else ROOM_FACTOR
        self._cap.enter_context(memory_cap(memory_bytes(str(config["memory_limit"])), factor))
        try:
            self.con = duckdb.connect(":memory:", config=config)
            # TIMESTAMPTZ values become text (fingerprints, attributes, keys) in the workspace's
            # time zone, not the machine's: a laptop and a CI runner plan the same changes
            self.con.execute(f"SET GLOBAL TimeZone = '{_q(ws.config.timezone)}'")
        except BaseException:
            self._cap.close()
            raise
        self.memory_limit = str(config["memory_limit"])
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        #: set when an apply is writing the state: this session reads the state as of its
        #: start (the notice says so)
        self.state_notice: str | None = None
        try:
            # a planning session copies an activation's recorded members only when its diff runs
            # in the engine (a PostgreSQL state; the embedded one is read in place)
            self.state = self.backend.attach(self.con, write=write_state, members=write_state)
            self.state_notice = getattr(self.state, "notice", None)
            self.con.execute(f"ATTACH '{_q(staging_path)}' AS {STAGING}")
            source.attach(self.con)
            if lock_down:
                # a source that ships rows in as files (PostgreSQL's COPY) names its folder
                folders = [f"'{_q(d)}'" for d in getattr(source, "allowed_directories", ())]
                if folders:
                    self.con.execute(f"SET allowed_directories = [{', '.join(folders)}]")
                self.con.execute("SET enable_external_access = false")
                self.con.execute("SET lock_configuration = true")
        except BaseException:
            self.close()
            raise

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """Another connection to the same instance (defaults to the source catalog)."""
        cur = self.con.cursor()
        cur.execute(f"USE {self.source.catalog}")
        self._cursors.append(cur)  # closed with the session: a cursor keeps the files open
        return cur

    def state_reader(self) -> StateReader:
        """The read-only view of the recorded state (planning)."""
        assert self.state is not None
        return self.state.reader()

    def state_store(self) -> StateStore:
        """The state's writer (apply; the session was opened with ``write_state``)."""
        assert self.state is not None
        return self.state.store()

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """While members are sent, the engine's memory limit is halved. Sending streams the
        send table and records batches: it needs little of the engine's memory, and the
        engine would otherwise keep what planning and the state's new rows took (up to the
        limit) while Python's batches, the HTTP bodies and the adapter's buffers come on
        top. The halved limit leaves that room within the same budget (benchmarks/results,
        2026-11-30 round 6: a 1M-member Meta apply with the default 1 GB peaked at 1,229 MiB,
        922-971 MiB with the cap, as fast)."""
        limit = self.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        half = memory_bytes(limit) // 2
        if half <= 0:
            yield
            return
        self.con.execute(f"SET memory_limit = '{half}B'")
        try:
            yield
        finally:
            self.con.execute(f"SET memory_limit = '{_q(self.memory_limit)}'")

    def close(self) -> None:
        try:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
            self.con.close()
            if hasattr(self.source, "close"):
                self.source.close()
            if self.state is not None:
                self.state.close()
                self.state = None
        finally:
            self._cap.close()

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
