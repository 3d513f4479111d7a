"""End-to-end plan and apply through the CLI against real DuckDB files and the sandbox."""

from __future__ import annotations

import duckdb
import pytest

from destinations.base import DestinationContext
from destinations.identity import sha256_hex
from reconciler.errors import ConfigError
from tests.conftest import SANDBOX_YAML, audience_counts, cli, plan_json, profile

MAINTAIN = """\
segments: [seg-a]
destination: sandbox
name: Audience A
attributes: [FIRST_NAME]
"""


def email_key(i: int) -> str:
    return f"email_sha256:{sha256_hex(f'user{i}@example.com')}"


def test_create_apply_then_plan_is_empty(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 10) for i in range(20)])
    plan = plan_json(ws)
    assert plan["format_version"] == 1
    (act,) = plan["activations"]
    assert act["change"] == "create"
    assert act["audience_size"] == 10 and act["matchable"] == 10
    assert audience_counts(plan, "act") == {"all": (10, 0, 0)}

    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys() == {"Audience A": {email_key(i) for i in range(10)}}

    again = cli(ws, "plan", "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    assert "No changes" in again.output


def test_maintain_adds_removes_and_updates(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 10) for i in range(20)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    # 0..2 leave, 10..11 enter, 5 changes its mapped attribute, 6 changes an unmapped one
    rows = [
        profile(
            i, a=3 <= i < 12, name="Renamed" if i == 5 else None, spend=99.0 if i == 6 else 10.0
        )
        for i in range(20)
    ]
    ws.set_profiles(rows)
    plan = plan_json(ws)
    assert audience_counts(plan, "act") == {"all": (2, 3, 1)}
    res = cli(ws, "plan", "--detailed-exitcode")
    assert res.exit_code == 2
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert ws.sandbox_keys()["Audience A"] == {email_key(i) for i in range(3, 12)}
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_append_never_removes_leavers_but_removes_lost_consent(workspace):
    ws = workspace(
        {"act": MAINTAIN + "action: append\n"}, profiles=[profile(i, a=i < 6) for i in range(10)]
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows = [profile(i, a=i >= 4, consent=i != 5) for i in range(10)]  # 0..3 leave, 5 no consent
    ws.set_profiles(rows)
    plan = plan_json(ws)
    # enter: 6..9 (4); remove: only 5 (consent lost)
    assert audience_counts(plan, "act") == {"all": (4, 1, 0)}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    held = ws.sandbox_keys()["Audience A"]
    assert held == {email_key(i) for i in range(10) if i != 5}
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_remove_action_removes_from_existing_list_and_records_it(workspace):
    # first fill a list with maintain, then point a `remove` activation at it
    ws = workspace({"fill": MAINTAIN}, profiles=[profile(i, a=True, b=i < 3) for i in range(8)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write(
        "activations/purge.yaml",
        """\
        segments: [seg-b]
        destination: sandbox
        action: remove
        list: {existing: Audience A}
    """,
    )
    plan = plan_json(ws, "-t", "purge")
    assert audience_counts(plan, "purge") == {"all": (0, 3, 0)}
    assert cli(ws, "apply", "-t", "purge", "--auto-approve").exit_code == 0
    assert ws.sandbox_keys()["Audience A"] == {email_key(i) for i in range(3, 8)}
    assert cli(ws, "plan", "-t", "purge", "--detailed-exitcode").exit_code == 0


def test_mass_removal_guard_refuses_without_flag(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(10)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=i < 2) for i in range(10)])  # 8 of 10 leave
    plan = plan_json(ws)
    assert plan["activations"][0]["audiences"][0]["mass_removal"] is True
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1
    assert "mass-removal guard" in res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 10  # nothing was removed
    # the refused run shows in `status` and `log` (a blocked daily job does not look healthy)
    (row,) = cli(ws, "status", "--format", "json").json()["activations"]
    assert row["status"] == "Refused", row
    runs = cli(ws, "log", "act", "--format", "json").json()["runs"]
    assert [(r["status"], r["removed"]) for r in runs] == [("Refused", 0), ("Complete", 0)]
    assert "mass-removal guard" in (runs[0]["error"] or "")
    assert [a["id"] for a in plan_json(ws, "--due")["activations"]] == ["act"]  # due again
    assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    assert ws.sandbox_keys()["Audience A"] == {email_key(0), email_key(1)}
    assert cli(ws, "status", "--format", "json").json()["activations"][0]["status"] == "Complete"


def test_a_saved_plan_refused_by_the_guard_applies_with_the_flag(workspace, tmp_path):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(10)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=i < 2) for i in range(10)])
    out = tmp_path / "p.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    assert cli(ws, "apply", str(out), "--auto-approve").exit_code == 1  # refused, recorded
    res = cli(ws, "apply", str(out), "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr  # the refusal did not make it stale
    assert ws.sandbox_keys()["Audience A"] == {email_key(0), email_key(1)}


def test_clear_counts_only_the_members_at_the_destination(workspace):
    """`on_delete: clear` removes what was sent: a member the destination rejected (recorded
    with nothing sent) is neither planned nor logged as a removal."""
    integration = SANDBOX_YAML + "  reject_add_keys: [c00001]\n"
    act = MAINTAIN + "on_delete: clear\nmax_rejected_share: 0.5\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(4)],
                   integration=integration)  # fmt: skip
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert len(ws.sandbox_keys()["Audience A"]) == 3
    ws.remove("activations/act.yaml")
    (planned,) = plan_json(ws)["activations"]
    assert [au["remove"] for au in planned["audiences"]] == [3], planned
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys()["Audience A"] == set()
    runs = cli(ws, "log", "act", "--format", "json").json()["runs"]
    assert runs[0]["removed"] == 3, runs[0]


