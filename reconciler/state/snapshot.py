"""Readers during an apply, and the backup of the previous state (the embedded backend).

DuckDB lets one process write a database file, and a reader's shared lock on the file keeps
that writer out. So an apply never writes the file readers may have open. Under the state
lock, before its first write, :func:`begin_write`:

1. publishes the state as it is now as ``<state>.backup`` (a hard link to the very file —
   no copy — or a copy where links are not supported): the backup of the previous state;
2. notes that backup in the lock file, so readers know the apply is writing and what to read;
3. copies the state to ``<state>.next`` (flushed to disk) and renames it over ``<state>``.

The apply then writes the new file, which no reader holds. Readers that had the old file open
keep reading it — the same bytes as the backup. A reader that starts while the apply writes
(:func:`attach_reader`) sees the note in the lock file and opens the backup instead: the
state as of the apply's start, and says so. A killed apply leaves ``<state>`` complete (the
rename is atomic); a ``<state>.next`` left by one killed between its last two steps is
installed by the next writer.

A state left with a write-ahead log by a killed apply (``<state>.wal``) is first made
self-contained in a copy (``<state>.ckpt``, checkpointed), which becomes the backup; the
WAL is removed only once its checkpointed copy is in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from reconciler.errors import StateError
from reconciler.state.schema import CATALOG, StateBusy, _q, attach_state, create_schema, pid_alive

__all__ = ["backup_path", "begin_write", "attach_reader", "writing_apply"]


def backup_path(path: Path) -> Path:
    """Where the state before the latest apply is kept."""
    return path.with_name(path.name + ".backup")


def _next(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _lock_path(path: Path) -> Path:
    return path.with_suffix(".lock")


# ---------------------------------------------------------------------- the writer's side
def begin_write(path: Path) -> Path | None:
    """Before an apply (or ``state rm|mv``) writes the state — with the state lock held:
    keep the current state as the backup and give the writer a file of its own.
    Returns the backup, or None when there is no state yet. A file system that refuses
    (read-only, no space left) is a :class:`StateError` naming the state, with the
    half-written copies removed; the state itself is unchanged."""
    try:
        return _begin_write(path)
    except OSError as exc:
        # the partial copies only: a complete <state>.next is installed by the next writer
        for partial in (_next(path), backup_path(path)):
            with contextlib.suppress(OSError):
                partial.with_name(partial.name + ".tmp").unlink()
        where = f" ({exc.filename})" if exc.filename else ""
        raise StateError(
            f"cannot write the state {path}: {exc.strerror or exc}{where}; nothing was "
            "recorded and the state is unchanged. Free space or make the folder writable "
            "(`state.path` in reconcile.yaml), then run the command again"
        ) from None


def _begin_write(path: Path) -> Path | None:
    _install_next(path)
    if not path.exists():
        _note_snapshot(path, None)
        return None
    backup = backup_path(path)
    with contextlib.suppress(FileNotFoundError):
        _wal(backup).unlink()  # a backup is always self-contained
    if _wal(path).exists():
        base = _checkpointed_copy(path)
        os.replace(base, backup)
    else:
        _check_readable(path)  # a damaged state never replaces the backup it needs
        _publish(path, backup)
    _fsync_dir(path.parent)
    _note_snapshot(path, backup)
    _copy(backup, _next(path))
    _install_next(path)
    return backup


def restore_backup(path: Path) -> Path | None:
    """Put the backup back as the state (with the state lock held): the current file (if
    any) is kept beside it as ``<state>.before-restore``, with its write-ahead log; an
    apply's unfinished copy (``.next``) is dropped. Refuses a backup that cannot be read
    whole. Returns the file kept aside, or None when there was no state file."""
    from reconciler.state.store import StateReader

    backup = backup_path(path)
    if not backup.exists():
        raise StateError(f"there is no backup of the state to restore ({backup.name})")
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{_q(backup)}' AS restored (READ_ONLY)")
        StateReader(con, "restored").read_every_block()
    except (duckdb.Error, StateError) as exc:
        # the engine's own words: a StateError's would say to restore the backup
        cause = exc.__cause__ if isinstance(exc, StateError) and exc.__cause__ else exc
        first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise StateError(
            f"the backup {backup.name} cannot be read either ({first}); nothing was changed"
        ) from exc
    finally:
        con.close()
    aside = path.with_name(path.name + ".before-restore")
    _keep_earlier(aside)
    for p in (aside, _wal(aside), _next(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    had_state = path.exists()
    if had_state:
        os.replace(path, aside)
    if _wal(path).exists():
        os.replace(_wal(path), _wal(aside))
    _copy(backup, path)
    _fsync_dir(path.parent)
    return aside if had_state else None


def _keep_earlier(aside: Path) -> None:
    """A file an earlier restore kept aside is renamed after its time, never replaced: a
    second restore would put the backup over it, and it may be the newest state there was."""
    if not aside.exists():
        return
    stamp = datetime.fromtimestamp(aside.stat().st_mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = aside.with_name(f"{aside.name}-{stamp}")
    os.replace(aside, kept)
    if _wal(aside).exists():
        os.replace(_wal(aside), _wal(kept))


def _check_readable(path: Path) -> None:
    """Raise StateError unless ``path`` opens as a DuckDB database."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{_q(path)}' AS probe (READ_ONLY)")
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StateError(
            f"cannot open the state {path}: {first}; it is not a readable state database. "
            f"Its backup {backup_path(path).name} was left as it is: `reconcile state restore` "
            "puts it back (docs/state-recovery.md)"
        ) from exc
    finally:
        con.close()


