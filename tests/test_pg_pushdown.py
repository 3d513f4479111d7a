"""The membership diff inside PostgreSQL (``source.diff: postgres``) plans and applies
exactly what the diff in the engine (``source.diff: engine``) does, over random histories
on the real server — with the recorded members read in PostgreSQL (a PostgreSQL state in the
same database) or sent there as fingerprints (the embedded state) — and only the rows of
changing members travel into the engine."""

from __future__ import annotations

import random
import re

import duckdb
import psycopg
import pytest
from psycopg import sql

from destinations.base import DestinationContext
from reconciler.plan import membership, splits
from reconciler.plan.in_source import same_database
from reconciler.sources.pg_twins import (
    bucket_digest_pg,
    fingerprint_digest_pg,
    group_label_pg,
    lo64,
    text_equal,
)
from reconciler.workspace.activation_spec import SplitMode
from reconciler.workspace.spec import ProfilesTable
from tests.conftest import SANDBOX_YAML, WS, cli, plan_json
from tests.pg import PgDsn
from tests.seeding import Member, seed
from tests.state_workspace import sandbox
from tests.test_pg_source import set_pg_profiles

COLUMNS = (
    "customer_id text, email text, phone text, first_name text, country text, "
    "total_spend numeric(10,2), email_consent boolean, seg_a boolean, seg_b boolean, "
    "born date, visits integer"
)
ATTRIBUTES = "[first_name, country, total_spend, email_consent, seg_a, seg_b, born, visits]"
SEGMENTS = {
    "seg-a": "sql: SELECT customer_id FROM profiles WHERE seg_a\n",
    "seg-b": "sql: SELECT customer_id FROM profiles WHERE seg_b\n",
    # keys that are not in the profiles table, and a LIKE with a literal %
    "ghosts": "sql: |\n  SELECT 'zz' || customer_id FROM profiles WHERE seg_b AND visits > 8\n"
    "  UNION ALL SELECT customer_id FROM profiles WHERE email LIKE '%7@%'\n",
    "supp": "sql: SELECT customer_id FROM profiles WHERE total_spend < 5\n",
}
ACTIVATIONS = {
    "plain": "segments: [seg-a]\ndestination: sandbox\nname: Plain\nattributes: [FIRST_NAME]\n",
    "appended": "segments: [seg-a, seg-b]\ndestination: sandbox\nname: Appended\n"
    "action: append\nsplit: ab\nattributes: [FIRST_NAME, BORN, SPEND]\n",
    "purge": "segments: [seg-b]\ndestination: sandbox\naction: remove\n"
    "list: {existing: Existing}\n",
    "control": "segments: [ghosts, seg-b]\ndestination: sandbox\nname: Control\n"
    "split: control\ncontrol_percent: 30\nattributes: [VISITS]\n",
}
INTEGRATION = SANDBOX_YAML.replace(
    "  COUNTRY: country\n",
    "  COUNTRY: country\n  BORN: born\n  SPEND: total_spend\n  VISITS: visits\n",
)


def source_yaml(schema: str, diff: str, state: str) -> str:
    return f"""\
version: 1
timezone: UTC
source:
  type: postgres
  dsn: ${{env:RECONCILE_SOURCE_DSN}}
  schema: {schema}
  diff: {diff}
  profiles:
    table: profiles
    key: customer_id
    identifiers: {{email: email, phone: phone}}
    attributes: {ATTRIBUTES}
    default_phone_country: AU
{state}
suppression: [supp]
"""


def make_ws(root, schema: str, diff: str, state: str) -> WS:
    ws = WS(root)
    ws.write("reconcile.yaml", source_yaml(schema, diff, state))
    ws.write("integrations/sandbox.yaml", INTEGRATION)
    for name, text in SEGMENTS.items():
        ws.write(f"segments/{name}.yaml", text)
    for name, text in ACTIVATIONS.items():
        ws.write(f"activations/{name}.yaml", text)
    dest = sandbox(DestinationContext(root=ws.root, default_phone_country="AU"))
    try:  # the list `action: remove` removes from
        ref = dest.create_audience("Existing", idempotency_key="setup-existing")
        seed(dest, ref, [Member("f1", {"email": "someone@example.com"})], "setup-rows")
    finally:
        dest.close()
    return ws


