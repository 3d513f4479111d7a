"""Send one audience's additions, pipelined, and record them in growing groups.

While the destination works on a call (in a worker thread), this thread records the calls
that came back and reads and journals the next batches; up to ``limits.concurrency`` calls
are in flight. Recording and journaling go a *window* of members at a time (:data:`RECORD_ROWS`,
:meth:`AdditionSender._window`), so a long apply commits once per DuckDB row group rather
than once per call, and a run killed early re-sends little.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from destinations.base import AudienceRef
from reconciler.apply import encode
from reconciler.apply.calls import Call, as_rows, member_batch, new_batch_id, wait
from reconciler.apply.sending import Sender

#: Additions that came back are recorded together, in one transaction, and the next
#: batches' intents are journaled ahead, a *window* of members at a time: one batch at first,
#: then ``RAMP`` times as many members as the operation recorded so far (a run killed early
#: re-sends little), up to ``RECORD_ROWS``, or whatever came back once the oldest answer waited
#: ``RECORD_SECONDS``. A run killed meanwhile sends those members again (the destination
#: already holds them: adding them again changes nothing).
#:
#: A transaction never records more than ``RECORD_ROWS`` members: fewer than one DuckDB row
#: group (122,880 rows). A transaction that appends a row group or more writes it straight to
#: the state file and leaves the rest as a row group of its own; a window a little over one
#: row group (13 calls of 10,000) left a small row group after every full one, and DuckDB's
#: checkpoint merged them again at the end of the apply: 3.7M members cost 8.8-9.3 s of CPU
#: to record and a state file twice their size, against 5.5-6.0 s for windows below one row
#: group, which go through the state's log and fill its row groups in turn
#: (benchmarks/results/2026-11-30-round8.md).
RECORD_ROWS = 122_880 - 1
RECORD_SECONDS = 1.0
RAMP = 4


class AdditionSender(Sender):
    _recorded = 0  # members of the current addition's calls recorded so far

    def _add_all(self, ref: AudienceRef | None, table: encode.SendTable) -> None:
        """Send the additions, pipelined: while the destination works on a call (in a worker
        thread), this thread records the calls that came back and reads and journals the
        next batches — in one commit per window (:meth:`_window`) rather than one a call;
        up to ``limits.concurrency`` calls are in flight. A session's last batch is sent
        alone, after every other call of the session came back (a finished session takes
        no more)."""
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
        ready: deque[tuple[str, encode.Columns]] = deque()  # journaled, not sent yet
        done: list[Call] = []
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="reconcile-send") as pool:
            try:
                self._record_and_journal(ref, done, batches, ready)
                while ready:
                    batch_id, cols = ready.popleft()  # its intent is committed
                    ctx = self._ctx(batch_id, "add")
                    while inflight and (ctx.last or len(inflight) >= width):
                        done.append(wait(inflight.popleft()))
                    if any(c.error is not None for c in done):  # nothing after a failed call
                        ready.appendleft((batch_id, cols))
                        break
                    # the adapter's view of the batch is built here and let go once sent
                    batch = member_batch(cols, table)
                    call = partial(self.call, partial(self.dest.add, ref, batch, ctx))
                    inflight.append(Call(pool.submit(call), batch_id, cols, len(cols)))
                    del batch, call
                    if self.guard.stop_requested:
                        break
                    while inflight and inflight[0].future.done():
                        done.append(wait(inflight.popleft()))
                    self._record_and_journal(ref, done, batches, ready)
            except BaseException as exc:  # the calls in flight are still waited for below
                failure = exc
            finally:
                batches.close()  # a run stopped part-way: the query it streams from ends
                while inflight:
                    done.append(wait(inflight.popleft()))
                try:
                    error = self._record_rest(ref, done)
                    self._abandon([batch_id for batch_id, _ in ready])
                except BaseException as exc:
                    error = exc
                failure = failure or error
        if failure is not None:
            raise failure
        self._check_stop()

    def _record_control_group(self, batches: Iterator[encode.Columns]) -> None:
        """A control group's members are recorded, never sent: up to :data:`RECORD_ROWS`
        members a commit."""
        group: list[encode.Columns] = []
        members = 0
        for cols in itertools.chain(batches, [None]):
            if group and (cols is None or members + len(cols) > RECORD_ROWS):
                with self.state.transaction():
                    for g in group:
                        self.state.record_sent(
                            "", g.arrow, self.aid, self.grp, run_id="", counts={}
                        )
                self.counts.add += members
                self.progress.advance(members)
                group.clear()
                members = 0
            if cols is not None:
                group.append(cols)
                members += len(cols)

    def _record_and_journal(
        self,
        ref: AudienceRef,
        done: list[Call],
        batches: Iterator[encode.Columns],
        ready: deque[tuple[str, encode.Columns]],
    ) -> None:
        """Record the calls that came back when they are due (:meth:`_due`) and, once every
        journaled batch is sent, read and journal the next ones (a window of members, see
        :meth:`_window`), in one commit. A failed call's error is raised once the others are
        recorded, and nothing more is journaled."""
        record = self._due(done)
        fresh: list[tuple[str, encode.Columns]] = []
        if not ready and not any(c.error is not None for c in done):
            for cols in batches:
                fresh.append((new_batch_id(), cols))
                if (len(fresh) + 1) * self.size > self._window():
                    break
            record = record or (bool(done) and not fresh)  # the end: record the rest
        if not record and not fresh:
            return
        with self._recording(done if record else []):
            error = self._record_adds(ref, done) if record else None
            if error is None:
                self.state.journal_intents(
                    [(batch_id, len(cols)) for batch_id, cols in fresh],
                    self.run_id,
                    self.aid,
                    self.grp,
                    "add",
                )
                ready.extend(fresh)
        if error is not None:
            raise error

    def _record_rest(self, ref: AudienceRef, done: list[Call]) -> BaseException | None:
        """Record every call that came back, a window (:data:`RECORD_ROWS` at most) a
        transaction; the first failed call's error is returned."""
        error: BaseException | None = None
        while done:
            with self._recording(done):
                failed = self._record_adds(ref, done)
            error = error or failed
        return error

    def _abandon(self, batch_ids: list[str]) -> None:
        """Close the intents of journaled batches that were never sent (a call failed or
        Ctrl-C stopped the run first)."""
        for batch_id in batch_ids:
            self.state.journal_outcome(
                batch_id, "abandoned", "not sent: the run stopped before this call"
            )

    def _window(self) -> int:
        """Members recorded, and journaled ahead, at once: one batch, then four times as many
        as this operation recorded so far, up to :data:`RECORD_ROWS` (the window reaches its
        size within a few groups); never less than one call."""
        return max(self.size, min(RECORD_ROWS, RAMP * self._recorded))

    def _due(self, done: list[Call]) -> bool:
        """Whether the calls that came back are to be recorded now."""
        if not done:
            return False
        if any(c.error is not None or c.outcome.job for c in done):
            return True
        members = sum(c.size for c in done)
        late = time.monotonic() - done[0].returned >= RECORD_SECONDS
        return members + self.size > self._window() or late  # no room for another call

    def _recording(self, done: list[Call]):
        """One transaction for recording ``done`` (and what goes with it), unless one of
        them left an asynchronous job, whose submission is committed before it is polled."""
        jobs = any(c.error is None and c.outcome.job for c in done)
        return contextlib.nullcontext() if jobs else self.state.transaction()

    def _record_adds(self, ref: AudienceRef, done: list[Call]) -> BaseException | None:
        """Record the finished calls, in order, as many as a window holds (:meth:`_window`; one
        call at least, the rest stay in ``done``); the first failed call's error is returned after
        the successful ones are recorded (its intent stays open: the next apply closes it and
        its members are planned again). Each call leaves ``done`` as it is taken, so one whose
        recording failed is not recorded a second time by the caller's clean-up. Calls the
        destination took whole are recorded together (:meth:`StateStore.record_sent_batches`)."""
        error: BaseException | None = None
        limit, taken = self._window(), 0
        whole: list[tuple[str, object, str | None]] = []  # (batch id, rows, detail)
        while done and (not taken or taken + done[0].size <= limit):
            c = done.pop(0)
            taken += c.size
            if c.error is not None:
                error = error or c.error
                continue
            outcome = c.outcome
            if outcome.job:  # an asynchronous job: journaled as submitted, polled to its end
                self._record_whole(whole)
                self._submit(c.batch_id, "add", ref, outcome.job, as_rows(c.cols))
                self.progress.advance(c.size)
                continue
            self._note(outcome)
            self._recorded += c.size
            accepted = c.size - len(outcome.rejected) - len(outcome.retry)
            self.counts.add += accepted
            self.counts.rejected += len(outcome.rejected)
            self.counts.retry += len(outcome.retry)
            if not (outcome.rejected or outcome.retry or outcome.ids):
                whole.append((c.batch_id, c.cols.arrow, outcome.detail))
                self.progress.advance(c.size)
                continue
            self._record_whole(whole)
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
            self.progress.advance(c.size)
        self._record_whole(whole)
        return error

    def _record_whole(self, whole: list[tuple[str, object, str | None]]) -> None:
        """Record the calls the destination took whole, gathered so far (and forget them)."""
        if whole:
            self.state.record_sent_batches(whole, self.aid, self.grp, run_id=self._run())
            whole.clear()
