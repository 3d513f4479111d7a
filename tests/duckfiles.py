"""The tests' reads (and writes) of a workspace's DuckDB files, through one in-memory DuckDB
instance per test process.

``duckdb.connect(path)`` creates a database instance each time (every built-in function
registered: ~35 ms), ``ATTACH`` into a live one ~1 ms; the state-machine and property tests
read the state and the sandbox after every step, so those instances were a sixth of their
time. Each call attaches the file under a name of its own on a cursor of its own (threads
may read at once) and detaches it before returning, so the next read sees what was committed
since, and the file is not held open between reads (an apply in another process can lock it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

_BASE: tuple[int, duckdb.DuckDBPyConnection] | None = None
_MADE = threading.Lock()
_NAMES = itertools.count()


def _base() -> duckdb.DuckDBPyConnection:
    global _BASE
    with _MADE:
        if _BASE is None or _BASE[0] != os.getpid():  # not a forked parent's
            _BASE = (os.getpid(), duckdb.connect())
        return _BASE[1]


@contextlib.contextmanager
def attached(path: Path | str, *, read_only: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection whose default database is the file at ``path`` (as ``duckdb.connect``
    would give), detached when the block ends (a written file is checkpointed then)."""
    con = _base().cursor()
    name = f"test_file_{next(_NAMES)}"
    literal = str(path).replace("'", "''")
    try:
        con.execute(f"ATTACH '{literal}' AS {name}{' (READ_ONLY)' if read_only else ''}")
        try:
            con.execute(f"USE {name}")
            yield con
        finally:
            con.execute("USE memory")
            con.execute(f"DETACH {name}")
    finally:
        con.close()


def query(path: Path | str, sql: str, params: Sequence[Any] | dict | None = None) -> list[tuple]:
    """The rows of ``sql`` run on the file at ``path``, opened read-only."""
    with attached(path) as con:
        return con.execute(sql, params).fetchall()
