"""The guard for untrusted SQL: segment SQL, integration consent conditions and
``source.freshness_sql`` all arrive in pull requests, and a PR's plan job runs them.

Two layers, both allow-lists:

1. **Shape** (sqlglot): the text must tokenize and parse as exactly one SELECT; errors name
   the line of the SQL.
2. **What it reads and calls** (DuckDB's own parser, ``json_serialize_sql``): every table
   reference must be the profiles table, a table listed under ``source.tables`` or a CTE the
   query itself defines (and is in scope where it is read); every function must be on the
   allow-list of :mod:`reconciler.sources.functions`. Walking the tree DuckDB will execute —
   not a second parser's idea of it — leaves no room for a quote or comment the two parsers
   read differently. Sampling (``USING SAMPLE``, ``TABLESAMPLE``) is refused like
   ``random()``: a plan must not change between runs.

Anything else is refused by name. The SQL returned is what runs: without the ``;`` that may
end it (removed only when DuckDB reads the rest as the same statement), and with each call
that could lengthen a string checked before it runs (:mod:`reconciler.sources.functions`).
The engine adds its own guard underneath (external access disabled, configuration locked)
and :mod:`reconciler.sources.limits` bounds time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from reconciler.sources.functions import (
    ALLOWED_FUNCTIONS,
    MAX_PAD,
    OPERATORS,
    Unbounded,
    arguments,
    bound_lengthening,
    size_allowed,
)

__all__ = ["INTERNAL_PREFIX", "SqlPolicy", "SqlRejected", "check_condition", "check_segment_sql"]

#: catalogs and tables the engine adds next to the source; untrusted SQL may not name them
INTERNAL_PREFIX = "__reconcile"

DOCS = "docs/segment-sql.md"

#: schemas, catalogs and name prefixes describing the engine itself
_METADATA_SCHEMAS = {"information_schema", "pg_catalog", "system", "temp"}
_METADATA_PREFIXES = ("duckdb_", "pragma_", "sqlite_", "pg_", "information_schema")

#: a table "name" DuckDB would read as a file or URL (``FROM '/etc/passwd'``, ``"x.csv"``)
_FILE_LIKE = re.compile(
    r"[/\\:]|\.(csv|tsv|txt|json|jsonl|ndjson|parquet|arrow|xlsx|db|duckdb|sqlite|gz|zst)$",
    re.IGNORECASE,
)

_QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
_TABLE_REFS = {"BASE_TABLE", "JOIN", "SUBQUERY", "EXPRESSION_LIST", "EMPTY", "PIVOT"}
_NO_LOCATION = 2**64 - 1


class SqlRejected(Exception):
    """SQL the guard refuses; the caller adds the file. ``line`` is the line within the SQL,
    when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class SqlPolicy:
    """What untrusted SQL may read: the profiles table and the declared tables (``name`` or
    ``schema.name``), in the source catalog. Built by :func:`reconciler.sources.sql_policy`."""

    profiles_table: str = "profiles"
    tables: tuple[str, ...] = ()
    catalog: str = "source"
    schema: str = "main"  # the schema unqualified names resolve to

    def readable(self) -> list[str]:
        return [self.profiles_table, *self.tables]

    def allows(self, catalog: str, schema: str, name: str) -> bool:
        if catalog and catalog.lower() != self.catalog.lower():
            return False
        for entry in self.readable():
            want_schema, _, want_name = entry.lower().rpartition(".")
            if name.lower() != want_name:
                continue
            if want_schema and schema.lower() == want_schema:
                return True
            if not want_schema and schema.lower() in ("", self.schema.lower()):
                return True
        return False


def check_segment_sql(sql: str, dialect: str, *, policy: SqlPolicy | None = None) -> str:
    """The SQL to run if ``sql`` is exactly one SELECT that reads only what ``policy`` allows
    and calls only allowed functions, else :class:`SqlRejected` saying why (no policy: only a
    table named ``profiles`` is readable). For DuckDB: ``sql`` without a final ``;``, its
    calls that lengthen strings checked; for PostgreSQL: regenerated from the checked tree
    (:mod:`reconciler.sources.pg_guard`). Embed it as ``(sql\n)``, ending any ``--`` comment."""
    return _checked(sql, dialect, policy)[0]


