"""Identifier columns must hold text (or numbers, dates, UUIDs): their values are
normalised and hashed from their text. A JSON value's text keeps its quotes, a list's its
brackets and a BLOB's its escapes, so their hashes would never match at any platform. Such a
column is refused by name before anything is planned, with the way out (a view that extracts
the value).

A phone or external id column of single precision (DuckDB ``FLOAT``/``REAL``/``FLOAT4``,
PostgreSQL ``real``) is refused too: it holds about 7 significant digits, so every phone number
in it is already rounded (61412345678 is stored as 6.141234e10) and would be sent as another
number. A DOUBLE (15+ digits) holds one exactly; its ``.0`` is dropped by the identity rules.
So is a key column of single precision (:func:`check_key_column`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconciler.errors import Location, SourceError
from reconciler.workspace.spec import ProfilesTable

__all__ = ["POSTGRES_NOT_TEXT_UDT", "check_identifier_columns", "check_key_column"]

#: DuckDB types whose text is not the value (upper case; nested types are matched by shape)
_DUCKDB = frozenset({"JSON", "BLOB", "BYTEA", "BIT", "BITSTRING", "VARBINARY"})
_DUCKDB_NESTED = ("STRUCT", "MAP")  # a UNION's text is its value's
#: PostgreSQL ``information_schema.columns.data_type`` values of the same kind, and the
#: user-defined types (``USER-DEFINED``, named by ``pg_type``) whose text is not the value: a
#: composite's ``(a,b)``, an hstore's ``"k"=>"v"`` (an enum or citext is its text)
_POSTGRES = frozenset({"json", "jsonb", "bytea", "ARRAY", "bit", "bit varying", "xml", "tsvector"})
POSTGRES_NOT_TEXT_UDT = frozenset({"hstore", "composite"})
#: single precision (as each engine names it): too few digits for a phone number or a key
_SINGLE = {"duckdb": "FLOAT", "postgres": "real"}
#: the identifiers a single-precision column rounds into another value (and what they are)
_ROUNDED = {
    "phone": "a phone number",
    "external_id": "an id above 16,777,216 exactly",
}


def _not_text(data_type: str, dialect: str) -> bool:
    if dialect == "postgres":
        return data_type in _POSTGRES or data_type in POSTGRES_NOT_TEXT_UDT
    t = data_type.strip().upper()
    return t in _DUCKDB or t.endswith("]") or t.startswith(_DUCKDB_NESTED)


def check_identifier_columns(
    profiles: ProfilesTable,
    types: Mapping[str, str],
    locate: Callable[..., Location],
    dialect: str,
) -> None:
    """Raise a :class:`SourceError` naming ``source.profiles.identifiers.<type>`` for the
    first identifier column (``types``: column -> data type) that does not hold text, or a
    phone or external id column of single precision."""
    for kind, column in profiles.identifiers.items():
        data_type = types.get(column)
        if kind in _ROUNDED and data_type == _SINGLE.get(dialect):
            where = locate("source", "profiles", "identifiers", kind)
            raise SourceError(
                f"{where}: column {column!r} of table {profiles.table!r} is REAL (about 7 "
                f"significant digits), which cannot hold {_ROUNDED[kind]}: every number in it "
                "is already rounded; store them as text (VARCHAR)",
                where,
            )
        if data_type is None or not _not_text(data_type, dialect):
            continue
        where = locate("source", "profiles", "identifiers", kind)
        raise SourceError(
            f"{where}: the {kind} identifier column {column!r} is of type {data_type}, whose "
            "text is not the value (a JSON string keeps its quotes, a list its brackets), so "
            "no platform would match its hashes; point it at a text column, e.g. a view "
            f"that extracts the value{_extract_hint(column, data_type)}",
            where,
        )


def _extract_hint(column: str, data_type: str) -> str:
    """How a view would take the text out of ``column`` of ``data_type``, where one way is
    plain (a JSON value, a list's first element, a struct's field, a blob's UTF-8 text)."""
    t = data_type.upper()
    if t in ("JSON", "JSONB"):
        return f" ({column} ->> '$')"
    if t.endswith("[]") or t.startswith("ARRAY") or t.startswith("LIST"):
        return f" ({column}[1])"
    if t.startswith("STRUCT"):
        return f" ({column}.<field>)"
    if t in ("BLOB", "BYTEA"):
        return f" (decode({column}) in DuckDB, convert_from({column}, 'UTF8') in PostgreSQL)"
    return ""


def check_key_column(
    profiles: ProfilesTable,
    data_type: str | None,
    locate: Callable[..., Location],
    dialect: str,
) -> None:
    """Raise a :class:`SourceError` naming ``source.profiles.key`` when the key column (of
    type ``data_type``) is of single precision (DuckDB ``FLOAT``, PostgreSQL ``real``)."""
    if data_type != _SINGLE.get(dialect):
        return
    where = locate("source", "profiles", "key")
    name, table = profiles.key, profiles.table
    raise SourceError(
        f"{where}: the key column {name!r} of table {table!r} is REAL (about 7 significant "
        "digits): keys above 16,777,216 are already rounded in it, so two profiles can share "
        "one and a segment's key can miss its profile; use an integer, numeric or text key "
        f"column (e.g. a view over {table!r} that casts it: CAST({name} AS BIGINT))",
        where,
    )
