"""Recovery: kills, Ctrl-C, destination failures, the state lock and shared inboxes.

Each test ends by reading the destination itself (the sandbox file) and comparing it with the
audience computed from the profiles, then checks that the next plan is empty: whatever happens
in the middle of an apply, the next apply finishes the job without duplicates that matter.
Tests marked ``slow`` run ``reconcile`` as a real process (to kill it); they run by default.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from destinations.identity import hashed_identifiers
from reconciler.plan import splits
from reconciler.state.lock import StateLock
from reconciler.workspace.activation_spec import SplitMode
from tests.conftest import SANDBOX_YAML, WS, audience_counts, cli, plan_json, profile
from tests.duckfiles import query

IDENTIFIERS = ("email", "phone")
COUNTRY = "AU"  # default_phone_country of the test workspace

MAINTAIN = """\
segments: [seg-a]
destination: {dest}
name: {name}
attributes: [FIRST_NAME]
"""


def activation(name: str, dest: str = "sandbox", extra: str = "") -> str:
    return MAINTAIN.format(dest=dest, name=name) + extra


def sandbox_yaml(path: str = ".reconcile/sandbox.duckdb", **config) -> str:
    """The test integration with its sandbox file at ``path`` and extra knobs."""
    lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in ({"batch_size": 7} | config).items())
    return SANDBOX_YAML.replace("  path: .reconcile/sandbox.duckdb\n", f"  path: {path}\n").replace(
        "  batch_size: 7\n", lines
    )


# ---------------------------------------------------------------------- expected audiences
def records(row: dict) -> tuple[str, ...]:
    return hashed_identifiers({k: row[k] for k in IDENTIFIERS}, IDENTIFIERS, COUNTRY)


def desired(
    rows: Iterable[dict],
    *,
    activation_id: str = "",
    split: SplitMode = SplitMode.NONE,
    group: str = splits.ALL,
) -> set[str]:
    """Match keys the destination must hold: eligible members (seg-a, consent) of ``group``."""
    out: set[str] = set()
    for r in rows:
        if (
            r["seg_a"]
            and r["email_consent"]
            and splits.group(split, None, activation_id, r["customer_id"]) == group
        ):
            out.update(records(r))
    return out


def audiences(ws: WS, path: str = ".reconcile/sandbox.duckdb") -> list[tuple[str, str]]:
    """(id, name) of every audience in a sandbox file, duplicates included."""
    file = ws.root / path
    if not file.exists():
        return []
    return query(file, "SELECT id, name FROM audiences ORDER BY created_at")


def held(ws: WS, path: str = ".reconcile/sandbox.duckdb") -> dict[str, set[str]]:
    """Audience name -> match keys held, for a sandbox file (names must be unique)."""
    return ws.sandbox_keys(path=path)


def state_rows(ws: WS, sql: str, params: list | None = None) -> list[tuple]:
    return query(ws.root / ".reconcile" / "state.duckdb", sql, params or [])


def runs(ws: WS, activation_id: str) -> list[dict]:
    """`reconcile log ID --format json`: newest first."""
    res = cli(ws, "log", activation_id, "--format", "json")
    assert res.exit_code == 0, res.stderr
    return res.json()["runs"]


def status_of(ws: WS, activation_id: str) -> dict:
    rows = cli(ws, "status", "--format", "json").json()["activations"]
    return next(r for r in rows if r["id"] == activation_id)


def assert_converged(ws: WS) -> None:
    res = cli(ws, "plan", "--detailed-exitcode")
    assert res.exit_code == 0, res.output + res.stderr


# ---------------------------------------------------------------------- real processes
ENV = os.environ | {"PYTHONUNBUFFERED": "1"}

# Runs the CLI after hooking one sandbox call so the process SIGKILLs itself right after the
# destination applied it and before the engine could record it: the worst moment to die.
CRASH_AFTER = """\
import os, signal, sys
from destinations.sandbox import SandboxDestination
method = sys.argv[1]
real = getattr(SandboxDestination, method)
def crash(self, *args, **kwargs):
    real(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(SandboxDestination, method, crash)
from reconciler.cli.main import main
main(sys.argv[2:], prog_name="reconcile")
"""


def reconcile_command() -> list[str]:
    """The installed `reconcile` script of this interpreter's environment, else the module."""
    script = Path(sys.executable).parent / "reconcile"
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]


