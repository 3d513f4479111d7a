"""Reading the PostgreSQL state: the session's working copy, with an activation's member rows
copied from PostgreSQL the first time a planning session's diff needs them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import psycopg

from reconciler.state.postgres import mirror
from reconciler.state.postgres.db import PgDatabase
from reconciler.state.schema import CATALOG
from reconciler.state.store import StateReader

__all__ = ["PostgresStateReader"]


class PostgresStateReader(StateReader):
    """The working copy; member counts come from PostgreSQL when members were not copied."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        db: PgDatabase,
        pg: psycopg.Connection | None,
        members: bool,
        catalog: str = CATALOG,
        tmp: Path | None = None,
    ):
        super().__init__(con, catalog)
        self.db, self.pg, self.has_members = db, pg, members
        self.tmp = tmp or Path(".reconcile/tmp")
        self._loaded: set[str] = set()

    def members_sql(self, activation_id: str) -> str:
        """Without the member rows copied at attach (a planning session), an activation's
        rows are copied the first time its diff needs them."""
        if not self.has_members and self.pg is not None and activation_id not in self._loaded:
            with self.db.errors("reading the recorded members"):
                mirror.load_members(
                    self.pg, self.db.schema, self.con, self.c, self.tmp, activation_id
                )
            self._loaded.add(activation_id)
        return super().members_sql(activation_id)

    def member_counts(self, activation_id: str) -> dict[str, int]:
        if self.has_members or self.pg is None:
            return super().member_counts(activation_id)
        with self.db.errors("counting members"):
            rows = self.pg.execute(
                f"SELECT grp, count(*) FROM {self.db.schema}.members WHERE activation_id = %s "
                "GROUP BY grp",
                [activation_id],
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}
