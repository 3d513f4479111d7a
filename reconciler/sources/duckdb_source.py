"""The embedded DuckDB source: a DuckDB file holding the profiles table (the demo database
by default, generated deterministically on first use)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb

from reconciler.errors import SourceError
from reconciler.spec import DuckDBSource

SOURCE_CATALOG = "source"


class DuckDBFileSource:
    dialect = "duckdb"
    catalog = SOURCE_CATALOG

    def __init__(self, spec: DuckDBSource, root: Path):
        self.spec = spec
        self.profiles = spec.profiles
        path = Path(spec.path)
        self.path = path if path.is_absolute() else root / path

    def describe(self) -> str:
        return f"DuckDB file {self.path}"

    def prepare(self, as_of_date: date) -> None:
        if self.path.exists():
            return
        if not self.spec.demo:
            raise SourceError(
                f"the source database {self.path} does not exist; check `source.path` in "
                "reconcile.yaml (or set `source.demo: true` for the demo data)"
            )
        from reconciler.sources import demo

        self.path.parent.mkdir(parents=True, exist_ok=True)
        demo.generate(self.path, self.spec.demo_profiles, as_of=as_of_date)

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        try:
            con.execute(f"ATTACH '{_quote(self.path)}' AS {SOURCE_CATALOG} (READ_ONLY)")
        except duckdb.Error as exc:
            raise SourceError(f"cannot open the source {self.describe()}: {exc}") from exc
        con.execute(f"USE {SOURCE_CATALOG}")
        table = self.profiles.table
        cols = {
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_catalog = ? AND table_name = ?",
                [SOURCE_CATALOG, table],
            ).fetchall()
        }
        if not cols:
            raise SourceError(
                f"the source {self.describe()} has no table {table!r} "
                "(source.profiles.table in reconcile.yaml)"
            )
        wanted = [self.profiles.key, *self.profiles.identifiers.values(), *self.profiles.attributes]
        missing = [c for c in wanted if c not in cols]
        if missing:
            raise SourceError(
                f"the profiles table {table!r} in {self.describe()} lacks column(s) {missing} "
                "declared in reconcile.yaml (source.profiles)"
            )


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
