"""The plan counts, by the destination's exact rules, the members to add or update that have
no usable identifier: the cheap matchable estimate lets ``bob@localhost`` through, the send
records such a member without sending it, and the plan must not promise it."""

from __future__ import annotations

from reconciler.plan import sendable
from tests.conftest import cli, plan_json, profile

ACT = "segments: [seg-a]\ndestination: sandbox\nname: Messy\n"
MESSY = ["bob@localhost", "a@b@c.com", "x y@example.com", "trailing@example.com."]


def messy_rows() -> list[dict]:
    good = [profile(i, a=True) for i in range(3)]
    return good + [profile(10 + i, a=True, email=e) for i, e in enumerate(MESSY)]


def test_members_with_no_usable_identifier_are_counted_by_the_plan(workspace):
    ws = workspace({"act": ACT}, profiles=messy_rows())
    (act,) = plan_json(ws)["activations"]
    assert act["matchable"] == 7  # the estimate lets every one of them through
    assert act["unsendable"] == 4
    text = cli(ws, "plan").output
    assert "4 of the 7 member(s) to add or update have no identifier sandbox takes" in text
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Messy"]) == 3  # what the note said: 3 sent
    # recorded, not sent again: the next plan is empty, and checks nothing
    after = plan_json(ws)
    assert not after["has_changes"]
    assert after["activations"][0]["unsendable"] == 0
    # one fixes an address: an update, sendable
    fixed = messy_rows()
    fixed[3]["email"] = "bob@example.com"
    ws.set_profiles(fixed)
    (act,) = plan_json(ws)["activations"]
    assert act["unsendable"] == 0 and act["audiences"][0]["update"] == 1


def test_above_the_limit_the_plan_says_it_did_not_check(workspace, monkeypatch):
    monkeypatch.setattr(sendable, "EXACT_LIMIT", 5)
    ws = workspace({"act": ACT}, profiles=messy_rows())
    (act,) = plan_json(ws)["activations"]
    assert act["unsendable"] is None
    assert any("checked as they are sent" in n for n in act["notes"])


def test_a_large_profiles_table_is_not_scanned_for_it(workspace, monkeypatch):
    monkeypatch.setattr(sendable, "EXACT_PROFILES", 5)
    ws = workspace({"act": ACT}, profiles=messy_rows())
    (act,) = plan_json(ws)["activations"]
    assert act["unsendable"] is None
    assert any("profiles table of at most 5 rows" in n for n in act["notes"])
