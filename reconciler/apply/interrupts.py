"""Ctrl-C (SIGINT) or SIGTERM during apply: the first finishes the batch in flight, records it
and stops; the second exits at once. Either way the journal lets the next apply complete the
job. SIGTERM is what a CI runner or a container sends when a job is cancelled (GitHub Actions
sends SIGINT, then SIGTERM a few seconds later, then SIGKILL): each is one more request to
stop."""

from __future__ import annotations

import signal
import sys
from types import FrameType

#: the signals that ask an apply to stop
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptGuard:
    def __init__(self, echo=None) -> None:
        self.stop_requested = False
        self._echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            self._echo("Second interrupt: stopping now. The next apply completes the job.")
            raise KeyboardInterrupt
        self.stop_requested = True
        what = "Terminated" if signum == signal.SIGTERM else "Interrupt"
        self._echo(
            f"{what}: finishing the batch in flight and recording it "
            "(press Ctrl-C again to stop at once)."
        )

    def __enter__(self) -> InterruptGuard:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous or signal.SIG_DFL)  # type: ignore[arg-type]
        self._previous = {}
