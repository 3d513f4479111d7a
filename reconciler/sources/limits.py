"""A time limit for queries that run untrusted SQL.

DuckDB has no statement timeout, so :func:`time_limit` starts a watchdog thread that calls
``con.interrupt()`` when the limit passes; the interrupted query surfaces as a
:class:`~reconciler.errors.SegmentError` naming the file:line of the SQL and the limit.
Memory is bounded by the session (``memory_limit``, ``max_temp_directory_size``), and the
guard refuses the functions whose single call could outgrow those (see ``functions.py``).

Usage::

    with time_limit(con, query_timeout(ws.config.source), "segments/vip.yaml:3: sql"):
        con.execute(user_sql)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from reconciler.errors import SegmentError

__all__ = ["DEFAULT_QUERY_TIMEOUT", "query_timeout", "time_limit"]

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

    def watch() -> None:
        if not done.wait(seconds):
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
        watchdog.join()
