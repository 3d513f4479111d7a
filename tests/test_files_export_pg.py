"""An export recorded in the PostgreSQL state: the members and the closed journal entry reach
PostgreSQL, so the next plan (a new session loading the state) sees nothing left to export,
and the next delta holds only what changed."""

from __future__ import annotations

import psycopg

from tests.conftest import cli
from tests.test_files_export import EXPORT_ACT, FILES_YAML, PEOPLE, exported, rows
from tests.test_state_postgres_cli import pg_yaml


def pg_rows(dsn, sql: str) -> list[tuple]:
    with psycopg.connect(dsn.base, autocommit=True) as conn:
        return conn.execute(sql.format(s=dsn.schema)).fetchall()


def test_export_with_the_postgres_state(workspace, pg_dsn, monkeypatch):
    monkeypatch.setenv("RECONCILE_STATE_DSN", pg_dsn.base)
    ws = workspace(
        {"vip-export": EXPORT_ACT.format(full="never")},
        profiles=PEOPLE,
        reconcile_yaml=pg_yaml(pg_dsn.schema),
    )
    ws.write("integrations/files.yaml", FILES_YAML.format(format="csv", pii="hashed", extra=""))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.members") == [(5,)]
    assert pg_rows(pg_dsn, "SELECT status FROM {s}.journal WHERE op = 'export'") == [("done",)]
    assert "No changes" in cli(ws, "plan").output

    people = [dict(p) for p in PEOPLE]
    people[0]["seg_a"] = False
    ws.set_profiles(people)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    deltas = sorted(p for p in exported(ws) if p.name.endswith("-delta.csv"))
    assert [(r["change"], r["customer_id"]) for r in rows(deltas[-1])] == [("left", "c00001")]
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.members") == [(4,)]
