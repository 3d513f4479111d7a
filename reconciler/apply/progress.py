"""Progress of an apply as events: which audience and operation is being sent, how many of
how many members, the rate and an estimate of the time left, and every retry or throttle
wait. The engine emits; front ends render (``reconciler.cli.progress``: a live bar on a
terminal, a plain line every few seconds in CI logs, JSON lines with ``--log-format json``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class Progress:
    """Counts one audience operation at a time and hands events to ``emit`` (None: silent).
    ``clock`` is injectable for tests."""

    def __init__(
        self,
        emit: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.emit = emit
        self.clock = clock
        self.activation = self.audience = self.op = ""
        self.total = self.done = 0
        self.started = 0.0
        self.sent = True

    def start(self, activation: str, audience: str, op: str, total: int, sent: bool = True) -> None:
        """A new audience operation; ``sent`` False for a control group's, whose members are
        recorded and never sent."""
        self.activation, self.audience, self.op = activation, audience, op
        self.total, self.done, self.started, self.sent = total, 0, self.clock(), sent
        self._send("start")

    def at(self, activation: str, audience: str, op: str) -> None:
        """A call that moves no member (creating or renaming an audience) is under way: the
        retries and waits it may have name it. No event of its own."""
        self.activation, self.audience, self.op = activation, audience, op

    def advance(self, n: int) -> None:
        self.done += n
        self._send("progress")

    def retry(self, event: Any) -> None:
        """A retry or throttle wait of the retry policy (``destinations.retry.RetryEvent``)."""
        if self.emit is not None:
            self.emit(
                {
                    "event": "wait",
                    "activation": self.activation,
                    "audience": self.audience,
                    "op": self.op,
                    "kind": str(getattr(event, "kind", "")),
                    "wait_seconds": round(float(getattr(event, "wait", 0.0)), 3),
                    "attempt": getattr(event, "attempt", None),
                    "error": str(getattr(event, "error", "")),
                }
            )

    def _send(self, kind: str) -> None:
        if self.emit is None:
            return
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed if self.done else 0.0
        left = (self.total - self.done) / rate if rate else None
        self.emit(
            {
                "event": kind,
                "activation": self.activation,
                "audience": self.audience,
                "op": self.op,
                "sent": self.sent,
                "done": self.done,
                "total": self.total,
                "rate": round(rate, 1),
                "eta_seconds": None if left is None else round(left, 1),
            }
        )
