"""The state's transactions, the journal of destination calls and the runs' counts: the base
of every state write (:class:`reconciler.state.writer.StateStore`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from reconciler.state.store import StateReader

#: the name a batch's Arrow rows are scanned under while its members are kept in flight
INFLIGHT_ROWS = "__reconcile_inflight_batch"


def utc_now() -> datetime:
    return datetime.now(UTC)


class JournalWrites(StateReader):
    _in_transaction = False

    @contextmanager
    def transaction(self):
        """One transaction; an inner ``transaction()`` joins the enclosing one."""
        if self._in_transaction:
            yield
            return
        self._in_transaction = True
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False
        self.con.execute("COMMIT")

    # ------------------------------------------------------------------ journal
    def journal_intent(
        self,
        batch_id: str,
        run_id: str,
        activation_id: str,
        grp: str,
        op: str,
        size: int,
        detail: str | None = None,
    ) -> None:
        """Record, before a destination call, that it is about to be made with this batch id
        (its idempotency key). ``detail`` of an audience creation is the audience's name."""
        self.con.execute(
            f"INSERT INTO {self.c}.journal VALUES (?, ?, ?, ?, ?, ?, 'intent', ?, ?, NULL)",
            [batch_id, run_id, activation_id, grp, op, size, detail, utc_now()],
        )

    def journal_intents(
        self,
        batches: Sequence[tuple[str, int]],
        run_id: str,
        activation_id: str,
        grp: str,
        op: str,
    ) -> None:
        """:meth:`journal_intent` for several calls of one operation (batch id, members), in one
        statement: a window of additions journals its calls ahead together."""
        if not batches:
            return
        self.con.execute(
            f"""INSERT INTO {self.c}.journal
                SELECT unnest($ids), $run, $aid, $grp, $op, unnest($sizes), 'intent', NULL,
                       $now, NULL""",
            {
                "ids": [b for b, _ in batches],
                "sizes": [n for _, n in batches],
                "run": run_id,
                "aid": activation_id,
                "grp": grp,
                "op": op,
                "now": utc_now(),
            },
        )

    def journal_inflight(self, batches: Sequence[tuple[str, Any]]) -> None:
        """Keep the members of calls about to be made, each (batch id, Arrow rows with
        ``key`` and ``rec``: the strings the call sends), with their intents (the caller's
        transaction): a run killed before a call's answer is recorded leaves them, and the
        next apply records them as possibly sent
        (:meth:`MemberWrites.close_interrupted_batches`)."""
        for batch_id, rows in batches:
            self.con.register(INFLIGHT_ROWS, rows)
            try:
                self.con.execute(
                    f"INSERT INTO {self.c}.inflight SELECT $b, key, rec FROM {INFLIGHT_ROWS}",
                    {"b": batch_id},
                )
            finally:
                self.con.unregister(INFLIGHT_ROWS)

    def journal_inflight_keys(self, batch_id: str, keys: Sequence[str]) -> None:
        """:meth:`journal_inflight` for a removal: the keys whose records it removes."""
        if keys:
            self.con.execute(
                f"INSERT INTO {self.c}.inflight SELECT ?, unnest(?::VARCHAR[]), NULL",
                [batch_id, list(keys)],
            )

    def journal_refused(self, batch_id: str) -> None:
        """The destination refused a call outright (a terminal error): none of its members
        were taken. The intent stays open (the next apply closes it as interrupted)."""
        self._landed([batch_id])

    def _landed(self, batch_ids: Sequence[str]) -> None:
        """A call's outcome is recorded (or it is known not to have been made): its members
        are no longer in flight."""
        self.con.execute(
            f"DELETE FROM {self.c}.inflight WHERE batch_id IN (SELECT unnest(?::VARCHAR[]))",
            [list(batch_ids)],
        )

    def _journal_outcome(self, batch_id: str, status: str, detail: str | None) -> None:
        self.con.execute(
            f"""UPDATE {self.c}.journal SET status = ?, detail = ?, finished_at = ?
                WHERE batch_id = ? AND status = 'intent'""",
            [status, detail, utc_now(), batch_id],
        )
        self._landed([batch_id])

    def journal_outcome(self, batch_id: str, status: str, detail: str | None = None) -> None:
        self._journal_outcome(batch_id, status, detail)

    def _journal_done(self, outcomes: Sequence[tuple[str, str | None]]) -> None:
        """Close several open intents as done, each with its detail, in one statement."""
        self.con.execute(
            f"""UPDATE {self.c}.journal SET status = 'done', detail = v.detail, finished_at = $now
                FROM (SELECT unnest($ids) AS batch_id, unnest($details) AS detail) v
                WHERE {self.c}.journal.batch_id = v.batch_id
                  AND {self.c}.journal.status = 'intent'""",
            {
                "ids": [b for b, _ in outcomes],
                "details": [d for _, d in outcomes],
                "now": utc_now(),
            },
        )
        self._landed([b for b, _ in outcomes])

    def _close_interrupted(self) -> list[str]:
        """Close the intents of member calls whose process died before the destination's
        answer was recorded, and let go of their members in flight (recorded first by
        :meth:`MemberWrites.close_interrupted_batches`). Audience creates stay open: they are
        resolved by looking the audience up by its key; so do exports: the next one writes
        the same files again (``reconciler.apply.export``). Returns the batch ids closed."""
        ids = [
            r[0]
            for r in self.con.execute(
                f"""UPDATE {self.c}.journal SET status = 'interrupted', finished_at = ?,
                    detail = 'the run stopped before the answer was recorded; its members '
                             || 'were recorded as possibly sent and planned again'
                    WHERE status = 'intent' AND op NOT IN ('create', 'export')
                    RETURNING batch_id""",
                [utc_now()],
            ).fetchall()
        ]
        if ids:
            self._landed(ids)
        return ids

    def _journal_outcome_any(self, batch_id: str, detail: str | None) -> None:
        self.con.execute(
            f"""UPDATE {self.c}.journal SET status = 'done', detail = ?, finished_at = ?
                WHERE batch_id = ? AND status IN ('intent', 'submitted')""",
            [detail, utc_now(), batch_id],
        )
        self._landed([batch_id])

    def _add_run_counts(self, run_id: str, counts: Mapping[str, int]) -> None:
        cols = [c for c in ("added", "removed", "updated", "failed") if counts.get(c)]
        sets = ", ".join(f"{c} = coalesce({c}, 0) + ?" for c in cols)
        self.con.execute(
            f"UPDATE {self.c}.runs SET {sets} WHERE run_id = ?",
            [*(counts[c] for c in cols), run_id],
        )
