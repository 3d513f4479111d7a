"""Stream one audience's staged changes to its destination, batch by batch, journaled.

Each batch: read it as columns (identifiers encoded in SQL, see :mod:`reconciler.apply.encode`),
journal an intent with a fresh batch id (the idempotency key a receiver sees; reused only when
that very call is retried), call the destination through the retry policy (throttling is
waited out and never a failure), then record what it accepted, close the intent and add to
the run's counts in one transaction.

Per-member outcomes: *accepted* members are recorded; *rejected* ones (permanent, with the
destination's reason) are recorded as rejected — with an empty record and their fingerprint,
so they are not re-sent until their identifiers or attributes change — and listed by
``reconcile log ID --rejected``; *retry* ones are not recorded, so the next plan sends them
again. A refused removal stays recorded: the next plan shows it again.

An update whose new record drops strings sent before (a changed or unusable identifier)
removes those stale strings in a journaled call of its own; a stale string the destination
does not remove stays recorded (with no fingerprint), so the next plan sends the update again.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from destinations.base import (
    AudienceRef,
    CallContext,
    Destination,
    MemberBatch,
    Outcome,
    RemovalBatch,
)
from destinations.retry import RetryInterrupted
from reconciler.apply import encode
from reconciler.apply.calls import (
    Call,
    Counts,
    Interrupted,
    as_rows,
    finish_job,
    member_batch,
    new_batch_id,
    session_id,
    wait,
)
from reconciler.apply.interrupts import InterruptGuard
from reconciler.apply.progress import Progress
from reconciler.plan.model import MemberOp
from reconciler.state.writer import StateStore
from reconciler.workspace.spec import ProfilesTable

CHANGES = encode.CHANGES

#: Additions that came back are recorded together, in one transaction, and the next batches'
#: intents are journaled ahead, a *window* of members at a time: one batch at first, then as
#: many members as the operation recorded so far (a run killed early re-sends little), up to
#: this many (one DuckDB row group: a transaction that fills one is written straight to the
#: state file instead of row by row to its log, about half the cost), or whatever came back
#: once the oldest answer waited ``RECORD_SECONDS``. A run killed meanwhile sends those members
#: again (the destination already holds them: adding them again changes nothing).
RECORD_ROWS = 122_880
RECORD_SECONDS = 1.0

_R = TypeVar("_R")


class BatchRunner:
    _recorded = 0  # members of the current addition's calls recorded so far

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
        self.errors: list[str] = []

    # ------------------------------------------------------------------ per audience
    def run_audience(self, grp: str, ref: AudienceRef | None, *, sent: bool, name: str) -> Counts:
        """Send one audience's staged changes. ``self.counts`` holds what was confirmed so
        far, also when a Ctrl-C (:class:`Interrupted`) or an error stops it part-way."""
        self.counts = counts = Counts()
        self.sent, self.grp, self.name = sent, grp, name
        self._sessions: dict[str, list[int]] = {}
        self.state.forget_staged(CHANGES, self.aid, grp)
        target = ref if sent else None
        protected = self.state.shared_records(CHANGES, self.aid, grp) if sent else set()
        removals = self.state.count_staged(CHANGES, self.aid, grp, MemberOp.REMOVE)
        if removals:
            self.progress.start(self.aid, name, "remove", removals, sent=sent)
            self._begin("remove", removals)
            for rows in self.state.iter_removals(
                self.reader, CHANGES, self.aid, grp, MemberOp.REMOVE, self.size
            ):
                self._remove(target, rows, protected)
                self._check_stop()
        tables = encode.build(
            self.state.con,
            activation_id=self.aid,
            grp=grp,
            identity=self.dest.identity,
            profiles=self.profiles,
            attribute_map=self.attribute_map,
            fingerprint=self.fingerprint,
        )
        for op in (MemberOp.PURGE, MemberOp.UPDATE, MemberOp.ADD):
            table = tables[str(op)]
            if not table.staged:
                continue
            counts.drift += table.staged - table.usable
            self.progress.start(self.aid, name, str(op), table.usable, sent=sent)
            self._begin(str(op), table.sendable)
            if op is MemberOp.ADD:
                self._add_all(target, table)
            elif op is MemberOp.UPDATE:
                self._update_all(target, table)
            else:
                self._purge_all(target, table)
        return counts

    # ------------------------------------------------------------------ removals
    def _remove(
        self, ref: AudienceRef | None, rows: list[tuple[str, tuple[str, ...]]], protected: set[str]
    ) -> None:
        keys = [k for k, _ in rows]
        send = [(k, tuple(r for r in rec if r not in protected)) for k, rec in rows]
        send = [(k, rec) for k, rec in send if rec]
        batch_id, outcome = "", Outcome()
        if ref is not None and send:
            batch_id = new_batch_id()
            self.state.journal_intent(
                batch_id, self.run_id, self.aid, self.grp, "remove", len(keys)
            )
            batch = RemovalBatch([k for k, _ in send], [rec for _, rec in send])
            ctx = self._ctx(batch_id, "remove")  # once: a retry is the same call
            outcome = self.call(lambda: self.dest.remove(ref, batch, ctx))
            if outcome.job:  # journaled as submitted, polled to its end
                fps = [None] * len(send)
                jrows = [(0, k, rec, fp) for (k, rec), fp in zip(send, fps, strict=True)]
                self._submit(batch_id, "remove", ref, outcome.job, jrows)
                sent = {k for k, _ in send}
                rest = [k for k in keys if k not in sent]  # nothing left to send for them
                self.state.confirm_batch(
                    "",
                    self.aid,
                    self.grp,
                    run_id=self._run(),
                    delete=rest,
                    counts={"removed": len(rest)},
                )
                self.counts.remove += len(rest)
                self.progress.advance(len(keys))
                return
        refused = {**outcome.rejected, **outcome.retry}
        done = [k for k in keys if k not in refused]
        self._note(outcome)
        self.counts.remove += len(done)
        self.counts.failed_removals += len(refused)
        self.state.confirm_batch(
            batch_id,
            self.aid,
            self.grp,
            run_id=self._run(),
            delete=done,
            detail=outcome.detail,
            counts={"removed": len(done), "failed": len(refused)},
            rejections=[(k, "remove", reason) for k, reason in refused.items()],
        )
        self.progress.advance(len(keys))

    # ------------------------------------------------------------------ additions
    def _add_all(self, ref: AudienceRef | None, table: encode.SendTable) -> None:
        """Send the additions, pipelined: while the destination works on a call (in a worker
        thread), this thread records the calls that came back and reads and journals the
        next batches — in one commit per window (:meth:`_window`) rather than one a call; up to ``limits.concurrency`` calls are in flight. A session's last batch is
        sent alone, after every other call of the session came back (a finished session
        takes no more)."""
        # members with no usable identifier are recorded with an empty record, never sent
        self.counts.unmatched += self.state.record_unsendable(
            encode.SEND, self.aid, self.grp, op=table.op
        )
        batches = encode.stream(self.reader, table, sendable=True, size=self.size)
        if ref is None:  # control group: recorded, never sent
            self._record_control_group(batches)
            return
        width = max(1, self.dest.limits.concurrency)
        self._recorded = 0
        inflight: deque[Call] = deque()
        ready: deque[tuple[str, encode.Columns, MemberBatch]] = deque()  # journaled, not sent
        done: list[Call] = []
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="reconcile-send") as pool:
            try:
                self._record_and_journal(ref, done, batches, table, ready)
                while ready:
                    batch_id, cols, batch = ready.popleft()  # its intent is committed
                    ctx = self._ctx(batch_id, "add")
                    while inflight and (ctx.last or len(inflight) >= width):
                        done.append(wait(inflight.popleft()))
                    if any(c.error is not None for c in done):  # nothing after a failed call
                        ready.appendleft((batch_id, cols, batch))
                        break
                    call = partial(self.call, partial(self.dest.add, ref, batch, ctx))
                    inflight.append(Call(pool.submit(call), batch_id, cols, batch))
                    if self.guard.stop_requested:
                        break
                    while inflight and inflight[0].future.done():
                        done.append(wait(inflight.popleft()))
                    self._record_and_journal(ref, done, batches, table, ready)
            except BaseException as exc:  # the calls in flight are still waited for below
                failure = exc
            finally:
                batches.close()  # a run stopped part-way: the query it streams from ends
                while inflight:
                    done.append(wait(inflight.popleft()))
                try:
                    with self._recording(done):
                        error = self._record_adds(ref, done)
                        self._abandon([batch_id for batch_id, _, _ in ready])
                except BaseException as exc:
                    error = exc
                failure = failure or error
        if failure is not None:
            try:
                raise failure
            finally:  # the error's traceback holds this frame: no cycle keeping the state open
                failure = error = None
        self._check_stop()

    def _record_control_group(self, batches: Iterator[encode.Columns]) -> None:
        """A control group's members are recorded, never sent: in one commit per
        :data:`RECORD_ROWS` members."""
        group: list[encode.Columns] = []
        for cols in itertools.chain(batches, [None]):
            if cols is not None:
                group.append(cols)
            members = sum(map(len, group))
            if group and (cols is None or members >= RECORD_ROWS):
                with self.state.transaction():
                    for g in group:
                        self.state.record_sent(
                            "", g.arrow, self.aid, self.grp, run_id="", counts={}
                        )
                self.counts.add += members
                self.progress.advance(members)
                group.clear()

    def _record_and_journal(
        self,
        ref: AudienceRef,
        done: list[Call],
        batches: Iterator[encode.Columns],
        table: encode.SendTable,
        ready: deque[tuple[str, encode.Columns, MemberBatch]],
    ) -> None:
        """Record the calls that came back when they are due (:meth:`_due`) and, once every
        journaled batch is sent, read and journal the next ones (a window of members, see
        :meth:`_window`), in one commit. A failed call's error is raised once the others are
        recorded, and nothing more is journaled."""
        record = self._due(done)
        fresh: list[tuple[str, encode.Columns, MemberBatch]] = []
        if not ready and not any(c.error is not None for c in done):
            for cols in batches:
                fresh.append((new_batch_id(), cols, member_batch(cols, table)))
                if len(fresh) * self.size >= self._window():
                    break
            record = record or (bool(done) and not fresh)  # the end: record the rest
        if not record and not fresh:
            return
        with self._recording(done if record else []):
            error = self._record_adds(ref, done) if record else None
            if error is None:
                for batch_id, _, batch in fresh:
                    self.state.journal_intent(
                        batch_id, self.run_id, self.aid, self.grp, "add", len(batch)
                    )
                ready.extend(fresh)
        if error is not None:
            raise error

    def _abandon(self, batch_ids: list[str]) -> None:
        """Close the intents of journaled batches that were never sent (a call failed or
        Ctrl-C stopped the run first)."""
        for batch_id in batch_ids:
            self.state.journal_outcome(
                batch_id, "abandoned", "not sent: the run stopped before this call"
            )

    def _window(self) -> int:
        """Members recorded, and journaled ahead, at once: one batch, then as many as this
        operation recorded so far, up to :data:`RECORD_ROWS`."""
        return max(self.size, min(RECORD_ROWS, self._recorded))

    def _due(self, done: list[Call]) -> bool:
        """Whether the calls that came back are to be recorded now."""
        if not done:
            return False
        if any(c.error is not None or c.outcome.job for c in done):
            return True
        members = sum(len(c.batch) for c in done)
        late = time.monotonic() - done[0].returned >= RECORD_SECONDS
        return members >= self._window() or late

    def _recording(self, done: list[Call]):
        """One transaction for recording ``done`` (and what goes with it), unless one of
        them left an asynchronous job, whose submission is committed before it is polled."""
        jobs = any(c.error is None and c.outcome.job for c in done)
        return contextlib.nullcontext() if jobs else self.state.transaction()

    def _record_adds(self, ref: AudienceRef, done: list[Call]) -> BaseException | None:
        """Record the finished calls, in order; the first failed call's error is returned after
        the successful ones are recorded (its intent stays open: the next apply closes it and
        its members are planned again). Each call leaves ``done`` as it is taken, so one whose
        recording failed is not recorded a second time by the caller's clean-up."""
        error: BaseException | None = None
        while done:
            c = done.pop(0)
            if c.error is not None:
                error = error or c.error
                continue
            outcome = c.outcome
            if outcome.job:  # an asynchronous job: journaled as submitted, polled to its end
                self._submit(c.batch_id, "add", ref, outcome.job, as_rows(c.cols))
                self.progress.advance(len(c.batch))
                continue
            self._note(outcome)
            self._recorded += len(c.batch)
            accepted = len(c.batch) - len(outcome.rejected) - len(outcome.retry)
            self.counts.add += accepted
            self.counts.rejected += len(outcome.rejected)
            self.counts.retry += len(outcome.retry)
            self.state.record_sent(
                c.batch_id,
                c.cols.arrow,
                self.aid,
                self.grp,
                run_id=self._run(),
                skip=list(outcome.retry),
                rejected=outcome.rejected,
                ids=outcome.ids,
                detail=outcome.detail,
                counts={"added": accepted, "failed": len(outcome.rejected)},
            )
            self.progress.advance(len(c.batch))
        return error

    # ------------------------------------------------------------------ updates
    def _update_all(self, ref: AudienceRef | None, table: encode.SendTable) -> None:
        for sendable in (True, False):
            for cols in encode.stream(self.reader, table, sendable=sendable, size=self.size):
                self._update(ref, cols, table, sendable)
                self.progress.advance(len(cols))
                self._check_stop()

    def _update(
        self, ref: AudienceRef | None, cols: encode.Columns, table: encode.SendTable, sendable: bool
    ) -> None:
        batch, rows = member_batch(cols, table), as_rows(cols)
        keys = list(batch.keys)
        fps = {r[1]: r[3] for r in rows}
        new = {r[1]: tuple(r[2]) for r in rows}
        if ref is None:  # control group
            self.state.confirm_batch(
                "", self.aid, self.grp, insert=[(k, (), fps[k]) for k in keys], delete=keys
            )
            self.counts.update += len(keys)
            return
        batch_id, outcome = "", Outcome()
        if sendable:
            batch_id = new_batch_id()
            self.state.journal_intent(
                batch_id, self.run_id, self.aid, self.grp, "update", len(keys)
            )
            call = self.dest.update if self.dest.capabilities.update else self.dest.add
            outcome = self._final(
                self.call(partial(call, ref, batch, self._ctx(batch_id, "update")))
            )
            self._note(outcome)
        else:
            self.counts.unmatched += len(keys)
        old = self.state.records_of(self.aid, self.grp, keys)
        rejected, retry = outcome.rejected, outcome.retry
        taken = {
            k: (outcome.ids.get(k) or new[k]) for k in keys if k not in rejected and k not in retry
        }
        owed = self._remove_stale(ref, old, taken)
        rows_out = [
            (k, rec + owed.get(k, ()), None if owed.get(k) else fps[k]) for k, rec in taken.items()
        ]
        # a rejected update keeps what the destination holds, and is not re-sent
        rows_out += [(k, old.get(k, ()), fps[k]) for k in rejected]
        self.counts.update += len(taken)
        self.counts.rejected += len(rejected)
        self.counts.retry += len(retry)
        self.state.confirm_batch(
            batch_id,
            self.aid,
            self.grp,
            run_id=self._run(),
            insert=rows_out,
            delete=[r[0] for r in rows_out],
            detail=outcome.detail,
            counts={"updated": len(taken), "failed": len(rejected) + len(owed)},
            rejections=[(k, "update", reason) for k, reason in rejected.items()],
        )

    def _remove_stale(
        self,
        ref: AudienceRef,
        old: dict[str, tuple[str, ...]],
        new: dict[str, tuple[str, ...]],
    ) -> dict[str, tuple[str, ...]]:
        """Remove the strings sent before that the members' new records no longer hold (their
        identifiers changed or became unusable), unless another member still holds them (a
        shared inbox). Journaled as its own call. Returns, per key, the stale strings the
        destination did not remove (they stay recorded)."""
        new_all = {r for rec in new.values() for r in rec}
        stale = {k: tuple(r for r in old.get(k, ()) if r not in new_all) for k in new}
        stale = {k: rec for k, rec in stale.items() if rec}
        if stale:
            protected = self.state.held_by_others(
                self.aid, self.grp, list(new), [r for rec in stale.values() for r in rec]
            )
            stale = {k: tuple(r for r in rec if r not in protected) for k, rec in stale.items()}
            stale = {k: rec for k, rec in stale.items() if rec}
        if not stale:
            return {}
        batch_id = new_batch_id()
        self.state.journal_intent(
            batch_id, self.run_id, self.aid, self.grp, "remove_stale", len(stale)
        )
        batch = RemovalBatch(list(stale), list(stale.values()))
        outcome = self._final(self.call(partial(self.dest.remove, ref, batch, self._ctx(batch_id))))
        self._note(outcome)
        self.state.journal_outcome(batch_id, "done", outcome.detail)
        refused = {**outcome.rejected, **outcome.retry}
        return {k: rec for k, rec in stale.items() if k in refused}

    # ------------------------------------------------------------------ purges (action: remove)
    def _purge_all(self, ref: AudienceRef | None, table: encode.SendTable) -> None:
        # nothing usable to remove: recorded as removed with an empty record
        for cols in encode.stream(self.reader, table, sendable=False, size=self.size):
            rows = as_rows(cols)
            keys = [r[1] for r in rows]
            self.state.confirm_batch(
                "", self.aid, self.grp, insert=[(r[1], (), r[3]) for r in rows], delete=keys
            )
        for cols in encode.stream(self.reader, table, sendable=True, size=self.size):
            rows = as_rows(cols)
            keys, recs = [r[1] for r in rows], [tuple(r[2]) for r in rows]
            batch_id = new_batch_id()
            self.state.journal_intent(batch_id, self.run_id, self.aid, self.grp, "purge", len(keys))
            outcome = Outcome()
            if ref is not None:
                batch = RemovalBatch(keys, recs)
                outcome = self._final(
                    self.call(partial(self.dest.remove, ref, batch, self._ctx(batch_id, "purge")))
                )
            self._note(outcome)
            refused = {**outcome.rejected, **outcome.retry}
            ok = [(r[1], tuple(r[2]), r[3]) for r in rows if r[1] not in refused]
            # a profile purged again (its identifiers changed) replaces its earlier record
            self.counts.remove += len(ok)
            self.counts.failed_removals += len(refused)
            self.state.confirm_batch(
                batch_id,
                self.aid,
                self.grp,
                run_id=self._run(),
                insert=ok,
                delete=[k for k, _, _ in ok],
                detail=outcome.detail,
                counts={"removed": len(ok), "failed": len(refused)},
                rejections=[(k, "remove", reason) for k, reason in refused.items()],
            )
            self.progress.advance(len(keys))
            self._check_stop()

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
        for k, why in [*outcome.rejected.items(), *outcome.retry.items()][:3]:
            self.errors.append(f"{k}: {why}")

    def _check_stop(self) -> None:
        if self.guard.stop_requested:
            raise Interrupted
