"""Untrusted segment SQL and templates: the sqlglot gate (:func:`check_segment_sql`), the
sandboxed Jinja environment, and the locked-down DuckDB planning session behind them."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import duckdb
import pytest

from reconciler.sources.base import SqlRejected, check_segment_sql
from reconciler.sources.guard import SqlPolicy
from reconciler.workspace.templating import DEFAULT_NAME, TemplateFailed, render_name, render_sql
from tests.conftest import cli, engine_session, profile

AS_OF = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)

ALLOWED = [
    "SELECT customer_id FROM profiles",
    "select customer_id from profiles where total_spend > 100;",
    "-- VIPs\nSELECT customer_id\nFROM profiles\nWHERE country = 'AU'",
    "FROM profiles SELECT customer_id",
    "WITH big AS (SELECT customer_id FROM profiles WHERE total_spend > 100) SELECT * FROM big",
    "SELECT customer_id FROM profiles UNION SELECT customer_id FROM source.main.profiles",
    "SELECT customer_id FROM profiles WHERE customer_id IN (SELECT customer_id FROM orders)",
    "SELECT customer_id FROM profiles QUALIFY row_number() OVER (PARTITION BY email) = 1",
    "SELECT customer_id FROM profiles WHERE first_order_date >= DATE '2024-01-01'",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_sql_passes_unchanged(sql):
    policy = SqlPolicy("profiles", ("orders",))
    # as written, but for the ";" that may end it
    assert check_segment_sql(sql, "duckdb", policy=policy) == sql.removesuffix(";")


REJECTED = [
    ("", "expected one SELECT statement, found 0"),
    ("-- nothing here", "expected one SELECT statement, found 0"),
    ("SELECT 1; SELECT 2", "expected one SELECT statement, found 2"),
    ("SELECT customer_id FROM profiles; DROP TABLE profiles", "found 2 statements"),
    ("DELETE FROM profiles", "only a SELECT is allowed, found DELETE"),
    ("UPDATE profiles SET country = 'NZ'", "only a SELECT is allowed, found UPDATE"),
    ("INSERT INTO profiles SELECT * FROM profiles", "only a SELECT is allowed, found INSERT"),
    ("CREATE TABLE x AS SELECT 1", "only a SELECT is allowed, found CREATE"),
    ("DROP TABLE profiles", "only a SELECT is allowed, found DROP"),
    ("ATTACH '/tmp/x.db' AS x", "only a SELECT is allowed, found ATTACH"),
    ("COPY profiles TO '/tmp/out.csv'", "only a SELECT is allowed, found COPY"),
    ("SET enable_external_access = true", "only a SELECT is allowed, found SET"),
    ("PRAGMA version", "only a SELECT is allowed, found PRAGMA"),
    ("EXPLAIN SELECT 1", "only a SELECT is allowed, found EXPLAIN"),
    ("CALL duckdb_settings()", "only a SELECT is allowed, found CALL"),
    ("CHECKPOINT", "only a SELECT is allowed, found CHECKPOINT"),  # a COLUMN to sqlglot
    (
        "WITH x AS (DELETE FROM profiles RETURNING customer_id) SELECT customer_id FROM x",
        "DELETE is not allowed in segment SQL",
    ),
    ("VACUUM", "only a SELECT is allowed, found VACUUM"),
    ("SELECT * INTO copy FROM profiles", "INTO is not allowed"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table functions are not allowed"),
    ("SELECT * FROM read_text('/etc/passwd')", "table functions are not allowed"),
    ("SELECT * FROM glob('/etc/*')", "table functions are not allowed"),
    ("SELECT * FROM range(10)", "table functions are not allowed"),
    ("SELECT * FROM duckdb_settings()", "table functions are not allowed"),
    ("SELECT table_catalog FROM information_schema.tables", "may not read the engine's metadata"),
    ("SELECT * FROM system.main.duckdb_databases", "may not read the engine's metadata"),
    ("SELECT * FROM pg_catalog.pg_tables", "may not read the engine's metadata"),
    ("SELECT * FROM temp.main.seg_0", "may not read the engine's metadata"),
    ("SELECT * FROM query('SELECT 1')", "table functions are not allowed"),
    ("SELECT * FROM TABLE(read_csv('x.csv'))", "SQL does not parse"),  # not DuckDB syntax
    (
        "WITH f AS (SELECT * FROM read_parquet('s3://b/k.parquet')) SELECT * FROM f",
        "table functions are not allowed",
    ),
    (
        "SELECT customer_id FROM profiles p, LATERAL (SELECT * FROM read_csv('/etc/passwd'))",
        "table functions are not allowed",
    ),
    (
        "SELECT customer_id FROM profiles WHERE (SELECT count(*) FROM glob('*')) > 0",
        "table functions are not allowed",
    ),
    ("SELECT * FROM '/etc/passwd'", "reading files is not allowed"),
    ('SELECT * FROM "data/export.parquet"', "reading files is not allowed"),
    ("SELECT * FROM 'https://example.com/x.csv'", "reading files is not allowed"),
    ("SELECT key FROM __reconcile_state.members", "may not read the engine's"),
    ("FROM __reconcile_state.members SELECT key", "may not read the engine's"),
    ('SELECT key FROM "__RECONCILE_STATE".main.members', "may not read the engine's"),
    ("SELECT key FROM __reconcile_staging.changes", "may not read the engine's"),
    (
        "SELECT customer_id FROM profiles WHERE customer_id IN "
        "(SELECT key FROM __reconcile_state.members)",
        "may not read the engine's",
    ),
    (
        "SELECT customer_id FROM profiles POSITIONAL JOIN __reconcile_state.members",
        "may not read the engine's",
    ),
    ("SELECT customer_id FROM profiles WHERE (", "SQL does not parse"),
    # one statement, ended by one ';' at most
    ("SELECT customer_id FROM profiles;;", "ended by one ';' at most"),
    ("SELECT customer_id FROM profiles; -- done\nDELETE FROM profiles", "found 2 statements"),
    ("SELECT customer_id FROM profiles /* ; */ ; SELECT 1", "found 2 statements"),
    # a sample is random: a plan must not change between runs
    ("SELECT customer_id FROM profiles USING SAMPLE 10%", "USING SAMPLE and TABLESAMPLE"),
    ("SELECT customer_id FROM profiles TABLESAMPLE 10%", "USING SAMPLE and TABLESAMPLE"),
    ("SELECT customer_id FROM profiles TABLESAMPLE reservoir(5 ROWS)", "TABLESAMPLE are not"),
    ("SELECT customer_id FROM profiles USING SAMPLE 5 ROWS (bernoulli, 42)", "a plan must not"),
    ("SELECT * FROM (SELECT customer_id FROM profiles USING SAMPLE 1%) s", "USING SAMPLE"),
    ("WITH s AS (FROM profiles USING SAMPLE 1%) SELECT customer_id FROM s", "USING SAMPLE"),
    (
        "SELECT customer_id FROM profiles WHERE customer_id IN "
        "(SELECT customer_id FROM profiles TABLESAMPLE 50%)",
        "USING SAMPLE and TABLESAMPLE are not allowed in segment SQL",
    ),
]


@pytest.mark.parametrize(("sql", "reason"), REJECTED)
def test_rejected_sql_says_why(sql, reason):
    with pytest.raises(SqlRejected) as info:
        check_segment_sql(sql, "duckdb")
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("sql", "runs"),
    [
        ("SELECT customer_id FROM profiles;", "SELECT customer_id FROM profiles"),
        ("SELECT customer_id FROM profiles ;\n  ", "SELECT customer_id FROM profiles \n  "),
        ("SELECT customer_id FROM profiles; -- VIPs", "SELECT customer_id FROM profiles -- VIPs"),
        (
            "SELECT customer_id FROM profiles /* all */;",
            "SELECT customer_id FROM profiles /* all */",
        ),
        # a ';' in a comment or a string is not the end of the statement
        ("SELECT customer_id FROM profiles -- VIPs;", "SELECT customer_id FROM profiles -- VIPs;"),
        ("SELECT customer_id FROM profiles WHERE email <> ';'", None),
        ("SELECT customer_id FROM profiles WHERE email <> $$;$$", None),
        (
            "SELECT customer_id FROM profiles WHERE email <> ';'; -- ;",
            "SELECT customer_id FROM profiles WHERE email <> ';' -- ;",
        ),
    ],
)
def test_the_final_semicolon_is_removed_and_nothing_else(sql, runs):
    """What the guard returns is embedded as ``(sql\n)``: a final ';' would break that, a
    trailing comment ends at the line break. Only the ';' token ending the one statement is
    removed, and only when DuckDB reads the rest as the same statement."""
    runs = sql if runs is None else runs  # None: as written
    assert check_segment_sql(sql, "duckdb") == runs
    con = duckdb.connect()
    con.execute("CREATE TABLE profiles AS SELECT 'c1' AS customer_id, 'a@b' AS email")
    assert con.execute(f"SELECT * FROM ({runs}\n) q").fetchall() == [("c1",)]


def test_parse_error_carries_the_sql_line():
    with pytest.raises(SqlRejected) as info:
        check_segment_sql("SELECT customer_id\nFROM profiles\nWHERE (", "duckdb")
    assert info.value.line == 3
    assert "(SQL line 3, column" in str(info.value)


def test_a_parse_error_names_no_class_of_the_parser():
    """sqlglot describes some constructs by its own class (``<class 'sqlglot.expressions
    .string.Secret'>``): the message names the construct only."""
    with pytest.raises(SqlRejected) as info:
        check_segment_sql("CREATE SECRET (TYPE S3)", "duckdb")
    assert "sqlglot" not in str(info.value) and "<class" not in str(info.value)
    assert "missing for Secret" in str(info.value)


def test_rejection_is_quiet(capsys, caplog):
    """sqlglot's 'falling back to parsing as a Command' warning would clutter the one-line
    error; the statement is rejected anyway."""
    caplog.set_level(logging.WARNING)
    before = logging.getLogger("sqlglot").level
    with pytest.raises(SqlRejected):
        check_segment_sql("EXPLAIN SELECT 1", "duckdb")
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]
    assert capsys.readouterr().err == ""
    assert logging.getLogger("sqlglot").level == before


