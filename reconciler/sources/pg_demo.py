"""The demo customer data in PostgreSQL: the very rows of the DuckDB demo database
(:mod:`reconciler.sources.demo`), generated there and moved with one ``COPY ... FROM
STDIN`` — so the example workspace and the benchmarks can use a PostgreSQL source."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import psycopg
from psycopg import sql as pgsql

from reconciler.sources import demo

__all__ = ["fill", "load_table"]

CHUNK = 1 << 20


def fill(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    profiles: int,
    as_of: date,
    tmp: Path,
    *,
    seed: int = 7,
) -> None:
    """Create ``schema.table`` holding the demo rows (``profiles`` of them, anchored at
    ``as_of``), in one transaction: a reader sees no table or the whole table."""
    path = tmp / "demo.duckdb"
    demo.generate(path, profiles, as_of=as_of, seed=seed, table=table)
    load_table(path, conn, schema, table, tmp, only_if_missing=True)


def load_table(
    duckdb_path: Path,
    conn: psycopg.Connection,
    schema: str,
    table: str,
    tmp: Path,
    *,
    only_if_missing: bool = False,
) -> None:
    """Replace ``schema.table`` in PostgreSQL with the table of that name in a DuckDB file
    (same column names and types), through a CSV file and ``COPY FROM STDIN``."""
    csv = tmp / f"{table}.csv"
    con = duckdb.connect(str(duckdb_path), read_only=True)
    try:
        described = con.execute(f'DESCRIBE "{table}"').fetchall()
        con.execute(
            f"COPY \"{table}\" TO '{csv}' (FORMAT csv, HEADER false, QUOTE '\"', FORCE_QUOTE *)"
        )
    finally:
        con.close()
    target = pgsql.Identifier(schema, table)
    columns = pgsql.SQL(", ").join(
        pgsql.SQL("{} {}").format(pgsql.Identifier(row[0]), pgsql.SQL(_pg_type(row[1])))
        for row in described
    )
    read_only, conn.read_only = conn.read_only, False
    try:
        with conn.transaction(), conn.cursor() as cur:
            # two first plans at once: one fills, the other waits for it and keeps its table
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"{schema}.{table}"])
            cur.execute("SELECT to_regclass(%s)", [target.as_string(conn)])
            if only_if_missing and (cur.fetchone() or (None,))[0] is not None:
                return
            cur.execute(
                pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(schema))
            )
            cur.execute(pgsql.SQL("DROP TABLE IF EXISTS {}").format(target))
            cur.execute(pgsql.SQL("CREATE TABLE {} ({})").format(target, columns))
            # FORCE_QUOTE writes NULL as an unquoted empty field and '' as "": COPY's CSV rules
            copy_in = pgsql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(target)
            with cur.copy(copy_in) as copy, open(csv, "rb") as f:
                while chunk := f.read(CHUNK):
                    copy.write(chunk)
            cur.execute(pgsql.SQL("ANALYZE {}").format(target))
    finally:
        conn.read_only = read_only
        csv.unlink(missing_ok=True)


def _pg_type(duck_type: str) -> str:
    """The PostgreSQL type of a demo column (DuckDB's names, mostly standard SQL)."""
    return {"DOUBLE": "double precision", "FLOAT": "real", "VARCHAR": "text"}.get(
        duck_type, duck_type
    )
