"""PostgreSQL twins of the engine's membership expressions
(:mod:`reconciler.plan.membership`, :mod:`reconciler.plan.splits`): the same values bit for
bit, so a diff computed in PostgreSQL (:mod:`reconciler.sources.pg_pushdown`) compares with
what the engine recorded. tests/test_pg_pushdown.py proves them equal on awkward values."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql as pgsql

from destinations.identity.phones import MIN_DIGITS
from reconciler.workspace.spec_base import STANDALONE_IDENTIFIERS

#: PostgreSQL types whose text PostgreSQL's cast and the engine's (after the COPY into the
#: engine, :func:`reconciler.sources.pg_types.duck_type`) write differently; every
#: other type is read by the engine either as text or as a type that writes it alike
#: (integers, boolean, date, uuid, numeric with a precision)
_NOT_EQUAL = {
    "real",
    "double precision",
    "character",
    "timestamp without time zone",
    "timestamp with time zone",
    "time without time zone",
    "time with time zone",
    "money",
    "inet",  # CAST(inet AS text) keeps the /32 netmask that its output (COPY) drops
}
U64 = 18446744073709551616

#: how a transaction that reads values for the engine writes them as text, as the engine
#: does (its one parameter: the workspace's zone): timestamptz values and dates in that zone
#: and ISO order, a double's shortest exact text (the default from PostgreSQL 12; a role's
#: own ``extra_float_digits`` would change every double key's text, :mod:`.pg_keys`)
TEXT_SETTINGS = (
    "SELECT set_config('TimeZone', %s, true), set_config('DateStyle', 'ISO, YMD', true), "
    "set_config('extra_float_digits', '1', true)"
)


def text_equal(column: tuple[str, int | None, int | None]) -> bool:
    """Whether a column of this PostgreSQL type has the same text in both databases."""
    data_type, precision, _ = column
    t = data_type.lower()
    # a bounded numeric only: the engine reads an unbounded one (or one over 38 digits) as
    # its text (pg_types.duck_type), not as the DECIMAL whose text matches PostgreSQL's
    if t == "numeric":
        return bool(precision) and (precision or 0) <= 38
    return t not in _NOT_EQUAL


def ident(name: str) -> str:
    return pgsql.Identifier(name).as_string()


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def fingerprint_digest_pg(
    identifier_columns: Sequence[tuple[str, str]],
    attribute_columns: Sequence[str],
    phone_country: str | None,
) -> str | None:
    """PostgreSQL twin of :func:`reconciler.plan.membership.fingerprint_sql`, up to the
    digest: the MD5 (bytea) of the values' UTF-8 bytes joined by chr(31), NULL as chr(0) (a
    byte PostgreSQL text cannot hold, hence bytea); :func:`lo64` makes the fingerprint of
    it. None: nothing to fingerprint (the fingerprint is 0)."""
    terms = []
    for t, col in identifier_columns:
        term = f"CAST(p.{ident(col)} AS text)"
        if t == "phone" and phone_country:
            term = f"{term} || chr(30) || {literal(phone_country.upper())}"
        terms.append(term)
    terms += [f"CAST(p.{ident(c)} AS text)" for c in attribute_columns]
    if not terms:
        return None
    parts = " || '\\x1f'::bytea || ".join(
        f"coalesce(convert_to({t}, 'UTF8'), '\\x00'::bytea)" for t in terms
    )
    return f"decode(md5({parts}), 'hex')"


def lo64(digest: str) -> str:
    """The low 64 bits of an MD5 ``digest`` (a bytea column) read little-endian — DuckDB's
    ``(md5_number(x) >> 64)::UBIGINT`` — as a signed bigint (two's complement). Over a
    column: the digest is computed once per row, not once per byte."""
    return (
        "("
        + " | ".join(f"(get_byte({digest}, {8 + i})::bigint << {8 * i})" for i in range(8))
        + ")"
    )


def unsigned(col: str) -> str:
    """A signed fingerprint as the unsigned number the engine and the state keep."""
    return f"(CASE WHEN {col} < 0 THEN {col}::numeric + {U64} ELSE {col}::numeric END)"


def signed(col: str) -> str:
    """An unsigned fingerprint (numeric(20), as the PostgreSQL state keeps it) as bigint."""
    return f"(CASE WHEN {col} >= {U64 // 2} THEN {col} - {U64} ELSE {col} END)::bigint"


def bucket_digest_pg(seed: str, key: str) -> str:
    """The digest of a key's split bucket (:mod:`reconciler.plan.splits`)."""
    return f"decode(md5({literal(seed)} || ':' || {key}), 'hex')"


def group_label_pg(split: str, control_percent: int | None, bucket: str | None) -> str:
    """PostgreSQL twin of :func:`reconciler.plan.splits.group_sql` over ``bucket``, the
    signed :func:`lo64` of :func:`bucket_digest_pg` (the unsigned value modulo 100)."""
    if split == "none" or bucket is None:
        return "'all'"
    b = (
        f"(CASE WHEN {bucket} >= 0 THEN {bucket} % 100 "
        f"ELSE (({bucket} % 100 + 100) % 100 + {U64 % 100}) % 100 END)"
    )
    if split == "ab":
        return f"CASE WHEN {b} < 50 THEN 'A' ELSE 'B' END"
    return f"CASE WHEN {b} < {int(control_percent or 10)} THEN 'control' ELSE 'experiment' END"


def matchable_pg(identifier_columns: Sequence[tuple[str, str]]) -> str:
    """PostgreSQL twin of :func:`reconciler.plan.membership.matchable_sql` (the same test:
    an ``@`` after the first character, or at least ``MIN_DIGITS`` digits)."""
    tests = []
    for t, col in identifier_columns:
        c = f"p.{ident(col)}"
        if t == "email":
            tests.append(f"(strpos(CAST({c} AS text), '@') > 1)")
        elif t == "phone":
            digits = f"regexp_replace(CAST({c} AS text), '[^0-9]', '', 'g')"
            tests.append(f"(length({digits}) >= {MIN_DIGITS})")
        elif t in STANDALONE_IDENTIFIERS:
            tests.append(f"(trim(CAST({c} AS text)) <> '')")
    return " OR ".join(tests) if tests else "FALSE"


def quiet_sql(mode: str, gone: Sequence[str]) -> str:
    """When a key cannot produce a change (over ``d``: its desired row, ``m``: its recorded
    rows, ``l``: a recorded leaver's exclusion; NULL where absent), by the activation's
    ``mode`` — ``frozen`` (paused, or a one-time activation that ran), ``remove``
    (``action: remove``), ``maintain`` or ``append`` — mirroring
    :func:`reconciler.plan.membership.stage_changes`. Held keys always move."""
    if mode == "frozen":  # only exclusions are applied, to recorded members
        return (
            "NOT (m.key IS NOT NULL AND CASE WHEN d.key IS NOT NULL "
            "THEN d.suppressed OR d.no_consent ELSE l.excluded END)"
        )
    if mode == "remove":
        target = "(d.key IS NOT NULL AND NOT d.unknown AND NOT d.held AND d.matchable)"
        return (
            f"({target} AND m.key IS NOT NULL AND m.n = 1 AND m.fp = d.fp) "
            f"OR (NOT coalesce({target}, FALSE) AND m.key IS NULL)"
        )
    eligible = (
        "(NOT d.unknown AND NOT d.held AND NOT d.suppressed AND NOT d.no_consent AND d.matchable)"
    )
    kept = f"m.grp NOT IN ({', '.join(literal(g) for g in gone)})" if gone else "TRUE"
    unchanged = (
        f"(d.key IS NOT NULL AND m.key IS NOT NULL AND m.n = 1 AND m.grp = d.grp "
        f"AND m.fp = d.fp AND {eligible} AND {kept})"
    )
    quiet = f"{unchanged} OR (m.key IS NULL AND NOT {eligible})"
    if mode == "append":  # a leaver stays in the audience unless an exclusion removes it
        quiet += f" OR (d.key IS NULL AND NOT l.excluded AND {kept})"
    return quiet
