"""Saved plans edited on purpose, with counts and checksums made to add up (the file is
whole, only its author is not us): ``apply PLANFILE`` applies only the member changes the
plan made now has too, refuses an activation the plan says something else about than the
workspace and the state do, and works out the mass-removal guard itself
(reconciler/plan/saved_check.py)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from reconciler.plan.model import Plan, summarise
from tests.conftest import cli, profile
from tests.test_planfile import members, write_plan

MAINTAIN = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"


def forge(tmp_path: Path, good: Path, name: str, rows: list[tuple[str, str]], **fields) -> Path:
    """``good`` with ``rows`` ((op, key) of activation ``act``, group ``all``) as its member
    changes, the audience's counts and the summary made to match them, and ``fields`` of the
    activation (e.g. ``change``, ``paused``) set."""
    parts = members(good)
    doc = json.loads(parts["plan.json"])
    act = doc["activations"][0]
    mass = fields.pop("mass_removal", False)
    act.update(fields)
    aud = act["audiences"][0]
    for op in ("add", "remove", "update"):
        aud[op] = sum(1 for o, _ in rows if o == op)
    aud["size_after"] = aud["size_before"] + aud["add"] - aud["remove"]
    aud["mass_removal"] = mass
    doc["summary"] = summarise(Plan.model_validate(doc).activations).model_dump(mode="json")
    out = tmp_path / f"{name}.parquet"
    con = duckdb.connect()
    con.execute("CREATE TABLE c (activation_id VARCHAR, grp VARCHAR, op VARCHAR, key VARCHAR)")
    for op, key in rows:
        con.execute("INSERT INTO c VALUES ('act', 'all', ?, ?)", [op, key])
    con.execute(f"COPY (SELECT * FROM c ORDER BY ALL) TO '{out}' (FORMAT parquet)")
    con.close()
    parts["plan.json"] = json.dumps(doc).encode()
    parts["changes.parquet"] = out.read_bytes()
    return write_plan(tmp_path / f"{name}.plan", parts)


def applied(ws, plan: Path):
    return cli(ws, "apply", str(plan), "--auto-approve")


def setup(workspace, tmp_path, n_in: int = 3, n: int = 6, spec: str = MAINTAIN):
    ws = workspace({"act": spec}, profiles=[profile(i, a=i < n_in) for i in range(n)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    good = tmp_path / "good.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    return ws, good, ws.sandbox_keys()


def test_members_added_to_a_plan_outside_the_segment_are_not_sent(workspace, tmp_path):
    ws, good, before = setup(workspace, tmp_path)
    outsiders = [("add", f"c0000{i}") for i in (3, 4, 5)]
    res = applied(ws, forge(tmp_path, good, "extra", outsiders, change="update"))
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys() == before  # nobody outside the segment reached the destination
    assert "act: 3 member change(s) of the saved plan no longer hold" in res.stderr
    assert "No changes" in cli(ws, "plan").output


def test_removals_added_to_a_plan_do_not_empty_the_audience(workspace, tmp_path):
    """Members still in the segment stay, whatever the plan's own mass_removal says."""
    ws, good, before = setup(workspace, tmp_path)
    wipe = [("remove", f"c0000{i}") for i in range(3)]
    res = applied(ws, forge(tmp_path, good, "wipe", wipe, change="update"))
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys() == before and len(before["Audience A"]) == 3


def test_a_real_mass_removal_is_held_whatever_the_plan_file_says(workspace, tmp_path):
    ws, _, before = setup(workspace, tmp_path)
    con = duckdb.connect(str(ws.db))
    con.execute("UPDATE profiles SET seg_a = FALSE")
    con.close()
    good = tmp_path / "empty.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    leave = [("remove", f"c0000{i}") for i in range(3)]
    res = applied(ws, forge(tmp_path, good, "unflagged", leave, mass_removal=False))
    assert res.exit_code == 1
    assert "refused by the mass-removal guard" in res.output + res.stderr
    assert ws.sandbox_keys() == before


def test_a_plan_deleting_an_activation_whose_file_is_there_is_refused(workspace, tmp_path):
    ws, good, before = setup(workspace, tmp_path)
    wipe = [("remove", f"c0000{i}") for i in range(3)]
    plan = forge(tmp_path, good, "delete", wipe, change="delete", on_delete="clear")
    res = applied(ws, plan)
    assert res.exit_code == 1
    said = res.output + res.stderr
    assert "the saved plan no longer matches the workspace and the state" in said
    assert "'act' is planned as delete, now it is noop" in said
    assert ws.sandbox_keys() == before
    assert "act" in cli(ws, "status").output and "Complete" in cli(ws, "status").output