def person(rng: random.Random, i: int) -> list:
    email = rng.choice([f"user{i}@example.com", f"User{i}@Example.com ", None, "broken"])
    phone = rng.choice([None, None, f"04{rng.randrange(10**8):08d}", "12"])
    return [
        f"c{i:04d}",
        email,
        phone,
        rng.choice(["Ann", "Bob", "Zoë", "", None]),
        rng.choice(["AU", "NZ"]),
        rng.choice([1, 10, 99.5, 12.25]),
        rng.random() < 0.85,
        rng.random() < 0.5,
        rng.random() < 0.4,
        rng.choice([None, "1990-02-03", "2001-12-31"]),
        rng.randrange(12),
    ]


def write_profiles(dsn: PgDsn, rows: list[list]) -> None:
    set_pg_profiles(dsn, rows, COLUMNS)


def churn(rng: random.Random, rows: list[list], n: int) -> list[list]:
    rows = [list(r) for r in rows if r[3] != "Twin"]  # last round's held keys are fixed
    for r in rng.sample(rows, k=len(rows) // 4):
        fresh = person(rng, int(r[0][1:]))
        for col in rng.sample(range(1, len(r)), k=2):
            r[col] = fresh[col]
    members = [r for r in rows if r[7] or r[8]]
    for r in rng.sample(members, k=4):  # leave (an appended audience keeps them)
        r[7] = r[8] = False
    leavers = [r for r in rows if not (r[7] or r[8])]
    for r in rng.sample(leavers, k=6):  # consent lost: removed under every action
        r[6] = False
    rows += [person(rng, n + k) for k in range(rng.randrange(1, 6))]
    for r in rng.sample(rows, k=3):  # a key on two profile rows: held
        twin = list(r)
        twin[3] = "Twin"
        rows.append(twin)
    rng.shuffle(rows)
    return rows


def comparable(plan: dict) -> list:
    keep = ("add", "remove", "update", "forget", "size_before", "size_after", "group", "name")
    return [
        (
            a["id"],
            a["change"],
            a["audience_size"],
            a["matchable"],
            a["excluded"],
            [{k: au[k] for k in keep} for au in a["audiences"]],
            [re.sub(r"\(e\.g\. [^)]*\)", "", w) for w in a["warnings"]],
        )
        for a in plan["activations"]
    ]


@pytest.mark.parametrize("state", ["embedded", "postgres"])
def test_diff_in_postgres_plans_and_applies_what_the_engine_does(
    tmp_path, pg_dsn, monkeypatch, state
):
    monkeypatch.setenv("RECONCILE_SOURCE_DSN", pg_dsn.base)
    monkeypatch.setenv("RECONCILE_STATE_DSN", pg_dsn.base)
    embedded = "state: {path: .reconcile/state.duckdb, allow_ephemeral: true}"
    in_pg = (
        "state: {backend: postgres, dsn: '${env:RECONCILE_STATE_DSN}', "
        f"schema: {pg_dsn.schema}_state}}"
    )
    engine = make_ws(tmp_path / "engine", pg_dsn.schema, "engine", embedded)
    pushed = make_ws(
        tmp_path / "pushed", pg_dsn.schema, "postgres", in_pg if state == "postgres" else embedded
    )
    rng = random.Random(f"pushdown-{state}")
    n = 160
    rows = [person(rng, i) for i in range(n)]
    try:
        for round_ in range(4):
            rows = churn(rng, rows, n) if round_ else rows
            n += 10
            if round_ == 3:  # a paused activation: only exclusions are applied
                for ws in (engine, pushed):
                    ws.write("activations/plain.yaml", ACTIVATIONS["plain"] + "paused: true\n")
                for r in rng.sample([r for r in rows if r[7] and r[6]], k=3):
                    r[3] = "Renamed"  # changed: not sent while paused
                for r in rng.sample([r for r in rows if r[7] and r[6]], k=3):
                    r[6] = False  # excluded: removed even while paused
            write_profiles(pg_dsn, rows)
            want = comparable(plan_json(engine, "--refresh=false"))
            got = comparable(plan_json(pushed, "--refresh=false"))
            assert got == want, f"round {round_}"
            for ws in (engine, pushed):
                res = cli(ws, "apply", "--auto-approve")
                assert res.exit_code == 0, res.output + res.stderr
            assert pushed.sandbox_keys() == engine.sandbox_keys(), f"round {round_}"
            assert any(engine.sandbox_keys().values())
        # the source fixed (no key on two rows) and applied: then nothing changed, and no
        # row of any member travels
        rows = [r for r in rows if r[3] != "Twin"]
        write_profiles(pg_dsn, rows)
        for ws in (engine, pushed):
            assert cli(ws, "apply", "--auto-approve").exit_code == 0
        assert pushed.sandbox_keys() == engine.sandbox_keys()
        res = cli(pushed, "-v", "plan", "--refresh=false")
        assert res.exit_code == 0, res.stderr
        said = res.stderr + res.output
        shipped = re.findall(r"membership diffed in PostgreSQL \(([^)]*)\); (\d+) row", said)
        assert len(shipped) == len(ACTIVATIONS), said
        assert {s[1] for s in shipped} == {"0"}, said
        read_there = "read there" if state == "postgres" else "sent as fingerprints"
        assert {s[0] for s in shipped} == {f"recorded members {read_there}"}
    finally:
        if state == "postgres":
            with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(f"{pg_dsn.schema}_state")
                    )
                )


