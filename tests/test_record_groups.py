"""Additions that came back are recorded in groups, and the next batches' intents are
journaled ahead of their calls, a window of members at a time
(``reconciler.apply.additions``: one batch, then four times as many as were recorded so far, up
to ``RECORD_ROWS``, then exactly ``RECORD_ROWS`` a transaction, whatever the calls' sizes): a kill
before a group is recorded re-sends its members and nothing is lost or doubled; a failed call
stops the run and closes the intents of the batches it never sent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from destinations.sandbox import SandboxDestination
from reconciler.apply import additions
from reconciler.errors import TerminalError
from tests.conftest import cli, profile
from tests.test_recovery import (
    ENV,
    activation,
    assert_converged,
    audiences,
    desired,
    held,
    runs,
    sandbox_yaml,
    state_rows,
)

# the CLI with no time limit on a group, so that groups are cut by size alone however slow
# the machine (the sandbox ends the process at its N-th call: ``exit_after_calls``)
NO_TIME_LIMIT = """\
import sys
from reconciler.apply import additions
additions.RECORD_SECONDS = 600
from reconciler.cli.main import main
main(sys.argv[1:], prog_name="reconcile")
"""


def apply_with(ws, script: str) -> subprocess.CompletedProcess:
    """`reconcile apply --auto-approve` in the workspace, run by ``script`` in a child process
    (which may end it abruptly)."""
    return subprocess.run(
        [sys.executable, "-c", script, "-C", str(ws.root), "--no-color"]
        + ["apply", "--auto-approve"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ws.root,
        timeout=120,
    )


def journal(ws, op: str = "add") -> list[str]:
    rows = state_rows(ws, "SELECT status FROM journal WHERE op = ? ORDER BY started_at", [op])
    return [r[0] for r in rows]


@pytest.mark.slow
def test_a_kill_before_a_group_is_recorded_resends_it_and_the_audience_is_exact(workspace):
    rows = [profile(i, a=True) for i in range(60)]
    ws = workspace(
        {"act": activation("Grouped")},
        profiles=rows,
        # call 1 creates the audience, calls 2-13 add 5 members each; the process ends right
        # after the destination applied the eighth add, before it was answered
        integration=sandbox_yaml(batch_size=5, exit_after_calls=9, exit_when="after"),
    )
    proc = apply_with(ws, NO_TIME_LIMIT)
    assert proc.returncode == 137, proc.stdout + proc.stderr
    # the destination holds eight batches; seven came back, recorded in groups of 5 and 20
    # members (four times what was recorded before it): the next group (the sixth call on)
    # was not complete, so 25 members at most are recorded (35 came back)
    assert len(held(ws)["Grouped"]) == len(desired(rows[:40]))
    recorded = state_rows(ws, "SELECT count(*) FROM members")[0][0]
    assert 5 <= recorded <= 25
    assert runs(ws, "act")[0]["added"] == recorded
    ws.write("integrations/sandbox.yaml", sandbox_yaml(batch_size=5))
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert [n for _, n in audiences(ws)] == ["Grouped"]
    assert held(ws) == {"Grouped": desired(rows)}
    assert state_rows(ws, "SELECT count(*) FROM members") == [(60,)]
    # the calls not recorded (one of them in flight) were closed, their members recorded as
    # possibly sent and sent again (as updates), the calls never journaled sent as additions
    assert journal(ws).count("interrupted") >= 4
    run = runs(ws, "act")[0]
    assert run["added"] + run["updated"] == 60 - recorded and run["updated"] >= 5
    assert_converged(ws)


def recorded_groups(monkeypatch) -> tuple[list[int], list[int]]:
    """Members recorded by each transaction of the additions' calls, and of a control group
    (its transactions have no run), as they happen."""
    from reconciler.state.writer import StateStore

    sent: list[int] = []
    control: list[int] = []
    real = StateStore.record_sent_batches

    def spy(self, parts, completed, activation_id, grp, *, run_id):
        (sent if run_id else control).append(sum(p.num_rows for p in parts))
        return real(self, parts, completed, activation_id, grp, run_id=run_id)

    monkeypatch.setattr(StateStore, "record_sent_batches", spy)
    return sent, control


def assert_row_groups(groups: list[int], size: int) -> None:
    """Exactly ``size`` members a transaction, but at the end: what had come back when the
    last batch was read, and what came back after it (two smaller groups at most)."""
    full = list(groups)
    tail: list[int] = []
    while full and full[-1] < size and len(tail) < 2:
        tail.insert(0, full.pop())
    assert full and all(n == size for n in full), groups


def test_groups_grow_then_hold_exactly_one_row_group(workspace, monkeypatch):
    """Calls of 5 members, a row group of 15: groups of 5, then exactly 15 (a call's members
    split over two transactions where needed), the rest at the end; every intent closed."""
    monkeypatch.setattr(additions, "RECORD_ROWS", 15)
    monkeypatch.setattr(additions, "RECORD_SECONDS", 600)
    rows = [profile(i, a=True) for i in range(62)]
    ws = workspace(
        {"act": activation("Groups")}, profiles=rows, integration=sandbox_yaml(batch_size=5)
    )
    groups, _ = recorded_groups(monkeypatch)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    members = len(desired(rows))
    assert sum(groups) == members and groups[0] == 5, groups  # the first call on its own
    assert_row_groups(groups[1:], 15)
    assert held(ws) == {"Groups": desired(rows)}
    assert journal(ws) == ["done"] * (-(-members // 5))
    assert runs(ws, "act")[0]["added"] == members
    assert_converged(ws)


# the CLI with row groups of 12 members, killed right after its second group was committed
KILLED_AFTER_TWO_GROUPS = """\
import contextlib, os, sys
from reconciler.apply import additions
additions.RECORD_ROWS = 12
additions.RECORD_SECONDS = 600
from reconciler.state.journal_writes import JournalWrites
from reconciler.state.writer import StateStore
groups = []
record = StateStore.record_sent_batches
def counted(self, parts, *args, **kwargs):
    groups.append(sum(p.num_rows for p in parts))
    return record(self, parts, *args, **kwargs)