def test_ab_split_is_stable_and_partitions(workspace):
    act = MAINTAIN.replace("name: Audience A", "name: Test") + "split: ab\n"
    ws = workspace({"ab": act}, profiles=[profile(i, a=True) for i in range(60)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    held = ws.sandbox_keys()
    a, b = held["Test - A"], held["Test - B"]
    assert a and b and not (a & b)
    assert a | b == {email_key(i) for i in range(60)}
    # more profiles join: nobody already placed changes group
    ws.set_profiles([profile(i, a=True) for i in range(90)])
    assert audience_counts(plan_json(ws), "ab")["A"][1] == 0
    assert audience_counts(plan_json(ws), "ab")["B"][1] == 0
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    held2 = ws.sandbox_keys()
    assert a <= held2["Test - A"] and b <= held2["Test - B"]


def test_a_split_removed_moves_every_member_to_one_audience(workspace):
    act = MAINTAIN.replace("name: Audience A", "name: Test")
    ws = workspace({"ab": act + "split: ab\n"}, profiles=[profile(i, a=True) for i in range(40)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    a, b = len(ws.sandbox_keys()["Test - A"]), len(ws.sandbox_keys()["Test - B"])
    ws.write("activations/ab.yaml", act)  # recorded in groups A and B, desired in one
    counts = audience_counts(plan_json(ws), "ab")
    assert counts == {"all": (40, 0, 0), "A": (0, a, 0), "B": (0, b, 0)}
    assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    assert ws.sandbox_keys()["Test"] == {email_key(i) for i in range(40)}
    ws.set_profiles([profile(i, a=i != 3, name="Renamed" if i == 5 else None) for i in range(41)])
    assert audience_counts(plan_json(ws), "ab") == {"all": (1, 1, 1)}


def test_control_group_is_recorded_not_sent(workspace):
    act = MAINTAIN + "split: control\ncontrol_percent: 20\n"
    ws = workspace({"ctl": act}, profiles=[profile(i, a=True) for i in range(100)])
    plan = plan_json(ws)
    counts = audience_counts(plan, "ctl")
    assert counts["control"][0] + counts["experiment"][0] == 100
    assert 5 <= counts["control"][0] <= 40
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    held = ws.sandbox_keys()
    assert list(held) == ["Audience A"]
    assert len(held["Audience A"]) == counts["experiment"][0]
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_delete_keeps_audience_unless_clear(workspace):
    ws = workspace(
        {
            "keep": MAINTAIN,
            "clear": MAINTAIN.replace("Audience A", "Audience C") + "on_delete: clear\n",
        },
        profiles=[profile(i, a=True) for i in range(4)],
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.remove("activations/keep.yaml")
    ws.remove("activations/clear.yaml")
    plan = plan_json(ws)
    assert {a["id"]: a["change"] for a in plan["activations"]} == {
        "keep": "delete",
        "clear": "delete",
    }
    assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    held = ws.sandbox_keys()
    assert len(held["Audience A"]) == 4 and held["Audience C"] == set()
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
    status = cli(ws, "status", "--format", "json").json()
    assert status["activations"] == []


def test_moved_from_carries_state_over(workspace):
    ws = workspace({"old": MAINTAIN}, profiles=[profile(i, a=True) for i in range(5)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.remove("activations/old.yaml")
    ws.write("activations/new.yaml", MAINTAIN + "moved_from: old\n")
    plan = plan_json(ws)
    (act,) = plan["activations"]
    assert act["id"] == "new" and act["moved_from"] == "old"
    assert audience_counts(plan, "new") == {"all": (0, 0, 0)}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert len(ws.sandbox_keys()) == 1  # no second audience
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_paused_sends_nothing_but_exclusions(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 5) for i in range(10)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/act.yaml", MAINTAIN + "paused: true\n")
    ws.set_profiles([profile(i, a=i >= 3, consent=i != 4) for i in range(10)])
    plan = plan_json(ws)
    assert audience_counts(plan, "act") == {"all": (0, 1, 0)}  # only lost consent
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert ws.sandbox_keys()["Audience A"] == {email_key(i) for i in (0, 1, 2, 3)}
    res = cli(ws, "run", "act", "--auto-approve")
    assert res.exit_code == 1 and "paused" in res.stderr


def test_once_activation_runs_once_then_only_with_run(workspace):
    ws = workspace(
        {"one": MAINTAIN + "frequency: once\n"}, profiles=[profile(i, a=i < 3) for i in range(6)]
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=i < 5) for i in range(6)])
    assert audience_counts(plan_json(ws), "one") == {"all": (0, 0, 0)}
    res = cli(ws, "run", "one", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(ws.sandbox_keys()["Audience A"]) == 5
    status = cli(ws, "status", "--format", "json").json()["activations"][0]
    assert status["tab"] == "Inactive" and status["status"] == "Complete"
    runs = cli(ws, "log", "one", "--format", "json").json()["runs"]
    assert [r["trigger"] for r in runs] == ["run", "apply"]
    assert [r["added"] for r in runs] == [2, 3]


def test_saved_plan_applies_exactly_and_refuses_when_stale(workspace, tmp_path):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 4) for i in range(8)])
    out = tmp_path / "p.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    shown = cli(ws, "show", str(out), "--format", "json").json()
    assert audience_counts(shown, "act") == {"all": (4, 0, 0)}
    # membership drifts after the plan: apply still sends exactly the planned keys
    ws.set_profiles([profile(i, a=i < 6) for i in range(8)])
    assert cli(ws, "apply", str(out), "--auto-approve").exit_code == 0
    assert ws.sandbox_keys()["Audience A"] == {email_key(i) for i in range(4)}
    # the state moved since that plan: a second apply of it is refused
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1 and "stale" in res.stderr
    assert ws.sandbox_keys()["Audience A"] == {email_key(i) for i in range(4)}


def test_a_planned_key_duplicated_in_the_profiles_before_apply_is_left_out(workspace, tmp_path):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=i < 4) for i in range(8)])
    out = tmp_path / "p.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    # c00002 now has two profile rows: which one is it? neither is sent (drift), the rest are
    rows = [profile(i, a=i < 4) for i in range(8)]
    ws.set_profiles([*rows, profile(2, a=True, email="twin@example.com")])
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys()["Audience A"] == {email_key(i) for i in (0, 1, 3)}
    ws.set_profiles(rows)  # repaired: the next plan adds it
    assert audience_counts(plan_json(ws), "act") == {"all": (1, 0, 0)}