def _checked(sql: str, dialect: str, policy: SqlPolicy | None) -> tuple[str, list[str]]:
    """The SQL to run and the functions whose calls in it were bounded."""
    query = _check_shape(sql, dialect)
    policy = policy or SqlPolicy()
    if dialect == "postgres":
        from reconciler.sources.pg_guard import Rejected, check_postgres_tree

        try:
            return check_postgres_tree(query, policy.readable(), policy.schema), []
        except Rejected as exc:
            raise SqlRejected(str(exc)) from exc
    statement = _duckdb_tree(sql)
    sql = _without_final_semicolon(sql, statement)
    _Walker(sql, policy).check(statement)
    try:
        return bound_lengthening(sql, statement, _serialize, _render)
    except Unbounded as exc:
        why = f"the call of {exc} that can lengthen a string could not be given its limit here"
        raise SqlRejected(f"{why}; write it differently; see {DOCS}") from exc


def check_condition(condition: str, dialect: str, policy: SqlPolicy | None = None) -> str:
    """Check a boolean condition over the profiles row (an integration's ``consent``) and
    return it. Its parentheses must balance, so it cannot close the query it is embedded in."""
    depth = 0
    try:
        tokens = sqlglot.tokenize(condition, read=dialect)
    except TokenError as exc:
        raise SqlRejected(f"the condition does not parse: {_token_problem(condition)}") from exc
    for tok in tokens:
        depth += {"L_PAREN": 1, "R_PAREN": -1}.get(tok.token_type.name, 0)
        if depth < 0:
            raise SqlRejected("the condition closes a parenthesis it did not open")
    if depth:
        raise SqlRejected("the condition leaves a parenthesis open")
    table = (policy or SqlPolicy()).profiles_table
    _, bounded = _checked(f"SELECT 1 FROM {table} WHERE (\n{condition}\n)", dialect, policy)
    if bounded:  # the condition runs as written, where no bound could be added
        raise SqlRejected(
            f"{' and '.join(bounded)} may not lengthen a string in a condition: a replacement "
            f"longer than what it replaces is not allowed there; see {DOCS}"
        )
    return condition


# ------------------------------------------------------------------------------ shape
def _check_shape(sql: str, dialect: str) -> exp.Query:
    quiet = logging.getLogger("sqlglot")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "falling back to parsing as a Command": rejected below
    try:
        # a comment after the final ';' is a Semicolon "statement" of its own to sqlglot
        parsed = sqlglot.parse(sql, read=dialect)
        statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" (SQL line {first.get('line')}, column {first.get('col')})" if first else ""
        # sqlglot may describe the construct by its own class (<class 'sqlglot...Secret'>)
        said = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", str(first.get("description", exc)))
        raise SqlRejected(f"SQL does not parse{where}: {said}", first.get("line")) from exc
    except TokenError as exc:  # an unterminated quote or comment
        problem, line = _token_problem(sql), _duckdb_error_line(sql)
        where = f" (SQL line {line})" if line else ""
        raise SqlRejected(f"SQL does not parse{where}: {problem}", line) from exc
    finally:
        quiet.setLevel(level)
    if len(statements) != 1:
        raise SqlRejected(f"expected one SELECT statement, found {len(statements)} statements")
    query = statements[0]
    if not isinstance(query, exp.Query):
        found = query.key.upper()
        if isinstance(query, exp.Command):  # VACUUM, EXPLAIN, CALL, LOAD, ...: say which
            found = str(query.this or found).upper()
        elif not isinstance(query, exp.DDL | exp.DML | exp.Set | exp.Pragma):
            # a bare word sqlglot reads as an expression (CHECKPOINT is a COLUMN to it)
            found = (sql.split() or ["nothing"])[0].upper()
        raise SqlRejected(f"only a SELECT is allowed, found {found}; segments never change data")
    for node in query.walk():
        # a DELETE/INSERT/UPDATE inside a CTE (`WITH x AS (DELETE ... RETURNING ...)`) too
        if isinstance(node, exp.Command | exp.Pragma | exp.Set | exp.Into | exp.DML | exp.DDL):
            raise SqlRejected(f"{node.key.upper()} is not allowed in segment SQL")
    return query


def _token_problem(sql: str) -> str:
    """What DuckDB's parser says about text sqlglot could not tokenize (it names the
    construct, e.g. an unterminated quoted string)."""
    tree = _serialize(sql)
    if tree.get("error"):
        return str(tree.get("error_message") or "it cannot be read").splitlines()[0]
    return "it cannot be read (an unterminated quote or comment?)"


