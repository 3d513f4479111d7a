"""The PostgreSQL source against the real server: plan/apply end to end to the sandbox, the
guard and read-only transaction, the statement timeout, data-free errors and wrong DSNs."""

from __future__ import annotations

import duckdb
import psycopg
import pytest
from psycopg import sql

from reconciler.errors import SegmentError
from reconciler.sources import pg_connect
from tests.conftest import (
    RECONCILE_YAML,
    SEGMENTS,
    allow_ephemeral_state,
    audience_counts,
    cli,
    plan_json,
    profile,
)
from tests.pg import PgDsn

MAINTAIN = """\
segments: [seg-a]
destination: sandbox
name: Audience A
attributes: [FIRST_NAME]
"""
PG_COLUMNS = (
    "customer_id text, email text, phone text, first_name text, country text, "
    "total_spend double precision, email_consent boolean, seg_a boolean, seg_b boolean"
)


def pg_yaml(schema: str, extra: str = "") -> str:
    return RECONCILE_YAML.replace(
        "  type: duckdb\n  path: data/profiles.duckdb\n",
        f"  type: postgres\n  dsn: ${{env:RECONCILE_SOURCE_DSN}}\n  schema: {schema}\n{extra}",
    )


def set_pg_profiles(dsn: PgDsn, rows: list, columns: str = PG_COLUMNS) -> None:
    """(Re)create the profiles table with ``columns`` and ``rows`` (dicts or lists)."""
    table = sql.Identifier(dsn.schema, "profiles")
    with psycopg.connect(dsn.base) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        cur.execute(sql.SQL(f"CREATE TABLE {{}} ({columns})").format(table))
        with cur.copy(sql.SQL("COPY {} FROM STDIN").format(table)) as copy:
            for r in rows:
                copy.write_row(list(r.values()) if isinstance(r, dict) else r)


@pytest.fixture
def pg_workspace(workspace, pg_dsn, monkeypatch):
    monkeypatch.setenv("RECONCILE_SOURCE_DSN", pg_dsn.base)

    def make(activations=None, *, rows=(), segments=None, extra="", integration=None):
        kwargs = {"integration": integration} if integration else {}
        ws = workspace(
            activations,
            segments=segments if segments is not None else SEGMENTS,
            reconcile_yaml=pg_yaml(pg_dsn.schema, extra),
            **kwargs,
        )
        set_pg_profiles(pg_dsn, list(rows))
        ws.pg = pg_dsn
        return ws

    return make


def test_plan_apply_replan_against_postgres(pg_workspace):
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=i < 10) for i in range(20)])
    plan = plan_json(ws)
    assert audience_counts(plan, "act") == {"all": (10, 0, 0)}
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 10
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
    # churn in PostgreSQL: 0..2 leave, 10..11 enter, 5 renamed, 7 loses consent
    set_pg_profiles(
        ws.pg,
        [
            profile(i, a=3 <= i < 12, name="Renamed" if i == 5 else None, consent=i != 7)
            for i in range(20)
        ],
    )
    plan = plan_json(ws)
    assert audience_counts(plan, "act") == {"all": (2, 4, 1)}
    assert plan["activations"][0]["excluded"]["consent"] == 1
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert len(ws.sandbox_keys()["Audience A"]) == 8
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
    seg = cli(ws, "segments", "seg-a")
    assert seg.exit_code == 0 and "9 profiles" in seg.output and "c00003" in seg.output


@pytest.mark.parametrize(
    "sql_text,reason",
    [
        ("DELETE FROM profiles", "only a SELECT"),
        ("SELECT customer_id FROM profiles; DROP TABLE profiles", "found 2"),
        ("SELECT relname FROM pg_catalog.pg_class", "catalog"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        (
            "SELECT customer_id FROM profiles WHERE set_config('a.b', 'c', false) = 'c'",
            "set_config",
        ),
        ("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a text)", "table functions"),
    ],
)
def test_hostile_segment_sql_is_refused_and_nothing_runs(pg_workspace, sql_text, reason):
    ws = pg_workspace(
        {"act": MAINTAIN},
        rows=[profile(i, a=True) for i in range(3)],
        segments={"seg-a": f"sql: {sql_text!r}\n"},
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "segments/seg-a.yaml" in res.stderr and reason in res.stderr
    assert "Traceback" not in res.stderr
    with psycopg.connect(ws.pg.base) as conn:
        n = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(ws.pg.schema, "profiles"))
        ).fetchone()
    assert n == (3,)


