"""The Source interface: where profiles and segment membership come from.

Segment SQL arrives in pull requests, so it is untrusted. Every source checks it with
:func:`check_segment_sql` (one read-only query, no internal catalogs, no table functions)
before running it, and runs it with its engine's own guard (DuckDB: external access
disabled; PostgreSQL: a read-only transaction).
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from reconciler.workspace.spec import ProfilesTable

#: catalogs the engine attaches next to the source; segment SQL may not name them
INTERNAL_PREFIX = "__reconcile"

#: schemas and catalogs describing the engine itself (attached databases, settings)
_METADATA = {"information_schema", "pg_catalog", "system", "temp"}

#: a table "name" DuckDB would read as a file or URL (``FROM '/etc/passwd'``, ``"x.csv"``)
_FILE_LIKE = re.compile(
    r"[/\\:]|\.(csv|tsv|txt|json|jsonl|ndjson|parquet|arrow|xlsx|db|duckdb|sqlite|gz|zst)$",
    re.IGNORECASE,
)


class SqlRejected(Exception):
    """Segment SQL that is not a single read-only SELECT; the caller adds the segment file.
    ``line`` is the line within the SQL, when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


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


def check_segment_sql(sql: str, dialect: str) -> str:
    """Return ``sql`` if it is exactly one SELECT that reads no internal catalog and calls no
    table function; raise SqlRejected with a reason otherwise."""
    quiet = logging.getLogger("sqlglot")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "falling back to parsing as a Command": rejected below
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" (SQL line {first.get('line')}, column {first.get('col')})" if first else ""
        raise SqlRejected(
            f"SQL does not parse{where}: {first.get('description', exc)}", first.get("line")
        ) from exc
    finally:
        quiet.setLevel(level)
    if len(statements) != 1:
        raise SqlRejected(f"expected one SELECT statement, found {len(statements)} statements")
    query = statements[0]
    if not isinstance(query, exp.Query):
        raise SqlRejected(
            f"only a SELECT is allowed, found {query.key.upper()}; segments never change data"
        )
    for node in query.walk():
        if isinstance(node, exp.Table):
            if not isinstance(node.this, exp.Identifier):
                raise SqlRejected(
                    "table functions are not allowed in segment SQL (found "
                    f"{node.this.sql(dialect)!r}); read tables of the source only"
                )
            if _FILE_LIKE.search(node.name):
                raise SqlRejected(
                    f"reading files is not allowed in segment SQL (found {node.name!r}); "
                    "read tables of the source only"
                )
            for part in (node.catalog, node.db, node.name):
                if part.lower().startswith(INTERNAL_PREFIX):
                    raise SqlRejected(f"segment SQL may not read the engine's {part!r} tables")
            if node.catalog.lower() in _METADATA or node.db.lower() in _METADATA:
                raise SqlRejected(
                    "segment SQL may not read the engine's metadata "
                    f"({node.sql(dialect)!r}); read tables of the source only"
                )
        elif isinstance(node, exp.Command | exp.Pragma | exp.Set | exp.Into):
            raise SqlRejected(f"{node.key.upper()} is not allowed in segment SQL")
    return sql
