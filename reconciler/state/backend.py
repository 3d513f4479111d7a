"""The state backend interface: what the engine asks of a state, whatever stores it.

    StateBackend        made by :func:`open_backend` from ``state:`` in reconcile.yaml
      .lock()           a StateLocking: one apply (or ``state rm|mv``) at a time
      .attach(con, …)   the state as catalog ``__reconcile_state`` of an engine session, so
                        membership diffs run as SQL next to the source; returns AttachedState
    AttachedState
      .reader()         read-only view (StateReader): all that planning, status and log get
      .store()          the writer (StateStore): apply and ``state rm|mv`` only
      .close()

Two backends: ``embedded`` (a DuckDB file in the workspace: the catalog *is* the state) and
``postgres`` (a schema on a PostgreSQL server: the catalog is a working copy loaded in bulk
when the session opens, and every write goes to PostgreSQL in the same transaction that
changes the copy). Both pass ``tests/state_conformance.py``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import duckdb

from reconciler.errors import ConfigError, StateError

if TYPE_CHECKING:
    from reconciler.state.store import StateReader
    from reconciler.state.writer import StateStore
    from reconciler.workspace.loader import Workspace


@dataclass(frozen=True)
class LockInfo:
    """Who holds a state lock."""

    id: str
    user: str | None
    host: str | None
    pid: int | None
    command: str | None
    started: str | None
    heartbeat: str | None = None
    stale: bool = False

    def describe(self) -> str:
        text = (
            f"`{self.command or 'reconcile'}` (lock {self.id}, pid {self.pid} on {self.host}, "
            f"user {self.user}, since {self.started})"
        )
        if self.stale:
            text += (
                f"; its heartbeat stopped at {self.heartbeat}, so that process is probably "
                f"gone: if it is, run `reconcile state unlock {self.id}`"
            )
        return text


class StateLocking(Protocol):
    def acquire(self, operation: str, timeout: float = 0.0) -> None: ...
    def release(self) -> None: ...
    def holder(self, *, exclude_self: bool = False) -> str | None: ...
    def info(self) -> LockInfo | None: ...
    def force_unlock(self, lock_id: str) -> bool: ...
    def __enter__(self) -> StateLocking: ...
    def __exit__(self, *exc: object) -> None: ...


class AttachedState(Protocol):
    def reader(self) -> StateReader: ...
    def store(self) -> StateStore: ...
    def close(self) -> None: ...


class StateBackend(Protocol):
    name: str

    @property
    def where(self) -> str: ...
    def lock(self) -> StateLocking: ...
    def attach(
        self, con: duckdb.DuckDBPyConnection, *, write: bool, members: bool = True
    ) -> AttachedState: ...


def open_backend(ws: Workspace) -> StateBackend:
    """The backend ``state:`` in reconcile.yaml asks for."""
    from reconciler.workspace.spec import PostgresState

    spec = ws.config.state
    if isinstance(spec, PostgresState):
        from reconciler.state.postgres.backend import PostgresBackend

        return PostgresBackend(
            resolve_dsn(ws, spec.dsn),
            spec.schema_name,
            tmp=ws.path(".reconcile/tmp"),
            heartbeat=spec.lock_heartbeat,
        )
    # through a link to the file kept elsewhere (a CI volume): the copy, backup and lock go
    # beside the real file (the link itself was replaced by a private copy at the first write)
    path = ws.path(spec.path).resolve()
    if not path.exists() and migrated_path(path).exists():
        raise ConfigError(
            f"the embedded state {spec.path} was moved to PostgreSQL by `reconcile state "
            f"migrate`, which left its copy as {migrated_path(path).name}: point `state:` at "
            "the PostgreSQL state (docs/state.md). To use the embedded state again instead, "
            f"rename that file back to {path.name}",
            ws.config_location("state"),
        )
    return EmbeddedBackend(path)


def migrated_path(path: Path) -> Path:
    """Where ``state migrate`` leaves the embedded state it copied to PostgreSQL."""
    return path.with_name(path.name + ".migrated")


def resolve_dsn(ws: Workspace, ref: str) -> str:
    from reconciler.workspace.spec_base import ENV_REF_RE

    match = ENV_REF_RE.fullmatch(ref)
    if match is None:  # validated as a reference; a literal never gets here
        raise ConfigError("`state.dsn` must be an ${env:VAR} reference")
    value = os.environ.get(match.group(1))
    if not value:
        raise ConfigError(
            f"the PostgreSQL state needs its DSN from environment variable {match.group(1)}, "
            "which is not set",
            ws.config_location("state", "dsn"),
        )
    return value


def lock_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ---------------------------------------------------------------------- embedded
class EmbeddedBackend:
    """The DuckDB state file (see :mod:`reconciler.state.schema`)."""

    name = "embedded"

    def __init__(self, path: Path):
        self.path = path

    @property
    def where(self) -> str:
        return str(self.path)

    def lock(self) -> StateLocking:
        from reconciler.state.lock import StateLock

        return StateLock(self.path.with_suffix(".lock"))

    def attach(
        self, con: duckdb.DuckDBPyConnection, *, write: bool, members: bool = True
    ) -> AttachedState:
        from reconciler.state.schema import attach_state, registered_reader
        from reconciler.state.snapshot import attach_reader, begin_write

        stack = contextlib.ExitStack()
        if not write:
            stack.enter_context(registered_reader(self.path))
        notice = None
        try:
            if write:  # keep the state as the backup; write a copy no reader holds
                begin_write(self.path)
                attach_state(con, self.path, write=True)
            else:  # while an apply writes: the state as of its start, and a notice
                notice = attach_reader(con, self.path)
        except BaseException:
            stack.close()
            raise
        return _EmbeddedAttached(con, stack, notice)


class _EmbeddedAttached:
    def __init__(
        self, con: duckdb.DuckDBPyConnection, stack: contextlib.ExitStack, notice: str | None
    ):
        self.con = con
        self._stack = stack
        self.notice = notice  # reading the state as of a running apply's start

    def reader(self) -> StateReader:
        from reconciler.state.store import StateReader

        reader = StateReader(self.con)
        reader.notice = self.notice
        return reader

    def store(self) -> StateStore:
        from reconciler.state.writer import StateStore

        return StateStore(self.con)

    def close(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def opened(backend: StateBackend, *, write: bool, members: bool = True) -> Iterator[AttachedState]:
    """The state attached to a fresh in-memory DuckDB connection (``status``, ``log``,
    ``state`` commands)."""
    con = duckdb.connect(":memory:")
    try:
        attached = backend.attach(con, write=write, members=members)
        try:
            yield attached
        finally:
            attached.close()
    finally:
        con.close()


__all__ = [
    "AttachedState",
    "EmbeddedBackend",
    "LockInfo",
    "StateBackend",
    "StateError",
    "StateLocking",
    "open_backend",
    "opened",
]
