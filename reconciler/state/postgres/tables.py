"""The PostgreSQL state's tables: the same tables and columns as the embedded state
(:mod:`reconciler.state.schema`), in one schema, plus the ``lock`` row.

Each column has a *kind* that says how its values travel between PostgreSQL and the engine's
DuckDB session (where the diffs run): ``plain`` as text, ``textarr`` (``VARCHAR[]`` ↔
``text[]``) and ``u64arr`` (``UBIGINT[]`` ↔ ``numeric(20)[]``) as JSON arrays, ``nested``
(``VARCHAR[][]``, ragged) and ``map`` (``MAP(VARCHAR, UBIGINT)``) stored as JSON text. Fingerprints are unsigned 64-bit integers,
which PostgreSQL has no type for: ``numeric(20)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Col:
    name: str
    pg: str  # the PostgreSQL type
    duck: str  # the DuckDB type (as in the embedded DDL)
    kind: str = "plain"

    def pg_export(self) -> str:
        """PostgreSQL expression giving the column as text DuckDB can cast back (dates and
        times in ISO form: the connection sets ``DateStyle``, ``PgDatabase.connect``)."""
        if self.kind == "textarr":
            return f"to_json({self.name})::text"
        if self.kind == "u64arr":
            return f"to_json({self.name}::text[])::text"
        return self.name

    def duck_export(self) -> str:
        """DuckDB expression writing the column as PostgreSQL's CSV ``COPY`` reads it (arrays
        as array literals, ragged ones as JSON)."""
        if self.kind == "textarr":
            return _array_literal(self.name, _QUOTED)
        if self.kind == "u64arr":
            return _array_literal(self.name, "coalesce(CAST(x AS VARCHAR), 'NULL')")
        if self.kind in ("nested", "map"):
            return f"CAST(to_json({self.name}) AS VARCHAR)"
        return self.name

    def duck_import(self, column: str) -> str:
        """DuckDB expression turning the exported text ``column`` into the column's type."""
        if self.kind == "textarr":
            return f"CAST(CAST({column} AS JSON) AS VARCHAR[])"
        if self.kind == "u64arr":
            return f"CAST(CAST(CAST({column} AS JSON) AS VARCHAR[]) AS UBIGINT[])"
        if self.kind == "nested":
            return f"CAST(CAST({column} AS JSON) AS VARCHAR[][])"
        if self.kind == "map":
            return f"CAST(CAST({column} AS JSON) AS MAP(VARCHAR, UBIGINT))"
        return f"CAST({column} AS {self.duck})"


#: one text element of a PostgreSQL array literal: quoted, backslashes and quotes escaped
_QUOTED = (
    """CASE WHEN x IS NULL THEN 'NULL' ELSE '"' || replace(replace(x, '\\', '\\\\'), """
    """'"', '\\"') || '"' END"""
)


def _array_literal(column: str, element: str) -> str:
    return (
        f"CASE WHEN {column} IS NULL THEN NULL ELSE '{{' || array_to_string("
        f"list_transform({column}, lambda x: {element}), ',') || '}}' END"
    )


def _c(name: str, pg: str = "text", duck: str = "VARCHAR", kind: str = "plain") -> Col:
    return Col(name, pg, duck, kind)


TS = ("timestamptz", "TIMESTAMPTZ")

