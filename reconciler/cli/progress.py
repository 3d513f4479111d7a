"""What a long ``apply`` (or ``run``) shows while it works, and what ``plan`` says it computes.

The engine emits events through :class:`reconciler.apply.progress.Progress` (``start``,
``progress`` and ``wait`` per audience operation); a reporter made by :func:`make_reporter`
renders them, on standard error so standard output keeps the plan and the report:

- on a terminal (:class:`LiveReporter`): a live ``rich`` progress bar per audience operation
  (members sent of planned, rate, time left) and the planning steps;
- elsewhere, e.g. CI logs (:class:`PlainReporter`): a plain line every ``interval`` seconds
  (measured on an injectable clock) and one at the end of each operation; planning steps only
  with ``-v``;
- ``--log-format json`` (:class:`JsonReporter`): one JSON object per line for each event, and a
  final ``outcome`` event per activation.

Retries and throttle waits (``wait`` events) are shown with ``-v``; JSON always has them.
Their error texts went through the process redactor in the retry policy: no secrets. A text
line is printed with its control characters escaped (an error text holds what a destination
answered, which may carry terminal escapes); a reader that went away (``apply 2>&1 | head``)
loses the lines, never the apply.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from reconciler.apply.progress import Event
from reconciler.errors import printable_lines

if TYPE_CHECKING:  # annotations only
    from reconciler.apply.outcomes import ActivationOutcome

__all__ = ["JsonReporter", "LiveReporter", "PlainReporter", "Reporter", "make_reporter"]

#: seconds between two plain progress lines of one operation
INTERVAL = 5.0


class Reporter:
    """Receives the engine's events; subclasses render them. Tracks which audience operation
    is under way so the end of each one is reported once (the engine emits no end event: an
    operation ends when all its members were sent, the next one starts, or the apply ends)."""

    def __init__(self) -> None:
        self.current: Event | None = None
        self.ended = True

    # -- what the CLI calls --------------------------------------------------------------
    def event(self, e: Event) -> None:
        kind = e.get("event")
        if kind == "start":
            self._end_current()
            self.current, self.ended = dict(e), False
            self.started(e)
        elif kind == "progress":
            self.current = dict(e)
            self.advanced(e)
            if e["done"] >= e["total"]:
                self._end_current()
        elif kind == "wait":
            self.waited(e)

    def step(self, text: str) -> None:
        """A planning step: which activation and segments are being computed."""

    def message(self, text: str) -> None:
        """A message of the engine (waiting for the state, notifications sent)."""
        emit(text)

    def outcome(self, o: ActivationOutcome) -> None:
        """The final outcome of one activation (JSON only: the text report says it)."""

    def close(self) -> None:
        self._end_current()

    # -- what subclasses render ----------------------------------------------------------
    def started(self, e: Event) -> None: ...

    def advanced(self, e: Event) -> None: ...

    def finished(self, e: Event) -> None: ...

    def waited(self, e: Event) -> None: ...

    def _end_current(self) -> None:
        if self.current is not None and not self.ended:
            self.ended = True
            self.finished(self.current)


def emit(text: str, stream: TextIO | None = None) -> None:
    """Print one message on ``stream`` (standard error by default), each of its lines with
    its control characters escaped. A closed pipe drops the message: the apply goes on."""
    with contextlib.suppress(BrokenPipeError):
        print(printable_lines(text), file=stream or sys.stderr, flush=True)


def _label(e: Event) -> str:
    return f'{e["activation"]}: audience "{e["audience"]}": {e["op"]}'


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.1f}"


def wait_text(e: Event) -> str:
    """One line for a retry or throttle wait."""
    what = {"throttled": "throttled", "transient": "retrying after an error"}.get(
        e.get("kind", ""), e.get("kind") or "waiting"
    )
    # a wait before the first member operation (creating an audience) has no label yet
    label = _label(e) if e.get("op") else "a destination call"
    if e.get("kind") == "gave_up":
        head = f"{label}: gave up retrying"
    else:
        head = f"{label}: {what}, waiting {e['wait_seconds']:.1f}s"
    attempt = f" (attempt {e['attempt']})" if e.get("attempt") else ""
    error = f": {e['error']}" if e.get("error") else ""
    return head + attempt + error


class PlainReporter(Reporter):
    """Plain lines for logs: progress every ``interval`` seconds and at each operation's end.
    With ``heartbeat`` a timer says so every ``interval`` seconds also while no batch comes
    back (a slow answer, a throttle being waited out): a CI log never goes silent."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        verbose: bool = False,
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
        heartbeat: bool = False,
    ):
        super().__init__()
        self.stream, self.verbose = stream, verbose
        self.clock, self.interval = clock, interval
        self.last_line = 0.0
        self.began = 0.0
        self.wait: tuple[str, float] | None = None  # (kind, until) of a retry wait under way
        self._lock = threading.RLock()
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def _write(self, text: str) -> None:
        with self._lock:
            emit(text, self.stream)

    def event(self, e: Event) -> None:
        with self._lock:
            super().event(e)

    def started(self, e: Event) -> None:
        self.began = self.last_line = self.clock()
        self.wait = None
        if self.heartbeat and self._timer is None:  # from the first operation to close()
            self._stop.clear()
            self._timer = threading.Thread(
                target=self._beat, name="reconcile-progress", daemon=True
            )
            self._timer.start()

    def advanced(self, e: Event) -> None:
        self.wait = None
        now = self.clock()
        if now - self.last_line >= self.interval and e["done"] < e["total"]:
            self.last_line = now
            self._write(
                f"{_label(e)}: {e['done']:,} of {e['total']:,} members "
                f"({_rate(e['rate'])}/s, about {_eta(e['eta_seconds'])} left)"
            )

    def _beat(self) -> None:
        """Every second: an operation under way that printed nothing for ``interval``
        seconds says where it is, and what it waits for."""
        while not self._stop.wait(1.0):
            with self._lock:
                e, now = self.current, self.clock()
                if e is None or self.ended or now - self.last_line < self.interval:
                    continue
                self.last_line = now
                if self.wait is not None and self.wait[1] > now:
                    kind, until = self.wait
                    why = "throttled by the destination" if kind == "throttled" else "retrying"
                    doing = f"{why}, waiting {until - now:.0f}s more"
                else:
                    doing = "waiting for the destination's answer"
                self._write(f"{_label(e)}: {e['done']:,} of {e['total']:,} members ({doing})")

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        with self._lock:
            super().close()

    def finished(self, e: Event) -> None:
        took = max(self.clock() - self.began, 0.0)
        done = "sent" if e.get("sent", True) else "recorded (a control group: never sent)"
        self._write(
            f"{_label(e)}: {e['done']:,} of {e['total']:,} members {done} in {took:.1f}s"
            + (f" ({_rate(e['rate'])}/s)" if e["rate"] else "")
        )

    def waited(self, e: Event) -> None:
        if e.get("kind") != "gave_up":
            self.wait = (str(e.get("kind")), self.clock() + float(e.get("wait_seconds") or 0))
        if self.verbose:
            self._write(wait_text(e))

    def step(self, text: str) -> None:
        if self.verbose:
            self._write(text)

    def message(self, text: str) -> None:
        self._write(text)


