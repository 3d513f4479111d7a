"""The send table is streamed in batches of exactly the batch size (the last one shorter).

A session's batches are counted from its number of rows and its last one is flagged, and
Meta refuses every batch after a flagged one: a short batch in the middle made an apply of
a few hundred thousand members fail part-way. DuckDB's Arrow reader hands out short record
batches at its row groups' edges, so the stream re-cuts them.
"""

from __future__ import annotations

import duckdb
import pytest

from reconciler.apply import encode


def _send_table(con: duckdb.DuckDBPyConnection, rows: int) -> None:
    con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {encode.SCRATCH}")
    # a filtered parallel scan: the rows arrive in uneven record batches
    con.execute(
        f"""CREATE OR REPLACE TABLE {encode.SEND} AS
        SELECT 'add' AS op, i::VARCHAR AS key, ['r' || i::VARCHAR] AS rec, 'f' AS fp,
               md5(i::VARCHAR) AS v0, i % 3 = 0 AS sendable
        FROM range({rows}) r(i)"""
    )


@pytest.mark.parametrize("size", [10_000, 4_096, 999])
def test_batches_hold_exactly_the_batch_size(size: int) -> None:
    con = duckdb.connect()
    _send_table(con, 900_000)
    table = encode.SendTable("add", ("email",), (), 300_000, 300_000, 300_000)
    batches = list(encode.stream(con.cursor(), table, sendable=True, size=size))
    sizes = [len(b) for b in batches]
    assert sizes[:-1] == [size] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= size
    assert len(batches) == -(-300_000 // size)  # the count a session numbers its batches by
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) == 300_000
    assert {int(k) % 3 for k in keys} == {0}
    # every column of a batch is one chunk of the same rows
    first = batches[0].arrow
    assert all(first.column(c).num_chunks == 1 for c in first.column_names)
    # a batch cut from the middle of a record batch reads back the same in SQL (the state
    # records it by registering its Arrow rows)
    middle = batches[1].arrow
    con.register("_b", middle)
    back = con.execute("SELECT key, rec FROM _b").fetchall()
    keys, recs = middle.column("key").to_pylist(), middle.column("rec").to_pylist()
    assert back == list(zip(keys, recs, strict=True))
    assert all(rec == ["r" + key] for key, rec in back)
    assert first.column("v0").to_pylist()[:3] == [
        con.execute("SELECT md5(?)", [k]).fetchone()[0] for k in first.column("key").to_pylist()[:3]
    ]


def test_the_unsendable_rows_stream_apart() -> None:
    con = duckdb.connect()
    _send_table(con, 10)
    table = encode.SendTable("add", ("email",), (), 10, 10, 4)
    batches = list(encode.stream(con.cursor(), table, sendable=False, size=4))
    assert [len(b) for b in batches] == [4, 2]
    assert sorted(int(k) for b in batches for k in b["key"]) == [1, 2, 4, 5, 7, 8]


def _build(con: duckdb.DuckDBPyConnection, changes: list[tuple[str, str]]) -> dict:
    """The send table of ``changes`` ((op, key) staged for activation a, group all) over a
    profiles table where key k2 is on two rows."""
    from destinations.base import Identity
    from destinations.identity import SANDBOX
    from reconciler.enginedb import STAGING
    from reconciler.workspace.spec import ProfilesTable

    con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {STAGING}")
    con.execute(
        f"CREATE OR REPLACE TABLE {STAGING}.changes "
        "(activation_id VARCHAR, grp VARCHAR, op VARCHAR, key VARCHAR)"
    )
    con.executemany(f"INSERT INTO {STAGING}.changes VALUES ('a', 'all', ?, ?)", changes)
    con.execute(
        """CREATE OR REPLACE TABLE profiles AS SELECT * FROM (VALUES
        ('k1', 'one@example.com'), ('k2', 'two@example.com'), ('k2', 'dup@example.com'),
        ('k3', 'three@example.com')) t(customer_id, email)"""
    )
    profiles = ProfilesTable(identifiers={"email": "email"})
    return encode.build(
        con,
        activation_id="a",
        grp="all",
        identity=Identity(SANDBOX, ("email",)),
        profiles=profiles,
        attribute_map={},
        fingerprint="0::UBIGINT",
    )


def _sent(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return sorted(con.execute(f"SELECT op, key FROM {encode.SEND}").fetchall())


def test_a_change_staged_twice_is_sent_once_and_a_repeated_profile_key_not_at_all() -> None:
    con = duckdb.connect()
    tables = _build(con, [("add", "k1"), ("add", "k1"), ("add", "k2"), ("update", "k3")])
    assert _sent(con) == [("add", "k1"), ("update", "k3")]
    # k2 is on two profile rows: drift, left out (staged, not usable)
    assert (tables["add"].staged, tables["add"].usable) == (3, 1)
    # without a repeat, one build (no DISTINCT pass) gives the same rows
    _build(con, [("add", "k1"), ("update", "k3")])
    assert _sent(con) == [("add", "k1"), ("update", "k3")]
