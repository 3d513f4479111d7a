"""``goal: sync_attributes`` end to end through the CLI: plan counts (profiles and values per
attribute), apply, what the sandbox holds, an empty re-plan, leaving never clears, and the
refusals."""

from __future__ import annotations

import duckdb
import pytest

from destinations.identity import sha256_hex
from destinations.sandbox import open_store
from tests.conftest import SANDBOX_YAML, audience_counts, cli, plan_json, profile

SYNC = """\
goal: sync_attributes
segments: [seg-a]
destination: sandbox
name: Profile attributes
attributes: [FIRST_NAME, COUNTRY]
"""


def email_key(i: int) -> str:
    return f"email_sha256:{sha256_hex(f'user{i}@example.com')}"


def held(ws) -> dict[str, dict]:
    """match key -> attributes the sandbox holds for it now."""
    import json

    con = duckdb.connect(str(ws.root / ".reconcile/sandbox.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT match_key, attributes FROM members").fetchall()
    finally:
        con.close()
    return {k: json.loads(v) for k, v in rows}


def attribute_counts(plan: dict, activation: str) -> dict[str, int]:
    (a,) = [a for a in plan["activations"] if a["id"] == activation]
    (au,) = a["audiences"]
    return au["attributes"]


def test_first_apply_sends_every_mapped_value_then_plan_is_empty(workspace):
    ws = workspace({"attrs": SYNC}, profiles=[profile(i, a=i < 6) for i in range(10)])
    plan = plan_json(ws)
    (act,) = plan["activations"]
    assert act["goal"] == "sync_attributes"
    assert audience_counts(plan, "attrs") == {"all": (6, 0, 0)}
    assert attribute_counts(plan, "attrs") == {"FIRST_NAME": 6, "COUNTRY": 6}

    text = cli(ws, "plan").output
    assert "profiles to update: 6; attribute values to change: FIRST_NAME 6, COUNTRY 6" in text, (
        text
    )

    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws) == {email_key(i): {"FIRST_NAME": f"Name{i}", "COUNTRY": "AU"} for i in range(6)}
    again = cli(ws, "plan", "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    assert "No changes" in again.output


def test_changed_values_are_counted_per_attribute_and_leavers_keep_their_fields(workspace):
    ws = workspace({"attrs": SYNC}, profiles=[profile(i, a=i < 6) for i in range(10)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    # 1 and 2 change their first name, 3 its country, 4 an unmapped column; 0 leaves; 7 enters
    rows = [
        profile(i, a=(0 < i < 6) or i == 7, name="Changed" if i in (1, 2) else None)
        | ({"country": "NZ"} if i == 3 else {})
        | ({"total_spend": 500.0} if i == 4 else {})
        for i in range(10)
    ]
    ws.set_profiles(rows)
    plan = plan_json(ws)
    (act,) = plan["activations"]
    (au,) = act["audiences"]
    assert (au["add"], au["remove"], au["update"], au["forget"]) == (1, 0, 3, 1)
    # 7 enters with both values; 1, 2 change FIRST_NAME; 3 changes COUNTRY
    assert au["attributes"] == {"FIRST_NAME": 3, "COUNTRY": 2}
    assert plan["summary"]["remove"] == 0
    text = cli(ws, "plan").output
    assert "profiles to update: 4; attribute values to change: FIRST_NAME 3, COUNTRY 2" in text
    assert (
        "left the audience (the segment, or excluded by consent or suppression): their attribute values stay"
        in text
    )

    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    now = held(ws)
    assert now[email_key(1)] == {"FIRST_NAME": "Changed", "COUNTRY": "AU"}
    assert now[email_key(3)] == {"FIRST_NAME": "Name3", "COUNTRY": "NZ"}
    assert now[email_key(7)] == {"FIRST_NAME": "Name7", "COUNTRY": "AU"}
    assert now[email_key(0)] == {"FIRST_NAME": "Name0", "COUNTRY": "AU"}  # never cleared
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0

    # 0 comes back: it gets all mapped values again
    rows[0] = profile(0, a=True, name="Back")
    ws.set_profiles(rows)
    plan = plan_json(ws)
    assert audience_counts(plan, "attrs") == {"all": (1, 0, 0)}
    assert attribute_counts(plan, "attrs") == {"FIRST_NAME": 1, "COUNTRY": 1}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws)[email_key(0)] == {"FIRST_NAME": "Back", "COUNTRY": "AU"}


def test_lost_attribute_hashes_count_every_field_of_a_changed_profile(workspace):
    """A run that died before recording the per-attribute hashes: the next plan still sends
    the right profiles, and counts every field of a changed one (it cannot tell which)."""
    ws = workspace({"attrs": SYNC}, profiles=[profile(i, a=True) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile/state.duckdb"))
    try:
        con.execute("DELETE FROM member_attributes")
    finally:
        con.close()
    ws.set_profiles([profile(i, a=True, name="New" if i == 2 else None) for i in range(4)])
    plan = plan_json(ws)
    assert audience_counts(plan, "attrs") == {"all": (0, 0, 1)}
    assert attribute_counts(plan, "attrs") == {"FIRST_NAME": 1, "COUNTRY": 1}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=True, name="Newer" if i == 2 else None) for i in range(4)])
    assert attribute_counts(plan_json(ws), "attrs") == {"FIRST_NAME": 1, "COUNTRY": 0}


def _fails(ws, *args: str) -> str:
    res = cli(ws, *args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.stderr
    return res.stderr


def test_refused_on_a_destination_without_attributes(workspace, monkeypatch):
    monkeypatch.setenv("META_TOKEN", "t")
    ws = workspace({"attrs": SYNC.replace("sandbox", "meta")}, profiles=[profile(1, a=True)])
    ws.write(
        "integrations/meta.yaml",
        """\
        type: meta_custom_audiences
        attributes: {FIRST_NAME: first_name, COUNTRY: country}
        credentials: {access_token: "${env:META_TOKEN}"}
        config: {ad_account_id: "123"}
        """,
    )
    err = _fails(ws, "validate")
    assert (
        "activations/attrs.yaml:1: goal: `goal: sync_attributes` sends attribute values, but "
        "destination 'meta' does not take attributes" in err
    ), err


def test_refused_with_a_split_or_a_remove_action(workspace):
    ws = workspace(
        {"ab": SYNC + "split: ab\n", "rm": SYNC + "action: remove\nlist: {existing: x}\n"},
        profiles=[profile(1, a=True)],
    )
    err = _fails(ws, "validate")
    assert "activations/ab.yaml:6: split: `split` is only for `goal: send_segments`" in err, err
    assert "activations/rm.yaml:6: action: `goal: sync_attributes` updates attribute values" in err


def test_markdown_and_a_saved_plan_carry_the_attribute_counts(workspace, tmp_path):
    ws = workspace({"attrs": SYNC}, profiles=[profile(i, a=i < 3) for i in range(5)])
    md = cli(ws, "plan", "--format", "markdown").output
    assert "- profiles to update: 3; attribute values to change: FIRST\\_NAME 3, COUNTRY 3" in md, (
        md
    )
    out = tmp_path / "p.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    shown = cli(ws, "show", str(out), "--format", "json").json()
    assert attribute_counts(shown, "attrs") == {"FIRST_NAME": 3, "COUNTRY": 3}
    assert cli(ws, "apply", str(out), "--auto-approve").exit_code == 0
    assert len(held(ws)) == 3
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_state_from_before_attribute_hashes_is_read_and_completed(workspace):
    """A state written before ``member_attributes`` existed: plan reads it (read-only) as
    having no hashes, and the next apply adds the table."""
    ws = workspace({"attrs": SYNC}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    state = str(ws.root / ".reconcile/state.duckdb")
    con = duckdb.connect(state)
    try:
        con.execute("DROP TABLE member_attributes")
    finally:
        con.close()
    ws.set_profiles([profile(i, a=True, name="X" if i == 0 else None) for i in range(3)])
    plan = plan_json(ws)
    assert audience_counts(plan, "attrs") == {"all": (0, 0, 1)}
    assert attribute_counts(plan, "attrs") == {"FIRST_NAME": 1, "COUNTRY": 1}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(state, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM member_attributes").fetchall() == [(3,)]
        # hashes only: no value of any profile is in the table
        text = str(con.execute("SELECT * FROM member_attributes").fetchall())
    finally:
        con.close()
    assert "Name1" not in text and "AU" not in text and "X'" not in text


@pytest.mark.parametrize("goal", ["send_segments", "sync_attributes"])
def test_renaming_a_mapped_field_sends_every_member_under_the_new_name(workspace, goal) -> None:
    """`FIRST_NAME: first_name` becomes `GIVEN_NAME: first_name`: the values did not change,
    so the fingerprint did not, but the destination must get the field under its new name."""
    act = (
        "segments: [seg-a]\ndestination: sandbox\nname: Renamed\n"
        f"goal: {goal}\nattributes: [FIRST_NAME]\n"
    )
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML.replace("FIRST_NAME:", "GIVEN_NAME:"))
    ws.write("activations/act.yaml", act.replace("FIRST_NAME", "GIVEN_NAME"))
    (planned,) = plan_json(ws)["activations"]
    assert planned["audiences"][0]["update"] == 3
    assert any("attribute mapping changed" in n for n in planned["notes"])
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    store = open_store(ws.root / ".reconcile/sandbox.duckdb")
    (audience,) = store.audiences()
    held = store.attributes(audience.id)
    assert held and all(a.get("GIVEN_NAME", "").startswith("Name") for a in held.values()), held
    assert all("FIRST_NAME" not in a for a in held.values()), held
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0  # sent once, then settled


def test_a_rename_reaches_a_member_the_destination_asked_to_retry(workspace) -> None:
    """The sandbox asks to retry one member's update: the next run sends it again under the
    new name (a run marking the rename done left that member with the old one)."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Renamed\nattributes: [FIRST_NAME]\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    renamed = SANDBOX_YAML.replace("FIRST_NAME:", "GIVEN_NAME:")
    ws.write(
        "integrations/sandbox.yaml",
        renamed.replace("  batch_size: 7\n", "  batch_size: 7\n  retry_keys: [c00001]\n"),
    )
    ws.write("activations/act.yaml", act.replace("FIRST_NAME", "GIVEN_NAME"))
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("integrations/sandbox.yaml", renamed)
    (planned,) = plan_json(ws)["activations"]
    assert planned["audiences"][0]["update"] == 1
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    store = open_store(ws.root / ".reconcile/sandbox.duckdb")
    (audience,) = store.audiences()
    assert all(
        "GIVEN_NAME" in a and "FIRST_NAME" not in a for a in store.attributes(audience.id).values()
    )
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_rename_while_paused_is_sent_when_resumed(workspace) -> None:
    act = "segments: [seg-a]\ndestination: sandbox\nname: Renamed\nattributes: [FIRST_NAME]\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML.replace("FIRST_NAME:", "GIVEN_NAME:"))
    renamed = act.replace("FIRST_NAME", "GIVEN_NAME")
    ws.write("activations/act.yaml", renamed + "paused: true\n")
    assert cli(ws, "apply", "--auto-approve").exit_code == 0  # paused: nothing sent
    ws.write("activations/act.yaml", renamed)
    (planned,) = plan_json(ws)["activations"]
    assert planned["audiences"][0]["update"] == 3
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_goal_change_the_state_cannot_follow_is_refused_and_sends_nothing(workspace) -> None:
    """sync_attributes forgets leavers (they stay at the destination): switching such an
    activation to send_segments would leave them in the audience while the plan says it
    matches. The switch is refused, naming the file; the other way round is planned."""
    ws = workspace({"attrs": SYNC}, profiles=[profile(i, a=i < 6) for i in range(10)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=0 < i < 6) for i in range(10)])  # 0 leaves: forgotten
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    before = held(ws)
    assert email_key(0) in before  # leaving never removes under sync_attributes

    ws.write("activations/attrs.yaml", SYNC.replace("sync_attributes", "send_segments"))
    for command in (["plan"], ["apply", "--auto-approve"]):
        res = cli(ws, *command)
        assert res.exit_code == 1, res.output + res.stderr
        message = res.output + res.stderr
        assert "activations/attrs.yaml" in message, message
        assert "`goal` changed from sync_attributes to send_segments" in message, message
    assert held(ws) == before  # nothing was sent

    ws.write("activations/attrs.yaml", SYNC)  # back: planned as before
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_send_segments_may_become_sync_attributes(workspace) -> None:
    act = SYNC.replace("goal: sync_attributes\n", "")
    ws = workspace({"attrs": act}, profiles=[profile(i, a=i < 6) for i in range(10)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/attrs.yaml", SYNC)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    ws.set_profiles([profile(i, a=0 < i < 6) for i in range(10)])
    (planned,) = plan_json(ws)["activations"]
    assert planned["audiences"][0]["forget"] == 1 and planned["audiences"][0]["remove"] == 0


def test_under_append_the_remapping_note_says_whom_it_updates(workspace) -> None:
    """`action: append` keeps members that left; a mapping change updates the members still in
    the segments only, and the note says so (it claimed every member)."""
    act = (
        "segments: [seg-a]\ndestination: sandbox\nname: Kept\naction: append\n"
        "attributes: [FIRST_NAME]\n"
    )
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=i >= 2) for i in range(4)])  # 0 and 1 leave, kept
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML.replace("FIRST_NAME:", "GIVEN_NAME:"))
    ws.write("activations/act.yaml", act.replace("FIRST_NAME", "GIVEN_NAME"))
    (planned,) = plan_json(ws)["activations"]
    assert planned["audiences"][0]["update"] == 2
    (note,) = [n for n in planned["notes"] if "attribute mapping changed" in n]
    assert "every member still in its segments is updated" in note, note


def test_a_goal_change_is_refused_too_when_no_run_completed(workspace) -> None:
    """No run completed (one rejection over max_rejected_share 0), so no spec records the
    goal: the attribute hashes in the state say the activation synced attributes, and the
    switch to send_segments is refused as it is after a complete run."""
    integration = SANDBOX_YAML + "  reject_add_keys: [c00001, c00007]\n"
    act = SYNC + "max_rejected_share: 0\n"
    ws = workspace({"attrs": act}, profiles=[profile(i, a=i < 6) for i in range(10)],
                   integration=integration)  # fmt: skip
    assert cli(ws, "apply", "--auto-approve").exit_code == 1  # Failed: a rejection
    # 0 leaves (forgotten), 7 enters and is rejected: Failed again
    ws.set_profiles([profile(i, a=0 < i < 6 or i == 7) for i in range(10)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 1
    ws.write("activations/attrs.yaml", act.replace("sync_attributes", "send_segments"))
    res = cli(ws, "plan")
    assert res.exit_code == 1, res.output + res.stderr
    assert "`goal` changed from sync_attributes to send_segments" in res.stderr, res.stderr


def test_clearing_a_deleted_sync_says_what_it_cannot_reach(workspace):
    """Profiles that left a sync_attributes activation were forgotten, not removed: clearing
    it on delete removes only the recorded members, though the plan said it empties the
    audience. The plan now says which stay."""
    ws = workspace(
        {"attrs": SYNC + "on_delete: clear\n"}, profiles=[profile(i, a=True) for i in range(6)]
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=i >= 2) for i in range(6)])  # two leave: forgotten
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.remove("activations/attrs.yaml")
    text = cli(ws, "plan").output
    assert "clearing removes only the recorded members, and those stay" in text, text


def test_adding_a_field_or_a_segment_is_said_as_such(workspace) -> None:
    """A field added to `attributes` was announced as "the attribute mapping changed (a
    destination field renamed or mapped to another column)", and a segment added to the
    activation as "(definition changed)"."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Grown\nattributes: [FIRST_NAME]\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=True, b=i < 2) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write(
        "activations/act.yaml",
        act.replace("[FIRST_NAME]", "[FIRST_NAME, COUNTRY]").replace("[seg-a]", "[seg-a, seg-b]"),
    )
    (planned,) = plan_json(ws)["activations"]
    (note,) = [n for n in planned["notes"] if "attribute" in n]
    assert note.startswith("attribute(s) COUNTRY added to what is sent"), note
    assert [s["changed"] for s in planned["segments"]] == [False, False]
