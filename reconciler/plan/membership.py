"""Membership as set operations in the engine session (SQL, never Python loops over members).

- segments are materialised by :class:`reconciler.plan.segments.SegmentRunner`.
- :func:`stage_desired` builds the ``desired`` temp table of one activation: every key of its
  segments with its group, fingerprint and exclusion flags.
- :func:`stage_changes` diffs ``desired`` against the recorded members and inserts the member
  changes (keys only) into the staging table ``changes``.

Ops staged (:class:`~reconciler.plan.model.MemberOp`): ``add`` (enter), ``remove`` (leave;
removal sends what was recorded), ``update`` (identifiers or mapped attributes changed, or a
removal of an earlier record is still owed), ``purge`` (``action: remove``: remove from the
destination a profile never sent by us) and ``forget`` (drop a record, no call).

Profiles whose key appears more than once in the profiles table are *held*: which row is the
profile is ambiguous, so they are neither added, updated nor removed until the source is
fixed (:mod:`reconciler.plan.held`); the plan counts and names them. Suppression, and the
loss of consent on any of their rows, still remove them.
"""

from __future__ import annotations

import re

import duckdb

from reconciler.enginedb import STAGING
from reconciler.errors import SegmentError
from reconciler.plan import held as held_keys
from reconciler.plan import splits
from reconciler.plan.held import DUPLICATES, Held
from reconciler.sources.base import INTERNAL_PREFIX, SqlRejected
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.guard import SqlPolicy, check_condition
from reconciler.workspace.spec import (
    ActionMode,
    Goal,
    Integration,
    ProfilesTable,
    ResolvedActivation,
)

#: temp tables of a planning session; the prefix keeps segment SQL from reading them
TEMP = f"{INTERNAL_PREFIX}_tmp"
DESIRED = f"{TEMP}_desired"
SUPPRESSED = f"{TEMP}_suppressed"
UNION = f"{TEMP}_union"
JOINED = f"{TEMP}_joined"

CHANGES_DDL = (
    f"CREATE TABLE IF NOT EXISTS {STAGING}.changes "
    "(activation_id VARCHAR, grp VARCHAR, op VARCHAR, key VARCHAR)"
)


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
    for t in identifier_types:
        col = profiles.identifiers.get(t)
        if col is None:
            continue
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
    for t in identifier_types:
        col = profiles.identifiers.get(t)
        if col is None:
            continue
        c = f"p.{_ident(col)}"
        if t == "email":
            tests.append(f"(strpos({c}, '@') > 1)")
        elif t == "phone":
            # at least 7 digits: one regexp search, 4-5x cheaper than counting them
            tests.append(f"regexp_matches({c}, '(?:[^0-9]*[0-9]){{7}}')")
    return " OR ".join(tests) if tests else "FALSE"