def _without_final_semicolon(sql: str, statement: dict) -> str:
    """``sql`` without the ``;`` ending its one statement, found by DuckDB's own tokenizer (a
    ``;`` in a string or a comment is not a token) and removed only when DuckDB reads the rest
    as the same statement; a second ``;`` after it is refused."""
    data = sql.encode()
    ends = [pos for pos, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment]
    if not ends or data[ends[-1] : ends[-1] + 1] != b";":
        return sql
    if len(ends) > 1 and data[ends[-2] : ends[-2] + 1] == b";":
        raise SqlRejected("expected one SELECT statement, ended by one ';' at most")
    stripped = (data[: ends[-1]] + data[ends[-1] + 1 :]).decode()
    if (_serialize(stripped).get("statements") or [None])[0] != statement:
        raise SqlRejected("the ';' ending the SQL cannot be removed safely; remove it")
    return stripped


def _duckdb_error_line(sql: str) -> int | None:
    tree = _serialize(sql)
    try:
        return _line_at(sql, int(tree["position"]))
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------ DuckDB's tree
#: the parser's own DuckDB instance, opened once per process (opening one per statement
#: cost ~20 ms CPU, twice per plan); it only ever runs json_(de)serialize_sql on a parameter
_PARSER: tuple[int, duckdb.DuckDBPyConnection] | None = None
_PARSER_LOCK = threading.Lock()


def _on_parser(query: str, parameter: str) -> str:
    global _PARSER
    with _PARSER_LOCK:
        if _PARSER is None or _PARSER[0] != os.getpid():  # not a forked parent's
            con = duckdb.connect(":memory:", config={"enable_external_access": "false"})
            _PARSER = (os.getpid(), con)
        return str(_PARSER[1].execute(query, [parameter]).fetchall()[0][0])


def _serialize(sql: str) -> dict:
    try:
        return json.loads(_on_parser("SELECT json_serialize_sql(?)", sql))
    except duckdb.Error as exc:
        return {"error": True, "error_message": str(exc)}


def _render(tree: dict) -> str | None:
    """The SQL text of a parse tree (``json_deserialize_sql``), None if it has none."""
    try:
        return _on_parser("SELECT json_deserialize_sql(?::JSON)", json.dumps(tree))
    except duckdb.Error:
        return None


def statement_tree(sql: str) -> dict | None:
    """DuckDB's parse tree of ``sql`` (``json_serialize_sql``) when it is one statement."""
    statements = _serialize(sql).get("statements") or []
    return statements[0] if len(statements) == 1 else None


def _duckdb_tree(sql: str) -> dict:
    tree = _serialize(sql)
    if tree.get("error"):
        message = str(tree.get("error_message") or "it cannot be read").splitlines()[0]
        try:
            line = _line_at(sql, int(tree["position"]))
        except (KeyError, TypeError, ValueError):
            line = None
        where = f" (SQL line {line})" if line else ""
        raise SqlRejected(f"SQL does not parse{where}: {message}", line)
    statements = tree.get("statements") or []
    if len(statements) != 1:
        raise SqlRejected(f"expected one SELECT statement, found {len(statements)} statements")
    return statements[0]


def _line_at(sql: str, offset: int) -> int | None:
    if offset < 0 or offset == _NO_LOCATION:
        return None
    return sql.encode()[:offset].count(b"\n") + 1


