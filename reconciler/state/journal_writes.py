"""The state's transactions, the journal of destination calls and the runs' counts: the base
of every state write (:class:`reconciler.state.writer.StateStore`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from reconciler.state.store import StateReader


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

    def _journal_outcome(self, batch_id: str, status: str, detail: str | None) -> None:
        self.con.execute(
            f"""UPDATE {self.c}.journal SET status = ?, detail = ?, finished_at = ?
                WHERE batch_id = ? AND status = 'intent'""",
            [status, detail, utc_now(), batch_id],
        )

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

    def close_interrupted_batches(self) -> int:
        """Member batches whose process died before the destination's answer was recorded:
        their members were not recorded, so the new plan contains them again. Close those
        intents (audience creates stay open: they are resolved by looking the audience up by
        name; so do exports: the next one writes the same files again, see
        ``reconciler.apply.export``)."""
        return self.con.execute(
            f"""UPDATE {self.c}.journal SET status = 'interrupted', finished_at = ?,
                detail = 'the run stopped before the answer was recorded; '
                         || 'its members were planned again'
                WHERE status = 'intent' AND op NOT IN ('create', 'export')""",
            [utc_now()],
        ).fetchall()[0][0]

    def _journal_outcome_any(self, batch_id: str, detail: str | None) -> None:
        self.con.execute(
            f"""UPDATE {self.c}.journal SET status = 'done', detail = ?, finished_at = ?
                WHERE batch_id = ? AND status IN ('intent', 'submitted')""",
            [detail, utc_now(), batch_id],
        )

    def _add_run_counts(self, run_id: str, counts: Mapping[str, int]) -> None:
        cols = [c for c in ("added", "removed", "updated", "failed") if counts.get(c)]
        sets = ", ".join(f"{c} = coalesce({c}, 0) + ?" for c in cols)
        self.con.execute(
            f"UPDATE {self.c}.runs SET {sets} WHERE run_id = ?",
            [*(counts[c] for c in cols), run_id],
        )
