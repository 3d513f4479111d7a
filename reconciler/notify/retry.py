"""How hard a notification is retried: a few attempts with a short, doubling wait, within a
bounded total time. Only failures classified transient are retried."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

T = TypeVar("T")


class DeliveryFailed(Exception):
    """One attempt failed; ``transient`` says whether another attempt may help.
    ``retry_after`` is the receiver's requested wait (a floor), when it gave one."""

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None):
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` at most, waiting ``first_wait`` seconds then doubling (never more than
    ``max_wait``), and no new attempt after ``max_total`` seconds. ``timeout`` bounds each
    connection and request."""

    attempts: int = 3
    first_wait: float = 1.0
    max_wait: float = 10.0
    max_total: float = 30.0
    timeout: float = 10.0

    def wait(self, state: RetryCallState) -> float:
        backoff = self.first_wait * 2 ** (state.attempt_number - 1)
        exc = state.outcome.exception() if state.outcome else None
        floor = getattr(exc, "retry_after", None) or 0.0
        return min(max(backoff, floor), self.max_wait)

    def call(self, attempt: Callable[[], T]) -> tuple[T | None, int, DeliveryFailed | None]:
        """Run ``attempt`` until it succeeds or the policy gives up: (its result, attempts
        made, the last failure or None). Never raises DeliveryFailed."""
        count = 0

        def counted() -> T:
            nonlocal count
            count += 1
            return attempt()

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_total),
            wait=self.wait,
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryFailed) and e.transient),
            reraise=True,
        )
        try:
            return retrying(counted), count, None
        except DeliveryFailed as exc:
            return None, count, exc
