"""Which members to add or update have no identifier the destination takes, exactly.

The diff decides who is *matchable* by a cheap estimate (an e-mail with an ``@``, a phone
with five digits: :func:`reconciler.plan.terms.matchable_sql`), so that a plan over millions
of profiles does not normalise every identifier. The destination's own rules decide at send
time: a member none of whose identifiers survives them (``bob@localhost``, ``a@b@c.com``) is
recorded with an empty record and not sent. So that the plan says so rather than promising
them, the staged additions and updates are checked by those exact rules (the same SQL the
send uses, :func:`destinations.identity.sql.records_sql`) when there are at most
:data:`EXACT_LIMIT` of them in a profiles table of at most :data:`EXACT_PROFILES` rows (the
check costs a scan of the table); otherwise the plan says they are checked as they are sent.
A member is checked once per plan for every activation whose destination has the same rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import duckdb

from destinations.base import Identity
from destinations.identity.sql import records_sql
from reconciler.enginedb import STAGING
from reconciler.plan.membership import TEMP
from reconciler.plan.terms import _ident, _lit
from reconciler.workspace.spec import ProfilesTable

#: prefix of the session's tables of keys checked by one destination's rules
CHECKED = f"{TEMP}_identifiers_checked"

#: staged additions and updates checked exactly at most (above: the plan says it did not)
EXACT_LIMIT = 250_000
#: profiles in the table at most (its estimated size; a view is checked): the check joins the
#: staged keys with the profiles table, one scan of it (1.5 s of CPU at 10M profiles, a fifth
#: of a re-plan there)
EXACT_PROFILES = 2_000_000


@dataclass(frozen=True)
class Unsendable:
    none: int | None  # of the staged additions and updates, with no usable identifier
    # (None: not checked)
    #: per group, updates with no usable identifier left whose recorded record is not empty:
    #: every string sent for them is removed at the destination (the mass-removal guard's)
    lose: dict[str, int] = field(default_factory=dict)


def check(
    con: duckdb.DuckDBPyConnection,
    changes: dict[tuple[str, str], int],
    notes: list[str],
    *,
    activation_id: str,
    destination_type: str,
    identity: Identity,
    profiles: ProfilesTable,
    recorded: str,
    pushdown: bool,
    frozen: bool,
) -> int | None:
    """An activation's staged additions and updates checked for what the destination takes:
    how many have no usable identifier (None: not checked), with a note saying so appended
    to ``notes`` and, per group, the updates that lose every identifier added to
    ``changes`` as ``(grp, "lose")``. ``pushdown``: the diff ran in PostgreSQL, so they are
    checked as they are sent; ``frozen``: nothing is added or updated."""
    sending = sum(n for (_, op), n in changes.items() if op in ("add", "update"))
    if pushdown:
        if sending:
            notes.append(
                "the identifiers of the members to add or update are checked as they are sent "
                "(the diff ran in PostgreSQL): those with none the destination takes are "
                "recorded, not sent"
            )
        return None
    if frozen:
        return None
    checked = unsendable(
        con,
        activation_id=activation_id,
        identity=identity,
        profiles=profiles,
        recorded=recorded,
        staged=sending,
    )
    for grp, n in checked.lose.items():
        changes[(grp, "lose")] = n
    if checked.none:
        lose = sum(checked.lose.values())
        notes.append(
            f"{checked.none:,} of the {sending:,} member(s) to add or update have no "
            f"identifier {destination_type} takes once normalised (an e-mail without a "
            "domain, a phone too short): they are recorded, not sent"
            + (
                f"; {lose:,} of them were sent before, and what was sent for them is "
                "removed from the destination"
                if lose
                else ""
            )
        )
    elif checked.none is None:
        notes.append(
            f"the identifiers of the {sending:,} member(s) to add or update are "
            "checked as they are sent (a plan checks them when there are at most "
            f"{EXACT_LIMIT:,} in a profiles table of at most "
            f"{EXACT_PROFILES:,} rows): those with none the destination takes "
            "are recorded, not sent"
        )
    return checked.none


def unsendable(
    con: duckdb.DuckDBPyConnection,
    *,
    activation_id: str,
    identity: Identity,
    profiles: ProfilesTable,
    recorded: str,
    staged: int,
) -> Unsendable:
    """The staged additions and updates of the activation (``staged`` of them, as the plan
    counts them) checked by the destination's exact rules; ``recorded`` is the relation of
    its recorded members (``key, grp, record``)."""
    if not staged:
        return Unsendable(0)
    if staged > EXACT_LIMIT or _table_rows(con, profiles) > EXACT_PROFILES:
        return Unsendable(None)
    changes = (
        f"(SELECT DISTINCT key, grp, op FROM {STAGING}.changes "
        f"WHERE activation_id = {_lit(activation_id)} AND op IN ('add', 'update'))"
    )
    checked = _checked_keys(con, identity, profiles)
    unseen_keys = f"(SELECT DISTINCT key FROM {changes} ANTI JOIN {checked} USING (key))"
    (unseen,) = con.execute(f"SELECT count(*) FROM {unseen_keys}").fetchall()[0]
    if unseen:  # keys no activation of this session checked by these rules yet
        picked = {t: f"x{i}" for i, t in enumerate(profiles.identifiers)}
        inputs = ", ".join(
            f"p.{_ident(profiles.identifiers[t])} AS {alias}" for t, alias in picked.items()
        )
        rec = records_sql(identity.accepted, identity.rules, picked, profiles.default_phone_country)
        key = f"CAST(p.{_ident(profiles.key)} AS VARCHAR)"
        # the new keys' identifiers first (MATERIALIZED): a filter over the profile columns
        # alone would otherwise be pushed into the scan, normalising every profile of the
        # table. A key on several rows has none if one of its rows has none; a key on no row
        # (none is NULL) is not counted, and not looked up again
        con.execute(
            f"""INSERT INTO {checked}
            WITH j AS MATERIALIZED (
                SELECT c.key, {key} IS NOT NULL AS found{", " + inputs if inputs else ""}
                FROM {unseen_keys} c
                LEFT JOIN {_ident(profiles.table)} p ON {key} = c.key)
            SELECT key, bool_or(CASE WHEN found THEN len({rec}) = 0 END) FROM j GROUP BY key"""
        )
    none_rows = (
        f"(SELECT c.key, c.grp, c.op FROM {changes} c JOIN {checked} k USING (key) WHERE k.none)"
    )
    (none,) = con.execute(f"SELECT count(DISTINCT key) FROM {none_rows}").fetchall()[0]
    lose = con.execute(
        f"""SELECT n.grp, count(*) FROM {none_rows} n JOIN {recorded} m
            ON m.key = n.key AND m.grp = n.grp
            WHERE n.op = 'update' AND len(m.record) > 0 GROUP BY ALL"""
    ).fetchall()
    return Unsendable(none, dict(lose))


def _checked_keys(
    con: duckdb.DuckDBPyConnection, identity: Identity, profiles: ProfilesTable
) -> str:
    """The session's table of keys checked by ``identity``'s rules (``key``, ``none``: no
    usable identifier), made empty the first time: activations that stage the same members
    for destinations with the same rules (several activations of one segment, one
    integration) check each key once, and a query that binds the rules' SQL (~20-40 ms for
    e-mail and phone, paid even for a handful of members) runs only for keys not seen yet.
    The profiles do not change within a session (a plan reads one snapshot)."""
    signature = repr(
        (identity.rules, identity.accepted, sorted(profiles.identifiers.items()),
         profiles.default_phone_country, profiles.table, profiles.key)
    )  # fmt: skip
    name = f"{CHECKED}_{hashlib.sha256(signature.encode()).hexdigest()[:16]}"
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (key VARCHAR, none BOOLEAN)")
    return name


def _table_rows(con: duckdb.DuckDBPyConnection, profiles: ProfilesTable) -> int:
    """The profiles table's estimated rows (0 for a view: its size is unknown)."""
    rows = con.execute(
        """SELECT estimated_size FROM duckdb_tables() WHERE database_name = current_database()
           AND schema_name = current_schema() AND lower(table_name) = lower(?)""",
        [profiles.table],
    ).fetchall()
    return int(rows[0][0] or 0) if rows else 0
