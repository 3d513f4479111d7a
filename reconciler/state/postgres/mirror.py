"""Moving state rows between PostgreSQL and the engine's DuckDB session, in bulk.

- :func:`load`: ``COPY (SELECT …) TO STDOUT`` of each table, streamed to a CSV file that
  DuckDB reads into the session's working copy of the state (never a row at a time through
  Python);
- :func:`push`: the rows of one table that a write touched (selected by key), from the
  working copy to PostgreSQL: one ``DELETE`` of those keys and one ``COPY … FROM STDIN`` of
  a CSV file DuckDB wrote.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import psycopg
from psycopg import sql as pgsql

from reconciler.state.postgres.tables import TABLES


def load(
    pg: psycopg.Connection,
    schema: str,
    con: duckdb.DuckDBPyConnection,
    catalog: str,
    tmp: Path,
    *,
    members: bool = True,
) -> None:
    """Copy every table of the PostgreSQL state into ``catalog`` (empty tables of the same
    shape), from one consistent snapshot."""
    tmp.mkdir(parents=True, exist_ok=True)
    with pg.transaction():
        pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for table, cols in TABLES.items():
            if table == "members" and not members:
                continue
            found = pg.execute("SELECT to_regclass(%s)", [f"{schema}.{table}"]).fetchone()
            if not found or found[0] is None:  # a table a later version added: empty
                continue
            fd, name = tempfile.mkstemp(
                prefix=f"staging-{os.getpid()}-pgcopy-", suffix=".csv", dir=tmp
            )
            try:
                with (
                    os.fdopen(fd, "wb") as out,
                    pg.cursor().copy(
                        f"COPY (SELECT {', '.join(c.pg_export() for c in cols)} "
                        f"FROM {schema}.{table}) TO STDOUT (FORMAT csv)"
                    ) as copy,
                ):
                    for block in copy:
                        out.write(block)
                _read_csv_into(con, catalog, table, Path(name))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)


def load_members(
    pg: psycopg.Connection,
    schema: str,
    con: duckdb.DuckDBPyConnection,
    catalog: str,
    tmp: Path,
    activation_id: str,
) -> None:
    """Copy the member rows of one activation into ``catalog.members`` (a planning session
    copies only the activations whose diff runs in the engine)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cols = TABLES["members"]
    fd, name = tempfile.mkstemp(prefix=f"staging-{os.getpid()}-pgcopy-", suffix=".csv", dir=tmp)
    try:
        with pg.transaction(), os.fdopen(fd, "wb") as out:
            found = pg.execute("SELECT to_regclass(%s)", [f"{schema}.members"]).fetchone()
            if not found or found[0] is None:  # no state yet
                return
            query = pgsql.SQL(
                f"COPY (SELECT {', '.join(c.pg_export() for c in cols)} FROM {schema}.members "
                "WHERE activation_id = {aid}) TO STDOUT (FORMAT csv)"
            ).format(aid=pgsql.Literal(activation_id))
            with pg.cursor().copy(query) as copy:
                for block in copy:
                    out.write(block)
        _read_csv_into(con, catalog, "members", Path(name))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _read_csv_into(con: duckdb.DuckDBPyConnection, catalog: str, table: str, path: Path) -> None:
    if path.stat().st_size == 0:
        return
    cols = TABLES[table]
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(cols))) + "}"
    exprs = ", ".join(c.duck_import(f"c{i}") for i, c in enumerate(cols))
    quoted = str(path).replace("'", "''")
    con.execute(
        f"""INSERT INTO {catalog}.{table} SELECT {exprs} FROM read_csv('{quoted}',
            columns = {columns}, header = false, auto_detect = false, delim = ',',
            quote = '"', escape = '"', nullstr = '', allow_quoted_nulls = false)"""
    )


Where = Mapping[str, Any]  # column -> a value, or a list of values


def push(
    pg: psycopg.Connection,
    schema: str,
    con: duckdb.DuckDBPyConnection,
    catalog: str,
    table: str,
    where: Where,
    tmp: Path,
) -> int:
    """Make the PostgreSQL rows of ``table`` matching ``where`` equal to the working copy's
    (inside the caller's PostgreSQL transaction; ``con`` sees its uncommitted writes)."""
    pg_conds, pg_params, duck_conds, duck_params = [], [], [], []
    for col, value in where.items():
        if isinstance(value, list | tuple | set | frozenset):
            pg_conds.append(f"{col} = ANY(%s)")
            pg_params.append(list(value))
            duck_conds.append(f"{col} IN (SELECT unnest(?::VARCHAR[]))")
            duck_params.append(list(value))
        else:
            pg_conds.append(f"{col} = %s")
            pg_params.append(value)
            duck_conds.append(f"{col} = ?")
            duck_params.append(value)
    pg.execute(f"DELETE FROM {schema}.{table} WHERE {' AND '.join(pg_conds)}", pg_params)
    return copy_rows(
        pg, schema, con, catalog, table, tmp, f"WHERE {' AND '.join(duck_conds)}", duck_params
    )


def copy_rows(
    pg: psycopg.Connection,
    schema: str,
    con: duckdb.DuckDBPyConnection,
    catalog: str,
    table: str,
    tmp: Path,
    where: str = "",
    params: Sequence[Any] = (),
) -> int:
    """COPY the rows of ``catalog.table`` (``where``) into PostgreSQL: DuckDB writes them as
    CSV, which is streamed into ``COPY … FROM STDIN`` — no row passes through Python."""
    cols = TABLES[table]
    tmp.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"staging-{os.getpid()}-pgpush-", suffix=".csv", dir=tmp)
    os.close(fd)
    try:
        quoted = name.replace("'", "''")
        row = con.execute(
            f"COPY (SELECT {', '.join(c.duck_export() for c in cols)} FROM {catalog}.{table} "
            f"{where}) TO '{quoted}' (FORMAT csv, HEADER false)",
            list(params),
        ).fetchone()
        n = int(row[0]) if row else 0
        if n:
            with (
                open(name, "rb") as f,
                pg.cursor().copy(
                    f"COPY {schema}.{table} ({', '.join(c.name for c in cols)}) FROM STDIN "
                    "(FORMAT csv)"
                ) as copy,
            ):
                while block := f.read(1 << 20):
                    copy.write(block)
        return n
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