class _Walker:
    def __init__(self, sql: str, policy: SqlPolicy):
        self.sql, self.policy = sql, policy

    def check(self, statement: dict) -> None:
        self._walk(statement, frozenset())

    def _reject(self, message: str, node: dict) -> SqlRejected:
        loc = node.get("query_location")
        line = _line_at(self.sql, loc) if isinstance(loc, int) else None
        return SqlRejected(message, line)

    def _walk(self, node: object, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        self._check_node(node, ctes)
        visible = set(ctes)
        for entry in (node.get("cte_map") or {}).get("map") or []:
            name = str(entry.get("key", "")).lower()
            value = entry.get("value") or {}
            query = value.get("query_node") or value.get("query") or {}
            query = query.get("node", query) if isinstance(query, dict) else {}
            recursive = (
                query.get("type") == "RECURSIVE_CTE_NODE"
                and str(query.get("cte_name", "")).lower() == name
            )
            self._walk(value, frozenset(visible | {name} if recursive else visible))
            visible.add(name)
        inner = frozenset(visible)
        for key, value in node.items():
            if key != "cte_map":
                self._walk(value, inner)

    def _check_node(self, node: dict, ctes: frozenset[str]) -> None:
        kind = node.get("type")
        if node.get("sample") is not None:  # USING SAMPLE / TABLESAMPLE, of a query or a table
            raise self._reject(
                "USING SAMPLE and TABLESAMPLE are not allowed in segment SQL: a sample picks "
                f"other rows on every run, and a plan must not change between runs; see {DOCS}",
                node,
            )
        if "class" not in node and isinstance(kind, str) and kind.endswith("_NODE"):
            if kind not in _QUERY_NODES:
                raise self._reject(f"{kind.removesuffix('_NODE')} is not allowed", node)
        elif "class" not in node and "sample" in node and "alias" in node:
            self._check_table_ref(node, ctes)
        if "function_name" in node:
            self._check_function(node)

    def _check_table_ref(self, ref: dict, ctes: frozenset[str]) -> None:
        kind = ref.get("type")
        if kind == "TABLE_FUNCTION":
            fn = (ref.get("function") or {}).get("function_name", "?")
            raise self._reject(
                f"table functions are not allowed in segment SQL (found {fn!r}); read tables "
                "of the source only",
                ref,
            )
        if kind not in _TABLE_REFS:
            what = {"SHOW_REF": "DESCRIBE, SHOW and SUMMARIZE are"}.get(str(kind), f"{kind} is")
            raise self._reject(f"{what} not allowed in segment SQL", ref)
        if kind != "BASE_TABLE":
            return
        catalog = str(ref.get("catalog_name") or "")
        schema = str(ref.get("schema_name") or "")
        name = str(ref.get("table_name") or "")
        full = ".".join(p for p in (catalog, schema, name) if p)
        for part in (catalog, schema, name):
            if part.lower().startswith(INTERNAL_PREFIX):
                raise self._reject(f"segment SQL may not read the engine's {part!r} tables", ref)
        if not catalog and not schema and name.lower() in ctes:
            return
        metadata = (
            catalog.lower() in _METADATA_SCHEMAS
            or schema.lower() in _METADATA_SCHEMAS
            or name.lower().startswith(_METADATA_PREFIXES)
        )
        # the engine's own views stay refused when `source.tables` lists them (it lets a
        # pull request's SQL count the state's tables); the profiles table is the user's
        if self.policy.allows(catalog, schema, name) and (
            not metadata or full.lower() == self.policy.profiles_table.lower()
        ):
            return
        if _FILE_LIKE.search(name):
            raise self._reject(
                f"reading files is not allowed in segment SQL (found {name!r}); read tables "
                "of the source only",
                ref,
            )
        if metadata:
            raise self._reject(
                f"segment SQL may not read the engine's metadata ({full!r}); read tables of "
                "the source only",
                ref,
            )
        declared = ", ".join(repr(t) for t in self.policy.tables) or "none"
        raise self._reject(
            f"table {full!r} is not allowed in segment SQL; it may read the profiles table "
            f"{self.policy.profiles_table!r}, the tables listed under `source.tables` "
            f"({declared}) and CTEs the query defines",
            ref,
        )

    def _check_function(self, node: dict) -> None:
        name = str(node["function_name"]).lower()
        qualifier = ".".join(p for p in (node.get("catalog"), node.get("schema")) if p)
        if qualifier:
            raise self._reject(
                f"function {qualifier}.{name} is not allowed in segment SQL: call functions "
                f"by their plain name; allowed: see {DOCS}",
                node,
            )
        if name not in ALLOWED_FUNCTIONS and name not in OPERATORS:
            raise self._reject(
                f"function {name} is not allowed in segment SQL; allowed: see {DOCS}", node
            )
        if not size_allowed(name, arguments(node)):
            raise self._reject(
                f"function {name} needs a literal length of at most {MAX_PAD} in segment "
                f"SQL (a larger or computed length can exhaust memory); see {DOCS}",
                node,
            )


def key_columns_problem(name: str, cols: list, key: str) -> str | None:
    """What is wrong with the columns a segment's query returns (``(name, type, ...)`` rows
    of DESCRIBE), or None: it must return one column, the profile key, as a single value —
    no key can equal a list or a record, so the audience would be empty without a word."""
    if len(cols) != 1:
        return (
            f"segment {name!r} must return exactly one column (the profile key), it returns "
            f"{len(cols)}: {[c[0] for c in cols]}; select only {key}"
        )
    kind = str(cols[0][1]).upper()
    if "[" in kind or kind.startswith(("STRUCT", "MAP", "UNION", "ARRAY", "RECORD")):
        return (
            f"segment {name!r} returns {cols[0][0]!r} of type {cols[0][1]}, not a profile key; "
            f"select {key} itself (unnest a list of keys)"
        )
    return None
