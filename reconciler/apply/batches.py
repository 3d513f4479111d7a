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
Where the destination cannot update in place (it holds people matched by their identifiers,
as Meta does), the stale strings go *before* the new record: removing the old e-mail after
adding the new row would take out the very person the new row had just matched.

A removal row is sent only with an identifier that matches a person by itself (the rule set's
anchors): what is left of a record once the strings other members still hold are taken out
(a shared inbox), or a stale name or postcode alone, would match nobody — or a stranger — and
is personal data sent for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from destinations.base import AudienceRef, Outcome, RemovalBatch
from reconciler.apply import encode
from reconciler.apply.additions import AdditionSender
from reconciler.apply.calls import Counts, as_rows, member_batch, new_batch_id, refusal_marked
from reconciler.errors import AudienceGone, MassRemovalRefused
from reconciler.plan.model import MemberOp, trips_mass_removal

CHANGES = encode.CHANGES


@dataclass(frozen=True)
class RemovalGuard:
    """The mass-removal guard of one audience, checked again once apply knows exactly which
    updates leave a member with no usable identifier (the plan estimates it)."""

    size_before: int
    add: int
    share: float

    def check(self, name: str, removals: int, lost: int) -> None:
        removed = removals + lost
        after = self.size_before + self.add - removed
        if lost and trips_mass_removal(self.size_before, removed, after, self.share):
            raise MassRemovalRefused(
                f"refused by the mass-removal guard: {lost:,} member(s) of audience {name!r} "
                "have no usable identifier left (their data changed since they were sent), "
                f"so their strings would be removed: with the {removals:,} planned removal(s) "
                f"it would lose {removed:,} of {self.size_before:,} members (max_removal_share "
                f"{self.share:.0%}); nothing was sent. Fix the identifiers in the source, or "
                "re-run with --allow-mass-removal if intended"
            )