# ---------------------------------------------------------------------- templating
def test_sql_template_dates_come_from_as_of_in_the_workspace_timezone():
    sql = "SELECT customer_id FROM profiles WHERE d >= {{ days_ago(7) }} AND d < {{ today }}"
    assert render_sql(sql, AS_OF, "UTC") == (
        "SELECT customer_id FROM profiles WHERE d >= DATE '2024-06-08' AND d < DATE '2024-06-15'"
    )
    late = datetime(2024, 6, 15, 20, 0, tzinfo=UTC)  # already the 16th in Sydney
    assert render_sql("{{ today }}", late, "Australia/Sydney") == "DATE '2024-06-16'"


@pytest.mark.parametrize("arg", ["-1", "'7'", "1.5", "true", "none"])
def test_days_ago_takes_a_whole_number_of_days(arg):
    with pytest.raises(TemplateFailed, match="days_ago\\(\\) takes a whole number of days"):
        render_sql(f"{{{{ days_ago({arg}) }}}}", AS_OF, "UTC")


def test_undefined_name_is_an_error_with_its_line_and_the_names_available():
    with pytest.raises(TemplateFailed) as info:
        render_sql("SELECT customer_id\nFROM profiles\nWHERE x > {{ last_week }}", AS_OF, "UTC")
    assert info.value.line == 3
    assert "'last_week' is undefined" in str(info.value)
    assert "the names available are today, days_ago(n)" in str(info.value)


