"""Additions that came back are recorded in groups, and the next batches' intents are
journaled ahead of their calls, a window of members at a time
(``reconciler.apply.additions``: one batch, then four times as many as were recorded so far, up
to ``RECORD_ROWS``, never more): a kill before a group is recorded re-sends its members and nothing is
lost or doubled; a failed call stops the run and closes the intents of the batches it never
sent."""

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
    proc = subprocess.run(
        [sys.executable, "-c", NO_TIME_LIMIT, "-C", str(ws.root), "--no-color"]
        + ["apply", "--auto-approve"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ws.root,
        timeout=120,
    )
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
    # the calls not recorded (one of them in flight) were closed, their members sent again
    assert journal(ws).count("interrupted") >= 4
    assert runs(ws, "act")[0]["added"] == 60 - recorded
    assert_converged(ws)


def test_groups_grow_with_what_was_recorded_and_hold_every_member(workspace, monkeypatch):
    """Calls of 5 members, groups of at most 15: groups of 5, 15, 15, 15, 10 members."""
    monkeypatch.setattr(additions, "RECORD_ROWS", 15)
    monkeypatch.setattr(additions, "RECORD_SECONDS", 600)
    rows = [profile(i, a=True) for i in range(60)]
    ws = workspace(
        {"act": activation("Groups")}, profiles=rows, integration=sandbox_yaml(batch_size=5)
    )
    groups: list[int] = []
    real = additions.AdditionSender._record_adds

    def counted(self, ref, done):
        before = sum(c.size for c in done)
        error = real(self, ref, done)
        groups.append(before - sum(c.size for c in done))  # what this transaction recorded
        return error

    monkeypatch.setattr(additions.AdditionSender, "_record_adds", counted)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    groups = [n for n in groups if n]
    assert sum(groups) == 60 and max(groups) <= 15 and len(groups) <= 6, groups
    assert groups[0] == 5, groups  # the first call is recorded on its own
    assert held(ws) == {"Groups": desired(rows)}
    assert journal(ws) == ["done"] * 12
    assert runs(ws, "act")[0]["added"] == 60
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
    """Calls of 5 members, groups of at most 12: a group is recorded when the next call would
    not fit (10 members), never past the bound (a group of 15 would be), control group too."""
    monkeypatch.setattr(additions, "RECORD_ROWS", 12)
    monkeypatch.setattr(additions, "RECORD_SECONDS", 600)
    rows = [profile(i, a=True) for i in range(60)]
    act = activation("Bounded") + "split: control\ncontrol_percent: 50\n"
    ws = workspace({"act": act}, profiles=rows, integration=sandbox_yaml(batch_size=5))
    groups: list[int] = []
    real = additions.AdditionSender._record_adds

    def counted(self, ref, done):
        before = sum(c.size for c in done)
        error = real(self, ref, done)
        groups.append(before - sum(c.size for c in done))
        return error

    control: list[int] = []  # members of each commit of the control group
    real_control = additions.AdditionSender._record_control_group

    def control_commits(self, batches):
        transaction, record_sent = self.state.transaction, self.state.record_sent

        def opened():
            control.append(0)
            return transaction()

        def recorded(batch_id, batch, *args, **kwargs):
            control[-1] += batch.num_rows
            return record_sent(batch_id, batch, *args, **kwargs)

        monkeypatch.setattr(self.state, "transaction", opened)
        monkeypatch.setattr(self.state, "record_sent", recorded)
        try:
            real_control(self, batches)
        finally:
            monkeypatch.setattr(self.state, "transaction", transaction)
            monkeypatch.setattr(self.state, "record_sent", record_sent)

    monkeypatch.setattr(additions.AdditionSender, "_record_adds", counted)
    monkeypatch.setattr(additions.AdditionSender, "_record_control_group", control_commits)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    groups = [n for n in groups if n]
    assert groups and max(groups) <= 12 and groups[0] == 5, groups
    assert control and max(control) <= 12 and sum(control) + sum(groups) == 60, control
    assert_converged(ws)
