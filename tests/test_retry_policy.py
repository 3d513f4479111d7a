"""The retry policy, on a fake clock: nothing here sleeps for real."""

from __future__ import annotations

import random

import pytest

from destinations.redaction import protect
from destinations.retry import RetryEvent, RetryInterrupted, RetryPolicy
from reconciler.errors import (
    CredentialsRefused,
    TerminalError,
    ThrottledError,
    TransientError,
)


class FakeClock:
    """``sleep`` advances ``now``; ``slept`` lists every sleep the policy asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds


class Scripted:
    """A callable that raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(clock: FakeClock, events: list[RetryEvent] | None = None, **kw) -> RetryPolicy:
    return RetryPolicy(
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
        on_event=events.append if events is not None else None,
        **kw,
    )


def waits(events: list[RetryEvent]) -> list[float]:
    return [e.wait for e in events if e.kind != "gave_up"]


def test_success_needs_no_wait():
    clock = FakeClock()
    fn = Scripted()
    assert policy(clock).call(fn) == "ok"
    assert fn.calls == 1 and clock.slept == []


@pytest.mark.parametrize("seed", range(20))
def test_retry_after_is_a_floor_never_shortened_by_jitter(seed):
    clock, events = FakeClock(), []
    p = RetryPolicy(clock=clock, sleep=clock.sleep, rng=random.Random(seed), on_event=events.append)
    fn = Scripted(ThrottledError("slow down", retry_after=60))
    start = clock.now
    assert p.call(fn) == "ok"
    assert clock.now - start >= 60
    assert clock.now - start <= 60 + p.retry_after_jitter
    assert [e.kind for e in events] == ["throttled"] and events[0].wait >= 60


def test_a_tiny_retry_after_gets_tiny_jitter():
    clock = FakeClock()
    policy(clock).call(Scripted(ThrottledError("busy", retry_after=0.01)))
    assert 0.01 <= clock.now - 1000.0 <= 0.02


def test_retry_after_longer_than_the_old_30s_cap_is_honoured():
    clock = FakeClock()
    fn = Scripted(ThrottledError("a", retry_after=300), ThrottledError("b", retry_after=120))
    assert policy(clock).call(fn) == "ok"
    assert clock.now - 1000.0 >= 420


def test_throttle_storm_does_not_count_as_failures():
    clock, events = FakeClock(), []
    # 30 throttles (more than max_failures) then 7 transient errors, then success
    errors = [ThrottledError("busy") for _ in range(30)] + [TransientError("502") for _ in range(7)]
    fn = Scripted(*errors)
    p = policy(clock, events, max_failures=8, budget_minutes=120)
    assert p.call(fn) == "ok"
    assert fn.calls == 38
    assert max(e.failures for e in events) == 7
    assert all(e.failures == 0 for e in events if e.kind == "throttled")


def test_throttles_without_retry_after_back_off_exponentially_with_jitter():
    clock, events = FakeClock(), []
    fn = Scripted(*[ThrottledError("busy") for _ in range(5)])
    p = policy(clock, events, throttle_backoff_start=4.0, backoff_max=60.0)
    p.call(fn)
    w = waits(events)
    for n, wait in enumerate(w, start=1):
        base = min(4.0 * 2 ** (n - 1), 60.0)
        assert base / 2 <= wait <= base
    assert w[-1] > w[0]


def test_time_budget_ends_a_storm_and_raises_the_last_error():
    clock, events = FakeClock(), []
    storm = [ThrottledError(f"busy {i}", retry_after=60) for i in range(100)]
    fn = Scripted(*storm)
    p = policy(clock, events, budget_minutes=5)
    with pytest.raises(ThrottledError) as raised:
        p.call(fn)
    assert clock.now - 1000.0 <= 5 * 60  # never waited past the budget
    assert fn.calls < 100
    assert str(raised.value) == f"busy {fn.calls - 1}"
    assert events[-1].kind == "gave_up"


