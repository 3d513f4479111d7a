"""The "Included in Audience" write-back (``append_to_profiles: true``): the table
``included_in_audience (profile_key, activation_id, activation_name, grp, since)`` in the
source database, one row per profile included in an activation's audience (per split group;
a control group's profiles too, with ``grp = 'control'``, for attribution).

It needs ``source.writable: true``. After an activation's apply completes, its rows are made
equal to the members recorded in the state — those sent with a usable identifier (or held
in the control group) — by set operations in SQL: rows of profiles no longer recorded (they
left under ``maintain``, or were excluded) are deleted, new ones inserted with ``since`` =
now, and a renamed audience's rows take the new name. The same call with ``enabled=False``
(the activation turned ``append_to_profiles`` off) deletes its rows. Each call is one
transaction and idempotent, so an apply that died before it converges on the next run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import duckdb

from reconciler.errors import SourceError
from reconciler.workspace.goal_rules import WRITEBACK_TABLE

COLUMNS = (
    "profile_key VARCHAR, activation_id VARCHAR, activation_name VARCHAR, grp VARCHAR, "
    "since TIMESTAMPTZ"
)


def ddl(table: str, *, temp: bool = False) -> str:
    """The table's DDL; ``temp``: a session's empty stand-in (validate binds SQL against it)."""
    return f"CREATE {'TEMP ' if temp else ''}TABLE IF NOT EXISTS {table} ({COLUMNS})"


#: the table's columns, as DuckDB describes them
SHAPE = [
    ("profile_key", "VARCHAR"),
    ("activation_id", "VARCHAR"),
    ("activation_name", "VARCHAR"),
    ("grp", "VARCHAR"),
    ("since", "TIMESTAMP WITH TIME ZONE"),
]


def ensure_table(path: str) -> None:
    """Create the (empty) write-back table in the DuckDB file at ``path`` if it has none, so
    segment SQL can read it before the first apply. Opens the file for writing only then.
    A table of that name with other columns (the source had its own "included in audience")
    is a :class:`SourceError` before anything is planned or sent."""
    con = duckdb.connect(path, read_only=True)
    try:
        found = _has_table(con)
        shape = (
            con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' "
                "AND table_name = ? ORDER BY column_index",
                [WRITEBACK_TABLE],
            ).fetchall()
            if found
            else []
        )
    finally:
        con.close()
    if found and [(str(n).lower(), str(t)) for n, t in shape] != SHAPE:
        have = ", ".join(f"{n} {t}" for n, t in shape)
        need = ", ".join(f"{n} {t}" for n, t in SHAPE)
        raise SourceError(
            f"the source {path} already has a table {WRITEBACK_TABLE} ({have}) that is not "
            f"the write-back's ({need}): `source.writable: true` writes the activations' "
            f"members there. Rename that table, or remove `source.writable` (and every "
            "`append_to_profiles`)"
        )
    if found:
        return
    con = duckdb.connect(path)
    try:
        con.execute(ddl(WRITEBACK_TABLE))
    finally:
        con.close()


def _has_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the connection's own DuckDB file holds the write-back table."""
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main'",
            [WRITEBACK_TABLE],
        ).fetchall()[0][0]
    )


def sync(
    con: duckdb.DuckDBPyConnection,
    *,
    source_catalog: str,
    state_catalog: str,
    activation_id: str,
    names: Mapping[str, str],
    enabled: bool,
    former_id: str | None = None,
) -> tuple[int, int]:
    """Make the activation's write-back rows equal to its recorded members (none when not
    ``enabled``); ``names`` maps each group to its audience name. ``former_id``: the id it
    had (``moved_from``), whose rows are its own: taken over (their time kept), never left
    behind. Returns (inserted, deleted)."""
    table = f"{source_catalog}.main.{WRITEBACK_TABLE}"
    con.execute(ddl(table))
    if former_id:
        rekey(con, table, former_id, activation_id)
    wanted = (
        f"""(SELECT DISTINCT m.key, m.grp, n.name FROM {state_catalog}.members m
              JOIN (SELECT unnest($grps::VARCHAR[]) AS grp, unnest($names::VARCHAR[]) AS name) n
                ON n.grp = m.grp
              WHERE m.activation_id = $aid AND len(m.record) > 0)"""
        if enabled
        else "(SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS grp, NULL::VARCHAR AS name "
        "WHERE FALSE)"
    )
    params: dict[str, object] = {"aid": activation_id}
    if enabled:
        params |= {"grps": list(names), "names": list(names.values())}
    con.execute("BEGIN TRANSACTION")
    try:
        deleted = con.execute(
            f"""DELETE FROM {table} w WHERE w.activation_id = $aid AND NOT EXISTS (
                    SELECT 1 FROM {wanted} d WHERE d.key = w.profile_key AND d.grp = w.grp)""",
            params,
        ).fetchall()[0][0]
        if enabled:
            con.execute(
                f"""UPDATE {table} w SET activation_name = n.name
                    FROM (SELECT unnest($grps::VARCHAR[]) AS grp,
                                 unnest($names::VARCHAR[]) AS name) n
                    WHERE w.activation_id = $aid AND w.grp = n.grp
                      AND w.activation_name IS DISTINCT FROM n.name""",
                params,
            )
        inserted = con.execute(
            f"""INSERT INTO {table}
                SELECT d.key, $aid, d.name, d.grp, $now FROM {wanted} d
                WHERE NOT EXISTS (SELECT 1 FROM {table} w WHERE w.activation_id = $aid
                                  AND w.profile_key = d.key AND w.grp = d.grp)""",
            {**params, "now": datetime.now(UTC)},
        ).fetchall()[0][0]
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return inserted, deleted


