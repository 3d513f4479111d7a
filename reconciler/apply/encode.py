"""The send table: one audience's staged members of one operation, with their identifiers
normalised and encoded by the destination's rules *in SQL* (DuckDB's ``sha256``, the same
rules as ``destinations.identity``), their record strings, fingerprint and mapped attributes.

Apply streams it in batches as Arrow columns (:class:`Columns`) and records what the
destination confirmed with one ``INSERT ... SELECT`` per batch (several batches in one
transaction, see :mod:`reconciler.apply.additions`), so no per-member Python object exists on
the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from destinations.base import Identity
from destinations.columns import LazyColumn, RecordColumn
from destinations.identity.send_query import send_sql
from reconciler.enginedb import STAGING
from reconciler.plan.membership import _ident
from reconciler.plan.one_scan import declared_unique
from reconciler.workspace.spec import ProfilesTable

#: the send table lives in an in-memory database of the apply session (spilled to the
#: session's temp directory under memory pressure): it is built and read by one apply only,
#: and writing it to the staging file cost as much CPU again as computing it (compression)
SCRATCH = "__reconcile_scratch"
SEND = f"{SCRATCH}.send"
CHANGES = f"{STAGING}.changes"


#: the operations whose members are sent with their profile's identifiers (removals send
#: what was recorded): one send table holds all three, built in one pass over the profiles
SENT_OPS = ("purge", "update", "add")


@dataclass(frozen=True)
class SendTable:
    """One operation's rows of the send table, and their columns in the order a streaming
    query returns them: ``key, rec, fp, <one per encoding field>, <one per attribute field>``."""

    op: str
    fields: tuple[str, ...]  # encoding fields (MemberBatch.values keys)
    attributes: tuple[str, ...]  # destination attribute fields
    staged: int  # keys staged for this operation
    usable: int  # of them, with a profile row (drift: the rest)
    sendable: int  # of those, with at least one usable identifier

    @property
    def columns(self) -> str:
        cols = ["key", "rec", "fp"]
        cols += [f"v{i}" for i in range(len(self.fields))]
        cols += [f"a{i}" for i in range(len(self.attributes))]
        return ", ".join(cols)


def build(
    con: duckdb.DuckDBPyConnection,
    *,
    activation_id: str,
    grp: str,
    identity: Identity,
    profiles: ProfilesTable,
    attribute_map: dict[str, str],
    fingerprint: str,
    consent: str = "TRUE",
    suppressed: str | None = None,
) -> dict[str, SendTable]:
    """(Re)create the send table for (activation, group): the staged members of every
    operation in :data:`SENT_OPS`, read from the profiles in one pass. A key that left the
    source since the plan, or that now appears on several profile rows, is left out (drift);
    so is a member to add or update that no longer passes ``consent`` (SQL over ``p``) or
    whose key is now in ``suppressed`` (a table of keys ``k``): a saved plan applied later
    never sends a profile that withdrew its consent or was suppressed meanwhile.
    Returns each operation's :class:`SendTable`."""
    identifiers = dict(profiles.identifiers)
    # the profile columns the send needs, under names no column of the source can shadow
    picked = {t: f"x{i}" for i, t in enumerate(identifiers)}
    inputs = [f"p.{_ident(identifiers[t])} AS {alias}" for t, alias in picked.items()]
    as_text = _text_columns(con, profiles, list(attribute_map.values()))
    attrs = [
        f"{as_text[col].format(v=f'p.{_ident(col)}')} AS a{i}"
        if col in as_text
        else f"p.{_ident(col)} AS a{i}"
        for i, col in enumerate(attribute_map.values())
    ]
    key = f"CAST(p.{_ident(profiles.key)} AS VARCHAR)"
    base = ", ".join(["c.op AS op", f"{key} AS key", f"{fingerprint} AS fp", *inputs, *attrs])
    encoded = send_sql(
        "s",
        identity.encodings,
        identity.accepted,
        identity.rules,
        picked,
        profiles.default_phone_country,
    )
    drop = f" EXCLUDE ({', '.join(picked.values())})" if picked else ""
    ops = ", ".join(f"'{op}'" for op in SENT_OPS)
    where = f"activation_id = $aid AND grp = $grp AND op IN ({ops})"
    admitted = admitted_sql(consent, suppressed)
    keep = f"WHERE {admitted}" if admitted else ""
    con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {SCRATCH}")

    def create(distinct: str) -> None:
        con.execute(
            f"""CREATE OR REPLACE TABLE {SEND} AS
            WITH c AS (SELECT {distinct} key, op FROM {CHANGES} WHERE {where}),
                 s AS (SELECT {base} FROM {_ident(profiles.table)} p JOIN c ON c.key = {key}
                       {keep})
            SELECT *{drop}, len(rec) > 0 AS sendable
            FROM ({encoded})""",
            {"aid": activation_id, "grp": grp},
        )

    # The staged changes hold each (op, key) once, and each key is on one profile row, but
    # for drift: built without DISTINCT, the send table is checked for a repeated (op, key)
    # (cheaper than making the changes distinct: ~1.1 s of CPU for 3.7M members); only if
    # one is found is it built again from the distinct changes, and a key on several profile
    # rows now is left out (cheaper than a window over every row; none can be when the table
    # declares its key unique)
    create("")
    if _repeated_keys(con):
        create("DISTINCT")
        if not declared_unique(con, profiles) and _repeated_keys(con):
            con.execute(
                f"DELETE FROM {SEND} WHERE (op, key) IN "
                f"(SELECT (op, key) FROM {SEND} GROUP BY op, key HAVING count(*) > 1)"
            )
    staged = dict(
        con.execute(
            f"SELECT op, count(*) FROM {CHANGES} WHERE {where} GROUP BY op",
            {"aid": activation_id, "grp": grp},
        ).fetchall()
    )
    read = {
        op: (usable, sendable)
        for op, usable, sendable in con.execute(
            f"SELECT op, count(*), count(*) FILTER (sendable) FROM {SEND} GROUP BY op"
        ).fetchall()
    }
    fields = tuple(e.field for e in identity.encodings)
    return {
        op: SendTable(op, fields, tuple(attribute_map), staged.get(op, 0), *read.get(op, (0, 0)))
        for op in SENT_OPS
    }