def stage_desired(
    con: duckdb.DuckDBPyConnection,
    *,
    profiles: ProfilesTable,
    segment_tables: list[str],
    suppressed: str | None,
    consent: str,
    group_expr: str,
    fingerprint: str,
    matchable: str,
    attribute_fps: str | None = None,
) -> tuple[dict[str, int], Held]:
    """Create temp table ``desired``; return the exclusion counts and the held keys, still
    pending: :func:`stage_changes` completes them. ``attribute_fps`` (``goal:
    sync_attributes``) adds the per-attribute hashes as column ``afp``.

    A key that appears on several profile rows is *held*. Among the segments' keys this costs
    nothing when there is none: the join with the profiles table then returns exactly one row
    per key; only when it returns more are those keys grouped. Recorded members that left
    the segments are checked by :func:`stage_changes` (a few keys, usually)."""
    key = f"CAST(p.{_ident(profiles.key)} AS VARCHAR)"
    supp_join = f"LEFT JOIN {suppressed} s ON s.k = u.k" if suppressed else ""
    supp_flag = "s.k IS NOT NULL" if suppressed else "FALSE"
    if len(segment_tables) == 1:  # its keys are distinct already: no copy
        keys_table = segment_tables[0]
    else:
        keys_table = UNION
        parts = " UNION ALL ".join(f"SELECT k FROM {t}" for t in segment_tables)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {UNION} AS SELECT DISTINCT k FROM ({parts})")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {JOINED} AS
        SELECT u.k AS key,
               FALSE AS held,
               {key} IS NULL AS unknown,
               {supp_flag} AS suppressed,
               NOT coalesce({consent}, FALSE) AS no_consent,
               coalesce({matchable}, FALSE) AS matchable,
               {group_expr} AS grp,
               {fingerprint} AS fp{f", {attribute_fps} AS afp" if attribute_fps else ""}
        FROM {keys_table} u
        LEFT JOIN {_ident(profiles.table)} p ON {key} = u.k
        {supp_join}"""
    )
    joined, keys = con.execute(
        f"SELECT (SELECT count(*) FROM {JOINED}), (SELECT count(*) FROM {keys_table})"
    ).fetchall()[0]
    held_keys.stage_segment_keys(con, JOINED if joined != keys else None)
    con.execute(f"DROP TABLE IF EXISTS {DESIRED}")
    if joined == keys:
        con.execute(f"ALTER TABLE {JOINED} RENAME TO {DESIRED}")
    else:  # one row per held key: it joins no profile row (which row is it?)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {DESIRED} AS
            SELECT * FROM {JOINED} j ANTI JOIN {DUPLICATES} d ON d.k = j.key
            UNION ALL
            SELECT key, TRUE, FALSE, any_value(suppressed), TRUE, FALSE, any_value(grp), NULL
                   {", NULL" if attribute_fps else ""}
            FROM {JOINED} j SEMI JOIN {DUPLICATES} d ON d.k = j.key GROUP BY key"""
        )
        con.execute(f"DROP TABLE {JOINED}")
    row = con.execute(
        f"""SELECT count(*) FILTER (unknown),
                  count(*) FILTER (held),
                  count(*) FILTER (NOT unknown AND NOT held AND suppressed),
                  count(*) FILTER (NOT unknown AND NOT held AND NOT suppressed AND no_consent),
                  count(*) FILTER (NOT unknown AND NOT held AND NOT suppressed
                                   AND NOT no_consent),
                  count(*) FILTER (NOT unknown AND NOT held AND NOT suppressed
                                   AND NOT no_consent AND matchable)
           FROM {DESIRED}"""
    ).fetchall()[0]
    counts = {
        "unknown": row[0],
        "held": row[1],
        "suppression": row[2],
        "consent": row[3],
        "eligible": row[4],
        "matchable": row[5],
    }
    return counts, Held(DUPLICATES, [], pending=True)