def start(ws: WS, *args: str, crash_after: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", CRASH_AFTER, crash_after] if crash_after else reconcile_command()
    cmd += ["-C", str(ws.root), "--no-color", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ws.root
    )


def until_planned(proc: subprocess.Popen) -> str:
    """Read the apply's output up to the end of its plan (the lock is held, sending is about
    to start), or to the end of the output."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(("Plan:", "No changes")):
            break
    return "".join(seen)


def kill_and_resume(
    ws: WS, rng: random.Random, windows: list[tuple[float, float]], *args: str
) -> int:
    """Start `apply` once per window, SIGKILL it a random time into the window (counted from
    the end of its plan), then finish with a normal apply. Returns the number of kills."""
    kills = 0
    for lo, hi in windows:
        proc = start(ws, "apply", "--auto-approve", *args)
        until_planned(proc)
        try:
            proc.wait(timeout=rng.uniform(lo, hi))
        except subprocess.TimeoutExpired:
            proc.kill()
        out, err = proc.communicate()
        if proc.returncode == 0:
            break  # finished before the kill
        assert proc.returncode == -signal.SIGKILL, out + err
        kills += 1
    res = cli(ws, "apply", "--auto-approve", *args)
    assert res.exit_code == 0, res.output + res.stderr
    return kills


def check_story(ws: WS, activation_ids: list[str]) -> int:
    """Every activation's newest run is Complete and every older one was cut short (Pending:
    left Running by a kill; or Failed). Returns how many were cut short."""
    cut = 0
    for aid in activation_ids:
        log = runs(ws, aid)
        assert log and log[0]["status"] == "Complete", log
        assert all(r["status"] in ("Pending", "Failed") for r in log[1:]), log
        assert status_of(ws, aid)["status"] == "Complete"
        cut += len(log) - 1
    return cut


@pytest.mark.slow
def test_sigkill_at_random_points_then_apply_finishes_exactly(workspace):
    seed = int(os.environ.get("RECOVERY_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    rows = [profile(i, a=True) for i in range(240)]
    ws = workspace(
        {"ab": activation("Split", extra="split: ab\n"), "main": activation("Main")},
        profiles=rows,
        integration=sandbox_yaml(batch_size=8, delay_per_batch=0.02),
    )
    # the very first apply: killed around audience creation, then mid-way
    kills = kill_and_resume(ws, rng, [(0.0, 0.25), (0.0, 0.25), (0.3, 0.9), (0.3, 0.9)])
    where = f"RECOVERY_SEED={seed}"
    assert kills >= 2, where
    names = [n for _, n in audiences(ws)]
    assert sorted(names) == ["Main", "Split - A", "Split - B"], (where, names)  # no duplicate
    assert held(ws) == {
        "Main": desired(rows),
        "Split - A": desired(rows, activation_id="ab", split=SplitMode.AB, group="A"),
        "Split - B": desired(rows, activation_id="ab", split=SplitMode.AB, group="B"),
    }, where
    assert_converged(ws)
    assert check_story(ws, ["ab", "main"]) >= 1, where
    # every create intent was resolved (by looking the audience up), none is left pending
    assert state_rows(
        ws, "SELECT count(*) FROM journal WHERE op = 'create' AND status = 'intent'"
    ) == [(0,)]
    # member batches cut off by a kill are closed as interrupted by the next apply
    assert state_rows(ws, "SELECT count(*) FROM journal WHERE status = 'intent'") == [(0,)]

    # maintain history: leavers, lost consent, new e-mails and newcomers, killed mid-way
    rows2 = [
        profile(
            i,
            a=i >= 50,
            consent=not 50 <= i < 70,
            email=f"new{i}@example.com" if 70 <= i < 90 else "default",
        )
        for i in range(300)
    ]
    ws.set_profiles(rows2)
    before = {aid: len(runs(ws, aid)) for aid in ("ab", "main")}
    kill_and_resume(ws, rng, [(0.2, 0.8), (0.2, 0.8)], "--allow-mass-removal")
    assert held(ws) == {
        "Main": desired(rows2),
        "Split - A": desired(rows2, activation_id="ab", split=SplitMode.AB, group="A"),
        "Split - B": desired(rows2, activation_id="ab", split=SplitMode.AB, group="B"),
    }, where
    assert len(audiences(ws)) == 3
    assert_converged(ws)
    for aid in ("ab", "main"):
        assert runs(ws, aid)[0]["status"] == "Complete"
        assert len(runs(ws, aid)) > before[aid]


@pytest.mark.slow
@pytest.mark.parametrize("crash_after", ["create_audience", "add"])
def test_killed_right_after_the_destination_applied_a_call(workspace, crash_after):
    """The process dies after the destination applied the call and before the state recorded
    it: the next apply finds the audience by name (no second one) and re-sends the batch."""
    rows = [profile(i, a=True) for i in range(20)]
    ws = workspace({"act": activation("Crash")}, profiles=rows)
    proc = start(ws, "apply", "--auto-approve", crash_after=crash_after)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out + err
    assert len(audiences(ws)) == 1
    assert runs(ws, "act")[0]["status"] == "Pending"
    assert status_of(ws, "act")["status"] == "Pending"
    # the first run never completed: no spec is recorded yet, and none is shown as changed
    planned = cli(ws, "plan")
    assert "definition changed" not in planned.output and "config:" not in planned.output
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert [n for _, n in audiences(ws)] == ["Crash"]
    assert held(ws) == {"Crash": desired(rows)}
    assert_converged(ws)
    assert [r["status"] for r in runs(ws, "act")] == ["Complete", "Pending"]


@pytest.mark.slow
@pytest.mark.parametrize("crash_after", ["add", "remove", "update"])
def test_a_call_the_destination_applied_unrecorded_then_the_source_changes(workspace, crash_after):
    """The process dies right after the destination applied a call and before the state
    recorded it, and the source changes before the next apply: members of that call who
    left are removed (no phantom left at the destination), members a removal took who came
    back are sent again (none lost), members an update moved are moved again. The call's
    members were kept in flight with its intent; the next apply records them as possibly
    sent before it plans (and a plan in between says so)."""
    rows = [profile(i, a=i < 8) for i in range(12)]
    ws = workspace({"act": activation("Crash")}, profiles=rows, integration=sandbox_yaml())
    if crash_after != "add":  # a first apply, then the change whose call is killed
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
        if crash_after == "remove":
            rows = [profile(i, a=i >= 4 and i < 8) for i in range(12)]  # 0-3 leave
        else:
            rows = [
                profile(i, a=i < 8, email=f"new{i}@example.com" if i < 4 else "default")
                for i in range(12)
            ]
        ws.set_profiles(rows)
    proc = start(ws, "apply", "--auto-approve", "--allow-mass-removal", crash_after=crash_after)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out + err
    # the source changes: the call's members leave (add, update) or come back (remove)
    if crash_after == "remove":
        rows = [profile(i, a=i < 8) for i in range(12)]
    else:
        rows = [profile(i, a=False) for i in range(7)] + [profile(7, a=True)]
    ws.set_profiles(rows)
    planned = cli(ws, "plan")
    assert "were in calls whose answers a run that stopped never recorded" in planned.output
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert "recorded as possibly sent" in res.stderr
    assert held(ws) == {"Crash": desired(rows)}
    assert_converged(ws)
    assert state_rows(ws, "SELECT count(*) FROM inflight") == [(0,)]  # none left in flight


@pytest.mark.slow
def test_a_job_left_submitted_is_finished_before_the_plan(workspace):
    """A run killed with an asynchronous job still submitted; the job's member leaves before
    the next apply. The job is polled to its end and recorded before the plan, so that
    apply removes the member (it used to be finished after the plan, one apply late)."""
    rows = [profile(i, a=True) for i in range(4)]
    knobs = {"batch_size": 1, "async_jobs": True}
    ws = workspace(
        {"act": activation("Jobs")},
        profiles=rows,
        integration=sandbox_yaml(**knobs, exit_after_calls=4, exit_when="before"),
    )
    proc = start(ws, "apply", "--auto-approve")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 137, out + err
    ((keys,),) = state_rows(ws, "SELECT keys FROM jobs")
    gone = int(keys[0][1:])
    ws.write("integrations/sandbox.yaml", sandbox_yaml(**knobs))
    rows = [profile(i, a=i != gone) for i in range(4)]
    ws.set_profiles(rows)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Jobs": desired(rows)}
    assert_converged(ws)


@pytest.mark.slow
@pytest.mark.parametrize("then", ["delete", "move"])
def test_a_plan_warns_of_calls_in_flight_of_a_deleted_or_moved_activation(workspace, then):
    ws = workspace(
        {"act": activation("Crash", extra="on_delete: clear\n")},
        profiles=[profile(i, a=i < 6) for i in range(12)],
        integration=sandbox_yaml(),
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows = [profile(i, a=True) for i in range(12)]  # six enter; their call is killed
    ws.set_profiles(rows)
    proc = start(ws, "apply", "--auto-approve", crash_after="add")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out + err
    ws.remove("activations/act.yaml")
    if then == "move":
        ws.write("activations/renamed.yaml", activation("Crash", extra="moved_from: act\n"))
    planned = cli(ws, "plan")
    assert "were in calls whose answers a run that stopped never recorded" in planned.output
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Crash": desired(rows) if then == "move" else set()}
    assert_converged(ws)


@pytest.mark.slow
def test_a_deleted_activation_killed_while_clearing_shows_pending_until_done(workspace):
    """`on_delete: clear` removes the members of a deleted activation's audience; killed
    part-way, status and log both say Pending (not the last run's Complete), and the next
    apply finishes the clearing."""
    rows = [profile(i, a=True) for i in range(20)]
    ws = workspace({"act": activation("Cleared", extra="on_delete: clear\n")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.remove("activations/act.yaml")
    assert "destination: sandbox (sandbox)" in cli(ws, "plan").output  # its type, not "()"
    ws.write("integrations/sandbox.yaml", sandbox_yaml(exit_after_calls=2))
    proc = start(ws, "apply", "--auto-approve", "--allow-mass-removal")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 137, out + err
    assert status_of(ws, "act")["status"] == "Pending"
    assert runs(ws, "act")[0]["status"] == "Pending"
    ws.write("integrations/sandbox.yaml", sandbox_yaml())
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Cleared": set()}
    assert all(
        r["id"] != "act" for r in cli(ws, "status", "--format", "json").json()["activations"]
    )


@pytest.mark.parametrize("stop", ["retry", "killed unrecorded"])
def test_a_shared_inbox_removed_before_its_other_holder_is_sent_again_when_it_returns(
    workspace, stop
):
    """Two profiles share an e-mail and both leave: the first removal takes the shared string
    away for both. If the second is not recorded as removed (asked to retry, or the run died
    before or during it) and that profile comes back, it must be sent again: it was recorded
    with its fingerprint, so the next plan said No changes while the destination lacked it."""
    rows = [profile(i, a=True) for i in range(3)]
    rows[0]["email"] = rows[1]["email"] = "home@example.com"
    ws = workspace({"act": activation("Home")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    leaving = [dict(r, seg_a=False) if i < 2 else r for i, r in enumerate(rows)]
    ws.set_profiles(leaving)
    if stop == "retry":
        ws.write(
            "integrations/sandbox.yaml",
            sandbox_yaml(batch_size=1, retry_keys=["c00000"]),
        )
        res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
        assert res.exit_code == 0, res.output + res.stderr
    else:  # the first removal made, unrecorded: the other holder was never in flight
        knobs = {"exit_after_calls": 1, "exit_when": "after"}
        ws.write("integrations/sandbox.yaml", sandbox_yaml(batch_size=1, **knobs))
        proc = start(ws, "apply", "--auto-approve", "--allow-mass-removal")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 137, out + err
    ws.write("integrations/sandbox.yaml", sandbox_yaml())
    # the one that comes back: a holder still recorded whose own removal was never sent
    # (not the killed call's, which the next apply's recovery marks as possibly sent)
    (back,) = [
        k
        for (k,) in state_rows(
            ws,
            "SELECT key FROM members WHERE key IN ('c00000', 'c00001') "
            "AND key NOT IN (SELECT key FROM inflight)",
        )
    ]
    returning = [dict(r, seg_a=r["customer_id"] in (back, "c00002")) for r in rows]
    ws.set_profiles(returning)
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Home": desired(returning)}
    assert_converged(ws)


def test_a_kept_inbox_is_not_announced_as_removed_when_its_holder_changes(workspace):
    """One holder of a shared e-mail leaves while the other is updated in the same apply:
    the e-mail stays (the updated member is sent with it), so the removal does not take it."""
    rows = [profile(i, a=True) for i in range(3)]
    rows[0]["email"] = rows[1]["email"] = "home@example.com"
    ws = workspace({"act": activation("Home")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    changed = [dict(r) for r in rows]
    changed[0]["seg_a"] = False
    changed[1]["first_name"] = "Renamed"
    ws.set_profiles(changed)
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    removed = state_rows(
        ws,
        "SELECT count(*) FROM journal WHERE op = 'remove' AND status = 'done'",
    )
    assert removed == [(0,)]  # nothing of c00000's was left to remove: no call at all
    assert held(ws) == {"Home": desired(changed)}
    assert_converged(ws)


# ---------------------------------------------------------------------- destination failures
def test_transient_errors_throttling_and_lost_acks_converge_in_one_apply(workspace):
    knobs = {
        "transient_error_rate": 0.15,
        "throttle_rate": 0.15,
        "lost_ack_rate": 0.15,
        "seed": 11,
        "batch_size": 5,
    }
    rows = [profile(i, a=i < 50) for i in range(60)]
    ws = workspace(
        {"ab": activation("Split", extra="split: ab\n"), "main": activation("Main")},
        profiles=rows,
        integration=sandbox_yaml(**knobs),
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    expect = {
        "Main": desired(rows),
        "Split - A": desired(rows, activation_id="ab", split=SplitMode.AB, group="A"),
        "Split - B": desired(rows, activation_id="ab", split=SplitMode.AB, group="B"),
    }
    assert held(ws) == expect
    assert len(audiences(ws)) == 3  # a lost create answer did not create a second audience
    assert_converged(ws)
    # removals and updates under the same knobs
    rows2 = [
        profile(
            i,
            a=10 <= i < 60,
            consent=i != 20,
            email=f"moved{i}@example.com" if i in (30, 31) else "default",
            name="Renamed" if i == 40 else None,
        )
        for i in range(60)
    ]
    ws.set_profiles(rows2)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {
        "Main": desired(rows2),
        "Split - A": desired(rows2, activation_id="ab", split=SplitMode.AB, group="A"),
        "Split - B": desired(rows2, activation_id="ab", split=SplitMode.AB, group="B"),
    }
    assert_converged(ws)
    for aid in ("ab", "main"):
        assert [r["status"] for r in runs(ws, aid)] == ["Complete", "Complete"]
    main_runs = runs(ws, "main")
    assert (main_runs[0]["added"], main_runs[0]["removed"], main_runs[0]["updated"]) == (10, 11, 3)


def test_rejected_members_over_the_share_fail_the_activation_and_are_not_resent(workspace):
    rows = [profile(i, a=True) for i in range(40)]
    ws = workspace(
        {"a-flaky": activation("Flaky"), "b-steady": activation("Steady", dest="steady")},
        profiles=rows,
        integration=sandbox_yaml(reject_rate=0.3, seed=5),
    )
    ws.write("integrations/steady.yaml", sandbox_yaml(path=".reconcile/steady.duckdb"))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1
    assert "a-flaky: Failed" in res.output and "b-steady: Complete" in res.output
    assert "refused" in res.stderr
    # the other activation finished, in full, after the failed one
    assert held(ws, ".reconcile/steady.duckdb") == {"Steady": desired(rows)}
    (run,) = runs(ws, "a-flaky")
    assert run["status"] == "Failed" and 0 < run["failed"] < 40
    assert "reject_rate" in run["error"] and f"{run['failed']} of 40 member(s)" in run["error"]
    assert run["added"] == 40 - run["failed"]
    assert status_of(ws, "a-flaky")["status"] == "Failed"
    # rejected members are recorded as rejected: the sandbox holds exactly the accepted ones,
    # and the next plan does not send the rejected ones again (they are permanent refusals)
    flaky = held(ws)["Flaky"]
    assert flaky < desired(rows) and len(flaky) == run["added"]
    rejected = state_rows(ws, "SELECT count(DISTINCT key) FROM rejections WHERE op = 'add'")
    assert rejected == [(run["failed"],)]
    assert audience_counts(plan_json(ws), "a-flaky") == {"all": (0, 0, 0)}
    # until they change: a new e-mail is sent again
    changed = [profile(i, a=True, email=f"new{i}@example.com") for i in range(40)]
    ws.set_profiles(changed)
    ws.write("integrations/sandbox.yaml", sandbox_yaml())
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Flaky": desired(changed)}
    assert_converged(ws)


def test_rejections_under_the_share_complete_with_a_warning(workspace):
    rows = [profile(i, a=True) for i in range(40)]
    ws = workspace(
        {"act": activation("Most") + "max_rejected_share: 0.1\n"},
        profiles=rows,
        integration=sandbox_yaml(reject_add_keys=["c00003", "c00007"]),
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert "act: Complete" in res.output
    (run,) = runs(ws, "act")
    assert run["status"] == "Complete" and run["failed"] == 2 and run["added"] == 38
    assert "2 of 40 member(s) refused" in run["error"]
    assert_converged(ws)


def test_members_the_destination_asks_to_retry_are_sent_again(workspace):
    rows = [profile(i, a=True) for i in range(10)]
    ws = workspace(
        {"act": activation("Later")},
        profiles=rows,
        integration=sandbox_yaml(retry_keys=["c00001", "c00002"]),
    )
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert audience_counts(plan_json(ws), "act") == {"all": (2, 0, 0)}
    ws.write("integrations/sandbox.yaml", sandbox_yaml())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws) == {"Later": desired(rows)}
    assert_converged(ws)


def test_removals_the_destination_asks_to_retry_are_not_refusals(workspace):
    """'Retry later' for a member leaving is what it is for one entering: the run is
    Complete, nothing counts against max_rejected_share or shows as rejected, and the next
    run removes them."""
    rows = [profile(i, a=True) for i in range(10)]
    ws = workspace({"act": activation("Later")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    leaving = [dict(r, seg_a=False) if i < 4 else r for i, r in enumerate(rows)]
    ws.set_profiles(leaving)
    ws.write("integrations/sandbox.yaml", sandbox_yaml(retry_keys=["c00001", "c00002"]))
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert "act: Complete" in res.output and "2 to retry next run" in res.output, res.output
    run = runs(ws, "act")[0]
    assert run["status"] == "Complete" and run["failed"] == 0 and run["removed"] == 2, run
    rejected = cli(ws, "log", "act", "--rejected")
    assert "c00001" not in rejected.output, rejected.output
    assert audience_counts(plan_json(ws), "act") == {"all": (0, 2, 0)}
    ws.write("integrations/sandbox.yaml", sandbox_yaml())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws) == {"Later": desired(leaving)}
    assert_converged(ws)


def test_refused_credentials_disable_the_activation_and_record_nothing(workspace):
    rows = [profile(i, a=True) for i in range(10)]
    ws = workspace(
        {"a-locked": activation("Locked"), "b-steady": activation("Steady", dest="steady")},
        profiles=rows,
        integration=sandbox_yaml(refuse_credentials=True),
    )
    ws.write("integrations/steady.yaml", sandbox_yaml(path=".reconcile/steady.duckdb"))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1
    assert "a-locked: Disabled" in res.output and "b-steady: Complete" in res.output
    assert "refused the credentials" in res.stderr
    status = status_of(ws, "a-locked")
    assert status["status"] == "Disabled" and "refused the credentials" in status["error"]
    (run,) = runs(ws, "a-locked")
    assert run["status"] == "Disabled" and run["added"] == 0
    assert "refused the credentials" in run["error"]
    assert held(ws) == {}
    assert state_rows(ws, "SELECT count(*) FROM members WHERE activation_id = 'a-locked'") == [(0,)]
    assert audience_counts(plan_json(ws), "a-locked") == {"all": (10, 0, 0)}
    assert held(ws, ".reconcile/steady.duckdb") == {"Steady": desired(rows)}
    ws.write("integrations/sandbox.yaml", sandbox_yaml())
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws) == {"Locked": desired(rows)}
    assert_converged(ws)


# ---------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_one_ctrl_c_finishes_the_batch_in_flight_then_apply_completes(workspace, sig):
    """A Ctrl-C, or the SIGTERM a cancelled CI job gets, stops after the batch in flight."""
    rows = [profile(i, a=True) for i in range(150)]
    ws = workspace(
        {"act": activation("Interrupted")},
        profiles=rows,
        integration=sandbox_yaml(batch_size=5, delay_per_batch=0.03),
    )
    proc = start(ws, "apply", "--auto-approve")
    until_planned(proc)
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, out + err
    assert "finishing the batch in flight" in err and "run apply again" in err
    (run,) = runs(ws, "act")
    assert run["status"] == "Pending" and "interrupted" in run["error"]
    assert status_of(ws, "act")["status"] == "Pending"
    sent = run["added"]
    assert 0 < sent < 150
    # what was sent is exactly what was recorded: the batch in flight was not lost
    got = held(ws)["Interrupted"]
    assert len(got) == sent and got <= desired(rows)
    # no batch is left open: each was recorded, or closed as never sent
    journal = state_rows(ws, "SELECT status, size FROM journal WHERE op = 'add'")
    assert {s for s, _ in journal} <= {"done", "abandoned"}
    assert sum(n for s, n in journal if s == "done") == sent
    assert audience_counts(plan_json(ws), "act") == {"all": (150 - sent, 0, 0)}
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Interrupted": desired(rows)}
    assert_converged(ws)
    log = runs(ws, "act")
    assert [r["status"] for r in log] == ["Complete", "Pending"]
    assert sum(r["added"] for r in log) == 150  # nobody recorded twice


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_and_the_next_apply_completes(workspace):
    rows = [profile(i, a=True) for i in range(30)]
    # a long delay before every destination call: the two interrupts land in the create call
    ws = workspace(
        {"act": activation("Twice")},
        profiles=rows,
        integration=sandbox_yaml(batch_size=10, delay_per_batch=3.0),
    )
    proc = start(ws, "apply", "--auto-approve")
    until_planned(proc)
    time.sleep(0.8)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)  # it exits without finishing its calls
    assert proc.returncode != 0, out + err
    assert "Second interrupt" in err
    assert runs(ws, "act")[0]["status"] == "Pending"
    assert held(ws) in ({}, {"Twice": set()})
    ws.write("integrations/sandbox.yaml", sandbox_yaml())
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert [n for _, n in audiences(ws)] == ["Twice"]
    assert held(ws) == {"Twice": desired(rows)}
    assert_converged(ws)


# ---------------------------------------------------------------------- the state lock
def test_state_lock_held_in_process_fails_fast_then_lock_timeout_waits(workspace):
    rows = [profile(i, a=True) for i in range(5)]
    ws = workspace({"act": activation("Locked")}, profiles=rows)
    lock = StateLock(ws.root / ".reconcile" / "state.lock")
    lock.acquire("apply")
    try:
        res = cli(ws, "apply", "--auto-approve")  # no --lock-timeout: refused, no wait
        assert res.exit_code == 1
        assert "Waiting" not in res.stderr
        assert f"pid {os.getpid()}" in res.stderr and "`reconcile apply`" in res.stderr
        assert "--lock-timeout" in res.stderr
        assert held(ws) == {}
        releaser = threading.Timer(0.5, lock.release)
        releaser.start()
        t0 = time.monotonic()
        res = cli(ws, "apply", "--auto-approve", "--lock-timeout", "20")
        releaser.join()
    finally:
        lock.release()
    assert res.exit_code == 0, res.output + res.stderr
    assert time.monotonic() - t0 >= 0.4
    assert "Waiting up to 20s for the state lock, held by" in res.stderr  # it waited silently
    assert held(ws) == {"Locked": desired(rows)}


@pytest.mark.slow
def test_state_lock_names_a_running_apply_and_lock_timeout_waits_for_it(workspace):
    rows = [profile(i, a=True) for i in range(80)]
    ws = workspace(
        {"other": activation("Other", dest="fast"), "slow": activation("Slow")},
        profiles=rows,
        # 16 calls of 0.15 s: the slow apply holds the lock for seconds, even on a busy machine
        integration=sandbox_yaml(batch_size=5, delay_per_batch=0.15),
    )
    ws.write("integrations/fast.yaml", sandbox_yaml(path=".reconcile/fast.duckdb"))
    proc = start(ws, "apply", "-t", "slow", "--auto-approve")
    until_planned(proc)
    res = cli(ws, "apply", "-t", "other", "--auto-approve")
    assert res.exit_code == 1  # refused at once: the slow apply is still running (below)
    assert f"pid {proc.pid}" in res.stderr and "`reconcile apply`" in res.stderr
    assert proc.poll() is None, "the slow apply should still be running"
    res = cli(ws, "apply", "-t", "other", "--auto-approve", "--lock-timeout", "60")
    assert res.exit_code == 0, res.output + res.stderr
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    assert held(ws) == {"Slow": desired(rows)}
    assert held(ws, ".reconcile/fast.duckdb") == {"Other": desired(rows)}
    assert_converged(ws)


# ---------------------------------------------------------------------- shared inboxes
def test_shared_inbox_hash_is_removed_only_when_nobody_has_it(workspace):
    shared = "family@example.com"
    rows = [profile(i, a=True, email=shared if i < 2 else "default") for i in range(4)]
    ws = workspace(
        {"act": activation("Shared")}, profiles=rows, integration=sandbox_yaml(batch_size=1)
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (shared_hash,) = records(rows[0])
    assert held(ws)["Shared"] == desired(rows) and shared_hash in held(ws)["Shared"]
    # one of the two leaves: the other still has the address, so the hash stays
    rows[0]["seg_a"] = False
    ws.set_profiles(rows)
    assert audience_counts(plan_json(ws), "act") == {"all": (0, 1, 0)}
    assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    assert shared_hash in held(ws)["Shared"]
    assert held(ws)["Shared"] == desired(rows)
    assert_converged(ws)
    # the second one leaves too: now it goes
    rows[1]["seg_a"] = False
    ws.set_profiles(rows)
    assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    assert shared_hash not in held(ws)["Shared"]
    assert held(ws)["Shared"] == desired(rows)
    assert_converged(ws)


def test_shared_inbox_survives_changing_e_mails_across_batches(workspace):
    """c0 moves to the address c1 had while c1 moves to the one c2 has, each in its own
    batch: the addresses c0 and c1 now have must both stay at the destination."""
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace(
        {"act": activation("Moves")}, profiles=rows, integration=sandbox_yaml(batch_size=1)
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows[0]["email"], rows[1]["email"] = "user1@example.com", "user2@example.com"
    ws.set_profiles(rows)
    assert audience_counts(plan_json(ws), "act") == {"all": (0, 0, 2)}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws)["Moves"] == desired(rows)
    assert_converged(ws)
    # c1 leaves: its address is c2's too, so it stays; c0's stays as well
    rows[1]["seg_a"] = False
    ws.set_profiles(rows)
    assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    assert held(ws)["Moves"] == desired(rows)
    assert len(desired(rows)) == 2
    assert_converged(ws)


# an adapter with a bug: its add (or remove) raises something no destination error covers
BUGGY = """\
import sys
from destinations.sandbox.adapter import SandboxDestination
method, error = sys.argv.pop(1), sys.argv.pop(1)
real = getattr(SandboxDestination, method)
def buggy(self, audience, batch, call):
    if audience.name == "Broken":
        raise {"bug": RuntimeError("a bug in the adapter"), "memory": MemoryError()}[error]
    return real(self, audience, batch, call)
setattr(SandboxDestination, method, buggy)
from reconciler.cli.main import main
main(sys.argv[1:], prog_name="reconcile")
"""


def buggy_apply(ws: WS, method: str, error: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", BUGGY, method, error, "-C", str(ws.root), "apply"]
    return subprocess.run(
        [*cmd, "--auto-approve", "--allow-mass-removal"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV | {"RECONCILE_DEBUG": "1"},
        cwd=ws.root,
    )


@pytest.mark.slow
def test_a_bug_in_one_activation_fails_it_and_the_others_still_run(workspace):
    """An unexpected exception (a bug) in one activation marks it Failed, "please report
    it" (the traceback with RECONCILE_DEBUG=1); the activations after it are still applied,
    and the next apply (the bug gone) completes the failed one."""
    rows = [profile(i, a=True) for i in range(5)]
    ws = workspace({"a": activation("Broken"), "b": activation("Healthy")}, profiles=rows)
    done = buggy_apply(ws, "add", "bug")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "internal error: RuntimeError: a bug in the adapter" in done.stdout + done.stderr
    assert "Traceback" in done.stderr
    assert held(ws)["Healthy"] == desired(rows) and held(ws)["Broken"] == set()
    assert status_of(ws, "a")["status"] == "Failed"
    assert status_of(ws, "b")["status"] == "Complete"
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Broken": desired(rows), "Healthy": desired(rows)}
    assert_converged(ws)


@pytest.mark.slow
def test_a_bug_in_a_deletion_fails_it_and_the_others_still_run(workspace):
    rows = [profile(i, a=True) for i in range(5)]
    ws = workspace(
        {"a": activation("Broken", extra="on_delete: clear\n"), "b": activation("Healthy")},
        profiles=rows,
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (ws.root / "activations" / "a.yaml").unlink()
    more = [profile(i, a=True) for i in range(8)]
    ws.set_profiles(more)
    done = buggy_apply(ws, "remove", "bug")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "internal error: RuntimeError" in done.stdout + done.stderr
    assert held(ws)["Healthy"] == desired(more)
    assert status_of(ws, "b")["status"] == "Complete"


@pytest.mark.slow
def test_the_memory_cap_still_stops_the_whole_apply(workspace):
    """MemoryError (the memory cap) is no bug of one activation: the apply stops with the
    out-of-memory message, as before, and no later activation runs."""
    rows = [profile(i, a=True) for i in range(5)]
    ws = workspace({"a": activation("Broken"), "b": activation("Healthy")}, profiles=rows)
    done = buggy_apply(ws, "add", "memory")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "out of memory" in done.stderr and "internal error" not in done.stderr
    assert "Healthy" not in held(ws)