class BatchRunner(AdditionSender):
    """One activation's sender: per audience, its removals, then updates and purges here,
    additions in :class:`~reconciler.apply.additions.AdditionSender`."""

    #: records several leaving members hold and no staying one (``shared_records``)
    _co_held: frozenset[str] | set[str] = frozenset()

    # ------------------------------------------------------------------ per audience
    def run_audience(
        self,
        grp: str,
        ref: AudienceRef | None,
        *,
        sent: bool,
        name: str,
        guard: RemovalGuard | None = None,
    ) -> Counts:
        """Send one audience's staged changes. ``self.counts`` holds what was confirmed so
        far, also when a Ctrl-C (:class:`Interrupted`) or an error stops it part-way. With
        ``guard``, nothing is sent when the updates whose members have no usable identifier
        left would, with the planned removals, trip the mass-removal guard."""
        self.counts = counts = Counts()
        self.sent, self.grp, self.name = sent, grp, name
        self._sessions: dict[str, list[int]] = {}
        # read first: what each member is sent as (the guard below needs it before any call)
        tables = encode.build(
            self.state.con,
            activation_id=self.aid,
            grp=grp,
            identity=self.dest.identity,
            profiles=self.profiles,
            attribute_map=self.attribute_map,
            fingerprint=self.fingerprint,
            consent=self.consent,
            suppressed=self.suppressed,
        )
        removals = self.state.count_staged(CHANGES, self.aid, grp, MemberOp.REMOVE)
        if guard is not None and sent:
            guard.check(name, removals, self.state.lost_identifiers(encode.SEND, self.aid, grp))
        self.state.forget_staged(CHANGES, self.aid, grp)
        target = ref if sent else None
        # no member leaves or changes (a first apply): no record can be shared with one
        leaving = removals or tables[str(MemberOp.UPDATE)].staged
        protected, co_held = (
            self.state.shared_records(CHANGES, encode.SEND, self.aid, grp)
            if sent and leaving
            else (set(), set())
        )
        self._co_held = co_held
        if removals:
            self.progress.start(self.aid, name, "remove", removals, sent=sent)
            self._begin("remove", removals)
            for rows in self.state.iter_removals(
                self.reader, CHANGES, self.aid, grp, MemberOp.REMOVE, self.size
            ):
                self._remove(target, rows, protected)
                self._check_stop()
        with self.sending():
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
        if not getattr(self.dest, "members_by_key", False):  # nothing of theirs left to remove
            send = [(k, rec) for k, rec in send if self._anchored(rec)]
        batch_id, outcome = "", Outcome()
        if ref is not None and send:
            batch_id = new_batch_id()
            with self.state.transaction():  # the intent with the members it removes
                self.state.journal_intent(
                    batch_id, self.run_id, self.aid, self.grp, "remove", len(keys)
                )
                self.state.journal_inflight_keys(batch_id, [k for k, _ in send])
            batch = RemovalBatch([k for k, _ in send], [rec for _, rec in send])
            ctx = self._ctx(batch_id, "remove")  # once: a retry is the same call
            try:
                outcome = self._refusable(batch_id, lambda: self.dest.remove(ref, batch, ctx))
            except AudienceGone:  # deleted at the destination: none of them is there now
                outcome = Outcome(detail="the audience is gone from the destination")
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
        # both stay recorded, so the next plan removes them again; only a refusal counts
        # against max_rejected_share and is listed by `log --rejected`: one to retry is not
        # refused (as for an addition)
        rejected, retry = outcome.rejected, outcome.retry
        done = [k for k in keys if k not in rejected and k not in retry]
        self._note(outcome)
        self.counts.remove += len(done)
        self.counts.failed_removals += len(rejected)
        self.counts.retry += len(retry)
        self.state.confirm_batch(
            batch_id,
            self.aid,
            self.grp,
            run_id=self._run(),
            delete=done,
            detail=outcome.detail,
            counts={"removed": len(done), "failed": len(rejected)},
            rejections=[(k, "remove", reason) for k, reason in rejected.items()],
            removed_strings=sorted({r for _, rec in send for r in rec} & self._co_held)
            if batch_id
            else (),
        )
        self.progress.advance(len(keys))

    def _refusable(self, batch_id: str, fn):
        """``self.call(fn)``; a call the destination refused outright (every attempt
        answered with a throttle or a terminal error, :func:`refusal_marked`) took none of its
        members: they are no longer in flight (its intent stays open). After a transient
        error or a lost answer they stay: that attempt may have been applied; and so they do
        when an earlier request of a call the adapter split went through (``partial``)."""
        try:
            return refusal_marked(self.call, fn)
        except BaseException as exc:
            if getattr(exc, "refused_outright", False):
                self.state.journal_refused(batch_id)
            raise

    def _anchored(self, rec: tuple[str, ...]) -> bool:
        """Whether a removal row holds a string of an identifier that matches by itself (any
        string, for rules without anchors): only such a row is sent."""
        rules = getattr(getattr(self.dest, "identity", None), "rules", None)
        prefixes = getattr(rules, "anchor_prefixes", None)
        return bool(rec) and (prefixes is None or any(r.startswith(prefixes) for r in rec))

    # ------------------------------------------------------------------ updates
    def _update_all(self, ref: AudienceRef | None, table: encode.SendTable) -> None:
        for sendable in (True, False):
            for cols in encode.stream(self.reader, table, sendable=sendable, size=self.size):
                self._update(ref, cols, table, sendable)
                if sendable:  # as for additions: the progress counts what is sent
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
        old = self.state.records_of(self.aid, self.grp, keys)
        # no update in place: the destination holds people, and removing the old e-mail after
        # the new row would remove the person that row matched; the stale strings go first
        first = sendable and not self.dest.capabilities.update
        gone, owed = self._remove_stale(ref, old, new) if first else ({}, {})
        if sendable:
            batch_id = new_batch_id()
            with self.state.transaction():  # the intent with the strings it sends
                self.state.journal_intent(
                    batch_id, self.run_id, self.aid, self.grp, "update", len(keys)
                )
                self.state.journal_inflight([(batch_id, cols.arrow)])
            call = self.dest.update if self.dest.capabilities.update else self.dest.add
            outcome = self._final(
                self._refusable(batch_id, partial(call, ref, batch, self._ctx(batch_id, "update")))
            )
            self._note(outcome)
        else:
            self.counts.unmatched += len(keys)
        rejected, retry = outcome.rejected, outcome.retry
        taken = {
            k: (outcome.ids.get(k) or new[k]) for k in keys if k not in rejected and k not in retry
        }
        if not first:
            gone, owed = self._remove_stale(ref, old, taken)
        rows_out = [
            (k, rec + owed.get(k, ()), None if owed.get(k) else fps[k]) for k, rec in taken.items()
        ]

        def kept(k: str) -> tuple[str, ...]:  # what the destination still holds of the old
            return tuple(r for r in old.get(k, ()) if r not in gone.get(k, ()))

        # a rejected update keeps what the destination holds, and is not re-sent
        rows_out += [(k, kept(k), fps[k]) for k in rejected]
        # one to retry keeps its record without a fingerprint: the next plan updates it again
        # (an update forced by a renamed field or newer rules changed no fingerprint)
        rows_out += [(k, kept(k), None) for k in retry]
        # a member left with no usable identifier is not updated: what was sent for it is
        # removed (counted as a removal), or it never had anything there (unmatched only)
        updated = len(taken) if sendable else 0
        removed = 0 if sendable else sum(1 for k in taken if old.get(k) and not owed.get(k))
        self.counts.update += updated
        self.counts.remove += removed
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
            counts={
                "updated": updated,
                "removed": removed,
                "failed": len(rejected) + len(owed) + outcome.unidentified,
            },
            rejections=[(k, "update", reason) for k, reason in rejected.items()],
        )

    def _remove_stale(
        self,
        ref: AudienceRef,
        old: dict[str, tuple[str, ...]],
        new: dict[str, tuple[str, ...]],
    ) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
        """Remove the strings sent before that the members' new records no longer hold (their
        identifiers changed or became unusable), unless another member still holds them (a
        shared inbox). Journaled as its own call. A member's stale strings go only with one of
        an identifier that matches by itself (:meth:`_anchored`); a stale name or postcode
        alone is dropped from the record unsent (the person it helped match is matched by
        the new record, or removed with the old anchor). Returns, per key, the stale strings
        no longer recorded and those the destination did not remove (they stay recorded)."""
        new_all = {r for rec in new.values() for r in rec}
        stale = {k: tuple(r for r in old.get(k, ()) if r not in new_all) for k in new}
        stale = {k: rec for k, rec in stale.items() if rec}
        if stale:
            protected = self.state.held_by_others(
                self.aid, self.grp, list(new), [r for rec in stale.values() for r in rec]
            )
            stale = {k: tuple(r for r in rec if r not in protected) for k, rec in stale.items()}
            stale = {k: rec for k, rec in stale.items() if rec}
        dropped = {k: rec for k, rec in stale.items() if not self._anchored(rec)}
        stale = {k: rec for k, rec in stale.items() if k not in dropped}
        if not stale:
            return dropped, {}
        batch_id = new_batch_id()
        self.state.journal_intent(
            batch_id, self.run_id, self.aid, self.grp, "remove_stale", len(stale)
        )
        batch = RemovalBatch(list(stale), list(stale.values()), stale=True)
        outcome = self._final(self.call(partial(self.dest.remove, ref, batch, self._ctx(batch_id))))
        self._note(outcome)
        self.state.journal_outcome(batch_id, "done", outcome.detail)
        refused = {**outcome.rejected, **outcome.retry}
        gone = {k: rec for k, rec in stale.items() if k not in refused}
        return {**dropped, **gone}, {k: rec for k, rec in stale.items() if k in refused}

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
            rejected, retry = outcome.rejected, outcome.retry
            refused = {*rejected, *retry}
            ok = [(r[1], tuple(r[2]), r[3]) for r in rows if r[1] not in refused]
            # a profile purged again (its identifiers changed) replaces its earlier record
            self.counts.remove += len(ok)
            self.counts.failed_removals += len(rejected)
            self.counts.retry += len(retry)
            self.state.confirm_batch(
                batch_id,
                self.aid,
                self.grp,
                run_id=self._run(),
                insert=ok,
                delete=[k for k, _, _ in ok],
                detail=outcome.detail,
                counts={"removed": len(ok), "failed": len(rejected)},
                rejections=[(k, "remove", reason) for k, reason in rejected.items()],
            )
            self.progress.advance(len(keys))
            self._check_stop()
