"""Per-attribute fingerprints of ``goal: sync_attributes`` members, in the state table
``member_attributes (activation_id, grp, key, fp, afp)``: ``afp`` maps each destination
field to a hash of the value the destination holds (salted with the profile key; never a
raw value), ``fp`` is the member fingerprint the row belongs to.

The table is created with the other state tables (``CREATE TABLE IF NOT EXISTS``, so an
existing state gains it on its next apply; a read-only plan of an older state reads it as
empty). It only serves the plan's per-attribute counts — which members are sent is decided by
the member fingerprint — so it is rewritten in one statement after an activation's apply
(:func:`record`), and a row that does not match its member's fingerprint is ignored.
"""

from __future__ import annotations

import duckdb

DDL = """CREATE TABLE IF NOT EXISTS {c}.member_attributes (
    activation_id VARCHAR, grp VARCHAR, key VARCHAR, fp UBIGINT, afp MAP(VARCHAR, UBIGINT))"""

EMPTY = (
    "(SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS grp, NULL::UBIGINT AS fp, "
    "NULL::MAP(VARCHAR, UBIGINT) AS afp WHERE FALSE)"
)


def _exists(con: duckdb.DuckDBPyConnection, catalog: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? "
            "AND table_name = 'member_attributes'",
            [catalog],
        ).fetchall()[0][0]
    )


def relation(con: duckdb.DuckDBPyConnection, catalog: str, activation_id: str) -> str:
    """The recorded attribute fingerprints of one activation as ``(key, grp, fp, afp)``."""
    if not _exists(con, catalog):  # a state from before sync_attributes, read-only
        return EMPTY
    aid = "'" + activation_id.replace("'", "''") + "'"
    return (
        f"(SELECT key, grp, fp, afp FROM {catalog}.member_attributes WHERE activation_id = {aid})"
    )


def record(
    con: duckdb.DuckDBPyConnection,
    catalog: str,
    activation_id: str,
    *,
    profiles: str,
    key: str,
    fingerprint: str,
    attribute_fps: str,
) -> int:
    """Replace the activation's rows with the attribute hashes of its recorded members whose
    fingerprint matches their profile now (so what the destination holds is these values),
    in one transaction. ``profiles`` is the profiles table, ``key`` its key column,
    ``fingerprint`` and ``attribute_fps`` SQL over its row ``p``. Returns the rows written."""
    con.execute(DDL.format(c=catalog))
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"DELETE FROM {catalog}.member_attributes WHERE activation_id = ?", [activation_id]
        )
        n = con.execute(
            f"""INSERT INTO {catalog}.member_attributes
                WITH p AS (SELECT * FROM {profiles} p
                           QUALIFY count(*) OVER (PARTITION BY p.{key}) = 1)
                SELECT m.activation_id, m.grp, m.key, m.fp, {attribute_fps}
                FROM {catalog}.members m JOIN p ON CAST(p.{key} AS VARCHAR) = m.key
                WHERE m.activation_id = ? AND m.fp = {fingerprint}""",
            [activation_id],
        ).fetchall()[0][0]
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
    return n


def forget(con: duckdb.DuckDBPyConnection, catalog: str, activation_id: str) -> None:
    """Drop an activation's rows (it left management)."""
    if _exists(con, catalog):
        con.execute(
            f"DELETE FROM {catalog}.member_attributes WHERE activation_id = ?", [activation_id]
        )
