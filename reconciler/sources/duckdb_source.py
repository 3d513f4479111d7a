"""The embedded DuckDB source: a DuckDB file holding the profiles table (the demo database
by default, generated deterministically on first use)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

import duckdb

from reconciler.errors import Location, SourceError
from reconciler.sources.identifier_columns import check_identifier_columns, check_key_column
from reconciler.workspace.spec import DuckDBSource

SOURCE_CATALOG = "source"


class DuckDBFileSource:
    dialect = "duckdb"
    catalog = SOURCE_CATALOG

    def __init__(
        self,
        spec: DuckDBSource,
        root: Path,
        locate: Callable[..., Location] | None = None,
        *,
        write: bool = False,
    ):
        self.spec = spec
        #: attached read-write (an apply's write-back into a `writable: true` source)
        self.write = write and spec.writable
        self.profiles = spec.profiles
        path = Path(spec.path)
        self.path = path if path.is_absolute() else root / path
        # where a setting is in reconcile.yaml, for messages
        self.locate = locate or (
            lambda *loc: Location("reconcile.yaml", None, ".".join(map(str, loc)))
        )

    def describe(self) -> str:
        return f"DuckDB file {self.path}"

    def prepare(self, as_of_date: date) -> None:
        self._prepare(as_of_date)
        if self.spec.writable:  # segment SQL may read the write-back before the first apply
            from reconciler.sources.writeback import ensure_table

            try:
                ensure_table(str(self.path))
            except duckdb.Error as exc:
                detail = re.sub(r"\s+", " ", str(exc)).strip().rstrip(".!")
                if "Could not set lock" in detail:
                    holder = re.search(r"\(PID (\d+)\)", detail)
                    raise SourceError(
                        f"{self.locate('source', 'writable')}: {self.describe()} is locked by "
                        f"another process{f' (PID {holder.group(1)})' if holder else ''}: an "
                        "apply that writes back to the source (`source.writable: true`) holds "
                        "it until it finishes; run this again then"
                    ) from exc
                raise SourceError(
                    f"{self.locate('source', 'writable')}: cannot create the write-back table "
                    f"in {self.describe()}: {detail}"
                ) from exc

    def _prepare(self, as_of_date: date) -> None:
        if self.path.is_file():
            return
        if self.path.exists():
            raise SourceError(
                f"{self.locate('source', 'path')}: the source database {self.path} is not a "
                "file; point `source.path` at the DuckDB file holding the profiles table"
            )
        if not self.spec.demo:
            raise SourceError(
                f"{self.locate('source', 'path')}: the source database {self.path} does not "
                "exist; check `source.path` (or set `source.demo: true` for the demo data)"
            )
        from reconciler.sources import demo

        self.path.parent.mkdir(parents=True, exist_ok=True)
        demo.ensure_demo(
            self.path,
            self.spec.demo_profiles,
            as_of_date,
            threads=self.spec.threads,
            memory_limit=self.spec.memory_limit,
        )

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        try:
            # TYPE duckdb: a SQLite or other file is refused, never handed to an extension
            # the engine would download on the spot (`validate --offline` reached the net)
            mode = "TYPE duckdb" if self.write else "TYPE duckdb, READ_ONLY"
            con.execute(f"ATTACH '{_quote(self.path)}' AS {SOURCE_CATALOG} ({mode})")
        except duckdb.Error as exc:
            detail = re.sub(r"\s+", " ", str(exc)).strip().rstrip(".!")
            where = self.locate("source", "path")
            raise SourceError(
                f"{where}: cannot open the source {self.describe()}: "
                f"{detail}. Check that it is a DuckDB database and that no other program "
                "holds it open for writing",
                where,
            ) from exc
        con.execute(f"USE {SOURCE_CATALOG}")
        table = self.profiles.table
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_catalog = ? AND table_schema = current_schema() "
                "AND table_name = ?",
                [SOURCE_CATALOG, table],
            ).fetchall()
        )
        cols = set(types)
        if not cols:
            where = self.locate("source", "profiles", "table")
            raise SourceError(
                f"{where}: the source {self.describe()} "
                f"has no table {table!r}; set `source.profiles.table` to the profiles table",
                where,
            )
        declared: list[tuple[str, tuple[str | int, ...]]] = [
            (self.profiles.key, ("key",)),
            *((c, ("identifiers", t)) for t, c in self.profiles.identifiers.items()),
            *((c, ("attributes", i)) for i, c in enumerate(self.profiles.attributes)),
        ]
        missing = [(c, loc) for c, loc in declared if c not in cols]
        if missing:
            names = [c for c, _ in missing]
            where = self.locate("source", "profiles", *missing[0][1])
            raise SourceError(
                f"{where}: the profiles table "
                f"{table!r} in {self.describe()} has no column(s) {names}; fix the names "
                f"under `source.profiles` (the table has: {', '.join(sorted(cols))})",
                where,
            )
        check_identifier_columns(self.profiles, types, self.locate, "duckdb")
        check_key_column(self.profiles, types.get(self.profiles.key), self.locate, "duckdb")


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