def _publish(src: Path, dst: Path) -> None:
    """``dst`` becomes the bytes of ``src`` now, atomically: a hard link when possible."""
    tmp = dst.with_name(dst.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # a file system without hard links
        _copy(src, tmp)
    os.replace(tmp, dst)


def _copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` flushed to disk, under a temporary name until complete."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def _checkpointed_copy(path: Path) -> Path:
    """A self-contained copy of a state that has a write-ahead log beside it."""
    ckpt = path.with_name(path.name + ".ckpt")
    for p in (ckpt, _wal(ckpt)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    shutil.copyfile(path, ckpt)
    shutil.copyfile(_wal(path), _wal(ckpt))
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{_q(ckpt)}' AS ckpt")
        con.execute("CHECKPOINT ckpt")
    except duckdb.Error as exc:
        raise StateError(
            f"cannot read the state {path} with its write-ahead log {_wal(path).name}: {exc}; "
            f"restore {backup_path(path)} (docs/state-recovery.md)"
        ) from exc
    finally:
        con.close()
    with open(ckpt, "rb+") as f:
        os.fsync(f.fileno())
    return ckpt


def _install_next(path: Path) -> None:
    """Rename a complete ``<state>.next`` over the state. Its WAL (if any) is already in it:
    remove the WAL first, so the new file never meets a log written for the old one."""
    nxt = _next(path)
    if not nxt.exists():
        return
    with contextlib.suppress(FileNotFoundError):
        _wal(path).unlink()
    os.replace(nxt, path)
    _fsync_dir(path.parent)
    with contextlib.suppress(FileNotFoundError):
        path.with_name(path.name + ".ckpt").unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _note_snapshot(path: Path, backup: Path | None) -> None:
    """Say in the lock file (held by this process) that the apply writes now and which
    file holds the state as of its start ("" when there was none)."""
    lock = _lock_path(path)
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return
    info["snapshot"] = backup.name if backup else ""
    data = json.dumps(info).encode()
    fd = os.open(lock, os.O_RDWR)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- the readers' side
def writing_apply(path: Path) -> dict | None:
    """The holder of the state lock when it is another live process that has begun writing
    (its lock file names a snapshot), else None. Reads the lock file only: never takes the
    lock, so a reader can never make an apply fail to get it."""
    try:
        info = json.loads(_lock_path(path).read_text() or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or "snapshot" not in info:
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    if info.get("host") in (None, socket.gethostname()) and not pid_alive(pid):
        return None  # killed: the kernel released its lock, its note stayed
    return info


def attach_reader(con: duckdb.DuckDBPyConnection, path: Path) -> str | None:
    """Attach the state read-only for ``plan``, ``status``, ``log`` and ``state show``.
    While an apply writes, the state as of its start is attached instead and the notice to
    show is returned (None when reading the current state)."""
    apply = writing_apply(path)
    if apply is None:
        try:
            attach_state(con, path, write=False)
        except StateBusy:
            apply = writing_apply(path)
            if apply is None:
                raise
        else:
            apply = writing_apply(path)  # began writing while we opened the file
            if apply is None:
                return None
            con.execute(f"DETACH {CATALOG}")
    return _attach_snapshot(con, path, apply)


def _attach_snapshot(con: duckdb.DuckDBPyConnection, path: Path, apply: dict) -> str:
    who = (
        f"`reconcile {apply.get('operation', 'apply')}` (pid {apply.get('pid')} on "
        f"{apply.get('host')}, user {apply.get('user')})"
    )
    since = apply.get("since", "?")
    snapshot = backup_path(path) if apply.get("snapshot") else None
    if snapshot is None:
        con.execute(f"ATTACH ':memory:' AS {CATALOG}")
        create_schema(con)
        return (
            f"{who} is writing the state since {since}; there was no state before it, "
            "so this shows an empty state"
        )
    try:
        con.execute(f"ATTACH '{_q(snapshot)}' AS {CATALOG} (READ_ONLY)")
    except duckdb.Error as exc:
        raise StateError(
            f"{who} is writing the state {path} since {since}, and its snapshot {snapshot} "
            f"cannot be read ({' '.join(str(exc).split())}); try again when it has finished"
        ) from exc
    return f"{who} is running since {since}; showing the state as of its start"
