"""When a daily activation is due, and `apply --due`."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from destinations.identity import sha256_hex
from reconciler.plan.schedule import is_due
from reconciler.state.store import RecordedActivation
from tests.conftest import RECONCILE_YAML, cli, plan_json, profile

AS_OF = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)  # 23:00 in Sydney, 12:00 in UTC


def rec(**kw) -> RecordedActivation:
    base = RecordedActivation(
        id="a",
        spec={},
        spec_digest="",
        serial=1,
        status="Complete",
        destination="sandbox",
        frequency="daily",
        paused=False,
        split_seed="a",
        date_created=AS_OF.date(),
        last_run_at=None,
        last_success_at=None,
        ran=True,
        error=None,
    )
    return replace(base, **kw)


@pytest.mark.parametrize(
    ("record", "frequency", "timezone", "refresh", "due"),
    [
        (None, "daily", "UTC", None, True),
        (rec(last_success_at=datetime(2026, 11, 29, 1, tzinfo=UTC)), "daily", "UTC", None, False),
        (rec(last_success_at=datetime(2026, 11, 28, 23, tzinfo=UTC)), "daily", "UTC", None, True),
        # 12:00 UTC is already the next day in Sydney: a run at 11:00 UTC is "today" there too
        (
            rec(last_success_at=datetime(2026, 11, 29, 11, tzinfo=UTC)),
            "daily",
            "Australia/Sydney",
            None,
            False,
        ),
        (
            rec(last_success_at=datetime(2026, 11, 29, 11, tzinfo=UTC)),
            "daily",
            "UTC",
            datetime(2026, 11, 29, 11, 30, tzinfo=UTC),
            True,
        ),  # the source refreshed since
        (rec(status="Failed", last_success_at=AS_OF), "daily", "UTC", None, True),
        (rec(status="Disabled", last_success_at=AS_OF), "daily", "UTC", None, True),
        (rec(ran=False, last_success_at=None), "once", "UTC", None, True),
        (rec(ran=False, status="Failed"), "once", "UTC", None, True),  # its first run: again
        (rec(ran=True, status="Refused"), "once", "UTC", None, False),  # a re-run: `run` again
        (rec(ran=True, status="Pending"), "once", "UTC", None, True),  # interrupted: recover
        (
            rec(ran=True, last_success_at=datetime(2026, 1, 1, tzinfo=UTC)),
            "once",
            "UTC",
            None,
            False,
        ),
    ],
)
def test_is_due(record, frequency, timezone, refresh, due):
    assert is_due(record, frequency, AS_OF, timezone, refresh) is due


ACT = "segments: [seg-a]\ndestination: sandbox\nname: A\n"


def test_apply_due_runs_once_a_day_unless_the_source_refreshed(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    assert [a["id"] for a in plan_json(ws, "--due")["activations"]] == ["act"]
    assert cli(ws, "apply", "--due", "--auto-approve").exit_code == 0
    assert plan_json(ws, "--due")["activations"] == []  # ran today, nothing new
    ws.write(
        "reconcile.yaml",
        RECONCILE_YAML.replace(
            "  profiles:\n",
            "  freshness_sql: SELECT TIMESTAMP '2999-01-01 00:00:00'\n  profiles:\n",
            1,
        ),
    )
    assert [a["id"] for a in plan_json(ws, "--due")["activations"]] == ["act"]
    # due with no member changes: the scheduled run is still recorded
    assert cli(ws, "apply", "--due", "--auto-approve").exit_code == 0
    runs = cli(ws, "log", "act", "--format", "json").json()["runs"]
    assert [(r["trigger"], r["status"], r["added"]) for r in runs] == [
        ("schedule", "Complete", 0),
        ("schedule", "Complete", 3),
    ]


def test_a_merged_change_not_applied_yet_is_due(workspace):
    """A daily activation that ran today but whose file changed since (a merge whose own apply
    was replaced in the queue, or failed) is applied by the next scheduled run: `--due` left
    it out until the next day, with no word."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--due", "--auto-approve").exit_code == 0
    assert plan_json(ws, "--due")["activations"] == []
    ws.write("activations/act.yaml", ACT.replace("name: A", "name: Renamed"))
    (due,) = plan_json(ws, "--due")["activations"]
    assert due["id"] == "act" and due["change"] == "update"
    assert cli(ws, "apply", "--due", "--auto-approve").exit_code == 0
    assert plan_json(ws, "--due")["activations"] == []
    assert "No changes" in cli(ws, "plan").output


def test_freshness_sql_must_be_one_select(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    ws.write(
        "reconcile.yaml",
        RECONCILE_YAML.replace(
            "  profiles:\n", "  freshness_sql: DELETE FROM profiles\n  profiles:\n", 1
        ),
    )
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "reconcile.yaml:" in res.stderr and "freshness_sql" in res.stderr


@pytest.mark.parametrize("frozen", ["paused: true\n", "frequency: once\n"])
def test_apply_due_removes_exclusions_of_a_paused_or_finished_one_time_activation(
    workspace, frozen
):
    """Suppression and consent removals apply "even when paused" (and after a one-time
    activation ran): the scheduled `apply --due` must make them, not only a manual apply."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(4)])
    assert cli(ws, "apply", "--due", "--auto-approve").exit_code == 0
    ws.write("activations/act.yaml", ACT + frozen)
    assert cli(ws, "apply", "--due", "--auto-approve").exit_code == 0  # ran today
    assert plan_json(ws, "--due")["activations"] == []  # nothing to do: not listed
    ws.set_profiles([profile(i, a=True, consent=i != 2) for i in range(4)])  # 2 withdraws
    (planned,) = plan_json(ws, "--due")["activations"]
    assert [(au["add"], au["remove"]) for au in planned["audiences"]] == [(0, 1)]
    res = cli(ws, "apply", "--due", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert ws.sandbox_keys()["A"] == {
        f"email_sha256:{sha256_hex(f'user{i}@example.com')}" for i in (0, 1, 3)
    }
    assert plan_json(ws, "--due")["activations"] == []


def test_a_refused_re_run_of_a_one_time_activation_stays_visible(workspace):
    """The scheduled job planned the finished one-time activation (its Refused status made
    it due), had nothing to send, and recorded Complete: status and plan then said all was
    well while the re-run's removal was never made."""
    once = ACT + "frequency: once\n"
    ws = workspace({"act": once}, profiles=[profile(i, a=i < 2) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=i < 1) for i in range(4)])  # one of two leaves: 50% > share
    ws.write("activations/act.yaml", once + "max_removal_share: 0.4\n")
    assert cli(ws, "run", "act", "--auto-approve").exit_code == 1  # refused by the guard
    assert cli(ws, "apply", "--due", "--auto-approve").exit_code == 0
    status = cli(ws, "status", "--inactive")
    assert "Refused" in status.output and "Complete" not in status.output, status.output
    assert len(ws.sandbox_keys()["A"]) == 2  # still there: `run` again is the way


def test_no_changes_names_the_finished_one_time_activations_run_would_re_run(workspace):
    once = ACT + "frequency: once\n"
    ws = workspace({"act": once}, profiles=[profile(i, a=i < 2) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=i < 3) for i in range(4)])  # one enters: only `run` sends it
    out = cli(ws, "plan", "-t", "act").output
    assert "No changes." in out
    assert '= activation "act": one-time activation already ran: `reconcile run act`' in out, out
