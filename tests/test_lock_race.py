"""The embedded state lock read at the moments its holder takes or lets go of it: the
holder's description is written just after the ``flock`` and emptied just before the unlock,
so a second process can find the lock held with nothing (yet, or any more) in the file."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time

import pytest

from reconciler.errors import StateLocked
from reconciler.state.lock import StateLock


def _hold_empty(path, fd_ready: threading.Event, then) -> threading.Thread:
    """Take the lock with an empty file, wait a moment, then run ``then(fd)``."""

    def run():
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fd_ready.set()
        time.sleep(0.15)
        then(fd)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_holder_that_has_not_written_yet_is_named_once_it_has(tmp_path):
    path = tmp_path / "state.lock"
    ready, done = threading.Event(), threading.Event()

    def describe(fd):
        os.pwrite(fd, json.dumps({"id": "abc123", "pid": 4242, "operation": "apply"}).encode(), 0)
        done.wait(5)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    t = _hold_empty(path, ready, describe)
    ready.wait(5)
    try:
        with pytest.raises(StateLocked) as caught:
            StateLock(path).acquire("apply")
        assert "pid 4242" in str(caught.value) and "reconcile apply" in str(caught.value)
    finally:
        done.set()
        t.join()


def test_a_lock_let_go_while_it_was_looked_at_is_taken(tmp_path):
    path = tmp_path / "state.lock"
    ready = threading.Event()

    def let_go(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    t = _hold_empty(path, ready, let_go)
    ready.wait(5)
    lock = StateLock(path)
    try:
        lock.acquire("apply")  # held and empty when tried, free a moment later: taken
        assert lock.info().pid == os.getpid()
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()
        t.join()


def test_the_locked_message_gives_each_piece_of_advice_once() -> None:
    """`state` commands take no --lock-timeout: the message says which commands wait; a stale
    holder's description already names `state unlock ID`, so it is not repeated."""
    from reconciler.state.backend import LockInfo

    live = LockInfo("abc", "ci", "runner", 42, "reconcile apply", "2026-12-01T06:00:00")
    text = str(StateLocked(live.describe()))
    assert "`apply` and `run` wait for it with --lock-timeout SECONDS" in text
    assert text.count("state unlock") == 1
    stale = LockInfo(**{**live.__dict__, "stale": True, "heartbeat": "2026-12-01T06:01:00"})
    text = str(StateLocked(stale.describe()))
    assert text.count("state unlock") == 1 and "reconcile state unlock abc" in text
