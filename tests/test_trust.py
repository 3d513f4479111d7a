"""The destination holds exactly what the plan promises, in the edge cases found from the
outside: identifiers that become unusable, crashes around audience creation, activations
deleted and re-added, batch ids across runs, duplicate keys in the source, paused and
one-time removals, split changes, the default phone country, killed runs' logs, and an
apply that starts while a plan reads the state.

Each test reads the destination itself (the sandbox file) and the next plan.
"""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from destinations.base import DestinationContext
from destinations.identity import hashed_identifiers, sha256_hex
from destinations.sandbox import SandboxConfig, SandboxDestination
from destinations.sandbox.config import SandboxCredentials
from reconciler.plan.held import shown
from tests.conftest import WS, audience_counts, cli, plan_json, profile
from tests.seeding import Member, seed
from tests.test_recovery import (
    ENV,
    audiences,
    reconcile_command,
    runs,
    state_rows,
)

MAINTAIN = """\
segments: [seg-a]
destination: sandbox
name: Audience A
attributes: [FIRST_NAME]
"""


def email_key(address: str) -> str:
    return f"email_sha256:{sha256_hex(address)}"


def apply_ok(ws: WS, *args: str) -> str:
    res = cli(ws, "apply", "--auto-approve", *args)
    assert res.exit_code == 0, res.output + res.stderr
    return res.output


def converged(ws: WS) -> bool:
    return cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def sandbox(ws: WS) -> SandboxDestination:
    config = SandboxConfig(path=str(ws.root / ".reconcile" / "sandbox.duckdb"))
    return SandboxDestination(config, SandboxCredentials(), DestinationContext(ws.root, "AU"))