def stage_changes(
    con: duckdb.DuckDBPyConnection,
    *,
    activation_id: str,
    recorded: str,
    act: ResolvedActivation,
    frozen: bool,
    profiles: ProfilesTable,
    suppressed: str | None,
    held: Held,
    consent: str,
    gone: list[str] = (),  # type: ignore[assignment]
) -> Held:
    """Insert this activation's member changes into the staging table and return its held
    keys, complete. ``recorded`` is the SQL relation of its recorded members
    (``StateReader.members_sql``). The members of ``gone`` groups (their audience was deleted
    at the destination) are forgotten and the group's audience is filled again from scratch."""
    con.execute(CHANGES_DDL)
    aid = _lit(activation_id)
    diffs = not frozen and (act.goal is Goal.SYNC_ATTRIBUTES or act.action is ActionMode.MAINTAIN)
    if held.pending and not diffs:  # every recorded member is a candidate leaver
        held = held_keys.complete(con, DESIRED, _profiles_keys(profiles), recorded)
    in_gone = ", ".join(_lit(g) for g in gone) if gone else None
    if in_gone:
        con.execute(
            f"INSERT INTO {STAGING}.changes SELECT {aid}, grp, 'forget', key FROM {recorded} "
            f"WHERE grp IN ({in_gone})"
        )
        recorded = f"(SELECT * FROM {recorded} WHERE grp NOT IN ({in_gone}))"
    # held members (duplicated key) are neither updated nor removed as leavers; exclusions
    # (suppression, consent lost on any of their rows) still remove them
    everyone = f"(SELECT key, grp, fp FROM {recorded})"
    members = (  # pending: every member is diffed, then held leavers are taken back
        f"(SELECT m.key, m.grp, m.fp FROM {recorded} m ANTI JOIN {held.table} dk ON dk.k = m.key)"
        if held.table and not held.pending
        else everyone
    )
    eligible = (
        f"(SELECT key, grp, fp FROM {DESIRED} WHERE NOT unknown AND NOT held AND NOT suppressed "
        "AND NOT no_consent AND matchable)"
    )
    ins = f"INSERT INTO {STAGING}.changes "
    if act.goal is Goal.SYNC_ATTRIBUTES:
        # entering profiles get all mapped values, changed ones their values again; leaving
        # never clears fields at the destination: a leaver's record is only forgotten
        if not frozen:
            held = _stage_diff(con, ins, aid, eligible, members, "forget", held, profiles, in_gone)
        return held
    if act.action is ActionMode.REMOVE:
        if frozen:  # paused, or a one-time removal that already ran: nothing more is sent
            return held
        targets = f"(SELECT key, fp FROM {DESIRED} WHERE NOT unknown AND NOT held AND matchable)"
        # purge the segment's profiles not removed yet, and again those whose identifiers
        # changed since (their new identifiers may be in the list)
        con.execute(
            f"{ins} SELECT {aid}, 'all', 'purge', d.key FROM {targets} d "
            f"LEFT JOIN {members} m ON m.key = d.key "
            "WHERE m.key IS NULL OR m.fp IS NULL OR d.fp <> m.fp"
        )
        con.execute(
            f"{ins} SELECT {aid}, m.grp, 'forget', m.key FROM {members} m "
            f"ANTI JOIN {targets} d ON m.key = d.key"
        )
        return held
    excluded = _excluded_members(everyone, profiles, suppressed, consent)
    if frozen:
        con.execute(f"{ins} SELECT {aid}, grp, 'remove', key FROM {excluded}")
        return held
    # `m.fp IS NULL`: a removal of an earlier record is still owed (it was refused)
    if act.action is ActionMode.MAINTAIN:
        held = _stage_diff(con, ins, aid, eligible, members, "remove", held, profiles, in_gone)
        if held.table:  # held members are left alone, unless an exclusion removes them
            con.execute(
                f"{ins} SELECT {aid}, x.grp, 'remove', x.key FROM {excluded} x "
                f"SEMI JOIN {held.table} dk ON dk.k = x.key"
            )
        return held
    # append: add entering, update changed, remove only the excluded and the regrouped
    con.execute(
        f"""{ins}
        SELECT {aid}, d.grp, CASE WHEN m.key IS NULL THEN 'add' ELSE 'update' END, d.key
        FROM {eligible} d LEFT JOIN {members} m ON d.key = m.key AND d.grp = m.grp
        WHERE m.key IS NULL OR m.fp IS NULL OR d.fp <> m.fp"""
    )
    # ... and, like an unusable identifier, a profile in the segment left with none at all
    unusable = (
        f"(SELECT key FROM {DESIRED} WHERE NOT unknown AND NOT held AND NOT suppressed "
        "AND NOT no_consent AND NOT matchable)"
    )
    con.execute(
        f"""{ins}
        SELECT {aid}, grp, 'remove', key FROM (
            SELECT key, grp FROM {excluded}
            UNION
            SELECT m.key, m.grp FROM {members} m JOIN {eligible} d
                ON d.key = m.key AND d.grp <> m.grp
            UNION
            SELECT m.key, m.grp FROM {members} m SEMI JOIN {unusable} u ON u.key = m.key)"""
    )
    return held