def test_status_and_log_report_runs(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(3)])
    before = cli(ws, "status", "--format", "json").json()["activations"]
    assert [(r["id"], r["status"], r["tab"]) for r in before] == [("act", "New", "Active")]
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    after = cli(ws, "status", "--format", "json").json()["activations"][0]
    assert after["status"] == "Complete" and after["added"] == 3
    text = cli(ws, "log", "act")
    assert text.exit_code == 0 and "Complete" in text.output


def test_apply_refuses_without_tty_or_approval(workspace):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(3)])
    res = cli(ws, "apply")
    assert res.exit_code == 1 and "--auto-approve" in res.stderr
    assert ws.sandbox_keys() == {}


def test_saved_plan_is_refused_when_the_spec_changed(workspace, tmp_path):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(4)])
    out = tmp_path / "p.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    ws.write("activations/act.yaml", MAINTAIN.replace("Audience A", "Audience B"))
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1
    assert "stale" in res.stderr and "activations/act.yaml or what it uses" in res.stderr
    assert ws.sandbox_keys() == {}


def test_saved_plan_is_stale_after_a_partial_apply(workspace, tmp_path):
    """A failed apply that recorded some members moves the serial too."""
    flaky = SANDBOX_YAML.replace(
        "  batch_size: 7\n", "  batch_size: 7\n  reject_rate: 0.3\n  seed: 3\n"
    )
    ws = workspace(
        {"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(40)], integration=flaky
    )
    out = tmp_path / "p.plan"
    assert cli(ws, "plan", "--out", str(out)).exit_code == 0
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1 and "refused" in res.stderr
    partial = ws.sandbox_keys()["Audience A"]
    assert 0 < len(partial) < 40
    res = cli(ws, "apply", str(out), "--auto-approve")
    assert res.exit_code == 1 and "stale" in res.stderr
    assert ws.sandbox_keys()["Audience A"] == partial


def test_plan_writes_nothing_to_state_or_destination(workspace, tmp_path):
    ws = workspace({"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(5)])
    assert cli(ws, "plan").exit_code == 0
    assert cli(ws, "plan", "--out", str(tmp_path / "p.plan")).exit_code == 0
    assert not (ws.root / ".reconcile" / "state.duckdb").exists()
    assert not (ws.root / ".reconcile" / "sandbox.duckdb").exists()
    assert list((ws.root / ".reconcile" / "tmp").iterdir()) == []  # staging cleaned up
    # and after an apply, a plan leaves the state file byte-identical
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    state = (ws.root / ".reconcile" / "state.duckdb").read_bytes()
    ws.set_profiles([profile(i, a=i < 3) for i in range(5)])
    assert cli(ws, "plan").exit_code == 0
    assert (ws.root / ".reconcile" / "state.duckdb").read_bytes() == state


def test_remove_action_removes_again_when_identifiers_change(workspace):
    ws = workspace({"fill": MAINTAIN}, profiles=[profile(i, a=True, b=i < 3) for i in range(8)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write(
        "activations/purge.yaml",
        """\
        segments: [seg-b]
        destination: sandbox
        action: remove
        list: {existing: Audience A}
    """,
    )
    assert cli(ws, "apply", "-t", "purge", "--auto-approve").exit_code == 0
    # profile 1 (still in seg-b) now uses an address that is in the list
    rows = [
        profile(i, a=True, b=i < 3, email="user5@example.com" if i == 1 else "default")
        for i in range(8)
    ]
    ws.set_profiles(rows)
    assert audience_counts(plan_json(ws, "-t", "purge"), "purge") == {"all": (0, 1, 0)}
    assert cli(ws, "apply", "-t", "purge", "--auto-approve").exit_code == 0
    assert email_key(5) not in ws.sandbox_keys()["Audience A"]
    assert cli(ws, "plan", "-t", "purge", "--detailed-exitcode").exit_code == 0


def test_secrets_never_reach_output_state_or_plan_files(workspace, tmp_path, monkeypatch):
    secret = "s3cr3t-token-value-123"
    monkeypatch.setenv("SANDBOX_TOKEN", secret)
    integration = SANDBOX_YAML + "credentials:\n  token: ${env:SANDBOX_TOKEN}\n"
    ws = workspace(
        {"act": MAINTAIN}, profiles=[profile(i, a=True) for i in range(3)], integration=integration
    )
    out = tmp_path / "p.plan"
    outputs = [
        cli(ws, "plan", "--out", str(out)),
        cli(ws, "plan", "--format", "json"),
        cli(ws, "apply", "--auto-approve"),
        cli(ws, "status", "--format", "json"),
        cli(ws, "log", "act", "--format", "json"),
        cli(ws, "state", "show"),
    ]
    assert all(r.exit_code == 0 for r in outputs)
    for r in outputs:
        assert secret not in r.output + r.stderr
    for path in [out, *(ws.root / ".reconcile").rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    # and the state holds no raw e-mail address: members keep keys and hashes only
    con = duckdb.connect(str(ws.root / ".reconcile" / "state.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT key, record FROM members ORDER BY key").fetchall()
        specs = con.execute("SELECT spec::VARCHAR FROM activations").fetchall()
    finally:
        con.close()
    assert [k for k, _ in rows] == ["c00000", "c00001", "c00002"]
    assert all(r.startswith("email_sha256:") and "@" not in r for _, rec in rows for r in rec)
    assert all("@" not in s and secret not in s for (s,) in specs)


def test_an_unknown_default_phone_country_is_refused_where_phones_are_sent(workspace):
    """Every adapter that accepts phones checks the workspace's default country (one check,
    DestinationContext.check_phone_country); one without phones does not care."""
    ws = workspace({"act": "segments: [seg-a]\ndestination: sandbox\n"})
    bad = DestinationContext(root=ws.root, default_phone_country="zz")
    with pytest.raises(ConfigError, match="unknown default phone country 'zz'; use one of"):
        bad.check_phone_country(("email", "phone"))
    bad.check_phone_country(("email",))
    DestinationContext(root=ws.root, default_phone_country="au").check_phone_country(("phone",))
    ws.write(
        "reconcile.yaml",
        (ws.root / "reconcile.yaml")
        .read_text()
        .replace("default_phone_country: AU", "default_phone_country: ZZ"),
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "unknown default phone country 'ZZ'" in res.stderr, res.stderr
