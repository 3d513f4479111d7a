"""Send one audience's additions, pipelined, and record them in growing groups.

While the destination works on a call (in a worker thread), this thread records the calls
that came back and reads and journals the next batches; up to ``limits.concurrency`` calls
are in flight. Recording and journaling go a *window* of members at a time (:data:`RECORD_ROWS`,
:meth:`AdditionSender._window`), so a long apply commits once per DuckDB row group rather
than once per call, and a run killed early re-sends little.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from destinations.base import AudienceRef
from reconciler.apply import encode
from reconciler.apply.calls import Call, as_rows, member_batch, new_batch_id, refusal_marked, wait
from reconciler.apply.held_rows import HeldRows
from reconciler.apply.sending import Sender

#: Additions that came back are recorded together, in one transaction, and the next
#: batches' intents are journaled ahead, a *window* of members at a time: one batch at first,
#: then ``RAMP`` times as many members as the operation recorded so far (a run killed early
#: re-sends little), up to ``RECORD_ROWS``, or whatever came back once the oldest answer waited
#: ``RECORD_SECONDS``. A run killed meanwhile sends those members again (the destination
#: already holds them: adding them again changes nothing).
#:
#: Once the window has grown to ``RECORD_ROWS`` (one DuckDB row group), a transaction records
#: exactly that many members, whatever the calls' sizes (:mod:`reconciler.apply.held_rows`):
#: DuckDB then writes them straight to the state file, once. Windows of 13 calls of 10,000
#: left a small row group after each full one, merged and rewritten by the checkpoint (8.8-9.3
#: s of CPU to record 3.7M members, round 8); windows of 12 calls went through the log and
#: were written twice (4.2 s in round 9's bench_record_windows.py); exact row groups, 1.9 s.
#: This holds with the session's ``preserve_insertion_order = false`` (reconciler.enginedb):
#: with the order kept, DuckDB inserts each call's Arrow chunk as a batch of its own and the
#: row group is cut again (4.9 s and a file twice the size, round 9).
#: Only what remains at the end, what waited ``RECORD_SECONDS`` and what precedes an
#: asynchronous job is recorded in a smaller transaction.
RECORD_ROWS = 122_880
RECORD_SECONDS = 1.0
RAMP = 4


class AdditionSender(Sender):
    _recorded = 0  # members of the current addition's calls recorded so far
    _held: HeldRows  # members of calls that came back, not recorded yet

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
        self._recorded = 0
        self._held = HeldRows()
        if ref is None:  # control group: recorded, never sent
            self._record_control_group(batches)
            return
        width = max(1, self.dest.limits.concurrency)
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
                    call = partial(
                        refusal_marked, self.call, partial(self.dest.add, ref, batch, ctx)
                    )
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
        """A control group's members are recorded, never sent: :data:`RECORD_ROWS` members a
        commit (the rest at the end), with no intent and no run counts (``_run()`` is empty:
        the group is not sent)."""
        for cols in batches:
            self._held.add("", cols.arrow)
            while self._held.rows >= RECORD_ROWS:
                self._record_held(flush=False)
        while self._held:
            self._record_held(flush=True)

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
        flush = self._late(done)
        fresh: list[tuple[str, encode.Columns]] = []
        if not ready and not any(c.error is not None for c in done):
            for cols in batches:
                fresh.append((new_batch_id(), cols))
                if (len(fresh) + 1) * self.size > self._window():
                    break
            if not fresh and done:  # the end: record what came back (the rest when it does)
                record = flush = True
        if not record and not fresh:
            return
        with self._recording(done if record else []):
            error = self._record_adds(ref, done, flush=flush) if record else None
            if error is None and fresh:
                with self.state.transaction():  # each intent with the members it sends
                    self.state.journal_intents(
                        [(batch_id, len(cols)) for batch_id, cols in fresh],
                        self.run_id,
                        self.aid,
                        self.grp,
                        "add",
                    )
                    self.state.journal_inflight([(b, cols.arrow) for b, cols in fresh])
                ready.extend(fresh)
        if error is not None:
            raise error

    def _record_rest(self, ref: AudienceRef, done: list[Call]) -> BaseException | None:
        """Record every call that came back, a window (:data:`RECORD_ROWS` at most) a
        transaction; the first failed call's error is returned."""
        error: BaseException | None = None
        while done or self._held:
            with self._recording(done):
                failed = self._record_adds(ref, done, flush=True)
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
        members = sum(c.size for c in done) + self._held.rows
        if self._window() >= RECORD_ROWS:  # a row group is there to record
            return members >= RECORD_ROWS or self._late(done)
        return members + self.size > self._window() or self._late(done)  # no room for another

    def _late(self, done: list[Call]) -> bool:
        """Whether the oldest call that came back waited :data:`RECORD_SECONDS`: what came
        back is recorded now, whatever its size."""
        return bool(done) and time.monotonic() - done[0].returned >= RECORD_SECONDS

    def _recording(self, done: list[Call]):
        """One transaction for recording ``done`` (and what goes with it), unless one of
        them left an asynchronous job, whose submission is committed before it is polled."""
        jobs = any(c.error is None and c.outcome.job for c in done)
        return contextlib.nullcontext() if jobs else self.state.transaction()

    def _record_adds(
        self, ref: AudienceRef, done: list[Call], *, flush: bool = False
    ) -> BaseException | None:
        """Record the finished calls, in order: while the window grows, as many as it holds
        (one call at least, the rest stay in ``done``); once it is :data:`RECORD_ROWS`, exactly
        that many members (:meth:`_record_held`), unless ``flush`` (the end, a late answer)
        records what there is. The first failed call's error is returned after the successful
        ones are recorded (its intent stays open: the next apply closes it and its members
        are planned again). Each call leaves ``done`` as it is taken, so one whose recording
        failed is not recorded a second time by the caller's clean-up."""
        error: BaseException | None = None
        limit, taken = self._window(), 0
        while done:
            if limit >= RECORD_ROWS:
                if self._held.rows >= RECORD_ROWS:
                    break
            elif taken and taken + done[0].size > limit:
                break
            c = done.pop(0)
            taken += c.size
            if c.error is not None:  # its members stay in flight (an attempt whose answer
                error = error or c.error  # was lost may have been applied before the refusal)
                if getattr(c.error, "refused_outright", False):  # unless none was taken
                    self.state.journal_refused(c.batch_id)
                continue
            outcome = c.outcome
            if outcome.job:  # an asynchronous job: journaled as submitted, polled to its end
                while self._held:
                    self._record_held(flush=True)
                self._submit(c.batch_id, "add", ref, outcome.job, as_rows(c.cols))
                self.progress.advance(c.size)
                continue
            self._note(outcome)
            if not (outcome.rejected or outcome.retry or outcome.ids or outcome.unidentified):
                self._held.add(c.batch_id, c.cols.arrow, outcome.detail)  # taken whole
                continue
            self._recorded += c.size
            accepted = c.size - len(outcome.rejected) - len(outcome.retry)
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
                # entries refused without being named count as refused in the run's log
                counts={"added": accepted, "failed": len(outcome.rejected) + outcome.unidentified},
            )
            self.progress.advance(c.size)
        self._record_held(flush=flush or limit < RECORD_ROWS)
        return error

    def _record_held(self, *, flush: bool) -> None:
        """Record :data:`RECORD_ROWS` of the members held (exactly one DuckDB row group), or,
        with ``flush``, up to that many; nothing while fewer are held and no flush is due."""
        if self._held.rows < RECORD_ROWS and not (flush and self._held):
            return
        parts, completed = self._held.take(RECORD_ROWS)
        members = sum(p.num_rows for p in parts)
        self.state.record_sent_batches(parts, completed, self.aid, self.grp, run_id=self._run())
        self._recorded += members
        self.counts.add += members
        self.progress.advance(members)
