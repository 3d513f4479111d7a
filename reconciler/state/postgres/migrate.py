"""``reconcile state migrate --to postgres``: copy an embedded state into an empty PostgreSQL
schema, then read it back the way the engine will and check that both agree, table by table
(row counts and an order-independent MD5 digest of the rows).

The copy is one PostgreSQL transaction under the embedded state's lock: a migration that is
interrupted leaves the target empty and can simply be run again. The lineage id moves with
the state, so plans saved before the move still apply after it. A target that already holds
a state is never overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from reconciler.errors import StateError
from reconciler.state.backend import EmbeddedBackend, migrated_path
from reconciler.state.postgres import mirror
from reconciler.state.postgres.backend import PostgresBackend
from reconciler.state.postgres.tables import TABLES
from reconciler.state.schema import CATALOG, create_schema

COPY = "__reconcile_copy"


@dataclass(frozen=True)
class TableCheck:
    table: str
    rows: int
    digest: str


def migrate_to_postgres(
    source: EmbeddedBackend,
    target: PostgresBackend,
    echo: Callable[[str], None] = lambda _m: None,
) -> list[TableCheck]:
    if not source.path.exists():
        raise StateError(f"there is no embedded state at {source.path} to migrate")
    db = target.db
    with source.lock() as lock:
        lock.acquire("state migrate")
        con = duckdb.connect(":memory:")
        try:
            attached = source.attach(con, write=True)  # migrated to the current version first
            try:
                with db.connect() as pg:
                    db.ensure_schema(pg)
                    with db.errors("copying the state"), pg.transaction():
                        _refuse_non_empty(pg, target)
                        pg.execute(f"DELETE FROM {db.schema}.meta")  # the source's lineage
                        for table in TABLES:
                            n = mirror.copy_rows(pg, db.schema, con, CATALOG, table, target.tmp)
                            echo(f"Copied {n:,} {table} rows.")
                    con.execute(f"ATTACH ':memory:' AS {COPY}")
                    create_schema(con, COPY)
                    con.execute(f"DELETE FROM {COPY}.meta")
                    with db.errors("reading the copy back"):
                        mirror.load(pg, db.schema, con, COPY, target.tmp)
                checks = _verify(con, target)
            finally:
                attached.close()
        finally:
            con.close()
        retire(source.path)  # still under its lock: no apply can slip in between
    return checks


def retire(path: Path) -> None:
    """The migrated embedded state (and its write-ahead log) renamed aside, so a checkout
    still configured for it finds no live state there and says why
    (:func:`reconciler.state.backend.migrated_path`) instead of planning and applying
    against a copy PostgreSQL has moved on from."""
    aside = migrated_path(path)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        os.replace(wal, aside.with_name(aside.name + ".wal"))
    os.replace(path, aside)


def _refuse_non_empty(pg, target: PostgresBackend) -> None:
    s = target.db.schema
    counts = {
        t: pg.execute(f"SELECT count(*) FROM {s}.{t}").fetchone()[0] for t in TABLES if t != "meta"
    }
    if any(counts.values()):
        held = ", ".join(f"{n:,} {t}" for t, n in counts.items() if n)
        raise StateError(
            f"the PostgreSQL state at {target.where} is not empty ({held}); "
            "`state migrate` never overwrites a state — choose another schema"
        )


def _verify(con: duckdb.DuckDBPyConnection, target: PostgresBackend) -> list[TableCheck]:
    checks = []
    for table in TABLES:
        got = []
        for catalog in (CATALOG, COPY):
            row = con.execute(
                f"SELECT count(*), coalesce(bit_xor(md5_number(CAST(t AS VARCHAR))), 0) "
                f"FROM {catalog}.{table} t"
            ).fetchone()
            assert row is not None
            got.append(row)
        (n, digest), (n2, digest2) = got
        if (n, digest) != (n2, digest2):
            raise StateError(
                f"the copy at {target.where} does not match the embedded state: {table} has "
                f"{n:,} rows there and {n2:,} in PostgreSQL (or their contents differ); the "
                "embedded state is unchanged — drop the target schema and migrate again"
            )
        checks.append(TableCheck(table, n, f"{int(digest):032x}"))
    return checks
