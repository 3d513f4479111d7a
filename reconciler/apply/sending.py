"""The base of one activation's sender: a destination call through the retry policy, the
numbering of an upload session's batches, asynchronous answers polled to their end, and the
bookkeeping every operation shares (:mod:`reconciler.apply.additions`,
:mod:`reconciler.apply.batches`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import TypeVar

from destinations.base import AudienceRef, CallContext, Destination, Outcome
from destinations.retry import RetryInterrupted
from reconciler.apply.calls import Counts, Interrupted, finish_job, session_id
from reconciler.apply.interrupts import InterruptGuard
from reconciler.apply.progress import Progress
from reconciler.state.writer import StateStore
from reconciler.workspace.spec import ProfilesTable

_R = TypeVar("_R")


class Sender:
    # set per audience by BatchRunner.run_audience
    counts: Counts
    sent: bool
    grp: str
    name: str
    _sessions: dict[str, list[int]]

    def __init__(
        self,
        state: StateStore,
        reader,
        profiles: ProfilesTable,
        dest: Destination,
        guard: InterruptGuard,
        run_id: str,
        activation_id: str,
        fingerprint: str,
        attribute_map: dict[str, str],
        progress: Progress | None = None,
        sending: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
        *,
        consent: str = "TRUE",
        suppressed: str | None = None,
    ):
        self.state, self.reader, self.profiles, self.dest = state, reader, profiles, dest
        self.guard, self.run_id, self.aid = guard, run_id, activation_id
        self.fingerprint = fingerprint
        self.attribute_map = attribute_map  # destination field -> profile column
        self.progress = progress or Progress()
        self.policy = dest.retry_policy.with_hooks(
            interrupt=lambda: guard.stop_requested, on_event=self.progress.retry
        )
        self.size = dest.limits.members_per_call
        self.sending = sending  # the engine's settings while members are sent
        self.errors: list[str] = []
        #: checked again as members are read to be sent (:func:`reconciler.apply.encode.build`)
        self.consent, self.suppressed = consent, suppressed

    # ------------------------------------------------------------------ asynchronous jobs
    def _submit(self, batch_id: str, op: str, ref: AudienceRef, job: str, rows) -> None:
        """Keep the job and its members, then poll it to its end and record it. Interrupted
        while polling, the job stays submitted: the next apply polls it, never resubmits."""
        self.state.submit_job(
            batch_id,
            run_id=self._run(),
            activation_id=self.aid,
            grp=self.grp,
            op=op,
            job=job,
            audience_id=ref.id,
            keys=[r[1] for r in rows],
            records=[r[2] for r in rows],
            fps=[r[3] for r in rows],
        )
        pending = next(j for j in self.state.pending_jobs() if j["batch_id"] == batch_id)
        counts = finish_job(self.state, self.dest, pending, self.guard, self.call)
        if op == "remove":
            self.counts.remove += counts.get("removed", 0)
            self.counts.failed_removals += counts.get("failed", 0)
        else:
            self.counts.add += counts.get("added", 0)
            self.counts.rejected += counts.get("failed", 0)

    def _final(self, outcome: Outcome) -> Outcome:
        """An asynchronous answer to an update, purge or stale removal: polled in place (its
        members are re-planned if the run dies meanwhile)."""
        while outcome.job:
            status = self.call(partial(self.dest.poll, outcome.job))
            if status.done:
                return status.outcome or Outcome()
            self._check_stop()
            time.sleep(0.05)
        return outcome

    # ------------------------------------------------------------------ helpers
    def call(self, fn: Callable[[], _R]) -> _R:
        """A destination call through the destination's retry policy: throttling is waited
        out (Retry-After is a floor) and never a failure; transient errors back off; Ctrl-C
        stops the waiting."""
        try:
            return self.policy.call(fn)
        except RetryInterrupted:
            raise Interrupted from None

    def _begin(self, op: str, members: int) -> None:
        """A session per audience operation (Meta's ``session``): its batches are numbered
        from 1 and the last one is flagged."""
        batches = max(1, -(-members // self.size))
        self._sessions[op] = [session_id(self.run_id, self.aid, self.grp, op), 0, batches, members]

    def _ctx(self, batch_id: str, op: str = "") -> CallContext:
        """The call's context: the next batch of ``op``'s session, or a one-call session."""
        s = self._sessions.get(op)
        if s is None:
            return CallContext(batch_id, session_id(self.run_id, self.aid, self.grp, batch_id))
        s[1] += 1
        return CallContext(batch_id, s[0], seq=s[1], last=s[1] >= s[2], estimated_total=s[3])

    def _run(self) -> str:
        """The run whose log counts this audience (a control group is recorded, never sent)."""
        return self.run_id if self.sent else ""

    def _note(self, outcome: Outcome) -> None:
        """Keep the first reasons of refused members (for the run's message) and count the
        entries the destination refused without naming them."""
        for k, why in list(outcome.rejected.items())[:3]:
            self.errors.append(f"{k}: {why}")
        self.counts.unidentified += outcome.unidentified

    def _check_stop(self) -> None:
        if self.guard.stop_requested:
            raise Interrupted
