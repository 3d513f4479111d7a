"""TIMESTAMPTZ values become text in the workspace's time zone, never the machine's: a plan on
a laptop in Sydney and an apply on a CI runner in UTC see the same values, so nothing is
re-sent (and no key changes) because the machines differ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import RECONCILE_YAML, SANDBOX_YAML, WS, profile
from tests.duckfiles import query
from tests.test_pg_source import pg_workspace, pg_yaml  # noqa: F401 (a fixture)

ACT = "segments: [seg-a]\ndestination: sandbox\nname: Zones\nattributes: [SEEN]\n"


def run(ws: WS, tz: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "-C", str(ws.root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"TZ": tz},
    )


@pytest.mark.slow
@pytest.mark.parametrize("column", ["seen", "customer_id"])
def test_a_plan_on_another_machine_time_zone_plans_no_change(workspace, column: str) -> None:
    """Applied on a UTC machine, planned on one in Sydney: no change (the attribute was sent
    again to every member, and a TIMESTAMPTZ key made every member leave and re-enter)."""
    integration = SANDBOX_YAML.replace("attributes:\n", "attributes:\n  SEEN: seen\n")
    ws = workspace(
        {"act": ACT},
        profiles=[profile(i, a=True) for i in range(3)],
        integration=integration,
        reconcile_yaml=RECONCILE_YAML.replace("seg_a, seg_b]", "seg_a, seg_b, seen]"),
    )
    ws.alter_profiles(
        "ALTER TABLE profiles ADD COLUMN seen TIMESTAMPTZ",
        "UPDATE profiles SET seen = TIMESTAMPTZ '2024-05-01 23:30:00+00'",
        # the key itself a timestamp (a stretch, but a key)
        *(
            [
                "ALTER TABLE profiles ALTER customer_id TYPE TIMESTAMPTZ USING "
                "seen + to_days(CAST(customer_id[2:] AS INTEGER))"
            ]
            if column == "customer_id"
            else []
        ),
        timezone="UTC",
    )
    if column == "customer_id":
        ws.write("segments/seg-a.yaml", "sql: SELECT customer_id FROM profiles WHERE seg_a\n")
    applied = run(ws, "UTC", "apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    planned = run(ws, "Australia/Sydney", "plan", "--detailed-exitcode")
    assert planned.returncode == 0, planned.stdout + planned.stderr


@pytest.mark.slow
def test_an_attribute_with_a_time_zone_arrives_in_the_workspace_zone(workspace) -> None:
    """The destination gets the text the fingerprint read (the workspace's zone), not the
    instant rendered in the zone of the machine that applied (it was: the sandbox wrote
    '2024-06-29 20:00:00-04' from a New York machine, '2024-06-30 00:00:00+00' from UTC)."""
    integration = SANDBOX_YAML.replace("attributes:\n", "attributes:\n  SEEN: seen\n")
    ws = workspace(
        {"act": ACT},
        profiles=[profile(i, a=True) for i in range(2)],
        integration=integration,
        reconcile_yaml=RECONCILE_YAML.replace("seg_a, seg_b]", "seg_a, seg_b, seen]").replace(
            "timezone: UTC", "timezone: Australia/Sydney"
        ),
    )
    ws.alter_profiles(
        "ALTER TABLE profiles ADD COLUMN seen TIMESTAMPTZ",
        "UPDATE profiles SET seen = TIMESTAMPTZ '2024-06-30 00:00:00+00'",
        timezone="UTC",
    )
    applied = run(ws, "America/New_York", "apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rows = query(ws.root / ".reconcile" / "sandbox.duckdb", "SELECT attributes FROM members")
    assert [json.loads(r[0])["SEEN"] for r in rows] == ["2024-06-30T10:00:00+10"] * 2
    planned = run(ws, "UTC", "plan", "--detailed-exitcode")
    assert planned.returncode == 0, planned.stdout + planned.stderr


@pytest.mark.slow
def test_a_postgres_source_on_another_machine_time_zone_plans_no_change(
    pg_workspace,  # noqa: F811 (the fixture imported above)
) -> None:
    """The same with PostgreSQL: the diff runs there (timestamptz to text in the session's
    zone) and the engine copies the rows (to text in its own): both use the workspace's."""
    from psycopg import sql

    integration = SANDBOX_YAML.replace("attributes:\n", "attributes:\n  SEEN: seen\n")
    ws = pg_workspace(
        {"act": ACT}, rows=[profile(i, a=True) for i in range(3)], integration=integration
    )
    table = sql.Identifier(ws.pg.schema, "profiles")
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN seen timestamptz").format(table))
        conn.execute(sql.SQL("UPDATE {} SET seen = '2024-05-01 23:30:00+00'").format(table))
    ws.write(
        "reconcile.yaml", pg_yaml(ws.pg.schema).replace("seg_a, seg_b]", "seg_a, seg_b, seen]")
    )
    applied = run(ws, "UTC", "apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    planned = run(ws, "Australia/Sydney", "plan", "--detailed-exitcode")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    in_engine = pg_yaml(ws.pg.schema, "  diff: engine\n")
    ws.write("reconcile.yaml", in_engine.replace("seg_a, seg_b]", "seg_a, seg_b, seen]"))
    engine = run(ws, "Asia/Tokyo", "plan", "--detailed-exitcode")
    assert engine.returncode == 0, engine.stdout + engine.stderr


@pytest.mark.slow
@pytest.mark.parametrize("diff", ["postgres", "engine"])
def test_a_postgres_source_reads_times_in_the_workspace_zone(pg_workspace, diff) -> None:  # noqa: F811
    """A Sydney workspace over PostgreSQL: segment SQL casting a timestamptz to a date sees
    Sydney's date (as DuckDB would), and timestamptz keys become the same text in
    PostgreSQL (segment keys) and in the engine (profiles): every member is sent, and a plan
    on a machine in New York finds nothing to change."""
    from psycopg import sql

    segments = {
        "seg-a": "sql: SELECT customer_id FROM profiles WHERE CAST(seen AS DATE) = DATE '2024-05-02'\n",
        "seg-b": "sql: SELECT customer_id FROM profiles WHERE seg_b\n",
    }
    ws = pg_workspace(
        {"act": ACT.replace("attributes: [SEEN]\n", "")},
        rows=[profile(i, a=False) for i in range(3)],
        segments=segments,
    )
    table = sql.Identifier(ws.pg.schema, "profiles")
    with psycopg.connect(ws.pg.base) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN seen timestamptz").format(table))
        conn.execute(sql.SQL("UPDATE {} SET seen = '2024-05-01 23:30:00+00'").format(table))
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ALTER customer_id TYPE timestamptz "
                "USING seen + substr(customer_id, 2)::int * interval '1 day'"
            ).format(table)
        )
    contract = pg_yaml(ws.pg.schema, f"  diff: {diff}\n").replace(
        "timezone: UTC", "timezone: Australia/Sydney"
    )
    ws.write("reconcile.yaml", contract.replace("seg_a, seg_b]", "seg_a, seg_b, seen]"))
    applied = run(ws, "UTC", "apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert len(ws.sandbox_keys()["Zones"]) == 3
    planned = run(ws, "America/New_York", "plan", "--detailed-exitcode")
    assert planned.returncode == 0, planned.stdout + planned.stderr