#: attribute types sent as text built in SQL (``{v}``: the value): a value with a time zone
#: in the workspace's zone (the session's), as the fingerprint reads it (an adapter would
#: render the instant in its own machine's zone, and Arrow drops a time's offset), ISO 8601's
#: ``T`` between date and time; 128-bit integers as their digits (Arrow carries them as
#: 38-digit decimals: the largest would wrap)
_AS_TEXT = {
    "TIMESTAMP WITH TIME ZONE": "replace(CAST({v} AS VARCHAR), ' ', 'T')",
    "TIME WITH TIME ZONE": "CAST({v} AS VARCHAR)",
    "HUGEINT": "CAST({v} AS VARCHAR)",
    "UHUGEINT": "CAST({v} AS VARCHAR)",
}


def _text_columns(
    con: duckdb.DuckDBPyConnection, profiles: ProfilesTable, columns: list[str]
) -> dict[str, str]:
    """Those of ``columns`` sent as text (:data:`_AS_TEXT`): column -> SQL over ``{v}``."""
    if not columns:
        return {}
    rows = con.execute(f"DESCRIBE {_ident(profiles.table)}").fetchall()
    types = {r[0]: str(r[1]).upper() for r in rows if r[0] in columns}
    return {c: _AS_TEXT[t] for c, t in types.items() if t in _AS_TEXT}


def admitted_sql(consent: str, suppressed: str | None) -> str | None:
    """When a staged change ``c`` (``c.key``, ``c.op``) of a profile row ``p`` is still sent
    or written: a member to add or update passes ``consent`` (SQL over ``p``) and is not in
    ``suppressed`` (a table of keys ``k``); removals always are. None: nothing to check."""
    checks = [] if consent == "TRUE" else [f"coalesce({consent}, FALSE)"]
    if suppressed:
        checks.append(f"NOT EXISTS (SELECT 1 FROM {suppressed} sx WHERE sx.k = c.key)")
    return f"(c.op NOT IN ('add', 'update') OR ({' AND '.join(checks)}))" if checks else None


def _repeated_keys(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether an (op, key) of the send table is on several rows. Distinct hashes are distinct
    keys: the keys themselves are counted only when two rows share a hash."""
    rows, hashes = con.execute(
        f"SELECT count(*), count(DISTINCT hash(op, key)) FROM {SEND}"
    ).fetchall()[0]
    if rows == hashes:
        return False
    rows, keys = con.execute(f"SELECT count(*), count(DISTINCT (op, key)) FROM {SEND}").fetchall()[
        0
    ]
    return bool(rows != keys)


class Columns:
    """One batch of the send table as read: an Arrow table (``key, rec, fp, v0.., a0..``)
    and each column as a Python list on first use (``cols["key"]``), cached."""

    def __init__(self, arrow: Any):
        self.arrow = arrow
        self._lists: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return int(self.arrow.num_rows)

    def __getitem__(self, name: str) -> list[Any]:
        if name not in self._lists:
            self._lists[name] = self.arrow.column(name).to_pylist()
        return self._lists[name]

    def lazy(self, name: str) -> LazyColumn:
        """The column converted only if an adapter reads it."""
        return LazyColumn(self.arrow.column(name))

    def records(self) -> RecordColumn:
        """The ``rec`` column as a :class:`RecordColumn` (flat strings, counts), lazily."""
        rec = self.arrow.column("rec").combine_chunks()
        return RecordColumn(LazyColumn(rec.flatten()), LazyColumn(rec.value_lengths()))


def stream(cursor: duckdb.DuckDBPyConnection, table: SendTable, *, sendable: bool, size: int):
    """The batches of one operation's rows of the send table (sendable or not), ``size``
    each, as :class:`Columns`: one streaming query reads them all as Arrow record batches,
    with no Python object per row until one is asked for. Rows come in no particular order;
    each batch is recorded from its own rows, so nothing scans the send table per batch.

    Every batch but the last holds exactly ``size`` rows: DuckDB's reader may hand out
    shorter record batches (at its row groups' edges), and a session's batches are counted
    and its last one flagged from the number of rows (Meta refuses a batch after the last)."""
    reader = cursor.sql(
        f"SELECT {table.columns} FROM {SEND} WHERE op = $op AND sendable = $s",
        params={"op": table.op, "s": sendable},
    ).to_arrow_reader(size)
    import pyarrow as pa

    pending: list[Any] = []
    held = 0
    try:
        for chunk in reader:
            if not chunk.num_rows:
                continue
            pending.append(chunk)
            held += chunk.num_rows
            while held >= size:
                rows = pa.Table.from_batches(pending)
                yield Columns(rows.slice(0, size).combine_chunks())
                pending, held = rows.slice(size).to_batches(), held - size
        if held:
            yield Columns(pa.Table.from_batches(pending).combine_chunks())
    finally:  # also when the caller stops early: the reader holds the query open
        reader.close()