TABLES: dict[str, tuple[Col, ...]] = {
    "meta": (_c("k"), _c("v")),
    "activations": (
        _c("id"),
        _c("spec", duck="JSON"),
        _c("spec_digest"),
        _c("serial", "bigint", "BIGINT"),
        _c("status"),
        _c("destination"),
        _c("frequency"),
        _c("paused", "boolean", "BOOLEAN"),
        _c("split_seed"),
        _c("date_created", "date", "DATE"),
        _c("created_at", *TS),
        _c("updated_at", *TS),
        _c("last_run_at", *TS),
        _c("last_success_at", *TS),
        _c("ran", "boolean", "BOOLEAN"),
        _c("error"),
    ),
    "audiences": (
        _c("activation_id"),
        _c("grp"),
        _c("name"),
        _c("resource_id"),
        _c("sent", "boolean", "BOOLEAN"),
        _c("created_at", *TS),
    ),
    "members": (
        _c("activation_id"),
        _c("grp"),
        _c("key"),
        _c("record", "text[]", "VARCHAR[]", "textarr"),
        _c("fp", "numeric(20)", "UBIGINT"),
    ),
    "inflight": (
        _c("batch_id"),
        _c("key"),
        _c("record", "text[]", "VARCHAR[]", "textarr"),
    ),
    "journal": (
        _c("batch_id"),
        _c("run_id"),
        _c("activation_id"),
        _c("grp"),
        _c("op"),
        _c("size", "integer", "INTEGER"),
        _c("status"),
        _c("detail"),
        _c("started_at", *TS),
        _c("finished_at", *TS),
    ),
    "runs": (
        _c("run_id"),
        _c("activation_id"),
        _c("trigger"),
        _c("started_at", *TS),
        _c("finished_at", *TS),
        _c("status"),
        _c("added", "bigint", "BIGINT"),
        _c("removed", "bigint", "BIGINT"),
        _c("updated", "bigint", "BIGINT"),
        _c("failed", "bigint", "BIGINT"),
        _c("audiences", duck="JSON"),
        _c("error"),
    ),
    "jobs": (
        _c("batch_id"),
        _c("run_id"),
        _c("activation_id"),
        _c("grp"),
        _c("op"),
        _c("job"),
        _c("audience_id"),
        _c("keys", "text[]", "VARCHAR[]", "textarr"),
        _c("records", "text", "VARCHAR[][]", "nested"),
        _c("fps", "numeric(20)[]", "UBIGINT[]", "u64arr"),
        _c("submitted_at", *TS),
    ),
    # goal sync_attributes: per-attribute hashes, the map as JSON text
    "member_attributes": (
        _c("activation_id"),
        _c("grp"),
        _c("key"),
        _c("fp", "numeric(20)", "UBIGINT"),
        _c("afp", "text", "MAP(VARCHAR, UBIGINT)", "map"),
    ),
    "rejections": (
        _c("run_id"),
        _c("activation_id"),
        _c("grp"),
        _c("key"),
        _c("op"),
        _c("record", "text[]", "VARCHAR[]", "textarr"),
        _c("reason"),
        _c("rejected_at", *TS),
    ),
}

#: primary keys and indexes (the members index serves the per-activation export and the
#: per-batch delete)
CONSTRAINTS = {
    "meta": "PRIMARY KEY (k)",
    "activations": "PRIMARY KEY (id)",
    "audiences": "PRIMARY KEY (activation_id, grp)",
    "runs": "PRIMARY KEY (run_id)",
    "jobs": "PRIMARY KEY (batch_id)",
}
INDEXES = {
    "members": "(activation_id, grp, key)",
    "journal": "(batch_id)",
    "inflight": "(batch_id)",
    "rejections": "(activation_id, run_id)",
    "member_attributes": "(activation_id, grp, key)",
}

LOCK_DDL = """CREATE TABLE IF NOT EXISTS {s}.lock (
    name text PRIMARY KEY, id text NOT NULL UNIQUE, holder text, host text, pid integer,
    command text, started timestamptz, heartbeat timestamptz, beat_seconds real)"""


def ddl(schema: str) -> list[str]:
    out = [f"CREATE SCHEMA IF NOT EXISTS {schema}"]
    for table, cols in TABLES.items():
        body = ", ".join(f"{c.name} {c.pg}" for c in cols)
        if table in CONSTRAINTS:
            body += ", " + CONSTRAINTS[table]
        out.append(f"CREATE TABLE IF NOT EXISTS {schema}.{table} ({body})")
    for table, cols_sql in INDEXES.items():
        out.append(f"CREATE INDEX IF NOT EXISTS {table}_idx ON {schema}.{table} {cols_sql}")
    out.append(LOCK_DDL.format(s=schema))
    return out
