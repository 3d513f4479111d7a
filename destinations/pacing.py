"""Pace requests to a destination: a token bucket (requests per minute), a cap on requests
in flight, and slowing down or pausing when the vendor's usage headers say so.

A :class:`Pacer` is shared by all threads talking to one integration::

    pacer = Pacer(requests_per_minute=300, max_concurrency=4, usage=meta_business_use_case_usage)
    with pacer.slot():
        response = client.send(request)
    pacer.observe(response)

``usage`` parses a response into :class:`Usage` (how much of the quota is used, and how
long until access comes back when it is exhausted). Parsers for Meta's
``X-Business-Use-Case-Usage`` and the ``RateLimit-*`` headers (Klaviyo) are here.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from reconciler.errors import ThrottledError

__all__ = ["Pacer", "Usage", "meta_business_use_case_usage", "ratelimit_headers"]

#: below this share of the quota used, the declared rate applies unchanged
SLOW_DOWN_FROM = 0.5
#: the slowest the pacer goes, as a share of the declared rate
SLOWEST = 0.05
#: a pause up to this long is slept before the request; a longer one (the vendor said when
#: access comes back: minutes, up to an hour) raises :class:`ThrottledError` instead, so the
#: retry policy waits it out — within the integration's time budget, stopping on Ctrl-C or
#: SIGTERM — rather than a sleep no budget and no signal could cut short
INLINE_PAUSE = 1.0


@dataclass(frozen=True)
class Usage:
    """``used``: share of the vendor's quota used (0..1, may exceed 1); ``regain_after``:
    seconds until the vendor accepts calls again, when it said so."""

    used: float = 0.0
    regain_after: float | None = None


#: seconds of recent requests whose pace an undeclared rate is taken from
RECENT_WINDOW = 60.0


class Pacer:
    """Thread-safe. ``requests_per_minute=None``: paced by concurrency and usage pauses, and
    from :data:`SLOW_DOWN_FROM` of the quota used, slowed down from the pace of the last
    minute's requests (the rate the vendor's usage report was reached at)."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        max_concurrency: int | None = None,
        *,
        burst: int = 1,
        usage: Callable[[httpx.Response], Usage | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.rate = requests_per_minute / 60 if requests_per_minute else None  # per second
        self.burst = max(1, burst)
        self.usage = usage
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._factor = 1.0  # share of the declared rate currently allowed
        self._paused_until = 0.0
        #: with no declared rate: the pace of the recent requests, taken when usage crossed
        #: SLOW_DOWN_FROM (None below it: no rate applies)
        self._implied: float | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=10_000)

    # ------------------------------------------------------------------ before a request
    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a concurrency slot and one token for the duration of a request."""
        if self._slots is not None:
            self._slots.acquire()
        try:
            self.wait_turn()
            yield
        finally:
            if self._slots is not None:
                self._slots.release()

    def wait_turn(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds slept. While a
        pause of more than :data:`INLINE_PAUSE` remains, raises :class:`ThrottledError` with
        the pause as its ``retry_after`` (nothing is sent)."""
        with self._lock:
            now = self.clock()
            wait = max(0.0, self._paused_until - now)
            if wait > INLINE_PAUSE:
                raise ThrottledError(
                    f"the destination's usage report asks to wait {wait:.0f}s before the next "
                    "request",
                    retry_after=wait,
                )
            self._recent.append(now)
            base = self.rate if self.rate is not None else self._implied
            if base is not None:
                rate = base * self._factor
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                self._tokens -= 1  # reserve: a negative balance is a queue of waiters
                if self._tokens < 0:
                    wait = max(wait, -self._tokens / rate)
        if wait > 0:
            self.sleep(wait)
        return wait

    # ------------------------------------------------------------------ after a response
    def observe(self, response: httpx.Response) -> Usage | None:
        """Adjust to the usage the vendor reported in ``response`` (if a parser is set)."""
        usage = self.usage(response) if self.usage is not None else None
        if usage is not None:
            self.adjust(usage)
        return usage

    def adjust(self, usage: Usage) -> None:
        """Slow down linearly from :data:`SLOW_DOWN_FROM` of the quota used to
        :data:`SLOWEST` at 100 %; pause everyone for ``regain_after`` seconds."""
        with self._lock:
            if usage.used < SLOW_DOWN_FROM:
                self._factor = 1.0
                self._implied = None
            else:
                share = (1.0 - usage.used) / (1.0 - SLOW_DOWN_FROM)
                self._factor = min(1.0, max(SLOWEST, share))
                if self.rate is None and self._implied is None:
                    self._implied = self._recent_pace()
            if usage.regain_after:
                self._paused_until = max(self._paused_until, self.clock() + usage.regain_after)

    def _recent_pace(self) -> float:
        """Requests per second over the last :data:`RECENT_WINDOW` seconds (at least one
        second counted; one request a second when there were none)."""
        now = self.clock()
        while self._recent and self._recent[0] < now - RECENT_WINDOW:
            self._recent.popleft()
        if not self._recent:
            return 1.0
        return len(self._recent) / max(1.0, now - self._recent[0])

    @property
    def factor(self) -> float:
        return self._factor

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (e.g. after a throttle the vendor signalled
        in a body); the retry policy still decides whether to retry."""
        with self._lock:
            self._paused_until = max(self._paused_until, self.clock() + seconds)


def meta_business_use_case_usage(response: httpx.Response) -> Usage | None:
    """Meta's ``X-Business-Use-Case-Usage``: ``{"<business id>": [{"type": ...,
    "call_count": 28, "total_cputime": 25, "total_time": 25,
    "estimated_time_to_regain_access": 0}]}`` — percentages, and minutes."""
    raw = response.headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        entries = [e for group in json.loads(raw).values() for e in group]
        used = max(
            float(e.get(k) or 0)
            for e in entries
            for k in ("call_count", "total_cputime", "total_time")
        )
        minutes = max(float(e.get("estimated_time_to_regain_access") or 0) for e in entries)
    except (ValueError, TypeError, AttributeError):
        return None  # a malformed header never breaks a call
    return Usage(used=used / 100, regain_after=minutes * 60 or None)


def ratelimit_headers(response: httpx.Response) -> Usage | None:
    """``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` (seconds), as
    Klaviyo sends them."""
    h = response.headers
    try:
        limit = float(h["ratelimit-limit"].split(",")[0].split(";")[0])
        remaining = float(h["ratelimit-remaining"].split(",")[0].split(";")[0])
        reset = float(h.get("ratelimit-reset", "0").split(",")[0].split(";")[0])
    except (KeyError, ValueError):
        return None
    if limit <= 0:
        return None
    used = 1.0 - max(0.0, remaining) / limit
    return Usage(used=used, regain_after=reset if remaining <= 0 and reset > 0 else None)