def test_a_paused_activation_gets_nothing_from_an_edited_plan(workspace, tmp_path):
    ws, _, before = setup(workspace, tmp_path)
    act = ws.root / "activations" / "act.yaml"
    act.write_text(MAINTAIN + "paused: true\n")
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    good = tmp_path / "paused.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    adds = [("add", f"c0000{i}") for i in (3, 4)]
    res = applied(ws, forge(tmp_path, good, "unpaused", adds, change="update", paused=False))
    assert res.exit_code == 1
    assert "'act' is planned as update, now it is paused" in res.output + res.stderr
    assert ws.sandbox_keys() == before


def test_a_forged_audience_name_is_not_used(workspace, tmp_path):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 3) for i in range(6)])
    good = tmp_path / "first.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    parts = members(good)
    doc = json.loads(parts["plan.json"])
    doc["activations"][0]["audiences"][0]["name"] = "Another team"
    parts["plan.json"] = json.dumps(doc).encode()
    res = applied(ws, write_plan(tmp_path / "renamed.plan", parts))
    assert res.exit_code == 1
    said = res.output + res.stderr
    assert "audience 'Another team' (group 'all') of 'act' is not what it plans now" in said
    assert ws.sandbox_keys() == {}


def test_a_repeated_member_change_is_refused(workspace, tmp_path):
    """A row repeated (counts raised to match, checksums recomputed): `show` would say +2
    while apply sends 1. Refused as damaged by `show` and `apply`, nothing sent."""
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 3) for i in range(6)])
    good = tmp_path / "good.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    twice = forge(tmp_path, good, "twice", [("add", "c00001"), ("add", "c00001")])
    for command in (["show", str(twice)], ["apply", str(twice), "--auto-approve"]):
        res = cli(ws, *command)
        assert res.exit_code == 1 and "repeats 1 member change" in res.stderr, res.stderr
    assert ws.sandbox_keys() == {}


def back_dated(tmp_path: Path, good: Path, name: str, as_of: str, rows) -> Path:
    """``good`` with ``rows`` as its changes (:func:`forge`) and ``as_of`` moved back."""
    forged = forge(tmp_path, good, f"{name}-rows", rows, change="update")
    parts = members(forged)
    doc = json.loads(parts["plan.json"])
    doc["as_of"] = as_of
    parts["plan.json"] = json.dumps(doc).encode()
    return write_plan(tmp_path / f"{name}.plan", parts)


def test_a_back_dated_plan_cannot_send_members_outside_todays_segment(workspace, tmp_path):
    """A rolling window (``days_ago``) means other members on another day: a plan file whose
    ``as_of`` was moved back a year planned again as of that day would send everyone who
    joined within a week of it. Its changes must hold today as well."""
    recent = "sql: SELECT customer_id FROM profiles WHERE joined >= {{ days_ago(7) }}\n"
    ws = workspace(
        {"act": MAINTAIN},
        profiles=[profile(i) for i in range(6)],
        segments={"seg-a": recent, "seg-b": "sql: SELECT customer_id FROM profiles\n"},
    )
    ws.alter_profiles(
        "ALTER TABLE profiles ADD COLUMN joined DATE",
        "UPDATE profiles SET joined = CASE WHEN customer_id < 'c00002' THEN current_date "
        "ELSE DATE '2020-01-01' END",
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    before = ws.sandbox_keys()
    assert len(before["Audience A"]) == 2
    good = tmp_path / "good.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    old = [("add", f"c0000{i}") for i in (2, 3, 4, 5)]
    res = applied(ws, back_dated(tmp_path, good, "old", "2020-01-03T00:00:00Z", old))
    assert ws.sandbox_keys() == before, res.output + res.stderr
    assert "act: 4 member change(s) of the saved plan no longer hold" in res.stderr


def test_a_plan_dated_in_the_future_is_refused(workspace, tmp_path):
    ws, good, before = setup(workspace, tmp_path)
    res = applied(ws, back_dated(tmp_path, good, "future", "2999-01-01T00:00:00Z", []))
    assert res.exit_code == 1
    assert "future.plan: the saved plan is dated 2999-01-01T00:00:00+00:00, in the future" in (
        res.stderr
    )
    assert ws.sandbox_keys() == before


def test_a_plan_for_a_destination_this_workspace_lacks_is_refused_cleanly(workspace, tmp_path):
    """A plan made in another workspace: the state is empty, so apply asks the destinations
    whether the audiences to create exist already, and asked for one the workspace has no
    integration for (internal error: KeyError)."""
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(3)])
    plan = tmp_path / "other.plan"
    assert cli(ws, "plan", "--out", str(plan)).exit_code == 0
    ws.root.joinpath("activations", "act.yaml").unlink()
    ws.root.joinpath("integrations", "sandbox.yaml").unlink()
    res = applied(ws, plan)
    assert "internal error" not in res.stderr, res.stderr
    assert "act: Refused" in res.output and "act.yaml was deleted since the plan" in res.stderr
