"""The Source interface: where profiles and segment membership come from.

Segment SQL arrives in pull requests, so it is untrusted. Every source checks it with
:func:`reconciler.sources.guard.check_segment_sql` (one SELECT that reads only the declared
tables and calls only allowed functions) before running it, runs it under
:func:`reconciler.sources.limits.time_limit`, and with its engine's own guard (DuckDB:
external access disabled; PostgreSQL: a read-only transaction).
"""

from __future__ import annotations

from typing import Protocol

import duckdb

from reconciler.sources.guard import INTERNAL_PREFIX, SqlRejected, check_segment_sql
from reconciler.workspace.spec import ProfilesTable

__all__ = ["INTERNAL_PREFIX", "Source", "SqlRejected", "check_segment_sql"]


class Source(Protocol):
    """A source of profiles. ``attach`` makes the profiles table (and anything segment SQL
    may read) visible in a planning DuckDB session as the default catalog."""

    profiles: ProfilesTable
    dialect: str
    catalog: str  # the catalog name it attaches as (the session's default)

    def prepare(self, as_of_date) -> None:
        """Make the source usable (e.g. generate the demo database); raise SourceError."""

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Attach read-only and make it the session's default catalog."""

    def describe(self) -> str:
        """Where the data lives, for messages (never with secrets)."""
