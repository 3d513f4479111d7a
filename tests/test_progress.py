"""Progress of apply and plan: plain lines for logs (on an injected clock), a live rich bar on
a terminal, JSON events for pipelines, -v for retries and throttle waits."""

from __future__ import annotations

import io
import json

from rich.console import Console

from reconciler.apply.outcomes import ActivationOutcome
from reconciler.apply.progress import Progress
from reconciler.cli.progress import JsonReporter, LiveReporter, PlainReporter, make_reporter
from reconciler.plan.model import Status
from tests.conftest import SANDBOX_YAML, cli, profile

ACT = "segments: [seg-a]\ndestination: sandbox\nname: A\n"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Wait:
    kind, attempt, wait, error = "throttled", 2, 1.5, "429 Too Many Requests"


def _plain(verbose: bool = False):
    clock, out = Clock(), io.StringIO()
    reporter = PlainReporter(out, verbose=verbose, clock=clock, interval=5.0)
    return Progress(emit=reporter.event, clock=clock), reporter, clock, out


def test_plain_lines_every_interval_and_at_the_end_of_each_operation():
    progress, reporter, clock, out = _plain()
    progress.start("vip", "VIP", "add", 30)
    for _ in range(2):  # 2 s apart: the interval of 5 s has not passed
        clock.now += 2
        progress.advance(5)
    assert out.getvalue() == ""
    clock.now += 2  # 6 s since the start: one line
    progress.advance(5)
    lines = out.getvalue().splitlines()
    assert lines == ['vip: audience "VIP": add: 15 of 30 members (2.5/s, about 0m06s left)']
    clock.now += 1
    progress.advance(15)  # all sent: the end line
    progress.start("vip", "VIP", "remove", 4)  # no line until it advances or ends
    reporter.close()  # the apply ended before the removal finished: its end line too
    lines = out.getvalue().splitlines()
    assert lines[1:] == [
        'vip: audience "VIP": add: 30 of 30 members sent in 7.0s (4.3/s)',
        'vip: audience "VIP": remove: 0 of 4 members sent in 0.0s',
    ]


def test_a_control_group_is_recorded_not_sent():
    progress, reporter, clock, out = _plain()
    progress.start("ab", "Winback - control", "add", 562, sent=False)
    clock.now += 1
    progress.advance(562)
    reporter.close()
    assert out.getvalue().splitlines() == [
        'ab: audience "Winback - control": add: 562 of 562 members recorded '
        "(a control group: never sent) in 1.0s (562/s)"
    ]


def test_waits_are_shown_only_with_verbose():
    for verbose in (False, True):
        progress, reporter, _, out = _plain(verbose)
        progress.start("vip", "VIP", "add", 10)
        progress.retry(Wait())
        shown = out.getvalue()
        if verbose:
            assert shown == (
                'vip: audience "VIP": add: throttled, waiting 1.5s (attempt 2): '
                "429 Too Many Requests\n"
            )
        else:
            assert shown == ""


def test_planning_steps_only_with_verbose_in_logs():
    quiet, loud = io.StringIO(), io.StringIO()
    PlainReporter(quiet).step("planning vip: segments a")
    PlainReporter(loud, verbose=True).step("planning vip: segments a")
    assert quiet.getvalue() == "" and loud.getvalue() == "planning vip: segments a\n"


def test_json_events_end_and_outcome():
    out = io.StringIO()
    reporter = JsonReporter(out)
    progress = Progress(emit=reporter.event, clock=Clock())
    progress.start("vip", "VIP", "add", 2)
    progress.retry(Wait())
    progress.advance(2)
    reporter.close()
    reporter.outcome(
        ActivationOutcome("vip", Status.COMPLETE, added=1, failed=1, warning="1 rejected")
    )
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "wait", "progress", "end", "outcome"]
    assert events[1]["kind"] == "throttled" and events[1]["wait_seconds"] == 1.5
    assert events[3]["done"] == 2 and events[3]["total"] == 2
    assert events[4] == {
        "time": events[4]["time"],
        "event": "outcome",
        "activation": "vip",
        "status": "Complete",
        "added": 1,
        "removed": 0,
        "updated": 0,
        "rejected": 1,
        "retry": 0,
        "error": None,
        "warning": "1 rejected",
    }


