"""How PostgreSQL's columns travel into the engine: the DuckDB type each PostgreSQL type is
read back as, and DuckDB's reading of the CSV file a ``COPY ... TO STDOUT (FORMAT csv)`` wrote
(:mod:`reconciler.sources.postgres_source`, :mod:`reconciler.sources.pg_transaction`)."""

from __future__ import annotations

import re
from typing import Any


def display_type(display: str | None) -> str:
    """The DuckDB type of a result column PostgreSQL describes as ``display``
    (``numeric(12,2)``, ``character varying(80)``, ``integer``)."""
    m = re.fullmatch(r"([a-z ]+?)(?:\((\d+)(?:,(\d+))?\))?", (display or "").lower())
    if m is None:
        return "VARCHAR"
    precision = int(m.group(2)) if m.group(2) and m.group(1) == "numeric" else None
    scale = int(m.group(3)) if m.group(3) else None
    return duck_type(m.group(1), precision, scale)


def duck_type(data_type: str, precision: int | None, scale: int | None) -> str:
    """The DuckDB type a PostgreSQL column is read back as (its text form parses there)."""
    t = data_type.lower()
    if t == "numeric":
        if precision and precision <= 38 and 0 <= (scale or 0) <= precision:
            return f"DECIMAL({precision},{scale or 0})"
        # unbounded, wider than DuckDB's DECIMAL, or a scale it has not (PostgreSQL 15's
        # numeric(5,-2) and numeric(2,5)): as its exact text (a DOUBLE would lose digits, and
        # a change in them would go unseen)
        return "VARCHAR"
    return {
        "smallint": "SMALLINT",
        "integer": "INTEGER",
        "bigint": "BIGINT",
        "real": "FLOAT",
        "double precision": "DOUBLE",
        "boolean": "BOOLEAN",
        "date": "DATE",
        "timestamp without time zone": "TIMESTAMP",
        "timestamp with time zone": "TIMESTAMPTZ",
        "uuid": "UUID",
    }.get(t, "VARCHAR")


def csv_relation(path: str, types: dict[str, str]) -> str:
    """DuckDB's reading of a CSV file that PostgreSQL's ``COPY … TO STDOUT (FORMAT csv)``
    wrote, its columns typed ``types`` (name -> DuckDB type)."""
    spec = ", ".join(f"'{c.replace(chr(39), chr(39) * 2)}': '{t}'" for c, t in types.items())
    return (
        f"read_csv('{_q(path)}', columns = {{{spec}}}, header = false, quote = '\"', "
        "escape = '\"', allow_quoted_nulls = false, auto_detect = false, "
        # PostgreSQL ends each row with \n; guessed, a quoted \r\n in the first value made
        # DuckDB expect \r\n everywhere and refuse the whole table
        "new_line = '\\n', dateformat = '%Y-%m-%d')"
    )


def _q(path: str) -> str:
    return path.replace("'", "''")


def unreadable_columns(con: Any, path: str, types: dict[str, str]) -> list[str]:
    """The columns of the COPY file at ``path`` holding a value that does not cast to its
    DuckDB type (``types``); none when the file cannot even be read as text."""
    import duckdb

    raw = csv_relation(path, dict.fromkeys(types, "VARCHAR"))
    checks = ", ".join(
        f'count(*) FILTER ("{q}" IS NOT NULL AND TRY_CAST("{q}" AS {t}) IS NULL)'
        for q, t in ((c.replace('"', '""'), t) for c, t in types.items())
    )
    try:
        counts = con.execute(f"SELECT {checks} FROM {raw}").fetchall()[0]
    except duckdb.Error:
        return []
    return [c for c, n in zip(types, counts, strict=True) if n]
