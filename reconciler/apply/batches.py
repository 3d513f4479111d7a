"""Stream one audience's staged changes to its destination, batch by batch, journaled.

Each batch: read its members from the engine (identifiers looked up in the source at apply
time, records from the state), journal an intent, call the destination (retrying transient
errors and throttling, which are not failures), then record what it confirmed and close the
intent in one transaction. Members the destination refused are never recorded: the next
plan shows them again.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from destinations.base import AudienceRef, BatchResult, Destination, Member, RemovalRecord
from reconciler.apply.interrupts import InterruptGuard
from reconciler.enginedb import STAGING
from reconciler.errors import ThrottledError, TransientError
from reconciler.plan.membership import _ident
from reconciler.state.store import CATALOG as STATE
from reconciler.state.writer import StateStore
from reconciler.workspace.spec import ProfilesTable

MAX_ATTEMPTS = 6  # transient errors in a row before the batch fails
THROTTLE_BUDGET = 900.0  # seconds of rate-limit waits per batch before giving up
BACKOFF_START = 0.05
BACKOFF_MAX = 30.0

_R = TypeVar("_R")


class Interrupted(Exception):
    """Ctrl-C: the batch in flight was finished and recorded; stop here."""


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
        # lookups made while `reader` streams a batch: a query on `reader` itself would
        # replace the result being streamed and silently end the stream
        self.lookup = state.con.cursor()
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
        self._forget(grp)
        protected = self._protected_records(grp) if sent else set()
        for keys_records in self._stream_removals(grp, "remove"):
            counts["remove"] += self._remove(
                grp, ref if sent else None, keys_records, protected, counts
            )
            self._check_stop()
        for members in self._stream_members(grp, "purge"):
            counts["remove"] += self._purge(grp, ref, members, counts)
            self._check_stop()
        for members in self._stream_members(grp, "update"):
            counts["update"] += self._send(grp, ref if sent else None, "update", members, counts)
            self._check_stop()
        for members in self._stream_members(grp, "add"):
            counts["add"] += self._send(grp, ref if sent else None, "add", members, counts)
            self._check_stop()
        return counts

    # ------------------------------------------------------------------ reading
    def _where(self, grp: str, op: str) -> tuple[str, list[Any]]:
        return ("c.activation_id = ? AND c.grp = ? AND c.op = ?", [self.aid, grp, op])

    def _stream_members(self, grp: str, op: str) -> Iterator[list[tuple[Member, int]]]:
        p = self.profiles
        id_cols = [f"p.{_ident(col)}" for col in p.identifiers.values()]
        attr_cols = [f"p.{_ident(col)}" for col in self.attribute_map.values()]
        where, params = self._where(grp, op)
        sql = f"""SELECT c.key, {self.fingerprint} AS fp, {_ident(p.key)} IS NOT NULL AS known
                  {"".join(", " + c for c in id_cols + attr_cols)}
                  FROM {STAGING}.changes c
                  LEFT JOIN {_ident(p.table)} p ON CAST(p.{_ident(p.key)} AS VARCHAR) = c.key
                  WHERE {where} ORDER BY c.key"""
        self.reader.execute(sql, params)
        id_types = list(p.identifiers)
        fields = list(self.attribute_map)
        size = self.dest.batch_size
        while rows := self.reader.fetchmany(size):
            batch = []
            for r in rows:
                if not r[2]:  # the profile left the source since the plan: drift, skip
                    self.counts["drift"] += 1
                    continue
                ids = dict(zip(id_types, r[3 : 3 + len(id_types)], strict=True))
                attrs = dict(zip(fields, r[3 + len(id_types) :], strict=True))
                batch.append((Member(r[0], ids, attrs), int(r[1]) if r[2] else 0))
            if batch:
                yield batch

    def _stream_removals(self, grp: str, op: str) -> Iterator[list[tuple[str, tuple[str, ...]]]]:
        where, params = self._where(grp, op)
        self.reader.execute(
            f"""SELECT c.key, m.record FROM {STAGING}.changes c
                JOIN {STATE}.members m ON m.activation_id = c.activation_id
                 AND m.grp = c.grp AND m.key = c.key
                WHERE {where} ORDER BY c.key""",
            params,
        )
        while rows := self.reader.fetchmany(self.dest.batch_size):
            yield [(k, tuple(rec or ())) for k, rec in rows]

    def _protected_records(self, grp: str) -> set[str]:
        """Records held by members who stay: a hash shared with a leaving member (a shared
        inbox) is not removed while an included profile still has it."""
        rows = self.lookup.execute(
            f"""WITH leaving AS (SELECT key FROM {STAGING}.changes
                    WHERE activation_id = $1 AND grp = $2 AND op IN ('remove', 'update')),
                mine AS (SELECT key, record FROM {STATE}.members
                    WHERE activation_id = $1 AND grp = $2),
                leaving_r AS (SELECT DISTINCT unnest(record) AS r FROM mine SEMI JOIN leaving
                    USING (key)),
                staying_r AS (SELECT unnest(record) AS r FROM mine ANTI JOIN leaving
                    USING (key))
                SELECT DISTINCT r FROM staying_r SEMI JOIN leaving_r USING (r)""",
            [self.aid, grp],
        ).fetchall()
        return {r[0] for r in rows}

    def _forget(self, grp: str) -> None:
        with self.state.transaction():
            self.state.con.execute(
                f"""DELETE FROM {STATE}.members WHERE activation_id = ? AND grp = ? AND key IN
                    (SELECT key FROM {STAGING}.changes
                     WHERE activation_id = ? AND grp = ? AND op = 'forget')""",
                [self.aid, grp, self.aid, grp],
            )

    # ------------------------------------------------------------------ writing
    def _remove(
        self, grp: str, ref: AudienceRef | None, rows, protected: set[str], counts: dict[str, int]
    ) -> int:
        keys = [k for k, _ in rows]
        batch_id = make_batch_id(self.aid, grp, "remove", keys)
        to_send = [RemovalRecord(k, tuple(r for r in rec if r not in protected)) for k, rec in rows]
        to_send = [r for r in to_send if r.record]
        if ref is not None and to_send:
            self.state.journal_intent(batch_id, self.run_id, self.aid, grp, "remove", len(keys))
            result = self.call(
                lambda: self.dest.remove_members(ref, to_send, idempotency_key=batch_id)
            )
            refused = set(result.failed)
            self._note_failures(result, counts)
        else:
            refused, result = set(), BatchResult()
        done = [k for k in keys if k not in refused]
        self.state.confirm_batch(
            batch_id if ref is not None and to_send else "",
            self.aid,
            grp,
            delete=done,
            detail=result.detail,
        )
        return len(done)

    def _purge(self, grp: str, ref: AudienceRef | None, members, counts) -> int:
        records = self.dest.records_for([m for m, _ in members])
        to_send = [RemovalRecord(k, rec) for k, rec in records.items() if rec]
        keys = [m.key for m, _ in members]
        batch_id = make_batch_id(self.aid, grp, "purge", keys)
        self.state.journal_intent(batch_id, self.run_id, self.aid, grp, "purge", len(keys))
        result = (
            self.call(lambda: self.dest.remove_members(ref, to_send, idempotency_key=batch_id))
            if to_send
            else BatchResult()
        )
        self._note_failures(result, counts)
        ok = [
            (m.key, records.get(m.key, ()), fp) for m, fp in members if m.key not in result.failed
        ]
        # a profile purged again (its identifiers changed) replaces its earlier record
        self.state.confirm_batch(
            batch_id,
            self.aid,
            grp,
            insert=ok,
            delete=[k for k, _, _ in ok],
            detail=result.detail,
        )
        return len(ok)

    def _send(self, grp: str, ref: AudienceRef | None, op: str, members, counts) -> int:
        keys = [m.key for m, _ in members]
        fps = {m.key: fp for m, fp in members}
        batch_id = make_batch_id(self.aid, grp, op, keys)
        if ref is None:  # control group: recorded, never sent
            rows = [(k, (), fps[k]) for k in keys]
            self.state.confirm_batch(
                "", self.aid, grp, insert=rows, delete=keys if op == "update" else ()
            )
            return len(rows)
        self.state.journal_intent(batch_id, self.run_id, self.aid, grp, op, len(keys))
        sendable = [m for m, _ in members]
        if op == "update":
            result = self._update(ref, grp, sendable, batch_id)
        else:
            result = self.call(
                lambda: self.dest.add_members(ref, sendable, idempotency_key=batch_id)
            )
        self._note_failures(result, counts)
        unmatched = set(result.unmatched) - set(result.failed)
        counts["unmatched"] += len(unmatched)
        rows = [
            (k, tuple(result.records.get(k, ())), fps[k])
            for k in keys
            if k in result.records or k in unmatched
        ]
        self.state.confirm_batch(
            batch_id,
            self.aid,
            grp,
            insert=rows,
            delete=[r[0] for r in rows] if op == "update" else (),
            detail=result.detail,
        )
        return len(rows)

    def _update(
        self, ref: AudienceRef, grp: str, members: Sequence[Member], batch_id: str
    ) -> BatchResult:
        """Send new identifiers/attributes, then remove records the update made stale."""
        old = dict(
            self.lookup.execute(
                f"SELECT key, record FROM {STATE}.members WHERE activation_id = ? AND grp = ? "
                "AND key IN (SELECT unnest(?::VARCHAR[]))",
                [self.aid, grp, [m.key for m in members]],
            ).fetchall()
        )
        send = self.dest.update_members if self.dest.supports_update else self.dest.add_members
        result = self.call(lambda: send(ref, members, idempotency_key=batch_id))
        new_all = {r for rec in result.records.values() for r in rec}
        stale = [
            RemovalRecord(k, tuple(r for r in (old.get(k) or ()) if r not in new_all))
            for k in result.records
        ]
        stale = [s for s in stale if s.record]
        if stale:
            protected = self._held_by_others(
                grp, [m.key for m in members], [r for s in stale for r in s.record]
            )
            stale = [
                RemovalRecord(s.key, tuple(r for r in s.record if r not in protected))
                for s in stale
            ]
            stale = [s for s in stale if s.record]
        if stale:
            self.call(
                lambda: self.dest.remove_members(ref, stale, idempotency_key=batch_id + ":stale")
            )
        return result

    def _held_by_others(self, grp: str, keys: list[str], candidates: list[str]) -> set[str]:
        """Which ``candidates`` (records this update batch made stale) another recorded
        member holds now; those stay at the destination. Leavers were removed before updates
        run, so these members stay, with their current records — including records that
        earlier batches of this run updated (a shared inbox moving between profiles). A
        member whose own update is still to come protects its old record only until its
        batch, which removes that record if it went stale."""
        rows = self.lookup.execute(
            f"""SELECT DISTINCT r FROM (SELECT unnest(record) AS r FROM {STATE}.members
                    WHERE activation_id = $1 AND grp = $2
                    AND key NOT IN (SELECT unnest($3::VARCHAR[])))
                WHERE r IN (SELECT unnest($4::VARCHAR[]))""",
            [self.aid, grp, keys, candidates],
        ).fetchall()
        return {r[0] for r in rows}

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

    def _note_failures(self, result: BatchResult, counts: dict[str, int]) -> None:
        if result.failed:
            counts["failed"] += len(result.failed)
            sample = list(result.failed.items())[:3]
            self.errors.extend(f"{k}: {why}" for k, why in sample)

    def _check_stop(self) -> None:
        if self.guard.stop_requested:
            raise Interrupted


def make_batch_id(activation_id: str, grp: str, op: str, keys: Sequence[str]) -> str:
    """Deterministic id of a destination call (also its idempotency key)."""
    h = hashlib.sha256(f"{activation_id}\x1f{grp}\x1f{op}".encode())
    for k in keys:
        h.update(b"\x1f" + k.encode())
    return h.hexdigest()[:24]
