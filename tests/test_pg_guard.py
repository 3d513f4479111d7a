"""The SQL guard on PostgreSQL SQL (sqlglot's postgres tree): the same rules as for DuckDB.
No server needed."""

from __future__ import annotations

import pytest

from reconciler.sources.guard import SqlPolicy, SqlRejected, check_condition, check_segment_sql

POLICY = SqlPolicy(
    profiles_table="profiles", tables=("orders", "crm.events"), catalog="", schema="shop"
)


def check(sql: str) -> str:
    return check_segment_sql(sql, "postgres", policy=POLICY)


HOSTILE = [
    ("DELETE FROM profiles", "only a SELECT"),
    ("UPDATE profiles SET email = NULL", "only a SELECT"),
    ("INSERT INTO profiles (customer_id) VALUES ('x')", "only a SELECT"),
    ("DROP TABLE profiles", "only a SELECT"),
    ("CREATE TABLE x AS SELECT 1", "only a SELECT"),
    ("SELECT customer_id INTO stolen FROM profiles", "INTO is not allowed"),
    ("COPY profiles TO '/tmp/x.csv'", "only a SELECT"),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "only a SELECT"),
    ("SELECT 1; SELECT 2", "expected one SELECT statement, found 2"),
    ("SELECT customer_id FROM profiles; DELETE FROM profiles", "found 2"),
    ("SELECT * FROM pg_catalog.pg_class", "catalog"),
    ("SELECT usename FROM pg_user", "catalog"),
    ("SELECT passwd FROM pg_shadow", "catalog"),
    ("SELECT * FROM information_schema.tables", "catalog"),
    ("SELECT customer_id FROM other_schema.profiles", "not allowed"),
    ("SELECT customer_id FROM otherdb.shop.profiles", "another database"),
    ("SELECT * FROM secrets", "table 'secrets' is not allowed"),
    ("SELECT pg_read_file('/etc/passwd')", "function pg_read_file"),
    ("SELECT pg_ls_dir('.')", "function pg_ls_dir"),
    ("SELECT lo_import('/etc/passwd')", "function lo_import"),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", "function set_config"),
    ("SELECT current_setting('data_directory')", "function current_setting"),
    ("SELECT pg_sleep(100)", "function pg_sleep"),
    ("SELECT pg_terminate_backend(1)", "function pg_terminate_backend"),
    ("SELECT version()", "function version"),
    ("SELECT * FROM dblink('host=evil', 'SELECT 1') AS t(a int)", "table functions"),
    ("SELECT dblink_exec('host=evil', 'DROP TABLE x')", "function dblink_exec"),
    ("SELECT * FROM generate_series(1, 1000000000)", "table functions"),
    ("SELECT customer_id FROM profiles, LATERAL generate_series(1, 10)", "table functions"),
    ("SELECT customer_id FROM profiles, LATERAL (SELECT usename FROM pg_user) x", "pg_user"),
    (
        "SELECT customer_id FROM profiles, LATERAL (SELECT pg_read_file('/etc/passwd') f) x",
        "pg_read_file",
    ),
    ("SELECT repeat('x', 1000000000)", "function repeat"),
    ("SELECT lpad('x', 1000000000)", "literal length"),
    ("SELECT pg_catalog.lower(email) FROM profiles", "qualified function"),
    ("SELECT 'pg_authid'::regclass", "reads the catalog"),
    ("SELECT customer_id FROM profiles FOR UPDATE", "FOR UPDATE"),
    ("SELECT customer_id FROM profiles TABLESAMPLE SYSTEM (10)", "TABLESAMPLE is not allowed"),
    ("SELECT customer_id FROM profiles TABLESAMPLE BERNOULLI (5) REPEATABLE (1)", "a plan must"),
    ("WITH s AS (SELECT * FROM orders TABLESAMPLE SYSTEM (1)) SELECT customer_id FROM s", "TABLE"),
    ("SELECT customer_id FROM profiles; -- done\nDELETE FROM profiles", "found 2"),
    ("SELECT current_user", "CURRENT_USER"),
    ("SELECT nextval('s')", "function nextval"),
    ("SELECT random()", "function random"),
    # a CTE named like a catalog table is visible only in its own scope
    ("SELECT * FROM (WITH pg_shadow AS (SELECT 1) SELECT 1) a, pg_shadow", "catalog"),
    ("WITH x AS (SELECT * FROM x) SELECT * FROM x", "'x' is not allowed"),
    # a comment or quote the parsers might read differently cannot hide a statement
    ("SELECT customer_id FROM profiles /* ; */ ; DELETE FROM profiles", "found 2"),
    ("SELECT $$;$$; DELETE FROM profiles", "found 2"),
]


