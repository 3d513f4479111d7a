"""The SQL terms of a planning session over ``p`` (a row of the profiles table): the
consent condition (checked by the SQL guard), the fingerprint of what is sent for a profile
and the estimate of whether it can be matched; and SQL quoting."""

from __future__ import annotations

import re
from collections.abc import Sequence

import duckdb

from destinations.identity.phones import MIN_DIGITS
from destinations.identity.types import TYPES
from reconciler.errors import SegmentError
from reconciler.sources.base import SqlRejected
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.guard import SqlPolicy, check_condition
from reconciler.workspace.spec import Integration, ProfilesTable
from reconciler.workspace.spec_base import STANDALONE_IDENTIFIERS


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def consent_sql(
    integ: Integration,
    integ_where: str,
    dialect: str,
    con: duckdb.DuckDBPyConnection | None = None,
    profiles: ProfilesTable | None = None,
    policy: SqlPolicy | None = None,
) -> str:
    """The consent condition as SQL over ``p`` (the profiles row), checked by the SQL guard
    like segment SQL. With ``con``, it is also bound once against the profiles table, so a
    wrong column names the integration file. Embedded on lines of its own, so a trailing
    ``--`` comment cannot swallow the rest of the query."""
    if not integ.consent:
        return "TRUE"
    try:
        check_condition(integ.consent, dialect, policy)
    except SqlRejected as exc:
        raise SegmentError(f"{integ_where}: consent condition: {exc}") from exc
    condition = f"(\n{integ.consent}\n)"
    if con is not None and profiles is not None:
        try:
            con.execute(
                f"SELECT NOT coalesce({condition}, FALSE) FROM {_ident(profiles.table)} p LIMIT 0"
            )
        except duckdb.Error as exc:
            detail = _clean_text(safe_engine_error(exc, integ.consent)[0])
            raise SegmentError(
                f"{integ_where}: the consent condition fails: {detail}; it must be a true/false "
                "condition over the columns of the profiles table"
            ) from exc
    return condition


def source_consent(
    source: object,
    integ: Integration,
    name: str,
    where: str,
    policy: SqlPolicy | None,
    con: duckdb.DuckDBPyConnection | None = None,
    profiles: ProfilesTable | None = None,
) -> str:
    """Integration ``name``'s consent condition as SQL over ``p`` (:func:`consent_sql`, bound
    against the profiles table when ``con`` is given); a source that evaluated it itself
    (PostgreSQL, at attach) names the column holding the result instead."""
    evaluated = getattr(source, "consent_expression", None)
    if evaluated is not None:
        return str(evaluated(name))
    dialect = str(getattr(source, "dialect", "duckdb"))
    return consent_sql(integ, where, dialect, con, profiles, policy)


def identifier_columns(
    profiles: ProfilesTable, identifier_types: Sequence[str]
) -> list[tuple[str, str]]:
    """(type, column) of each identifier type the profiles table has a column for, in the
    destination's order: what the fingerprint and the match estimate read (here and in their
    PostgreSQL twins, :mod:`reconciler.sources.pg_twins`). A type read from another one's
    column where a member has no value (``first_initial`` from ``first_name``) brings that
    column too, last: a changed first name changes the initial sent."""
    out = [(t, profiles.identifiers[t]) for t in identifier_types if t in profiles.identifiers]
    for t in identifier_types:
        fallback = TYPES[t].fallback if t in TYPES else None
        if fallback and fallback not in identifier_types and fallback in profiles.identifiers:
            out.append((fallback, profiles.identifiers[fallback]))
    return out


def fingerprint_sql(
    profiles: ProfilesTable,
    identifier_types: tuple[str, ...],
    attribute_columns: list[str],
    phone_country: str | None = None,
) -> str:
    """A cheap fingerprint of what is sent for a profile: its identifiers and mapped
    attributes; a phone is fingerprinted with the default country it is read in, so changing
    ``default_phone_country`` re-sends exactly the members whose phone hash may change."""
    terms = []
    for t, col in identifier_columns(profiles, identifier_types):
        term = f"CAST(p.{_ident(col)} AS VARCHAR)"
        if t == "phone" and phone_country:
            term = f"{term} || chr(30) || {_lit(phone_country.upper())}"
        terms.append(term)
    terms += [f"CAST(p.{_ident(c)} AS VARCHAR)" for c in attribute_columns]
    parts = ", ".join(f"coalesce({t}, chr(0))" for t in terms)
    # (md5_number(x) >> 64)::UBIGINT is md5_number_lower(x), four times faster
    digest = f"(md5_number(concat_ws(chr(31), {parts})) >> 64)::UBIGINT"
    return digest if terms else "0::UBIGINT"


def matchable_sql(profiles: ProfilesTable, identifier_types: tuple[str, ...]) -> str:
    """A cheap estimate of 'has an identifier the destination accepts'; the adapter's exact
    normalisation decides at send time (unusable members are recorded with an empty record)."""
    tests = []
    for t, col in identifier_columns(profiles, identifier_types):
        c = f"p.{_ident(col)}"
        if t == "email":
            tests.append(f"(strpos(CAST({c} AS VARCHAR), '@') > 1)")
        elif t == "phone":
            # at least MIN_DIGITS digits (no phone with fewer normalises): one regexp
            # search, 4-5x cheaper than counting them
            tests.append(
                f"regexp_matches(CAST({c} AS VARCHAR), '(?:[^0-9]*[0-9]){{{MIN_DIGITS}}}')"
            )
        elif t in STANDALONE_IDENTIFIERS:  # an id that matches a person by itself
            tests.append(f"(trim(CAST({c} AS VARCHAR)) <> '')")
    return " OR ".join(tests) if tests else "FALSE"


def undeclared_identifiers(config: object, profiles: ProfilesTable) -> list[str]:
    """A warning for the identifier types the integration lists (``config.identifiers``)
    that the profiles table does not declare: nothing is sent (or exported) for them, and
    an export has no column for them."""
    listed = config.get("identifiers") if isinstance(config, dict) else None
    if not isinstance(listed, list):
        return []
    declared = profiles.identifiers
    missing = [
        t
        for t in listed
        if isinstance(t, str)
        and t not in declared
        and getattr(TYPES.get(t), "fallback", None) not in declared
    ]
    if not missing:
        return []
    return [
        f"the integration's config.identifiers lists {', '.join(map(repr, missing))}, which "
        "the profiles table does not declare (source.profiles.identifiers in reconcile.yaml): "
        "nothing is sent or written for them"
    ]