def rekey(con: duckdb.DuckDBPyConnection, table: str, old: str, new: str) -> int:
    """Give the write-back rows of activation ``old`` to ``new`` (a rename); rows ``new``
    already has are kept and ``old``'s copies dropped. Returns the rows moved."""
    con.execute("BEGIN TRANSACTION")
    try:
        moved = con.execute(
            f"""UPDATE {table} w SET activation_id = $new WHERE w.activation_id = $old
                AND NOT EXISTS (SELECT 1 FROM {table} n WHERE n.activation_id = $new
                                AND n.profile_key = w.profile_key AND n.grp = w.grp)""",
            {"old": old, "new": new},
        ).fetchall()[0][0]
        con.execute(f"DELETE FROM {table} WHERE activation_id = $old", {"old": old})
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return int(moved)


def rekey_file(path: str, old: str, new: str) -> int:
    """:func:`rekey` in the DuckDB source file at ``path`` (``reconcile state mv``); 0 when
    the file has no write-back table."""
    con = duckdb.connect(path)
    try:
        return rekey(con, f"main.{WRITEBACK_TABLE}", old, new) if _has_table(con) else 0
    finally:
        con.close()


def rekey_source(ws: Any, old: str, new: str) -> int:
    """``reconcile state mv``: the "Included in Audience" rows of ``old`` in the workspace's
    writable DuckDB source become ``new``'s (as ``moved_from:`` does at apply), so none is
    left behind under the old id. Returns the rows moved (0 without such a source)."""
    from reconciler.sources.duckdb_source import DuckDBFileSource
    from reconciler.workspace.spec import DuckDBSource

    source = ws.config.source
    if not isinstance(source, DuckDBSource) or not source.writable:
        return 0
    path = DuckDBFileSource(source, ws.root).path  # resolved as every command resolves it
    if not path.is_file():
        return 0
    try:
        return rekey_file(str(path), old, new)
    except duckdb.Error as exc:
        raise SourceError(
            f"moved {old!r} to {new!r} in the state, but its write-back rows in {path} could "
            f"not be moved ({' '.join(str(exc).split())}); the next apply of {new!r} writes "
            f"its own, and the rows of {old!r} stay until removed"
        ) from exc


def pending(
    con: duckdb.DuckDBPyConnection,
    *,
    source_catalog: str,
    members: str,
    activation_id: str,
    enabled: bool,
) -> tuple[int, int]:
    """(rows to write, rows to delete) to make the activation's write-back match its recorded
    members ``members`` (a ``(key, grp, fp, record)`` relation); (0, 0) when the source has no
    write-back table. A difference means an apply died before its write-back (or the table was
    edited): the plan shows it and the next apply writes it."""
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
        "AND table_name = ?",
        [source_catalog, WRITEBACK_TABLE],
    ).fetchall()[0][0]
    if not found:
        return 0, 0
    table = f"{source_catalog}.main.{WRITEBACK_TABLE}"
    wanted = (
        f"(SELECT DISTINCT key, grp FROM {members} WHERE len(record) > 0)"
        if enabled
        else "(SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS grp WHERE FALSE)"
    )
    have = f"(SELECT DISTINCT profile_key AS key, grp FROM {table} WHERE activation_id = $aid)"
    row = con.execute(
        f"""SELECT (SELECT count(*) FROM (SELECT * FROM {wanted} EXCEPT SELECT * FROM {have})),
                   (SELECT count(*) FROM (SELECT * FROM {have} EXCEPT SELECT * FROM {wanted}))""",
        {"aid": activation_id},
    ).fetchall()[0]
    return row[0], row[1]


def pending_rows(
    con: duckdb.DuckDBPyConnection,
    *,
    source_catalog: str,
    members: str,
    activation_id: str,
    enabled: bool,
    notes: list[str],
) -> int:
    """:func:`pending` as one number, with a note for the plan when it is not zero."""
    to_write, to_delete = pending(
        con,
        source_catalog=source_catalog,
        members=members,
        activation_id=activation_id,
        enabled=enabled,
    )
    if to_write or to_delete:
        notes.append(
            f"{WRITEBACK_TABLE}: {to_write:,} row(s) to write, {to_delete:,} to delete (it "
            "does not match the recorded members)"
        )
    return to_write + to_delete