def test_syntax_error_carries_its_line():
    with pytest.raises(TemplateFailed) as info:
        render_sql("SELECT 1\n{% if today %}\nFROM x", AS_OF, "UTC")
    assert info.value.line is not None and str(info.value).startswith("template error:")


SANDBOX_ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ days_ago.__globals__ }}",
    "{{ days_ago.__code__.co_consts }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ self.__dict__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{% for i in range(100000000) %}{% endfor %}",
    "{{ config }}",
    "{{ request }}",
]


@pytest.mark.parametrize("payload", SANDBOX_ESCAPES)
def test_sandbox_refuses_escapes_in_sql_and_names(payload):
    with pytest.raises(TemplateFailed) as info:
        render_sql(f"SELECT customer_id FROM profiles WHERE '{payload}' <> ''", AS_OF, "UTC")
    assert str(info.value).startswith("template error:")
    assert "<class" not in str(info.value) and "uid=" not in str(info.value)
    with pytest.raises(TemplateFailed):
        render_name(
            payload,
            as_of=AS_OF,
            timezone="UTC",
            date_created=date(2024, 6, 1),
            activation="act",
            segments=["vip"],
        )


def test_audience_names():
    kwargs = dict(
        as_of=AS_OF,
        timezone="UTC",
        date_created=date(2024, 6, 1),
        activation="act",
        segments=["vip", "lapsed"],
    )
    assert render_name(DEFAULT_NAME, **kwargs) == "2024-06-01 vip, lapsed"
    assert render_name("{{ activation }} {{ today }}", **kwargs) == "act 2024-06-15"
    with pytest.raises(TemplateFailed, match="the audience name renders empty"):
        render_name("{{ '' }}  ", **kwargs)
    with pytest.raises(TemplateFailed, match="date_created, today, activation, segments"):
        render_name("{{ created }}", **kwargs)