def test_a_retry_after_beyond_the_budget_gives_up_without_waiting():
    clock = FakeClock()
    fn = Scripted(ThrottledError("come back in an hour", retry_after=3600))
    with pytest.raises(ThrottledError):
        policy(clock, budget_minutes=15).call(fn)
    assert clock.slept == [] and fn.calls == 1


def test_transient_gives_up_after_max_consecutive_failures():
    clock, events = FakeClock(), []
    fn = Scripted(*[TransientError(f"timeout {i}") for i in range(20)])
    with pytest.raises(TransientError, match="timeout 7"):
        policy(clock, events, max_failures=8).call(fn)
    assert fn.calls == 8
    assert [e.kind for e in events] == ["transient"] * 7 + ["gave_up"]
    # exponential: each wait within [base/2, base], base doubling from backoff_start
    for n, wait in enumerate(waits(events), start=1):
        base = min(0.5 * 2 ** (n - 1), 60.0)
        assert base / 2 <= wait <= base
    # and far longer than the ~1.3 s the old loop spent before giving up
    assert sum(waits(events)) > 20


def test_transient_then_success_recovers():
    clock = FakeClock()
    fn = Scripted(TransientError("reset"), TransientError("reset"))
    assert policy(clock).call(fn) == "ok"
    assert fn.calls == 3


@pytest.mark.parametrize(
    "error", [TerminalError("400 bad request"), CredentialsRefused("401"), ValueError("bug")]
)
def test_terminal_and_foreign_errors_are_not_retried(error):
    clock = FakeClock()
    fn = Scripted(error)
    with pytest.raises(type(error)):
        policy(clock).call(fn)
    assert fn.calls == 1 and clock.slept == []


def test_interrupt_hook_stops_waiting():
    clock = FakeClock()
    stop = {"now": False}

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now - 1000.0 >= 5:  # Ctrl-C arrives 5 s into a 60 s wait
            stop["now"] = True

    p = RetryPolicy(clock=clock, sleep=sleep, interrupt=lambda: stop["now"], tick=0.5)
    fn = Scripted(ThrottledError("busy", retry_after=60))
    with pytest.raises(RetryInterrupted) as raised:
        p.call(fn)
    assert isinstance(raised.value.last_error, ThrottledError)
    assert 5 <= clock.now - 1000.0 < 6  # stopped within one tick, not after 60 s
    assert fn.calls == 1


def test_interrupt_already_requested_means_no_sleep_at_all():
    clock = FakeClock()
    p = policy(clock).with_hooks(interrupt=lambda: True)
    with pytest.raises(RetryInterrupted):
        p.call(Scripted(TransientError("x")))
    assert clock.slept == []


def test_events_report_kind_attempt_wait_and_redacted_error():
    protect("tok-SECRET-123")
    clock, events = FakeClock(), []
    fn = Scripted(
        ThrottledError("throttled for token tok-SECRET-123", retry_after=2),
        TransientError("read timeout"),
    )
    p = policy(clock).with_hooks(on_event=events.append)
    p.call(fn)
    assert [(e.kind, e.attempt, e.failures) for e in events] == [
        ("throttled", 1, 0),
        ("transient", 2, 1),
    ]
    assert events[0].wait >= 2
    assert "tok-SECRET-123" not in events[0].error and "throttled for token" in events[0].error
    assert "waiting" in str(events[1])
    assert sum(clock.slept) == pytest.approx(sum(e.wait for e in events))


def test_keyword_arguments_pass_through_and_policy_is_reusable():
    clock = FakeClock()
    p = policy(clock)

    def add(a, *, b):
        return a + b

    assert p(add, 1, b=2) == 3
    assert p.call(Scripted(TransientError("x"))) == "ok"
    assert p.call(Scripted(TransientError("x"))) == "ok"  # counters are per call


@pytest.mark.parametrize("bad", [{"budget_minutes": 0}, {"max_failures": 0}, {"backoff_start": -1}])
def test_nonsense_sizes_are_refused(bad):
    with pytest.raises(ValueError):
        RetryPolicy(**bad)