def test_live_bar_on_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, no_color=True)
    reporter = LiveReporter(console, verbose=True)
    progress = Progress(emit=reporter.event, clock=Clock())
    reporter.step("planning vip: segments a")
    progress.start("vip", "VIP", "add", 10)
    progress.advance(4)
    progress.retry(Wait())
    progress.advance(6)
    reporter.close()
    shown = buffer.getvalue()
    assert "planning vip: segments a" in shown
    assert 'vip: audience "VIP": add' in shown and "10/10" in shown
    assert "throttled, waiting 1.5s" in shown


def test_live_planning_steps_are_one_transient_line():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, no_color=True)
    reporter = LiveReporter(console)
    reporter.step("planning a: segments s")
    reporter.step("planning b: segments s")
    assert reporter.status is not None
    reporter.close()
    assert reporter.status is None
    assert "planning b: segments s" in buffer.getvalue()


def test_make_reporter_chooses_by_format_and_terminal():
    assert isinstance(make_reporter(log_format="json"), JsonReporter)
    assert isinstance(make_reporter(terminal=False), PlainReporter)
    assert isinstance(make_reporter(terminal=True), LiveReporter)


# ---------------------------------------------------------------------- through the CLI
def test_apply_in_a_log_prints_one_line_per_operation(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(20)])
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.stderr
    assert 'act: audience "A": add: 20 of 20 members sent in' in res.stderr
    assert "act: Complete (+20 -0 ~0)" in res.output


def test_log_format_json_streams_events_and_outcomes(workspace):
    integration = SANDBOX_YAML + "  throttle_rate: 0.6\n  seed: 3\n"
    ws = workspace(
        {"act": ACT}, profiles=[profile(i, a=True) for i in range(20)], integration=integration
    )
    res = cli(ws, "--log-format", "json", "apply", "--auto-approve")
    assert res.exit_code == 0, res.stderr
    events = [json.loads(line) for line in res.stderr.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "plan_step" and "wait" in kinds
    assert kinds[-2:] == ["end", "outcome"]
    adds = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in adds] == [7, 14, 20] and {e["total"] for e in adds} == {20}
    assert events[-1]["status"] == "Complete" and events[-1]["added"] == 20
    assert "Apply finished: 1 of 1" in res.output  # standard output keeps the report


def test_log_format_json_keeps_a_failed_run_s_error_in_json(workspace):
    """A Disabled or Failed activation's error was also printed as a plain text line after
    its outcome event: `jq` stopped on it."""
    integration = SANDBOX_YAML + "  refuse_credentials: true\n"
    ws = workspace(
        {"act": ACT}, profiles=[profile(i, a=True) for i in range(3)], integration=integration
    )
    res = cli(ws, "--log-format", "json", "apply", "--auto-approve")
    assert res.exit_code == 1
    events = [json.loads(line) for line in res.stderr.splitlines()]  # every line is JSON
    (outcome,) = [e for e in events if e["event"] == "outcome"]
    assert outcome["status"] == "Disabled" and "refused the credentials" in outcome["error"]


