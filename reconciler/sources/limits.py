"""Time and memory limits for the sessions that run untrusted SQL.

DuckDB has no statement timeout, so :func:`time_limit` starts a watchdog thread that calls
``con.interrupt()`` when the limit passes; the interrupted query surfaces as a
:class:`~reconciler.errors.SegmentError` naming the file:line of the SQL and the limit.

Memory is bounded by the session (``memory_limit``, ``max_temp_directory_size``), and the
guard refuses the functions whose single call could outgrow those (see ``functions.py``).
DuckDB does not count every allocation against ``memory_limit``, though: the strings a
vector of rows builds are not, so values grown by ``hex(hex(...))`` or a lambda that
concatenates could still take the machine. :func:`memory_cap` closes that gap for the whole
process with the kernel's ``RLIMIT_DATA``: past it an allocation fails, which DuckDB reports
as an ``Out of Memory Error`` of the query (and the session stays usable).

Usage::

    with time_limit(con, query_timeout(ws.config.source), "segments/vip.yaml:3: sql"):
        con.execute(user_sql)
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from reconciler.errors import SegmentError

__all__ = ["DEFAULT_QUERY_TIMEOUT", "memory_cap", "query_timeout", "time_limit"]

DEFAULT_QUERY_TIMEOUT = 120.0


def query_timeout(source_spec: object) -> float:
    """``source.query_timeout`` (seconds), or the default for sources without one."""
    value = getattr(source_spec, "query_timeout", None)
    return float(value) if value else DEFAULT_QUERY_TIMEOUT


@contextmanager
def time_limit(
    con: duckdb.DuckDBPyConnection, seconds: float, where: str, what: str = "the query"
) -> Iterator[None]:
    """Interrupt whatever runs on ``con`` inside the block once ``seconds`` have passed and
    raise SegmentError("<where>: <what> was stopped after N s ..."). Put it *inside* any
    ``except duckdb.Error`` of the caller, so the interrupt is reported as the time limit."""
    done = threading.Event()
    fired = threading.Event()
    # Ctrl-C (or a CI job's SIGTERM) reaches Python's handlers only once the query returns:
    # the signal's wakeup byte lets the watchdog interrupt the query at once instead
    woken = _signal_pipe()

    def watch() -> None:
        ended = _wait(done, seconds, woken)
        if ended == "done":
            return
        if ended == "time":
            fired.set()
        con.interrupt()  # harmless when the query has just finished

    watchdog = threading.Thread(target=watch, name="reconcile-query-timeout", daemon=True)
    watchdog.start()
    try:
        yield
    except duckdb.Error as exc:
        if fired.is_set():
            raise SegmentError(
                f"{where}: {what} was stopped after {seconds:g} s, the time limit for "
                "untrusted SQL (`source.query_timeout` in reconcile.yaml); make it cheaper "
                "(filter early, avoid cross joins and unbounded recursion) or raise the limit"
            ) from exc
        raise
    finally:
        done.set()
        if woken is not None:
            os.write(woken[2], b"\0")  # wakes the watchdog's select
        watchdog.join()
        if woken is not None:
            _restore(woken)


#: signals that stop a run: their wakeup byte interrupts the query
_STOPPING = {signal.SIGINT, signal.SIGTERM}


def _signal_pipe() -> tuple[int, int, int] | None:
    """(read end, previous wakeup fd, write end: the signals' wakeup fd, and how the block's
    end wakes the watchdog) when this thread may install a wakeup fd (only the main thread
    may), else None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
        os.close(r)
        os.close(w)
        return None
    return r, previous, w


def _wait(done: threading.Event, seconds: float, woken: tuple[int, int, int] | None) -> str:
    """Wait up to ``seconds`` for the block to end: ``done``; ``time`` when the time ran out;
    ``signal`` when a stopping signal arrived (Python's handler runs once the interrupted
    query returns)."""
    if woken is None:
        return "done" if done.wait(seconds) else "time"
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if done.is_set():
            return "done"
        if left <= 0:
            return "time"
        ready, _, _ = select.select([woken[0]], [], [], left)
        if ready and any(b in _STOPPING for b in os.read(woken[0], 64)):
            return "signal"


def _restore(woken: tuple[int, int, int]) -> None:
    r, previous, w = woken
    signal.set_wakeup_fd(previous)
    os.close(r)
    os.close(w)


#: the room a session gets above what the process uses when it opens: this many times the
#: engine's ``memory_limit`` (its buffers, what it allocates outside them, and the batches
#: and HTTP bodies of an apply), and at least :data:`MIN_ROOM`
ROOM_FACTOR = 3
MIN_ROOM = 2**30
#: an apply's session holds the sender's batches, the state's writes and a destination's own
#: buffers besides the engine (a 10M-profile apply to the sandbox reserved 3.0 GiB of data
#: segment for 1.1 GiB resident): it gets twice the room
APPLY_ROOM_FACTOR = 6


def _data_size() -> int | None:
    """The process's data segment now (``VmData``: heap and private writable mappings), in
    bytes; None where the kernel does not say (not Linux)."""
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_cap_lock = threading.Lock()
_cap_holders = 0
_cap_saved: tuple[int, int] | None = None  # the limits in force before the first holder


@contextmanager
def memory_cap(memory_limit: int, factor: int = ROOM_FACTOR) -> Iterator[int | None]:
    """While the block runs, the process may grow its data segment by at most ``factor`` x
    ``memory_limit`` bytes (at least :data:`MIN_ROOM`, scaled alike) beyond what it holds
    when the first such block starts; the limit that was in force comes back when the last
    one ends (sessions of one process share the cap). Yields the cap in bytes, or None where
    none is set: not Linux (``RLIMIT_DATA`` counts mappings only there), ``memory_limit``
    not known, ``RECONCILE_MEMORY_CAP=off``, or a limit already as low."""
    global _cap_holders, _cap_saved
    with _cap_lock:
        if _cap_holders == 0:
            _cap_saved = _set_cap(memory_limit, factor)
        _cap_holders += 1
        cap = None if _cap_saved is None else _current_cap()
    try:
        yield cap
    finally:
        with _cap_lock:
            _cap_holders -= 1
            if _cap_holders == 0 and _cap_saved is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_DATA, _cap_saved)
                _cap_saved = None


def _current_cap() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_DATA)[0]


def _set_cap(memory_limit: int, factor: int) -> tuple[int, int] | None:
    """Set the cap; the limits it replaced, or None when it set none."""
    now = _data_size() if sys.platform.startswith("linux") else None
    if now is None or memory_limit <= 0 or os.environ.get("RECONCILE_MEMORY_CAP") == "off":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = now + max(factor * memory_limit, factor * MIN_ROOM // ROOM_FACTOR)
    if (soft != resource.RLIM_INFINITY and soft <= cap) or (
        hard != resource.RLIM_INFINITY and hard < cap
    ):
        return None
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    return soft, hard
