"""A saved plan is applied later (a CI artifact applied on merge): a profile that withdrew its
consent or joined a suppression list since the plan is not sent, and the apply says so."""

from __future__ import annotations

import hashlib

import duckdb

from tests.conftest import RECONCILE_YAML, SEGMENTS, cli, profile

MAINTAIN = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"
WITH_SUPPRESSION = RECONCILE_YAML.replace("suppression: []", "suppression: [blocked]")
BLOCKED = "sql: SELECT customer_id FROM profiles WHERE email LIKE '%@blocked.invalid'\n"


def change_profiles(ws, *statements: str) -> None:
    """Change the source after the plan, as the warehouse would."""
    con = duckdb.connect(str(ws.db))
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()


def email_record(address: str) -> str:
    return "email_sha256:" + hashlib.sha256(address.encode()).hexdigest()


def test_a_saved_plan_does_not_send_who_withdrew_consent_or_was_suppressed(workspace, tmp_path):
    ws = workspace(
        {"act": MAINTAIN},
        profiles=[profile(i, a=True) for i in range(6)],
        segments={**SEGMENTS, "blocked": BLOCKED},
        reconcile_yaml=WITH_SUPPRESSION,
    )
    out = tmp_path / "saved.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    change_profiles(  # after the plan: one withdraws consent, one is suppressed, one moves
        ws,
        "UPDATE profiles SET email_consent = FALSE WHERE customer_id = 'c00001'",
        "UPDATE profiles SET email = 'x@blocked.invalid' WHERE customer_id = 'c00002'",
        "UPDATE profiles SET email = 'new3@example.com' WHERE customer_id = 'c00003'",
    )

    res = cli(ws, "apply", str(out), "--auto-approve")

    assert res.exit_code == 0, res.stderr + res.output
    held = ws.sandbox_keys("Audience A")["Audience A"]
    assert email_record("user1@example.com") not in held
    assert email_record("x@blocked.invalid") not in held
    expected = {email_record(f"user{i}@example.com") for i in (0, 4, 5)}
    expected.add(email_record("new3@example.com"))  # identifiers are read when sent
    assert held == expected
    assert "act: 2 member change(s) of the saved plan no longer hold" in res.stderr
    # the next plan sees the state as it is: nothing more to send, nobody to remove
    again = cli(ws, "plan", "--format", "json")
    changes = again.json()["activations"][0]["audiences"][0]
    assert (changes["add"], changes["remove"]) == (0, 0)


def test_an_apply_that_plans_itself_sends_the_consenting_members(workspace):
    profiles = [profile(i, a=True, consent=i != 2) for i in range(4)]
    ws = workspace({"act": MAINTAIN}, profiles=profiles)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.stderr
    assert "not sent" not in res.stderr + res.output
    held = ws.sandbox_keys("Audience A")["Audience A"]
    assert held == {email_record(f"user{i}@example.com") for i in (0, 1, 3)}


def test_a_plan_file_cannot_send_to_an_audience_it_was_not_made_for(workspace, tmp_path):
    """The audience id in a saved plan is data from outside: an edited one pointing at another
    audience at the destination (another team's) is not used (the apply takes the audience
    from the plan made now); that audience is left alone."""
    other = "segments: [seg-b]\ndestination: sandbox\nname: Other team\n"
    rows = [profile(i, a=i < 3, b=i >= 3) for i in range(6)]
    ws = workspace({"act": MAINTAIN, "other": other}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    before = ws.sandbox_keys()
    change_profiles(ws, "UPDATE profiles SET seg_a = TRUE WHERE customer_id = 'c00005'")
    good = tmp_path / "good.plan"
    assert cli(ws, "plan", "-t", "act", "--out", str(good)).exit_code == 0
    sandbox = duckdb.connect(str(ws.root / ".reconcile/sandbox.duckdb"), read_only=True)
    try:
        (victim,) = sandbox.execute("SELECT id FROM audiences WHERE name = 'Other team'").fetchone()
    finally:
        sandbox.close()
    bad = _edit_audience(tmp_path, good, "bad.plan", resource_id=victim)

    res = cli(ws, "apply", str(bad), "--auto-approve")

    assert res.exit_code == 0, res.output + res.stderr
    after = ws.sandbox_keys()
    assert after["Other team"] == before["Other team"]  # never sent to
    assert len(after["Audience A"]) == len(before["Audience A"]) + 1  # where the plan said
    assert "No changes" in cli(ws, "plan").output


def test_a_stale_plan_names_what_may_have_changed(workspace, tmp_path):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(3)])
    out = tmp_path / "saved.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    ws.write("segments/seg-a.yaml", "sql: SELECT customer_id FROM profiles WHERE seg_b\n")
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1
    assert "activations/act.yaml or what it uses (segments/seg-a.yaml" in res.stderr, res.stderr
    ws.remove("activations/act.yaml")
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1
    assert "activations/act.yaml was deleted since the plan" in res.stderr, res.stderr
    assert ws.sandbox_keys() == {}


def _edit_audience(tmp_path, good, name: str, **changes):
    import json

    from tests.test_planfile import members, write_plan

    parts = members(good)
    doc = json.loads(parts["plan.json"])
    doc["activations"][0]["audiences"][0].update(changes)
    parts["plan.json"] = json.dumps(doc).encode()
    return write_plan(tmp_path / name, parts)


def test_a_saved_plan_can_adopt_an_audience_by_its_name(workspace, tmp_path):
    """`adopt: true` takes over the audience of its name; made by a saved plan (the CI flow)
    the id in the plan is that audience's, and it is applied."""
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.remove("activations/act.yaml")
    ws.write("activations/heir.yaml", MAINTAIN + "adopt: true\n")
    out = tmp_path / "adopt.plan"
    res = cli(ws, "plan", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    applied = cli(ws, "apply", str(out), "--auto-approve", "--allow-mass-removal")
    assert applied.exit_code == 0, applied.stderr + applied.output
    assert list(ws.sandbox_keys()) == ["Audience A"]  # taken over, not a second one


def test_an_edited_plan_cannot_create_a_second_audience(workspace, tmp_path):
    """A plan creates an audience that is recorded only when it saw it gone: an edited one
    asking to create it while it is still there is not followed (the apply takes the audience
    from the plan made now), and no second audience is made."""
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 2) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    change_profiles(ws, "UPDATE profiles SET seg_a = TRUE WHERE customer_id = 'c00002'")
    good = tmp_path / "good.plan"
    assert cli(ws, "plan", "--out", str(good)).exit_code == 0
    bad = _edit_audience(tmp_path, good, "bad.plan", create=True, resource_id=None)
    res = cli(ws, "apply", str(bad), "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert list(ws.sandbox_keys()) == ["Audience A"]
    assert len(ws.sandbox_keys()["Audience A"]) == 3
