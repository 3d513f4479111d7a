"""``validate`` against the source's catalogue: segment SQL, consent conditions and
``freshness_sql`` are bound against the real tables, so a missing table or column fails in
``validate`` (``file:line: field: message``), not first in ``plan``.

Cheap and read-only: the source is attached read-only with external access disabled (as in
a plan), each query is only *described* (DuckDB binds it and runs nothing; a consent
condition runs as ``LIMIT 0``), under the time limit of untrusted SQL, and only after the
SQL guard accepted the text. A source database that does not exist yet (a fresh clone, before
the demo data is generated) is one warning, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb

from reconciler.enginedb import default_memory_limit, memory_bytes
from reconciler.errors import ConfigError, Location, ReconcileError, SourceError
from reconciler.sources import open_source, sql_policy, writeback
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.guard import (
    SqlRejected,
    check_condition,
    check_segment_sql,
    key_columns_problem,
)
from reconciler.sources.limits import memory_cap, query_timeout, time_limit
from reconciler.workspace.goal_rules import WRITEBACK_TABLE
from reconciler.workspace.loader import Workspace
from reconciler.workspace.spec import PostgresSource
from reconciler.workspace.templating import TemplateFailed, render_sql


@dataclass
class CatalogCheck:
    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)


def check_catalog(ws: Workspace, as_of: datetime | None = None) -> CatalogCheck:
    """Bind every segment, consent condition and ``freshness_sql`` of ``ws`` against its
    source. SQL the guard refuses is skipped here (``validate`` already reports it)."""
    out = CatalogCheck()
    if isinstance(ws.config.source, PostgresSource):
        # validate does not connect to the database (it runs where no secrets are, e.g. on a
        # pull request); the first plan binds the SQL in PostgreSQL and names the file
        out.warnings.append(
            ConfigError(
                "segment SQL and consent conditions were checked by the SQL guard but not "
                "against the PostgreSQL source's tables (validate does not connect to it; "
                "`reconcile plan` does)",
                ws.config_location("source"),
            )
        )
        return out
    source = open_source(ws)
    path = getattr(source, "path", None)
    if path is not None and path.exists() and not path.is_file():
        try:
            source.prepare(as_of or datetime.now(UTC))  # says what is wrong, changes nothing
        except SourceError as exc:
            out.errors.append(_located(exc, ws.config_location("source", "path")))
            return out
    if path is not None and not path.is_file():
        demo = getattr(ws.config.source, "demo", False)
        why = (
            "`reconcile plan` generates the demo data on first use"
            if demo
            else "check `source.path`"
        )
        out.warnings.append(
            ConfigError(
                f"the source database {ws.config.source.path} does not exist yet ({why}), so "
                "segment SQL and consent conditions were not checked against its tables",
                ws.config_location("source", "path"),
            )
        )
        return out
    spec = ws.config.source
    memory = getattr(spec, "memory_limit", None) or default_memory_limit()
    with memory_cap(memory_bytes(memory)):  # what memory_limit does not count
        con = duckdb.connect(
            ":memory:", config={"memory_limit": memory, "autoinstall_known_extensions": "false"}
        )
        try:
            try:
                source.attach(con)
            except SourceError as exc:
                out.errors.append(_located(exc, ws.config_location("source")))
                return out
            if getattr(spec, "writable", False):
                # the write-back table exists from the first plan on: segments may read it
                con.execute(writeback.ddl(WRITEBACK_TABLE, temp=True))
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            _Binder(ws, con, as_of or datetime.now(UTC), out).run()
        finally:
            con.close()
    return out


class _Binder:
    def __init__(
        self, ws: Workspace, con: duckdb.DuckDBPyConnection, as_of: datetime, out: CatalogCheck
    ):
        self.ws, self.con, self.as_of, self.out = ws, con, as_of, out
        self.policy = sql_policy(ws.config.source)
        self.timeout = query_timeout(ws.config.source)
        self.tz = ws.config.timezone
        self.dialect = "duckdb"  # the engine session binds every source's SQL

    def run(self) -> None:
        self._declared_tables()
        if self.ws.config.source.freshness_sql:
            self._freshness()
        for name in sorted(self.ws.segments):
            self._segment(name)
        for name in sorted(self.ws.integrations):
            if self.ws.integrations[name].consent:
                self._consent(name)

    def _describe(self, sql: str, where: Location, what: str) -> list[tuple] | _Failed:
        """The columns ``sql`` returns, or why it does not bind (the engine's message without
        data, and the SQL line it names)."""
        try:
            with time_limit(self.con, self.timeout, str(where), what):
                return self.con.execute(f"DESCRIBE SELECT * FROM ({sql}\n) q").fetchall()
        except ReconcileError as exc:  # the time limit
            return _Failed(str(exc).removeprefix(f"{where}: "), None)
        except duckdb.Error as exc:
            detail, line = safe_engine_error(exc, sql)
            return _Failed(" ".join(detail.split()), line)

    def _declared_tables(self) -> None:
        """Each ``source.tables`` entry is a table or view of the source (a misspelt one
        passed validate; segments naming the right table were then refused by the guard)."""
        for i, name in enumerate(self.ws.config.source.tables):
            ident = ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))
            try:
                self.con.execute(f"SELECT * FROM {ident} LIMIT 0")
            except duckdb.Error:
                self.out.warnings.append(
                    ConfigError(
                        f"{name!r} is not a table or view of the source (misspelt?): segment "
                        "SQL reading it will fail",
                        self.ws.config_location("source", "tables", i),
                    )
                )

    def _freshness(self) -> None:
        where = self.ws.config_location("source", "freshness_sql")
        try:
            sql = check_segment_sql(
                render_sql(self.ws.config.source.freshness_sql or "", self.as_of, self.tz),
                self.dialect,
                policy=self.policy,
            )
        except (TemplateFailed, SqlRejected):
            return
        found = self._describe(sql, where, "freshness_sql")
        if isinstance(found, _Failed):
            self.out.errors.append(
                ConfigError(
                    f"freshness_sql does not run against the source: {found.message}", where
                )
            )

    def _segment(self, name: str) -> None:
        doc = self.ws.doc("segments", name)
        try:
            sql = check_segment_sql(
                render_sql(self.ws.segments[name].sql, self.as_of, self.tz),
                self.dialect,
                policy=self.policy,
            )
        except (TemplateFailed, SqlRejected):
            return  # reported by the loader
        found = self._describe(sql, doc.location(("sql",)), f"segment {name!r}")
        if isinstance(found, _Failed):
            at = doc.text_location(("sql",), found.line)
            self.out.errors.append(
                ConfigError(
                    f"segment {name!r} does not run against the source: {found.message}; fix "
                    "the SQL",
                    at,
                )
            )
        elif problem := key_columns_problem(name, found, self.ws.config.source.profiles.key):
            self.out.errors.append(doc.error(problem, ("sql",)))

    def _consent(self, name: str) -> None:
        integ = self.ws.integrations[name]
        where = self.ws.location("integrations", name, "consent")
        consent = integ.consent or ""
        try:
            check_condition(consent, self.dialect, self.policy)
        except SqlRejected:
            return  # reported by the loader
        table = '"' + self.ws.config.source.profiles.table.replace('"', '""') + '"'
        query = f"SELECT NOT coalesce((\n{consent}\n), FALSE) FROM {table} p LIMIT 0"
        try:
            with time_limit(self.con, self.timeout, str(where), "the consent condition"):
                self.con.execute(query)
        except ReconcileError as exc:
            self.out.errors.append(ConfigError(str(exc).removeprefix(f"{where}: "), where))
        except duckdb.Error as exc:
            detail = " ".join(safe_engine_error(exc, consent)[0].split())
            self.out.errors.append(
                ConfigError(
                    f"the consent condition does not run against the profiles table: {detail}; "
                    "it must be a true/false condition over its columns",
                    where,
                )
            )


@dataclass(frozen=True)
class _Failed:
    message: str
    line: int | None  # the SQL line the engine named


def _located(exc: SourceError, fallback: Location) -> ConfigError:
    where = exc.location or fallback
    return ConfigError(str(exc).removeprefix(f"{where}: "), where)
