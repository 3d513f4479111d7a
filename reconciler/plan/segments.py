"""Segments of a plan: each rendered (sandboxed Jinja), checked (the SQL guard) and
materialised once per planning session as a temp table of keys, under the time limit of
untrusted SQL; engine errors are reported without data from the rows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from reconciler.errors import SegmentError
from reconciler.plan import one_scan
from reconciler.plan.membership import SUPPRESSED, TEMP, _ident
from reconciler.sources import sql_policy
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.functions import exceeded
from reconciler.sources.guard import SqlRejected, check_segment_sql, key_columns_problem
from reconciler.sources.limits import query_timeout, time_limit
from reconciler.workspace.loader import Workspace
from reconciler.workspace.templating import TemplateFailed, render_sql


@dataclass(frozen=True)
class SegmentResult:
    name: str
    table: str
    size: int  # distinct keys
    repeated: int = 0  # keys the SQL returned more than once (counted once)
    column_type: str = ""  # the type of the column the SQL returns (before the key cast)
    #: the diff runs in PostgreSQL: the segment's id there (``table`` is made on demand)
    remote: int | None = None
    #: not materialised: the profile rows it selects (:mod:`reconciler.plan.one_scan`)
    rows: one_scan.Rows | None = None


class SegmentRunner:
    def __init__(
        self,
        ws: Workspace,
        con: duckdb.DuckDBPyConnection,
        as_of: datetime,
        dialect: str,
        source: Any = None,
    ):
        self.ws, self.con, self.as_of, self.dialect = ws, con, as_of, dialect
        #: a source that runs segment SQL itself (PostgreSQL) and ships the keys in
        self.remote = source if hasattr(source, "materialise") else None
        #: the membership diff runs in PostgreSQL: segments stay there
        self.pushdown = getattr(source, "pushdown", None)
        self._local: set[str] = set()
        self.policy = sql_policy(ws.config.source)
        self.timeout = query_timeout(ws.config.source)
        self._done: dict[str, SegmentResult] = {}
        self._scanned: dict[str, SegmentResult] = {}
        self._profile_key_type: str | None = None

    def for_activation(self, names: list[str]) -> list[SegmentResult]:
        """The segments of one activation: a lone segment that only filters the profiles
        table of a local source is scanned in place (:meth:`scan`), the others are run."""
        if len(names) == 1 and self.remote is None:
            return [self.scan(names[0])]
        return [self.run(n) for n in names]

    def scan(self, name: str) -> SegmentResult:
        """The segment as the profile rows it selects, counted without materialising its
        keys, when it is a plain filter over the profiles table whose every key is on one row
        (:mod:`reconciler.plan.one_scan`); else :meth:`run`, which reports and counts the
        rest (NULL or repeated keys) as always."""
        if name in self._done or name in self._scanned:
            return self._done.get(name) or self._scanned[name]
        sql = self._checked(name)
        profiles = self.ws.config.source.profiles
        rows = one_scan.row_filter(self.con, sql, profiles)
        size = None
        if rows is not None:
            where = self.ws.location("segments", name, "sql")
            try:
                with time_limit(self.con, self.timeout, str(where), f"segment {name!r}"):
                    size = one_scan.unique_rows(self.con, rows, profiles)
                    cols = self.con.execute(f"DESCRIBE SELECT * FROM ({sql}\n) q").fetchall()
            except duckdb.Error:  # the general path reports it
                size = None
        if rows is None or size is None:
            return self.run(name, sql)
        result = SegmentResult(name, "", size, 0, str(cols[0][1]), rows=one_scan.Rows(rows, size))
        self._scanned[name] = result
        return result

    def _key_type(self) -> str:
        """The type of the profiles table's key column in the engine ("" if unknown)."""
        if self._profile_key_type is None:
            profiles = self.ws.config.source.profiles
            try:
                cols = self.con.execute(f"DESCRIBE {_ident(profiles.table)}").fetchall()
            except duckdb.Error:  # no such table: the plan reports it elsewhere
                cols = []
            types = {str(c[0]): str(c[1]) for c in cols}
            self._profile_key_type = types.get(profiles.key, "")
        return self._profile_key_type

    def _checked(self, name: str) -> str:
        """The segment's SQL, rendered and checked by the guard."""
        seg = self.ws.segments[name]
        try:
            return check_segment_sql(
                render_sql(seg.sql, self.as_of, self.ws.config.timezone),
                self.dialect,
                policy=self.policy,
            )
        except (TemplateFailed, SqlRejected) as exc:
            at = self.ws.doc("segments", name).text_location(("sql",), exc.line)
            raise SegmentError(f"{at}: segment {name!r}: {exc}") from exc

    def run(self, name: str, sql: str | None = None) -> SegmentResult:
        """The segment's keys materialised (``sql``: its SQL already rendered and checked)."""
        if name in self._done:
            return self._done[name]
        where = self.ws.location("segments", name, "sql")
        sql = sql if sql is not None else self._checked(name)
        table = f"{TEMP}_seg_{len(self._done)}"
        try:
            with time_limit(self.con, self.timeout, str(where), f"segment {name!r}"):
                if self.remote is not None:
                    what = f"segment {name!r}"
                    cols = self.remote.describe_query(sql, str(where), what)
                    self._one_column(name, where, cols)
                    if self.pushdown is not None:  # the keys stay in PostgreSQL
                        seg, *counts = self.pushdown.segment(sql, cols[0][0], str(where), what)
                        return self._remote_result(name, where, seg, table, cols, *counts)
                    self.remote.materialise(self.con, sql, cols[0][0], table, str(where), what)
                else:
                    # the line break ends a trailing `--` comment; none before the SQL, so
                    # the engine's "LINE n" is the SQL's line n
                    cols = self.con.execute(f"DESCRIBE SELECT * FROM ({sql}\n) q").fetchall()
                    self._one_column(name, where, cols)
                    key = key_text(_ident(cols[0][0]), str(cols[0][1]), self._key_type())
                    self.con.execute(
                        f"CREATE OR REPLACE TEMP TABLE {table} AS "
                        f"SELECT {key} AS k FROM ({sql}\n) q"
                    )
                # keys of distinct hashes are distinct: the keys themselves (strings, ~25%
                # slower to count) are counted only when two rows share a hash
                total, non_null, distinct = self.con.execute(
                    f"SELECT count(*), count(k), count(DISTINCT hash(k)) FILTER (k IS NOT NULL) "
                    f"FROM {table}"
                ).fetchall()[0]
                if distinct != non_null:
                    distinct = self.con.execute(
                        f"SELECT count(DISTINCT k) FROM {table}"
                    ).fetchall()[0][0]
        except SegmentError as exc:
            line = token_line(self.ws.segments[name].sql, exc.token)
            if line is None:
                raise
            # the server pointed at a name written on one line: that line, as for DuckDB
            at = self.ws.doc("segments", name).text_location(("sql",), line)
            raise SegmentError(str(exc).replace(str(where), str(at), 1)) from exc
        except duckdb.Error as exc:
            raise self._failed(name, exc, sql) from exc
        self._check_nulls(name, where, cols, total, non_null)
        if distinct != total:
            # a key returned twice (a join, or a key repeated in the profiles table) is one
            # profile: counted once; the plan says so
            distinct_table = f"{table}_distinct"
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE {distinct_table} AS SELECT DISTINCT k FROM {table}"
            )
            self.con.execute(f"DROP TABLE {table}")
            table = distinct_table
        result = SegmentResult(name, table, distinct, total - distinct, str(cols[0][1]))
        self._done[name] = result
        return result

    def _remote_result(
        self, name: str, where: object, seg: int, table: str, cols: list, *counts: int
    ) -> SegmentResult:
        total, non_null, distinct = counts
        self._check_nulls(name, where, cols, total, non_null)
        result = SegmentResult(name, table, distinct, total - distinct, str(cols[0][1]), remote=seg)
        self._done[name] = result
        return result

    def local(self, result: SegmentResult) -> str | one_scan.Rows:
        """The engine's table of a segment's distinct keys (copied from PostgreSQL the first
        time an activation planned in the engine needs it), or the rows a scanned one
        selects."""
        if result.rows is not None:
            return result.rows
        if result.remote is not None and result.table not in self._local:
            assert self.pushdown is not None
            self.pushdown.ship_segment(result.remote, result.table)
            self._local.add(result.table)
        return result.table

    @staticmethod
    def _check_nulls(name: str, where: object, cols: list, total: int, non_null: int) -> None:
        if non_null != total:
            raise SegmentError(
                f"{where}: segment {name!r} returned {total - non_null} NULL key(s); "
                f"filter them out (WHERE {cols[0][0]} IS NOT NULL)"
            )

    def _one_column(self, name: str, where: object, cols: list) -> None:
        problem = key_columns_problem(name, cols, self.ws.config.source.profiles.key)
        if problem is not None:
            raise SegmentError(f"{where}: {problem}")

    def _failed(self, name: str, exc: duckdb.Error, sql: str) -> SegmentError:
        """The engine's error with the file line of the SQL line it names, and only its
        class when the message may quote data (:func:`safe_engine_error`); a string limit of
        the guard's checks (:func:`exceeded`) says just that."""
        detail, line = safe_engine_error(exc, sql)
        detail = exceeded(detail) or detail
        at = self.ws.doc("segments", name).text_location(("sql",), line)
        return SegmentError(
            f"{at}: segment {name!r} failed when run: {detail}; fix the SQL and plan again"
        )

    def suppressed_table(self) -> str | None:
        names = self.ws.config.suppression
        if not names:
            return None
        if SUPPRESSED not in self._local:  # made once per session
            parts = " UNION ".join(f"SELECT k FROM {self.local(self.run(n))}" for n in names)
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {SUPPRESSED} AS {parts}")
            self._local.add(SUPPRESSED)
        return SUPPRESSED