# ---------------------------------------------------------------------- the engine's own guard
def test_planning_session_blocks_external_access_and_state_writes(workspace):
    """Even SQL that slipped past the sqlglot gate cannot read files, re-enable access or
    change the recorded state: the planning session is locked down."""
    ws = workspace(
        {"act": "segments: [seg-a]\ndestination: sandbox\nname: A\n"},
        profiles=[profile(i, a=True) for i in range(3)],
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0  # a real state file exists
    with engine_session(ws.root, write_state=False, lock_down=True) as session:
        con = session.cursor()
        assert con.execute("SELECT count(*) FROM profiles").fetchone() == (3,)
        for sql in (
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM read_text('/etc/passwd')",
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM glob('/*')",
            "ATTACH '/tmp/reconcile-escape.db' AS escape",
            "COPY profiles TO '/tmp/reconcile-escape.csv'",
            "SET enable_external_access = true",
            "SET lock_configuration = false",
            "LOAD httpfs",
            "DELETE FROM __reconcile_state.members",
            "INSERT INTO profiles SELECT * FROM profiles",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        assert con.execute("SELECT count(*) FROM __reconcile_state.members").fetchone() == (3,)


@pytest.mark.parametrize(
    "payload",
    ["{{ 'a' * 10**10 }}", "{{ [1] * 10**9 }}", "{{ 2 ** 100000 }}", "{{ 10**5 * 10**9 * 'x' }}"],
)
def test_templates_cannot_build_huge_values(payload):
    """A pull request must not be able to hang the runner through template arithmetic."""
    with pytest.raises(TemplateFailed, match="too (long|large)"):
        render_sql(f"SELECT customer_id FROM profiles WHERE x = '{payload}'", AS_OF, "UTC")


def test_small_template_arithmetic_still_works():
    assert (
        render_sql("SELECT {{ 2 ** 10 }}, '{{ 'ab' * 3 }}'", AS_OF, "UTC")
        == "SELECT 1024, 'ababab'"
    )


def test_segment_sql_cannot_read_other_segments_working_tables(workspace):
    """Planning's temp tables carry the internal prefix, so a segment cannot read them."""
    from tests.conftest import cli, profile

    ws = workspace(
        {"act": "segments: [seg-a, sneaky]\ndestination: sandbox\n"},
        profiles=[profile(1, a=True)],
        segments={
            "seg-a": "sql: SELECT customer_id FROM profiles WHERE seg_a\n",
            "sneaky": "sql: SELECT k FROM __reconcile_tmp_seg_0\n",
        },
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "segments/sneaky.yaml" in res.stderr and "may not read the engine" in res.stderr
