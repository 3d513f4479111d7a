"""Which members to add or update have no identifier the destination takes, exactly.

The diff decides who is *matchable* by a cheap estimate (an e-mail with an ``@``, a phone
with seven digits: :func:`reconciler.plan.terms.matchable_sql`), so that a plan over millions
of profiles does not normalise every identifier. The destination's own rules decide at send
time: a member none of whose identifiers survives them (``bob@localhost``, ``a@b@c.com``) is
recorded with an empty record and not sent. So that the plan says so rather than promising
them, the staged additions and updates are checked by those exact rules (the same SQL the
send uses, :func:`destinations.identity.sql.records_sql`) when there are at most
:data:`EXACT_LIMIT` of them: a daily plan's churn always, a first plan of a large audience
not (its cost would be the send's own).
"""

from __future__ import annotations

import duckdb

from destinations.base import Identity
from destinations.identity.sql import records_sql
from reconciler.enginedb import STAGING
from reconciler.plan.terms import _ident, _lit
from reconciler.workspace.spec import ProfilesTable

#: staged additions and updates checked exactly at most (above: the plan says it did not)
EXACT_LIMIT = 250_000


def unsendable(
    con: duckdb.DuckDBPyConnection,
    *,
    activation_id: str,
    identity: Identity,
    profiles: ProfilesTable,
) -> tuple[int, int | None]:
    """(staged additions and updates, how many of them have no usable identifier — None
    when there are more than :data:`EXACT_LIMIT` to check)."""
    aid = _lit(activation_id)
    changes = (
        f"(SELECT DISTINCT key FROM {STAGING}.changes "
        f"WHERE activation_id = {aid} AND op IN ('add', 'update'))"
    )
    (staged,) = con.execute(f"SELECT count(*) FROM {changes}").fetchall()[0]
    if not staged or staged > EXACT_LIMIT:
        return staged, (0 if not staged else None)
    columns = {t: f"p.{_ident(col)}" for t, col in profiles.identifiers.items()}
    rec = records_sql(identity.accepted, identity.rules, columns, profiles.default_phone_country)
    key = f"CAST(p.{_ident(profiles.key)} AS VARCHAR)"
    (none,) = con.execute(
        f"""SELECT count(DISTINCT c.key) FROM {changes} c
            JOIN {_ident(profiles.table)} p ON {key} = c.key
            WHERE len({rec}) = 0"""
    ).fetchall()[0]
    return staged, none