def token_line(sql: str, token: str | None) -> int | None:
    """The line of ``sql`` where the name ``token`` is written, when it is on exactly one."""
    if not token:
        return None
    word = re.compile(rf"(?<![\w$]){re.escape(token)}(?![\w$])", re.IGNORECASE)
    lines = [n for n, text in enumerate(sql.split("\n"), 1) if word.search(text)]
    return lines[0] if len(lines) == 1 else None


#: the engine's number types: a key column of one of them has one text per number
_NUMBERS = [
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "FLOAT",
    "DOUBLE",
]


def key_text(column: str, column_type: str, key_type: str) -> str:
    """The text of a segment's key, as the profiles table's key column writes it: a value of
    another type than a number key column (an order table's BIGINT against a DOUBLE key
    loaded through pandas, "007" against an INTEGER key) is read as that column's type first,
    so 1 is the key "1.0" of a DOUBLE column. A value the key's type holds only rounded (1.5
    for an INTEGER key, 1.005 for a DECIMAL(10,2) one) keeps its own text: it is no key
    rather than another profile's."""
    plain = f"CAST({column} AS VARCHAR)"
    number = key_type in _NUMBERS or key_type.startswith("DECIMAL")
    if not number or column_type == key_type:
        return plain
    typed = f"TRY_CAST({column} AS {key_type})"
    return (
        f"CASE WHEN TRY_CAST({typed} AS DOUBLE) = TRY_CAST({column} AS DOUBLE) "
        f"THEN CAST({typed} AS VARCHAR) ELSE {plain} END"
    )
