"""The state lock: one ``apply`` (or ``run``, ``state rm|mv``) at a time.

An OS advisory lock (``flock``) on ``<state>.lock`` — released by the kernel when the holder
dies, so a killed apply never leaves a stale lock — plus the holder's description written in
the file, so a second apply can say who holds it, with the lock's id (``reconcile state unlock ID``)."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from reconciler.errors import StateError, StateLocked
from reconciler.state.backend import LockInfo


class StateLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, operation: str, timeout: float = 0.0) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                f"cannot take the state lock {self.path}: {exc.strerror or exc}; the state "
                "folder must be writable (`state.path` in reconcile.yaml)"
            ) from None
        deadline = time.monotonic() + timeout
        busy_again = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    who = self.holder()
                    if who is None and not busy_again:
                        # released between the two looks: try once more before giving up
                        busy_again = True
                        continue
                    os.close(fd)
                    raise StateLocked(who or "another process") from None
                time.sleep(0.2)
        holder = {
            "id": uuid.uuid4().hex[:12],
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "user": _user(),
            "operation": operation,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def holder(self, *, exclude_self: bool = False) -> str | None:
        """Who holds the lock now, or None when nobody does (``exclude_self``: also None
        when this very process holds it)."""
        info = self.info()
        if info is None or (exclude_self and info.pid == os.getpid()):
            return None
        return info.describe() if info.id else "another process"

    def info(self) -> LockInfo | None:
        """The holder, while a live process holds the lock (the kernel releases the lock of
        a process that died, so an embedded lock is never stale)."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read_holder(fd)
                if info is None:
                    return None
                return LockInfo(
                    id=str(info.get("id") or ""),
                    user=info.get("user"),
                    host=info.get("host"),
                    pid=info.get("pid"),
                    command=f"reconcile {info.get('operation', '?')}",
                    started=info.get("since"),
                )
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def force_unlock(self, lock_id: str) -> bool:
        """``reconcile state unlock LOCK_ID``: False when no lock ``lock_id`` is held. A live
        process's lock cannot be broken (the file lock is the kernel's): that is refused."""
        info = self.info()
        if info is None or info.id != lock_id:
            return False
        raise StateError(
            f"lock {lock_id} is held by a live process: {info.describe()}; it cannot be "
            "broken while that process runs — stop it (its lock ends with it)"
        )

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


#: looks at a held lock's empty or half-written description before giving up on it (~0.5 s)
_HOLDER_READS = 50


def _read_holder(fd: int) -> dict | None:
    """The holder's description from the locked file. A holder writes it right after taking
    the lock and empties it right before letting go: an empty or half-written file is read
    again for a moment, and None comes back when the lock was let go meanwhile."""
    for _ in range(_HOLDER_READS):
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            info = None
        if isinstance(info, dict) and info.get("id"):
            return info
        time.sleep(0.01)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    return {}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