StateStore.record_sent_batches = counted
transaction = JournalWrites.transaction
@contextlib.contextmanager
def committed(self):
    outer = not self._in_transaction
    with transaction(self):
        yield
    if outer and len(groups) == 2:
        print("groups", groups, file=sys.stderr, flush=True)
        os._exit(137)
JournalWrites.transaction = committed
from reconciler.cli.main import main
main(sys.argv[1:], prog_name="reconcile")
"""


@pytest.mark.slow
def test_a_call_split_over_two_groups_is_closed_by_the_second(workspace):
    """Calls of 5, row groups of 12: the second group holds calls 2 and 3 and two members of
    call 4, whose intent stays open; a run killed then re-sends only call 4's other members
    (and the calls after it), and the audience is exact."""
    rows = [profile(i, a=True) for i in range(40)]
    ws = workspace(
        {"act": activation("Split")}, profiles=rows, integration=sandbox_yaml(batch_size=5)
    )
    proc = apply_with(ws, KILLED_AFTER_TWO_GROUPS)
    assert proc.returncode == 137, proc.stdout + proc.stderr
    assert "groups [5, 12]" in proc.stderr
    assert state_rows(ws, "SELECT count(*) FROM members") == [(17,)]
    assert runs(ws, "act")[0]["added"] == 17
    assert journal(ws)[:4] == ["done", "done", "done", "intent"]  # call 4: 2 of 5 recorded
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Split": desired(rows)}
    assert state_rows(ws, "SELECT count(*) FROM members") == [(len(desired(rows)),)]
    # call 4's other members, and those of the calls journaled with it, were in flight:
    # recorded as possibly sent, and sent again as updates
    run = runs(ws, "act")[0]
    assert run["added"] + run["updated"] == len(desired(rows)) - 17 and run["updated"] >= 3
    assert "intent" not in journal(ws) and journal(ws)[3] == "interrupted"
    assert_converged(ws)


def test_a_failed_call_closes_the_intents_of_batches_never_sent(workspace, monkeypatch):
    monkeypatch.setattr(additions, "RECORD_SECONDS", 600)
    rows = [profile(i, a=True) for i in range(60)]
    ws = workspace(
        {"act": activation("Failing")}, profiles=rows, integration=sandbox_yaml(batch_size=5)
    )
    real = SandboxDestination.add
    calls: list[int] = []

    def add(self, ref, batch, ctx):
        calls.append(len(batch))
        if len(calls) == 6:
            raise TerminalError("the destination refused this batch")
        return real(self, ref, batch, ctx)

    monkeypatch.setattr(SandboxDestination, "add", add)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 1, res.output
    assert len(calls) == 6  # nothing was sent after the failed call
    statuses = journal(ws)
    # five calls recorded, the failed one left open (closed by the next apply), and the
    # batches journaled ahead but never sent closed as abandoned
    assert statuses[:6] == ["done"] * 5 + ["intent"], statuses
    assert len(statuses) > 6 and set(statuses[6:]) == {"abandoned"}, statuses
    assert state_rows(ws, "SELECT count(*) FROM members") == [(25,)]
    assert len(held(ws)["Failing"]) == len(desired(rows[:25]))
    monkeypatch.setattr(SandboxDestination, "add", real)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"Failing": desired(rows)}
    assert "intent" not in journal(ws)
    assert_converged(ws)


def test_a_group_never_holds_more_than_record_rows(workspace, monkeypatch):
    """Calls of 5 members, row groups of 12: no transaction records more than 12 members,
    and past the first call every one but the last records exactly 12, control group too."""
    monkeypatch.setattr(additions, "RECORD_ROWS", 12)
    monkeypatch.setattr(additions, "RECORD_SECONDS", 600)
    rows = [profile(i, a=True) for i in range(60)]
    act = activation("Bounded") + "split: control\ncontrol_percent: 50\n"
    ws = workspace({"act": act}, profiles=rows, integration=sandbox_yaml(batch_size=5))
    groups, control = recorded_groups(monkeypatch)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert groups and max(groups) <= 12 and groups[0] == 5, groups
    assert_row_groups(groups[1:], 12)
    assert control and max(control) <= 12 and all(n == 12 for n in control[:-1]), control
    assert sum(control) + sum(groups) == len(desired(rows))
    assert_converged(ws)


def test_whole_row_groups_are_written_once(workspace):
    """In the apply's engine session, a transaction of exactly one DuckDB row group of members
    (calls of 10,000 cut to fit) is written straight to the state file as a whole row group:
    nothing is left for the checkpoint to merge and rewrite (no free blocks). This relies on
    the session's `preserve_insertion_order = false`; with the order kept, each call's rows
    would be a batch and a row group of their own."""
    import duckdb
    import pyarrow as pa

    from reconciler.apply.held_rows import HeldRows
    from tests.conftest import engine_session

    ws = workspace({}, profiles=[profile(1, a=True)])
    group = 122_880
    held = HeldRows()
    for call in range(25):  # 250,000 members: two whole row groups and 4,240 more
        keys = [f"{call:02d}-{i:05d}" for i in range(10_000)]
        rec = [[f"email_sha256:{k}{'0' * 56}"] for k in keys]
        fp = pa.array(range(call * 10_000, (call + 1) * 10_000), pa.uint64())
        held.add(f"b{call}", pa.table({"key": keys, "rec": rec, "fp": fp}))
    with engine_session(ws.root, write_state=True, lock_down=False) as session:
        store = session.state_store()
        while held:
            parts, _ = held.take(group)
            store.record_sent_batches(parts, [], "act", "all", run_id="")
    with duckdb.connect(str(ws.root / ".reconcile" / "state.duckdb"), read_only=True) as db:
        sizes = db.execute(
            "SELECT max(count) FROM pragma_storage_info('members') "
            "GROUP BY row_group_id ORDER BY row_group_id"
        ).fetchall()
        (free,) = db.execute("SELECT free_blocks FROM pragma_database_size()").fetchall()[0]
        (rows,) = db.execute("SELECT count(*) FROM members").fetchall()[0]
    assert rows == 250_000
    assert [n for (n,) in sizes] == [group, group, 250_000 - 2 * group]
    assert free == 0


def test_a_new_split_group_never_sends_to_the_audience_the_split_change_empties(workspace):
    """Adding a control group drains the old `all` audience. Adopting that audience for the
    experiment group (the name-taken warning advised `adopt: true`) added the members, then
    removed them with the old group's: the list ended empty, and the next plan said No
    changes."""
    rows = [profile(i, a=True) for i in range(20)]
    base = "segments: [seg-a]\ndestination: sandbox\nname: Gold\n"
    ws = workspace({"act": base}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    split = base + "split: control\ncontrol_percent: 20\n"
    ws.write("activations/act.yaml", split)
    text = cli(ws, "plan").output
    assert "is this activation's own, of group 'all', which the new split empties" in text
    assert "adopt: true" not in text
    ws.write("activations/act.yaml", split + "adopt: true\n")
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "group 'experiment' would send to the audience 'Gold'" in res.stderr, res.stderr
    assert "activations/act.yaml" in res.stderr


def test_a_control_group_added_on_an_existing_list_is_refused(workspace):
    rows = [profile(i, a=True) for i in range(20)]
    ws = workspace({"base": "segments: [seg-a]\ndestination: sandbox\nname: Base\n"}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.remove("activations/base.yaml")  # the list stays at the destination
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    existing = "segments: [seg-a]\ndestination: sandbox\nlist: {existing: Base}\n"
    ws.write("activations/ex.yaml", existing)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.write("activations/ex.yaml", existing + "split: control\ncontrol_percent: 20\n")
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 1
    assert "group 'experiment' would send to the audience 'Base'" in res.stderr, res.stderr
    assert len(held(ws)["Base"]) == 20  # nothing was sent
