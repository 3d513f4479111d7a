"""The plan counts, by the destination's exact rules, the members to add or update that have
no usable identifier: the cheap matchable estimate lets ``bob@localhost`` through, the send
records such a member without sending it, and the plan must not promise it."""

from __future__ import annotations

import hashlib

import pytest

from reconciler.plan import sendable
from tests.conftest import SANDBOX_YAML, cli, plan_json, profile

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


@pytest.mark.parametrize(
    ("bound", "said"),
    [("EXACT_LIMIT", "checked as they are sent"), ("EXACT_PROFILES", "table of at most 5 rows")],
)
def test_above_a_bound_the_plan_says_it_did_not_check(workspace, monkeypatch, bound, said):
    """More changes than the plan checks, or a profiles table larger than it scans."""
    monkeypatch.setattr(sendable, bound, 5)
    ws = workspace({"act": ACT}, profiles=messy_rows())
    (act,) = plan_json(ws)["activations"]
    assert act["unsendable"] is None
    assert any(said in n for n in act["notes"])


def _sent_then_broken(workspace, n: int = 20):
    """n members sent, then every address loses its top-level domain (user0@example): each
    update leaves its member with no usable identifier."""
    rows = [profile(i, a=True) for i in range(n)]
    ws = workspace({"act": ACT}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    for r in rows:
        r["email"] = r["email"].replace(".com", "")
    ws.set_profiles(rows)
    return ws


def test_updates_that_leave_no_identifier_trip_the_mass_removal_guard_in_the_plan(workspace):
    ws = _sent_then_broken(workspace)
    (act,) = plan_json(ws)["activations"]
    (au,) = act["audiences"]
    assert (au["update"], au["lose"], au["mass_removal"]) == (20, 20, True)
    text = cli(ws, "plan").output
    assert "would remove 20 of 20 members (20 left with no usable identifier)" in text
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1 and "mass-removal guard" in res.output + res.stderr
    assert len(ws.sandbox_keys()["Messy"]) == 20  # nothing was sent
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys().get("Messy", set()) == set()


def test_apply_guards_what_the_plan_could_not_check(workspace, monkeypatch):
    ws = _sent_then_broken(workspace)
    monkeypatch.setattr(sendable, "EXACT_PROFILES", 5)  # the plan only estimates
    (act,) = plan_json(ws)["activations"]
    assert act["audiences"][0]["mass_removal"] is False and act["unsendable"] is None
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1, res.output + res.stderr
    said = res.output + res.stderr
    assert "Refused" in said and "nothing was sent" in said
    assert "20 member(s) of audience 'Messy' have no usable identifier left" in said
    assert len(ws.sandbox_keys()["Messy"]) == 20
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys().get("Messy", set()) == set()
    assert not plan_json(ws)["has_changes"]


def test_a_short_national_phone_that_normalises_is_sent(workspace):
    """Luxembourg numbers of 6 digits are valid (+352 22 12 34): the matchable estimate
    must not drop what the destination's rules accept (it once asked for 7 digits)."""
    from tests.conftest import RECONCILE_YAML

    yaml = RECONCILE_YAML.replace("default_phone_country: AU", "default_phone_country: LU")
    assert yaml != RECONCILE_YAML
    rows = [profile(0, a=True, email=None) | {"phone": "22 12 34"}]
    ws = workspace({"act": ACT}, profiles=rows, reconcile_yaml=yaml)
    (act,) = plan_json(ws)["activations"]
    assert (act["matchable"], act["unsendable"]) == (1, 0)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (held,) = ws.sandbox_keys()["Messy"]
    assert held == "phone_sha256:" + hashlib.sha256(b"+352221234").hexdigest()


def test_an_update_that_leaves_no_identifier_is_logged_as_a_removal(workspace):
    rows = [profile(i, a=True) for i in range(4)]
    ws = workspace({"act": ACT}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows[0]["email"] = "bob@localhost"  # sent before: its string is removed
    rows[1]["email"] = "new1@example.com"  # a real update
    ws.set_profiles(rows)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert "update: 1 of 2 members sent" in res.stderr
    run = cli(ws, "log", "act", "--format", "json").json()["runs"][0]
    assert (run["updated"], run["removed"]) == (1, 1)
    assert len(ws.sandbox_keys()["Messy"]) == 3


def test_phones_from_a_float_column_are_sent_as_the_numbers_they_are(workspace):
    """pandas writes an integer column with gaps as float64, so phones arrive as DOUBLE
    (``61412345000.0`` as text): the ``.0`` is not a digit of the number, and a BOM or a
    zero-width space in front of an e-mail is not part of the address."""
    rows = [profile(i, a=True) for i in range(3)]
    rows[0]["email"] = "\ufeffuser0@example.com"
    rows[1]["email"] = "user1@exa\u200bmple.com"
    ws = workspace({"act": ACT}, profiles=rows)
    ws.alter_profiles(
        "ALTER TABLE profiles DROP COLUMN phone",
        "ALTER TABLE profiles ADD COLUMN phone DOUBLE",
        "UPDATE profiles SET phone = 61412345000 + CAST(customer_id[2:] AS INTEGER)",
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    held = ws.sandbox_keys()["Messy"]
    for i in range(3):
        assert f"phone_sha256:{sha(f'+6141234500{i}')}" in held
        assert f"email_sha256:{sha(f'user{i}@example.com')}" in held
    assert len(held) == 6


def test_a_segment_returning_another_column_than_the_key_is_a_warning(workspace):
    """`SELECT email` where `SELECT customer_id` was meant: no key is a profile, so nothing
    can be sent. The plan says so as a warning naming the segment and the key column, not
    as a quiet note; a segment with some unknown keys keeps the note."""
    rows = [profile(i, a=True) for i in range(4)]
    wrong = {"seg-a": "sql: SELECT email FROM profiles WHERE seg_a\n"}
    ws = workspace({"act": ACT}, profiles=rows, segments=wrong)
    (act,) = plan_json(ws)["activations"]
    (warning,) = [w for w in act["warnings"] if "none of the 4 key(s)" in w]
    assert "'seg-a'" in warning and "'customer_id'" in warning
    some = {"seg-a": "sql: SELECT customer_id FROM profiles UNION ALL SELECT 'ghost'\n"}
    ws.write("segments/seg-a.yaml", some["seg-a"])
    (act,) = plan_json(ws)["activations"]
    assert not [w for w in act["warnings"] if "none of the" in w]
    assert "1 segment key(s) are not in the profiles table" in act["notes"]


def test_members_sent_under_older_identifier_rules_are_rechecked_once(workspace):
    """A state written by a version whose rules hashed an e-mail with its BOM (identity
    rules 1): the first plan under the current rules re-checks the recorded members and
    updates exactly those whose records now differ; then nothing more."""
    import json

    import duckdb

    rows = [profile(i, a=True) for i in range(4)]
    rows[0]["email"] = "\ufeffuser0@example.com"
    ws = workspace({"act": ACT}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    old = "email_sha256:" + hashlib.sha256("\ufeffuser0@example.com".encode()).hexdigest()
    state = duckdb.connect(str(ws.root / ".reconcile" / "state.duckdb"))
    spec = json.loads(state.execute("SELECT spec FROM activations").fetchall()[0][0])
    del spec["identity_rules"]  # as the older version recorded it
    state.execute("UPDATE activations SET spec = ?", [json.dumps(spec)])
    state.execute("UPDATE members SET record = [?] WHERE key = 'c00000'", [old])
    state.close()
    (act,) = plan_json(ws)["activations"]
    assert act["audiences"][0]["update"] == 1 and act["audiences"][0]["add"] == 0
    assert any("older identifier rules" in n for n in act["notes"])
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    good = "email_sha256:" + hashlib.sha256(b"user0@example.com").hexdigest()
    held = ws.sandbox_keys()["Messy"]
    assert good in held and old not in held
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_activations_on_the_same_members_are_each_checked_by_their_destinations_rules(
    workspace, monkeypatch
):
    """A plan checks a member once per set of rules (the keys checked are kept for the
    session): activations of one integration share the answer, an integration that takes
    other identifiers gets its own."""
    phones = SANDBOX_YAML.replace("identifiers: [email, phone]", "identifiers: [phone]")
    phones = phones.replace(".reconcile/sandbox.duckdb", ".reconcile/phones.duckdb")
    acts = {
        "e1": ACT,
        "e2": ACT.replace("Messy", "Messy 2"),
        "p1": ACT.replace("sandbox", "phones").replace("Messy", "Phones"),
    }
    rows = messy_rows()
    for i, r in enumerate(rows):  # phones for two good and two messy e-mails; one too short
        r["phone"] = "0412 345 67" + str(i) if i in (0, 1, 3, 4) else None
    rows[1]["phone"] = "+1 2345"  # five digits: matchable by the estimate, not a number
    ws = workspace(acts, profiles=rows)
    ws.write("integrations/phones.yaml", phones)
    built: list[tuple[str, ...]] = []  # the identifier types of each rules' SQL built
    records_sql = sendable.records_sql

    def spy(*args, **kwargs):
        built.append(tuple(args[0]))
        return records_sql(*args, **kwargs)

    monkeypatch.setattr(sendable, "records_sql", spy)
    by_id = {a["id"]: a for a in plan_json(ws)["activations"]}
    # e-mail or phone: the two messy e-mails without a phone
    assert (by_id["e1"]["unsendable"], by_id["e2"]["unsendable"]) == (2, 2)
    assert by_id["p1"]["unsendable"] == 1  # 4 members with a phone, one too short
    assert sorted(built) == [("email", "phone"), ("phone",)]  # once per set of rules
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys(path=".reconcile/phones.duckdb")["Phones"]) == 3
    assert len(ws.sandbox_keys()["Messy 2"]) == 6  # 5 members: one with both identifiers