def test_an_activation_diffed_in_the_engine_next_to_ones_diffed_in_postgres(
    tmp_path, pg_dsn, monkeypatch
):
    monkeypatch.setenv("RECONCILE_SOURCE_DSN", pg_dsn.base)
    embedded = "state: {path: .reconcile/state.duckdb, allow_ephemeral: true}"
    engine = make_ws(tmp_path / "engine", pg_dsn.schema, "engine", embedded)
    pushed = make_ws(tmp_path / "pushed", pg_dsn.schema, "postgres", embedded)
    attrs = "goal: sync_attributes\nsegments: [seg-a]\ndestination: sandbox\nname: Attrs\n"
    for ws in (engine, pushed):  # sync_attributes is diffed in the engine, and planned first
        ws.write("activations/attrs.yaml", attrs + "attributes: [FIRST_NAME, BORN]\n")
    rng = random.Random("mixed")
    rows = [person(rng, i) for i in range(120)]
    for round_ in range(2):
        rows = churn(rng, rows, 120) if round_ else rows
        write_profiles(pg_dsn, rows)
        want = comparable(plan_json(engine, "--refresh=false"))
        assert comparable(plan_json(pushed, "--refresh=false")) == want, f"round {round_}"
        for ws in (engine, pushed):
            res = cli(ws, "apply", "--auto-approve")
            assert res.exit_code == 0, res.output + res.stderr
        assert pushed.sandbox_keys() == engine.sandbox_keys(), f"round {round_}"


