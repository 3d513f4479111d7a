"""The retry policy around every destination call: waits out throttling, retries transient
errors, and gives up on time.

It wraps ANY callable that raises the typed errors of :mod:`reconciler.errors` (HTTP or not)
and is built on tenacity. The rules:

- :class:`~reconciler.errors.ThrottledError` with ``retry_after``: wait at least that long.
  ``Retry-After`` is a floor; jitter only ever adds to it (up to a tenth of it, at most
  ``retry_after_jitter`` seconds).
- ``ThrottledError`` without ``retry_after``: exponential backoff with jitter, starting at
  ``throttle_backoff_start`` seconds.
- :class:`~reconciler.errors.TransientError`: exponential backoff with jitter from
  ``backoff_start``; after ``max_failures`` of them the last one is raised. Throttling waits
  never count as failures.
- Whatever the error, a call never waits past ``budget_minutes`` (measured from its first
  attempt): when the next wait would end beyond it, the last error is raised at once.
- :class:`~reconciler.errors.TerminalError` and any other exception: raised at once.
- ``interrupt`` (e.g. ``lambda: guard.stop_requested``) is checked before each sleep and
  every ``tick`` seconds while sleeping; when it answers True the wait stops with
  :class:`RetryInterrupted`.
- ``on_event`` receives a :class:`RetryEvent` before each wait and when the policy gives up,
  for ``-v`` output. Error texts in events pass through the process redactor.

``sleep`` and ``clock`` are injectable so tests never sleep for real.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import tenacity

from destinations.redaction import PROCESS_REDACTOR
from reconciler.errors import ThrottledError, TransientError

__all__ = ["RetryEvent", "RetryInterrupted", "RetryPolicy"]

_R = TypeVar("_R")

EventKind = Literal["throttled", "transient", "gave_up"]


@dataclass(frozen=True)
class RetryEvent:
    """One wait (``throttled`` / ``transient``) or the end of retrying (``gave_up``).

    ``attempt`` counts calls made so far; ``failures`` the transient failures among them
    (throttles excluded); ``wait`` is the seconds about to be slept (0 for ``gave_up``)."""

    kind: EventKind
    attempt: int
    failures: int
    wait: float
    error: str

    def __str__(self) -> str:
        if self.kind == "gave_up":
            return f"giving up after attempt {self.attempt}: {self.error}"
        what = "throttled" if self.kind == "throttled" else "transient error"
        return f"{what} (attempt {self.attempt}), waiting {self.wait:.1f}s: {self.error}"


class RetryInterrupted(Exception):
    """The interrupt hook asked to stop while waiting to retry; ``last_error`` is the error
    that was being waited out (also the ``__cause__``)."""

    def __init__(self, last_error: BaseException | None):
        self.last_error = last_error
        super().__init__("stopped while waiting to retry")


@dataclass
class _CallState:
    """What one :meth:`RetryPolicy.call` has seen so far (never shared between calls)."""

    start: float
    failures: int = 0
    throttles: int = 0
    decided: dict[int, tuple[float, bool]] = field(default_factory=dict)
    last_error: BaseException | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Immutable and thread-safe: each :meth:`call` keeps its own counters."""

    budget_minutes: float = 15.0
    max_failures: int = 8
    backoff_start: float = 0.5
    throttle_backoff_start: float = 5.0
    backoff_max: float = 60.0
    #: the most seconds of jitter added on top of a Retry-After (and never more than
    #: a tenth of it, so a tiny Retry-After stays tiny)
    retry_after_jitter: float = 1.0
    on_event: Callable[[RetryEvent], None] | None = None
    interrupt: Callable[[], bool] | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    #: how often (seconds) the interrupt hook is checked during a long wait
    tick: float = 0.5

    def __post_init__(self) -> None:
        if not self.budget_minutes > 0:
            raise ValueError("budget_minutes must be positive")
        if self.max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if not (0 < self.backoff_start <= self.backoff_max and self.throttle_backoff_start > 0):
            raise ValueError("backoff_start and throttle_backoff_start must be positive")

    def with_hooks(
        self,
        *,
        on_event: Callable[[RetryEvent], None] | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> RetryPolicy:
        """A copy of this policy that reports to ``on_event`` and stops on ``interrupt``."""
        return dataclasses.replace(
            self,
            on_event=on_event or self.on_event,
            interrupt=interrupt or self.interrupt,
        )

    def call(self, fn: Callable[..., _R], /, *args, **kwargs) -> _R:
        """``fn(*args, **kwargs)``, retried by the rules of the module docstring."""
        state = _CallState(start=self.clock())
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=lambda rs: self._decide(state, rs)[0],
            stop=lambda rs: self._decide(state, rs)[1],
            before_sleep=lambda rs: self._emit(state, rs),
            sleep=lambda seconds: self._sleep(state, seconds),
            reraise=True,
        )
        return retrying(fn, *args, **kwargs)

    __call__ = call

    # ------------------------------------------------------------------ decisions
    def _decide(self, state: _CallState, rs: tenacity.RetryCallState) -> tuple[float, bool]:
        """(seconds to wait, give up?) after attempt ``rs.attempt_number`` failed; decided
        once per attempt, whichever of tenacity's wait/stop asks first."""
        if rs.attempt_number in state.decided:
            return state.decided[rs.attempt_number]
        exc = rs.outcome.exception() if rs.outcome else None
        state.last_error = exc
        give_up = False
        if isinstance(exc, ThrottledError):
            state.throttles += 1
            if exc.retry_after is not None:
                floor = max(0.0, float(exc.retry_after))
                spread = min(self.retry_after_jitter, 0.1 * floor + 0.01)
                wait = floor + self.rng.uniform(0, spread)
            else:
                wait = self._backoff(self.throttle_backoff_start, state.throttles)
        else:
            state.failures += 1
            wait = self._backoff(self.backoff_start, state.failures)
            give_up = state.failures >= self.max_failures
        elapsed = self.clock() - state.start
        if elapsed + wait > self.budget_minutes * 60:
            give_up = True
        state.decided[rs.attempt_number] = (wait, give_up)
        if give_up:
            self._report("gave_up", state, rs.attempt_number, 0.0, exc)
        return wait, give_up

    def _backoff(self, start: float, n: int) -> float:
        """Exponential with equal jitter: in [base/2, base], base = start * 2**(n-1)."""
        base = min(start * 2 ** (n - 1), self.backoff_max)
        return base / 2 + self.rng.uniform(0, base / 2)

    # ------------------------------------------------------------------ side effects
    def _emit(self, state: _CallState, rs: tenacity.RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        kind: EventKind = "throttled" if isinstance(exc, ThrottledError) else "transient"
        wait = state.decided[rs.attempt_number][0]
        self._report(kind, state, rs.attempt_number, wait, exc)

    def _report(
        self,
        kind: EventKind,
        state: _CallState,
        attempt: int,
        wait: float,
        exc: BaseException | None,
    ) -> None:
        if self.on_event is not None:
            text = PROCESS_REDACTOR(str(exc)) if exc is not None else ""
            self.on_event(RetryEvent(kind, attempt, state.failures, wait, text))

    def _sleep(self, state: _CallState, seconds: float) -> None:
        remaining = seconds
        while True:
            if self.interrupt is not None and self.interrupt():
                raise RetryInterrupted(state.last_error) from state.last_error
            if remaining <= 0:
                return
            step = min(remaining, self.tick)
            self.sleep(step)
            remaining -= step