def members_of(ws: WS, audience_id: str) -> set[str]:
    con = duckdb.connect(str(ws.root / ".reconcile" / "sandbox.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT match_key FROM members WHERE audience_id = ?", [audience_id]
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


# ---------------------------------------------------------------------- identifiers
def test_identifier_that_becomes_unusable_is_removed_and_stays_removable(workspace):
    rows = [profile(i, a=True) for i in range(4)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    assert email_key("user1@example.com") in ws.sandbox_keys()["Audience A"]

    rows[1]["email"] = "bob@localhost"  # passes the plan's estimate, fails normalisation
    ws.set_profiles(rows)
    assert audience_counts(plan_json(ws), "act") == {"all": (0, 0, 1)}
    apply_ok(ws)
    held = ws.sandbox_keys()["Audience A"]
    assert email_key("user1@example.com") not in held  # the old hash was removed
    assert held == {email_key(f"user{i}@example.com") for i in (0, 2, 3)}
    assert converged(ws)

    rows[1]["email"] = "user1@example.com"  # usable again: sent again
    ws.set_profiles(rows)
    apply_ok(ws)
    assert email_key("user1@example.com") in ws.sandbox_keys()["Audience A"]
    rows[1]["email_consent"] = False  # and removable again
    ws.set_profiles(rows)
    apply_ok(ws)
    assert email_key("user1@example.com") not in ws.sandbox_keys()["Audience A"]
    assert converged(ws)


def test_update_log_counts_and_journals_the_removal_of_stale_hashes(workspace):
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    rows[0]["email"] = "renamed@example.com"
    ws.set_profiles(rows)
    apply_ok(ws)
    assert ws.sandbox_keys()["Audience A"] == {
        email_key("renamed@example.com"),
        email_key("user1@example.com"),
        email_key("user2@example.com"),
    }
    ops = [r[0] for r in state_rows(ws, "SELECT op FROM journal WHERE status = 'done'")]
    assert "remove_stale" in ops
    assert runs(ws, "act")[0]["updated"] == 1


# ---------------------------------------------------------------------- generations
def test_batch_ids_are_never_reused_by_a_later_run(workspace):
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    ws.set_profiles([profile(i, a=i != 1) for i in range(3)])
    apply_ok(ws)
    ws.set_profiles(rows)  # the same member re-enters: the same batch as the first run's
    apply_ok(ws)
    dupes = state_rows(ws, "SELECT batch_id FROM journal GROUP BY 1 HAVING count(*) > 1")
    assert dupes == []
    keys = state_rows(ws, "SELECT batch_id FROM journal WHERE op = 'add'")
    assert len(keys) == 2 and keys[0] != keys[1]


def test_delete_then_readd_creates_a_new_audience(workspace):
    rows = [profile(i, a=True) for i in range(10)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    ((old_id, _),) = audiences(ws)
    ws.remove("activations/act.yaml")
    apply_ok(ws)  # on_delete: keep: the audience stays at the destination
    ws.set_profiles([profile(i, a=i < 6) for i in range(10)])  # four leave meanwhile
    ws.write("activations/act.yaml", MAINTAIN)
    plan = plan_json(ws)
    (act,) = plan["activations"]
    assert act["change"] == "create"
    assert any("already has an audience named 'Audience A'" in w for w in act["warnings"])
    apply_ok(ws)
    (first, _), (second, name) = audiences(ws)
    assert first == old_id and name == "Audience A"
    assert members_of(ws, second) == {email_key(f"user{i}@example.com") for i in range(6)}
    assert members_of(ws, old_id) == {email_key(f"user{i}@example.com") for i in range(10)}
    assert converged(ws)


def test_adopt_takes_over_an_existing_audience_of_that_name(workspace):
    ws = workspace({}, profiles=[profile(i, a=True) for i in range(3)])
    dest = sandbox(ws)
    theirs = dest.create_audience("Audience A", idempotency_key="made-by-hand")
    dest.close()
    ws.write("activations/act.yaml", MAINTAIN + "adopt: true\n")
    (aud,) = plan_json(ws)["activations"][0]["audiences"]
    assert aud["adopt"] and aud["name_taken_by"] == theirs.id and not aud["create"]
    apply_ok(ws)
    assert [i for i, _ in audiences(ws)] == [theirs.id]
    assert len(members_of(ws, theirs.id)) == 3
    assert converged(ws)


CRASH_BEFORE = """\
import os, signal, sys
from destinations.sandbox import SandboxDestination
def crash(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
SandboxDestination.create_audience = crash
from reconciler.cli.main import main
main(sys.argv[1:], prog_name="reconcile")
"""


@pytest.mark.slow
def test_crash_between_create_intent_and_call_never_adopts_a_foreign_list(workspace):
    rows = [profile(i, a=True) for i in range(4)]
    ws = workspace({}, profiles=rows)
    dest = sandbox(ws)
    foreign = dest.create_audience("Audience A", idempotency_key="someone-else")
    seed(dest, foreign, [Member("x", {"email": "stranger@example.org"})], "theirs")
    dest.close()
    ws.write("activations/act.yaml", MAINTAIN)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH_BEFORE,
            "-C",
            str(ws.root),
            "apply",
            "--auto-approve",
            "--allow-duplicate-audiences",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ws.root,
    )
    assert proc.returncode < 0, proc.stdout + proc.stderr  # killed
    pending = state_rows(
        ws, "SELECT count(*) FROM journal WHERE op = 'create' AND status = 'intent'"
    )
    assert pending == [(1,)]
    apply_ok(ws)
    ids = [i for i, _ in audiences(ws)]
    assert len(ids) == 2 and ids[0] == foreign.id
    assert members_of(ws, foreign.id) == {email_key("stranger@example.org")}  # untouched
    assert members_of(ws, ids[1]) == {email_key(f"user{i}@example.com") for i in range(4)}
    assert converged(ws)


# ---------------------------------------------------------------------- source data
def test_duplicate_key_in_the_profiles_table_is_held_not_a_crash(workspace):
    rows = [profile(i, a=True) for i in range(5)]
    ws = workspace(
        {"act": MAINTAIN, "other": MAINTAIN.replace("Audience A", "Other")}, profiles=rows
    )
    apply_ok(ws, "-t", "act")
    twin = profile(2, a=True, email="twin@example.com")
    ws.set_profiles([*rows, twin, profile(7, a=True), profile(7, a=True, email="t7@example.com")])
    plan = plan_json(ws)
    act = next(a for a in plan["activations"] if a["id"] == "act")
    assert act["excluded"]["duplicate key"] == 2
    assert any("'profiles'" in w and "c00002" in w for w in act["warnings"])
    assert audience_counts(plan, "act") == {"all": (0, 0, 0)}  # c00002 held, c00007 not added
    out = apply_ok(ws)
    assert "other: Complete" in out
    assert ws.sandbox_keys()["Audience A"] == {email_key(f"user{i}@example.com") for i in range(5)}
    assert ws.sandbox_keys()["Other"] == {email_key(f"user{i}@example.com") for i in (0, 1, 3, 4)}
    assert converged(ws)
    ws.set_profiles([*rows, profile(7, a=True)])  # repaired: reconciled normally
    apply_ok(ws)
    assert email_key("user7@example.com") in ws.sandbox_keys()["Audience A"]
    assert converged(ws)


def test_a_member_that_left_with_a_duplicated_key_is_held_not_removed(workspace):
    rows = [profile(i, a=True) for i in range(5)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    left = [profile(i, a=i not in (1, 3)) for i in range(5)]  # c00001 and c00003 leave
    twins = [profile(1, email="twin1@example.com"), profile(2, a=True, email="twin2@example.com")]
    ws.set_profiles([*left, *twins])
    plan = plan_json(ws)
    (act,) = plan["activations"]
    assert act["excluded"]["duplicate key"] == 1  # c00002, in the segment
    (warning,) = act["warnings"]
    assert "1 of its profiles held: 2 key(s) appear more than once" in warning, warning
    assert "(e.g. 'c00001', 'c00002')" in warning, warning
    assert audience_counts(plan, "act") == {"all": (0, 1, 0)}  # c00003 only: c00001 is held
    apply_ok(ws)
    kept = {email_key(f"user{i}@example.com") for i in (0, 1, 2, 4)}
    assert ws.sandbox_keys()["Audience A"] == kept


def test_a_held_key_that_is_an_e_mail_or_a_phone_is_not_quoted(workspace):
    """A plan goes to pull requests and CI logs: a repeated key that reads as an e-mail or a
    phone number is masked in its warning, which says how to find the keys instead."""
    rows = [profile(i, a=True) | {"customer_id": f"user{i}@example.com"} for i in range(3)]
    rows[2]["customer_id"] = "+61 412 345 678"
    twins = [dict(rows[1], email="twin1@example.com"), dict(rows[2], email="twin2@example.com")]
    ws = workspace({"act": MAINTAIN}, profiles=[*rows, *twins])
    res = cli(ws, "plan")
    assert "2 key(s) appear more than once" in res.output, res.output
    assert "user1@example.com" not in res.output and "412 345" not in res.output, res.output
    assert "(e.g. <identifier>, <identifier>)" in res.output, res.output
    assert "GROUP BY customer_id HAVING count(*) > 1" in res.output, res.output
    (act,) = plan_json(ws)["activations"]
    assert "user1@" not in " ".join(act["warnings"])


def test_held_keys_are_masked_by_shape_or_all_when_the_key_is_an_identifier():
    assert shown(["c00001", "a@b.co", "0412 345 678", "c\x1b[2J"], False) == (
        "'c00001', <identifier>, <identifier>, 'c\\x1b[2J'",
        True,
    )
    assert shown(["c00001", "c00002", ""], False) == ("'c00001', 'c00002', ''", False)
    assert shown(["c00001"], True) == ("<identifier>", True)


def test_a_key_returned_twice_by_a_segment_is_one_profile(workspace):
    ws = workspace(
        {"act": MAINTAIN},
        profiles=[profile(i, a=i < 3) for i in range(5)],
        segments={
            "seg-a": "sql: SELECT customer_id FROM profiles UNION ALL "
            "SELECT customer_id FROM profiles WHERE seg_a\n"
        },
    )
    (act,) = plan_json(ws)["activations"]
    assert act["segments"][0]["size"] == 5
    assert "segment 'seg-a' returned 3 key(s) more than once; each is counted once" in act["notes"]
    apply_ok(ws)
    assert len(ws.sandbox_keys()["Audience A"]) == 5


# ---------------------------------------------------------------------- frozen removals
@pytest.mark.parametrize("freeze", ["paused: true\n", "frequency: once\n"])
def test_remove_action_sends_nothing_when_paused_or_once_ran(workspace, freeze):
    ws = workspace({"fill": MAINTAIN}, profiles=[profile(i, a=True, b=i < 2) for i in range(6)])
    apply_ok(ws)
    purge = (
        "segments: [seg-b]\ndestination: sandbox\naction: remove\nlist: {existing: Audience A}\n"
    )
    if freeze.startswith("frequency"):
        ws.write("activations/purge.yaml", purge + freeze)
        apply_ok(ws, "-t", "purge")  # the one-time removal runs once
    else:
        ws.write("activations/purge.yaml", purge + freeze)
    before = ws.sandbox_keys()["Audience A"]
    ws.set_profiles([profile(i, a=True, b=i < 4) for i in range(6)])  # two more enter seg-b
    assert audience_counts(plan_json(ws, "-t", "purge"), "purge") == {"all": (0, 0, 0)}
    apply_ok(ws, "-t", "purge")
    assert ws.sandbox_keys()["Audience A"] == before


# ---------------------------------------------------------------------- splits
def test_split_change_drains_old_audiences_without_renaming_them(workspace):
    rows = [profile(i, a=True) for i in range(20)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    ws.write("activations/act.yaml", MAINTAIN + "split: ab\n")
    out = apply_ok(ws, "--allow-mass-removal")
    names = [n for _, n in audiences(ws)]
    assert names == ["Audience A", "Audience A - A", "Audience A - B"], out
    held = ws.sandbox_keys()
    assert held["Audience A"] == set()  # drained, name kept
    everyone = {email_key(f"user{i}@example.com") for i in range(20)}
    assert held["Audience A - A"] | held["Audience A - B"] == everyone
    assert converged(ws)
    ws.write("activations/act.yaml", MAINTAIN)  # back to one audience: A and B drain
    apply_ok(ws, "--allow-mass-removal")
    names = [n for _, n in audiences(ws)]
    assert names.count("Audience A") == 2 and "Audience A - A" in names
    assert converged(ws)


# ---------------------------------------------------------------------- identity settings
def test_default_phone_country_change_rehashes_phones(workspace):
    rows = [profile(i, a=True, email=None) | {"phone": f"0412 345 67{i}"} for i in range(3)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    au = {hashed_identifiers({"phone": r["phone"]}, ("phone",), "AU")[0] for r in rows}
    assert ws.sandbox_keys()["Audience A"] == au
    reconcile_yaml = (ws.root / "reconcile.yaml").read_text()
    ws.write(
        "reconcile.yaml",
        reconcile_yaml.replace("default_phone_country: AU", "default_phone_country: NZ"),
    )
    plan = plan_json(ws)
    (act,) = plan["activations"]
    assert any(c["path"] == "default_phone_country" for c in act["config_changes"])
    assert audience_counts(plan, "act") == {"all": (0, 0, 3)}
    apply_ok(ws)
    nz = {hashed_identifiers({"phone": r["phone"]}, ("phone",), "NZ")[0] for r in rows}
    assert nz != au and ws.sandbox_keys()["Audience A"] == nz
    assert converged(ws)


# ---------------------------------------------------------------------- killed runs
KILL_AT_THIRD_ADD = """\
import os, signal, sys
from destinations.sandbox import SandboxDestination
real, calls = SandboxDestination.add, []
def add(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
SandboxDestination.add = add
from reconciler.cli.main import main
main(sys.argv[1:], prog_name="reconcile")
"""


@pytest.mark.slow
def test_killed_run_logs_what_was_recorded_and_leaves_no_staging_file(workspace):
    from tests.test_recovery import sandbox_yaml

    rows = [profile(i, a=True) for i in range(60)]
    ws = workspace({"act": MAINTAIN}, profiles=rows, integration=sandbox_yaml(batch_size=5))
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_THIRD_ADD, "-C", str(ws.root), "apply", "--auto-approve"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ws.root,
    )
    assert proc.returncode < 0, proc.stdout + proc.stderr
    tmp = ws.root / ".reconcile" / "tmp"
    assert list(tmp.glob("staging-*")), "the killed apply left its staging file"
    (run,) = runs(ws, "act")
    members = state_rows(ws, "SELECT count(*) FROM members")[0][0]
    # two calls came back before the kill: the first is recorded; the second is recorded while
    # the third is in flight (the pipeline), so it may not be yet
    assert members in (5, 10)
    assert run["status"] == "Pending" and run["added"] == members
    assert cli(ws, "plan").exit_code == 0
    assert not list(tmp.glob("staging-*")), "the next command removes orphans"
    apply_ok(ws)
    run = runs(ws, "act")[0]  # members of calls in flight are sent again as updates
    assert run["added"] + run["updated"] == 60 - members
    assert converged(ws)


# readers during an apply: tests/test_state_readers.py


def test_text_plan_shows_warnings_also_when_nothing_changes(workspace):
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    ws.set_profiles([*rows, profile(1, a=True, email="twin@example.com")])
    res = cli(ws, "plan")
    assert "No changes" in res.output
    assert (
        '! activation "act": 1 of its profiles held: 1 key(s) appear more than once' in res.output
    )


def test_markdown_plan_shows_warnings(workspace):
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace({"act": MAINTAIN}, profiles=rows)
    apply_ok(ws)
    ws.set_profiles([*rows, profile(1, a=True, email="twin@example.com")])
    res = cli(ws, "plan", "--format", "markdown")
    assert "**No changes.**" in res.output
    assert "⚠️ act:** 1 of its profiles held" in res.output


# ---------------------------------------------------------------------- asynchronous jobs
def test_asynchronous_jobs_are_polled_and_recorded(workspace):
    from tests.test_recovery import sandbox_yaml

    rows = [profile(i, a=True) for i in range(12)]
    ws = workspace(
        {"act": MAINTAIN}, profiles=rows, integration=sandbox_yaml(async_jobs=True, job_polls=3)
    )
    apply_ok(ws)
    assert ws.sandbox_keys()["Audience A"] == {email_key(f"user{i}@example.com") for i in range(12)}
    assert state_rows(ws, "SELECT count(*) FROM jobs") == [(0,)]
    assert converged(ws)
    ws.set_profiles([profile(i, a=i >= 4) for i in range(12)])  # removals as jobs too
    apply_ok(ws, "--allow-mass-removal")
    assert len(ws.sandbox_keys()["Audience A"]) == 8
    assert converged(ws)


@pytest.mark.slow
def test_a_job_submitted_by_a_run_that_died_is_polled_never_resubmitted(workspace):
    from tests.test_recovery import sandbox_yaml

    rows = [profile(i, a=True) for i in range(6)]
    knobs = {"async_jobs": True, "job_polls": 2, "batch_size": 10}
    # write calls: 1 create, 2 the add job, 3 its first poll: the process dies there
    ws = workspace(
        {"act": MAINTAIN},
        profiles=rows,
        integration=sandbox_yaml(**knobs, exit_after_calls=3, exit_when="before"),
    )
    proc = subprocess.run(
        [*reconcile_command(), "-C", str(ws.root), "apply", "--auto-approve"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert proc.returncode == 137, proc.stdout + proc.stderr
    assert state_rows(ws, "SELECT op, status FROM journal WHERE op = 'add'") == [
        ("add", "submitted")
    ]
    assert state_rows(ws, "SELECT count(*) FROM jobs") == [(1,)]
    ws.write("integrations/sandbox.yaml", sandbox_yaml(**knobs))
    apply_ok(ws)
    con = duckdb.connect(str(ws.root / ".reconcile" / "sandbox.duckdb"), read_only=True)
    try:
        submissions = con.execute("SELECT count(*) FROM requests WHERE op = 'add'").fetchone()[0]
    finally:
        con.close()
    assert submissions == 1  # polled to its end, never sent again
    assert state_rows(ws, "SELECT count(*) FROM jobs") == [(0,)]
    assert state_rows(ws, "SELECT count(*), count(DISTINCT key) FROM members") == [(6, 6)]
    assert converged(ws)
