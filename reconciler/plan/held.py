"""Held profiles: a key that appears on more than one row of the profiles table is ambiguous
(which row is the profile?), so its profile is neither added, updated nor removed until the
source is fixed (see :mod:`reconciler.plan.membership`).

The held keys of an activation are the table ``DUPLICATES``: those of its segments' keys that
join several profile rows (:func:`stage_segment_keys`, free when there is none) and those of
its recorded members that left the segments and appear twice (:func:`complete`). Finding
the leavers needs the recorded members diffed against the segments' keys; the membership diff
does that anyway, so where it runs first only its few leaving rows are checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from reconciler.enginedb import STAGING
from reconciler.errors import printable
from reconciler.sources.base import INTERNAL_PREFIX

DUPLICATES = f"{INTERNAL_PREFIX}_tmp_duplicate_keys"


@dataclass(frozen=True)
class Held:
    """The held keys of one activation: ``table`` (None: none) and a few of them for the
    message. ``pending``: the engine's ``DUPLICATES`` does not hold the recorded members that
    left the segments yet (:func:`reconciler.plan.membership.stage_changes` adds them)."""

    table: str | None
    sample: list[str]
    pending: bool = False
    #: a table of the hash of every non-NULL key of the profiles table (column ``h``), when
    #: the session made one (:func:`reconciler.plan.one_scan.unique_rows`)
    hashes: str | None = None
    #: the profiles table declares its key unique
    #: (:func:`reconciler.plan.one_scan.declared_unique`): no recorded member can be on two
    #: rows, so leavers are not checked
    unique: bool = False


def stage_segment_keys(con: duckdb.DuckDBPyConnection, joined: str | None) -> None:
    """Create ``DUPLICATES`` with the keys of ``joined`` (the segments' keys joined with the
    profiles table, column ``key``) on more than one row; None: it has one row per key."""
    twice = (
        f"SELECT key AS k FROM {joined} GROUP BY key HAVING count(*) > 1"
        if joined
        else "SELECT NULL::VARCHAR AS k WHERE FALSE"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DUPLICATES} AS {twice}")


def complete(
    con: duckdb.DuckDBPyConnection,
    desired: str,
    profiles: tuple[str, str],
    candidates: str,
    hashes: str | None = None,
    unique: bool = False,
) -> Held:
    """The held keys, with the keys of ``candidates`` (a relation with column ``key``: the
    recorded members, or any set of them holding every one that left) that no segment returns
    (no row in ``desired``) and that appear more than once in the profiles table
    (``profiles``: the table, read as ``p``, and its key as text). With ``hashes`` (every
    row's key hash, :attr:`Held.hashes`) the table's keys are read only when the hash of one
    of those keys is on two rows (a repeated key, or rarely a collision). A table whose key
    is declared ``unique`` is not read at all."""
    if unique:
        return held_keys(con)
    table, key = profiles
    leavers = f"(SELECT c.key FROM {candidates} c ANTI JOIN {desired} d ON d.key = c.key)"
    if hashes is not None:
        twice = con.execute(
            f"""SELECT count(*) FROM (SELECT t.h FROM {hashes} t
                SEMI JOIN {leavers} l ON hash(l.key) = t.h GROUP BY t.h HAVING count(*) > 1)"""
        ).fetchall()[0][0]
        if not twice:
            return held_keys(con)
    con.execute(
        f"""INSERT INTO {DUPLICATES}
        SELECT {key} AS k FROM {table} p
        SEMI JOIN {leavers} l ON l.key = {key}
        GROUP BY 1 HAVING count(*) > 1"""
    )
    return held_keys(con)


def unhold_leavers(
    con: duckdb.DuckDBPyConnection,
    desired: str,
    profiles: tuple[str, str],
    *,
    aid: str,
    leaving: str,
    gone: str | None,
    hashes: str | None = None,
    unique: bool = False,
) -> Held:
    """After the diff of *all* the recorded members of activation ``aid`` (SQL literals from
    here on) staged its changes, held keys pending: complete them from the members it staged
    as ``leaving`` (every member that left the segments is one, or forgotten with a ``gone``
    group), then take back the ``leaving`` rows of held members. The same changes as diffing
    only the members not held: a held key has no eligible row, so its members only leave."""
    staged = f"(SELECT key, op FROM {STAGING}.changes WHERE activation_id = {aid})"
    held = complete(
        con,
        desired,
        profiles,
        f"(SELECT key FROM {staged} WHERE op IN ({leaving}, 'forget'))",
        hashes,
        unique,
    )
    if held.table:
        not_gone = f" AND grp NOT IN ({gone})" if gone else ""
        con.execute(
            f"DELETE FROM {STAGING}.changes WHERE activation_id = {aid} "
            f"AND op = {leaving}{not_gone} AND key IN (SELECT k FROM {held.table})"
        )
    return held


def held_keys(con: duckdb.DuckDBPyConnection) -> Held:
    """The engine's held keys, complete."""
    n = con.execute(f"SELECT count(*) FROM {DUPLICATES}").fetchall()[0][0]
    if not n:
        return Held(None, [])
    rows = con.execute(f"SELECT k FROM {DUPLICATES} ORDER BY k LIMIT 3").fetchall()
    return Held(DUPLICATES, [r[0] for r in rows])


_PHONE_LIKE = re.compile(r"\+?[\d\s().\-]+")


def identifier_shaped(value: str, column_type: str = "VARCHAR") -> bool:
    """An e-mail address, or a phone number written as text (a key of an integer column is
    a number, not a phone): raw PII a plan, a preview or a log must not quote."""
    if "@" in value:
        return True
    digits = sum(c.isdigit() for c in value)
    textual = "INT" not in column_type.upper()
    return textual and digits >= 7 and bool(_PHONE_LIKE.fullmatch(value.strip()))


def shown(keys: list[str], key_is_identifier: bool) -> tuple[str, bool]:
    """``keys`` for a message (a plan goes to pull requests and CI logs; state and plans
    hold no raw PII): each one that reads as an e-mail or a phone number
    (:func:`identifier_shaped`) masked as ``<identifier>``, or all of them when the key column
    is also an identifier column (``key_is_identifier``: its values are PII whatever their
    shape); control characters escaped. Also: whether any was masked."""
    masked = [
        "<identifier>" if key_is_identifier or identifier_shaped(k) else f"'{printable(k)}'"
        for k in keys
    ]
    return ", ".join(masked), any(m == "<identifier>" for m in masked)