def test_read_only_even_if_the_guard_were_bypassed(pg_workspace):
    from reconciler.sources import open_source
    from reconciler.workspace.loader import load

    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=True) for i in range(3)])
    source = open_source(load(ws.root))
    try:
        for attack in (
            "WITH d AS (DELETE FROM profiles RETURNING 1) SELECT count(*) FROM d",
            "SELECT 1 FROM profiles FOR UPDATE",
        ):
            with pytest.raises(SegmentError, match="read-only transaction"):
                source.fetch(attack, "segments/x.yaml:1", "the query")
        with (
            pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
            pg_connect.untrusted(source.connection(), ws.pg.schema, 5, "x", "the query") as cur,
        ):
            cur.execute("CREATE TABLE stolen AS SELECT * FROM profiles")
        # a setting changed inside is rolled back with the transaction
        with pg_connect.untrusted(source.connection(), ws.pg.schema, 5, "x", "q") as cur:
            cur.execute("SELECT set_config('default_transaction_read_only', 'off', false)")
        with pg_connect.untrusted(source.connection(), ws.pg.schema, 5, "x", "q") as cur:
            cur.execute("SHOW transaction_read_only")
            assert cur.fetchone() == ("on",)
    finally:
        source.close()
    with psycopg.connect(ws.pg.base) as conn:
        table = sql.Identifier(ws.pg.schema, "profiles")
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone() == (3,)


def test_statement_timeout_stops_a_slow_segment(pg_workspace):
    slow = (
        "sql: SELECT a.customer_id FROM profiles a, profiles b, profiles c, profiles d "
        "WHERE md5(a.email || b.email || c.email || d.email) = 'x'\n"
    )
    ws = pg_workspace(
        {"act": MAINTAIN},
        rows=[profile(i, a=True) for i in range(120)],
        segments={"seg-a": slow},
        extra="  query_timeout: 0.5\n",
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "segments/seg-a.yaml" in res.stderr
    assert "was stopped after 0.5 s" in res.stderr and "query_timeout" in res.stderr


def test_data_errors_do_not_quote_rows(pg_workspace):
    ws = pg_workspace(
        {"act": MAINTAIN},
        rows=[profile(i, a=True) for i in range(3)],
        segments={"seg-a": "sql: SELECT CAST(email AS integer) FROM profiles\n"},
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "Conversion Error" in res.stderr and "segments/seg-a.yaml" in res.stderr
    assert "@example.com" not in res.stderr + res.output


def test_consent_condition_runs_in_postgres_and_is_guarded(pg_workspace):
    from tests.conftest import SANDBOX_YAML

    ws = pg_workspace(
        {"act": MAINTAIN},
        rows=[profile(i, a=True, consent=i % 2 == 0) for i in range(10)],
        integration=SANDBOX_YAML.replace(
            "consent: email_consent", "consent: email_consent AND country = 'AU'"
        ),
    )
    plan = plan_json(ws)
    assert audience_counts(plan, "act") == {"all": (5, 0, 0)}
    bad = SANDBOX_YAML.replace("consent: email_consent", "consent: current_setting('x') = 'y'")
    ws.write("integrations/sandbox.yaml", bad)
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "integrations/sandbox.yaml" in res.stderr
    assert "current_setting" in res.stderr


def test_wrong_dsn_is_a_clear_error_with_the_password_masked(pg_workspace, monkeypatch):
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(0, a=True)])
    monkeypatch.setenv("RECONCILE_SOURCE_DSN", "postgresql://reader:hunter2secret@127.0.0.1:1/test")
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert (
        "cannot connect to the PostgreSQL source postgresql://127.0.0.1:1/test as reader"
        in res.stderr
    )
    assert "reconcile.yaml" in res.stderr and "source.dsn" in res.stderr
    assert "hunter2secret" not in res.stderr + res.output and "Traceback" not in res.stderr

    monkeypatch.setenv("RECONCILE_SOURCE_DSN", "host=127.0.0.1 password=hunter2secret =oops")
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "not a valid PostgreSQL connection string" in res.stderr
    assert "hunter2secret" not in res.stderr + res.output

    monkeypatch.delenv("RECONCILE_SOURCE_DSN")
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "RECONCILE_SOURCE_DSN, which is not set" in res.stderr
    res = cli(ws, "validate")
    assert res.exit_code == 1 and "reconcile.yaml:5: source.dsn:" in res.stderr
    assert "RECONCILE_SOURCE_DSN, which is not set" in res.stderr


