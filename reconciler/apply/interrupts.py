"""Ctrl-C during apply: the first finishes the batch in flight, records it and stops; the
second exits at once. Either way the journal lets the next apply complete the job."""

from __future__ import annotations

import signal
import sys
from types import FrameType


class InterruptGuard:
    def __init__(self, echo=None):
        self.stop_requested = False
        self._echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            self._echo("Second interrupt: stopping now. The next apply completes the job.")
            raise KeyboardInterrupt
        self.stop_requested = True
        self._echo(
            "Interrupt: finishing the batch in flight and recording it "
            "(press Ctrl-C again to stop at once)."
        )

    def __enter__(self) -> InterruptGuard:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous or signal.SIG_DFL)
