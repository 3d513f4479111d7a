"""Stream one audience's staged changes to its destination, batch by batch, journaled.

Each batch: read its members from the engine (identifiers looked up in the source at apply
time, records from the state), journal an intent with a fresh batch id (the idempotency key
a receiver sees; reused only when that very call is retried), call the destination
(retrying transient errors and throttling, which are not failures), then record what it
confirmed, close the intent and add to the run's counts in one transaction. Members the
destination refused are never recorded as sent: the next plan shows them again.

An update whose new record drops strings sent before (a changed or unusable identifier)
removes those stale strings in a journaled call of its own; a stale string the destination
refuses to remove stays recorded (with no fingerprint), so the next plan sends the update
again and retries the removal.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

from destinations.base import AudienceRef, BatchResult, Destination, Member, RemovalRecord
from reconciler.apply.interrupts import InterruptGuard
from reconciler.enginedb import STAGING
from reconciler.errors import ThrottledError, TransientError
from reconciler.plan.membership import _ident
from reconciler.plan.model import MemberOp
from reconciler.state.writer import StateStore
from reconciler.workspace.spec import ProfilesTable

MAX_ATTEMPTS = 6  # transient errors in a row before the batch fails
THROTTLE_BUDGET = 900.0  # seconds of rate-limit waits per batch before giving up
BACKOFF_START = 0.05
BACKOFF_MAX = 30.0

CHANGES = f"{STAGING}.changes"

_R = TypeVar("_R")


class Interrupted(Exception):
    """Ctrl-C: the batch in flight was finished and recorded; stop here."""


def new_batch_id() -> str:
    """A fresh id for one journaled destination call (also its idempotency key)."""
    return uuid.uuid4().hex[:24]


class BatchRunner:
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
    ):
        self.state, self.reader, self.profiles, self.dest = state, reader, profiles, dest
        self.guard, self.run_id, self.aid = guard, run_id, activation_id
        self.fingerprint = fingerprint
        self.attribute_map = attribute_map  # destination field -> profile column
        self.errors: list[str] = []

    # ------------------------------------------------------------------ per audience
    def run_audience(self, grp: str, ref: AudienceRef | None, *, sent: bool) -> dict[str, int]:
        """Send one audience's staged changes. ``self.counts`` holds what was confirmed so
        far, also when a Ctrl-C (:class:`Interrupted`) or an error stops it part-way."""
        counts = {"add": 0, "remove": 0, "update": 0, "failed": 0, "unmatched": 0, "drift": 0}
        self.counts = counts
        self.sent = sent
        self.state.forget_staged(CHANGES, self.aid, grp)
        protected = self.state.shared_records(CHANGES, self.aid, grp) if sent else set()
        size = self.dest.batch_size
        for rows in self.state.iter_removals(
            self.reader, CHANGES, self.aid, grp, MemberOp.REMOVE, size
        ):
            self._remove(grp, ref if sent else None, rows, protected)
            self._check_stop()
        for members in self._stream_members(grp, MemberOp.PURGE):
            self._purge(grp, ref, members)
            self._check_stop()
        for members in self._stream_members(grp, MemberOp.UPDATE):
            self._send(grp, ref if sent else None, MemberOp.UPDATE, members)
            self._check_stop()
        for members in self._stream_members(grp, MemberOp.ADD):
            self._send(grp, ref if sent else None, MemberOp.ADD, members)
            self._check_stop()
        return counts

    # ------------------------------------------------------------------ reading
    def _stream_members(self, grp: str, op: MemberOp) -> Iterator[list[tuple[Member, int]]]:
        """Batches of (member with today's identifiers and attributes, fingerprint). A key
        that left the source since the plan, or that now appears on several profile rows,
        is skipped as drift (the next plan sees it)."""
        p = self.profiles
        id_cols = [f"p.{_ident(col)}" for col in p.identifiers.values()]
        attr_cols = [f"p.{_ident(col)}" for col in self.attribute_map.values()]
        sql = f"""SELECT c.key, {self.fingerprint} AS fp,
                         p.{_ident(p.key)} IS NOT NULL AND count(*) OVER (PARTITION BY c.key) = 1
                         AS usable
                  {"".join(", " + c for c in id_cols + attr_cols)}
                  FROM {CHANGES} c
                  LEFT JOIN {_ident(p.table)} p ON CAST(p.{_ident(p.key)} AS VARCHAR) = c.key
                  WHERE c.activation_id = ? AND c.grp = ? AND c.op = ? ORDER BY c.key"""
        self.reader.execute(sql, [self.aid, grp, str(op)])
        id_types = list(p.identifiers)
        fields = list(self.attribute_map)
        seen_drift: set[str] = set()
        while rows := self.reader.fetchmany(self.dest.batch_size):
            batch = []
            for r in rows:
                if not r[2]:
                    if r[0] not in seen_drift:
                        seen_drift.add(r[0])
                        self.counts["drift"] += 1
                    continue
                ids = dict(zip(id_types, r[3 : 3 + len(id_types)], strict=True))
                attrs = dict(zip(fields, r[3 + len(id_types) :], strict=True))
                batch.append((Member(r[0], ids, attrs), int(r[1])))
            if batch:
                yield batch

    # ------------------------------------------------------------------ writing
    def _confirm(self, batch_id: str, grp: str, *, counts: dict[str, int], **kwargs) -> None:
        """Record a batch; ``counts`` go to this runner's totals and, for a sent audience, to
        the run's log in the same transaction."""
        for k, n in counts.items():
            self.counts[k] += n
        logged = {
            "added": counts.get("add", 0),
            "removed": counts.get("remove", 0),
            "updated": counts.get("update", 0),
            "failed": counts.get("failed", 0),
        }
        self.state.confirm_batch(
            batch_id,
            self.aid,
            grp,
            run_id=self.run_id if self.sent else "",
            counts=logged,
            **kwargs,
        )

    def _remove(
        self,
        grp: str,
        ref: AudienceRef | None,
        rows: list[tuple[str, tuple[str, ...]]],
        protected: set[str],
    ) -> None:
        keys = [k for k, _ in rows]
        to_send = [RemovalRecord(k, tuple(r for r in rec if r not in protected)) for k, rec in rows]
        to_send = [r for r in to_send if r.record]
        batch_id, result = "", BatchResult()
        if ref is not None and to_send:
            batch_id = new_batch_id()
            self.state.journal_intent(batch_id, self.run_id, self.aid, grp, "remove", len(keys))
            result = self.call(
                lambda: self.dest.remove_members(ref, to_send, idempotency_key=batch_id)
            )
            self._note_failures(result)
        done = [k for k in keys if k not in result.failed]
        self._confirm(
            batch_id,
            grp,
            delete=done,
            detail=result.detail,
            counts={"remove": len(done), "failed": len(result.failed)},
        )

    def _purge(self, grp: str, ref: AudienceRef | None, members) -> None:
        records = self.dest.records_for([m for m, _ in members])
        to_send = [RemovalRecord(k, rec) for k, rec in records.items() if rec]
        keys = [m.key for m, _ in members]
        batch_id = new_batch_id()
        self.state.journal_intent(batch_id, self.run_id, self.aid, grp, "purge", len(keys))
        result = (
            self.call(lambda: self.dest.remove_members(ref, to_send, idempotency_key=batch_id))
            if to_send and ref is not None
            else BatchResult()
        )
        self._note_failures(result)
        ok = [
            (m.key, records.get(m.key, ()), fp) for m, fp in members if m.key not in result.failed
        ]
        # a profile purged again (its identifiers changed) replaces its earlier record
        self._confirm(
            batch_id,
            grp,
            insert=ok,
            delete=[k for k, _, _ in ok],
            detail=result.detail,
            counts={"remove": len(ok), "failed": len(result.failed)},
        )

    def _send(self, grp: str, ref: AudienceRef | None, op: MemberOp, members) -> None:
        keys = [m.key for m, _ in members]
        fps: dict[str, int | None] = {m.key: fp for m, fp in members}
        counted = "update" if op is MemberOp.UPDATE else "add"
        if ref is None:  # control group: recorded, never sent
            rows = [(k, (), fps[k]) for k in keys]
            delete = keys if op is MemberOp.UPDATE else ()
            self._confirm("", grp, insert=rows, delete=delete, counts={counted: len(rows)})
            return
        batch_id = new_batch_id()
        self.state.journal_intent(batch_id, self.run_id, self.aid, grp, str(op), len(keys))
        sendable = [m for m, _ in members]
        old = self.state.records_of(self.aid, grp, keys) if op is MemberOp.UPDATE else {}
        if op is MemberOp.UPDATE and self.dest.supports_update:
            result = self.call(
                lambda: self.dest.update_members(ref, sendable, idempotency_key=batch_id)
            )
        else:
            result = self.call(
                lambda: self.dest.add_members(ref, sendable, idempotency_key=batch_id)
            )
        self._note_failures(result)
        unmatched = set(result.unmatched) - set(result.failed)
        self.counts["unmatched"] += len(unmatched)
        new = {k: tuple(result.records.get(k, ())) for k in keys if k in result.records}
        new.update({k: () for k in unmatched})
        owed = self._remove_stale(grp, ref, old, new) if old else {}
        rows = []
        for k, record in new.items():
            still = owed.get(k, ())
            # a stale string whose removal was refused stays recorded, with no fingerprint:
            # the next plan sends this member again and retries the removal
            rows.append((k, record + still, None if still else fps[k]))
        self._confirm(
            batch_id,
            grp,
            insert=rows,
            delete=[r[0] for r in rows] if op is MemberOp.UPDATE else (),
            detail=result.detail,
            counts={counted: len(rows), "failed": len(result.failed) + len(owed)},
        )

    def _remove_stale(
        self,
        grp: str,
        ref: AudienceRef,
        old: dict[str, tuple[str, ...]],
        new: dict[str, tuple[str, ...]],
    ) -> dict[str, tuple[str, ...]]:
        """Remove the strings sent before that the members' new records no longer hold (their
        identifiers changed or became unusable), unless another member still holds them (a
        shared inbox). Journaled as its own call. Returns, per key, the stale strings the
        destination refused to remove (they stay recorded)."""
        new_all = {r for rec in new.values() for r in rec}
        stale = [
            RemovalRecord(k, tuple(r for r in old.get(k, ()) if r not in new_all)) for k in new
        ]
        stale = [s for s in stale if s.record]
        if stale:
            protected = self.state.held_by_others(
                self.aid, grp, list(new), [r for s in stale for r in s.record]
            )
            stale = [
                RemovalRecord(s.key, tuple(r for r in s.record if r not in protected))
                for s in stale
            ]
            stale = [s for s in stale if s.record]
        if not stale:
            return {}
        batch_id = new_batch_id()
        self.state.journal_intent(batch_id, self.run_id, self.aid, grp, "remove_stale", len(stale))
        result = self.call(lambda: self.dest.remove_members(ref, stale, idempotency_key=batch_id))
        self._note_failures(result)
        self.state.journal_outcome(batch_id, "done", result.detail)
        return {s.key: s.record for s in stale if s.key in result.failed}

    def call(self, fn: Callable[[], _R]) -> _R:
        """Call with retries: transient errors up to MAX_ATTEMPTS in a row; throttling is
        waited out (Retry-After when given, else exponential backoff with jitter) within
        THROTTLE_BUDGET seconds, and never counted as a failure."""
        delay, transient, waited = BACKOFF_START, 0, 0.0
        while True:
            try:
                return fn()
            except ThrottledError as exc:
                wait = exc.retry_after if exc.retry_after is not None else delay
                if waited + wait > THROTTLE_BUDGET:
                    raise TransientError(
                        f"the destination kept throttling for {waited:.0f}s; the next apply resumes"
                    ) from exc
            except TransientError:
                transient += 1
                if transient >= MAX_ATTEMPTS:
                    raise
                wait = delay
            if self.guard.stop_requested:
                raise Interrupted
            wait = min(wait, BACKOFF_MAX) * (0.5 + random.random() / 2)
            time.sleep(wait)
            waited += wait
            delay = min(delay * 2, BACKOFF_MAX)

    def _note_failures(self, result: BatchResult) -> None:
        if result.failed:
            sample = list(result.failed.items())[:3]
            self.errors.extend(f"{k}: {why}" for k, why in sample)

    def _check_stop(self) -> None:
        if self.guard.stop_requested:
            raise Interrupted