def test_verbose_plan_says_what_it_computes(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    assert "planning" not in cli(ws, "plan").stderr
    res = cli(ws, "-v", "plan")
    assert res.exit_code == 0 and "planning act: segments seg-a" in res.stderr


# ------------------------------------------------ what a destination answered, and who reads
class Hostile:
    kind, attempt, wait = "transient", 1, 0.5
    error = (
        'POST /x answered 503: {"error": "bad \x1b[31mRED\x1b]0;PWNED\x07 \x1b]52;c;ZWNobw==\x07"}'
    )


def test_a_destination_answer_reaches_the_terminal_with_its_escapes_escaped():
    progress, reporter, _, out = _plain(verbose=True)
    progress.start("vip", "VIP", "add", 10)
    progress.retry(Hostile())
    reporter.message("notified\x1b]0;TITLE\x07 ops")
    shown = out.getvalue()
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]0;PWNED\\x07" in shown and "notified\\x1b]0;TITLE\\x07 ops" in shown
    live = io.StringIO()
    bars = LiveReporter(Console(file=live, force_terminal=True), verbose=True)
    Progress(emit=bars.event).retry(Hostile())
    bars.close()
    assert "\x1b]" not in live.getvalue() and "\\x1b]52;c;" in live.getvalue()


def test_the_summary_escapes_an_error_that_quotes_the_destination(capsys):
    from reconciler.apply.outcomes import ApplyResult
    from reconciler.cli.applying import _report

    failed = ActivationOutcome("vip", Status.FAILED, error="answered 400: \x1b]52;c;eA==\x07")
    _report(ApplyResult([failed]), PlainReporter())
    err = capsys.readouterr().err
    assert "\x1b" not in err and "answered 400: \\x1b]52;c;eA==\\x07" in err


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_that_went_away_loses_the_lines_not_the_apply():
    for reporter in (
        PlainReporter(ClosedPipe(), verbose=True, clock=Clock(), interval=0.0),
        JsonReporter(ClosedPipe()),
    ):
        progress = Progress(emit=reporter.event, clock=Clock())
        progress.start("vip", "VIP", "add", 2)
        progress.retry(Wait())
        progress.advance(2)
        reporter.message("done")
        reporter.step("planning")
        reporter.close()  # nothing raised


def test_a_call_that_moves_no_member_names_its_audience_in_its_waits():
    progress, reporter, _, out = _plain(verbose=True)
    progress.at("vip", "VIP", "create")
    progress.retry(Wait())
    assert out.getvalue() == (
        'vip: audience "VIP": create: throttled, waiting 1.5s (attempt 2): 429 Too Many Requests\n'
    )
    stream = io.StringIO()
    json_progress = Progress(emit=JsonReporter(stream).event)
    json_progress.at("vip", "VIP", "create")
    json_progress.retry(Wait())
    event = json.loads(stream.getvalue())
    assert (event["activation"], event["audience"], event["op"]) == ("vip", "VIP", "create")


def _until(out: io.StringIO, text: str, seconds: float = 10.0) -> list[str]:
    import time

    end = time.monotonic() + seconds
    while text not in out.getvalue() and time.monotonic() < end:
        time.sleep(0.05)
    return out.getvalue().splitlines()


def test_plain_lines_go_on_while_no_batch_comes_back():
    """A line appeared only when a batch came back: a slow answer or a throttle being waited
    out left a CI log silent for as long as it lasted (minutes for Meta's regain time)."""
    clock, out = Clock(), io.StringIO()
    reporter = PlainReporter(out, clock=clock, interval=5.0, heartbeat=True)
    progress = Progress(emit=reporter.event, clock=clock)
    try:
        progress.start("vip", "VIP", "add", 30)
        clock.now += 6  # no batch back for 6 s
        lines = _until(out, "waiting for the destination's answer")
        assert lines == [
            'vip: audience "VIP": add: 0 of 30 members (waiting for the destination\'s answer)'
        ]
        reporter.event(
            {
                "event": "wait",
                "kind": "throttled",
                "wait_seconds": 30.0,
                "attempt": 1,
                "activation": "vip",
                "audience": "VIP",
                "op": "add",
            }
        )  # without -v the wait itself prints nothing ...
        clock.now += 6
        lines = _until(out, "throttled by the destination")  # ... the heartbeat says it
        assert lines[-1] == (
            'vip: audience "VIP": add: 0 of 30 members (throttled by the destination, '
            "waiting 24s more)"
        )
    finally:
        reporter.close()
    assert reporter._timer is None  # stopped with the reporter
