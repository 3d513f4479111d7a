"""A numeric profile key in a PostgreSQL source (``source.profiles.key`` of type numeric,
numeric(p,s), double precision or an integer type): the keys a segment returns are read back
as the key's own type before they become text, so a segment's ``1.00`` is the profile ``1``
whichever path (the diff in PostgreSQL or in the engine) compares them, and a plan after an
apply is empty — also when the next plan takes the other path. A ``real`` key is refused."""

from __future__ import annotations

import pytest

from tests.conftest import audience_counts, cli, plan_json, profile
from tests.test_pg_source import (  # noqa: F401 (a fixture)
    MAINTAIN,
    PG_COLUMNS,
    pg_workspace,
    set_pg_profiles,
)

#: key values per key type: integer-valued and fractional, written as PostgreSQL reads them
KEYS = {
    "numeric": ["1", "2.0", "3.50", "12345678901234567890.25", "7"],
    "numeric(24,2)": ["1", "2.0", "3.5", "12345678901234567890.25", "7"],
    "numeric(12,0)": ["1", "2", "3", "123456789012", "7"],
    "double precision": ["1", "2.0", "3.5", "0.1", "7"],
    "bigint": ["1", "2", "3", "9007199254740993", "7"],
}
SEGMENTS = {  # the column itself, and the key as another numeric type
    "itself": "SELECT customer_id FROM profiles WHERE seg_a",
    "as numeric(30,4)": "SELECT customer_id::numeric(30,4) FROM profiles WHERE seg_a",
}


def rows(key_type: str) -> list[dict]:
    return [profile(i, a=i != 4) | {"customer_id": k} for i, k in enumerate(KEYS[key_type])]


def columns(key_type: str) -> str:
    return PG_COLUMNS.replace("customer_id text", f"customer_id {key_type}")


@pytest.mark.parametrize("first,then", [("engine", "postgres"), ("postgres", "engine")])
@pytest.mark.parametrize("segment", sorted(SEGMENTS))
@pytest.mark.parametrize("key_type", sorted(KEYS))
def test_a_numeric_key_settles_in_both_paths(
    pg_workspace,  # noqa: F811 (the fixture imported above)
    key_type,
    segment,
    first,
    then,
):
    """Plan in one path, apply, plan again in both: the right members, then no changes."""
    sql_text = SEGMENTS[segment]
    if key_type == "double precision":  # 0.1 has no exact numeric(30,4)
        sql_text = sql_text.replace("numeric(30,4)", "numeric")
    segs = {"seg-a": f"sql: {sql_text}\n"}
    ws = pg_workspace({"act": MAINTAIN}, rows=[], segments=segs, extra=f"  diff: {first}\n")
    set_pg_profiles(ws.pg, rows(key_type), columns(key_type))
    res = cli(ws, "-v", "plan")
    said = res.output + res.stderr
    assert "is a key of the profiles table" not in said, said
    assert ("membership diffed in PostgreSQL" in said) == (first == "postgres"), said
    assert audience_counts(plan_json(ws), "act") == {"all": (4, 0, 0)}
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 4
    res = cli(ws, "plan", "--detailed-exitcode")
    assert res.exit_code == 0, res.output + res.stderr
    yaml = (ws.root / "reconcile.yaml").read_text()
    ws.write("reconcile.yaml", yaml.replace(f"diff: {first}", f"diff: {then}"))
    res = cli(ws, "plan", "--detailed-exitcode")
    assert res.exit_code == 0, res.output + res.stderr


@pytest.mark.parametrize("diff", ["postgres", "engine"])
def test_a_segment_value_is_never_rounded_into_another_key(
    pg_workspace,  # noqa: F811 (the fixture imported above)
    diff,
):
    """1.005 is no key of a numeric(10,2) column and 1.5 none of a bigint one (a cast would
    round them into 1.01 and 2); a text "007" is the key 7, as PostgreSQL reads it, and
    "abc" is no key (not an error)."""
    segs = {
        "seg-a": "sql: |\n  SELECT CAST(customer_id + 0.005 AS text) FROM profiles WHERE seg_a\n"
        "  UNION ALL SELECT '007' UNION ALL SELECT 'abc'\n"
    }
    ws = pg_workspace({"act": MAINTAIN}, rows=[], segments=segs, extra=f"  diff: {diff}\n")
    keys = ["1", "2", "7", "1.01"]
    set_pg_profiles(
        ws.pg,
        [profile(i, a=True) | {"customer_id": k} for i, k in enumerate(keys)],
        columns("numeric(10,2)"),
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 1  # 7, and nothing else
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
    ws.write(
        "segments/seg-a.yaml",
        "sql: SELECT 1.005 UNION ALL SELECT customer_id - 0.5 FROM profiles\n",
    )
    set_pg_profiles(
        ws.pg,
        [profile(i, a=True) | {"customer_id": k} for i, k in enumerate(["1", "2", "7"])],
        columns("bigint"),
    )
    res = cli(ws, "plan")
    assert "none of the 4 key(s)" in res.output + res.stderr, res.output + res.stderr


def test_a_real_key_is_refused_by_name(pg_workspace):  # noqa: F811 (the fixture)
    """A real holds about 7 digits: its keys are already rounded (two customers may share
    one); refused, naming the setting."""
    ws = pg_workspace({"act": MAINTAIN}, rows=[])
    set_pg_profiles(ws.pg, rows("numeric(12,0)"), columns("real"))
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "source.profiles.key" in res.stderr and "REAL" in res.stderr, res.stderr