def _profiles_keys(profiles: ProfilesTable) -> tuple[str, str]:
    """The profiles table (as ``p``) and its key as text, for :mod:`reconciler.plan.held`."""
    return _ident(profiles.table), f"CAST(p.{_ident(profiles.key)} AS VARCHAR)"


def _stage_diff(
    con: duckdb.DuckDBPyConnection,
    ins: str,
    aid: str,
    eligible: str,
    members: str,
    leaving: str,
    held: Held,
    profiles: ProfilesTable,
    in_gone: str | None,
) -> Held:
    """Stage ``add`` for entering, ``update`` for changed and ``leaving`` (``remove``, or
    ``forget`` where leaving sends nothing) for leaving members, by (key, group); return the
    held keys, completed if pending (:func:`reconciler.plan.held.unhold_leavers`)."""
    # every row of both sides in the one group of an unsplit audience: the key alone pairs
    # them (a join on one column costs ~30% less than on two)
    both = f"SELECT grp FROM {eligible} UNION ALL SELECT grp FROM {members}"
    one_group = con.execute(
        f"SELECT NOT EXISTS (FROM ({both}) WHERE grp IS DISTINCT FROM {_lit(splits.ALL)})"
    ).fetchall()[0][0]
    on = "d.key = m.key" if one_group else "d.key = m.key AND d.grp = m.grp"
    con.execute(
        f"""{ins}
        SELECT {aid}, coalesce(d.grp, m.grp),
               CASE WHEN m.key IS NULL THEN 'add' WHEN d.key IS NULL THEN {_lit(leaving)}
                    ELSE 'update' END,
               coalesce(d.key, m.key)
        FROM {eligible} d FULL OUTER JOIN {members} m ON {on}
        WHERE m.key IS NULL OR d.key IS NULL OR m.fp IS NULL OR d.fp <> m.fp"""
    )
    if not held.pending:
        return held
    return held_keys.unhold_leavers(
        con, DESIRED, _profiles_keys(profiles), aid=aid, leaving=_lit(leaving), gone=in_gone
    )


def _excluded_members(
    members: str, profiles: ProfilesTable, suppressed: str | None, consent: str
) -> str:
    """Recorded members that a suppression segment or the consent condition now excludes
    (removed under every action, even when paused)."""
    key = f"CAST(p.{_ident(profiles.key)} AS VARCHAR)"
    supp_join = f"LEFT JOIN {suppressed} s ON s.k = m.key" if suppressed else ""
    supp_flag = "s.k IS NOT NULL" if suppressed else "FALSE"
    return f"""(SELECT DISTINCT m.key, m.grp FROM {members} m
        LEFT JOIN {_ident(profiles.table)} p ON {key} = m.key {supp_join}
        WHERE {supp_flag} OR NOT coalesce({consent}, FALSE))"""


def stage_all(con: duckdb.DuckDBPyConnection, activation_id: str, recorded: str, op: str) -> None:
    """Stage ``op`` for every recorded member (``on_delete: clear``)."""
    con.execute(CHANGES_DDL)
    con.execute(
        f"INSERT INTO {STAGING}.changes SELECT {_lit(activation_id)}, grp, "
        f"CASE WHEN grp = 'control' THEN 'forget' ELSE {_lit(op)} END, key "
        f"FROM {recorded}"
    )


def change_counts(con: duckdb.DuckDBPyConnection, activation_id: str) -> dict[tuple[str, str], int]:
    con.execute(CHANGES_DDL)
    rows = con.execute(
        f"SELECT grp, op, count(*) FROM {STAGING}.changes WHERE activation_id = ? GROUP BY ALL",
        [activation_id],
    ).fetchall()
    return {(g, o): n for g, o, n in rows}


def group_expression(act: ResolvedActivation, seed: str) -> str:
    """The group of each key of ``desired`` (the union's column ``u.k``)."""
    return splits.group_sql(act.split, act.control_percent, _lit(seed), "u.k")
