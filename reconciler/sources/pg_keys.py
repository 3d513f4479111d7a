"""The text of a profile key in a PostgreSQL source whose key column is a number
(``source.profiles.key`` of an integer type, ``numeric``, ``numeric(p,s)`` or ``double
precision``).

Keys are compared, and recorded in the state, as text. A number's text depends on its type
and on who writes it: the profile ``1`` of a ``numeric`` key is ``1`` or ``1.0`` depending on
how it was stored, a segment returning ``customer_id::numeric(10,2)`` writes ``1.00``, and the
engine writes a ``double precision`` 1 as ``1.0`` where PostgreSQL writes ``1``. So a segment's
keys are read back as the key column's own type before they become text, in PostgreSQL,
whichever path then compares them (the diff in PostgreSQL, :mod:`reconciler.sources.pg_pushdown`,
or in the engine after a COPY): one canonical text per key value everywhere.

The canonical text keeps what the state already holds: an integer's digits (``42``); a
``numeric(p,s)``'s text with exactly ``s`` decimals (``1.50``, as both PostgreSQL and the
engine's DECIMAL write it); an unbounded ``numeric`` without trailing zeros (``1``, ``1.5``:
its stored scale is not part of the value); a ``double precision``'s shortest exact text
(PostgreSQL's, ``extra_float_digits`` 1: :data:`.pg_twins.TEXT_SETTINGS`). A segment value
that is not a number of that type (``1.5`` for an integer key, ``1.005`` for a
``numeric(10,2)`` one, a text like ``abc``) keeps its own text, which is no key's: it is never
rounded into another profile's key.

A ``real`` key is refused: with about 7 significant digits, keys above 16,777,216 are already
rounded in the column, so two customers can share one.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.errors import Location
from reconciler.sources.identifier_columns import check_key_column
from reconciler.sources.pg_twins import ident, text_equal
from reconciler.workspace.spec import ProfilesTable

#: a number's text as PostgreSQL casts it to ``numeric`` (no whitespace, no NaN/Infinity;
#: an exponent of at most 3 digits: it parses and cannot overflow; ``[.]``, no backslash,
#: whatever ``standard_conforming_strings`` says)
_NUMBER = r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]{1,3})?$"
#: the same for ``double precision``: at most 2 exponent digits and (below) 200 characters,
#: so the parse never overflows nor underflows
_FLOAT = r"^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]{1,2})?$"
_INTEGERS = frozenset({"smallint", "integer", "bigint"})

Column = tuple[str, int | None, int | None]  # PostgreSQL data type, precision, scale


def kind(column: Column) -> str:
    """How a key column's values become text: ``integer``, ``numeric`` (unbounded),
    ``scaled`` (``numeric(p,s)``), ``float``, ``real`` (refused) or ``text`` (its own text,
    any other type)."""
    data_type, precision, _ = column
    t = data_type.lower()
    if t in _INTEGERS:
        return "integer"
    if t == "numeric":
        return "scaled" if precision else "numeric"
    return {"double precision": "float", "real": "real"}.get(t, "text")


def checked_key(
    columns: dict[str, Column], profiles: ProfilesTable, locate: Callable[..., Location]
) -> Column:
    """The key column's type; a ``real`` one is refused, naming ``source.profiles.key``."""
    column = columns[profiles.key]
    check_key_column(profiles, column[0], locate, "postgres")
    return column


def same_text(column: Column) -> bool:
    """Whether the profile key's text is the same in PostgreSQL and in the engine: its type
    writes alike in both (:func:`~reconciler.sources.pg_twins.text_equal`), or the text is
    made in PostgreSQL (:func:`key_select`) — so the diff may run in PostgreSQL."""
    return text_equal(column) or kind(column) in ("numeric", "float")


def key_select(name: str, column: Column) -> str | None:
    """The profile key ``p.<name>`` as the select item that travels into the engine (as
    VARCHAR) when its text is made in PostgreSQL: a ``char(n)`` without its padding (segment
    keys are text in PostgreSQL, which drops it; COPY would keep it), a number's canonical
    text. None: the column travels as it is (the engine writes its text alike)."""
    if column[0] != "character" and kind(column) not in ("numeric", "float"):
        return None
    return f"{profile_key_sql(name, column)} AS {ident(name)}"


def profile_key_sql(name: str, column: Column) -> str:
    """The canonical text of the profile key ``p.<name>`` (PostgreSQL SQL)."""
    col = f"p.{ident(name)}"
    if kind(column) == "numeric":
        return _trimmed(f"CAST({col} AS numeric)")
    return f"CAST({col} AS text)"


def segment_key_sql(expr: str, column: Column | None) -> str:
    """The canonical text of a segment's key ``expr`` for a key column of type ``column``
    (None: unknown, as text): read as that type when it is a number of it, else its text."""
    t = f"CAST({expr} AS text)"
    k = kind(column) if column is not None else "text"
    if k in ("text", "real"):
        return t
    if k == "float":
        return (
            f"CASE WHEN {t} ~ '{_FLOAT}' AND length({t}) <= 200 "
            f"THEN CAST(CAST({t} AS double precision) AS text) ELSE {t} END"
        )
    n = f"CAST({t} AS numeric)"
    if k == "scaled":
        s = int((column or ("", None, 0))[2] or 0)
        exact = f"CASE WHEN round({n}, {s}) = {n} THEN CAST(round({n}, {s}) AS text) ELSE {t} END"
    else:  # integer or unbounded numeric: an integer's digits, else no trailing zeros
        exact = _trimmed(n)
    return f"CASE WHEN {t} ~ '{_NUMBER}' THEN {exact} ELSE {t} END"


def _trimmed(n: str) -> str:
    """The text of a numeric ``n`` without trailing zeros: ``1.50`` is ``1.5``, ``2.0``
    is ``2`` (``trim_scale``, which PostgreSQL has only from version 13)."""
    return (
        f"CASE WHEN {n} = trunc({n}) THEN CAST(trunc({n}) AS text) "
        f"ELSE rtrim(CAST({n} AS text), '0') END"
    )