@pytest.mark.parametrize("sql,reason", HOSTILE)
def test_hostile_sql_is_refused(sql, reason):
    with pytest.raises(SqlRejected, match=reason):
        check(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT customer_id FROM profiles WHERE email LIKE '%@example.com'",
        "SELECT customer_id FROM shop.profiles WHERE first_order_date >= DATE '2024-01-01'",
        "SELECT p.customer_id FROM profiles p JOIN orders o ON o.customer_id = p.customer_id "
        "GROUP BY 1 HAVING sum(o.amount) > 100",
        "SELECT customer_id FROM crm.events WHERE kind = 'signup'",
        "WITH big AS (SELECT customer_id, total_spend FROM profiles) "
        "SELECT customer_id FROM big WHERE total_spend > 10",
        "WITH RECURSIVE n AS (SELECT 1 AS i UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
        "SELECT customer_id FROM profiles, n",
        "SELECT customer_id FROM profiles WHERE lower(trim(email)) ~ '^a' "
        "AND coalesce(total_spend, 0) > 0 AND date_trunc('month', last_order_date) "
        "< now() - interval '30 days' AND CASE WHEN country = 'AU' THEN true END",
        "SELECT customer_id FROM (SELECT customer_id, row_number() OVER (ORDER BY total_spend "
        "DESC) AS r FROM profiles) t WHERE r <= 10",
        "SELECT customer_id FROM profiles WHERE lpad(country, 5) = '   AU'",
        "SELECT customer_id FROM profiles p WHERE EXISTS (SELECT 1 FROM orders o "
        "WHERE o.customer_id = p.customer_id) AND country = ANY(ARRAY['AU', 'NZ'])",
        # a LATERAL subquery is a subquery (it was refused as a table function)
        "SELECT p.customer_id FROM profiles p, LATERAL (SELECT max(o.amount) AS m FROM orders o "
        "WHERE o.customer_id = p.customer_id) x WHERE x.m > 10",
        "SELECT p.customer_id FROM profiles p LEFT JOIN LATERAL (SELECT o.amount FROM orders o "
        "WHERE o.customer_id = p.customer_id ORDER BY o.amount DESC LIMIT 1) x ON true",
    ],
)
def test_ordinary_segment_sql_passes(sql):
    check(sql)


def test_postgres_runs_the_checked_tree_with_every_identifier_quoted():
    out = check("SELECT Customer_ID FROM Profiles WHERE user = 'x' -- a comment\n")
    assert out == """SELECT "customer_id" FROM "profiles" WHERE "user" = 'x'"""


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT customer_id FROM profiles;",
        "SELECT customer_id FROM profiles ; -- the VIPs",
        "SELECT customer_id FROM profiles -- the VIPs",
    ],
)
def test_a_final_semicolon_and_a_trailing_comment_are_fine(sql):
    assert check(sql) == 'SELECT "customer_id" FROM "profiles"'


def test_consent_conditions_follow_the_same_rules():
    assert check_condition("email_consent AND country = 'AU'", "postgres", POLICY)
    with pytest.raises(SqlRejected, match="pg_read_file"):
        check_condition("pg_read_file('/etc/passwd') IS NOT NULL", "postgres", POLICY)
    with pytest.raises(SqlRejected, match="closes a parenthesis"):
        check_condition("true) OR (true", "postgres", POLICY)
