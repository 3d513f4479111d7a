"""Confirmed additions waiting to be recorded, taken in slices of any size across the calls
they came from (:mod:`reconciler.apply.additions`).

A transaction that appends exactly one DuckDB row group (122,880 rows) to the state's
members writes it straight to the state file, once; fewer rows go through the write-ahead
log and are written again by the checkpoint. Recording 3.72M members took 4.2 s of CPU in
transactions of 120,000 rows and 1.9 s in transactions of exactly 122,880
(benchmarks/results/2026-11-30-round9.md). Calls rarely add up to a row group (10,000
members each), so a call's members may be recorded in two transactions: its intent is closed
by the second, and a run killed between the two re-plans (and re-sends) only the members the
first did not record.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["HeldRows"]


@dataclass
class _Part:
    batch_id: str  # "" for rows no intent stands for (a control group's)
    rows: Any  # Arrow rows of the send table: key, rec, fp, ...
    detail: str | None
    offset: int = 0  # rows already taken


class HeldRows:
    """Rows of calls the destination took whole, oldest first, not recorded yet."""

    def __init__(self) -> None:
        self._parts: deque[_Part] = deque()
        self.rows = 0

    def __bool__(self) -> bool:
        return bool(self.rows)

    def add(self, batch_id: str, rows: Any, detail: str | None = None) -> None:
        if rows.num_rows:
            self._parts.append(_Part(batch_id, rows, detail))
            self.rows += rows.num_rows

    def take(self, n: int) -> tuple[list[Any], list[tuple[str, str | None]]]:
        """The oldest ``n`` rows (``n`` at most :attr:`rows`) as Arrow slices, and (batch id,
        detail) of the calls whose last rows they are: those calls' intents can be closed."""
        slices: list[Any] = []
        completed: list[tuple[str, str | None]] = []
        left = min(n, self.rows)
        self.rows -= left
        while left:
            part = self._parts[0]
            size = min(part.rows.num_rows - part.offset, left)
            slices.append(part.rows.slice(part.offset, size))
            part.offset += size
            left -= size
            if part.offset == part.rows.num_rows:
                self._parts.popleft()
                if part.batch_id:
                    completed.append((part.batch_id, part.detail))
        return slices, completed
