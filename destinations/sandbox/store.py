"""The sandbox's DuckDB file: what a remote service would keep, inspectable by anyone.

Tables (``duckdb .reconcile/sandbox.duckdb``)::

    audiences(id, name, created_at, creation_key)
    member_log(seq, audience_id, match_key, attributes JSON, removed, at)   append-only
    requests(idempotency_key, op, audience_id, at)                       every write call

and the view ``members(audience_id, match_key, attributes, updated_at)``: the live rows, the
latest log entry of each (audience, match key) that is not a removal. One row per record
string: a member sent with e-mail and phone is two rows; an audience's ``size`` counts rows.

Every write appends to the log, so a call costs in proportion to its batch, never to the
audience. A call whose idempotency key was seen before is a replay: answered, not applied
again. Each call is one transaction: a kill mid-call leaves it applied or not.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from destinations.base import AudienceRef, MemberBatch

_T = TypeVar("_T")
Call = Callable[[duckdb.DuckDBPyConnection], _T]

SCHEMA = """
CREATE TABLE IF NOT EXISTS audiences (
    id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL,
    creation_key VARCHAR);
CREATE TABLE IF NOT EXISTS requests (
    idempotency_key VARCHAR PRIMARY KEY, op VARCHAR NOT NULL, audience_id VARCHAR,
    "at" TIMESTAMP NOT NULL);
CREATE SEQUENCE IF NOT EXISTS member_seq;
CREATE TABLE IF NOT EXISTS jobs (
    id VARCHAR PRIMARY KEY, polls_left INTEGER NOT NULL, outcome JSON NOT NULL);
CREATE TABLE IF NOT EXISTS member_log (
    seq BIGINT NOT NULL, audience_id VARCHAR NOT NULL, match_key VARCHAR NOT NULL,
    attributes JSON, removed BOOLEAN NOT NULL, "at" TIMESTAMP NOT NULL);
CREATE OR REPLACE VIEW members AS
    SELECT audience_id, match_key, attributes, "at" AS updated_at FROM member_log
    QUALIFY row_number() OVER (PARTITION BY audience_id, match_key ORDER BY seq DESC) = 1
        AND NOT removed;
"""

_AUDIENCES = """
WITH sizes AS (SELECT audience_id, count(*) AS n FROM members GROUP BY ALL)
SELECT a.id, a.name, coalesce(s.n, 0) FROM audiences a LEFT JOIN sizes s ON s.audience_id = a.id
WHERE {where} ORDER BY a.created_at {order}, a.rowid {order} LIMIT {limit}
"""

#: the sandbox stands in for a remote service: its buffers stay modest so it does not compete
#: with the engine for memory inside the apply process, and it stores its (small, local,
#: inspectable) file uncompressed: compressing every batch's rows at commit and checkpoint
#: cost the apply process about as much CPU as writing them
DB_CONFIG: dict[str, str | int] = {
    "memory_limit": "256MB",
    "threads": 1,
    "force_compression": "uncompressed",
    # one commit per batch: checkpoint every 64 MB of WAL, not 16 (as the engine's state)
    "checkpoint_threshold": "64MB",
}


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def connect(path: Path) -> duckdb.DuckDBPyConnection:
    """Open (creating) the file with its schema; an older file's ``members`` table (one row per
    live match key) becomes the first entries of the log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), config=dict(DB_CONFIG))
    old = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'members'"
    ).fetchall()[0][0]
    if old:
        con.execute("ALTER TABLE members RENAME TO members_v1")
    con.execute(SCHEMA)
    if old:
        con.execute("ALTER TABLE audiences ADD COLUMN IF NOT EXISTS creation_key VARCHAR")
        con.execute(
            "INSERT INTO member_log SELECT nextval('member_seq'), audience_id, match_key, "
            "attributes, FALSE, updated_at FROM members_v1"
        )
        con.execute("DROP TABLE members_v1")
    return con


def transaction(con: duckdb.DuckDBPyConnection, fn: Call[_T]) -> _T:
    con.begin()
    try:
        result = fn(con)
    except BaseException:
        con.rollback()
        raise
    con.commit()
    return result


def audiences(
    con: duckdb.DuckDBPyConnection, where: str = "true", newest: bool = False, **params: Any
) -> list[AudienceRef]:
    """Audiences matching ``where`` (oldest first, or only the newest), sized in rows."""
    order, limit = ("DESC", "1") if newest else ("ASC", "ALL")
    sql = _AUDIENCES.format(where=where, order=order, limit=limit)
    return [AudienceRef(id=i, name=n, size=s) for i, n, s in con.execute(sql, params).fetchall()]


def audience(con: duckdb.DuckDBPyConnection, audience_id: str) -> AudienceRef | None:
    """The audience without its size (a primary-key lookup: no scan of its members)."""
    row = con.execute("SELECT id, name FROM audiences WHERE id = ?", [audience_id]).fetchone()
    return AudienceRef(id=row[0], name=row[1]) if row else None


