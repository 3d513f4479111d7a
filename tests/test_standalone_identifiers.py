"""Profiles known only by an id that matches a person on its own (a mobile advertiser id,
an external id) are members like any other: the plan counts them as matchable and the
apply sends them, on the DuckDB source (terms.matchable_sql) and in its PostgreSQL twin."""

from __future__ import annotations

import duckdb

from reconciler.sources.pg_twins import matchable_pg
from tests.conftest import RECONCILE_YAML, cli, plan_json, profile
from tests.test_files_export import EXPORT_ACT, FILES_YAML, exported
from tests.test_files_export import rows as file_rows

MADID = "aece52e7-03ee-455a-b3c4-e57283966239"


def test_profiles_with_only_a_madid_or_external_id_are_sent(workspace):
    config = RECONCILE_YAML.replace(
        "identifiers: {email: email, phone: phone}",
        "identifiers: {email: email, phone: phone, external_id: crm_id, madid: madid}",
    )
    rows = [profile(i, a=True) for i in range(4)]
    for r in rows[1:]:
        r["email"] = r["phone"] = None
    ws = workspace(
        {"vip-export": EXPORT_ACT.format(full="never")}, profiles=rows, reconcile_yaml=config
    )
    ws.write(
        "integrations/files.yaml",
        FILES_YAML.format(format="csv", pii="hashed", extra="").replace(
            "identifiers: [email, phone]", "identifiers: [email, external_id, madid]"
        ),
    )
    con = duckdb.connect(str(ws.db))
    con.execute("ALTER TABLE profiles ADD COLUMN crm_id VARCHAR")
    con.execute("ALTER TABLE profiles ADD COLUMN madid VARCHAR")
    con.execute("UPDATE profiles SET crm_id = 'crm-1' WHERE customer_id = 'c00001'")
    con.execute(f"UPDATE profiles SET madid = '{MADID}' WHERE customer_id = 'c00002'")
    con.execute("UPDATE profiles SET crm_id = '   ' WHERE customer_id = 'c00003'")  # blank
    con.close()
    act = plan_json(ws)["activations"][0]
    assert act["matchable"] == 3  # e-mail, external id, madid; not the blank id
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    written = {
        r["customer_id"] for p in exported(ws) if p.name.endswith(".csv") for r in file_rows(p)
    }
    assert written == {"c00000", "c00001", "c00002"}


def test_the_postgresql_twin_counts_the_same_types():
    sql = matchable_pg([("email", "email"), ("madid", "m"), ("first_name", "f")])
    assert 'CAST(p."email" AS text)' in sql and 'trim(CAST(p."m" AS text))' in sql
    assert '"f"' not in sql  # a first name alone matches nobody