def test_a_literal_password_in_the_dsn_is_refused(pg_workspace):
    ws = pg_workspace({"act": MAINTAIN})
    ws.write(
        "reconcile.yaml",
        pg_yaml(ws.pg.schema).replace(
            "${env:RECONCILE_SOURCE_DSN}", "postgresql://u:pw@127.0.0.1/test"
        ),
    )
    res = cli(ws, "validate")
    assert res.exit_code == 1 and "reconcile.yaml" in res.stderr and "password" in res.stderr
    assert "pw@" not in res.stderr


def test_demo_rows_in_postgres_equal_the_duckdb_demo(tmp_path, pg_dsn):
    from datetime import date

    import duckdb

    from reconciler.sources import demo, pg_demo

    as_of = date(2026, 1, 15)
    demo.generate(tmp_path / "d.duckdb", 300, as_of=as_of)
    con = duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True)
    want = con.execute("SELECT * FROM profiles ORDER BY customer_id").fetchall()
    con.close()
    with psycopg.connect(pg_dsn.base) as conn:
        pg_demo.fill(conn, pg_dsn.schema, "profiles", 300, as_of, tmp_path)
        got = conn.execute(
            sql.SQL('SELECT * FROM {} ORDER BY customer_id COLLATE "C"').format(
                sql.Identifier(pg_dsn.schema, "profiles")
            )
        ).fetchall()
    assert [tuple(r) for r in got] == want


def test_every_allowed_function_exists_in_postgres_and_returns_no_set(pg_dsn):
    from reconciler.sources.pg_guard import ALLOWED

    keywords = {"cast", "extract", "position", "substring", "coalesce", "nullif", "greatest",
                "least", "current_date", "current_timestamp", "localtimestamp", "trim"}  # fmt: skip
    with psycopg.connect(pg_dsn.base) as conn:
        rows = conn.execute(
            "SELECT proname, bool_or(proretset) FROM pg_proc GROUP BY proname"
        ).fetchall()
    functions = dict(rows)
    assert sorted(ALLOWED - set(functions) - keywords) == []
    # none returns a set (a set-returning function multiplies rows like a table function)
    assert sorted(n for n in ALLOWED if functions.get(n)) == []


def test_the_postgres_example_workspace_plans_applies_and_is_then_empty(
    tmp_path, pg_dsn, monkeypatch
):
    import shutil
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "postgres"
    root = tmp_path / "example"
    shutil.copytree(example, root)
    allow_ephemeral_state(root)
    text = (root / "reconcile.yaml").read_text()
    text = text.replace("schema: reconcile_demo", f"schema: {pg_dsn.schema}")
    (root / "reconcile.yaml").write_text(
        text.replace("demo_profiles: 50000", "demo_profiles: 2000")
    )
    monkeypatch.setenv("RECONCILE_SOURCE_DSN", pg_dsn.base)

    class Root:  # what cli() needs
        pass

    ws = Root()
    ws.root = root
    assert cli(ws, "validate").exit_code == 0
    seg = cli(ws, "segments")
    assert seg.exit_code == 0 and "vip:" in seg.output, seg.stderr
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.stderr
    assert "vip-ab-test: Complete" in res.output
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_freshness_sql_runs_in_postgres(pg_workspace):
    from datetime import UTC, datetime

    from reconciler.plan.schedule import last_refresh
    from reconciler.sources import open_source, sql_policy
    from reconciler.workspace.loader import load

    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=True) for i in range(3)])
    loaded = load(ws.root)
    source = open_source(loaded)
    kwargs = dict(
        as_of=datetime(2026, 1, 2, tzinfo=UTC),
        timezone="UTC",
        dialect="postgres",
        where="reconcile.yaml:9: source.freshness_sql",
        policy=sql_policy(loaded.config.source),
        fetch=source.fetch,
    )
    try:
        sql_text = "SELECT max(CAST('2025-12-31 06:00:00' AS timestamp)) FROM profiles"
        assert last_refresh(None, sql_text, **kwargs) == datetime(2025, 12, 31, 6, tzinfo=UTC)
        with pytest.raises(SegmentError, match="freshness_sql: function pg_postmaster"):
            last_refresh(None, "SELECT pg_postmaster_start_time()", **kwargs)
    finally:
        source.close()


def test_a_value_the_engine_cannot_read_is_a_clear_error_without_data(pg_workspace):
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=True) for i in range(3)])
    table = sql.Identifier(ws.pg.schema, "profiles")
    with psycopg.connect(ws.pg.base) as conn:  # a date DuckDB has no room for
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN born date").format(table))
        conn.execute(sql.SQL("UPDATE {} SET born = '4000-01-01 BC'").format(table))
    ws.write(
        "reconcile.yaml", pg_yaml(ws.pg.schema).replace("seg_a, seg_b]", "seg_a, seg_b, born]")
    )
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML_BORN)
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert "could not be read into the engine" in res.stderr and "reconcile.yaml" in res.stderr
    assert "column(s) 'born'" in res.stderr  # which column, never which value
    assert "4000" not in res.stderr