def replayed(con: duckdb.DuckDBPyConnection, key: str) -> tuple[str, str | None] | None:
    """(op, audience id) of an earlier call made with this idempotency key, or None."""
    row = con.execute(
        "SELECT op, audience_id FROM requests WHERE idempotency_key = ?", [key]
    ).fetchone()
    return (row[0], row[1]) if row else None


def log_request(con: duckdb.DuckDBPyConnection, key: str, op: str, audience_id: str) -> None:
    con.execute(
        "INSERT INTO requests VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [key, op, audience_id, now()],
    )


def create(con: duckdb.DuckDBPyConnection, name: str, key: str) -> AudienceRef:
    audience_id = "sbx_" + secrets.token_hex(5)
    con.execute("INSERT INTO audiences VALUES (?, ?, ?, ?)", [audience_id, name, now(), key])
    log_request(con, key, "create", audience_id)
    return AudienceRef(id=audience_id, name=name, size=0)


def as_table(batch: MemberBatch) -> Any:
    """The batch as an Arrow table (``key``, ``records``, ``attr:<field>``): the one the
    engine sent along (``MemberBatch.table``), else built from its Python columns."""
    if batch.table is not None:
        return batch.table
    import pyarrow as pa

    columns = {
        "key": pa.array(list(batch.keys), pa.string()),
        "records": pa.array([list(r) for r in batch.records], pa.list_(pa.string())),
    }
    columns |= {f"attr:{f}": pa.array(list(v)) for f, v in batch.attributes.items()}
    return pa.table(columns)


def upsert(
    con: duckdb.DuckDBPyConnection,
    audience_id: str,
    table: Any,
    fields: Sequence[str],
    skip: Sequence[str] = (),
) -> int:
    """Append a live row per record string of the batch's members (an Arrow table, see
    :func:`as_table`) but those in ``skip``, with the member's attributes ``fields`` as JSON
    built by DuckDB. Returns the rows written. The batch goes from Arrow to the file without
    a Python object per member."""
    if fields:
        pairs = ", ".join(f"{_literal(f)}, {_column('attr:' + f)}" for f in fields)
        attrs = f"json_object({pairs})"
    else:
        attrs = "'{}'::JSON"
    con.register("__sandbox_batch", table)
    try:
        return con.execute(
            f"""INSERT INTO member_log
            SELECT nextval('member_seq'), $audience, r, {attrs}, FALSE, $now
            FROM (SELECT unnest(records) AS r, * EXCLUDE (records) FROM __sandbox_batch
                  WHERE key NOT IN (SELECT unnest($skip::VARCHAR[])))""",
            {"audience": audience_id, "now": now(), "skip": list(skip)},
        ).fetchall()[0][0]
    finally:
        con.unregister("__sandbox_batch")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _column(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def remove(con: duckdb.DuckDBPyConnection, audience_id: str, match_keys: Sequence[str]) -> int:
    """Append a removal per match key (absent ones are fine). Returns the rows written."""
    if not match_keys:
        return 0
    return con.execute(
        """INSERT INTO member_log SELECT nextval('member_seq'), $audience, k, NULL, TRUE, $now
           FROM (SELECT unnest($keys) AS k)""",
        {"audience": audience_id, "keys": list(match_keys), "now": now()},
    ).fetchall()[0][0]


class SandboxStore:
    """Read-only view of a sandbox file, for tests and users. Each method opens the file for
    one query only, so it never holds a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _query(self, fn: Call[_T]) -> _T:
        if not self.path.exists():
            raise FileNotFoundError(f"no sandbox file at {self.path}")
        try:
            con = duckdb.connect(str(self.path), read_only=True)
        except duckdb.ConnectionException:
            # this process has the file open for writing (a live adapter): share it
            con = duckdb.connect(str(self.path), config=dict(DB_CONFIG))
        try:
            return fn(con)
        finally:
            con.close()

    def audiences(self) -> list[AudienceRef]:
        """Every audience, oldest first, with its size in rows (match keys)."""
        return self._query(audiences)

    def match_keys(self, audience_id: str) -> set[str]:
        """The record strings an audience holds."""
        sql = "SELECT match_key FROM members WHERE audience_id = ?"
        return self._query(lambda con: {r[0] for r in con.execute(sql, [audience_id]).fetchall()})

    def attributes(self, audience_id: str) -> dict[str, dict[str, Any]]:
        """Match key -> the attributes stored with it."""
        import json

        sql = "SELECT match_key, attributes FROM members WHERE audience_id = ?"
        rows = self._query(lambda con: con.execute(sql, [audience_id]).fetchall())
        return {key: json.loads(value) for key, value in rows}


def open_store(path: str | Path) -> SandboxStore:
    """A read-only :class:`SandboxStore` over the sandbox file at ``path``."""
    return SandboxStore(path)