class LiveReporter(Reporter):
    """A live ``rich`` bar per audience operation on a terminal (standard error)."""

    def __init__(self, console: Any = None, *, verbose: bool = False, color: bool = True):
        from rich.console import Console

        super().__init__()
        self.console = console or Console(stderr=True, no_color=not color, highlight=False)
        self.verbose = verbose
        self.bars: Any = None
        self.task: Any = None
        self.status: Any = None  # the transient planning line

    def _bars(self) -> Any:
        if self.bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bars = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}/s  {task.fields[eta]} left", markup=False),
                console=self.console,
            )
            self.bars.start()
        return self.bars

    def _print(self, text: str) -> None:
        text = printable_lines(text)
        (self.bars.console if self.bars is not None else self.console).print(
            text, markup=False, highlight=False
        )

    def started(self, e: Event) -> None:
        self._stop_status()
        self.task = self._bars().add_task(
            _label(e), total=max(e["total"], 1), rate="0", eta=_eta(e["eta_seconds"])
        )

    def advanced(self, e: Event) -> None:
        if self.task is not None:
            self.bars.update(
                self.task,
                completed=e["done"],
                rate=_rate(e["rate"]),
                eta=_eta(e["eta_seconds"]),
            )

    def finished(self, e: Event) -> None:
        if self.task is not None:
            self.bars.update(self.task, completed=max(e["total"], 1), eta=_eta(0))

    def waited(self, e: Event) -> None:
        if self.verbose:
            self._print(wait_text(e))

    def step(self, text: str) -> None:
        """One transient line that changes with each step; with ``-v`` a line per step."""
        if self.verbose:
            self._print(text)
        elif self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def message(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        super().close()
        self._stop_status()
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


class JsonReporter(Reporter):
    """One JSON object per line (``--log-format json``), each with ``event`` and ``time``."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream

    def _write(self, data: dict[str, Any]) -> None:
        line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **data}
        # JSON escapes control characters itself; a reader that went away loses the line
        with contextlib.suppress(BrokenPipeError):
            print(json.dumps(line, default=str), file=self.stream or sys.stderr, flush=True)

    def event(self, e: Event) -> None:
        self._write(dict(e))
        super().event(e)

    def finished(self, e: Event) -> None:
        self._write({**e, "event": "end"})

    def step(self, text: str) -> None:
        self._write({"event": "plan_step", "text": text})

    def message(self, text: str) -> None:
        self._write({"event": "message", "text": text.strip()})

    def outcome(self, o: ActivationOutcome) -> None:
        self._write(
            {
                "event": "outcome",
                "activation": o.id,
                "status": str(o.status),
                "added": o.added,
                "removed": o.removed,
                "updated": o.updated,
                "rejected": o.failed,
                "retry": o.retry,
                "error": o.error,
                "warning": o.warning,
            }
        )


def make_reporter(
    *,
    log_format: str = "text",
    verbose: bool = False,
    color: bool = True,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    interval: float = INTERVAL,
    terminal: bool | None = None,
) -> Reporter:
    """The reporter for this process: JSON lines, a live bar on a terminal, else plain lines.
    ``terminal`` defaults to whether standard error is one."""
    if log_format == "json":
        return JsonReporter(stream)
    if terminal is None:
        terminal = stream is None and sys.stderr.isatty()
    if terminal:
        return LiveReporter(verbose=verbose, color=color)
    # a timer only on the real clock (tests drive theirs by hand)
    heartbeat = clock is time.monotonic
    return PlainReporter(
        stream, verbose=verbose, clock=clock, interval=interval, heartbeat=heartbeat
    )