def test_a_numeric_nan_names_its_column(pg_workspace):
    """numeric(12,2) holds 'NaN', DuckDB's DECIMAL cannot: the error names the column."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[], integration=SANDBOX_YAML_BORN)
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML_BORN.replace("born", "total_spend"))
    rows = [profile(1, a=True) | {"total_spend": "NaN"}]
    set_pg_profiles(ws.pg, rows, PG_COLUMNS.replace("double precision", "numeric(12,2)"))
    for command in (["plan"], ["apply", "--auto-approve"]):
        res = cli(ws, *command)
        assert res.exit_code == 1 and "Traceback" not in res.stderr
        assert "column(s) 'total_spend' (read as DECIMAL(12,2))" in res.stderr, res.stderr


SANDBOX_YAML_BORN = """\
type: sandbox
consent: email_consent
attributes: {FIRST_NAME: first_name, BORN: born}
config:
  path: .reconcile/sandbox.duckdb
  identifiers: [email]
"""


@pytest.mark.parametrize("stop", ["pg_terminate_backend", "pg_cancel_backend"])
def test_the_server_going_away_mid_plan_is_a_clear_error(pg_workspace, stop):
    """A query an administrator stops (or a server shutting down) is a failure of the
    source, never reported as the segment's own time limit (the same SQLSTATE family)."""
    import threading
    import time

    slow = (
        "sql: SELECT a.customer_id FROM profiles a, profiles b, profiles c, profiles d "
        "WHERE md5(a.email || b.email || c.email || d.email) = 'x'\n"
    )
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=True) for i in range(120)],
                      segments={"seg-a": slow}, extra="  query_timeout: 60\n")  # fmt: skip

    done = threading.Event()

    def kill_while_running() -> None:
        # every matching query until the plan returns: a quick probe of the SQL may be the
        # first one seen (on a loaded machine), and the slow query comes after it
        with psycopg.connect(ws.pg.base, autocommit=True) as conn:
            while not done.is_set():
                conn.execute(
                    f"SELECT count({stop}(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'reconcile' AND query ILIKE %s "
                    "AND state = 'active'",
                    ["%md5%"],
                ).fetchone()
                time.sleep(0.05)

    killer = threading.Thread(target=kill_while_running)
    killer.start()
    try:
        res = cli(ws, "plan")
    finally:
        done.set()
        killer.join()
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert "PostgreSQL source postgresql://" in res.stderr and "failed" in res.stderr, res.stderr
    assert "time limit" not in res.stderr and "fix the SQL" not in res.stderr


ROUND_TRIP = [
    "SELECT customer_id FROM profiles WHERE email ILIKE '%EXAMPLE.COM' AND total_spend > 5",
    "SELECT customer_id FROM profiles WHERE country = ANY(ARRAY['AU', 'NZ']) AND seg_a",
    "SELECT customer_id FROM profiles p WHERE EXISTS (SELECT 1 FROM profiles q "
    "WHERE q.first_name = p.first_name AND q.customer_id <> p.customer_id)",
    "SELECT customer_id FROM profiles WHERE first_name SIMILAR TO '(Name1|Name2)%'",
    "SELECT DISTINCT ON (country) customer_id FROM profiles ORDER BY country, customer_id",
    "SELECT customer_id FROM profiles WHERE substring(email from 1 for 5) = 'user1'",
    "SELECT customer_id FROM profiles WHERE split_part(email, '@', 2) LIKE 'example.%' "
    "AND NOW() - INTERVAL '1 day' < NOW()",
    "SELECT customer_id FROM profiles WHERE (total_spend / nullif(0, 0)) IS NULL -- note",
]


def test_postgres_runs_what_was_written(pg_workspace):
    """The regenerated query (what PostgreSQL runs) selects what the written one does."""
    from reconciler.sources import sql_policy
    from reconciler.sources.guard import check_segment_sql
    from reconciler.workspace.loader import load

    rows = [profile(i, a=i % 3 == 0, name=f"Name{i % 4}") for i in range(30)]
    ws = pg_workspace({"act": MAINTAIN}, rows=rows)
    policy = sql_policy(load(ws.root).config.source)
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(ws.pg.schema)))
        for text in ROUND_TRIP:
            ran = check_segment_sql(text, "postgres", policy=policy)
            want = conn.execute(f"SELECT array_agg(k ORDER BY k) FROM ({text}\n) q(k)").fetchone()
            got = conn.execute(f"SELECT array_agg(k ORDER BY k) FROM ({ran}) q(k)").fetchone()
            assert got == want and want[0], text


