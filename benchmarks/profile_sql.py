"""Where one `reconcile` step spends its CPU, by SQL statement: the process CPU (every thread,
so DuckDB's workers count) of each statement the step executes, summed by statement shape.

    python benchmarks/profile_sql.py -- -C benchmarks/.work/n1000000 plan
    python benchmarks/profile_sql.py --top 40 -- -C WORKSPACE apply --auto-approve

Runs the CLI in this process with every DuckDB connection wrapped so that ``execute`` is
timed (``time.process_time`` before and after, statements of the main thread only: the
destination's worker threads run at the same time and would be charged twice). Statements
that differ only in their parameters share a line. What ``sql()`` streams (the send table's
batches) is read lazily, outside ``execute``: it shows up in the remainder, with Python,
start-up and the destination's own work. Complements :mod:`profile_step` (Python functions,
cProfile); this one has no profiler overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import runpy
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import duckdb


class Statements:
    """CPU and wall seconds per statement shape, and how many times it ran."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}  # shape -> [count, cpu, wall]

    def add(self, sql: str, cpu: float, wall: float) -> None:
        shape = re.sub(r"\s+", " ", sql).strip()
        row = self.seen.setdefault(shape, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += cpu
        row[2] += wall

    def table(self, top: int, width: int) -> list[str]:
        rows = sorted(self.seen.items(), key=lambda kv: -kv[1][1])[:top]
        return [f"{c:7.2f} {w:7.2f} {int(n):5d}  {s[:width]}" for s, (n, c, w) in rows]

    @property
    def cpu(self) -> float:
        return sum(row[1] for row in self.seen.values())


class TimedConnection:
    """A DuckDB connection whose ``execute`` (and its cursors') is timed into ``stats``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, stats: Statements):
        self._con = con
        self._stats = stats

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def __enter__(self) -> TimedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._con.close()

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return self._con.execute(sql, *args, **kwargs)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return self._con.execute(sql, *args, **kwargs)
        finally:
            self._stats.add(str(sql), time.process_time() - cpu, time.perf_counter() - wall)

    def cursor(self) -> TimedConnection:
        return TimedConnection(self._con.cursor(), self._stats)


def timed_connect(stats: Statements) -> Callable[..., TimedConnection]:
    real = duckdb.connect

    def connect(*args: Any, **kwargs: Any) -> TimedConnection:
        return TimedConnection(real(*args, **kwargs), stats)

    return connect


def main(argv: list[str] | None = None) -> Statements:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--width", type=int, default=160, help="characters of each statement shown")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the reconcile arguments")
    opts = ap.parse_args(argv)
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    stats = Statements()
    real = duckdb.connect
    duckdb.connect = timed_connect(stats)  # type: ignore[assignment]
    sys.argv = ["reconcile", *args]
    start = time.process_time()
    try:
        with contextlib.suppress(SystemExit):  # the CLI exits with its status
            runpy.run_module("reconciler", run_name="__main__")
    finally:
        duckdb.connect = real
    total = time.process_time() - start
    print(
        f"CPU {total:.2f} s; in SQL statements of the main thread {stats.cpu:.2f} s; "
        f"the rest (Python, streamed reads, the destination's threads) {total - stats.cpu:.2f} s"
    )
    print(f"{'cpu s':>7} {'wall s':>7} {'runs':>5}  statement")
    for line in stats.table(opts.top, opts.width):
        print(line)
    return stats


if __name__ == "__main__":
    main()
