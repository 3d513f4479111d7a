"""One destination call of an apply: its id, the context an adapter sees (a batch as lazy
columns over its Arrow rows, Meta-style session numbers), a call in flight, the counts an
audience's run confirmed, and the polling of an asynchronous job to its end."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from destinations.base import Destination, MemberBatch, Outcome
from destinations.retry import RetryInterrupted
from reconciler.apply import encode
from reconciler.apply.interrupts import InterruptGuard
from reconciler.errors import TerminalError, ThrottledError
from reconciler.state.writer import StateStore


class Interrupted(Exception):
    """Ctrl-C: the batch in flight was finished and recorded; stop here."""


def refusal_marked(call: Callable[[Callable[[], Any]], Any], fn: Callable[[], Any]) -> Any:
    """``call(fn)`` (``call``: the retry policy), watching each attempt: when the call fails
    and every attempt was answered with a refusal that takes nothing — throttles (429, a
    vendor's throttle code) and at most a final terminal error — the error (also the retry
    policy's giving up or being stopped by Ctrl-C) is marked ``refused_outright``: the
    destination took none of its members. Not after a transient error or a lost answer (that
    attempt may have been applied), nor when an earlier request of a call the adapter split
    went through (``partial``). Safe in a worker thread (it only marks the error; the
    caller's thread journals it)."""
    refused = True

    def attempt() -> Any:
        nonlocal refused
        try:
            return fn()
        except (ThrottledError, TerminalError) as exc:
            refused = refused and not exc.partial and not exc.unanswered
            raise
        except BaseException:
            refused = False
            raise

    try:
        return call(attempt)
    except BaseException as exc:
        if refused and isinstance(exc, TerminalError | ThrottledError | RetryInterrupted):
            exc.refused_outright = True  # type: ignore[union-attr]
        raise


def new_batch_id() -> str:
    """A fresh id for one journaled destination call (also its idempotency key)."""
    return uuid.uuid4().hex[:24]


@dataclass
class Counts:
    """What one audience's run confirmed (also when stopped part-way)."""

    add: int = 0
    remove: int = 0
    update: int = 0
    rejected: int = 0
    retry: int = 0
    unmatched: int = 0
    drift: int = 0
    failed_removals: int = 0
    unidentified: int = 0  # refused by the destination's count, without saying which
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "add": self.add,
            "remove": self.remove,
            "update": self.update,
            "rejected": self.rejected,
            "retry": self.retry,
            "unmatched": self.unmatched,
            "drift": self.drift,
            "unidentified": self.unidentified,
            "failed": self.rejected + self.failed_removals + self.unidentified,
        }


def finish_job(
    state: StateStore,
    dest: Destination,
    job: dict[str, Any],
    guard: InterruptGuard,
    call: Callable[[Callable[[], Any]], Any],
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, int]:
    """Poll a submitted job until the destination says it is done, then record its members.
    Ctrl-C stops the polling (:class:`Interrupted`); the job stays submitted."""
    delay = 0.05
    while True:
        status = call(lambda: dest.poll(job["job"]))
        if status.done:
            outcome = status.outcome or Outcome()
            return state.finish_job(
                job, rejected=outcome.rejected, retry=list(outcome.retry), detail=outcome.detail
            )
        if guard.stop_requested:
            raise Interrupted
        sleep(delay)
        delay = min(delay * 2, 10.0)


@dataclass
class Call:
    """One destination call in flight (or back: ``outcome`` or ``error``)."""

    future: Future
    batch_id: str
    cols: encode.Columns  # the batch's rows, recorded from once it came back
    size: int  # members in the call (the batch built for the adapter is not kept)
    outcome: Outcome = field(default_factory=Outcome)
    error: BaseException | None = None
    #: when it came back (``time.monotonic()``)
    returned: float = 0.0


def wait(call: Call) -> Call:
    """Wait for a call to come back; its error is kept, not raised."""
    try:
        call.outcome = call.future.result()
    except BaseException as exc:
        call.error = exc
    call.returned = time.monotonic()
    return call


def member_batch(cols: encode.Columns, table: encode.SendTable) -> MemberBatch:
    """A batch of the send table (:func:`encode.stream`) as a :class:`MemberBatch`: lazy
    Python columns over the Arrow batch, which travels along as ``MemberBatch.table``."""
    values = {f: f"v{i}" for i, f in enumerate(table.fields)}
    attributes = {f: f"a{i}" for i, f in enumerate(table.attributes)}
    names = {"key": "key", "rec": "records"}
    names |= {col: f"value:{f}" for f, col in values.items()}
    names |= {col: f"attr:{f}" for f, col in attributes.items()}
    arrow = cols.arrow.select(list(names)).rename_columns(list(names.values()))
    return MemberBatch(
        keys=cols.lazy("key"),
        records=cols.records(),
        values={f: cols.lazy(col) for f, col in values.items()},
        attributes={f: cols.lazy(col) for f, col in attributes.items()},
        table=arrow,
    )


def as_rows(cols: encode.Columns) -> list[tuple]:
    """The batch as ``(0, key, record tuple, fingerprint)`` rows (updates, purges, jobs)."""
    return [
        (0, k, tuple(r or ()), fp)
        for k, r, fp in zip(cols["key"], cols["rec"], cols["fp"], strict=True)
    ]


def session_id(run_id: str, activation_id: str, grp: str, op: str) -> int:
    """A positive 53-bit integer stable for one audience operation in one run (Meta's
    session_id)."""
    digest = hashlib.sha256(f"{run_id}\x1f{activation_id}\x1f{grp}\x1f{op}".encode()).digest()
    return int.from_bytes(digest[:7], "big") >> 3 or 1