SANDBOX_YAML_BIG = SANDBOX_YAML_BORN.replace("BORN: born", "BIG: big")


def test_an_unbounded_numeric_keeps_every_digit(pg_workspace):
    """PostgreSQL's `numeric` without a precision holds more digits than a double: it is read
    as its exact text, sent as such, and a change in its last digit is seen."""
    act = MAINTAIN.replace("[FIRST_NAME]", "[FIRST_NAME, BIG]")
    ws = pg_workspace({"act": act}, rows=[profile(i, a=True) for i in range(2)])
    table = sql.Identifier(ws.pg.schema, "profiles")
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN big numeric").format(table))
        conn.execute(sql.SQL("UPDATE {} SET big = 12345678901234567890.12").format(table))
    ws.write("reconcile.yaml", pg_yaml(ws.pg.schema).replace("seg_a, seg_b]", "seg_a, seg_b, big]"))
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML_BIG)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile/sandbox.duckdb"), read_only=True)
    try:
        sent = {r[0] for r in con.execute("SELECT attributes FROM member_log").fetchall()}
    finally:
        con.close()
    assert all("12345678901234567890.12" in a for a in sent), sent
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("UPDATE {} SET big = 12345678901234567890.13").format(table))
    plan = plan_json(ws)
    assert audience_counts(plan, "act") == {"all": (0, 0, 2)}


@pytest.mark.parametrize(
    "numeric,value,text", [("numeric(5,-2)", 12345, "12300"), ("numeric(2,5)", 0.000123, "0.00012")]
)
def test_a_numeric_scale_the_engine_has_not_is_read_as_text(pg_workspace, numeric, value, text):
    """PostgreSQL 15's negative scale and scale above the precision have no DECIMAL twin in
    the engine: such a column is read as its exact text instead of failing the plan."""
    act = MAINTAIN.replace("[FIRST_NAME]", "[FIRST_NAME, BIG]")
    ws = pg_workspace({"act": act}, rows=[profile(i, a=True) for i in range(2)])
    table = sql.Identifier(ws.pg.schema, "profiles")
    with psycopg.connect(ws.pg.base) as conn:
        if conn.info.server_version < 150000:
            pytest.skip("PostgreSQL before 15 has no such scale")
        conn.execute(sql.SQL(f"ALTER TABLE {{}} ADD COLUMN big {numeric}").format(table))
        conn.execute(sql.SQL("UPDATE {} SET big = %s").format(table), [value])
    ws.write("reconcile.yaml", pg_yaml(ws.pg.schema).replace("seg_a, seg_b]", "seg_a, seg_b, big]"))
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML_BIG)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(ws.root / ".reconcile/sandbox.duckdb"), read_only=True)
    try:
        sent = {r[0] for r in con.execute("SELECT attributes FROM member_log").fetchall()}
    finally:
        con.close()
    assert all(text in a for a in sent), sent
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_jsonb_identifier_column_is_refused_by_name(pg_workspace):
    """A jsonb e-mail would be hashed with its quotes: refused, naming the setting."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=True) for i in range(2)])
    table = sql.Identifier(ws.pg.schema, "profiles")
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER email TYPE jsonb USING to_jsonb(email)").format(table)
        )
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "source.profiles.identifiers.email" in res.output + res.stderr
    assert "jsonb" in res.output + res.stderr


def test_a_real_phone_column_is_refused_by_name(pg_workspace):
    """A real holds about 7 significant digits: every phone in it is already a wrong number.
    Refused, naming the setting; a double precision phone column is accepted."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[])
    rows = [profile(i, a=True) | {"phone": 61412345670 + i} for i in range(2)]
    set_pg_profiles(ws.pg, rows, PG_COLUMNS.replace("phone text", "phone real"))
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "source.profiles.identifiers.phone" in res.stderr, res.stderr
    assert "REAL (about 7 significant digits)" in res.stderr and "'phone'" in res.stderr
    set_pg_profiles(ws.pg, rows, PG_COLUMNS.replace("phone text", "phone double precision"))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr


