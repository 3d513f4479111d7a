"""What the PostgreSQL source reads of the server's catalog (:class:`ProfilesCatalog`): the
profiles relation, whether the source's role may read it, and its columns' types.

Through the system catalogs (``pg_class``, ``pg_attribute``, ``pg_type``), not
``information_schema``: ``information_schema.columns`` lists no materialized view (a
dbt-built ``profiles`` often is one) and no column the role holds no privilege on, so both
read as "no such table". Here a table, view, materialized view, partitioned or foreign table
is found whatever the role may do with it, and one it may not read is said so, with the grant.

The types keep ``information_schema.columns``' spelling, which
:mod:`~reconciler.sources.pg_types`, :mod:`~reconciler.sources.pg_twins` and
:mod:`~reconciler.sources.identifier_columns` compare against: ``data_type`` is the same
expression the view computes (``format_type`` of a ``pg_catalog`` type without its modifier:
``character varying``, ``numeric``; ``ARRAY``; ``USER-DEFINED``; a domain as its base type),
and precision and scale come from the very functions the view calls
(``information_schema._pg_numeric_precision`` / ``_pg_numeric_scale``, executable by every
role). tests/test_pg_source.py compares the two on a table of every kind of type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from reconciler.errors import SourceError

if TYPE_CHECKING:
    from reconciler.sources.postgres_source import PostgresProfilesSource

__all__ = ["KINDS", "ProfilesCatalog", "Relation"]

#: the relations that can be the profiles table (``pg_class.relkind``)
KINDS = {
    "r": "table",
    "v": "view",
    "m": "materialized view",
    "p": "partitioned table",
    "f": "foreign table",
}

_RELATION = (
    "SELECT c.oid, c.relkind, quote_ident(current_user), quote_ident(n.nspname), "
    "quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
    "has_schema_privilege(n.oid, 'USAGE'), has_any_column_privilege(c.oid, 'SELECT'), "
    "has_table_privilege(c.oid, 'SELECT') "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ({', '.join(map(repr, KINDS))})"
)

#: a relation's live columns with their type ``t`` and the type ``b`` they are read as: a
#: domain's base type (one level down, as ``information_schema``'s "true type"), else ``t``
_ATTRIBUTES = (
    "FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
    "JOIN pg_catalog.pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype "
    "ELSE t.oid END "
    "JOIN pg_catalog.pg_namespace bn ON bn.oid = b.typnamespace "
    "WHERE a.attnum > 0 AND NOT a.attisdropped "
)
_TYPMOD = "CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END"

_COLUMNS = (
    "SELECT a.attname, CASE WHEN b.typelem <> 0 AND b.typlen = -1 THEN 'ARRAY' "
    "WHEN bn.nspname = 'pg_catalog' THEN format_type(b.oid, NULL) ELSE 'USER-DEFINED' END, "
    f"information_schema._pg_numeric_precision(b.oid, {_TYPMOD}), "
    f"information_schema._pg_numeric_scale(b.oid, {_TYPMOD}) "
    f"{_ATTRIBUTES} AND a.attrelid = %s ORDER BY a.attnum"
)

#: a user-defined column's type: ``composite`` or the type's name (hstore, an enum, citext)
_UDT_NAMES = (
    "SELECT a.attname, CASE WHEN b.typtype = 'c' THEN 'composite' ELSE b.typname END "
    f"{_ATTRIBUTES} AND a.attrelid = %s AND a.attname = ANY(%s)"
)


@dataclass(frozen=True)
class Relation:
    """The profiles relation as the catalog has it, and what the role may do with it."""

    oid: int
    kind: str  # ``pg_class.relkind``: a key of :data:`KINDS`
    role: str  # ``current_user``, quoted for SQL where needed
    schema: str  # quoted for SQL where needed
    name: str  # ``schema.table``, quoted for SQL where needed
    usage: bool  # USAGE on its schema
    some_columns: bool  # SELECT on the table or on some of its columns
    every_column: bool  # SELECT on the table

    @property
    def readable(self) -> bool:
        """Whether the role may read it at all (which columns it may read is PostgreSQL's
        to say when they are read)."""
        return self.usage and self.some_columns


class ProfilesCatalog:
    """The profiles relation of one PostgreSQL source, as the catalog has it."""

    def __init__(self, source: PostgresProfilesSource):
        self.source = source
        #: the profiles relation, as last read (None: not read yet, or there is none)
        self.relation: Relation | None = None

    def _query(self, sql: str, params: list) -> list[tuple]:
        """The rows of one query of the catalog (our own SQL, in a rolled-back transaction)."""
        conn = self.source.connection()
        try:
            with conn.transaction(force_rollback=True), conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        except psycopg.Error as exc:
            raise self.source._lost(exc) from None

    def columns(self) -> dict[str, tuple[str, int | None, int | None]]:
        """The profiles table's columns: name -> (data type, precision, scale), in table
        order; none when there is no such relation; a SourceError naming the grant when the
        role may not read it."""
        source = self.source
        rows = self._query(_RELATION, [source.schema, source.profiles.table])
        self.relation = rel = Relation(*rows[0]) if rows else None
        if rel is None:
            return {}
        if not rel.readable:
            raise SourceError(
                f"{source._where()}: {denied(rel)} (the profiles {KINDS[rel.kind]} of "
                f"{source.describe()})"
            )
        return {r[0]: (r[1], r[2], r[3]) for r in self._query(_COLUMNS, [rel.oid])}

    def identifier_types(
        self, columns: dict[str, tuple[str, int | None, int | None]]
    ) -> dict[str, str]:
        """Each column's data type, a user-defined one named: ``hstore``, ``composite``, or
        its type name (an enum, citext; ``information_schema`` says only ``USER-DEFINED``)."""
        types = {c: t[0] for c, t in columns.items()}
        identifiers = self.source.profiles.identifiers.values()
        wanted = [c for c in identifiers if types.get(c) == "USER-DEFINED"]
        if not wanted or self.relation is None:
            return types
        rows = self._query(_UDT_NAMES, [self.relation.oid, wanted])
        return types | {name: str(kind) for name, kind in rows}

    def missing(self) -> SourceError:
        source = self.source
        return SourceError(
            f"{source._where()}: the source {source.describe()} has no table "
            f"{source.profiles.table!r} (nor any {', '.join(KINDS.values())} of that name); "
            "set `source.profiles.table` (and `source.schema`) to the profiles table"
        )

    def refused(self, exc: psycopg.Error, where: str, what: str) -> SourceError:
        """A read the role has no privilege for (SQLSTATE 42501), though :meth:`columns`
        found the profiles table readable: only some of its columns are (then all of it is
        what to grant), or the SQL reads another table. Raised inside a failed transaction,
        which runs no more queries: what the catalog said is what there is to go on."""
        primary = " ".join((exc.diag.message_primary or "permission denied").split())
        source, rel = self.source, self.relation
        if rel is not None and not rel.every_column:
            return SourceError(
                f"{source._where()}: {denied(rel, primary)} (found by {what} at {where})"
            )
        role = rel.role if rel is not None else source.connection().info.user
        return SourceError(
            f"{where}: {what} failed in {source.describe()}: the role '{role}' may not read "
            f"a table it reads ({primary}); grant it SELECT on that table (GRANT SELECT ON "
            f"<schema>.<table> TO {role}) and USAGE on its schema"
        )


def denied(relation: Relation, detail: str = "permission denied") -> str:
    """Why the role may not read the relation, and the statements that let it."""
    grants = [] if relation.usage else [f"GRANT USAGE ON SCHEMA {relation.schema}"]
    grants.append(f"GRANT SELECT ON {relation.name}")
    return (
        f"the role '{relation.role}' may not read '{relation.name}' ({detail}); a role that "
        "may grant it runs: " + "; ".join(f"{g} TO {relation.role}" for g in grants)
    )