def test_one_changed_profile_of_many_moves_a_few_rows(tmp_path, pg_dsn, monkeypatch):
    monkeypatch.setenv("RECONCILE_SOURCE_DSN", pg_dsn.base)
    ws = make_ws(
        tmp_path / "ws",
        pg_dsn.schema,
        "postgres",
        "state: {path: .reconcile/state.duckdb, allow_ephemeral: true}",
    )
    for name in ("appended", "purge", "control"):
        ws.remove(f"activations/{name}.yaml")
    rows = [
        [f"c{i:04d}", f"u{i}@example.com", None, "Ann", "AU", 10, True, True, False, None, 1]
        for i in range(3000)
    ]
    write_profiles(pg_dsn, rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows[5][3] = "Changed"
    rows[6][7] = False  # leaves
    write_profiles(pg_dsn, rows)
    res = cli(ws, "-v", "plan", "--refresh=false")
    moved = re.search(r"; (\d+) row\(s\) of changing members copied in", res.stderr)
    assert moved is not None and 0 < int(moved.group(1)) <= 10, res.stderr
    assert "~1" in res.output and "-1" in res.output
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0 and "(+0 -1 ~1)" in res.output, res.output + res.stderr


# ---------------------------------------------------------------------- the twin expressions
def test_fingerprints_and_groups_are_computed_alike_in_both_databases(pg_dsn):
    """The PostgreSQL twins give the engine's values bit for bit, on the text the engine
    reads back from PostgreSQL (awkward values included)."""
    rng = random.Random(7)
    values = ["", " ", "é", "Zoë 😀", "a\tb", "x'y", "%", "\\", None, "0", "Ünïcødé " * 5]
    rows = [
        [
            f"k{i}",
            rng.choice(values),
            rng.choice(values),
            rng.choice([None, 0, -5, 2**40]),
            rng.choice([None, True, False]),
            rng.choice([None, "2024-02-29", "1970-01-01"]),
            rng.choice([None, "12.50", "-0.01", "99999999.99"]),
        ]
        for i in range(300)
    ]
    cols = "k text, a text, phone text, n bigint, b boolean, d date, m numeric(10,2)"
    with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {pg_dsn.schema}.t ({cols})")
        with conn.cursor().copy(f"COPY {pg_dsn.schema}.t FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        fp = fingerprint_digest_pg([("email", "a"), ("phone", "phone")], ["n", "b", "d", "m"], "au")
        control = group_label_pg("control", 30, "b.g1")
        ab = group_label_pg("ab", None, "b.g2")
        conn.execute("SET DateStyle = 'ISO, YMD'")
        pg = conn.execute(
            f"""SELECT b.k, {lo64("b.df")}, {control}, {ab}, a, phone, n, bo, d, m
            FROM (SELECT a.*, {lo64("a.d1")} AS g1, {lo64("a.d2")} AS g2
                  FROM (SELECT p.k, p.a, p.phone, p.n, p.b AS bo, p.d, p.m::text AS m,
                               {fp} AS df, {bucket_digest_pg("seed'1", "p.k")} AS d1,
                               {bucket_digest_pg("s", "p.k")} AS d2
                        FROM {pg_dsn.schema}.t p OFFSET 0) a OFFSET 0) b"""
        ).fetchall()
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE p (k VARCHAR, a VARCHAR, phone VARCHAR, n BIGINT, b BOOLEAN, d DATE, "
        "m DECIMAL(10,2))"
    )
    con.executemany("INSERT INTO p VALUES (?, ?, ?, ?, ?, ?, ?)", [[r[0], *r[4:]] for r in pg])
    profiles = ProfilesTable(
        table="p", key="k", identifiers={"email": "a", "phone": "phone"}, attributes=[]
    )
    fp_duck = membership.fingerprint_sql(profiles, ("email", "phone"), ["n", "b", "d", "m"], "au")
    control = splits.group_sql(SplitMode.CONTROL, 30, "'seed''1'", "p.k")
    ab_duck = splits.group_sql(SplitMode.AB, None, "'s'", "p.k")
    duck = {
        r[0]: r[1:]
        for r in con.execute(f"SELECT k, {fp_duck}, {control}, {ab_duck} FROM p p").fetchall()
    }
    assert len(pg) == 300
    for r in pg:
        assert (int(r[1]) % 2**64, r[2], r[3]) == duck[r[0]], r


def test_columns_whose_text_differs_keep_the_diff_in_the_engine():
    assert text_equal(("text", None, None)) and text_equal(("numeric", 12, 2))
    assert text_equal(("jsonb", None, None)) and text_equal(("uuid", None, None))
    for t in ("double precision", "real", "timestamp with time zone", "character"):
        assert not text_equal((t, None, None))
    assert not text_equal(("numeric", None, None))  # the engine reads it as a double


def test_same_database_compares_server_and_database():
    assert same_database("host=localhost dbname=crm", "postgresql://127.0.0.1:5432/crm")
    assert not same_database("host=db1 dbname=crm", "host=db2 dbname=crm")
    assert not same_database("host=db1 dbname=crm", "host=db1 dbname=state")
    assert not same_database("host=db1 port=5433 dbname=crm", "host=db1 dbname=crm")


def test_the_diff_transaction_is_read_only_with_the_time_limit(tmp_path, pg_dsn, monkeypatch):
    """The plan's one transaction turns READ ONLY after creating its temporary tables:
    a write that got past the guard is refused, and the statement timeout applies."""
    from reconciler.errors import SegmentError
    from reconciler.sources import open_source
    from reconciler.workspace.loader import load

    monkeypatch.setenv("RECONCILE_SOURCE_DSN", pg_dsn.base)
    ws = make_ws(
        tmp_path / "ws", pg_dsn.schema, "postgres", "state: {path: .reconcile/state.duckdb}"
    )
    text = (ws.root / "reconcile.yaml").read_text()
    ws.write(
        "reconcile.yaml",
        text.replace("  diff: postgres\n", "  diff: postgres\n  query_timeout: 2\n"),
    )
    write_profiles(pg_dsn, [person(random.Random(1), i) for i in range(5)])
    source = open_source(load(ws.root))
    source.diff_in_source = True
    con = duckdb.connect()
    try:
        source.attach(con)
        pd = source.pushdown
        assert pd is not None
        for attack in (
            "WITH d AS (DELETE FROM profiles RETURNING 1) SELECT count(*) FROM d",
            "SELECT 1 FROM profiles FOR UPDATE",
        ):
            with pytest.raises(SegmentError, match="read-only transaction"):
                pd.run(attack, where="segments/x.yaml:1", what="segment 'x'")
            pd.close()  # the failed statement ended the transaction; a new one opens
        cur = pd.cursor()
        assert cur.execute("SHOW transaction_read_only").fetchone() == ("on",)
        assert cur.execute("SHOW statement_timeout").fetchone()[0] not in ("0", None)
        with pytest.raises(SegmentError, match="time limit"):
            pd.run("SELECT pg_sleep(1000)", where="segments/x.yaml:1", what="segment 'x'")
    finally:
        source.close()
        con.close()
    with psycopg.connect(pg_dsn.base) as conn:
        table = sql.Identifier(pg_dsn.schema, "profiles")
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone() == (5,)


def test_an_apply_copies_only_the_profiles_of_the_plans_changes(tmp_path, pg_dsn, monkeypatch):
    from reconciler.sources import open_source
    from reconciler.workspace.loader import load

    monkeypatch.setenv("RECONCILE_SOURCE_DSN", pg_dsn.base)
    ws = make_ws(
        tmp_path / "ws", pg_dsn.schema, "postgres", "state: {path: .reconcile/state.duckdb}"
    )
    rows = [person(random.Random(3), i) for i in range(500)]
    rows.append(list(rows[7]))  # c0007 on two rows: both travel
    write_profiles(pg_dsn, rows)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE changes AS SELECT * FROM (VALUES ('c0003'), ('c0007'), ('zz9')) t(key)"
    )
    source = open_source(load(ws.root))
    source.only_keys_of = "(SELECT key AS k FROM memory.main.changes)"
    try:
        source.attach(con)
        assert source.pushdown is None  # nothing stays open during the apply
        got = con.execute("SELECT customer_id, email FROM profiles ORDER BY 1").fetchall()
    finally:
        source.close()
        con.close()
    assert got == [("c0003", rows[3][1]), ("c0007", rows[7][1]), ("c0007", rows[7][1])]