def test_an_inet_attribute_converges(pg_workspace):
    """`CAST(inet AS text)` keeps a /32 that COPY drops: the diff in PostgreSQL must not
    compare the two texts (every plan showed ~1 and every apply re-sent it)."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[])
    row = profile(1, a=True) | {"first_name": "192.168.0.1"}
    set_pg_profiles(ws.pg, [row], PG_COLUMNS.replace("first_name text", "first_name inet"))
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    res = cli(ws, "plan", "--detailed-exitcode")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("diff", ["postgres", "engine"])
def test_a_char_n_key_is_sent_and_settles(pg_workspace, diff):
    """A char(10) key: segment keys become text in PostgreSQL (padding dropped), so the
    copied profiles' keys must too, or no segment key is ever a profile key."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[], extra=f"  diff: {diff}\n")
    rows = [profile(i, a=True) for i in range(3)]
    set_pg_profiles(ws.pg, rows, PG_COLUMNS.replace("customer_id text", "customer_id char(10)"))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 3
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_composite_identifier_column_is_refused_and_an_enum_is_not(pg_workspace):
    """A composite's text is `(a,b)`: refused by name. An enum's text is its value."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=True) for i in range(2)])
    table = sql.Identifier(ws.pg.schema, "profiles")
    schema = sql.Identifier(ws.pg.schema)
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("CREATE TYPE {}.addr AS (e text)").format(schema))
        conn.execute(
            sql.SQL(
                "CREATE TYPE {}.kind AS ENUM ('user0@example.com', 'user1@example.com')"
            ).format(schema)
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER email TYPE {}.kind USING email::{}.kind").format(
                table, schema, schema
            )
        )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 2
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ALTER email TYPE {}.addr USING ROW(email::text)::{}.addr"
            ).format(table, schema, schema)
        )
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "source.profiles.identifiers.email" in res.stderr and "composite" in res.stderr


@pytest.mark.parametrize("diff", ["postgres", "engine"])
def test_a_materialized_view_is_a_profiles_table(pg_workspace, diff):
    """A dbt-built `profiles` is often a materialized view, which information_schema does not
    list (it said "no table"): it plans, applies and settles, and a plan reads what the view
    holds — a change in the table under it is seen once the view is refreshed."""
    ws = pg_workspace(
        {"act": MAINTAIN}, rows=[profile(i, a=i < 4) for i in range(6)], extra=f"  diff: {diff}\n"
    )
    base = sql.Identifier(ws.pg.schema, "profiles_base")
    view = sql.Identifier(ws.pg.schema, "profiles")
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO profiles_base").format(view))
        conn.execute(sql.SQL("CREATE MATERIALIZED VIEW {} AS SELECT * FROM {}").format(view, base))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 4
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("UPDATE {} SET seg_a = true").format(base))
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0  # not refreshed yet
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(view))
    assert audience_counts(plan_json(ws), "act") == {"all": (2, 0, 0)}


@pytest.fixture
def reader_role(pg_dsn):
    """A login role with no privilege on the test's schema (dropped afterwards)."""
    import uuid

    role = f"reader_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize(
    "grants,wanted",
    [
        # found at introspection: no SELECT, or no USAGE on the schema
        (["GRANT USAGE ON SCHEMA {schema} TO {role}"], "GRANT SELECT ON {schema}.profiles TO"),
        ([], "GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON {schema}.profiles TO"),
        # found when first read: the segment's columns only, not the identifiers
        (
            [
                "GRANT USAGE ON SCHEMA {schema} TO {role}",
                "GRANT SELECT (customer_id, seg_a) ON {schema}.profiles TO {role}",
            ],
            "GRANT SELECT ON {schema}.profiles TO",
        ),
    ],
    ids=["no-select", "no-usage", "some-columns"],
)
def test_a_profiles_table_the_role_may_not_read_says_what_to_grant(
    pg_workspace, reader_role, monkeypatch, grants, wanted
):
    """Not "has no table" (information_schema hides what a role may not read), not a raw
    trace: the table, the role and the GRANT, and never the DSN's password."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(i, a=True) for i in range(3)])
    names = {"schema": ws.pg.schema, "role": reader_role}
    with psycopg.connect(ws.pg.base, autocommit=True) as conn:
        for grant in grants:
            conn.execute(grant.format(**names))
    dsn = psycopg.conninfo.make_conninfo(ws.pg.base, user=reader_role, password="hunter2secret")
    monkeypatch.setenv("RECONCILE_SOURCE_DSN", dsn)
    res = cli(ws, "plan")
    out = res.output + res.stderr
    assert res.exit_code == 1 and "Traceback" not in out
    assert f"the role '{reader_role}' may not read '{ws.pg.schema}.profiles'" in out, out
    assert wanted.format(**names) in out and "has no table" not in out
    assert "reconcile.yaml" in out and "source.profiles.table" in out
    assert "hunter2secret" not in out


def test_the_catalog_reads_every_kind_of_relation_as_information_schema_types_it(pg_workspace):
    """Column types come from pg_attribute (information_schema lists no materialized view)
    but keep information_schema's spelling, which the type mappings compare against; a
    view, materialized view and partitioned table read like the table."""
    from reconciler.sources import open_source
    from reconciler.sources.pg_catalog import _UDT_NAMES, KINDS
    from reconciler.workspace.loader import load

    ws = pg_workspace({"act": MAINTAIN})
    schema = sql.Identifier(ws.pg.schema)
    wide = (
        f"{PG_COLUMNS}, v varchar(80), n12 numeric(12,2), n numeric, i integer, b bigint, "
        "c char(10), ts timestamptz, t time, arr text[], money_ money, ip inet, j jsonb, "
        "d {s}.amount, dd {s}.amounts, e {s}.kind, r {s}.pair, u uuid"
    )
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("CREATE DOMAIN {}.amount AS numeric(9,3)").format(schema))
        conn.execute(sql.SQL("CREATE DOMAIN {}.amounts AS int[]").format(schema))
        conn.execute(sql.SQL("CREATE TYPE {}.kind AS ENUM ('a', 'b')").format(schema))
        conn.execute(sql.SQL("CREATE TYPE {}.pair AS (x int, y int)").format(schema))
    set_pg_profiles(ws.pg, [], wide.format(s=ws.pg.schema))
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("ALTER TABLE {}.profiles DROP COLUMN i").format(schema))
        want = conn.execute(
            "SELECT column_name, data_type, numeric_precision, numeric_scale "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = "
            "'profiles' ORDER BY ordinal_position",
            [ws.pg.schema],
        ).fetchall()
        conn.execute(sql.SQL("ALTER TABLE {}.profiles RENAME TO base").format(schema))
    kinds = {
        "view": "CREATE VIEW {}.profiles AS SELECT * FROM {}.base",
        "materialized view": "CREATE MATERIALIZED VIEW {}.profiles AS SELECT * FROM {}.base",
        "partitioned table": "CREATE TABLE {}.profiles (LIKE {}.base) PARTITION BY LIST (u)",
    }
    assert {r[0]: r[1] for r in want}["e"] == "USER-DEFINED" and len(want) == 25
    for kind, ddl in kinds.items():
        with psycopg.connect(ws.pg.base) as conn:
            if kind != "view":  # drop the one before
                before = "VIEW" if kind == "materialized view" else "MATERIALIZED VIEW"
                conn.execute(sql.SQL(f"DROP {before} {{}}.profiles").format(schema))
            conn.execute(sql.SQL(ddl).format(schema, schema))
        source = open_source(load(ws.root))
        try:
            found = source.profiles_catalog
            got = found.columns()
            assert found.relation is not None and KINDS[found.relation.kind] == kind
            assert [(c, *t) for c, t in got.items()] == [tuple(r) for r in want], kind
            udts = found._query(_UDT_NAMES, [found.relation.oid, ["e", "r", "email"]])
            assert dict(udts) == {"e": "kind", "r": "composite", "email": "text"}
        finally:
            source.close()


def test_a_table_a_segment_reads_and_the_role_may_not_is_named(
    pg_workspace, reader_role, monkeypatch
):
    """The profiles table is readable, a segment's other table is not: the segment's file,
    the server's reason (which table) and what to grant, not "fix the SQL"."""
    segments = {"seg-a": "sql: SELECT customer_id FROM orders\n", "seg-b": SEGMENTS["seg-b"]}
    ws = pg_workspace(
        {"act": MAINTAIN},
        rows=[profile(i, a=True) for i in range(3)],
        segments=segments,
        extra="  tables: [orders]\n",
    )
    schema, role = sql.Identifier(ws.pg.schema), sql.Identifier(reader_role)
    with psycopg.connect(ws.pg.base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {}.orders (customer_id text)").format(schema))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role))
        conn.execute(sql.SQL("GRANT SELECT ON {}.profiles TO {}").format(schema, role))
    monkeypatch.setenv(
        "RECONCILE_SOURCE_DSN", psycopg.conninfo.make_conninfo(ws.pg.base, user=reader_role)
    )
    res = cli(ws, "plan")
    out = res.output + res.stderr
    assert res.exit_code == 1 and "Traceback" not in out
    assert "segments/seg-a.yaml" in out and "permission denied for table orders" in out, out
    assert f"the role '{reader_role}' may not read" in out and "GRANT SELECT ON" in out
    assert "fix the SQL" not in out


@pytest.mark.parametrize("diff", ["postgres", "engine"])
def test_line_breaks_inside_values_are_read_as_values(pg_workspace, diff):
    """A notes-like value with Windows line endings (\\r\\n) or a lone \\r: the copy of the
    profiles is read row by row on \\n (as PostgreSQL writes it). Guessed from the first
    row, one such value made every plan of the workspace fail."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[], extra=f"  diff: {diff}\n")
    rows = [profile(i, a=True) for i in range(4)]
    rows[0] = rows[0] | {"first_name": "line one\r\nline two"}
    rows[2] = rows[2] | {"first_name": "a\rb"}
    set_pg_profiles(ws.pg, rows)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 4
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_segments_previews_the_keys_of_an_integer_key(pg_workspace):
    """PostgreSQL's segment keys arrive as text: with an integer key the preview was always
    hidden "returning a VARCHAR, not the INTEGER of the profiles key"."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[])
    rows = [profile(i, a=True) | {"customer_id": str(1000 + i)} for i in range(3)]
    set_pg_profiles(ws.pg, rows, PG_COLUMNS.replace("customer_id text", "customer_id bigint"))
    seg = cli(ws, "segments", "seg-a")
    assert seg.exit_code == 0, seg.stderr
    assert "preview hidden" not in seg.output and "1001" in seg.output, seg.output


def test_a_lateral_subquery_runs_in_postgres(pg_workspace):
    """Refused as a table function before; it is a subquery, its contents checked."""
    lateral = (
        "sql: SELECT p.customer_id FROM profiles p, LATERAL (SELECT p.seg_a AS s) x WHERE x.s\n"
    )
    ws = pg_workspace(
        {"act": MAINTAIN},
        rows=[profile(i, a=i < 3) for i in range(5)],
        segments={"seg-a": lateral},
    )
    seg = cli(ws, "segments", "seg-a")
    assert seg.exit_code == 0, seg.stderr
    assert "3 profiles" in seg.output, seg.output


@pytest.mark.parametrize(
    ("sql", "label"),
    [
        ("SELECT customer_idd FROM profiles", "Binder Error: column"),
        ("SELECT customer_id FROM profiles GROUP BY country", "Binder Error: column"),
    ],
)
def test_postgres_errors_say_what_kind_they_are(pg_workspace, sql, label):
    """PostgreSQL's class 42 was all called "Syntax Error": a misspelt column is a name that
    does not resolve (DuckDB's Binder Error)."""
    ws = pg_workspace(
        {"act": MAINTAIN}, rows=[profile(1, a=True)], segments={"seg-a": f"sql: {sql}\n"}
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1 and label in res.stderr, res.stderr


def test_a_postgres_error_names_the_file_line_of_the_sql_line(pg_workspace):
    """The server's error position is a character of the statement sent: the message names
    the segment file's line holding the misspelt column, as DuckDB's errors do."""
    sql = "sql: |\n  SELECT customer_id\n  FROM profiles\n  WHERE seg_aa\n"
    ws = pg_workspace({"act": MAINTAIN}, rows=[profile(1, a=True)], segments={"seg-a": sql})
    res = cli(ws, "plan")
    assert res.exit_code == 1, res.output
    assert "segments/seg-a.yaml:4" in res.stderr and "seg_aa" in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("token", "line"),
    [("seg_aa", 3), ("SEG_AA", 3), ("customer_id", None), ("seg", None), (None, None)],
)
def test_the_line_of_a_name_is_found_only_when_it_is_on_one_line(token, line):
    from reconciler.plan.segments import token_line

    sql = "SELECT customer_id\nFROM profiles WHERE customer_id > 0\nAND seg_aa\n"
    assert token_line(sql, token) == line


@pytest.mark.parametrize(
    ("dsn", "refused"),
    [
        ("postgresql://reader@db.attacker.example/crm", True),
        ("host=localhost,203.0.113.5 dbname=test", True),
        ("postgresql://postgres@127.0.0.1:5432/test", False),
        ("dbname=test", False),
    ],
)
def test_a_literal_dsn_may_only_name_this_machine(pg_workspace, dsn, refused):
    """libpq answers the server a DSN names with the job's PGPASSWORD or ~/.pgpass: a pull
    request changing a literal host collected them (validate and plan --refresh=false
    connected to it)."""
    ws = pg_workspace({"act": MAINTAIN})
    ws.write("reconcile.yaml", pg_yaml(ws.pg.schema).replace("${env:RECONCILE_SOURCE_DSN}", dsn))
    res = cli(ws, "validate", "--offline")
    said = "a literal DSN may only name this machine" in res.stderr
    assert said is refused, res.stderr
    if refused:
        assert res.exit_code == 1 and "reconcile.yaml:" in res.stderr
